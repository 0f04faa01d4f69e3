-- set_spending_limit: set or remove a viewer's daily or monthly cap on coins spent on
-- gifts. One atomic step; setting the same cap twice is the same as once. All checks
-- before any write.
--
-- KEYS[1] profile hash  gs:{w<b>}:user:<uid>
-- KEYS[2] wallet hash   gs:{w<b>}:wallet:<uid>
-- ARGV[1] period: daily | monthly
-- ARGV[2] cap in coins, or "" to remove the cap
-- Returns ok() or the refusal unauthorized.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return refuse('unauthorized', 'no such user')
end
local faulty = check({KEYS[2], 'hash'},
  {{'HSET', KEYS[2], 'cap_period', ''}, {'HDEL', KEYS[2], 'cap_period'}})
if faulty then
  return faulty
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[2], 'cap_period', 'cap_coins')
else
  redis.call('HSET', KEYS[2], 'cap_period', ARGV[1], 'cap_coins', ARGV[2])
end
return ok()
