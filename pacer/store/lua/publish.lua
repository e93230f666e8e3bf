-- Publish refit outcomes. KEYS[1] models hash, KEYS[2] seq zset, KEYS[3] seq counter.
-- ARGV: triples (bidder_id, model JSON or '' for none, fit JSON). Per bidder the hash holds v:<id> (version of
-- the current good model), m:<id> (that model) and f:<id> (the last attempt). A rejected fit ('' model) leaves
-- the current model alone. JSON is stored as given: decoding it here would round floats to 14 digits.
local seq = redis.call('INCR', KEYS[3])
for i = 1, #ARGV, 3 do
  local id = ARGV[i]
  if ARGV[i + 1] ~= '' then
    redis.call('HINCRBY', KEYS[1], 'v:' .. id, 1)
    redis.call('HSET', KEYS[1], 'm:' .. id, ARGV[i + 1])
  end
  redis.call('HSET', KEYS[1], 'f:' .. id, ARGV[i + 2])
  redis.call('ZADD', KEYS[2], seq, id)
end
return seq
