-- Never lowers a counter: SET it to ARGV[1] only when that is higher.
-- KEYS: counter
-- ARGV: wanted value
-- -> the value stored afterwards
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if current < wanted then
    redis.call('SET', KEYS[1], ARGV[1])
    return wanted
end
return current
