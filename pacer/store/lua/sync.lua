-- sync.lua: one instance's sync for a group of bidders: record its new wins once, settle its lease, grant the
-- next one. Atomic per call; every key of a call shares one hash slot (one bidder, or one group on a plain
-- Redis), so it runs unchanged on Redis Cluster.
--
-- KEYS: per bidder i, KEYS[2i-1] = its state hash, KEYS[2i] = its win dedupe sorted set (same hash tag).
-- ARGV: instance id, lease ttl ms, dedupe window ms, then one MessagePack array with per bidder:
--   [known config version, current period key, wanted lease micros, floor micros (the instance's open
--   reservations: already granted to the market, so its lease never shrinks below them), reservation hold ms,
--   wins as [[auction id, price micros, period key, acknowledged at epoch ms], ...], auction ids to check].
-- Reply: one MessagePack array with per bidder: [status, version, incarnation, spent in the period, lease granted,
--   fleet lease total, config json or '', 1-based indexes of the wins that were duplicates, 1-based indexes of
--   the checked auctions whose wins are counted, the spend version (see record.lua) of that spend]. status: 'ok', 'deleted' or 'lost' (no state: the data was lost;
--   nothing is written, so spend is never silently reset to zero).
-- MessagePack, not one argument per field: redis-py packing ~27 arguments and parsing ~10 reply elements per
-- bidder in Python cost the event loop ~300 ms per sync of 10,000 bidders. Lua numbers are doubles: exact
-- for money up to 2^53 micros (MAX_MICROS sums stay far below).
--
-- The state hash: ver, inc (incarnation: Redis time ms when an operator created or restored the state), cfg
-- (json), bud (budget micros), pause ('1'), del ('1' tombstone), s:<period> spent, sv (spend version),
-- and per instance l:<id> lease micros, e:<id> lease expiry (ms, Redis clock), p:<id> lease period,
-- w:<id> wanted micros. Invariant kept at every grant: spent + sum of live leases <= budget.
-- Lua turns numbers into strings with 14 significant digits; money needs all of its digits.
local function int(x) return string.format('%d', x) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local inst, ttl, dedupe = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local requests = cmsgpack.unpack(ARGV[4])
local out = {}
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local r = requests[i]
  local known, per, want, floor, hold, wins, check = r[1], r[2], r[3], r[4], r[5], r[6], r[7]
  local ver = redis.call('HGET', h, 'ver')
  if not ver then
    out[i] = {'lost', 0, 0, 0, 0, 0, '', {}, {}, 0}  -- the caller keeps its wins until an operator restores it
  else
    local dups, added = {}, false
    if #wins > 0 then
      redis.call('ZREMRANGEBYSCORE', z, '-inf', now - dedupe)
    end
    for k = 1, #wins do
      local aid, price, wper, at = wins[k][1], wins[k][2], wins[k][3], wins[k][4]
      if redis.call('ZADD', z, 'NX', at, aid) == 1 then
        redis.call('HINCRBY', h, 's:' .. wper, int(price))
        added = true
      else
        dups[#dups + 1] = k
      end
    end
    if added then redis.call('HINCRBY', h, 'sv', 1) end  -- the spend version (see record.lua)
    -- Wins another instance charged on auctions this one granted: counted yet? (then their reservations go)
    local counted = {}
    for k = 1, #check do
      if redis.call('ZSCORE', z, check[k]) then counted[#counted + 1] = k end
    end
    -- Everyone else's live leases in this period; expired ones go back to the pool.
    local f = redis.call('HGETALL', h)
    local st = {}
    for k = 1, #f, 2 do st[f[k]] = f[k + 1] end
    local others, others_want = 0, 0
    for field, value in pairs(st) do
      if string.sub(field, 1, 2) == 'l:' then
        local id = string.sub(field, 3)
        if id ~= inst then
          if tonumber(st['e:' .. id] or '0') <= now then
            redis.call('HDEL', h, 'l:' .. id, 'e:' .. id, 'p:' .. id, 'w:' .. id)
          elseif st['p:' .. id] == per then
            others = others + tonumber(value)
            others_want = others_want + tonumber(st['w:' .. id] or value)
          end
        end
      end
    end
    local budget = tonumber(st['bud'] or '0')
    local spent = tonumber(st['s:' .. per] or '0')
    local grant = want
    if st['del'] == '1' or st['pause'] == '1' then grant = math.min(want, floor) end
    local left = budget - spent
    if want + others_want > left and want > 0 then
      -- Short: each instance gets its share of what is left, in proportion to what it asked for.
      grant = math.min(grant, math.floor(left * (want / (want + others_want))))  -- exact when alone
    end
    -- Never below the open reservations: they are out in the market and may all win.
    grant = math.max(0, math.min(math.max(grant, math.min(floor, want)), left - others))
    if grant > 0 then
      redis.call('HSET', h, 'l:' .. inst, int(grant), 'e:' .. inst, int(now + ttl + hold), 'p:' .. inst, per,
        'w:' .. inst, int(want))
    else
      redis.call('HDEL', h, 'l:' .. inst, 'e:' .. inst, 'p:' .. inst, 'w:' .. inst)
    end
    local status = 'ok'
    if st['del'] == '1' then status = 'deleted' end
    local cfg = ''
    if tonumber(ver) ~= known then cfg = st['cfg'] or '' end
    out[i] = {status, tonumber(ver), tonumber(st['inc'] or '0'), spent, grant, others + grant, cfg, dups, counted,
      tonumber(st['sv'] or '0')}
  end
end
return cmsgpack.pack(out)
