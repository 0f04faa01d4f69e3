-- post_chat: a chat line becomes a room event. Atomic; once per (sender, request_id).
--
-- KEYS[1] room hash        gs:{r<id>}:room
-- KEYS[2] history stream   gs:{r<id>}:events
-- KEYS[3] marker           gs:{r<id>}:done:chat:<user_id>:<request_id>
-- ARGV[1] history length
-- ARGV[2] marker TTL, seconds
-- ARGV[3] the event as JSON without "seq" (a JSON object, "{...}")
-- ARGV[4] channel name
-- Returns the event's seq, 0 if this request was posted before, -1 if the room is not live.

if redis.call('HGET', KEYS[1], 'status') ~= 'live' then
  return -1
end
if redis.call('SET', KEYS[3], '1', 'NX', 'EX', tonumber(ARGV[2])) == false then
  return 0
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HINCRBY', KEYS[1], 'chat_count', 1)
local event = '{"seq":' .. seq .. ',' .. string.sub(ARGV[3], 2)
redis.call('XADD', KEYS[2], 'MAXLEN', tonumber(ARGV[1]), seq .. '-0', 'e', event)
redis.call('PUBLISH', ARGV[4], event)
return seq
