-- admit_chat: may this user post a chat line now? In the sender's bucket: the account's
-- standing (a suspension takes effect on sockets opened before it) and the chat rate
-- limit, one token bucket per user shared by all its connections and processes.
-- Atomic; takes a token only when it admits. All checks before any write.
--
-- KEYS[1] profile hash      gs:{w<b>}:user:<uid>
-- KEYS[2] chat rate bucket  gs:{w<b>}:rate:<uid>:chat  (hash: t tokens, at ms)
-- ARGV[1] "<chat rate per s>|<chat burst>"
-- Returns ok() or a refusal: unauthorized, suspended, rate_limited.

local rate, burst = string.match(ARGV[1], '^([%d.]+)|(%d+)$')
rate = tonumber(rate)
burst = tonumber(burst)
local refused = standing(KEYS[1])
if refused then
  return refused
end
local b = redis.call('HMGET', KEYS[2], 't', 'at')
local now = redis_now_ms()
local tokens = bucket_take(b[1], b[2], rate, burst, now)
if not tokens then
  return refuse('rate_limited', 'too many chat lines: slow down')
end
local faulty = check({}, {{'HSET', KEYS[2], 't', '0', 'at', '0'}, {'PEXPIRE', KEYS[2], '1'}})
if faulty then
  return faulty
end
redis.call('HSET', KEYS[2], 't', tostring(tokens), 'at', decimal(now))
redis.call('PEXPIRE', KEYS[2], bucket_ttl_ms(rate, burst))
return ok()
