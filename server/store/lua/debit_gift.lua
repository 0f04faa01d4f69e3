-- debit_gift: step 1 of the gift saga (DESIGN section 3), in the sender's bucket.
-- Atomic; idempotent by (sender, request_id): a retry replays the first answer. All
-- checks (standing, the gift rate limit, the spending cap, the balance, key types, the
-- ACL) come before any write; a refusal or a fault writes nothing.
--
-- KEYS[1] profile hash      gs:{w<b>}:user:<uid>
-- KEYS[2] wallet hash       gs:{w<b>}:wallet:<uid>
-- KEYS[3] ledger stream     gs:{w<b>}:ledger:<uid>
-- KEYS[4] idempotency hash  gs:{w<b>}:idem:<uid>:gift:<request_id>
-- KEYS[5] pending hash      gs:{w<b>}:pending
-- KEYS[6] spent today       gs:{w<b>}:spent:<uid>:d:<YYYYMMDD>
-- KEYS[7] spent this month  gs:{w<b>}:spent:<uid>:m:<YYYYMM>
-- KEYS[8] gift rate bucket  gs:{w<b>}:rate:<uid>:gift
-- ARGV[1] the transfer (JSON, server.store.gifts.Transfer): kept in the pending hash
--         for steps 2-4; its transfer_id, coins, room_id, gift_id, count, created_ms
--         are read here
-- ARGV[2] "<body hash>|<idempotency TTL s>|<gift rate per s>|<gift burst>"
-- Returns ok(replayed, transfer_id, coins after) or a refusal: unauthorized, suspended,
-- rate_limited, spending_limit_reached, insufficient_coins, idempotency_conflict.

local body_hash, ttl, rate, burst = string.match(ARGV[2], '^(%w+)|(%d+)|([%d.]+)|(%d+)$')
rate = tonumber(rate)
burst = tonumber(burst)

local replayed = replay(KEYS[4], body_hash, 'this request_id was used for another gift')
if replayed then
  return replayed
end
local refused = standing(KEYS[1])
if refused then
  return refused
end

local now = redis_now_ms()
local tokens = bucket_take(KEYS[8], rate, burst, now)
if not tokens then
  return refuse('rate_limited', 'too many gifts: slow down')
end

local t = cjson.decode(ARGV[1])
local price = t.coins
local w = redis.call('HMGET', KEYS[2], 'coins', 'spent', 'cap_period', 'cap_coins')
local coins, spent_total = integer(w[1]), integer(w[2])
if coins == nil or spent_total == nil then
  return fault(KEYS[2] .. ' holds a balance that is not a whole number')
end
if w[3] and w[4] then
  local spent_key = KEYS[6]
  if w[3] == 'monthly' then spent_key = KEYS[7] end
  local spent = integer(redis.call('GET', spent_key))
  if spent == nil then
    return fault(spent_key .. ' is not a whole number')
  end
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

local id = t.transfer_id
local faulty = check(
  {KEYS[2], 'hash', KEYS[3], 'stream', KEYS[4], 'hash', KEYS[5], 'hash', KEYS[6], 'string',
   KEYS[7], 'string', KEYS[8], 'hash'},
  {{'HINCRBY', KEYS[2], 'coins', '1'}, {'INCRBY', KEYS[6], '1'}, {'EXPIRE', KEYS[6], '1'},
   {'INCRBY', KEYS[7], '1'}, {'EXPIRE', KEYS[7], '1'}, {'XADD', KEYS[3], '*', 'k', 'v'},
   {'HSET', KEYS[5], id, ''}, {'HSET', KEYS[8], 't', '0', 'at', '0'}, {'PEXPIRE', KEYS[8], '1'},
   {'HSET', KEYS[4], 'h', '', 'a', ''}, {'EXPIRE', KEYS[4], '1'}})
if faulty then
  return faulty
end

local balance = redis.call('HINCRBY', KEYS[2], 'coins', -price)
redis.call('HINCRBY', KEYS[2], 'spent', price)
redis.call('INCRBY', KEYS[6], price)
redis.call('EXPIRE', KEYS[6], 2 * 86400)
redis.call('INCRBY', KEYS[7], price)
redis.call('EXPIRE', KEYS[7], 32 * 86400)
redis.call('XADD', KEYS[3], '*', 'kind', 'gift_sent', 'coins', -price, 'diamonds', 0,
  'coins_after', balance, 'ref', id, 'room', t.room_id, 'gift_id', t.gift_id,
  'count', t.count, 'ts', decimal(t.created_ms))
redis.call('HSET', KEYS[5], id, ARGV[1])
bucket_write(KEYS[8], tokens, now, rate, burst)
local answer = ok(0, id, decimal(balance))
remember(KEYS[4], body_hash, answer, ttl)
return answer
