-- credit_gift: step 2 of the gift saga, in the creator's bucket.
-- Atomic; once per transfer id (a marker with expiry remembers it was done).
--
-- KEYS[1] wallet hash    gs:{w<b>}:wallet:<creator>
-- KEYS[2] ledger stream  gs:{w<b>}:ledger:<creator>
-- KEYS[3] marker         gs:{w<b>}:credited:<transfer_id>
-- ARGV[1] transfer id
-- ARGV[2] diamonds to credit
-- ARGV[3] now, epoch ms
-- ARGV[4] marker TTL, seconds (longer than any transfer can stay pending)
-- Returns 1 when credited now, 0 when it had been credited before.

if redis.call('SET', KEYS[3], '1', 'NX', 'EX', tonumber(ARGV[4])) == false then
  return 0
end
local d = tonumber(ARGV[2])
local balance = redis.call('HINCRBY', KEYS[1], 'diamonds', d)
redis.call('HINCRBY', KEYS[1], 'earned', d)
redis.call('XADD', KEYS[2], '*', 'kind', 'gift_received', 'coins', 0, 'diamonds', d,
  'diamonds_after', balance, 'ref', ARGV[1], 'ts', ARGV[3])
return 1
