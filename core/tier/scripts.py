"""Lua sources of the lease, write-back, invalidation and in-flight scripts.

Every script touches only keys of one cache key (value, lease, fence, epoch,
inflight, failure), which share the value key's ``{digest}`` hash tag, so each
runs atomically on one Redis Cluster slot. ``PUBLISH`` inside a script is
allowed on Cluster (channels are not keys).

Lease values are ``"<token>:<owner>"``; ``holds`` compares the token part.

Fence and epoch values are time-floored counters: a new value is
``max(previous + 1, server time in microseconds)`` (about 1.8e15 today: exact
in Lua's doubles until the year 2255). Both keys carry a long TTL and live on
an ``allkeys-lru`` server, so they may vanish; a counter that restarts from
the clock is still larger than every token or epoch handed out before, and a
write-back requires the epoch key to be present and equal, so losing either
key can only reject a write-back, never let a stale one through. (The one
exception needs the key lost *and* the server clock stepped backwards onto
exactly a stale holder's value.)
Scripts call ``TIME`` before writing, which needs script effects replication
(the default since Redis 5, the only mode since Redis 7).
"""

from __future__ import annotations

from typing import Final

_PRELUDE: Final = """
local function now_us()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function next_counter(key, now, ttl_ms)
    local value = tonumber(redis.call('GET', key) or '0') + 1
    if value < now then value = now end
    value = string.format('%d', value)
    redis.call('SET', key, value, 'PX', ttl_ms)
    return value
end
local function holds(value, token)
    return value and string.sub(value, 1, string.len(token) + 1) == token .. ':'
end
"""

# KEYS: lease, fence, epoch, failure
# ARGV: lease ttl ms, owner, state ttl ms
# -> {0, holder pttl ms} or {1, token, epoch}
ACQUIRE: Final = (
    _PRELUDE
    + """
-- KEYS[5], when given, is the value key: a value already there means no lease is needed
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
"""
)

# KEYS: lease, fence, epoch
# ARGV: token, lease ttl ms, state ttl ms
RENEW: Final = (
    _PRELUDE
    + """
if holds(redis.call('GET', KEYS[1]), ARGV[1]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
    redis.call('PEXPIRE', KEYS[3], ARGV[3])
    return 1
end
return 0
"""
)

# KEYS: lease
# ARGV: token
RELEASE: Final = (
    _PRELUDE
    + """
if holds(redis.call('GET', KEYS[1]), ARGV[1]) then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
)

# KEYS: value, lease, fence, epoch, inflight
# ARGV: token, epoch, entry bytes, value ttl ms, inflight id ('' = leave it), channel, message
#: KEYS: lease, inflight. ARGV: task id, channel, completion message.
#: Frees a lease whose holder process is gone (hard time limit, revoke, worker lost): only
#: if the lease's owner names that task, and wakes waiters so one takes it over now.
RELEASE_ABANDONED: Final = """
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
"""

#: KEYS: lease, republish marker. ARGV: period in ms. 1 when nobody computes the key (no
#: lease) and no other client re-published it within the period; then marks it.
CLAIM_REPUBLISH: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then
    return 1
end
return 0
"""

WRITE_BACK: Final = (
    _PRELUDE
    + """
local stored = 0
if redis.call('GET', KEYS[3]) == ARGV[1] and redis.call('GET', KEYS[4]) == ARGV[2] then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
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
"""
)

# KEYS: failure, lease, fence, inflight
# ARGV: token, record, failure ttl ms, inflight id ('' = leave it), channel, message
FAIL: Final = (
    _PRELUDE
    + """
local recorded = 0
if redis.call('GET', KEYS[3]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    recorded = 1
end
if holds(redis.call('GET', KEYS[2]), ARGV[1]) then
    redis.call('DEL', KEYS[2])
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[4]) == ARGV[4] then
    redis.call('DEL', KEYS[4])
end
if recorded == 1 then
    redis.call('PUBLISH', ARGV[5], ARGV[6])
end
return recorded
"""
)

# KEYS: value, inflight, failure, epoch
# ARGV: state ttl ms, channel, message ('' = do not publish)
# -> {new epoch or 0, 1 if the value existed}
#
# An absent epoch is not created: every running computation created it at
# acquire, so its absence already rejects their write-backs.
INVALIDATE: Final = (
    _PRELUDE
    + """
local epoch = 0
if redis.call('EXISTS', KEYS[4]) == 1 then
    epoch = next_counter(KEYS[4], now_us(), ARGV[1])
end
local existed = redis.call('UNLINK', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3])
if ARGV[3] ~= '' then
    redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return {epoch, existed}
"""
)

# KEYS: inflight
# ARGV: task id, ttl ms
# -> nil when claimed, else the task id already there
CLAIM_INFLIGHT: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return false
end
return redis.call('GET', KEYS[1])
"""

# KEYS: key
# ARGV: expected value
DELETE_IF_EQUAL: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
