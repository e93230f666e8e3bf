-- Take or renew a lease lock. KEYS[1] the lock; ARGV[1] holder, ARGV[2] ttl ms. Returns 1 if held by ARGV[1].
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
