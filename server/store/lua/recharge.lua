-- recharge: credit a coin package to a wallet after a (simulated) payment.
-- One atomic step, idempotent by (user, idempotency key). All checks before any write;
-- a refusal or a fault writes nothing.
--
-- KEYS[1] profile hash     gs:{w<b>}:user:<uid>
-- KEYS[2] wallet hash      gs:{w<b>}:wallet:<uid>
-- KEYS[3] ledger stream    gs:{w<b>}:ledger:<uid>
-- KEYS[4] idempotency hash gs:{w<b>}:idem:<uid>:recharge:<key>
-- ARGV[1] "<body hash>|<payment outcome>|<coins>|<price cents>|<package id>|<recharge id>|
--         <now ms>|<idempotency TTL s>" (one line); the outcome is approved,
--         payment_declined or insufficient_funds
-- Returns ok(replayed, recharge_id, coins after, coins added, price cents, package id) or
-- a refusal: idempotency_conflict, unauthorized, suspended, payment_declined,
-- insufficient_funds.

local body_hash, outcome, coins, cents, package, id, now, ttl = string.match(ARGV[1],
  '^(%w+)|([%w_]+)|(%d+)|(%d+)|([%w_.-]+)|(%w+)|(%d+)|(%d+)$')
if not body_hash then
  return fault('recharge: malformed argument')
end
local replayed = replay(KEYS[4], body_hash, 'this idempotency_key was used with another request')
if replayed then
  return replayed
end
local refused = standing(KEYS[1])
if refused then
  return refused
end
if outcome == 'payment_declined' then
  return refuse('payment_declined', 'the card was declined')
end
if outcome == 'insufficient_funds' then
  return refuse('insufficient_funds', 'the card was declined for insufficient funds')
end
if outcome ~= 'approved' then
  return fault('recharge: unknown payment outcome ' .. outcome)
end
local faulty = check({KEYS[2], 'hash', KEYS[3], 'stream', KEYS[4], 'hash'},
  {{'HINCRBY', KEYS[2], 'coins', '1'}, {'XADD', KEYS[3], '*', 'k', 'v'},
   {'HSET', KEYS[4], 'h', '', 'a', ''}, {'EXPIRE', KEYS[4], '1'}})
if faulty then
  return faulty
end
local w = redis.call('HMGET', KEYS[2], 'coins', 'bought')
if integer(w[1]) == nil or integer(w[2]) == nil then
  return fault(KEYS[2] .. ' holds a balance that is not a whole number')
end

local balance = redis.call('HINCRBY', KEYS[2], 'coins', coins)
redis.call('HINCRBY', KEYS[2], 'bought', coins)
redis.call('XADD', KEYS[3], '*', 'kind', 'recharge', 'coins', coins, 'diamonds', 0,
  'coins_after', balance, 'ref', id, 'package_id', package, 'price_cents', cents, 'ts', now)
local answer = ok(0, id, decimal(balance), coins, cents, package)
remember(KEYS[4], body_hash, answer, ttl)
return answer
