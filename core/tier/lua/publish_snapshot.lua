-- Write one process's metrics snapshot and stamp it in the fleet index with the
-- server's clock (so hosts' clocks do not matter); drop index members older than the
-- snapshot TTL.
-- KEYS: snapshot, index
-- ARGV: document, ttl ms, process id
-- -> the server time (ms) of the stamp
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[2], ttl * 10)
return now
