"""Lead state in Redis, changed atomically with the engine's own ``apply``.

There is one definition of the scoring semantics (``scoring.engine``); this store
runs it under Redis optimistic transactions instead of re-implementing it in Lua:

    WATCH <state keys of the batch>  ->  MGET states, READ_IDS (the batch's event ids;
    on a second connection)  ->  apply() in Python  ->
    MULTI  MSET states, WRITE_IDS, ZADD outbox, ZADD/ZREM cooling index,
           WRITE_RANKS (lead index), PUSH_HISTORY  EXEC

EXEC fails if any watched key changed since WATCH (a second worker during a
rebalance, the cooling sweep), and the batch is then re-read and re-applied. So
a batch's state changes and the notifications they cause land together or not at
all, and no update is ever applied on top of stale state. Replays after a crash
or a rebalance are recognised by the source offsets each lead remembers, and a
producer's repeats by event id. That is three round trips per batch whatever its
size, plus the SCRIPT EXISTS that redis-py sends before a pipeline runs a script.
The lead index and the history are written in the same transaction, so they
never disagree with the states.

Redis Cluster is not supported yet: the MSET, the scripts and the outbox and
cooling keys span many slots in one transaction.

Keys (``{lead_id}`` is a Redis Cluster hash tag: one lead's keys share a slot):

    <prefix>:{<lead_id>}:state   JSON of LeadState but its ids, + offsets applied, updated_at
    <prefix>:{<lead_id>}:ids     ZSET event id -> T when applied (dedupe_window of them)
    <prefix>:outbox              ZSET notification JSON -> ms it was recorded
    <prefix>:cooling             ZSET lead_id -> event time (ms) it cools by decay
    <prefix>:{<lead_id>}:history LIST of the last changes, newest first (scoring.history)
    <prefix>:rank:<group>:<F>    ZSET lead_id -> -(rank key), per group (all, stage:<s>, hot)
                                 and fit score F (see scoring.ranking)
    <prefix>:rank:fits           SET of the fit scores F that have rankings
    <prefix>:notifications       pub/sub channel: every notification once it is sent
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import WatchError

from scoring import history
from scoring.engine import (
    LeadState,
    Notification,
    cool,
    cooling_due,
    describe,
    engagement_at,
    is_duplicate,
    score_at,
    stamp,
)
from scoring.errors import LeadscoreError
from scoring.events import Event
from scoring.ranking import groups, rank_key
from scoring.rules import Ruleset
from scoring.scripts import PUSH_HISTORY, READ_IDS, WRITE_IDS, WRITE_RANKS

MAX_RETRIES = 50

# Observes a Redis round trip: (operation, seconds). Metrics live outside scoring/.
Observe = Callable[[str, float], None]


def _ignore(op: str, seconds: float) -> None:
    pass


@dataclass(slots=True)
class Outcome:
    """What one batch did: the outbox entries it recorded and what to count."""

    entries: list[bytes] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    replayed: int = 0
    awards: dict[str, list[float]] = field(default_factory=dict)  # rule -> [count, |points|]



@dataclass(slots=True)
class Stored:
    """One lead as stored: its engine state, plus what the store itself keeps."""

    state: LeadState
    offsets: dict[str, int] = field(default_factory=dict)  # partition -> last offset applied
    ids_before: dict[str, int] = field(default_factory=dict)  # the batch's known ids, as read
    t_ref_before: int | None = None
    ranked_before: tuple[float, tuple[str, ...]] | None = None  # (F, groups) as read
    history: list[history.Entry] = field(default_factory=list)  # new entries, oldest first

    @classmethod
    def decode(cls, lead_id: str, raw: bytes | str | None, ids: dict[str, int]) -> Stored:
        """``ids``: those of the batch's event ids this lead has applied before (their T)."""
        if raw is None:
            return cls(LeadState(lead_id, seen=dict(ids)), {}, ids, None)
        doc = orjson.loads(raw)
        doc["seen"] = dict(ids)
        state = LeadState.from_dict(doc)
        return cls(state, doc["offsets"], ids, state.t_ref,
                   (state.fit, groups(state.stage, state.hot)))

    def encode(self, now_ms: int) -> bytes:
        doc = self.state.to_dict()
        del doc["seen"]  # kept in its own sorted set, see LeadStore.ids_key
        doc["offsets"] = self.offsets
        doc["updated_at"] = now_ms
        return orjson.dumps(doc)


Change = Callable[[dict[str, Stored]], list[Notification]]


class LeadStore:
    """Lead states, their histories, the lead index, the notification outbox and the
    cooling index in one Redis."""

    def __init__(self, redis: Redis, rules: Ruleset, prefix: str = "ls",
                 history_size: int = 50, observe: Observe = _ignore) -> None:
        self.redis = redis
        self.rules = rules
        self.prefix = prefix
        self.history_size = history_size
        self.observe = observe
        self.outbox_key = f"{prefix}:outbox"
        self.cooling_key = f"{prefix}:cooling"
        self.fits_key = f"{prefix}:rank:fits"
        self.channel = f"{prefix}:notifications"
        self._read_ids = redis.register_script(READ_IDS)
        self._write_ids = redis.register_script(WRITE_IDS)
        self._write_ranks = redis.register_script(WRITE_RANKS)
        self._push_history = redis.register_script(PUSH_HISTORY)

    def state_key(self, lead_id: str) -> str:
        return f"{self.prefix}:{{{lead_id}}}:state"

    def ids_key(self, lead_id: str) -> str:
        """The lead's applied event ids -> T when applied. Apart from the state, so that a
        batch reads and writes only its own ids, not a busy lead's whole history."""
        return f"{self.prefix}:{{{lead_id}}}:ids"

    def history_key(self, lead_id: str) -> str:
        return f"{self.prefix}:{{{lead_id}}}:history"

    def rank_key(self, group: str, fit: float | str) -> str:
        return f"{self.prefix}:rank:{group}:{fit!r}" if isinstance(fit, float) else \
            f"{self.prefix}:rank:{group}:{fit}"

    async def apply(self, events: Sequence[Event], now_ms: int,
                    positions: Sequence[tuple[int, int]] | None = None) -> Outcome:
        """Apply a batch of events (in order per lead). The outcome's ``entries`` are the
        outbox entries recorded: the notifications as JSON, stamped ``emitted_at`` =
        ``now_ms``, byte for byte what is to be sent and then passed to ``delivered``.

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
        outcome = Outcome()

        def change(leads: dict[str, Stored]) -> list[Notification]:
            # A retried transaction starts over: count only what the last try did.
            outcome.applied = outcome.duplicates = outcome.replayed = 0
            awards: dict[str, list[float]] = {}
            outcome.awards = awards
            notes: list[Notification] = []
            for lead_id, lead_events in by_lead.items():
                stored = leads[lead_id]
                state, offsets = stored.state, stored.offsets
                for event, position in lead_events:
                    if position is not None:
                        partition = str(position[0])
                        if offsets.get(partition, -1) >= position[1]:
                            outcome.replayed += 1
                            continue
                        offsets[partition] = position[1]
                    if is_duplicate(state, event, rules):
                        outcome.duplicates += 1
                        continue
                    emitted, entries, awarded = history.apply_recorded(state, event, rules)
                    outcome.applied += 1
                    if emitted:
                        notes.extend(emitted)
                    if entries:
                        stored.history.extend(entries)
                    for rule_id, points in awarded:
                        tally = awards.get(rule_id)
                        if tally is None:
                            awards[rule_id] = [1, abs(points)]
                        else:
                            tally[0] += 1
                            tally[1] += abs(points)
            return notes

        ids = {lead_id: [event.event_id for event, _ in lead_events]
               for lead_id, lead_events in by_lead.items()}
        outcome.entries = await self._transact(ids, change, now_ms)
        return outcome

    async def sweep(self, now_ms: int, limit: int = 1000) -> list[bytes]:
        """SPEC 3 step 3: cool every disarmed lead whose crossing time has passed; return
        the outbox entries recorded, as ``apply`` does."""
        due = await self.redis.zrangebyscore(self.cooling_key, "-inf", now_ms, 0, limit)
        if not due:
            return []
        rules = self.rules

        def change(leads: dict[str, Stored]) -> list[Notification]:
            notes = []
            for stored in leads.values():
                note = cool(stored.state, now_ms, rules)
                if note is not None:
                    notes.append(note)
                    stored.history.append(history.cooling(note))
            return notes

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

    async def history(self, lead_id: str, limit: int) -> list[dict[str, Any]]:
        """The lead's last ``limit`` changes, newest first."""
        raw = await self.redis.lrange(self.history_key(lead_id), 0, limit - 1)
        return [history.view(orjson.loads(entry)) for entry in raw]

    async def top(self, now_ms: int, limit: int, group: str = "all",
                  keep: Callable[[dict[str, Any]], bool] | None = None
                  ) -> list[dict[str, Any]]:
        """The ``limit`` highest scores at ``now_ms`` among the leads of ``group`` (all,
        hot, stage:<stage>) that ``keep`` accepts, as ``describe`` shows them.

        Each fit score's ranking is read from the top in pages until it has yielded
        ``limit`` leads (or runs out); the best of those are the answer (see
        scoring.ranking for why that is exact). A lead is shown as of now: one whose
        cooling by decay is due but not yet swept is shown cooled.
        """
        rules = self.rules
        fits = [_text(f) for f in await self.redis.smembers(self.fits_key)]
        # Ordered by score, then by the score before clamping (the ranking's own order, so
        # that a page cut between leads clamped to the same score is still exact), then id.
        found: list[tuple[float, float, str, dict[str, Any]]] = []
        page = limit  # a ranking past its first `limit` matches has nothing to add
        offsets = dict.fromkeys(fits, 0)
        while offsets:
            reads: Any = self.redis.pipeline(transaction=False)
            for fit, start in offsets.items():
                reads.zrange(self.rank_key(group, fit), start, start + page - 1)
            pages = await reads.execute()
            wanted = [_text(lead) for ids in pages for lead in ids]
            raws = await self.redis.mget([self.state_key(lead) for lead in wanted]) \
                if wanted else []
            states: dict[str, LeadState] = {}
            for raw in raws:
                if raw is not None:
                    loaded = LeadState.from_dict({**orjson.loads(raw), "seen": {}})
                    cool(loaded, now_ms, rules)
                    states[loaded.lead_id] = loaded
            done = []
            for (fit, start), ids in zip(list(offsets.items()), pages, strict=True):
                kept = 0
                for lead in ids:
                    state = states.get(_text(lead))
                    if state is None:
                        continue
                    view = describe(state, rules, now_ms)
                    del view["profile"]
                    if keep is None or keep(view):
                        found.append((score_at(state, now_ms, rules),
                                      state.fit + engagement_at(state, now_ms, rules),
                                      state.lead_id, view))
                        kept += 1
                offsets[fit] = start + page
                # Enough from this ranking, or it has no more: the rest cannot make the top.
                if kept >= limit or len(ids) < page:
                    done.append(fit)
            for fit in done:
                del offsets[fit]
        found.sort(key=lambda f: (-f[0], -f[1], f[2]))
        return [view for _, _, _, view in found[:limit]]

    async def forget(self, lead_id: str) -> bool:
        """Erase every key of a lead (GDPR): state, ids, history, its place in the lead
        index and the cooling index, and its notifications not yet sent. Returns whether
        the lead was known."""
        key = self.state_key(lead_id)
        for _ in range(MAX_RETRIES):
            pipeline: Any = self.redis.pipeline(transaction=True)
            async with pipeline as pipe:
                try:
                    await pipe.watch(key, self.outbox_key)
                    raw = await self.redis.get(key)
                    pending = [entry for entry in await self.pending()
                               if orjson.loads(entry)["lead_id"] == lead_id]
                    pipe.multi()
                    pipe.delete(key, self.ids_key(lead_id), self.history_key(lead_id))
                    pipe.zrem(self.cooling_key, lead_id)
                    if pending:
                        pipe.zrem(self.outbox_key, *pending)
                    if raw is not None:
                        doc = orjson.loads(raw)
                        for group in groups(doc["stage"], doc["hot"]):
                            pipe.zrem(self.rank_key(group, float(doc["fit"])), lead_id)
                    await pipe.execute()
                    return raw is not None
                except WatchError:
                    continue  # the lead changed meanwhile: forget what it is now
        raise LeadscoreError(f"could not forget {lead_id!r}: it kept changing")

    async def pending(self, recorded_before_ms: float = float("inf")) -> list[bytes]:
        """Outbox entries recorded before the given instant, oldest first."""
        upto = "+inf" if recorded_before_ms == float("inf") else f"({recorded_before_ms}"
        return cast(list[bytes], await self.redis.zrangebyscore(self.outbox_key, "-inf", upto))

    async def outbox_size(self) -> int:
        """How many notifications are recorded but not yet acknowledged by the broker."""
        return int(await self.redis.zcard(self.outbox_key))

    async def delivered(self, entries: Iterable[bytes]) -> None:
        """Forget outbox entries that the broker has acknowledged, and publish them on
        the notifications channel for live dashboards (of any worker)."""
        members = list(entries)
        if members:
            pipe: Any = self.redis.pipeline(transaction=False)
            pipe.zrem(self.outbox_key, *members)
            for member in members:
                pipe.publish(self.channel, member)
            await pipe.execute()

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
                    started = time.perf_counter()
                    stored = await self._read(leads, keys, ids)
                    self.observe("read", time.perf_counter() - started)
                    notes = change(stored)
                    pipe.multi()
                    entries = await self._write(pipe, stored, notes, now_ms)
                    started = time.perf_counter()
                    await pipe.execute()
                    self.observe("write", time.perf_counter() - started)
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
        await self._write_index(pipe, leads)
        await self._write_history(pipe, leads)
        entries = [orjson.dumps(stamp(n, now_ms)) for n in notes]
        if entries:
            pipe.zadd(self.outbox_key, dict.fromkeys(entries, now_ms))
        return entries


    async def _write_index(self, pipe: Any, leads: dict[str, Stored]) -> None:
        """Move each lead to its place in the rankings of its fit score and groups."""
        adds: dict[str, list[float | str]] = {}
        removes: dict[str, list[str]] = {}
        fits: set[float] = set()
        half_life = self.rules.half_life_ms
        for lead_id, stored in leads.items():
            state = stored.state
            fit, now_in = state.fit, groups(state.stage, state.hot)
            if stored.ranked_before is not None:
                fit_before, was_in = stored.ranked_before
                for group in was_in:
                    if fit_before != fit or group not in now_in:
                        removes.setdefault(self.rank_key(group, fit_before), []).append(lead_id)
            if stored.ranked_before is None or stored.ranked_before[0] != fit:
                fits.add(fit)
            # Stored negated and read lowest first: leads that tie then come in lead_id
            # order, as the final sort of ``top`` orders them (ZREVRANGE would reverse it).
            key = -rank_key(state, half_life)
            for group in now_in:
                adds.setdefault(self.rank_key(group, fit), []).extend((key, lead_id))
        if fits:
            pipe.sadd(self.fits_key, *map(repr, fits))
        keys: list[str] = []
        args: list[float | str] = []
        for rank in adds.keys() | removes.keys():
            added, removed = adds.get(rank, []), removes.get(rank, [])
            keys.append(rank)
            args.append(len(added) // 2)
            args.extend(added)
            args.append(len(removed))
            args.extend(removed)
        if keys:
            await self._write_ranks(keys=keys, args=args, client=pipe)

    async def _write_history(self, pipe: Any, leads: dict[str, Stored]) -> None:
        if self.history_size <= 0:
            return
        keys: list[str] = []
        args: list[int | bytes] = [self.history_size]
        for lead_id, stored in leads.items():
            if stored.history:
                keys.append(self.history_key(lead_id))
                recent = stored.history[-self.history_size:]
                args.append(len(recent))
                args.extend(orjson.dumps(entry) for entry in recent)
        if keys:
            await self._push_history(keys=keys, args=args, client=pipe)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
