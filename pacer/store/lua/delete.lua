-- delete.lua: delete a bidder (operator write). KEYS[1]: its state hash. Leaves a tombstone so instances can
-- tell a deletion from lost data; spend fields stay (money spent stays spent). Every lease is withdrawn.
-- Reply: the new version.
local h = KEYS[1]
local f = redis.call('HKEYS', h)
for _, field in ipairs(f) do
  local kind = string.sub(field, 1, 2)
  if kind == 'l:' or kind == 'e:' or kind == 'p:' or kind == 'w:' then redis.call('HDEL', h, field) end
end
if not redis.call('HGET', h, 'inc') then
  local t = redis.call('TIME')
  redis.call('HSET', h, 'inc', string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)))
end
local ver = redis.call('HINCRBY', h, 'ver', 1)
redis.call('HSET', h, 'del', '1')
return ver
