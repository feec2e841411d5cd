"""Lead state in Redis, changed atomically with the engine's own ``apply``.

There is one definition of the scoring semantics (``scoring.engine``); this store
runs it under Redis optimistic transactions instead of re-implementing it in Lua:

    WATCH <state keys of the batch>  ->  MGET states, READ_IDS (the batch's event ids;
    on a second connection)  ->  apply() in Python  ->
    MULTI  MSET states, WRITE_IDS, ZADD outbox, ZADD/ZREM cooling index  EXEC

EXEC fails if any watched key changed since WATCH (a second worker during a
rebalance, the cooling sweep), and the batch is then re-read and re-applied. So
a batch's state changes and the notifications they cause land together or not at
all, and no update is ever applied on top of stale state. Replays after a crash
or a rebalance are recognised by the source offsets each lead remembers, and a
producer's repeats by event id. That is three round trips per batch whatever its
size, plus the SCRIPT EXISTS that redis-py sends before a pipeline runs a script.

Redis Cluster is not supported yet: the MSET, the scripts and the outbox and
cooling keys span many slots in one transaction.

Keys (``{lead_id}`` is a Redis Cluster hash tag: one lead's keys share a slot):

    <prefix>:{<lead_id>}:state   JSON of LeadState but its ids, + offsets applied, updated_at
    <prefix>:{<lead_id>}:ids     ZSET event id -> T when applied (dedupe_window of them)
    <prefix>:outbox              ZSET notification JSON -> ms it was recorded
    <prefix>:cooling             ZSET lead_id -> event time (ms) it cools by decay
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from scoring.engine import LeadState, Notification, apply, cool, cooling_due, stamp
from scoring.errors import LeadscoreError
from scoring.events import Event
from scoring.rules import Ruleset

MAX_RETRIES = 50

# Plumbing for the per-lead id sets, one call per batch instead of one per lead: each
# Redis command costs ~15 us of redis-py overhead, more than applying an event. These
# scripts hold no scoring semantics (those live only in scoring.engine).
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



@dataclass(slots=True)
class Stored:
    """One lead as stored: its engine state, plus what the store itself keeps."""

    state: LeadState
    offsets: dict[str, int] = field(default_factory=dict)  # partition -> last offset applied
    ids_before: dict[str, int] = field(default_factory=dict)  # the batch's known ids, as read
    t_ref_before: int | None = None

    @classmethod
    def decode(cls, lead_id: str, raw: bytes | str | None, ids: dict[str, int]) -> Stored:
        """``ids``: those of the batch's event ids this lead has applied before (their T)."""
        if raw is None:
            return cls(LeadState(lead_id, seen=dict(ids)), {}, ids, None)
        doc = orjson.loads(raw)
        doc["seen"] = dict(ids)
        state = LeadState.from_dict(doc)
        return cls(state, doc["offsets"], ids, state.t_ref)

    def encode(self, now_ms: int) -> bytes:
        doc = self.state.to_dict()
        del doc["seen"]  # kept in its own sorted set, see LeadStore.ids_key
        doc["offsets"] = self.offsets
        doc["updated_at"] = now_ms
        return orjson.dumps(doc)


Change = Callable[[dict[str, Stored]], list[Notification]]


class LeadStore:
    """Lead states, the notification outbox and the cooling index in one Redis."""

    def __init__(self, redis: Redis, rules: Ruleset, prefix: str = "ls") -> None:
        self.redis = redis
        self.rules = rules
        self.prefix = prefix
        self.outbox_key = f"{prefix}:outbox"
        self.cooling_key = f"{prefix}:cooling"
        self._read_ids = redis.register_script(READ_IDS)
        self._write_ids = redis.register_script(WRITE_IDS)

    def state_key(self, lead_id: str) -> str:
        return f"{self.prefix}:{{{lead_id}}}:state"

    def ids_key(self, lead_id: str) -> str:
        """The lead's applied event ids -> T when applied. Apart from the state, so that a
        batch reads and writes only its own ids, not a busy lead's whole history."""
        return f"{self.prefix}:{{{lead_id}}}:ids"

    async def apply(self, events: Sequence[Event], now_ms: int,
                    positions: Sequence[tuple[int, int]] | None = None) -> list[bytes]:
        """Apply a batch of events (in order per lead); return the outbox entries it
        recorded: the notifications as JSON, stamped ``emitted_at`` = ``now_ms``, byte for
        byte what is to be sent and then passed to ``delivered``.

        ``positions`` are the events' (partition, offset) in the source topic. A lead's
        events all come from one partition in order, so an event at or below the last
        offset applied to its lead is a replay (a crash, a rebalance) and is skipped:
        replays are exact whatever the dedupe window.
        """
        by_lead: dict[str, list[tuple[Event, tuple[int, int] | None]]] = {}
        for i, event in enumerate(events):
            position = positions[i] if positions is not None else None
            by_lead.setdefault(event.lead_id, []).append((event, position))
        rules = self.rules

        def change(leads: dict[str, Stored]) -> list[Notification]:
            notes: list[Notification] = []
            for lead_id, lead_events in by_lead.items():
                stored = leads[lead_id]
                state, offsets = stored.state, stored.offsets
                for event, position in lead_events:
                    if position is not None:
                        partition = str(position[0])
                        if offsets.get(partition, -1) >= position[1]:
                            continue
                        offsets[partition] = position[1]
                    emitted = apply(state, event, rules)
                    if emitted:
                        notes.extend(emitted)
            return notes

        ids = {lead_id: [event.event_id for event, _ in lead_events]
               for lead_id, lead_events in by_lead.items()}
        return await self._transact(ids, change, now_ms)

    async def sweep(self, now_ms: int, limit: int = 1000) -> list[bytes]:
        """SPEC 3 step 3: cool every disarmed lead whose crossing time has passed; return
        the outbox entries recorded, as ``apply`` does."""
        due = await self.redis.zrangebyscore(self.cooling_key, "-inf", now_ms, 0, limit)
        if not due:
            return []
        rules = self.rules

        def change(leads: dict[str, Stored]) -> list[Notification]:
            return [n for lead in leads.values() if (n := cool(lead.state, now_ms, rules))]

        return await self._transact({_text(d): [] for d in due}, change, now_ms)

    async def load(self, lead_id: str) -> tuple[LeadState, int] | None:
        """A lead's state (with the ids that still count as duplicates) and when it was
        last written (wall ms), or None if unknown."""
        raw = await self.redis.get(self.state_key(lead_id))
        if raw is None:
            return None
        doc = orjson.loads(raw)
        horizon = (doc["t_ref"] or 0) - self.rules.dedupe_window_ms
        ids = cast(list[tuple[bytes, float]], await self.redis.zrangebyscore(
            self.ids_key(lead_id), horizon, "+inf", withscores=True))
        doc["seen"] = {_text(event_id): int(t) for event_id, t in ids}
        return LeadState.from_dict(doc), doc["updated_at"]

    async def pending(self, recorded_before_ms: float = float("inf")) -> list[bytes]:
        """Outbox entries recorded before the given instant, oldest first."""
        upto = "+inf" if recorded_before_ms == float("inf") else f"({recorded_before_ms}"
        return cast(list[bytes], await self.redis.zrangebyscore(self.outbox_key, "-inf", upto))

    async def outbox_size(self) -> int:
        """How many notifications are recorded but not yet acknowledged by the broker."""
        return int(await self.redis.zcard(self.outbox_key))

    async def delivered(self, entries: Iterable[bytes]) -> None:
        """Forget outbox entries that the broker has acknowledged."""
        members = list(entries)
        if members:
            await self.redis.zrem(self.outbox_key, *members)

    async def _transact(self, ids: dict[str, list[str]], change: Change,
                        now_ms: int) -> list[bytes]:
        """Read the leads (and the given event ids of each), apply ``change``, write back;
        all or nothing, retried while another writer changes one of these leads."""
        leads = list(ids)
        keys = [self.state_key(lead_id) for lead_id in leads]
        for _ in range(MAX_RETRIES):
            pipeline: Any = self.redis.pipeline(transaction=True)  # redis-py is untyped here
            async with pipeline as pipe:
                try:
                    # Every write of a lead writes its state key, so watching the state
                    # keys guards the id sets too. Reads on another connection after the
                    # WATCH are safe: any change after it makes EXEC fail.
                    await pipe.watch(*keys)
                    stored = await self._read(leads, keys, ids)
                    notes = change(stored)
                    pipe.multi()
                    entries = await self._write(pipe, stored, notes, now_ms)
                    await pipe.execute()
                    return entries
                except WatchError:
                    continue  # someone else changed one of these leads: re-read, re-apply
        raise LeadscoreError(f"gave up after {MAX_RETRIES} conflicting writes to the same "
                             "leads; is another process writing with this key prefix?")

    async def _read(self, leads: list[str], keys: list[str], ids: dict[str, list[str]]
                    ) -> dict[str, Stored]:
        reads: Any = self.redis.pipeline(transaction=False)
        reads.mget(keys)
        asked = [lead_id for lead_id in leads if ids[lead_id]]
        if asked:
            args: list[str | int] = []
            for lead_id in asked:
                args.append(len(ids[lead_id]))
                args.extend(ids[lead_id])
            # redis-py's scripts are coroutines even when they only queue into a pipeline
            await self._read_ids(keys=[self.ids_key(lead_id) for lead_id in asked], args=args,
                                 client=reads)
        replies = await reads.execute()
        known: dict[str, dict[str, int]] = {lead_id: {} for lead_id in leads}
        for lead_id, scores in zip(asked, replies[1] if asked else (), strict=True):
            known[lead_id] = {event_id: int(score) for event_id, score
                              in zip(ids[lead_id], scores, strict=True) if score is not None}
        return {lead_id: Stored.decode(lead_id, raw, known[lead_id])
                for lead_id, raw in zip(leads, replies[0], strict=True)}

    async def _write(self, pipe: Any, leads: dict[str, Stored], notes: list[Notification],
                     now_ms: int) -> list[bytes]:
        cooling: dict[str, float] = {}
        not_cooling: list[str] = []
        # One MSET for the batch: every queued command costs a reply to parse.
        pipe.mset({self.state_key(lead_id): stored.encode(now_ms)
                   for lead_id, stored in leads.items()})
        window = self.rules.dedupe_window_ms
        id_keys: list[str] = []
        id_args: list[str | int] = []
        for lead_id, stored in leads.items():
            state = stored.state
            added = [(t, event_id) for event_id, t in state.seen.items()
                     if stored.ids_before.get(event_id) != t]
            moved = state.t_ref is not None and state.t_ref != stored.t_ref_before
            if added or moved:
                id_keys.append(self.ids_key(lead_id))
                id_args.append(state.t_ref - window if moved and state.t_ref is not None
                               else "")
                id_args.append(len(added))
                for pair in added:
                    id_args.extend(pair)
            due = cooling_due(state, self.rules)
            if due is None:
                not_cooling.append(lead_id)
            else:
                cooling[lead_id] = due
        if cooling:
            pipe.zadd(self.cooling_key, cooling)
        if not_cooling:
            pipe.zrem(self.cooling_key, *not_cooling)
        if id_keys:
            await self._write_ids(keys=id_keys, args=id_args, client=pipe)
        entries = [orjson.dumps(stamp(n, now_ms)) for n in notes]
        if entries:
            pipe.zadd(self.outbox_key, dict.fromkeys(entries, now_ms))
        return entries


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
