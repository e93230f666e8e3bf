-- delete.lua: delete a bidder (operator write). KEYS[1]: its state hash. Leaves a tombstone so instances can
-- tell a deletion from lost data; spend fields stay (money spent stays spent). Every lease is withdrawn.
-- ARGV[1] (optional): the version the caller knows; when Redis holds another, nothing changes.
-- Reply: {'ok', new version} or {'conflict', version}.
local h = KEYS[1]
if ARGV[1] then
  local cur = redis.call('HGET', h, 'ver') or '0'
  local known = redis.call('HGET', h, 'del') == '1' and '0' or cur
  if ARGV[1] ~= known then return {'conflict', tonumber(cur)} end
end
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
return {'ok', ver}
