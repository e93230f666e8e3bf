-- put.lua: create or replace a bidder's configuration (operator write). KEYS[1]: the bidder's state hash.
-- ARGV: config json, budget micros, paused ('1'/'0'), the version the caller knows ('0': none, or deleted),
-- updated_at.
-- Reply: {'ok', version, incarnation}; {'lost'} when the caller knows the bidder but its state is gone:
-- re-creating it here would restart its spend from zero, so only restore.lua may bring it back; or
-- {'conflict', version} when Redis holds another version than the caller knows (another instance wrote or deleted
-- it since): nothing is written, the caller re-reads and decides again (no lost update across instances).
local h = KEYS[1]
local inc = redis.call('HGET', h, 'inc')
local cur = redis.call('HGET', h, 'ver')
if not cur then
  if ARGV[4] ~= '0' then return {'lost'} end
  local t = redis.call('TIME')
  inc = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
else
  local known = redis.call('HGET', h, 'del') == '1' and '0' or cur
  if ARGV[4] ~= known then return {'conflict', tonumber(cur)} end
end
local ver = redis.call('HINCRBY', h, 'ver', 1)
redis.call('HSET', h, 'inc', inc, 'cfg', ARGV[1], 'bud', ARGV[2], 'pause', ARGV[3], 'del', '0', 'upd', ARGV[5])
return {'ok', ver, tonumber(inc)}
