-- Extend a lease that is still ours, with its fence and epoch.
-- KEYS: lease, fence, epoch
-- ARGV: token, lease ttl ms, state ttl ms
-- -> 1 renewed, 0 lost
-- include: _prelude.lua
if holds(redis.call('GET', KEYS[1]), ARGV[1]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
    return 1
end
return 0
