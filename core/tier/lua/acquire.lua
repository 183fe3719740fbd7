-- Take a key's lease, or learn how long its holder keeps it. Taking it, index the key
-- under its tags in the same step (one server only: on a cluster the tag indexes live
-- in other slots, and the caller indexes them first, apart).
-- KEYS: lease, fence, epoch, failure, history, value, tag index...
-- ARGV: lease ttl ms, owner, state ttl ms, '1' to report a stored value instead of
--       taking the lease ('' not to), tag index ttl ms (read with tag indexes only)
-- -> {1, token, epoch, server ms, history record or nothing} taken (the record says
--    why the value is missing, see tiercel/core/tier/history.py); the value key is
--    then a member of every tag index given, whose TTL is at least the one given;
--    {0, holder pttl ms} held by someone else;
--    {2} a value is already stored (only when ARGV[4] is '1')
-- include: _prelude.lua
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[6]) == 1 then
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
for i = 7, #KEYS do
    -- as tag_add.lua: add, and extend (never shorten) the index's TTL
    redis.call('SADD', KEYS[i], KEYS[6])
    if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[5]) then
        redis.call('PEXPIRE', KEYS[i], ARGV[5])
    end
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
-- the record last: a nil ends the reply there
return {1, token, epoch, string.format('%d', math.floor(now / 1000)), redis.call('GET', KEYS[5])}
