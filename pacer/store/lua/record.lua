-- record.lua: count one instance's acknowledged wins for a group of bidders, each once fleet-wide, before the
-- instance answers 200. Atomic per call; every key of a call shares one hash slot (see sync.lua).
--
-- KEYS: per bidder i, KEYS[2i-1] = its state hash, KEYS[2i] = its win dedupe sorted set.
-- ARGV: instance id, dedupe window ms, then one MessagePack array with per bidder its wins as
--   [[auction id, price micros, period key, acknowledged at (epoch ms: the dedupe key's score)], ...].
-- Reply: one MessagePack array with per bidder: [status, spend version, 1-based indexes of the wins that were
--   duplicates]. status: 'ok'; 'lost' (no state: nothing is written; the caller journals the wins and the
--   sync ships them once an operator restores the bidder); or 'overflow' (the spend would pass MAX_SPEND, where
--   Lua's doubles stop being exact: nothing is written for the bidder, the caller gets an error).
--
-- `sv` (the spend version) grows by one on every call that adds spend to the bidder, here and in sync.lua: an
-- instance compares it with the version of the fleet spend its last sync read, to tell whether that spend
-- already held these wins (the two replies may reach it in either order).
-- A new win spends this instance's lease when it is in the lease's period: spent + live leases stays what it
-- was, so the other instances' next grants see the money as spent, not as still leased here.
local function int(x) return string.format('%d', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local MAX_SPEND = 2 ^ 53
local inst, dedupe = ARGV[1], tonumber(ARGV[2])
local batches = cmsgpack.unpack(ARGV[3])
local out = {}
local function overflows(h, wins)  -- checked before anything is written: a script that fails half-way keeps its writes
  local adds = {}
  for k = 1, #wins do adds[wins[k][3]] = (adds[wins[k][3]] or 0) + wins[k][2] end
  for per, add in pairs(adds) do
    if tonumber(redis.call('HGET', h, 's:' .. per) or '0') > MAX_SPEND - add then return true end  -- no rounding
  end
  return false
end
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local wins = batches[i]
  if not redis.call('HGET', h, 'ver') then
    out[i] = {'lost', 0, {}}
  elseif overflows(h, wins) then
    out[i] = {'overflow', 0, {}}
  else
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now - dedupe)
    local lease_period = redis.call('HGET', h, 'p:' .. inst)
    local spent_lease, dups, added = 0, {}, false
    for k = 1, #wins do
      local aid, price, wper, at = wins[k][1], wins[k][2], wins[k][3], wins[k][4]
      if redis.call('ZADD', z, 'NX', at, aid) == 1 then
        redis.call('HINCRBY', h, 's:' .. wper, int(price))
        added = true
        if wper == lease_period then spent_lease = spent_lease + price end
      else
        dups[#dups + 1] = k
      end
    end
    if spent_lease > 0 then
      local lease = redis.call('HGET', h, 'l:' .. inst)
      if lease then redis.call('HSET', h, 'l:' .. inst, int(math.max(0, tonumber(lease) - spent_lease))) end
    end
    local sv = tonumber(redis.call('HGET', h, 'sv') or '0')
    if added then sv = redis.call('HINCRBY', h, 'sv', 1) end
    out[i] = {'ok', sv, dups}
  end
end
return cmsgpack.pack(out)
