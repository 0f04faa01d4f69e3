-- debit_gift: step 1 of the gift saga (DESIGN section 3), in the sender's bucket.
-- Atomic; idempotent by (sender, request_id): a retry replays the first answer. All
-- checks (standing, the gift rate limit, the spending cap, the balance, key types, the
-- ACL) come before any write; a refusal or a fault writes nothing.
--
-- KEYS[1] profile hash      gs:{w<b>}:user:<uid>
-- KEYS[2] wallet hash       gs:{w<b>}:wallet:<uid>   (also the gift rate bucket: fields
--                           gift_tokens, gift_at)
-- KEYS[3] ledger stream     gs:{w<b>}:ledger:<uid>
-- KEYS[4] idempotency hash  gs:{w<b>}:idem:<uid>:gift:<request_id>
-- KEYS[5] pending hash      gs:{w<b>}:pending
-- KEYS[6] spent today       gs:{w<b>}:spent:<uid>:d:<YYYYMMDD>
-- KEYS[7] spent this month  gs:{w<b>}:spent:<uid>:m:<YYYYMM>
-- ARGV[1] the transfer (JSON, server.store.gifts.Transfer), kept as it is in the pending
--         hash for steps 2-4
-- ARGV[2] "<body hash>|<idempotency TTL s>|<gift rate per s>|<gift burst>|<transfer id>|
--         <coins>|<created ms>|<count>|<gift id>|<room id>" (one line: the transfer's
--         fields this step reads, cheaper to match than to decode)
-- Returns ok(replayed, transfer_id, coins after) or a refusal: unauthorized, suspended,
-- rate_limited, spending_limit_reached, insufficient_coins, idempotency_conflict.

local body_hash, ttl, rate, burst, id, price, created, count, gift, room = string.match(
  ARGV[2], '^(%w+)|(%d+)|([%d.]+)|(%d+)|([%w]+)|(%d+)|(%d+)|(%d+)|([%w_.-]+)|([%w]+)$')
if not body_hash then
  return fault('debit_gift: malformed argument')
end
rate = tonumber(rate)
burst = tonumber(burst)
price = tonumber(price)

local replayed = replay(KEYS[4], body_hash, 'this request_id was used for another gift')
if replayed then
  return replayed
end
local refused = standing(KEYS[1])
if refused then
  return refused
end

local w = redis.call('HMGET', KEYS[2], 'coins', 'spent', 'cap_period', 'cap_coins',
  'gift_tokens', 'gift_at')
local now = redis_now_ms()
local tokens = bucket_take(w[5], w[6], rate, burst, now)
if not tokens then
  return refuse('rate_limited', 'too many gifts: slow down')
end

local coins, spent_total = integer(w[1]), integer(w[2])
local spent_day, spent_month = integer(redis.call('GET', KEYS[6])),
  integer(redis.call('GET', KEYS[7]))
if coins == nil or spent_total == nil or spent_day == nil or spent_month == nil then
  return fault(KEYS[2] .. ' or its spending counters hold a value that is not a whole number')
end
if w[3] and w[4] then
  local spent = spent_day
  if w[3] == 'monthly' then spent = spent_month end
  if spent + price > tonumber(w[4]) then
    return refuse('spending_limit_reached',
      'this gift would pass your ' .. w[3] .. ' spending limit of ' .. w[4] ..
        ' coins (' .. decimal(spent) .. ' spent)')
  end
end
if coins < price then
  return refuse('insufficient_coins',
    'this gift costs ' .. decimal(price) .. ' coins; you have ' .. decimal(coins))
end

local faulty = check({KEYS[3], 'stream', KEYS[5], 'hash'},
  {{'HINCRBY', KEYS[2], 'coins', '1'}, {'HSET', KEYS[2], 'gift_tokens', '0'},
   {'INCRBY', KEYS[6], '1'}, {'EXPIRE', KEYS[6], '1'},
   {'INCRBY', KEYS[7], '1'}, {'EXPIRE', KEYS[7], '1'}, {'XADD', KEYS[3], '*', 'k', 'v'},
   {'HSET', KEYS[5], id, ''}, {'HSET', KEYS[4], 'h', '', 'a', ''}, {'EXPIRE', KEYS[4], '1'}})
if faulty then
  return faulty
end

local balance = redis.call('HINCRBY', KEYS[2], 'coins', -price)
redis.call('HINCRBY', KEYS[2], 'spent', price)
redis.call('HSET', KEYS[2], 'gift_tokens', tostring(tokens), 'gift_at', decimal(now))
redis.call('INCRBY', KEYS[6], price)
redis.call('EXPIRE', KEYS[6], 2 * 86400)
redis.call('INCRBY', KEYS[7], price)
redis.call('EXPIRE', KEYS[7], 32 * 86400)
redis.call('XADD', KEYS[3], '*', 'kind', 'gift_sent', 'coins', -price, 'diamonds', 0,
  'coins_after', balance, 'ref', id, 'room', room, 'gift_id', gift, 'count', count,
  'ts', created)
redis.call('HSET', KEYS[5], id, ARGV[1])
local answer = ok(0, id, decimal(balance))
remember(KEYS[4], body_hash, answer, ttl)
return answer
