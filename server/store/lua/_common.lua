-- What every script shares, written once: the scripts are loaded as the shebang line,
-- this file, then the script itself (server/store/connection.py). The shebang (no
-- flags) makes Redis refuse a whole script at its start when memory is full, instead
-- of failing at its first write.
--
-- One style of answer for every script:
--   ok(...)            {'ok', ...}: done; an idempotent step's second field says whether
--                      it had been done before (1) or now (0)
--   refuse(code, msg)  {code, msg}: refused for a reason the client can act on (the
--                      code is a server.errors.Refusal's); nothing was written
--   fault(msg)         an error reply: the store cannot do it now (a key of the wrong
--                      type, a command the ACL denies); nothing was written, and the
--                      caller may try again later
-- Every script checks everything before its first write, so a script that stops,
-- whatever the reason, leaves nothing behind: the ACL's leave to run each command it
-- will write with, the type of each key it will write, and the stored numbers it will
-- add to (`check`, `integer`). A key the script reads before its first write with a
-- command of the key's own type (HMGET on a hash, GET on a string) needs no TYPE check:
-- a wrong type fails that read, before anything is written. SET and EXPIRE never fail
-- on a key's type.

local function ok(...)
  return {'ok', ...}
end

local function refuse(code, message)
  return {code, message}
end

local function fault(message)
  return redis.error_reply('GSFAULT ' .. message)
end

-- check(kinds, writes): nil when every key in `kinds` (key, type, key, type, …) is
-- absent or of that type, and the ACL lets this connection run every command in
-- `writes` ({command, key, args…} each); else the fault to answer.
local function check(kinds, writes)
  for i = 1, #kinds, 2 do
    local kind = redis.call('TYPE', kinds[i])['ok']
    if kind ~= 'none' and kind ~= kinds[i + 1] then
      return fault(kinds[i] .. ' holds a ' .. kind .. ', not a ' .. kinds[i + 1])
    end
  end
  for _, command in ipairs(writes) do
    if not redis.acl_check_cmd(unpack(command)) then
      return fault('the ACL denies ' .. command[1] .. ' on ' .. command[2])
    end
  end
  return nil
end

-- integer(value): a stored counter as a number, nil when it is not a whole number.
local function integer(value)
  if value == false or value == nil then
    return 0
  end
  local n = tonumber(value)
  if n == nil or n ~= math.floor(n) then
    return nil
  end
  return n
end

-- The idempotency record `key` keeps the first answer given for it ('a', as JSON) and
-- the hash of that request's body ('h').
-- replay(key, body_hash, message): nil for a new request; the first answer again, its
-- second field set to 1 (replayed), for the same body; an idempotency_conflict refusal
-- (`message`) for another body.
local function replay(key, body_hash, message)
  local seen = redis.call('HMGET', key, 'h', 'a')
  if not seen[1] then
    return nil
  end
  if seen[1] ~= body_hash then
    return refuse('idempotency_conflict', message)
  end
  local answer = cjson.decode(seen[2])
  answer[2] = 1
  return answer
end

-- remember(key, body_hash, answer, ttl): keep `answer` for replays, for `ttl` seconds
-- (its writes, for `check`: HSET and EXPIRE on `key`).
local function remember(key, body_hash, answer, ttl)
  redis.call('HSET', key, 'h', body_hash, 'a', cjson.encode(answer))
  redis.call('EXPIRE', key, ttl)
end

-- standing(profile_key): the refusal for a user who does not exist (unauthorized) or is
-- suspended; nil for an active one.
local function standing(profile_key)
  local status = redis.call('HGET', profile_key, 'status')
  if not status then
    return refuse('unauthorized', 'no such user')
  end
  if status ~= 'active' then
    return refuse('suspended', 'this account is suspended')
  end
  return nil
end

-- A token bucket, shared by every connection and process of a user: `burst` tokens at
-- first, refilled at `rate` a second; its state is two stored values (tokens, at ms).
-- bucket_take(tokens, at, rate, burst, now_ms): the tokens left after taking one, or nil
-- when none is left; nothing is written (the caller writes the new state, after every
-- check).
local function bucket_take(tokens, at, rate, burst, now)
  tokens = tonumber(tokens) or burst
  at = tonumber(at) or now
  if now > at then
    tokens = math.min(burst, tokens + (now - at) * rate / 1000)
  end
  if tokens < 1 then
    return nil
  end
  return tokens - 1
end

local function bucket_ttl_ms(rate, burst)
  if rate <= 0 then
    return 86400000
  end
  return math.ceil(burst / rate * 1000) + 1000
end

-- Redis's own clock, in ms: the same for every process that shares this Redis.
local function redis_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- decimal(n): an integer as its decimal digits (tostring would write 1e+15).
local function decimal(n)
  return string.format('%d', n)
end

