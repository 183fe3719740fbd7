-- Add members to a tag index and extend (never shorten) its TTL, on every Redis
-- version: PEXPIRE ... GT alone leaves a fresh set without any TTL, because GT treats
-- "no expiry" as infinite. Callers send at most about 1000 members per call (Lua's
-- unpack has a stack limit near 8000).
-- KEYS: tag index
-- ARGV: ttl ms, member...
-- -> 1
redis.call('SADD', KEYS[1], unpack(ARGV, 2))
local ttl = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
