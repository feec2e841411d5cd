"""Lead state in Redis, changed atomically with the engine's own ``apply``.

There is one definition of the scoring semantics (``scoring.engine``); this store
runs it under optimistic concurrency instead of re-implementing it in Lua. Per
shard of the batch (``scoring.store.keys``):

    MGET states + READ_IDS (the batch's event ids)  ->  apply_batch (scoring.store.batch)
    ->  COMMIT (states, ids, cooling index, lead index, history, outbox; one script,
        scoring.store.commit)

COMMIT first checks that no lead changed since it was read (each state record
carries a version), and writes nothing if one did (a second worker during a
rebalance, the cooling sweep, an erasure); the shard's part is then re-read and
re-applied. So a lead's state change and the notifications, index entries and
history it causes land together or not at all, and no update is ever applied on
top of stale state. A lead lives in one shard, so the shards of a batch are
independent and run concurrently. Replays after a crash or a rebalance are
recognised by the source offsets each lead remembers, and a producer's repeats by
event id. That is two round trips per shard whatever the batch size. Scripts are
sent with EVAL (Redis caches them by digest): EVALSHA would need a SCRIPT EXISTS
round trip, or a NOSCRIPT retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import orjson
from redis.exceptions import WatchError

from scoring import history
from scoring.engine import cool
from scoring.errors import DataLost, StoreError
from scoring.events import Event
from scoring.rules import Ruleset
from scoring.store import record
from scoring.store.batch import Batch, Outcome, PartlyApplied, apply_batch, numbered
from scoring.store.commit import COMMIT, READ_IDS, Stored, commit_arguments
from scoring.store.keys import PREFIX, Layout, Shard, layout_key
from scoring.store.queries import Queries, as_text
from scoring.store.ranking import groups

MAX_RETRIES = 50
# Dead-lettered messages are remembered so that a retry or a replay after a crash does
# not dead-letter them again; they are replayed only until their offsets are committed
# (within a fraction of a second, or one crash later), so a day and a bound suffice.
DEAD_LETTER_MEMORY_MS = 86_400_000
DEAD_LETTER_MEMORY_SIZE = 100_000
_T = TypeVar("_T")

# Observes a Redis round trip: (operation, seconds). Metrics live outside scoring/.
Observe = Callable[[str, float], None]
# Whether the deployment has consumed events before (it has committed offsets): asked
# only when Redis holds no data, to tell a first start from a Redis that lost its data.
Consumed = Callable[[], Awaitable[bool]]


async def _never() -> bool:
    return False


def _ignore(op: str, seconds: float) -> None:
    pass


# A change of the leads of one shard: what it did, its notifications included.
Change = Callable[[dict[str, Stored]], Outcome]


class RedisStore:
    """Lead states, their histories, the lead index, the notification outbox and the
    cooling index, in one Redis or a Redis Cluster. Its reads are those of
    ``scoring.store.queries.Queries``, offered as its own."""

    def __init__(self, redis: Any, rules: Ruleset, prefix: str = PREFIX,
                 history_size: int = history.SIZE, observe: Observe = _ignore, shards: int = 1,
                 consumed: Consumed = _never) -> None:
        self.redis = redis  # redis.asyncio.Redis or RedisCluster
        self.rules = rules
        self.keys = Layout(prefix, shards)
        self.history_size = history_size
        self.observe = observe
        self.consumed = consumed
        self._opened = False
        reads = Queries(redis, rules, self.keys)
        self.load, self.exists, self.history = reads.load, reads.exists, reads.history
        self.top, self.pending, self.outbox_size = reads.top, reads.pending, reads.outbox_size

    @property
    def channel(self) -> str:
        return self.keys.channel

    @staticmethod
    async def recorded_shards(redis: Any, prefix: str) -> int | None:
        """The shard count the data under ``prefix`` was written with, if any."""
        raw = await redis.get(layout_key(prefix))
        return None if raw is None else int(orjson.loads(raw)["shards"])

    async def check_layout(self) -> None:
        """Refuse a shard count that differs from the one the data was written with
        (every lead would be looked for in the wrong shard). Writes nothing."""
        raw = await self.redis.get(self.keys.layout_key)
        found, want = None if raw is None else orjson.loads(raw)["shards"], len(self.keys.shards)
        if found is not None and found != want:
            raise StoreError(
                f"Redis holds Leadscore data in {found} shards under the prefix "
                f"{self.keys.prefix!r}, not {want}: set LEADSCORE_REDIS_SHARDS={found}, or use "
                "another LEADSCORE_KEY_PREFIX and LEADSCORE_GROUP_ID for a fresh start")

    async def open(self) -> None:
        """Make the keyspace ready for writing, once; every write calls it first.

        On first use it records the shard count and a marker per shard, which every
        COMMIT checks. No layout while ``consumed()`` says the deployment has committed
        offsets, or some shards' markers gone but not others', means Redis lost the data
        (restarted without persistence, flushed, a cluster master replaced empty):
        ``DataLost``, rather than scoring on from nothing and reusing notification ids.
        Data of versions before the markers has a layout and no marker at all: it gets
        its markers now."""
        if self._opened:
            return
        await self.check_layout()
        reads: Any = self.redis.pipeline(transaction=False)
        reads.exists(self.keys.layout_key)
        for shard in self.keys.shards:
            reads.exists(shard.marker)
        has_layout, *markers = await reads.execute()
        if not has_layout and await self.consumed():
            raise DataLost(self._lost("the layout key is gone, but the deployment's consumer "
                                      "group has committed offsets"))
        if has_layout and any(markers) and not all(markers):
            gone = [str(shard.number) for shard, m in zip(self.keys.shards, markers,
                                                          strict=True) if not m]
            raise DataLost(self._lost(f"the markers of shards {', '.join(gone)} are gone"))
        writes: Any = self.redis.pipeline(transaction=False)
        writes.set(self.keys.layout_key, orjson.dumps({"shards": len(self.keys.shards)}),
                   nx=True)
        for shard in self.keys.shards:
            writes.set(shard.marker, b"1", nx=True)
        await writes.execute()
        await self.check_layout()  # another process may have recorded another count first
        self._opened = True

    def _lost(self, what: str) -> str:
        return (f"Redis lost Leadscore's data under the prefix {self.keys.prefix!r} ({what}): "
                "scoring on would start every lead from nothing and reuse notification ids, "
                "so this worker stops. Restore Redis from its backup (AOF or RDB) and restart, "
                "or start over from the events topic with a new LEADSCORE_GROUP_ID "
                "(docs/operations.md, \"Redis lost its data\")")

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
        rules, keep_history = self.rules, self.history_size > 0
        # Per shard: its part of the batch, in order, and each of its leads' event ids.
        shards: dict[Shard, tuple[Batch, dict[str, list[str]]]] = {}
        lead_parts: dict[str, tuple[Batch, list[str]]] = {}  # a lead's shard, looked up once
        for item in numbered(events, positions):  # (one pass; each shard's part in order)
            event = item[1]
            mine = lead_parts.get(event.lead_id)
            if mine is None:
                part = shards.get(shard := self.keys.of(event.lead_id))
                if part is None:
                    part = shards[shard] = ([], {})
                mine = lead_parts[event.lead_id] = (part[0], part[1].setdefault(event.lead_id, []))
            mine[0].append(item)
            mine[1].append(event.event_id)

        def change(part: Batch) -> Change:
            # (afresh on each try: a retried transaction starts over)
            return lambda leads: apply_batch(leads, part, rules, keep_history)

        jobs = [self._transact(shard, ids, change(part), now_ms)
                for shard, (part, ids) in shards.items()]
        done = [await jobs[0]] if len(jobs) == 1 else \
            await asyncio.gather(*jobs, return_exceptions=True)
        outcome, failure = Outcome(), None
        for result in done:
            if isinstance(result, BaseException):
                failure = failure or result
            else:
                outcome.add(result)
        if failure is not None:
            if not outcome:
                raise failure
            raise PartlyApplied(outcome, failure) from failure
        return outcome

    async def sweep(self, now_ms: int, limit: int = 1000) -> list[bytes]:
        """The cooling sweep: cool every disarmed lead whose crossing time has passed (at most
        ``limit`` per shard); return the outbox entries recorded, as ``apply`` does."""
        rules = self.rules

        def change(leads: dict[str, Stored]) -> Outcome:
            outcome = Outcome()
            for stored in leads.values():
                note = cool(stored.state, now_ms, rules)
                if note is not None:
                    outcome.notifications.append(note)
                    stored.history.append(history.cooling(note))
            return outcome

        async def sweep_shard(shard: Shard) -> list[bytes]:
            due = await self.redis.zrangebyscore(shard.cooling, "-inf", now_ms, 0, limit)
            if not due:
                return []
            outcome = await self._transact(shard, {as_text(d): [] for d in due}, change, now_ms)
            return outcome.entries

        return [entry for entries in await _all(map(sweep_shard, self.keys.shards))
                for entry in entries]

    async def forget(self, lead_id: str) -> bool:
        """Erase every key of a lead (GDPR): state, ids, history, its place in the lead
        index and the cooling index, and its notifications not yet sent. Returns whether
        the lead was known."""
        shard = self.keys.of(lead_id)
        key = shard.state(lead_id)

        # Redis optimistic transaction: WATCH the state and the outbox, read them (on
        # another connection: safe, since any change after the WATCH makes EXEC fail),
        # queue the deletes, EXEC; all of it again while the lead keeps changing.
        for _ in range(MAX_RETRIES):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key, shard.outbox)
                    raw = await self.redis.get(key)
                    pending = [entry for entry in await self.redis.zrange(shard.outbox, 0, -1)
                               if orjson.loads(entry)["lead_id"] == lead_id]
                    pipe.multi()
                    pipe.delete(key, shard.ids(lead_id), shard.history(lead_id))
                    pipe.zrem(shard.cooling, lead_id)
                    if pending:
                        pipe.zrem(shard.outbox, *pending)
                    if raw is not None:
                        state = record.decode(raw, {}).state
                        for group in groups(state.stage, state.hot):
                            pipe.zrem(shard.rank(group, float(state.fit)), lead_id)
                    await pipe.execute()
                    return raw is not None
                except WatchError:
                    continue  # the lead changed meanwhile: forget what it is now
        raise StoreError(f"could not forget {lead_id!r}: it kept changing")

    async def dead_lettered(self, messages: Sequence[str]) -> list[bool]:
        """Which of these messages (``"<topic>:<partition>:<offset>"``) were dead-lettered
        before (recorded by ``record_dead_letters``)."""
        if not messages:
            return []
        scores = await self.redis.zmscore(self.keys.dead_letters, list(messages))
        return [score is not None for score in scores]

    async def record_dead_letters(self, messages: Sequence[str], now_ms: int) -> None:
        """Remember messages as dead-lettered (and forget the oldest past the bounds)."""
        if messages:
            key = self.keys.dead_letters
            pipe: Any = self.redis.pipeline(transaction=False)
            pipe.zadd(key, dict.fromkeys(messages, now_ms))
            pipe.zremrangebyscore(key, "-inf", f"({now_ms - DEAD_LETTER_MEMORY_MS}")
            pipe.zremrangebyrank(key, 0, -DEAD_LETTER_MEMORY_SIZE - 1)
            await pipe.execute()

    async def delivered(self, entries: Iterable[bytes],
                        lead_ids: Iterable[str] | None = None) -> None:
        """Forget outbox entries that the broker has acknowledged, and publish them on
        the notifications channel for live dashboards (of any worker). ``lead_ids``: the
        lead of each entry when the caller has it, else it is read from the entry."""
        entries = list(entries)
        leads = [orjson.loads(entry)["lead_id"] for entry in entries] if lead_ids is None \
            else lead_ids
        by_shard: dict[Shard, list[bytes]] = {}
        for entry, lead_id in zip(entries, leads, strict=True):
            by_shard.setdefault(self.keys.of(lead_id), []).append(entry)
        if by_shard:
            pipe: Any = self.redis.pipeline(transaction=False)
            for shard, some in by_shard.items():
                pipe.zrem(shard.outbox, *some)
                for entry in some:  # (cluster pipelines refuse .publish by name)
                    pipe.execute_command("PUBLISH", self.keys.channel, entry)
            await pipe.execute()

    async def _transact(self, shard: Shard, ids: dict[str, list[str]], change: Change,
                        now_ms: int) -> Outcome:
        """Read the leads of one shard (and the given event ids of each), apply
        ``change``, write back with COMMIT; all or nothing, retried while another writer
        (a second worker during a rebalance, the sweep, an erasure) changes one of these
        leads in between. Every write of a lead writes its state record with a new
        version, so the versions guard the id sets, histories and rankings too."""
        await self.open()
        leads = list(ids)
        keys = [shard.state(lead_id) for lead_id in leads]
        for _ in range(MAX_RETRIES):
            started = time.perf_counter()
            stored = await self._read(shard, leads, keys, ids)
            self.observe("read", time.perf_counter() - started)
            outcome = change(stored)
            outcome.entries, commit = commit_arguments(
                shard, stored, outcome.notifications, now_ms, self.rules, self.history_size)
            started = time.perf_counter()
            stale = await self.redis.eval(COMMIT, *commit)
            self.observe("write", time.perf_counter() - started)
            if not stale:
                return outcome
            if stale < 0:
                raise DataLost(self._lost(f"shard {shard.number}'s marker is gone"))
        raise StoreError(f"gave up after {MAX_RETRIES} conflicting writes to the same "
                             "leads; is another process writing with this key prefix?")

    async def _read(self, shard: Shard, leads: list[str], keys: list[str],
                    ids: dict[str, list[str]]) -> dict[str, Stored]:
        reads: Any = self.redis.pipeline(transaction=False)
        # execute_command: redis-py's cluster pipelines refuse .mget/.mset by name, even
        # for keys of one slot, which is all a shard ever has.
        reads.execute_command("MGET", *keys)
        asked = [lead_id for lead_id in leads if ids[lead_id]]
        if asked:
            reads.eval(READ_IDS, len(asked), *[shard.ids(lead_id) for lead_id in asked],
                       orjson.dumps([ids[lead_id] for lead_id in asked]))
        replies = await reads.execute()
        known: dict[str, dict[str, int]] = {lead_id: {} for lead_id in leads}
        for lead_id, scores in zip(asked, replies[1] if asked else (), strict=True):
            known[lead_id] = {event_id: int(score) for event_id, score
                              in zip(ids[lead_id], scores, strict=True) if score is not None}
        return {lead_id: Stored.decode(lead_id, raw, known[lead_id])
                for lead_id, raw in zip(leads, replies[0], strict=True)}


async def _all(jobs: Iterable[Awaitable[_T]]) -> list[_T]:
    """Await several jobs; one alone is awaited directly (no task to schedule)."""
    pending = list(jobs)
    if len(pending) == 1:
        return [await pending[0]]
    return list(await asyncio.gather(*pending))

