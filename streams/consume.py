"""The consume loop: events topic -> Redis (atomically) -> notifications topic.

The events topic is read with aiokafka's group consumer in batches rather than
through a Faust agent (docs/performance.md, "Why the worker is not a Faust agent"),
so that offsets are committed only after a batch's state and outbox are in Redis.
Faust runs this loop as an app task and keeps the web server, the timers and the
process lifecycle.

Per batch:  getmany -> parse -> RedisStore.apply (state + outbox in one
transaction) -> bad messages to the DLQ, acknowledged -> hand notifications to
the producer -> commit offsets (at most every COMMIT_SECONDS) -> next batch; the
broker's acks of the notifications are awaited beside the next batch
(``Delivery.deliver_behind``). A crash anywhere replays the uncommitted tail, which
the store recognises by offset.

A generation that is not active (docs/generations.md) runs the same loop in larger
batches, sending nothing: no notification, no dead letter (the active generation
sends those), until a cutover makes it active; one that another generation replaced
(``Superseded``) stops scoring. A generation rebuilding after Redis lost its data
sends nothing for the events below ``store.replay_until`` (their notifications went
out before the loss), then goes on live.

With accounts (SPEC 11) a worker runs two of these loops: the leads' over the events
topic, which forwards account events and records each lead event's member award in
the outbox, both for the account topic (``Delivery``); and the accounts' (``accounts``),
over the account topic in its own consumer group, into the generation's account store,
applying only its own generation's messages. The account store recognises a replay by
offset (an account's messages all come from one partition, keyed by account id) and a
re-sent award or account event by its id, so each counts once.

A batch that fails is retried whole only for an outage (Redis or the broker out of
reach, which is waited out). Any other failure is a message's own: the batch is
split in halves, and halves again, each committed on its own in order, until the
message that fails alone is found and dead-lettered (``apply_failed``), so that a
poison message costs about 2 log2(batch) commits, never a stuck partition. A
partition that still cannot progress for ``stall_seconds`` makes /readyz fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from scoring.accounts import NO_ACCOUNTS, from_message, position
from scoring.errors import DataLost, EventError, HandingOver, Superseded
from scoring.events import Event, parse_event
from scoring.store import Outcome, PartlyApplied, RedisStore
from streams import metrics
from streams.delivery import Delivery
from streams.health import Health
from streams.runtime import bootstrap_servers, now_ms
from streams.settings import Settings

__all__ = ["EventsConsumer", "is_outage"]

log = logging.getLogger("leadscore")
RETRY_SECONDS = 1.0
COMMIT_SECONDS = 0.2

Batch = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
Dead = list[tuple[ConsumerRecord[Any, Any], EventError]]  # messages to dead-letter, and why

_OUTAGES = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ClusterDownError,
            MasterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError, KafkaError,
            OSError, TimeoutError, HandingOver)
# Error replies by which a healthy-looking Redis says it cannot take writes for now.
_REDIS_OUTAGE_REPLIES = ("OOM", "LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN",
                         "TRYAGAIN", "NOREPLICAS", "BUSY", "MISCONF")


def is_outage(exc: BaseException) -> bool:
    """Whether a failure is Redis's or the broker's (wait and retry the batch) rather
    than one message's (find it and dead-letter it)."""
    if isinstance(exc, _OUTAGES):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_REDIS_OUTAGE_REPLIES)


class EventsConsumer:
    """Reads the events topic into the store, batch by batch; one per worker process, and
    (``accounts``) one more that reads the account topic into the account store."""

    def __init__(self, settings: Settings, store: RedisStore, delivery: Delivery,
                 health: Health, accounts: bool = False) -> None:
        self.settings = settings
        self.store = store
        self.delivery = delivery
        self.health = health
        self.accounts = accounts
        self.topic = settings.topic_account_awards if accounts else settings.topic_events
        self.group = (settings.account_group if accounts else settings.generation_group)(
            store.generation)
        # The leads' loop with an accounts: section forwards account events; without one
        # it dead-letters them.
        self.rolls_up = not accounts and store.rules.accounts is not None
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned: set[TopicPartition] = set()
        self.positions: dict[TopicPartition, int] = {}  # next offset to apply, per partition
        self._batch_lock = asyncio.Lock()  # a rebalance waits for the batch in flight
        self._uncommitted: dict[TopicPartition, int] = {}
        self._committed_at = 0.0
        # Refused by shards that committed in a batch that failed elsewhere (an outage):
        # their events are replays on the retry, so they are dead-lettered from here.
        self._owed: Dead = []
        self.rewind: set[TopicPartition] = set()  # assigned during a rebuild after a loss

    def problems(self) -> list[str]:
        """Why this worker is not ready to score, beyond Redis answering (/readyz)."""
        problems = self.health.problems()
        if self.health.lost is None and (self.consumer is None or not self.assigned):
            problems.append("no partitions assigned yet")
        return problems

    def lags(self) -> list[tuple[str, int, int]]:
        """(topic, partition, messages not yet applied) for each assigned partition this
        worker has read from (the high watermark comes with each fetch)."""
        consumer = self.consumer
        if consumer is None:
            return []
        out = []
        for tp in sorted(self.assigned):
            highwater, position = consumer.highwater(tp), self.positions.get(tp)
            if highwater is not None and position is not None:
                out.append((tp.topic, tp.partition, max(highwater - position, 0)))
        return out

    async def start(self) -> None:
        self.positions.clear()  # (a restart after a loss reads the partitions again)
        await self.delivery.start()
        await self.store.open()  # DataLost stops here: see run()
        if not self.store.rebuild_only:  # (a rebuild helper sends nothing: its worker does)
            await self.delivery.resend_pending()
        settings = self.settings
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers(settings.broker),
            group_id=self.group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(settings.broker_session_timeout * 1000),
            heartbeat_interval_ms=int(settings.broker_heartbeat_interval * 1000),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # A fetch returns as soon as data is there, but a broker may hold an empty
            # one this long; short waits keep the hot path to milliseconds at the cost
            # of a few idle fetches per second.
            fetch_max_wait_ms=10, **settings.kafka_options())
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self.consumer.start()

    async def stop(self) -> None:
        await self.delivery.drain()
        if self.consumer is not None:
            with contextlib.suppress(Exception):  # best effort: a replay is harmless
                await self.commit()
            await self.consumer.stop()
        await self.delivery.stop()

    async def run(self) -> None:
        """Consume until cancelled; an outage of Redis or the broker is waited out, a
        Redis that lost the generation's data is rebuilt from (``RedisStore.open``)."""
        while True:
            try:
                await self._run()
                return
            except DataLost as exc:  # emptied under us: open() again starts the rebuild
                log.error("leadscore: %s; rebuilding from the events topic", exc)
                self.store.reopen()

    async def _run(self) -> None:
        while True:
            try:
                await self.start()
                break
            except Superseded as exc:
                self.health.stop_scoring(exc)
                await self.stop()
                return
            except Exception as exc:  # unreachable broker or Redis at start: retry
                log.error("leadscore: cannot start (%s); retrying in %ss", exc, RETRY_SECONDS)
                await self.stop()
                await asyncio.sleep(RETRY_SECONDS)  # back-off before reconnecting
        # What start-up built (modules, the Faust app) lives as long as the process: out
        # of the collector's sight, full collections no longer pause the event loop
        # (docs/performance.md, "What changed, each measured on its own").
        gc.freeze()
        try:
            assert self.consumer is not None
            settings = self.settings
            while True:
                size = settings.batch_size if self.store.active and not self.accounts \
                    else settings.rebuild_batch_size
                if self.rewind:
                    await self._rewind()
                batch = await self.consumer.getmany(timeout_ms=200, max_records=size)
                if batch and self.accounts and settings.account_batch_wait:
                    batch = await self._gathered(batch, size)
                if self.rewind:  # assigned during that fetch: read from the start instead
                    batch = {tp: r for tp, r in batch.items() if tp not in self.rewind}
                    await self._rewind()
                if batch:
                    async with self._batch_lock:
                        await self._handle_or_rewind(batch)
        except DataLost:
            raise
        except Superseded as exc:
            self.health.stop_scoring(exc)
        except Exception as exc:  # a bug, not an outage: say so in /readyz, not only the log
            self.health.stop_scoring(exc)
            raise
        finally:
            await self.stop()

    async def _rewind(self) -> None:
        """Rebuilding after a loss: a partition whose group offset has not gone back
        below the lost data's starts over from the earliest offset (the replay of one
        that has goes on from there; a second replay would only be slower)."""
        assert self.consumer is not None
        until, partitions, self.rewind = self.store.replay_until, self.rewind, set()
        for tp in partitions & self.consumer.assignment():
            committed = await self.consumer.committed(tp)
            if tp.partition in until and (committed is None or committed >= until[tp.partition]):
                await self.consumer.seek_to_beginning(tp)
                self.positions.pop(tp, None)

    async def _gathered(self, batch: Batch, size: int) -> Batch:
        """The account side's batch, gathered for up to ``account_batch_wait`` seconds from
        its first message. The lead side sends member awards as many small messages (one
        per commit, shard and account partition), and an account's step costs mostly per
        account touched (its record decoded and encoded, its rankings, its part of the
        commit), so a batch of many awards shares that among each account's awards
        (docs/performance.md, "Accounts"). The lead side runs meanwhile: this only waits."""
        assert self.consumer is not None
        deadline = time.monotonic() + self.settings.account_batch_wait
        count = sum(map(len, batch.values()))
        while count < size and (left := deadline - time.monotonic()) > 0:
            more = await self.consumer.getmany(timeout_ms=max(1, int(left * 1000)),
                                               max_records=size - count)
            for tp, records in more.items():  # (a partition's records stay in order)
                batch[tp] = batch.get(tp, []) + records
                count += len(records)
        # A rebalance may have moved a partition meanwhile (only the apply holds the batch
        # lock): its new owner reads it from the committed offset, so leave it to them.
        mine = self.consumer.assignment()
        return {tp: records for tp, records in batch.items() if tp in mine}

    async def _handle_or_rewind(self, batch: Batch) -> None:
        """A batch that fails (Redis down, broker down) is read again, never skipped."""
        try:
            await self.handle(batch)
            self.health.progressed(batch)
        except (asyncio.CancelledError, DataLost, Superseded):
            raise
        except Exception as exc:
            log.error("leadscore: batch of %d failed (%s: %s); retrying in %ss",
                      sum(map(len, batch.values())), type(exc).__name__, exc, RETRY_SECONDS)
            self.health.failed(batch, exc)
            assert self.consumer is not None
            for tp, records in batch.items():
                if tp in self.consumer.assignment():
                    self.consumer.seek(tp, records[0].offset)
            await asyncio.sleep(RETRY_SECONDS)  # back-off before the retry

    async def handle(self, batch: Batch) -> None:
        started = time.perf_counter()
        now = now_ms()
        latest = now + int(self.settings.max_clock_skew * 1000)
        events: list[Event] = []
        positions: list[tuple[int, int] | None] = []
        sources: list[ConsumerRecord[Any, Any]] = []
        dead: Dead = []
        forwards: list[tuple[Event, tuple[int, int]]] = []  # account events, and where from
        max_bytes = self.settings.max_event_bytes
        accounts, rolls_up, generation = self.accounts, self.rolls_up, self.store.generation
        for records in batch.values():
            for record in records:
                try:
                    if record.value is None:
                        raise EventError("message has no value", "no_value")
                    if accounts:
                        sender, found = from_message(record.value)
                        if sender != generation:
                            continue  # another generation's, for its own account side
                        for event, source in found:
                            events.append(event)
                            positions.append(position(source))
                            sources.append(record)
                        continue
                    else:
                        event = parse_event(record.value, max_bytes, latest_ms=latest)
                        if event.account:
                            if not rolls_up:
                                raise EventError(NO_ACCOUNTS, "no_accounts")
                            forwards.append((event, (record.partition, record.offset)))
                            continue
                        positions.append((record.partition, record.offset))
                    events.append(event)
                    sources.append(record)
                except EventError as exc:
                    dead.append((record, exc))
        count = sum(len(records) for records in batch.values())
        if accounts:
            metrics.ACCOUNT_CONSUMED.inc(count)
        else:
            metrics.EVENTS_CONSUMED.inc(count)
            metrics.BATCH_SIZE.observe(count)
        live = self.store.active
        if events:
            owed = len(self._owed)  # (what a failed try of this batch committed is owed too)
            if self.store.replay_until:
                outcome = await self._replay_then_live(events, positions, sources, now)
            else:
                outcome = await self._apply_isolated(events, positions, sources, now)
            # Each event was applied, a duplicate, refused or a replay; the halves of an
            # isolated failure see what an earlier half committed as replays, so count the
            # replays as what is left.
            outcome.replayed = (len(events) - outcome.applied - outcome.duplicates
                                - (len(self._owed) - owed))
            if accounts:
                metrics.ACCOUNT_APPLIED.inc(outcome.applied)
            else:
                metrics.APPLY_LATENCY.observe(time.perf_counter() - started)
                metrics.BATCHES.inc()
                metrics.EVENTS_APPLIED.inc(outcome.applied)
                if outcome.duplicates:
                    metrics.EVENTS_DUPLICATE.inc(outcome.duplicates)
                if outcome.replayed:
                    metrics.EVENTS_REPLAYED.inc(outcome.replayed)
                for rule_id, (times, points) in outcome.awards.items():
                    metrics.RULE_AWARDS.labels(rule_id).inc(times)
                    metrics.RULE_POINTS.labels(rule_id).inc(points)
            if outcome.entries:
                await self.delivery.deliver_behind(outcome.entries, outcome.notifications)
            if outcome.award_entries:  # (a few per batch: one per partition and shard)
                await self.delivery.deliver_behind(
                    outcome.award_entries, [orjson.loads(e) for e in outcome.award_entries])
        if forwards:
            await self.delivery.forward(forwards)
        if self._owed:
            dead += self._owed
        if not live:  # the active generation dead-letters them
            dead, self._owed = [], []
            if not accounts:
                metrics.REBUILD_EVENTS.inc(count)
        elif self.store.replay_until:  # dead-lettered before the loss
            until = self.store.replay_until
            dead = [(r, e) for r, e in dead if r.offset >= until.get(r.partition, -1)]
        if dead:
            assert self.delivery.dead_letters is not None
            await self.delivery.dead_letters.send(dead, now)
            self._owed.clear()
        # Offsets of applied batches are committed at most every COMMIT_SECONDS: a commit
        # is a broker round trip, and a replay of uncommitted batches is harmless (the
        # store skips offsets it has applied), so waiting for one per batch only adds
        # latency.
        applied = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        self._uncommitted.update(applied)
        self.positions.update(applied)
        if self.store.replay_until:
            await self.store.replayed_to({tp.partition: o for tp, o in self.positions.items()})
        if accounts:  # (for the cutover: the account side has applied this far)
            await self.store.account_topic_progress(
                consumed={tp.partition: o for tp, o in applied.items()})
        if time.monotonic() - self._committed_at >= COMMIT_SECONDS:
            await self.commit()

    async def commit(self) -> None:
        """Commit the offsets of every batch applied so far."""
        if self._uncommitted and self.consumer is not None:
            offsets, self._uncommitted = self._uncommitted, {}
            await self.consumer.commit(
                {tp: o for tp, o in offsets.items() if tp in self.consumer.assignment()})
        self._committed_at = time.monotonic()

    async def _replay_then_live(self, events: list[Event], positions: list[tuple[int, int] | None],
                                sources: list[ConsumerRecord[Any, Any]], now: int) -> Outcome:
        """After a loss: the events below ``replay_until`` applied silently, then the
        others (a lead's events are in one partition, in order: the split keeps it)."""
        until = self.store.replay_until
        quiet = [i for i, at in enumerate(positions)  # (None: a member award, numbered)
                 if at is not None and at[1] < until.get(at[0], -1)]
        if not quiet:
            return await self._apply_isolated(events, positions, sources, now)
        loud = sorted(set(range(len(events))) - set(quiet))
        outcome = await self._apply_isolated([events[i] for i in quiet],
                                             [positions[i] for i in quiet],
                                             [sources[i] for i in quiet], now, silent=True)
        if loud:
            outcome.add(await self._apply_isolated(
                [events[i] for i in loud], [positions[i] for i in loud],
                [sources[i] for i in loud], now))
        return outcome

    async def _apply_isolated(self, events: list[Event], positions: list[tuple[int, int] | None],
                              sources: list[ConsumerRecord[Any, Any]], now: int,
                              silent: bool = False) -> Outcome:
        """``store.apply``, with a failure that is not an outage narrowed down to the
        message that causes it: halves are applied (and committed) in order, so each
        lead's events keep their order, and a message that fails alone is dead-lettered
        as ``apply_failed``. What a commit refused is owed a dead letter from the moment
        it is committed (``_owe``): a retry sees those events as replays."""
        try:
            outcome = await self.store.apply(events, now, positions, silent)
        except (asyncio.CancelledError, DataLost, Superseded):
            raise
        except Exception as exc:
            committed, cause = Outcome(), exc
            if isinstance(exc, PartlyApplied):  # the committed shards' events are replays now
                committed = exc.outcome
                cause = exc.cause  # type: ignore[assignment]  # an Exception in practice
            self._owe(committed, sources)
            if isinstance(cause, Superseded) and (committed.entries
                                                  or committed.award_entries):
                # Committed while the generation was still active in those shards: sent
                # now, since this worker stops and no one else sends from its outbox.
                await self.delivery.deliver(committed.entries + committed.award_entries)
            if is_outage(cause) or isinstance(cause, DataLost | Superseded):
                raise cause from None
            if len(events) == 1:
                reason = " ".join(f"could not be applied: {type(cause).__name__}: {cause}"
                                  .split())
                self._owed.append((sources[0], EventError(reason, "apply_failed")))
                return committed
            half = len(events) // 2
            for part in (slice(None, half), slice(half, None)):
                committed.add(await self._apply_isolated(events[part], positions[part],
                                                         sources[part], now, silent))
            return committed
        self._owe(outcome, sources)
        return outcome

    def _owe(self, outcome: Outcome, sources: list[ConsumerRecord[Any, Any]]) -> None:
        """Owe a dead letter for each event a commit refused (its index is into
        ``sources``); kept until the dead-letter topic has acknowledged it."""
        self._owed += [(sources[index], error) for index, error in outcome.rejected]
        outcome.rejected = []


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: EventsConsumer) -> None:
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Let the batch in flight finish and commit before the partitions move on.
        async with self.consumer._batch_lock:
            with contextlib.suppress(Exception):  # a lost commit only means a harmless replay
                await self.consumer.commit()
            self.consumer.assigned -= set(revoked)
            self.consumer.health.progressed(revoked)  # another worker's to retry and report

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.consumer.assigned |= set(assigned)
        if self.consumer.store.replay_until:
            self.consumer.rewind |= set(assigned)  # (seeks wait for the consume loop)
