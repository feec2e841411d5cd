"""The Redis Lua scripts of the store: plumbing that moves many keys in one call.

Each Redis command costs ~15 us of redis-py overhead, more than applying an event,
so per-lead writes are packed into one script call per batch. The scripts hold no
scoring semantics (those live only in scoring.engine); each touches only the keys
it is given.
"""

# Each script takes its keys as KEYS (so that Redis Cluster can check they share a
# slot) and everything else as ONE JSON argument, decoded by Redis's bundled cjson:
# redis-py encodes each argument in Python, and one argument per batch instead of
# thousands was the largest single saving on the hot path. Numbers in it are
# integers (epoch ms) or doubles (rank keys); cjson decodes both exactly, and
# redis.call passes a Lua number on with 17 significant digits.
#
#   READ_IDS     ARGV[1] = [[event id, ...] per key]  ->  per key, the ids' scores or nil
#   WRITE_IDS    ARGV[1] = [[horizon or "", [T, id, T, id, ...]] per key]
#   WRITE_RANKS  ARGV[1] = [[[key, lead, key, lead, ...], [lead to remove, ...]] per key]
#   PUSH_HISTORY ARGV[1] = cap, ARGV[2] = [[entry, ...] per key], oldest first; each
#                entry a JSON *string* (encoded here: cjson would print numbers its way)
READ_IDS = """
local ids, out = cjson.decode(ARGV[1]), {}
for k = 1, #KEYS do
  out[k] = redis.call('ZMSCORE', KEYS[k], unpack(ids[k]))
end
return out
"""
WRITE_IDS = """
local sets = cjson.decode(ARGV[1])
for k = 1, #KEYS do
  local horizon, pairs = sets[k][1], sets[k][2]
  if #pairs > 0 then redis.call('ZADD', KEYS[k], unpack(pairs)) end
  if horizon ~= '' then
    redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. string.format('%.17g', horizon))
  end
end
return #KEYS
"""
WRITE_RANKS = """
local ranks = cjson.decode(ARGV[1])
for k = 1, #KEYS do
  local added, removed = ranks[k][1], ranks[k][2]
  if #added > 0 then redis.call('ZADD', KEYS[k], unpack(added)) end
  if #removed > 0 then redis.call('ZREM', KEYS[k], unpack(removed)) end
end
return #KEYS
"""
PUSH_HISTORY = """
local cap, lists = tonumber(ARGV[1]), cjson.decode(ARGV[2])
for k = 1, #KEYS do
  redis.call('LPUSH', KEYS[k], unpack(lists[k]))
  redis.call('LTRIM', KEYS[k], 0, cap - 1)
end
return #KEYS
"""
