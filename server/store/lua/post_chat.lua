-- post_chat: a chat line becomes a room event. Atomic; once per (sender, request_id).
-- The sender's standing and chat rate were checked just before (admit_chat, in the
-- sender's bucket). All checks before any write.
--
-- KEYS[1] room hash        gs:{r<id>}:room
-- KEYS[2] history stream   gs:{r<id>}:events
-- KEYS[3] marker           gs:{r<id>}:done:chat:<user_id>:<request_id>
-- ARGV[1] the event as JSON without "seq" (a JSON object, "{...}")
-- ARGV[2] "<history length>|<marker TTL s>|<PUBLISH or SPUBLISH>"
-- ARGV[3] channel name
-- Returns ok(before, seq): before 1 (seq 0) if this request was posted before; or the
-- refusal room_not_live.

local history, ttl, publish = string.match(ARGV[2], '^(%d+)|(%d+)|(%u+)$')
if publish ~= 'PUBLISH' and publish ~= 'SPUBLISH' then
  return fault('unknown publish command ' .. tostring(publish))
end
if redis.call('HGET', KEYS[1], 'status') ~= 'live' then
  return refuse('room_not_live', 'this live has ended')
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return ok(1, 0)
end
local faulty = check({KEYS[1], 'hash', KEYS[2], 'stream', KEYS[3], 'string'},
  {{'HINCRBY', KEYS[1], 'seq', '1'}, {'XADD', KEYS[2], 'MAXLEN', history, '1-0', 'e', ''},
   {'SET', KEYS[3], '1', 'EX', ttl}, {publish, ARGV[3], ''}})
if faulty then
  return faulty
end
local r = redis.call('HMGET', KEYS[1], 'seq', 'chat_count')
if integer(r[1]) == nil or integer(r[2]) == nil then
  return fault(KEYS[1] .. ' holds a counter that is not a whole number')
end

local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HINCRBY', KEYS[1], 'chat_count', 1)
local event = '{"seq":' .. seq .. ',' .. string.sub(ARGV[1], 2)
redis.call('XADD', KEYS[2], 'MAXLEN', tonumber(history), seq .. '-0', 'e', event)
redis.call('SET', KEYS[3], '1', 'EX', ttl)
redis.call(publish, ARGV[3], event)
return ok(0, seq)
