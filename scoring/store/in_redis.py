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

With ``explain`` set (a conversion model, SPEC 12), the notifications a live commit
records carry the lead's ``p_convert`` and ``p_factors``: added by ``apply_batch`` and
the sweep inside the change, so before COMMIT serialises them into the outbox.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import orjson
from redis.exceptions import WatchError

from scoring import history
from scoring.accounts import AWARDS, awards_message
from scoring.engine import LeadState, cool, subject_of
from scoring.errors import DataLost, HandingOver, StoreError, Superseded
from scoring.events import Event
from scoring.rules import Ruleset
from scoring.store import record
from scoring.store.batch import Batch, Outcome, PartlyApplied, apply_batch, numbered
from scoring.store.commit import (
    COMMIT,
    READ_IDS,
    Mode,
    Stored,
    commit_arguments,
    fenced_generations,
)
from scoring.store.keys import PREFIX, Layout, Shard, layout_key
from scoring.store.queries import Queries, as_text
from scoring.store.ranking import groups
from scoring.views import ByProbability, Explain, explained

MAX_RETRIES = 50
AWARDS_PER_MESSAGE = 500  # member awards in one message: a few tens of KB
# Dead-lettered messages are remembered so that a retry or a replay after a crash does
# not dead-letter them again; they are replayed only until their offsets are committed
# (within a fraction of a second, or one crash later), so a day and a bound suffice.
DEAD_LETTER_MEMORY_MS = 86_400_000
DEAD_LETTER_MEMORY_SIZE = 100_000
_T = TypeVar("_T")

# Observes a Redis round trip: (operation, seconds). Metrics live outside scoring/.
Observe = Callable[[str, float], None]
# The offsets the generation's consumer group has committed, per partition: asked only
# when the generation's data is missing, to tell a first start from a Redis that lost
# it (and, then, up to where the lost data had sent notifications).
Committed = Callable[[], Awaitable[dict[int, int]]]


async def _none() -> dict[int, int]:
    return {}


def _ignore(op: str, seconds: float) -> None:
    pass


# A change of the leads of one shard: what it did, its notifications included.
Change = Callable[[dict[str, Stored]], Outcome]


class RedisStore:
    """Lead states, their histories, the lead index, the notification outbox and the
    cooling index of one generation (``generation``, default the rules' version), in one
    Redis or a Redis Cluster. Its reads are those of ``scoring.store.queries.Queries``,
    offered as its own.

    A store writes *live* (notifications into the outbox) in the shards where its
    generation is active (``active_shards``), and *rebuilding* (nothing to send) in the
    others; the commit script tells it when that changes (docs/generations.md)."""

    def __init__(self, redis: Any, rules: Ruleset, prefix: str = PREFIX,
                 history_size: int = history.SIZE, observe: Observe = _ignore, shards: int = 1,
                 committed: Committed = _none, generation: str | None = None,
                 legacy: Committed = _none, part: str = "") -> None:
        self.redis = redis  # redis.asyncio.Redis or RedisCluster
        self.rules = rules
        # (part "accounts": the generation's accounts, SPEC 11, scored by ``rules``, the
        # accounts' own)
        self.keys = Layout(prefix, shards, generation or rules.version, part)
        self.history_size = history_size
        self.observe = observe
        self.committed = committed
        self.legacy = legacy  # the offsets of the group used before generations existed
        self._opened = False
        self.active_shards: set[int] = set()
        # Partition -> offset below which this generation sends nothing: set while it
        # rebuilds after Redis lost its data (the notifications were sent before).
        self.replay_until: dict[int, int] = {}
        self.markers: list[str] = []  # per shard, the marker as written or found by open()
        self._lost_seen = False
        # A rebuild helper's store (streams.rebuilders): it only ever rebuilds, and stops
        # (Superseded) where a worker's store would turn live.
        self.rebuild_only = False
        # With accounts (SPEC 11): the partition of the account topic an account's messages
        # go to (the producer's own partitioner, set by streams.delivery), so that a
        # commit's member awards travel as one message per partition.
        self.award_route: Callable[[str], int] | None = None
        # Annotates the notifications of live commits with the lead's conversion
        # probability (SPEC 12); None: none (and no work for it at all).
        self.explain: Explain | None = None
        reads = Queries(redis, rules, self.keys)
        self.load, self.exists, self.history = reads.load, reads.exists, reads.history
        self.top, self.bands = reads.top, reads.bands
        self.pending, self.outbox_size = reads.pending, reads.outbox_size

    @property
    def generation(self) -> str:
        return self.keys.generation

    @property
    def active(self) -> bool:
        """Whether this store's generation is active in every shard (scores live)."""
        return len(self.active_shards) == len(self.keys.shards)

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
        """Make the generation's keyspace ready for writing, once; every write calls it
        first (docs/generations.md, "Starting a worker").

        On first use it records the shard count and a marker per shard, which every
        COMMIT checks, and the generation in the registry. The first generation of a
        deployment becomes active at once; any other starts rebuilding. Markers gone in
        some shards but not others, or in all of them while the consumer group has
        committed offsets, or a commit that found its marker gone or another (``lost``:
        another worker may have written new ones since), mean Redis lost the
        generation's data (restarted without persistence, flushed, a cluster master
        replaced empty): the generation is then rebuilt from the topic, sending nothing
        for the events its group had already consumed (``replay_until``), so that no
        notification is sent twice or lost and every id is re-derived as it was."""
        if self._opened:
            return
        await self.check_layout()
        keys, n = self.keys, len(self.keys.shards)
        reads: Any = self.redis.pipeline(transaction=False)
        for shard in keys.shards:
            reads.exists(shard.marker)
        reads.exists(keys.active)
        *markers, generations = await reads.execute()
        if self._lost_seen or not all(markers):
            committed = await self.committed()
            if not committed and not generations:
                # The first generation of a deployment that ran before generations
                # existed: its notifications went out up to the old group's offsets.
                committed = await self.legacy()
            if committed:  # (none: a new generation, rebuilt from the earliest offset)
                pipe: Any = self.redis.pipeline(transaction=False)
                for partition, offset in committed.items():  # (another worker's first)
                    pipe.hsetnx(keys.replay_until, str(partition), offset)
                await pipe.execute()
        self._lost_seen = False
        await self.read_replay()
        # One generation is active: the first to claim the deployment-wide key, also when
        # two rules versions start at once; a shard whose key is gone gets it again.
        mine = keys.generation
        if not self.rebuild_only:  # (a helper's generation is not ready to be the one)
            await self.redis.set(keys.active, mine, nx=True)
        active = as_text(await self.redis.get(keys.active) or b"")
        if not active:
            raise HandingOver("no generation is active yet (Redis lost its data?): a "
                              "rebuild helper waits for a worker to claim it")
        writes: Any = self.redis.pipeline(transaction=False)
        writes.set(keys.layout_key, orjson.dumps({"shards": n}), nx=True)
        token = uuid.uuid4().hex  # (a marker written after a loss is another)
        for shard in keys.shards:
            writes.set(shard.marker, token, nx=True)
            writes.set(shard.active, active, nx=True)
        seconds, micros = await self.redis.time()  # (Redis's clock: the store has none)
        writes.hsetnx(keys.generations, mine, orjson.dumps(
            {"rules": self.rules.text.decode(errors="replace"), "name": self.rules.name,
             "created_at": seconds * 1000 + micros // 1000}))
        await writes.execute()
        found = await _all(self.redis.get(shard.marker) for shard in keys.shards)
        self.markers = [as_text(value or b"") for value in found]
        await self.check_layout()  # another process may have recorded another count first
        await self.refresh_active()
        if self.rebuild_only and self.active_shards:
            raise Superseded(self._rebuilt())
        self._opened = True

    def sibling(self, generation: str) -> RedisStore:
        """The store of another generation of the same deployment, for erasure (its
        rules are this store's: what erasure needs of them is the same)."""
        return RedisStore(self.redis, self.rules, self.keys.prefix, self.history_size,
                          self.observe, len(self.keys.shards), generation=generation,
                          part=self.keys.part)

    @property
    def opened(self) -> bool:
        return self._opened

    def reopen(self) -> None:
        """A commit found the data lost: look at the keyspace afresh, as lost, at the next
        write (another worker may have written the markers again meanwhile)."""
        self._opened = False
        self._lost_seen = True

    async def active_values(self) -> list[str]:
        """What each shard's active key says: a generation, a cutover's fence, or ""."""
        values = await _all(self.redis.get(shard.active) for shard in self.keys.shards)
        return [as_text(value or b"") for value in values]

    async def refresh_active(self) -> None:
        """Read which shards this generation is active in: its own, and those a cutover
        from it fences (its commits there wait for the fence, COMMIT's -2)."""
        mine = self.generation
        self.active_shards = {
            shard.number for shard, value in zip(self.keys.shards, await self.active_values(),
                                                 strict=True)
            if value == mine or (fenced_generations(value) or ("",))[0] == mine}

    async def progress(self, generation: str | None = None) -> list[dict[int, int]]:
        """Per shard, partition -> next offset applied, of this or another generation."""
        keys = self.keys if generation is None else self.keys.of_generation(generation)
        found = await _all(self.redis.hgetall(shard.progress) for shard in keys.shards)
        return [{int(p): int(o) for p, o in one.items()} for one in found]

    async def read_replay(self) -> None:
        """Read ``replay_until``: what is left of a rebuild after a loss, every worker's
        partitions (each forgets its own as it passes them)."""
        found = await self.redis.hgetall(self.keys.replay_until)
        self.replay_until = {int(p): int(o) for p, o in found.items()}

    async def replayed_to(self, positions: dict[int, int]) -> None:
        """The rebuild after a loss has reached these next offsets (of this worker's
        partitions): forget the partitions it is done with."""
        done = [p for p, o in self.replay_until.items() if positions.get(p, -1) >= o]
        if done:
            await self.redis.hdel(self.keys.replay_until, *map(str, done))
            await self.read_replay()

    def _rebuilt(self) -> str:
        return (f"generation {self.generation} is active: this rebuild helper's work is "
                "done (the workers score live)")

    def _lost(self, what: str) -> str:
        return (f"Redis lost Leadscore's data under the prefix {self.keys.prefix!r} ({what}): "
                "scoring on would start every lead from nothing and reuse notification ids")

    async def apply(self, events: Sequence[Event], now_ms: int,
                    positions: Sequence[tuple[int, int] | None] | None = None,
                    silent: bool = False) -> Outcome:
        """Apply a batch of events (in order per lead). The outcome's ``entries`` are the
        outbox entries recorded: the notifications as JSON, stamped ``emitted_at`` =
        ``now_ms``, byte for byte what is to be sent and then passed to ``delivered``.
        There are none in a shard where the generation is rebuilding, nor with
        ``silent`` (a rebuild after a loss, below ``replay_until``).

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

        explain = self.explain

        def change(part: Batch, number: int) -> Change:
            # (afresh on each try: a retried transaction starts over, maybe live now)
            if explain is None:
                return lambda leads: apply_batch(leads, part, rules, keep_history,
                                                 track_fed=True)
            return lambda leads: apply_batch(
                leads, part, rules, keep_history, track_fed=True,
                explain=explain if number in self.active_shards and not silent else None)

        jobs = [self._transact(shard, ids, change(part, shard.number), now_ms, _progress(part),
                               silent)
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
        rules, explain = self.rules, self.explain

        def change(leads: dict[str, Stored]) -> Outcome:
            outcome = Outcome()
            for stored in leads.values():
                notes = cool(stored.state, now_ms, rules)
                if notes:
                    if explain is not None:  # (cooling changes no feature)
                        for note in notes:
                            explained(note, stored.state, explain)
                    outcome.notifications += notes
                    stored.history += map(history.cooling, notes)
            return outcome

        async def sweep_shard(shard: Shard) -> list[bytes]:
            if shard.number not in self.active_shards or self.replay_until:
                return []  # (a rebuild is replayed in event time: no wall-clock cooling)
            due = await self.redis.zrangebyscore(shard.cooling, "-inf", now_ms, 0, limit)
            if not due:
                return []
            outcome = await self._transact(shard, {as_text(d): [] for d in due}, change, now_ms)
            return outcome.entries

        return [entry for entries in await _all(map(sweep_shard, self.keys.shards))
                for entry in entries]

    async def top_by_probability(self, now_ms: int, limit: int, explain: Explain,
                                 keep: Callable[[dict[str, Any]], bool] | None = None,
                                 within: str | None = None) -> list[dict[str, Any]]:
        """The ``limit`` leads with the highest ``p_convert`` at ``now_ms`` that ``keep``
        accepts (``/leads?order=p_convert``), among all leads or, ``within`` a score
        group, those its rules have awarded; ranked and shown as ``views.ByProbability``
        says.

        A scan of every lead's state, not an index read: the probability is monotone in
        no key the lead index keeps, so the exact answer must read every lead (SCAN and
        one MGET per shard per page: about a round trip per thousand leads, and the
        decoding of each). Each state is as read at its own moment, as for ``top``."""
        scored = self.rules.group(within) if within is not None else None
        best_now = ByProbability(self.rules, now_ms, limit, explain, keep, scored)
        async for state in self.states():
            best_now.offer(state)
        return best_now.best()

    async def states(self, page: int = 1000) -> AsyncIterator[LeadState]:
        """Every lead's state of this generation (without its ids), a page of ``page``
        keys at a time: a SCAN of the generation's state keys (a key the SCAN returns
        twice is yielded twice)."""
        root = self.keys.root
        pattern = _glob_escaped(root) + ":{*}:state:*"
        start = len(root) + 2  # past "<root>:{"
        found: dict[int, list[str]] = {}  # shard number -> state keys
        count = 0
        async for key in self.redis.scan_iter(match=pattern, count=page):
            text = as_text(key)
            tag, sep, _ = text[start:].partition("}:state:")
            if not sep or not tag.isdigit() or int(tag) >= len(self.keys.shards):
                continue
            found.setdefault(int(tag), []).append(text)
            count += 1
            if count >= page:
                for state in await self._states(found):
                    yield state
                found, count = {}, 0
        for state in await self._states(found):
            yield state

    async def _states(self, keys: dict[int, list[str]]) -> list[LeadState]:
        """The states at these keys (by shard), those still there."""
        if not keys:
            return []
        reads: Any = self.redis.pipeline(transaction=False)
        for some in keys.values():  # (one MGET per shard: its keys share a slot)
            reads.execute_command("MGET", *some)
        return [record.decode(raw, {}).state for raws in await reads.execute()
                for raw in raws if raw is not None]

    async def forget(self, lead_id: str) -> bool:
        """Erase every key of a lead (GDPR): state, ids, history, its place in the lead
        index and the cooling index, and its notifications not yet sent. Returns whether
        the lead was known."""
        shard = self.keys.of(lead_id)
        key = shard.state(lead_id)

        async def erase(pipe: Any) -> bool:
            raw = await self.redis.get(key)
            pending, kept = _without(
                await self.redis.zrange(shard.outbox, 0, -1, withscores=True), lead_id)
            pipe.multi()
            pipe.delete(key, shard.ids(lead_id), shard.history(lead_id))
            pipe.zrem(shard.cooling, lead_id)
            if pending:
                pipe.zrem(shard.outbox, *pending)
            if kept:  # (others' awards that travelled with the lead's)
                pipe.zadd(shard.outbox, kept)
            if raw is not None:
                state = record.decode(raw, {}).state
                for group in groups(state.stage, state.hot):
                    pipe.zrem(shard.rank(group, float(state.fit)), lead_id)
                for scored in self.rules.groups:  # (SPEC 10)
                    pipe.zrem(shard.group_rank(scored.id), lead_id)
                    pipe.zrem(shard.group_rank(scored.id, hot=True), lead_id)
            await pipe.execute()
            return raw is not None

        # The state and the outbox watched: the lead changed meanwhile, forget what it is now.
        return await self._watching([key, shard.outbox], erase,
                                    f"could not forget {lead_id!r}: it kept changing")

    async def _watching(self, keys: list[str], body: Callable[[Any], Awaitable[_T]],
                        failure: str) -> _T:
        """``body(pipe)`` as a Redis optimistic transaction: WATCH ``keys``, then the body
        reads them (on another connection: safe, since any change after the WATCH makes
        EXEC fail), queues its writes after ``pipe.multi()`` and executes; all of it
        again while another writer changes one of them (``StoreError(failure)`` after
        MAX_RETRIES)."""
        for _ in range(MAX_RETRIES):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*keys)
                    return await body(pipe)
                except WatchError:
                    continue
        raise StoreError(failure)

    async def account_topic_progress(self, produced: dict[int, int] | None = None,
                                     consumed: dict[int, int] | None = None) -> None:
        """An account store's record of the account topic (SPEC 11), per partition: the
        next offset after the last message its generation's lead side has sent there
        (``produced``), and after the last one its account side has applied or passed
        (``consumed``); each only ever grows. The cutover waits until they meet
        (``accounts_caught_up``)."""
        for key, found in ((self.keys.produced, produced), (self.keys.consumed, consumed)):
            if found:
                await self.redis.eval(_SET_MAX, 1, key,
                                      *[part for p, o in found.items() for part in (p, o)])

    async def accounts_caught_up(self) -> bool:
        """Whether the account side has applied everything its generation's lead side has
        sent to the account topic so far."""
        produced, consumed = await _all([self.redis.hgetall(self.keys.produced),
                                         self.redis.hgetall(self.keys.consumed)])
        done = {int(p): int(o) for p, o in consumed.items()}
        return all(done.get(int(p), -1) >= int(o) for p, o in produced.items())

    async def forget_member(self, lead_id: str) -> int:
        """An account store's part of erasing a lead (SPEC 11): remove the lead from the
        member list of every account it contributed to. The accounts' scores keep the
        points it brought (they are the company's, no longer attributed to anyone).
        A SCAN of the accounts' states: erasure is rare, accounts are few beside leads.
        Returns how many accounts named it."""
        changed = 0
        async for state in self.states():
            if lead_id in state.members or lead_id in state.awards_seen:
                changed += await self._drop_member(state.lead_id, lead_id)
        return changed

    async def _drop_member(self, account_id: str, lead_id: str) -> int:
        key = self.keys.of(account_id).state(account_id)

        async def drop(pipe: Any) -> int:
            raw = await self.redis.get(key)
            if raw is None:
                return 0
            found = record.decode(raw, {})
            state = found.state
            # (its award numbers too: a lead that comes back numbers from 1 again)
            numbered = state.awards_seen.pop(lead_id, None) is not None
            if state.members.pop(lead_id, None) is None and not numbered:
                return 0
            pipe.multi()
            pipe.set(key, record.encode(state, found.offsets, found.updated_at,
                                        found.version + 1))
            await pipe.execute()
            return 1

        return await self._watching([key], drop, f"could not forget {lead_id!r} in account "
                                                 f"{account_id!r}: it kept changing")

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
                        lead_ids: Iterable[str] | None = None, publish: bool = True) -> None:
        """Forget outbox entries that the broker has acknowledged, and publish them on
        the notifications channel for live dashboards (of any worker), unless they were
        published already. ``lead_ids``: the lead of each entry when the caller has it,
        else it is read from the entry."""
        entries = list(entries)
        leads = [_owner(orjson.loads(entry)) for entry in entries] if lead_ids is None \
            else lead_ids
        by_shard: dict[Shard, list[bytes]] = {}
        for entry, lead_id in zip(entries, leads, strict=True):
            by_shard.setdefault(self.keys.of(lead_id), []).append(entry)
        if by_shard:
            pipe: Any = self.redis.pipeline(transaction=False)
            for shard, some in by_shard.items():
                pipe.zrem(shard.outbox, *some)
                for entry in some if publish else ():  # (cluster pipelines refuse
                    pipe.execute_command("PUBLISH", self.keys.channel, entry)  # .publish)
            await pipe.execute()

    async def _transact(self, shard: Shard, ids: dict[str, list[str]], change: Change,
                        now_ms: int, progress: dict[int, int] | None = None,
                        silent: bool = False,
                        flip: tuple[str, str, dict[int, int]] | None = None,
                        fence: str | None = None) -> Outcome:
        """Read the leads of one shard (and the given event ids of each), apply
        ``change``, write back with COMMIT; all or nothing, retried while another writer
        (a second worker during a rebalance, the sweep, an erasure) changes one of these
        leads in between. Every write of a lead writes its state record with a new
        version, so the versions guard the id sets, histories and rankings too.
        ``progress``: the source offsets this commit completes; ``flip``, ``fence``: a
        cutover's commits (see Mode)."""
        await self.open()
        leads = list(ids)
        keys = [shard.state(lead_id) for lead_id in leads]
        for _ in range(MAX_RETRIES):
            started = time.perf_counter()
            stored = await self._read(shard, leads, keys, ids)
            self.observe("read", time.perf_counter() - started)
            outcome = change(stored)
            live = shard.number in self.active_shards
            if not (live or flip) or silent:
                outcome.notifications = []  # rebuilding: nothing to send
            mode = Mode(self.generation, live, self.markers[shard.number], progress or {},
                        flip, fence)
            # Member awards (SPEC 11) go out whatever the mode: the generation's own
            # account side needs them, rebuilding or not.
            outcome.award_entries = self._award_messages(outcome.forwards)
            outcome.entries, commit = commit_arguments(
                shard, stored, outcome.notifications, now_ms, self.rules, self.history_size,
                mode, outcome.award_entries)
            started = time.perf_counter()
            stale = await self.redis.eval(COMMIT, *commit)
            self.observe("write", time.perf_counter() - started)
            if not stale:
                if flip:
                    self.active_shards.add(shard.number)
                return outcome
            if stale == -1:
                raise DataLost(self._lost(f"shard {shard.number}'s marker is gone or new"))
            if stale == -2:
                raise HandingOver(f"shard {shard.number} is fenced for a cutover to another "
                                  "generation; retrying")
            if stale == -3:
                self.active_shards.discard(shard.number)
                raise Superseded(await self.superseded())
            if stale == -4:  # became active: commit again, live
                if self.rebuild_only:
                    raise Superseded(self._rebuilt())
                self.active_shards.add(shard.number)
                continue
            if stale == -5:
                raise HandingOver(f"the cutover of shard {shard.number} found it changed")
        raise StoreError(f"gave up after {MAX_RETRIES} conflicting writes to the same "
                             "leads; is another process writing with this key prefix?")

    def _award_messages(self, forwards: list[tuple[int, Event]]) -> list[bytes]:
        """A commit's member awards as messages for the account topic: one per partition
        they are bound for (``award_route``: account id -> partition, set by the edge
        that knows the topic; without it, one per account), at most AWARDS_PER_MESSAGE
        each."""
        if not forwards:
            return []
        route = self.award_route
        bound: dict[int | str, list[Event]] = {}
        for _, award in forwards:
            bound.setdefault(route(award.lead_id) if route else award.lead_id,
                             []).append(award)
        return [awards_message(awards[i:i + AWARDS_PER_MESSAGE], self.generation,
                               where if isinstance(where, int) else None)
                for where, awards in bound.items()
                for i in range(0, len(awards), AWARDS_PER_MESSAGE)]

    async def superseded(self) -> str:
        """Why this generation no longer scores, for the log and /readyz."""
        others = [value for value in await self.active_values()
                  if value not in ("", self.generation) and not value.startswith("fence:")]
        active = others[0] if others else as_text(await self.redis.get(self.keys.active) or b"?")
        return (f"generation {self.generation} (rules {self.rules.name!r}) is no longer "
                f"active: generation {active} is, so this worker stopped "
                "scoring; it sends nothing. Stop it, or restart it with the active rules "
                "file (docs/generations.md)")

    async def _read(self, shard: Shard, leads: list[str], keys: list[str],
                    ids: dict[str, list[str]]) -> dict[str, Stored]:
        if not leads:
            return {}
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


# HSET field value ... where value is greater than the field's: the highest offsets seen.
_SET_MAX = """
for i = 1, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) > (tonumber(redis.call('HGET', KEYS[1], ARGV[i])) or -1) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""


def _owner(entry: dict[str, Any]) -> str:
    """Whose shard holds an outbox entry: a notification's lead or account, a message of
    member awards' first lead (all of them are of its shard)."""
    if entry["type"] == AWARDS:
        return str(entry["o"])
    return subject_of(entry)


def _without(outbox: list[tuple[bytes, float]], lead_id: str
             ) -> tuple[list[bytes], dict[bytes, float]]:
    """The outbox entries to remove for an erased lead (its notifications, and every
    message holding its member awards), and those messages again without its awards."""
    remove: list[bytes] = []
    kept: dict[bytes, float] = {}
    for entry, score in outbox:
        doc = orjson.loads(entry)
        if doc["type"] != AWARDS:
            if subject_of(doc) == lead_id:
                remove.append(entry)
            continue
        others = [a for a in doc["awards"] if a[3]["lead"] != lead_id]
        if len(others) < len(doc["awards"]):
            remove.append(entry)
            if others:
                doc["awards"], doc["o"] = others, others[0][3]["lead"]
                kept[orjson.dumps(doc)] = score
    return remove, kept


def _glob_escaped(text: str) -> str:
    """``text`` matched literally in a SCAN pattern (a key prefix may hold ``*``, ``?``,
    ``[``)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def _progress(part: Batch) -> dict[int, int]:
    """Partition -> the offset after the last of the part's events from it."""
    out: dict[int, int] = {}
    for _, _, position in part:
        if position is not None and position[0] >= 0:  # (< 0: scoring.accounts.position)
            out[position[0]] = position[1] + 1  # (in order per partition: the last wins)
    return out


async def _all(jobs: Iterable[Awaitable[_T]]) -> list[_T]:
    """Await several jobs; one alone is awaited directly (no task to schedule)."""
    pending = list(jobs)
    if len(pending) == 1:
        return [await pending[0]]
    return list(await asyncio.gather(*pending))

