-- Mark a task as computing a key (coalescing at submit).
-- KEYS: inflight
-- ARGV: task id, ttl ms
-- -> nil when claimed, else the task id already there
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return false
end
return redis.call('GET', KEYS[1])
