-- May this client re-publish a key's task now? Only when nobody computes the key
-- (no lease) and no other client re-published it within the period; then marks it.
-- KEYS: lease, republish marker
-- ARGV: period ms
-- -> 1 claimed, 0 not
if redis.call('EXISTS', KEYS[1]) == 1 then
    return 0
end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then
    return 1
end
return 0
