-- Record that the newest lease's computation failed and publish the failed message;
-- release the lease and the in-flight marker either way. A holder that was fenced
-- out records and publishes nothing: it must not fail its successor's waiters.
-- The key's history record says its computation failed uncached.
-- KEYS: failure, lease, fence, inflight, history
-- ARGV: token, record, failure ttl ms, inflight id ('' = leave it), channel,
--       failed message, state ttl ms
-- -> 1 recorded, 0 fenced out
-- include: _prelude.lua
local recorded = 0
if redis.call('GET', KEYS[3]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    redis.call('SET', KEYS[5], string.format('f|%d', math.floor(now_us() / 1000)), 'PX', ARGV[7])
    recorded = 1
end
if holds(redis.call('GET', KEYS[2]), ARGV[1]) then
    redis.call('DEL', KEYS[2])
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[4]) == ARGV[4] then
    redis.call('DEL', KEYS[4])
end
if recorded == 1 then
    redis.call('PUBLISH', ARGV[5], ARGV[6])
end
return recorded
