-- refund_gift: steps 2' and 4 of the gift saga at once, in the sender's bucket, for a
-- gift whose room was no longer live when it was to be shown (publish_gift refused
-- it): the coins go back to the sender, with a gift_refunded ledger entry, and the
-- pending transfer is removed. Atomic; once per transfer id (the pending entry is the
-- marker: a transfer no longer pending was refunded before). No diamonds are credited
-- for it, ever. All checks before any write.
--
-- KEYS[1] wallet hash       gs:{w<b>}:wallet:<uid>
-- KEYS[2] ledger stream     gs:{w<b>}:ledger:<uid>
-- KEYS[3] pending hash      gs:{w<b>}:pending
-- KEYS[4] spent that day    gs:{w<b>}:spent:<uid>:d:<YYYYMMDD of the debit>
-- KEYS[5] spent that month  gs:{w<b>}:spent:<uid>:m:<YYYYMM of the debit>
-- ARGV[1] "<transfer id>|<now ms>"
-- Returns ok(before, coins after): before is 1 (and coins 0) when there was nothing
-- left to refund.

local id, now = string.match(ARGV[1], '^([^|]+)|(%d+)$')
if not id then
  return fault('refund_gift: malformed argument')
end
local raw = redis.call('HGET', KEYS[3], id)
if not raw then
  return ok(1, 0)
end
local t = cjson.decode(raw)
local price = t.coins or t.p  -- t.p: a transfer recorded before the fields had names
local w = redis.call('HMGET', KEYS[1], 'coins', 'spent')
local spent_day = integer(redis.call('GET', KEYS[4]))
local spent_month = integer(redis.call('GET', KEYS[5]))
if integer(w[1]) == nil or integer(w[2]) == nil or spent_day == nil or spent_month == nil then
  return fault(KEYS[1] .. ' or its spending counters hold a value that is not a whole number')
end
local faulty = check({KEYS[2], 'stream'},
  {{'HINCRBY', KEYS[1], 'coins', '1'}, {'XADD', KEYS[2], '*', 'k', 'v'},
   {'HDEL', KEYS[3], id}, {'DECRBY', KEYS[4], '1'}, {'DECRBY', KEYS[5], '1'}})
if faulty then
  return faulty
end

local balance = redis.call('HINCRBY', KEYS[1], 'coins', price)
redis.call('HINCRBY', KEYS[1], 'spent', -price)
-- The refunded coins no longer count towards the spending cap of the debit's day and
-- month (while those counters exist).
if spent_day > 0 then
  redis.call('DECRBY', KEYS[4], math.min(price, spent_day))
end
if spent_month > 0 then
  redis.call('DECRBY', KEYS[5], math.min(price, spent_month))
end
redis.call('XADD', KEYS[2], '*', 'kind', 'gift_refunded', 'coins', price, 'diamonds', 0,
  'coins_after', balance, 'ref', id, 'room', t.room_id or t.r, 'ts', now)
redis.call('HDEL', KEYS[3], id)
return ok(0, decimal(balance))
