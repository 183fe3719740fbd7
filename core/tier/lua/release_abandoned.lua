-- Free a lease whose holder process is gone (hard time limit, revoke, worker lost):
-- only if the lease's owner names that task, and wake waiters so one takes it over now.
-- Its in-flight marker is cleared too; either change is published (as done: no value),
-- so that processes which remember the task as in flight forget it.
-- KEYS: lease, inflight
-- ARGV: task id, channel, done message
-- -> 1 released, 0 the lease is not that task's
local value = redis.call('GET', KEYS[1])
local suffix = ':' .. ARGV[1]
local released = 0
local cleared = 0
if value and string.sub(value, -string.len(suffix)) == suffix then
    redis.call('DEL', KEYS[1])
    released = 1
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
    redis.call('DEL', KEYS[2])
    cleared = 1
end
if released == 1 or cleared == 1 then
    redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return released
