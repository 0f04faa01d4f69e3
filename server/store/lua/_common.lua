-- What several scripts share, written once: put in front of every script when the
-- scripts are loaded (server/store/connection.py).
--
-- replay(key, body_hash, code, message): the idempotency hash `key` holds the first
-- answer given for this key ('a') and the hash of the request's body ('h').
--   nothing there:        nil (a new request)
--   the same body:        that answer again, marked "replayed"
--   another body:         {"error": code, "message": message}
-- remember(key, body_hash, answer, ttl): keep `answer` for replays, for `ttl` seconds.
-- refuse_inactive(profile_key, suspended_code): an error answer for a user who does not
-- exist (unauthorized) or is suspended (`suspended_code`); nil for an active one.

local function replay(key, body_hash, code, message)
  local seen = redis.call('HMGET', key, 'h', 'a')
  if not seen[1] then
    return nil
  end
  if seen[1] ~= body_hash then
    return cjson.encode({error = code, message = message})
  end
  local answer = cjson.decode(seen[2])
  answer['replayed'] = true
  return cjson.encode(answer)
end

local function remember(key, body_hash, answer, ttl)
  redis.call('HSET', key, 'h', body_hash, 'a', answer)
  redis.call('EXPIRE', key, tonumber(ttl))
end

local function refuse_inactive(profile_key, suspended_code)
  local status = redis.call('HGET', profile_key, 'status')
  if not status then
    return cjson.encode({error = 'unauthorized', message = 'no such user'})
  end
  if status ~= 'active' then
    return cjson.encode({error = suspended_code, message = 'this account is suspended'})
  end
  return nil
end

