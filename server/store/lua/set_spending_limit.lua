-- set_spending_limit: set or remove a viewer's daily or monthly cap on coins spent on gifts.
-- One atomic step; setting the same cap twice is the same as once.
--
-- KEYS[1] profile hash  gs:{w<b>}:user:<uid>
-- KEYS[2] wallet hash   gs:{w<b>}:wallet:<uid>
-- ARGV[1] period: daily | monthly
-- ARGV[2] cap in coins, or "" to remove the cap
-- Returns a JSON answer {"period", "coins"} (coins null when removed) or {"error", "message"}.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return cjson.encode({error = 'unauthorized', message = 'no such user'})
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[2], 'cap_period', 'cap_coins')
  return cjson.encode({period = ARGV[1], coins = cjson.null})
end
redis.call('HSET', KEYS[2], 'cap_period', ARGV[1], 'cap_coins', ARGV[2])
return cjson.encode({period = ARGV[1], coins = tonumber(ARGV[2])})
