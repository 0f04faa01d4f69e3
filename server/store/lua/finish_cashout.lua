-- finish_cashout: phase 2 of a cash-out: the simulated payout settled (money out) or failed
-- (the diamonds return to the balance, and to the day's limit).
-- Atomic; idempotent: a cash-out that is no longer pending is left as it is.
--
-- KEYS[1] wallet hash      gs:{w<b>}:wallet:<uid>
-- KEYS[2] ledger stream    gs:{w<b>}:ledger:<uid>
-- KEYS[3] cash-out hash    gs:{w<b>}:cashout:<cashout_id>
-- KEYS[4] due set          gs:{w<b>}:cashouts_due
-- KEYS[5] cashed out on the request's day  gs:{w<b>}:cashout_day:<uid>:<YYYYMMDD>
-- ARGV[1] cash-out id
-- ARGV[2] outcome: settled | failed
-- ARGV[3] now, epoch ms
-- Returns the cash-out's status after this step ("settled", "failed"), or "" if unknown.

local c = redis.call('HMGET', KEYS[3], 'status', 'diamonds')
if not c[1] then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return ''
end
if c[1] ~= 'pending' then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return c[1]
end
local amount = tonumber(c[2])
local locked = redis.call('HINCRBY', KEYS[1], 'locked', -amount)
if ARGV[2] == 'settled' then
  redis.call('HINCRBY', KEYS[1], 'paid_out', amount)
  redis.call('XADD', KEYS[2], '*', 'kind', 'cashout_settled', 'coins', 0, 'diamonds', 0,
    'locked', -amount, 'locked_after', locked, 'ref', ARGV[1], 'ts', ARGV[3])
else
  local balance = redis.call('HINCRBY', KEYS[1], 'diamonds', amount)
  if redis.call('EXISTS', KEYS[5]) == 1 then
    redis.call('DECRBY', KEYS[5], amount)
  end
  redis.call('XADD', KEYS[2], '*', 'kind', 'cashout_failed', 'coins', 0, 'diamonds', amount,
    'locked', -amount, 'diamonds_after', balance, 'locked_after', locked, 'ref', ARGV[1],
    'ts', ARGV[3])
end
redis.call('HSET', KEYS[3], 'status', ARGV[2], 'finished_ms', ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return ARGV[2]
