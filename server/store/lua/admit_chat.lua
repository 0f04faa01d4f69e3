-- admit_chat: may this user post a chat line now? In the sender's bucket: the account's
-- standing (a suspension takes effect on sockets opened before it) and the chat rate
-- limit, one token bucket per user shared by all its connections and processes.
-- Atomic; takes a token only when it admits. All checks before any write.
--
-- KEYS[1] profile hash      gs:{w<b>}:user:<uid>
-- KEYS[2] chat rate bucket  gs:{w<b>}:rate:<uid>:chat
-- ARGV[1] "<chat rate per s>|<chat burst>"
-- Returns ok() or a refusal: unauthorized, suspended, rate_limited.

local rate, burst = string.match(ARGV[1], '^([%d.]+)|(%d+)$')
rate = tonumber(rate)
burst = tonumber(burst)
local refused = standing(KEYS[1])
if refused then
  return refused
end
local now = redis_now_ms()
local tokens = bucket_take(KEYS[2], rate, burst, now)
if not tokens then
  return refuse('rate_limited', 'too many chat lines: slow down')
end
local faulty = check({KEYS[2], 'hash'},
  {{'HSET', KEYS[2], 't', '0', 'at', '0'}, {'PEXPIRE', KEYS[2], '1'}})
if faulty then
  return faulty
end
bucket_write(KEYS[2], tokens, now, rate, burst)
return ok()
