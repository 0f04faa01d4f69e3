-- recharge: credit a coin package to a wallet after a (simulated) payment.
-- One atomic step, idempotent by (user, idempotency key).
-- replay, remember, refuse_inactive: _common.lua, loaded in front of this script.
--
-- KEYS[1] profile hash     gs:{w<b>}:user:<uid>
-- KEYS[2] wallet hash      gs:{w<b>}:wallet:<uid>
-- KEYS[3] ledger stream    gs:{w<b>}:ledger:<uid>
-- KEYS[4] idempotency hash gs:{w<b>}:idem:<uid>:recharge:<key>
-- ARGV[1] body hash (same key with another body is a conflict)
-- ARGV[2] payment outcome: approved | payment_declined | insufficient_funds
-- ARGV[3] coins in the package
-- ARGV[4] price in cents
-- ARGV[5] package id
-- ARGV[6] recharge id (new, used only if this is the first time)
-- ARGV[7] now, epoch ms
-- ARGV[8] idempotency record TTL, seconds
-- Returns a JSON answer: {"recharge_id", "coins", "added", "price_cents", "package_id",
-- "replayed"} or {"error": code, "message": text}. Nothing is written on a refusal.

local replayed = replay(KEYS[4], ARGV[1], 'idempotency_conflict',
  'this idempotency_key was used with another request')
if replayed then
  return replayed
end

local inactive = refuse_inactive(KEYS[1], 'suspended')
if inactive then
  return inactive
end
if ARGV[2] == 'payment_declined' then
  return cjson.encode({error = 'payment_declined', message = 'the card was declined'})
end
if ARGV[2] == 'insufficient_funds' then
  return cjson.encode({error = 'insufficient_funds',
    message = 'the card was declined for insufficient funds'})
end

local coins = tonumber(ARGV[3])
local balance = redis.call('HINCRBY', KEYS[2], 'coins', coins)
redis.call('HINCRBY', KEYS[2], 'bought', coins)
redis.call('XADD', KEYS[3], '*', 'kind', 'recharge', 'coins', coins, 'diamonds', 0,
  'coins_after', balance, 'ref', ARGV[6], 'package_id', ARGV[5], 'price_cents', ARGV[4],
  'ts', ARGV[7])
local answer = cjson.encode({recharge_id = ARGV[6], coins = balance, added = coins,
  price_cents = tonumber(ARGV[4]), package_id = ARGV[5], replayed = false})
remember(KEYS[4], ARGV[1], answer, ARGV[8])
return answer
