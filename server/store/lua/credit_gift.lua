-- credit_gift: step 2 of the gift saga, in the creator's bucket, once the gift is known
-- to be shown. Atomic; once per transfer id (a marker with expiry remembers it was
-- done). All checks before any write.
--
-- KEYS[1] wallet hash    gs:{w<b>}:wallet:<creator>
-- KEYS[2] ledger stream  gs:{w<b>}:ledger:<creator>
-- KEYS[3] marker         gs:{w<b>}:credited:<transfer_id>
-- ARGV[1] "<transfer id>|<diamonds>|<now ms>|<marker TTL s>|<sender id>|<room id>"
-- Returns ok(before): 0 when credited now, 1 when it had been credited before.

local id, diamonds, now, ttl, sender, room =
  string.match(ARGV[1], '^([^|]+)|(%d+)|(%d+)|(%d+)|([^|]*)|([^|]*)$')
if not id then
  return fault('credit_gift: malformed argument')
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return ok(1)
end
local w = redis.call('HMGET', KEYS[1], 'diamonds', 'earned')
if integer(w[1]) == nil or integer(w[2]) == nil then
  return fault(KEYS[1] .. ' holds a balance that is not a whole number')
end
local faulty = check({KEYS[2], 'stream'},
  {{'HINCRBY', KEYS[1], 'diamonds', '1'}, {'XADD', KEYS[2], '*', 'k', 'v'},
   {'SET', KEYS[3], '1', 'EX', ttl}})
if faulty then
  return faulty
end

local balance = redis.call('HINCRBY', KEYS[1], 'diamonds', diamonds)
redis.call('HINCRBY', KEYS[1], 'earned', diamonds)
redis.call('XADD', KEYS[2], '*', 'kind', 'gift_received', 'coins', 0, 'diamonds', diamonds,
  'diamonds_after', balance, 'ref', id, 'from', sender, 'room', room, 'ts', now)
redis.call('SET', KEYS[3], '1', 'EX', ttl)
return ok(0)
