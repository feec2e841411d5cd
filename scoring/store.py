"""Lead state in Redis, changed atomically with the engine's own ``apply``.

There is one definition of the scoring semantics (``scoring.engine``); this store
runs it under Redis optimistic transactions instead of re-implementing it in Lua:

    WATCH <state keys of the batch>  ->  MGET  ->  apply() in Python  ->
    MULTI  SET states, ZADD outbox, ZADD/ZREM cooling index  EXEC

EXEC fails if any watched key changed since WATCH (a second worker during a
rebalance, the cooling sweep), and the batch is then re-read and re-applied. So
a batch's state changes and the notifications they cause land together or not at
all, and no update is ever applied on top of stale state. Replays after a crash
are harmless because every state remembers the event ids it has applied.
That is three round trips per batch, whatever its size.

Keys (``{lead_id}`` is a Redis Cluster hash tag: one lead's keys share a slot):

    <prefix>:{<lead_id>}:state   JSON of LeadState, + offsets applied, updated_at
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



@dataclass(slots=True)
class Stored:
    """One lead as stored: its engine state, plus what the store itself keeps."""

    state: LeadState
    offsets: dict[str, int] = field(default_factory=dict)  # partition -> last offset applied

    @classmethod
    def decode(cls, lead_id: str, raw: bytes | str | None) -> Stored:
        if raw is None:
            return cls(LeadState(lead_id))
        doc = orjson.loads(raw)
        return cls(LeadState.from_dict(doc), doc.get("offsets", {}))

    def encode(self, now_ms: int) -> bytes:
        doc = self.state.to_dict()
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

    def state_key(self, lead_id: str) -> str:
        return f"{self.prefix}:{{{lead_id}}}:state"

    async def apply(self, events: Sequence[Event], now_ms: int,
                    positions: Sequence[tuple[int, int]] | None = None) -> list[Notification]:
        """Apply a batch of events (in order per lead); return the notifications recorded
        in the outbox, stamped ``emitted_at`` = ``now_ms``.

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

        return await self._transact(by_lead, change, now_ms)

    async def sweep(self, now_ms: int, limit: int = 1000) -> list[Notification]:
        """SPEC 3 step 3: cool every disarmed lead whose crossing time has passed."""
        due = await self.redis.zrangebyscore(self.cooling_key, "-inf", now_ms, 0, limit)
        if not due:
            return []
        rules = self.rules

        def change(leads: dict[str, Stored]) -> list[Notification]:
            return [n for lead in leads.values() if (n := cool(lead.state, now_ms, rules))]

        return await self._transact([_text(d) for d in due], change, now_ms)

    async def load(self, lead_id: str) -> tuple[LeadState, int] | None:
        """A lead's state and when it was last written (wall ms), or None if unknown."""
        raw = await self.redis.get(self.state_key(lead_id))
        if raw is None:
            return None
        doc = orjson.loads(raw)
        return LeadState.from_dict(doc), doc["updated_at"]

    async def pending(self, recorded_before_ms: float = float("inf")) -> list[bytes]:
        """Outbox entries recorded before the given instant, oldest first."""
        upto = "+inf" if recorded_before_ms == float("inf") else f"({recorded_before_ms}"
        return cast(list[bytes], await self.redis.zrangebyscore(self.outbox_key, "-inf", upto))

    async def delivered(self, entries: Iterable[bytes]) -> None:
        """Forget outbox entries that the broker has acknowledged."""
        members = list(entries)
        if members:
            await self.redis.zrem(self.outbox_key, *members)

    async def _transact(self, lead_ids: Iterable[str], change: Change,
                        now_ms: int) -> list[Notification]:
        leads = list(lead_ids)
        keys = [self.state_key(lead_id) for lead_id in leads]
        for _ in range(MAX_RETRIES):
            pipeline: Any = self.redis.pipeline(transaction=True)  # redis-py is untyped here
            async with pipeline as pipe:
                try:
                    await pipe.watch(*keys)
                    raws = await pipe.mget(keys)
                    states = {lead_id: Stored.decode(lead_id, raw) for lead_id, raw in
                              zip(leads, raws, strict=True)}
                    notes = change(states)
                    pipe.multi()
                    self._write(pipe, states, notes, now_ms)
                    await pipe.execute()
                    return notes
                except WatchError:
                    continue  # someone else changed one of these leads: re-read, re-apply
        raise LeadscoreError(f"gave up after {MAX_RETRIES} conflicting writes to the same "
                             "leads; is another process writing with this key prefix?")

    def _write(self, pipe: Any, leads: dict[str, Stored], notes: list[Notification],
               now_ms: int) -> None:
        cooling: dict[str, float] = {}
        not_cooling: list[str] = []
        # One MSET for the batch: every queued command costs a reply to parse.
        pipe.mset({self.state_key(lead_id): stored.encode(now_ms)
                   for lead_id, stored in leads.items()})
        for lead_id, stored in leads.items():
            due = cooling_due(stored.state, self.rules)
            if due is None:
                not_cooling.append(lead_id)
            else:
                cooling[lead_id] = due
        if cooling:
            pipe.zadd(self.cooling_key, cooling)
        if not_cooling:
            pipe.zrem(self.cooling_key, *not_cooling)
        if notes:
            pipe.zadd(self.outbox_key, {orjson.dumps(stamp(n, now_ms)): now_ms for n in notes})


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
