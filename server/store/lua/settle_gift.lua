-- settle_gift: step 4 of the gift saga, in the sender's bucket: the transfer is finished.
-- Atomic; idempotent (removing an absent transfer does nothing).
--
-- KEYS[1] pending hash  gs:{w<b>}:pending
-- ARGV[1] transfer id
-- Returns 1 when removed now, 0 when it was already gone.

return redis.call('HDEL', KEYS[1], ARGV[1])
