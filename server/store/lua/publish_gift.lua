-- publish_gift: step 3 of the gift saga, in the room's tag: the gift is shown, or, if the
-- room is no longer live, refused for good (the sender is then refunded: refund_gift).
-- Atomic; decided once per transfer id: the marker keeps the decision ('shown' or
-- 'refused'), so every later attempt, from any process, gives the same answer and shows
-- nothing twice. Shown: the event is numbered, the sender's combo computed, the event
-- appended to the capped history (with its transfer id, for the audit), top gifters and
-- totals updated, and the event published on the room's channel. All checks before any
-- write.
--
-- KEYS[1] room hash        gs:{r<id>}:room
-- KEYS[2] history stream   gs:{r<id>}:events   (entry id = <seq>-0; fields e, t)
-- KEYS[3] top gifters      gs:{r<id>}:top      (zset user_id -> coins)
-- KEYS[4] names            gs:{r<id>}:names    (hash user_id -> name)
-- KEYS[5] combos           gs:{r<id>}:combo    (hash user_id -> gift_id|combo|last_ms)
-- KEYS[6] marker           gs:{r<id>}:done:<transfer_id>
-- ARGV[1] transfer id
-- ARGV[2] the event as JSON without "seq" and "combo" ({"ts":…,"kind":"gift","from":
--         {"user_id":…,"name":…},"gift_id":…,"count":…,"coins":…})
-- ARGV[3] "<combo gap ms>|<history length>|<marker TTL s>|<PUBLISH or SPUBLISH>|<sender id>|
--         <gift id>|<count>|<coins>|<ts ms>" (one line: the event's fields this step
--         reads, cheaper to match than to decode)
-- ARGV[4] channel name
-- ARGV[5] sender name
-- Returns ok(before, 'shown', seq) or ok(before, 'refused', 0); before is 1 when the
-- decision had been taken by an earlier attempt (seq is then 0).

local decided = redis.call('GET', KEYS[6])
if decided == 'shown' or decided == '1' then
  return ok(1, 'shown', 0)
end
if decided == 'refused' then
  return ok(1, 'refused', 0)
end
local gap, history, ttl, publish, sender, gift, count, coins, now = string.match(ARGV[3],
  '^(%d+)|(%d+)|(%d+)|(%u+)|([%w]+)|([%w_.-]+)|(%d+)|(%d+)|(%d+)$')
if publish ~= 'PUBLISH' and publish ~= 'SPUBLISH' then
  return fault('unknown publish command ' .. tostring(publish))
end

local r = redis.call('HMGET', KEYS[1], 'status', 'seq', 'gift_coins', 'gift_count')
if r[1] ~= 'live' then
  local faulty = check({}, {{'SET', KEYS[6], 'refused', 'EX', ttl}})
  if faulty then
    return faulty
  end
  redis.call('SET', KEYS[6], 'refused', 'EX', ttl)
  return ok(0, 'refused', 0)
end
if integer(r[2]) == nil or integer(r[3]) == nil or integer(r[4]) == nil then
  return fault(KEYS[1] .. ' holds a counter that is not a whole number')
end

count, coins, now = tonumber(count), tonumber(coins), tonumber(now)
local last = redis.call('HGET', KEYS[5], sender)
local faulty = check({KEYS[2], 'stream', KEYS[3], 'zset', KEYS[4], 'hash'},
  {{'HSET', KEYS[5], sender, ''}, {'HINCRBY', KEYS[1], 'seq', '1'},
   {'ZINCRBY', KEYS[3], '1', sender}, {'HSET', KEYS[4], sender, ''},
   {'XADD', KEYS[2], 'MAXLEN', history, '1-0', 'e', '', 't', ''},
   {'SET', KEYS[6], 'shown', 'EX', ttl}, {publish, ARGV[4], ''}})
if faulty then
  return faulty
end

local combo = count
if last then
  local last_gift, n, ts = string.match(last, '^(.-)|(%d+)|(%d+)$')
  if last_gift == gift and now - tonumber(ts) < tonumber(gap) then
    combo = tonumber(n) + count
  end
end
redis.call('HSET', KEYS[5], sender, gift .. '|' .. decimal(combo) .. '|' .. decimal(now))
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HINCRBY', KEYS[1], 'gift_coins', coins)
redis.call('HINCRBY', KEYS[1], 'gift_count', count)
redis.call('ZINCRBY', KEYS[3], coins, sender)
redis.call('HSET', KEYS[4], sender, ARGV[5])
local shown = '{"seq":' .. seq .. ',"combo":' .. decimal(combo) .. ',' .. string.sub(ARGV[2], 2)
redis.call('XADD', KEYS[2], 'MAXLEN', tonumber(history), seq .. '-0', 'e', shown, 't', ARGV[1])
redis.call('SET', KEYS[6], 'shown', 'EX', ttl)
redis.call(publish, ARGV[4], shown)
return ok(0, 'shown', seq)
