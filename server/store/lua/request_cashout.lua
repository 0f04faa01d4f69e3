-- request_cashout: phase 1 of a cash-out: diamonds move from the balance to `locked`.
-- Atomic; idempotent by (user, idempotency key). The rules that depend on stored state
-- are checked here and only here (standing, identity verified, payout method linked,
-- the daily limit, the balance); the pure ones (age, minimum) by server.economy before.
-- All checks before any write; a refusal or a fault writes nothing.
--
-- KEYS[1] profile hash      gs:{w<b>}:user:<uid>
-- KEYS[2] wallet hash       gs:{w<b>}:wallet:<uid>
-- KEYS[3] ledger stream     gs:{w<b>}:ledger:<uid>
-- KEYS[4] idempotency hash  gs:{w<b>}:idem:<uid>:cashout:<key>
-- KEYS[5] cash-out hash     gs:{w<b>}:cashout:<cashout_id>
-- KEYS[6] due set           gs:{w<b>}:cashouts_due  (score: when the payout settles)
-- KEYS[7] cashed out today  gs:{w<b>}:cashout_day:<uid>:<YYYYMMDD>
-- ARGV[1] "<body hash>|<cash-out id>|<diamonds>|<usd cents>|<daily limit>|<now ms>|
--         <due ms>|<idempotency TTL s>|<today YYYYMMDD>|<user id>" (one line)
-- Returns ok(replayed, cashout_id, diamonds, usd_cents) or a refusal:
-- idempotency_conflict, unauthorized, suspended, not_verified, no_payout_method,
-- over_daily_limit, insufficient_diamonds.

local body_hash, id, amount, cents, limit, now, due, ttl, day, user = string.match(ARGV[1],
  '^(%w+)|(%w+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|([^|]+)$')
if not body_hash then
  return fault('request_cashout: malformed argument')
end
local replayed = replay(KEYS[4], body_hash, 'this idempotency_key was used with another request')
if replayed then
  return replayed
end
local refused = standing(KEYS[1])
if refused then
  return refused
end
local p = redis.call('HMGET', KEYS[1], 'verified', 'payout')
if p[1] ~= '1' then
  return refuse('not_verified', 'verify your identity before cashing out')
end
if not p[2] then
  return refuse('no_payout_method', 'link a bank account or PayPal before cashing out')
end

amount = tonumber(amount)
limit = tonumber(limit)
local today = integer(redis.call('GET', KEYS[7]))
local w = redis.call('HMGET', KEYS[2], 'diamonds', 'locked')
local diamonds = integer(w[1])
if today == nil or diamonds == nil or integer(w[2]) == nil then
  return fault(KEYS[2] .. ' or ' .. KEYS[7] .. ' holds a value that is not a whole number')
end
if today + amount > limit then
  return refuse('over_daily_limit',
    'cash-outs are limited to ' .. decimal(limit) .. ' diamonds a day (' .. decimal(today) ..
      ' already requested today)')
end
if diamonds < amount then
  return refuse('insufficient_diamonds', 'you have ' .. decimal(diamonds) .. ' diamonds')
end
local faulty = check(
  {KEYS[2], 'hash', KEYS[3], 'stream', KEYS[4], 'hash', KEYS[5], 'hash', KEYS[6], 'zset',
   KEYS[7], 'string'},
  {{'HINCRBY', KEYS[2], 'diamonds', '1'}, {'INCRBY', KEYS[7], '1'}, {'EXPIRE', KEYS[7], '1'},
   {'HSET', KEYS[5], 'status', ''}, {'ZADD', KEYS[6], '0', id},
   {'XADD', KEYS[3], '*', 'k', 'v'}, {'HSET', KEYS[4], 'h', '', 'a', ''},
   {'EXPIRE', KEYS[4], '1'}})
if faulty then
  return faulty
end

local balance = redis.call('HINCRBY', KEYS[2], 'diamonds', -amount)
local locked = redis.call('HINCRBY', KEYS[2], 'locked', amount)
redis.call('INCRBY', KEYS[7], amount)
redis.call('EXPIRE', KEYS[7], 2 * 86400)
redis.call('HSET', KEYS[5], 'user_id', user, 'diamonds', amount, 'usd_cents', cents,
  'status', 'pending', 'created_ms', now, 'payout', p[2], 'day', day)
redis.call('ZADD', KEYS[6], tonumber(due), id)
redis.call('XADD', KEYS[3], '*', 'kind', 'cashout_requested', 'coins', 0, 'diamonds', -amount,
  'locked', amount, 'diamonds_after', balance, 'locked_after', locked, 'ref', id, 'ts', now)
local answer = ok(0, id, decimal(amount), cents)
remember(KEYS[4], body_hash, answer, ttl)
return answer
