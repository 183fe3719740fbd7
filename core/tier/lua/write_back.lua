-- Store a computed value only if the lease's token is still the newest fence and the
-- epoch has not moved since acquire; release the lease and the in-flight marker either
-- way, and publish the done message (waiters re-check, and take the lease over).
-- A stored value leaves its history record (written, and when it expires) for as long
-- as the value lives plus the state ttl: a later miss then tells expiry from eviction.
-- KEYS: value, lease, fence, epoch, inflight, history
-- ARGV: token, epoch, entry bytes, value ttl ms, inflight id ('' = leave it), channel,
--       done message, state ttl ms
-- -> 1 stored, 0 fenced out
-- include: _prelude.lua
local stored = 0
if redis.call('GET', KEYS[3]) == ARGV[1] and redis.call('GET', KEYS[4]) == ARGV[2] then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
    local at = math.floor(now_us() / 1000)
    local ttl = tonumber(ARGV[4])
    redis.call('SET', KEYS[6], string.format('w|%d|%d', at, at + ttl), 'PX', ttl + tonumber(ARGV[8]))
    stored = 1
end
if holds(redis.call('GET', KEYS[2]), ARGV[1]) then
    redis.call('DEL', KEYS[2])
end
if ARGV[5] ~= '' and redis.call('GET', KEYS[5]) == ARGV[5] then
    redis.call('DEL', KEYS[5])
end
-- published even when fenced out: waiters re-check and take the lease over
redis.call('PUBLISH', ARGV[6], ARGV[7])
return stored
