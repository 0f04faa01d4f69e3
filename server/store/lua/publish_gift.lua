-- publish_gift: step 3 of the gift saga, in the room's tag: the gift becomes a room event.
-- Atomic; once per transfer id (a marker with expiry). Numbers the event, computes the
-- sender's combo, appends it to the capped history, adds to top gifters and totals, and
-- publishes it on the room's channel.
--
-- KEYS[1] room hash        gs:{r<id>}:room
-- KEYS[2] history stream   gs:{r<id>}:events   (entry id = <seq>-0)
-- KEYS[3] top gifters      gs:{r<id>}:top      (zset user_id -> coins)
-- KEYS[4] names            gs:{r<id>}:names    (hash user_id -> name)
-- KEYS[5] combos           gs:{r<id>}:combo    (hash user_id -> gift_id|combo|last_ms)
-- KEYS[6] marker           gs:{r<id>}:done:<transfer_id>
-- ARGV[1] transfer id
-- ARGV[2] sender user id
-- ARGV[3] sender name
-- ARGV[4] gift id
-- ARGV[5] count
-- ARGV[6] total coins
-- ARGV[7] now, epoch ms
-- ARGV[8] combo gap, ms
-- ARGV[9] history length
-- ARGV[10] marker TTL, seconds
-- ARGV[11] the event as JSON without "seq" and "combo" (a JSON object, "{...}")
-- ARGV[12] channel name
-- Returns the event's seq, or 0 if it had been published before.

if redis.call('SET', KEYS[6], '1', 'NX', 'EX', tonumber(ARGV[10])) == false then
  return 0
end
local now = tonumber(ARGV[7])
local count = tonumber(ARGV[5])
local combo = count
local last = redis.call('HGET', KEYS[5], ARGV[2])
if last then
  local gift, n, ts = string.match(last, '^(.-)|(%d+)|(%d+)$')
  if gift == ARGV[4] and now - tonumber(ts) < tonumber(ARGV[8]) then
    combo = tonumber(n) + count
  end
end
redis.call('HSET', KEYS[5], ARGV[2], ARGV[4] .. '|' .. combo .. '|' .. ARGV[7])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HINCRBY', KEYS[1], 'gift_coins', tonumber(ARGV[6]))
redis.call('HINCRBY', KEYS[1], 'gift_count', count)
redis.call('ZINCRBY', KEYS[3], tonumber(ARGV[6]), ARGV[2])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
local body = ARGV[11]
local event = '{"seq":' .. seq .. ',"combo":' .. combo .. ',' .. string.sub(body, 2)
redis.call('XADD', KEYS[2], 'MAXLEN', tonumber(ARGV[9]), seq .. '-0', 'e', event)
redis.call('PUBLISH', ARGV[12], event)
return seq
