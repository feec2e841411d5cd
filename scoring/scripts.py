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
# keys per key watched (3 ms for a batch of 800 leads) and a round trip.
#
#   KEYS   the state keys (n), then the id sets, histories and rankings written, then
#          the shard's cooling index, outbox and set of fit scores
#   ARGV   [1] JSON {"v": [version read per state key; -1: absent], "ids": [[horizon
#          or "", [T, id, T, id, ...]] per id set], "cap": history length, "hist":
#          [[entry, ...] oldest first, per history], "ranks": [[[key, lead, ...],
#          [lead to remove, ...]] per ranking], "cool": [due, lead, ...], "uncool":
#          [lead, ...], "fits": [fit, ...], "now": ms}
#          [2 .. n+1] the new state records (scoring.record); [n+2 ..] outbox entries
#   ->     0 when written; else how many leads changed since they were read
COMMIT = """
local head = cjson.decode(ARGV[1])
local versions = head.v
local n = #versions
local stale = 0
for i = 1, n do
  local current, found = redis.call('GET', KEYS[i]), -1
  if current then  -- '[1,<version>,...'; an object record of the earlier format is 0
    found = tonumber(string.match(current, '^%[1,(%d+),')) or 0
  end
  if found ~= versions[i] then stale = stale + 1 end
end
if stale > 0 then return stale end

-- Variadic calls in slices: unpack() of more than ~8000 values fails.
local function sliced(command, key, values)
  for i = 1, #values, 4000 do
    redis.call(command, key, unpack(values, i, math.min(i + 3999, #values)))
  end
end

for i = 1, n do redis.call('SET', KEYS[i], ARGV[i + 1]) end
local k = n
for _, set in ipairs(head.ids) do
  k = k + 1
  if #set[2] > 0 then sliced('ZADD', KEYS[k], set[2]) end
  if set[1] ~= '' then
    redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. string.format('%.17g', set[1]))
  end
end
for _, entries in ipairs(head.hist) do
  k = k + 1
  sliced('LPUSH', KEYS[k], entries)
  redis.call('LTRIM', KEYS[k], 0, head.cap - 1)
end
for _, rank in ipairs(head.ranks) do
  k = k + 1
  if #rank[1] > 0 then sliced('ZADD', KEYS[k], rank[1]) end
  if #rank[2] > 0 then sliced('ZREM', KEYS[k], rank[2]) end
end
local cooling, outbox, fits = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
if #head.cool > 0 then sliced('ZADD', cooling, head.cool) end
if #head.uncool > 0 then sliced('ZREM', cooling, head.uncool) end
if #head.fits > 0 then sliced('SADD', fits, head.fits) end
for i = n + 2, #ARGV do redis.call('ZADD', outbox, head.now, ARGV[i]) end
return 0
"""
