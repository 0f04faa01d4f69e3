-- end_room: the creator ends the live: the room is marked ended and a room_ended event
-- is the last in its history (every gift not shown by then is refused by publish_gift
-- and refunded). Atomic; idempotent (ending an ended room does nothing). All checks
-- before any write.
--
-- KEYS[1] room hash        gs:{r<id>}:room
-- KEYS[2] history stream   gs:{r<id>}:events
-- ARGV[1] creator user id (only the creator may end it)
-- ARGV[2] the room_ended event as JSON without "seq"
-- ARGV[3] "<now ms>|<history length>|<PUBLISH or SPUBLISH>"
-- ARGV[4] channel name
-- Returns ok(before, seq): before 1 (seq 0) if it had ended before; or the refusals
-- not_found (no such room) and forbidden (not the creator).

local now, history, publish = string.match(ARGV[3], '^(%d+)|(%d+)|(%u+)$')
if publish ~= 'PUBLISH' and publish ~= 'SPUBLISH' then
  return fault('unknown publish command ' .. tostring(publish))
end
local r = redis.call('HMGET', KEYS[1], 'creator_id', 'status', 'seq')
if not r[1] then
  return refuse('not_found', 'no such room')
end
if r[1] ~= ARGV[1] then
  return refuse('forbidden', "only the room's creator can end its live")
end
if r[2] ~= 'live' then
  return ok(1, 0)
end
local faulty = check({KEYS[1], 'hash', KEYS[2], 'stream'},
  {{'HSET', KEYS[1], 'status', 'ended'}, {'HINCRBY', KEYS[1], 'seq', '1'},
   {'XADD', KEYS[2], 'MAXLEN', history, '1-0', 'e', ''}, {publish, ARGV[4], ''}})
if faulty then
  return faulty
end
if integer(r[3]) == nil then
  return fault(KEYS[1] .. ' holds a seq that is not a whole number')
end
redis.call('HSET', KEYS[1], 'status', 'ended', 'ended_ms', now)
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local event = '{"seq":' .. seq .. ',' .. string.sub(ARGV[2], 2)
redis.call('XADD', KEYS[2], 'MAXLEN', tonumber(history), seq .. '-0', 'e', event)
redis.call(publish, ARGV[4], event)
return ok(0, seq)
