-- room_welcome: what a viewer's welcome shows, read at one instant, after this process's
-- presence is written (so the count includes the newcomer). One round trip instead of
-- one per part. All checks before the one write.
--
-- KEYS[1] room hash          gs:{r<id>}:room
-- KEYS[2] top gifters        gs:{r<id>}:top      (sorted set: user id -> coins)
-- KEYS[3] gifters' names     gs:{r<id>}:names    (hash: user id -> name)
-- KEYS[4] presence           gs:{r<id>}:presence (hash: process id -> "<n>:<expires_ms>")
-- KEYS[5] history stream     gs:{r<id>}:events   (entries <seq>-0 {e = <event json>})
-- ARGV[1] this process's id
-- ARGV[2] its presence value, "<viewers>:<expires_ms>"
-- ARGV[3] since: a seq, or "" for none
-- ARGV[4] how many top gifters
-- Returns ok(room, top, presence, history): room as HGETALL; top as {user_id, coins,
-- name, ...}, highest first; presence as HGETALL; history as {entry_id, event, ...}, the
-- events after `since` still kept, oldest first. Or the refusal not_found (nothing
-- written).

if string.match(ARGV[2], '^%d+:%d+$') == nil or string.match(ARGV[3], '^%d*$') == nil
    or string.match(ARGV[4], '^%d+$') == nil then
  return fault('room_welcome: malformed arguments')
end
local room = redis.call('HGETALL', KEYS[1])
if #room == 0 then
  return refuse('not_found', 'no such room')
end
local faulty = check({KEYS[2], 'zset', KEYS[3], 'hash', KEYS[4], 'hash', KEYS[5], 'stream'},
  {{'HSET', KEYS[4], ARGV[1], ARGV[2]}})
if faulty then
  return faulty
end

redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
local rows = redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[4]) - 1, 'WITHSCORES')
local top = {}
for i = 1, #rows, 2 do
  top[#top + 1] = rows[i]
  top[#top + 1] = rows[i + 1]
  top[#top + 1] = redis.call('HGET', KEYS[3], rows[i]) or ''
end
local history = {}
if ARGV[3] ~= '' then
  for _, entry in ipairs(redis.call('XRANGE', KEYS[5], '(' .. ARGV[3] .. '-0', '+')) do
    local fields = entry[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'e' then
        history[#history + 1] = entry[1]
        history[#history + 1] = fields[j + 1]
      end
    end
  end
end
return ok(room, top, redis.call('HGETALL', KEYS[4]), history)
