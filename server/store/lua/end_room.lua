-- end_room: the creator ends the live: the room is marked ended and a room_ended event
-- is the last in its history. Atomic; idempotent (ending an ended room does nothing).
--
-- KEYS[1] room hash        gs:{r<id>}:room
-- KEYS[2] history stream   gs:{r<id>}:events
-- ARGV[1] creator user id (only the creator may end it)
-- ARGV[2] now, epoch ms
-- ARGV[3] history length
-- ARGV[4] the room_ended event as JSON without "seq"
-- ARGV[5] channel name
-- Returns the room_ended seq, 0 if it had ended before, -1 unknown room, -2 not the creator.

local r = redis.call('HMGET', KEYS[1], 'creator_id', 'status')
if not r[1] then return -1 end
if r[1] ~= ARGV[1] then return -2 end
if r[2] ~= 'live' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'ended', 'ended_ms', ARGV[2])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local event = '{"seq":' .. seq .. ',' .. string.sub(ARGV[4], 2)
redis.call('XADD', KEYS[2], 'MAXLEN', tonumber(ARGV[3]), seq .. '-0', 'e', event)
redis.call('PUBLISH', ARGV[5], event)
return seq
