"""The Redis Lua scripts of the store: plumbing that moves many keys in one call.

Each Redis command costs ~15 us of redis-py overhead, more than applying an event,
so per-lead writes are packed into one script call per batch. The scripts hold no
scoring semantics (those live only in scoring.engine); each touches only the keys
it is given.
"""

#   READ_IDS  KEYS: id sets; ARGV: per key n, then n event ids -> per key, n scores or nil
#   WRITE_IDS KEYS: id sets; ARGV: per key horizon ('' = keep all), n, then n (T, id) pairs
READ_IDS = """
local out, i = {}, 1
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  out[k] = redis.call('ZMSCORE', KEYS[k], unpack(ARGV, i + 1, i + n))
  i = i + 1 + n
end
return out
"""
WRITE_IDS = """
local i = 1
for k = 1, #KEYS do
  local horizon, n = ARGV[i], tonumber(ARGV[i + 1])
  if n > 0 then redis.call('ZADD', KEYS[k], unpack(ARGV, i + 2, i + 1 + 2 * n)) end
  if horizon ~= '' then redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. horizon) end
  i = i + 2 + 2 * n
end
return #KEYS
"""
#   WRITE_RANKS  KEYS: rankings; ARGV: per key n added, n (key, lead) pairs, m removed, m leads
#   PUSH_HISTORY KEYS: histories; ARGV: cap, then per key n, n entries oldest first
WRITE_RANKS = """
local i = 1
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  if n > 0 then redis.call('ZADD', KEYS[k], unpack(ARGV, i + 1, i + 2 * n)) end
  i = i + 1 + 2 * n
  local m = tonumber(ARGV[i])
  if m > 0 then redis.call('ZREM', KEYS[k], unpack(ARGV, i + 1, i + m)) end
  i = i + 1 + m
end
return #KEYS
"""
PUSH_HISTORY = """
local cap, i = tonumber(ARGV[1]), 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  redis.call('LPUSH', KEYS[k], unpack(ARGV, i + 1, i + n))
  redis.call('LTRIM', KEYS[k], 0, cap - 1)
  i = i + 1 + n
end
return #KEYS
"""
