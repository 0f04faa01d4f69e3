-- open_socket: count one more open room socket for a signed-in user, over every process,
-- unless the user already has the most allowed. In the user's bucket. Each socket is a
-- member of a sorted set scored by when it expires: its process renews it while it is
-- open (renew_sockets) and removes it on close, so a dead process's sockets vanish.
-- Atomic; opening the same member twice counts it once. All checks before any write.
--
-- KEYS[1] profile hash   gs:{w<b>}:user:<uid>
-- KEYS[2] socket set     gs:{w<b>}:sockets:<uid>
-- ARGV[1] "<member>|<most sockets>|<member TTL ms>"
-- Returns ok() or a refusal: unauthorized, suspended, rate_limited.

local member, most, ttl = string.match(ARGV[1], '^([^|]+)|(%d+)|(%d+)$')
local refused = standing(KEYS[1])
if refused then
  return refused
end
local faulty = check({KEYS[2], 'zset'},
  {{'ZREMRANGEBYSCORE', KEYS[2], '-inf', '0'}, {'ZADD', KEYS[2], '0', member},
   {'PEXPIRE', KEYS[2], '1'}})
if faulty then
  return faulty
end
local now = redis_now_ms()
local live = redis.call('ZCOUNT', KEYS[2], '(' .. decimal(now), '+inf')
if not redis.call('ZSCORE', KEYS[2], member) and live >= tonumber(most) then
  return refuse('rate_limited',
    'too many open connections for this account (at most ' .. most .. ')')
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', decimal(now))
redis.call('ZADD', KEYS[2], decimal(now + tonumber(ttl)), member)
redis.call('PEXPIRE', KEYS[2], tonumber(ttl))
return ok()
