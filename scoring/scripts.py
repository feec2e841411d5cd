"""The Redis Lua scripts of the store: plumbing that moves many keys in one call.

Each Redis command costs ~15 us of redis-py overhead, more than applying an event,
so per-lead work is packed into one script call per batch and shard. The scripts
hold no scoring semantics (those live only in scoring.engine); each touches only
the keys it is given.
"""

# Each script takes its keys as KEYS (so that Redis Cluster can check they share a
# slot) and its other arguments as ONE JSON document, decoded by Redis's bundled
# cjson (redis-py encodes each argument in Python, and one per batch instead of
# thousands was the largest single saving on the hot path), plus raw strings where
# JSON would have to escape them. Numbers in the JSON are integers (epoch ms,
# versions) or doubles (rank keys, cooling times); cjson decodes both exactly, and
# redis.call passes a Lua number on with 17 significant digits.
#
#   READ_IDS  ARGV[1] = [[event id, ...] per key]  ->  per key, the ids' scores or nil
#   COMMIT    see below

READ_IDS = """
local ids, out = cjson.decode(ARGV[1]), {}
for k = 1, #KEYS do
  out[k] = redis.call('ZMSCORE', KEYS[k], unpack(ids[k]))
end
return out
"""

# COMMIT writes a shard's part of a batch, all of it or, if any of its leads changed
# since it was read, none of it. A script runs alone in Redis, so the check of the
# versions and the writes are one atomic step: the compare-and-set that WATCH/MULTI/
# EXEC would do, without WATCH, which costs Redis a scan of the connection's watched
# keys per key watched (3 ms for a batch of 800 leads) and a round trip. Each
# redis.call costs ~1.5 us beyond its command, more than most commands here, so the
# states go in one MGET and one MSET and a history is trimmed only once it is full.
#
#   KEYS   the state keys (n), then the id sets, histories and rankings written, then
#          the shard's cooling index, outbox and set of fit scores
#   ARGV   [1] JSON {"v": [version read per state key; -1: absent], "ids": [[horizon
#          or "", [T, id, T, id, ...]] per id set], "cap": history length, "hist":
#          [new entries per history], "ranks": [[[key, lead, ...], [lead to remove,
#          ...]] per ranking], "cool": [due, lead, ...], "uncool": [lead, ...],
#          "fits": [fit, ...], "now": ms}
#          then the new state records (n; scoring.record), the new history entries
#          (per history, oldest first), the outbox entries: raw, as JSON would escape them
#   ->     0 when written; else how many leads changed since they were read
COMMIT = """
local head = cjson.decode(ARGV[1])
local versions = head.v
local n = #versions

-- Variadic calls in slices: unpack() of more than ~8000 values fails.
local function sliced(command, key, values, from, to)
  local reply
  for i = from, to, 4000 do
    local last = math.min(i + 3999, to)
    if key then reply = redis.call(command, key, unpack(values, i, last))
    else reply = redis.call(command, unpack(values, i, last)) end
  end
  return reply
end
local function mget(from, to)
  local out = {}
  for i = from, to, 4000 do
    for _, value in ipairs(redis.call('MGET', unpack(KEYS, i, math.min(i + 3999, to)))) do
      out[#out + 1] = value
    end
  end
  return out
end

local stale = 0
for i, current in ipairs(mget(1, n)) do
  local found = -1
  if current then  -- '[1,<version>,...'; an object record of the earlier format is 0
    found = tonumber(string.match(current, '^%[1,(%d+),')) or 0
  end
  if found ~= versions[i] then stale = stale + 1 end
end
if stale > 0 then return stale end

local pairs_ = {}
for i = 1, n do
  pairs_[2 * i - 1], pairs_[2 * i] = KEYS[i], ARGV[i + 1]
end
sliced('MSET', nil, pairs_, 1, 2 * n)
local k, a = n, n + 2  -- the next key; the next raw argument
for _, set in ipairs(head.ids) do
  k = k + 1
  if #set[2] > 0 then sliced('ZADD', KEYS[k], set[2], 1, #set[2]) end
  if set[1] ~= '' then
    redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. string.format('%.17g', set[1]))
  end
end
for _, count in ipairs(head.hist) do
  k = k + 1
  local length = sliced('LPUSH', KEYS[k], ARGV, a, a + count - 1)
  a = a + count
  if length > head.cap then redis.call('LTRIM', KEYS[k], 0, head.cap - 1) end
end
for _, rank in ipairs(head.ranks) do
  k = k + 1
  if #rank[1] > 0 then sliced('ZADD', KEYS[k], rank[1], 1, #rank[1]) end
  if #rank[2] > 0 then sliced('ZREM', KEYS[k], rank[2], 1, #rank[2]) end
end
local cooling, outbox, fits = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
if #head.cool > 0 then sliced('ZADD', cooling, head.cool, 1, #head.cool) end
if #head.uncool > 0 then sliced('ZREM', cooling, head.uncool, 1, #head.uncool) end
if #head.fits > 0 then sliced('SADD', fits, head.fits, 1, #head.fits) end
for i = a, #ARGV do redis.call('ZADD', outbox, head.now, ARGV[i]) end
return 0
"""
