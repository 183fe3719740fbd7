-- Mark a task as computing a key (coalescing at submit); with the value key given, only
-- when no value is stored: one round trip for a submit that missed its local levels.
-- KEYS: inflight[, value]
-- ARGV: task id, ttl ms
-- -> nil when claimed; the task id already there; or {value} when KEYS[2] holds one
--    (nothing is claimed then)
if KEYS[2] then
    local value = redis.call('GET', KEYS[2])
    if value then
        return {value}
    end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return false
end
return redis.call('GET', KEYS[1])
