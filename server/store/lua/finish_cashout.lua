-- finish_cashout: phase 2 of a cash-out: the simulated payout settled (money out) or
-- failed (the diamonds return to the balance, and to the day's limit).
-- Atomic; idempotent: a cash-out that is no longer pending is left as it is (and taken
-- off the due set). All checks before any write.
--
-- KEYS[1] wallet hash      gs:{w<b>}:wallet:<uid>
-- KEYS[2] ledger stream    gs:{w<b>}:ledger:<uid>
-- KEYS[3] cash-out hash    gs:{w<b>}:cashout:<cashout_id>
-- KEYS[4] due set          gs:{w<b>}:cashouts_due
-- KEYS[5] cashed out on the request's day  gs:{w<b>}:cashout_day:<uid>:<YYYYMMDD>
-- ARGV[1] "<cash-out id>|<settled or failed>|<now ms>"
-- Returns ok(before, status): before 1 when it had been finished before (or is unknown:
-- status ''); status settled or failed.

local id, outcome, now = string.match(ARGV[1], '^(%w+)|(%a+)|(%d+)$')
if outcome ~= 'settled' and outcome ~= 'failed' then
  return fault('finish_cashout: malformed argument')
end
local faulty = check({KEYS[1], 'hash', KEYS[2], 'stream', KEYS[3], 'hash', KEYS[4], 'zset',
    KEYS[5], 'string'},
  {{'ZREM', KEYS[4], id}, {'HINCRBY', KEYS[1], 'locked', '1'}, {'XADD', KEYS[2], '*', 'k', 'v'},
   {'HSET', KEYS[3], 'status', ''}, {'DECRBY', KEYS[5], '1'}})
if faulty then
  return faulty
end
local c = redis.call('HMGET', KEYS[3], 'status', 'diamonds')
if not c[1] or c[1] ~= 'pending' then
  redis.call('ZREM', KEYS[4], id)
  return ok(1, c[1] or '')
end
local amount = tonumber(c[2])
local w = redis.call('HMGET', KEYS[1], 'diamonds', 'locked', 'paid_out')
local day = integer(redis.call('GET', KEYS[5]))
if amount == nil or integer(w[1]) == nil or integer(w[2]) == nil or integer(w[3]) == nil
    or day == nil then
  return fault(KEYS[1] .. ' or ' .. KEYS[3] .. ' holds a value that is not a whole number')
end

local locked = redis.call('HINCRBY', KEYS[1], 'locked', -amount)
if outcome == 'settled' then
  redis.call('HINCRBY', KEYS[1], 'paid_out', amount)
  redis.call('XADD', KEYS[2], '*', 'kind', 'cashout_settled', 'coins', 0, 'diamonds', 0,
    'locked', -amount, 'locked_after', locked, 'ref', id, 'ts', now)
else
  local balance = redis.call('HINCRBY', KEYS[1], 'diamonds', amount)
  if day > 0 then
    redis.call('DECRBY', KEYS[5], math.min(amount, day))
  end
  redis.call('XADD', KEYS[2], '*', 'kind', 'cashout_failed', 'coins', 0, 'diamonds', amount,
    'locked', -amount, 'diamonds_after', balance, 'locked_after', locked, 'ref', id,
    'ts', now)
end
redis.call('HSET', KEYS[3], 'status', outcome, 'finished_ms', now)
redis.call('ZREM', KEYS[4], id)
return ok(0, outcome)
