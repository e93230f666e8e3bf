-- restore.lua: an operator brings back a bidder whose state Redis lost, stating its spend in the current period.
-- KEYS[1]: its state hash. ARGV: config json, budget micros, paused ('1'/'0'), period key, spent micros.
-- A new incarnation tells every instance to take this state as the truth; leases from before are withdrawn.
-- Reply: {version, incarnation}.
local h = KEYS[1]
local f = redis.call('HKEYS', h)
for _, field in ipairs(f) do
  local kind = string.sub(field, 1, 2)
  if kind == 'l:' or kind == 'e:' or kind == 'p:' or kind == 'w:' then redis.call('HDEL', h, field) end
end
local t = redis.call('TIME')
local inc = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local ver = redis.call('HINCRBY', h, 'ver', 1)
redis.call('HINCRBY', h, 'sv', 1)  -- the stated spend is news to every instance (see record.lua)
redis.call('HSET', h, 'inc', inc, 'cfg', ARGV[1], 'bud', ARGV[2], 'pause', ARGV[3], 'del', '0', 's:' .. ARGV[4], ARGV[5])
return {ver, tonumber(inc)}
