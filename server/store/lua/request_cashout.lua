-- request_cashout: phase 1 of a cash-out: diamonds move from the balance to `locked`.
-- Atomic; idempotent by (user, idempotency key). All checks come before any write.
-- replay and remember: _common.lua, loaded in front of this script.
--
-- KEYS[1] profile hash      gs:{w<b>}:user:<uid>
-- KEYS[2] wallet hash       gs:{w<b>}:wallet:<uid>
-- KEYS[3] ledger stream     gs:{w<b>}:ledger:<uid>
-- KEYS[4] idempotency hash  gs:{w<b>}:idem:<uid>:cashout:<key>
-- KEYS[5] cash-out hash     gs:{w<b>}:cashout:<cashout_id>
-- KEYS[6] due set           gs:{w<b>}:cashouts_due  (score: when the payout settles)
-- KEYS[7] cashed out today  gs:{w<b>}:cashout_day:<uid>:<YYYYMMDD>
-- ARGV[1] body hash
-- ARGV[2] cash-out id (new; used only the first time)
-- ARGV[3] diamonds
-- ARGV[4] usd cents
-- ARGV[5] daily limit, diamonds
-- ARGV[6] now, epoch ms
-- ARGV[7] due, epoch ms
-- ARGV[8] idempotency record TTL, seconds
-- ARGV[9] today, YYYYMMDD (UTC)
-- Returns {"cashout_id", "status", "diamonds", "usd_cents", "replayed"} or {"error", "message"}.

local replayed = replay(KEYS[4], ARGV[1], 'idempotency_conflict',
  'this idempotency_key was used with another request')
if replayed then
  return replayed
end

local p = redis.call('HMGET', KEYS[1], 'status', 'verified', 'payout')
if not p[1] then
  return cjson.encode({error = 'unauthorized', message = 'no such user'})
end
if p[1] ~= 'active' then
  return cjson.encode({error = 'suspended', message = 'this account is suspended'})
end
if p[2] ~= '1' then
  return cjson.encode({error = 'not_verified', message = 'verify your identity before cashing out'})
end
if not p[3] then
  return cjson.encode({error = 'no_payout_method',
    message = 'link a bank account or PayPal before cashing out'})
end

local amount = tonumber(ARGV[3])
local limit = tonumber(ARGV[5])
local today = tonumber(redis.call('GET', KEYS[7]) or '0')
if today + amount > limit then
  return cjson.encode({error = 'over_daily_limit',
    message = 'cash-outs are limited to ' .. limit .. ' diamonds a day (' .. today ..
      ' already requested today)'})
end
local diamonds = tonumber(redis.call('HGET', KEYS[2], 'diamonds') or '0')
if diamonds < amount then
  return cjson.encode({error = 'insufficient_diamonds',
    message = 'you have ' .. diamonds .. ' diamonds'})
end

local balance = redis.call('HINCRBY', KEYS[2], 'diamonds', -amount)
local locked = redis.call('HINCRBY', KEYS[2], 'locked', amount)
redis.call('INCRBY', KEYS[7], amount)
redis.call('EXPIRE', KEYS[7], 2 * 86400)
redis.call('HSET', KEYS[5], 'user_id', string.match(KEYS[2], 'wallet:(.+)$'),
  'diamonds', amount, 'usd_cents', ARGV[4], 'status', 'pending', 'created_ms', ARGV[6],
  'payout', p[3], 'day', ARGV[9])
redis.call('ZADD', KEYS[6], tonumber(ARGV[7]), ARGV[2])
redis.call('XADD', KEYS[3], '*', 'kind', 'cashout_requested', 'coins', 0, 'diamonds', -amount,
  'locked', amount, 'diamonds_after', balance, 'locked_after', locked, 'ref', ARGV[2],
  'ts', ARGV[6])
local answer = cjson.encode({cashout_id = ARGV[2], status = 'pending', diamonds = amount,
  usd_cents = tonumber(ARGV[4]), replayed = false})
remember(KEYS[4], ARGV[1], answer, ARGV[8])
return answer
