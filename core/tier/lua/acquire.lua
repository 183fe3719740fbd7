-- Take a key's lease, or learn how long its holder keeps it.
-- KEYS: lease, fence, epoch, failure[, value]
-- ARGV: lease ttl ms, owner, state ttl ms
-- -> {1, token, epoch} taken; {0, holder pttl ms} held by someone else;
--    {2} a value is already stored (only when KEYS[5], the value key, is given)
-- include: _prelude.lua
if KEYS[5] and redis.call('EXISTS', KEYS[5]) == 1 then
    return {2}
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl >= 0 then
    return {0, pttl}
end
if pttl == -1 then
    -- a lease without expiry (written by hand?) would block the key forever
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    return {0, tonumber(ARGV[1])}
end
local now = now_us()
local token = next_counter(KEYS[2], now, ARGV[3])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[2], 'PX', ARGV[1])
local epoch = redis.call('GET', KEYS[3])
if epoch then
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
else
    epoch = string.format('%d', now)
    redis.call('SET', KEYS[3], epoch, 'PX', ARGV[3])
end
redis.call('DEL', KEYS[4])
return {1, token, epoch}
