-- Compare-and-delete: delete a key only while it still holds the expected value (an
-- in-flight marker naming a task, a periodic lock's token, the bytes found corrupt),
-- so a value written in between survives.
-- KEYS: key
-- ARGV: expected value
-- -> 1 deleted, 0 not
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
