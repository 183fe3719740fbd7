-- Helpers of the lease, write-back and invalidation scripts; a script that needs them
-- names this file in an include line of its header.
--
-- Fence and epoch values are time-floored counters: next_counter stores
-- max(previous + 1, now) where now is the server time in microseconds (about 1.8e15
-- today: exact in Lua's doubles until the year 2255).
-- Lease values are "<token>:<owner>"; holds compares the token part.
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
