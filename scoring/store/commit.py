"""What one commit of a shard writes: the Lua scripts, and the arguments built for them.

Each Redis command costs more in client overhead than applying an event does
(docs/performance.md), so per-lead work is packed into one script call per batch
and shard. The scripts hold no scoring semantics (those live only in
scoring.engine); each touches only the keys it is given. ``commit_arguments``
builds exactly the layout COMMIT's comment describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from scoring.engine import LeadState, Notification, cooling_due, group_engagement, stamp
from scoring.rules import Ruleset
from scoring.store import record
from scoring.store.batch import Lead
from scoring.store.keys import Shard
from scoring.store.ranking import engagement_key, groups, rank_key

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
# keys per key watched and a round trip. Each redis.call costs beyond its command,
# more than most commands here, so the states go in one MGET and one MSET and a
# history is trimmed only once it is full.
#
# Redis does not roll back a script that fails part-way: whatever it wrote before the
# error stays. So everything that could make a write fail (a number that is not one,
# an argument count that does not add up, a shard key of the wrong type) is checked
# before the first write, and an error reply then leaves Redis exactly as it was.
#
# Which generation may write how (docs/generations.md) is checked here too, against the
# shard's ``active`` key (same slot), so that a worker learns that a cutover happened
# from the reply of a commit it makes anyway, at no cost per event: a "live" commit
# (notifications on) needs its generation active in the shard, a rebuilding one needs
# it not active (else its worker would drop notifications it now owes), and the
# cutover's own commit ("flip") needs the fence it set still there and the old
# generation's progress as it read it, and makes its generation active.
#
#   KEYS   the state keys (n), then the id sets, histories and rankings written, then
#          the shard's cooling index, outbox, set of fit scores, marker, the
#          deployment's active key for the shard, the shard's progress, and (a flip
#          only) the old generation's progress
#   ARGV   [1] JSON {"v": [version read per state key; -1: absent], "ids": [[horizon
#          or "", [T, id, T, id, ...]] per id set], "cap": history length, "hist":
#          [new entries per history], "ranks": [[[key, lead, ...], [lead to remove,
#          ...]] per ranking], "cool": [due, lead, ...], "uncool": [lead, ...],
#          "fits": [fit, ...], "now": ms, "gen": rules_version, "live": true|false,
#          "prog": [next offset, partition, ...], "flip": absent or [fence, [next
#          offset, partition, ...] of the old generation as read], "fence": absent or
#          the fence of the cutover making this commit, "mark": the shard's marker}
#          then the new state records (n; scoring.store.record), the new history entries
#          (per history, oldest first), the outbox entries: raw, as JSON would escape them
#   ->     0 when written; -1 when the shard's marker is gone or another (Redis lost the data:
#          scoring.errors.DataLost); -2 a cutover is fencing the shard (retry soon); -3
#          another generation is active (scoring.errors.Superseded); -4 the generation
#          became active (commit live); -5 a flip's precondition failed; else how many
#          leads changed since they were read
COMMIT = """
local head = cjson.decode(ARGV[1])
local versions = head.v
local n = #versions
local flip = head.flip
local tail = #KEYS - (flip and 1 or 0)
local cooling, outbox, fits, marker = KEYS[tail - 5], KEYS[tail - 4], KEYS[tail - 3],
  KEYS[tail - 2]
local active_key, progress = KEYS[tail - 1], KEYS[tail]
if redis.call('GET', marker) ~= head.mark then return -1 end
local active = redis.call('GET', active_key)
-- A cutover's fence: "fence:<deadline>:<old>:<new>" holds OLD's live commits,
-- "closed:..." NEW's rebuilding ones too, except the cutover's own (head.fence).
local kind, deadline, old, new = string.match(active or '', '^(%a+):(%d+):([^:]+):([^:]+)$')
local held = kind ~= nil and tonumber(deadline) > head.now
if flip then
  if active ~= flip[1] or type(flip[2]) ~= 'table' then return -5 end
  local was = redis.call('HGETALL', KEYS[#KEYS])
  if #was ~= #flip[2] then return -5 end
  local read = {}
  for i = 1, #flip[2], 2 do read[tostring(flip[2][i + 1])] = flip[2][i] end
  for i = 1, #was, 2 do
    if read[was[i]] ~= tonumber(was[i + 1]) then return -5 end
  end
elseif head.fence ~= nil and active == head.fence then
  -- the cutover's own commit (carrying counters over): written as it is
elseif head.live then
  if active ~= head.gen then
    if old ~= head.gen then return -3 end
    if held then return -2 end
    -- An expired fence: OLD is active again, and says so, so that the cutover that set
    -- it cannot renew it unnoticed (it compares the exact value).
    redis.call('SET', active_key, head.gen)
  end
elseif active == head.gen then
  return -4
elseif held and kind == 'closed' and new == head.gen then
  return -2
end

-- Everything checked before the first write (see above). The loops run over every
-- score the commit writes, so they make no call per value.
local huge = math.huge
local function refuse(what)
  return redis.error_reply('COMMIT refused, nothing written: ' .. what)
end
local function finite_scores(list)  -- comparisons only: false for NaN, infinities and
  for i = 1, #list, 2 do             -- (an error, caught below) any value not a number
    local x = list[i]
    if not (x > -huge and x < huge) then return false end
  end
  return true
end
local function scored(list, what)  -- [score, member, score, member, ...]: a problem or nil
  if type(list) ~= 'table' then return what .. ': not a list' end
  if #list % 2 ~= 0 then return what .. ': an odd number of values' end
  local ok, finite = pcall(finite_scores, list)
  if not (ok and finite) then return what .. ': a score that is not a finite number' end
end
local function finite(x)
  return type(x) == 'number' and x == x and x ~= huge and x ~= -huge
end
for _, part in ipairs({versions, head.ids, head.hist, head.ranks, head.cool, head.uncool,
                       head.fits}) do
  if type(part) ~= 'table' then return refuse('a malformed head') end
end
if not finite(head.now) or not finite(head.cap) then return refuse('a malformed head') end
if tail ~= n + #head.ids + #head.hist + #head.ranks + 6 then
  return refuse('a key count that does not add up')
end
local entries = 0
for _, count in ipairs(head.hist) do
  if not finite(count) or count < 0 then return refuse('a history count that is not one') end
  entries = entries + count
end
if #ARGV < 1 + n + entries then return refuse('fewer arguments than the head announces') end
for i = 1, n do
  local v = versions[i]
  if type(v) ~= 'number' or v ~= v then return refuse('a version that is not a number') end
  if string.sub(ARGV[i + 1], 1, 3) ~= '[1,' then
    return refuse('a state record of no known format')
  end
end
for _, set in ipairs(head.ids) do
  local horizon = type(set) == 'table' and set[1]
  if horizon ~= '' and (type(horizon) ~= 'number' or horizon ~= horizon or horizon == huge
                        or horizon == -huge) then
    return refuse('an id set horizon')
  end
  local bad = scored(set[2], 'an id set')
  if bad then return refuse(bad) end
end
for _, rank in ipairs(head.ranks) do
  if type(rank) ~= 'table' or type(rank[2]) ~= 'table' then
    return refuse('a malformed ranking')
  end
  local bad = scored(rank[1], 'a ranking')
  if bad then return refuse(bad) end
end
local bad = scored(head.cool, 'the cooling index') or scored(head.prog, 'the progress')
if bad then return refuse(bad) end
for key, want in pairs({[cooling] = 'zset', [outbox] = 'zset', [fits] = 'set',
                        [progress] = 'hash'}) do
  local kind = redis.call('TYPE', key).ok
  if kind ~= want and kind ~= 'none' then
    return refuse(key .. ' is a ' .. kind .. ', not a ' .. want)
  end
end

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
  if current then  -- '[1,<version>,...'
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
if #head.cool > 0 then sliced('ZADD', cooling, head.cool, 1, #head.cool) end
if #head.uncool > 0 then sliced('ZREM', cooling, head.uncool, 1, #head.uncool) end
if #head.fits > 0 then sliced('SADD', fits, head.fits, 1, #head.fits) end
for i = a, #ARGV do redis.call('ZADD', outbox, head.now, ARGV[i]) end
local prog = head.prog
for i = 1, #prog, 2 do
  local partition = tostring(prog[i + 1])
  if prog[i] > (tonumber(redis.call('HGET', progress, partition)) or -1) then
    redis.call('HSET', progress, partition, prog[i])
  end
end
if flip then redis.call('SET', active_key, head.gen) end
return 0
"""


@dataclass(slots=True)
class Stored(Lead):
    """One lead as read from Redis: a ``Lead``, and what the commit compares and moves."""

    ids_before: dict[str, int] = field(default_factory=dict)  # the batch's known ids, as read
    t_ref_before: int | None = None
    ranked_before: tuple[float, tuple[str, ...]] | None = None  # (F, groups) as read
    groups_hot_before: tuple[str, ...] = ()  # the score groups hot for it, as read
    version: int = -1  # as read; -1: not in Redis

    @classmethod
    def decode(cls, lead_id: str, raw: bytes | str | None, ids: dict[str, int]) -> Stored:
        """``ids``: those of the batch's event ids this lead has applied before (their T)."""
        if raw is None:
            return cls(LeadState(lead_id, seen=dict(ids)), ids_before=ids)
        state, offsets, _, version = record.decode(raw, dict(ids))
        return cls(state, offsets, ids_before=ids, t_ref_before=state.t_ref,
                   ranked_before=(state.fit, groups(state.stage, state.hot)),
                   groups_hot_before=tuple(state.groups_hot), version=version)

    def encode(self, now_ms: int) -> bytes:
        return record.encode(self.state, self.offsets, now_ms, max(self.version, 0) + 1)


@dataclass(frozen=True, slots=True)
class Mode:
    """How a commit may write (see COMMIT): as ``generation``, live (notifications on,
    the generation active in the shard) or rebuilding; ``progress``: partition -> next
    offset of the events committed; ``flip``: the cutover's (the fence it set, the old
    generation's progress key in the shard and that progress as read), which makes the
    generation active."""

    generation: str
    live: bool
    marker: str  # the shard's marker as this store wrote or found it (a loss changes it)
    progress: dict[int, int] = field(default_factory=dict)
    flip: tuple[str, str, dict[int, int]] | None = None  # (fence, old progress key, as read)
    fence: str | None = None  # a cutover's own commit: it may write through its fence


def _flat(progress: dict[int, int]) -> list[int]:
    return [part for partition, offset in progress.items() for part in (offset, partition)]


def commit_arguments(shard: Shard, leads: dict[str, Stored], notes: list[Notification],
                     now_ms: int, rules: Ruleset, history_size: int, mode: Mode,
                     awards: Sequence[bytes] = ()
                     ) -> tuple[list[bytes], list[Any]]:
    """The outbox entries of ``notes``, and the arguments of the COMMIT call that
    writes the shard's leads (their layout is above, beside the script). A lead that is
    new and had every event refused is not written: as offline, it was never seen.
    ``awards``: member awards for the account side (SPEC 11), recorded in the outbox
    beside the notifications (an outbox, so that they leave exactly when the state that
    made them is committed)."""
    leads = {lead_id: stored for lead_id, stored in leads.items()
             if stored.version >= 0 or stored.state.t_ref is not None}
    window, step = rules.dedupe_window_ms, rules.prune_step_ms
    versions: list[int] = []
    records: list[bytes] = []
    cool: list[float | str] = []
    uncool: list[str] = []
    id_keys: list[str] = []
    id_sets: list[tuple[int | str, list[int | str]]] = []
    for lead_id, stored in leads.items():
        state = stored.state
        versions.append(stored.version)
        records.append(stored.encode(now_ms))
        before = stored.ids_before
        added = [part for event_id, t in state.seen.items() if before.get(event_id) != t
                 for part in (t, event_id)]
        # Expired ids are dropped when T crosses a mark every eighth of the window, as
        # the engine prunes its own (a check compares times with the horizon itself, so
        # an expired id never counts): one ZREMRANGEBYSCORE per lead and event would
        # be a tenth of Redis's work.
        t_ref, before_t = state.t_ref, stored.t_ref_before
        prune = t_ref is not None and before_t is not None and \
            t_ref // step != before_t // step
        if added or prune:
            id_keys.append(shard.ids(lead_id))
            id_sets.append((t_ref - window if prune and t_ref is not None else "", added))
        due = cooling_due(state, rules)
        if due is None:
            uncool.append(lead_id)
        else:
            cool += (due, lead_id)
    history_keys, histories = _histories(shard, leads, history_size)
    rank_keys, ranks, fits = _rankings(shard, leads, rules)
    entries = [orjson.dumps(stamp(n, now_ms)) for n in notes]
    head: dict[str, Any] = {
        "v": versions, "ids": id_sets, "cap": history_size,
        "hist": [len(some) for some in histories], "ranks": ranks, "cool": cool,
        "uncool": uncool, "fits": fits, "now": now_ms, "gen": mode.generation,
        "live": mode.live, "prog": _flat(mode.progress), "mark": mode.marker}
    if mode.fence is not None:
        head["fence"] = mode.fence
    keys = [*(shard.state(lead_id) for lead_id in leads), *id_keys, *history_keys,
            *rank_keys, shard.cooling, shard.outbox, shard.fits, shard.marker,
            shard.active, shard.progress]
    if mode.flip is not None:
        fence, old_key, old_progress = mode.flip
        head["flip"] = [fence, _flat(old_progress)]
        keys.append(old_key)
    return entries, [len(keys), *keys, orjson.dumps(head), *records,
                     *(entry for some in histories for entry in some), *entries, *awards]


def fence_value(deadline_ms: int, old: str, new: str, kind: str = "fence") -> str:
    """The shard's active key while a cutover from ``old`` to ``new`` fences it: until
    ``deadline_ms`` the old generation's live commits wait (COMMIT's -2), and, once
    ``kind`` is "closed", the new generation's rebuilding ones too."""
    return f"{kind}:{deadline_ms}:{old}:{new}"


def fenced_generations(value: str) -> tuple[str, str] | None:
    """(old, new) of a fence or closed fence, None for anything else."""
    parts = value.split(":")
    if len(parts) == 4 and parts[0] in ("fence", "closed"):
        return parts[2], parts[3]
    return None


def _rankings(shard: Shard, leads: dict[str, Stored], rules: Ruleset
              ) -> tuple[list[str], list[tuple[list[float | str], list[str]]], list[str]]:
    """Move each lead to its place in the rankings of its fit score and groups, and in
    its score groups' (SPEC 10): (ranking keys, (adds, removes) per key, new fit scores)."""
    adds: dict[str, list[float | str]] = {}
    removes: dict[str, list[str]] = {}
    fits: set[float] = set()
    half_life = rules.half_life_ms
    if rules.groups:
        _group_rankings(shard, leads, rules, adds, removes)
    for lead_id, stored in leads.items():
        state = stored.state
        fit, now_in = state.fit, groups(state.stage, state.hot)
        if stored.ranked_before is not None:
            fit_before, was_in = stored.ranked_before
            for group in was_in:
                if fit_before != fit or group not in now_in:
                    removes.setdefault(shard.rank(group, fit_before), []).append(lead_id)
        if stored.ranked_before is None or stored.ranked_before[0] != fit:
            fits.add(fit)
        # Stored negated and read lowest first: leads that tie then come in lead_id
        # order, as the final sort of ``top`` orders them (ZREVRANGE would reverse it).
        key = -rank_key(state, half_life)
        for group in now_in:
            adds.setdefault(shard.rank(group, fit), []).extend((key, lead_id))
    keys = list(adds.keys() | removes.keys())
    return (keys, [(adds.get(rank, []), removes.get(rank, [])) for rank in keys],
            list(map(repr, fits)))

def _group_rankings(shard: Shard, leads: dict[str, Stored], rules: Ruleset,
                    adds: dict[str, list[float | str]], removes: dict[str, list[str]]) -> None:
    """A score group's rankings hold every lead its rules have awarded (a lead never
    leaves, but by erasure) and, apart, those hot for it, each by the group's engagement
    as of T: the key is time-invariant as a lead's is (scoring.store.ranking).

    So a lead's key in a group changes only when the group's rules award it points
    (``fed``): a lead whose T moved on without them keeps its key, equal to the one its
    rebased engagement would give up to rounding, which the reads allow for (queries,
    ``_past``). Only fed leads, and leads that turned hot for a group, are written."""
    half_life = rules.half_life_ms
    for lead_id, stored in leads.items():
        state, fed, before = stored.state, stored.fed, stored.groups_hot_before
        hot_now = state.groups_hot
        if fed is None and len(hot_now) == len(before) and all(
                group_id in before for group_id in hot_now):
            continue  # (most leads of a batch: nothing of theirs moves)
        for group in rules.groups:
            group_id = group.id
            is_fed = fed is not None and group_id in fed
            hot = group_id in hot_now
            if not is_fed and not (hot and group_id not in before):
                continue
            key = -engagement_key(group_engagement(state, group), state.t_ref, half_life)
            if is_fed:
                adds.setdefault(shard.group_rank(group_id), []).extend((key, lead_id))
            if hot:
                adds.setdefault(shard.group_rank(group_id, hot=True), []).extend((key, lead_id))
        for group_id in before:
            if group_id not in hot_now:
                removes.setdefault(shard.group_rank(group_id, hot=True), []).append(lead_id)


def _histories(shard: Shard, leads: dict[str, Stored], history_size: int
               ) -> tuple[list[str], list[list[bytes]]]:
    """(history keys, the new entries of each as JSON, oldest first)."""
    keys: list[str] = []
    lists: list[list[bytes]] = []
    if history_size > 0:
        for lead_id, stored in leads.items():
            if stored.history:
                keys.append(shard.history(lead_id))
                lists.append([orjson.dumps(entry)
                              for entry in stored.history[-history_size:]])
    return keys, lists
