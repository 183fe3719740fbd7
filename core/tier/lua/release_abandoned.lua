-- Free a lease whose holder process is gone (hard time limit, revoke, worker lost):
-- only if the lease's owner names that task, and wake waiters so one takes it over now.
-- KEYS: lease, inflight
-- ARGV: task id, channel, done message
-- -> 1 released, 0 the lease is not that task's
local value = redis.call('GET', KEYS[1])
local suffix = ':' .. ARGV[1]
local released = 0
if value and string.sub(value, -string.len(suffix)) == suffix then
    redis.call('DEL', KEYS[1])
    released = 1
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
    redis.call('DEL', KEYS[2])
end
if released == 1 then
    redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return released
