-- debit_gift: step 1 of the gift saga (DESIGN section 3), in the sender's bucket.
-- Atomic; idempotent by (sender, request_id): a retry replays the first answer.
-- replay, remember, refuse_inactive: _common.lua, loaded in front of this script.
--
-- KEYS[1] profile hash      gs:{w<b>}:user:<uid>
-- KEYS[2] wallet hash       gs:{w<b>}:wallet:<uid>
-- KEYS[3] ledger stream     gs:{w<b>}:ledger:<uid>
-- KEYS[4] idempotency hash  gs:{w<b>}:idem:<uid>:gift:<request_id>
-- KEYS[5] pending hash      gs:{w<b>}:pending
-- KEYS[6] spent today       gs:{w<b>}:spent:<uid>:d:<YYYYMMDD>
-- KEYS[7] spent this month  gs:{w<b>}:spent:<uid>:m:<YYYYMM>
-- ARGV[1] body hash (gift, count, room)
-- ARGV[2] transfer id (new; used only the first time)
-- ARGV[3] total price in coins
-- ARGV[4] now, epoch ms
-- ARGV[5] idempotency record TTL, seconds
-- ARGV[6] transfer payload (JSON, stored in the pending hash for steps 2-4)
-- Returns {"transfer_id", "coins", "replayed"} or {"error", "message"}; a refusal writes nothing.

local replayed = replay(KEYS[4], ARGV[1], 'bad_request',
  'this request_id was used for another gift')
if replayed then
  return replayed
end

local inactive = refuse_inactive(KEYS[1], 'forbidden')
if inactive then
  return inactive
end

local price = tonumber(ARGV[3])
local w = redis.call('HMGET', KEYS[2], 'coins', 'cap_period', 'cap_coins')
local coins = tonumber(w[1] or '0')
if w[2] and w[3] then
  local spent_key = KEYS[6]
  if w[2] == 'monthly' then spent_key = KEYS[7] end
  local spent = tonumber(redis.call('GET', spent_key) or '0')
  if spent + price > tonumber(w[3]) then
    return cjson.encode({error = 'spending_limit_reached',
      message = 'this gift would pass your ' .. w[2] .. ' spending limit of ' .. w[3] ..
        ' coins (' .. spent .. ' spent)'})
  end
end
if coins < price then
  return cjson.encode({error = 'insufficient_coins',
    message = 'this gift costs ' .. price .. ' coins; you have ' .. coins})
end

local balance = redis.call('HINCRBY', KEYS[2], 'coins', -price)
redis.call('HINCRBY', KEYS[2], 'spent', price)
redis.call('INCRBY', KEYS[6], price)
redis.call('EXPIRE', KEYS[6], 2 * 86400)
redis.call('INCRBY', KEYS[7], price)
redis.call('EXPIRE', KEYS[7], 32 * 86400)
redis.call('XADD', KEYS[3], '*', 'kind', 'gift_sent', 'coins', -price, 'diamonds', 0,
  'coins_after', balance, 'ref', ARGV[2], 'ts', ARGV[4])
redis.call('HSET', KEYS[5], ARGV[2], ARGV[6])
local answer = cjson.encode({transfer_id = ARGV[2], coins = balance, replayed = false})
remember(KEYS[4], ARGV[1], answer, ARGV[5])
return answer
