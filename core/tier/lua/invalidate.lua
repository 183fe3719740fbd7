-- Invalidate one key: bump its epoch (a running computation's write-back is then
-- rejected), delete its value, in-flight marker and failure record, and publish.
-- An absent epoch is not created: every running computation created it at acquire,
-- so its absence already rejects their write-backs.
-- The key's history record says it was invalidated (by key or by tag).
-- KEYS: value, inflight, failure, epoch, history
-- ARGV: state ttl ms, channel, invalidated message ('' = do not publish), history kind
--       ('k' by key, 't' by tag)
-- -> {new epoch or 0, 1 if the value existed}
-- include: _prelude.lua
local epoch = 0
local now = now_us()
if redis.call('EXISTS', KEYS[4]) == 1 then
    epoch = next_counter(KEYS[4], now, ARGV[1])
end
redis.call('SET', KEYS[5], string.format('%s|%d', ARGV[4], math.floor(now / 1000)), 'PX', ARGV[1])
local existed = redis.call('UNLINK', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3])
if ARGV[3] ~= '' then
    redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return {epoch, existed}
