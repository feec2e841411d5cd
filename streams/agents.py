"""The scoring agent: events topic -> Redis (atomically) -> notifications topic.

The events topic is read with aiokafka's group consumer in batches rather than
through a Faust agent: Faust's per-event stream machinery costs ~90 us of CPU
per event, and with our own consumer offsets are committed only after a batch's
state and outbox are in Redis. Faust runs this loop as an app task and keeps the
web server, the timers and the process lifecycle.

Per batch:  getmany -> parse -> LeadStore.apply (state + outbox in one
transaction) -> bad messages to the DLQ, acknowledged -> hand notifications to
the producer -> commit offsets (at most every 200 ms) -> next batch; the broker's
acks of the notifications are awaited beside the next batch, then they are
cleared from the outbox. A crash anywhere replays the uncommitted tail, which the
store recognises by offset; a notification recorded but not acknowledged is
re-sent from the outbox at start and every ``outbox_interval``.

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
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
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

from scoring.engine import Notification
from scoring.errors import DataLost, EventError
from scoring.events import Event, parse_event, parse_ts
from scoring.store import LeadStore, Outcome, PartlyApplied
from streams import metrics
from streams.deadletters import DeadLetters
from streams.settings import Settings

log = logging.getLogger("leadscore")
RETRY_SECONDS = 1.0
COMMIT_SECONDS = 0.2


def bootstrap_servers(broker: str) -> list[str]:
    """``kafka://a:9092;kafka://b:9092`` (Faust style) -> ``["a:9092", "b:9092"]``."""
    return [url.split("://", 1)[-1].strip("/") for url in broker.replace(",", ";").split(";")
            if url.strip()]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_OUTAGES = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, ClusterDownError,
            MasterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError, KafkaError,
            OSError, TimeoutError)
# Error replies by which a healthy-looking Redis says it cannot take writes for now.
_REDIS_OUTAGE_REPLIES = ("OOM", "LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN",
                         "TRYAGAIN", "NOREPLICAS", "BUSY", "MISCONF")


def is_outage(exc: BaseException) -> bool:
    """Whether a failure is Redis's or the broker's (wait and retry the batch) rather
    than one message's (find it and dead-letter it)."""
    if isinstance(exc, _OUTAGES):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_REDIS_OUTAGE_REPLIES)


class Scorer:
    """Owns the events consumer and the producer; one per worker process."""

    def __init__(self, settings: Settings, store: LeadStore) -> None:
        self.settings = settings
        self.store = store
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.assigned: set[TopicPartition] = set()
        self._batch_lock = asyncio.Lock()  # a rebalance waits for the batch in flight
        self._uncommitted: dict[TopicPartition, int] = {}
        self.positions: dict[TopicPartition, int] = {}  # next offset to apply, per partition
        self._in_flight: set[asyncio.Future[None]] = set()  # deliveries awaiting acks
        self._committed_at = 0.0
        self.dead_letters: DeadLetters | None = None
        # Refused by shards that committed in a batch that failed elsewhere (an outage):
        # their events are replays on the retry, so they are dead-lettered from here.
        self._owed: list[tuple[ConsumerRecord[Any, Any], EventError]] = []
        # partition -> (monotonic time its batches started failing, the last failure)
        self.failing: dict[TopicPartition, tuple[float, str]] = {}
        self.lost: str | None = None  # why this worker stopped scoring (DataLost)
        store.consumed = self.has_consumed

    def problems(self) -> list[str]:
        """Why this worker is not ready to score, beyond Redis answering (/readyz)."""
        problems = [] if self.lost is None else [self.lost]
        now, stall = time.monotonic(), self.settings.stall_seconds
        for tp, (since, error) in sorted(self.failing.items()):
            if now - since >= stall:
                problems.append(f"partition {tp.topic}[{tp.partition}] has not progressed "
                                f"for {now - since:.0f} s ({error})")
        return problems

    def stalls(self) -> list[tuple[str, int, float]]:
        """(topic, partition, seconds) of each partition whose batches keep failing."""
        now = time.monotonic()
        return [(tp.topic, tp.partition, now - since)
                for tp, (since, _) in sorted(self.failing.items())]

    async def has_consumed(self) -> bool:
        """Whether this consumer group has committed offsets on the events topic (asked
        by the store when Redis holds no data: a first start, or lost data?)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers(self.settings.broker),
            group_id=self.settings.group_id, enable_auto_commit=False,
            **self.settings.kafka_options())
        await consumer.start()
        try:
            topic = self.settings.topic_events
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                await consumer.topics()  # metadata, once
                partitions = consumer.partitions_for_topic(topic) or set()
            for partition in sorted(partitions):
                if await consumer.committed(TopicPartition(topic, partition)) is not None:
                    return True
            return False
        finally:
            await consumer.stop()

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
        servers = bootstrap_servers(self.settings.broker)
        # Plain producer: Tansu (the embedded broker) rejects idempotent producers, and
        # notifications carry their own ids for consumers to drop repeats.
        security = self.settings.kafka_options()
        self.producer = AIOKafkaProducer(
            bootstrap_servers=servers, acks="all", linger_ms=0, enable_idempotence=False,
            max_request_size=max(1_048_576, self.settings.dlq_max_bytes + 65_536), **security)
        await self.producer.start()
        self.dead_letters = DeadLetters(self.producer, self.store, self.settings.topic_dlq,
                                        self.settings.dlq_max_bytes)
        await self.store.open()  # DataLost stops here: see run()
        await self.resend_pending()
        timeout_ms = int(self.settings.broker_session_timeout * 1000)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=servers, group_id=self.settings.group_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=timeout_ms, heartbeat_interval_ms=max(timeout_ms // 10, 100),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            # A fetch returns as soon as data is there, but a broker may hold an empty
            # one this long; short waits keep the hot path to milliseconds at the cost
            # of a few idle fetches per second.
            fetch_max_wait_ms=10, **security)
        self.consumer.subscribe([self.settings.topic_events], listener=_Rebalance(self))
        await self.consumer.start()

    async def stop(self) -> None:
        if self._in_flight:  # let sent notifications be acknowledged (else: re-sent)
            await asyncio.wait(self._in_flight, timeout=5)
        if self.consumer is not None:
            with contextlib.suppress(Exception):  # best effort: a replay is harmless
                await self.commit()
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    async def run(self) -> None:
        """Consume until cancelled; an outage of Redis or the broker is waited out."""
        while True:
            try:
                await self.start()
                break
            except DataLost as exc:
                await self._stop_scoring(exc)
                await self.stop()
                return
            except Exception as exc:  # unreachable broker or Redis at start: retry
                log.error("leadscore: cannot start (%s); retrying in %ss", exc, RETRY_SECONDS)
                await self.stop()
                await asyncio.sleep(RETRY_SECONDS)  # back-off before reconnecting
        # What start-up built (modules, the Faust app: ~10^5 objects) lives as long as
        # the process: out of the collector's sight, a full collection takes 2 ms, not
        # the ~80 ms pause in the event loop it took every few seconds.
        gc.freeze()
        try:
            assert self.consumer is not None
            while True:
                batch = await self.consumer.getmany(timeout_ms=200,
                                                    max_records=self.settings.batch_size)
                if batch:
                    async with self._batch_lock:
                        await self._handle_or_rewind(batch)
        except DataLost as exc:
            await self._stop_scoring(exc)
        finally:
            await self.stop()

    async def _stop_scoring(self, exc: DataLost) -> None:
        """Stop for good, loudly: /readyz says why until someone restores Redis."""
        self.lost = str(exc)
        log.error("leadscore: %s", exc)

    async def _handle_or_rewind(self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
                                ) -> None:
        """A batch that fails (Redis down, broker down) is read again, never skipped."""
        try:
            await self.handle(batch)
            for tp in batch:
                self.failing.pop(tp, None)
        except (asyncio.CancelledError, DataLost):
            raise
        except Exception as exc:
            log.error("leadscore: batch of %d failed (%s: %s); retrying in %ss",
                      sum(map(len, batch.values())), type(exc).__name__, exc, RETRY_SECONDS)
            failed_at, error = time.monotonic(), f"{type(exc).__name__}: {exc}"
            for tp in batch:
                self.failing[tp] = (self.failing.get(tp, (failed_at, ""))[0], error)
            assert self.consumer is not None
            for tp, records in batch.items():
                if tp in self.consumer.assignment():
                    self.consumer.seek(tp, records[0].offset)
            await asyncio.sleep(RETRY_SECONDS)  # back-off before the retry

    async def handle(self, batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> None:
        started = time.perf_counter()
        now = now_ms()
        latest = now + int(self.settings.max_clock_skew * 1000)
        events: list[Event] = []
        positions: list[tuple[int, int]] = []
        sources: list[ConsumerRecord[Any, Any]] = []
        dead: list[tuple[ConsumerRecord[Any, Any], EventError]] = []
        max_bytes = self.settings.max_event_bytes
        for records in batch.values():
            for record in records:
                try:
                    if record.value is None:
                        raise EventError("message has no value", "no_value")
                    events.append(parse_event(record.value, max_bytes, latest_ms=latest))
                    positions.append((record.partition, record.offset))
                    sources.append(record)
                except EventError as exc:
                    dead.append((record, exc))
        count = sum(len(records) for records in batch.values())
        metrics.EVENTS_CONSUMED.inc(count)
        metrics.BATCH_SIZE.observe(count)
        if events:
            outcome, refused = await self._apply_isolated(events, positions, sources, now)
            dead += refused
            # Each event was applied, a duplicate, refused or a replay; the halves of an
            # isolated failure see what an earlier half committed as replays, so count the
            # replays as what is left.
            outcome.replayed = len(events) - outcome.applied - outcome.duplicates - len(refused)
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
                await self._deliver_behind(outcome.entries)
        if self._owed:
            dead += self._owed
        if dead:
            assert self.dead_letters is not None
            await self.dead_letters.send(dead, now)
            self._owed.clear()
        # Offsets of applied batches are committed at most every COMMIT_SECONDS: a commit
        # is a broker round trip, and a replay of uncommitted batches is harmless (the
        # store skips offsets it has applied), so waiting for one per batch only adds
        # latency.
        applied = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        self._uncommitted.update(applied)
        self.positions.update(applied)
        if time.monotonic() - self._committed_at >= COMMIT_SECONDS:
            await self.commit()

    async def commit(self) -> None:
        """Commit the offsets of every batch applied so far."""
        if self._uncommitted and self.consumer is not None:
            offsets, self._uncommitted = self._uncommitted, {}
            await self.consumer.commit(
                {tp: o for tp, o in offsets.items() if tp in self.consumer.assignment()})
        self._committed_at = time.monotonic()

    async def _apply_isolated(self, events: list[Event], positions: list[tuple[int, int]],
                              sources: list[ConsumerRecord[Any, Any]], now: int
                              ) -> tuple[Outcome, list[tuple[ConsumerRecord[Any, Any],
                                                             EventError]]]:
        """``store.apply``, with a failure that is not an outage narrowed down to the
        message that causes it: halves are applied (and committed) in order, so each
        lead's events keep their order, and a message that fails alone is dead-lettered
        as ``apply_failed``. Returns the outcome and the messages to dead-letter."""
        try:
            outcome = await self.store.apply(events, now, positions)
        except (asyncio.CancelledError, DataLost):
            raise
        except Exception as exc:
            committed, cause = Outcome(), exc
            if isinstance(exc, PartlyApplied):  # the committed shards' events are replays now
                committed = exc.outcome
                cause = exc.cause  # type: ignore[assignment]  # an Exception in practice
            dead = [(sources[index], error) for index, error in committed.rejected]
            if is_outage(cause) or isinstance(cause, DataLost):
                # The retry will see those as replays: what they refused is owed now.
                self._owed += dead
                raise cause from None
            if len(events) == 1:
                reason = " ".join(f"could not be applied: {type(cause).__name__}: {cause}"
                                  .split())
                return committed, [(sources[0], EventError(reason, "apply_failed"))]
            half = len(events) // 2
            for part in (slice(None, half), slice(half, None)):
                more, more_dead = await self._apply_isolated(events[part], positions[part],
                                                             sources[part], now)
                committed.add(more)
                dead += more_dead
            return committed, dead
        return outcome, [(sources[index], error) for index, error in outcome.rejected]

    async def deliver(self, entries: Iterable[bytes]) -> None:
        """Send outbox entries to the notifications topic; clear them once acknowledged."""
        entries = list(entries)
        await self._acknowledged(*await self._enqueue(entries), entries)

    async def _enqueue(self, entries: list[bytes]
                       ) -> tuple[list[asyncio.Future[Any]], list[Notification]]:
        """Hand entries to the producer, in order (so a lead's notifications keep their
        order on its partition); returns the futures of their acknowledgements and the
        notifications, decoded."""
        assert self.producer is not None
        topic = self.settings.topic_hot
        notes: list[Notification] = [orjson.loads(entry) for entry in entries]
        sends = [await self.producer.send(topic, value=entry, key=note["lead_id"].encode())
                 for entry, note in zip(entries, notes, strict=True)]
        return sends, notes

    async def _acknowledged(self, sends: list[asyncio.Future[Any]], notes: list[Notification],
                            entries: list[bytes]) -> None:
        await asyncio.gather(*sends)
        sent = now_ms()
        for note in notes:
            metrics.NOTIFICATIONS.labels(note["type"]).inc()
            if note["event_id"] is not None:  # caused by an event: its end-to-end latency
                metrics.END_TO_END_LATENCY.observe(max(sent - parse_ts(note["event_ts"]), 0)
                                                   / 1000)
        await self.store.delivered(entries)

    async def _deliver_behind(self, entries: list[bytes]) -> None:
        """Send a batch's notifications without waiting for the broker's acks: the
        next batch need not wait. Safe because the outbox already holds them (so the
        offsets may be committed first): a send that fails stays in the outbox and is
        re-sent within ``outbox_interval``."""
        sends, notes = await self._enqueue(entries)
        task = asyncio.ensure_future(self.safely(
            "notification delivery", lambda: self._acknowledged(sends, notes, entries)))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def forget(self, lead_id: str) -> bool:
        """Erase a lead (GDPR) and tell downstream systems to forget it too: a tombstone
        (key = lead_id, no value) on the notifications topic. False if unknown."""
        assert self.producer is not None
        known = await self.store.forget(lead_id)
        if known:
            await self.producer.send_and_wait(self.settings.topic_hot, value=None,
                                              key=lead_id.encode())
        return known

    async def resend_pending(self) -> None:
        """Re-send what was recorded but not sent: by a crashed run, or a failed send."""
        if self.lost is not None:
            return
        horizon = now_ms() - self.settings.outbox_interval * 1000
        pending = await self.store.pending(recorded_before_ms=horizon)
        if pending:
            await self.deliver(pending)
        metrics.OUTBOX_PENDING.set(await self.store.outbox_size())

    async def sweep(self) -> None:
        """Cool the disarmed leads whose crossing time has passed (SPEC 3 step 3)."""
        if self.lost is not None or self.producer is None:
            return
        while entries := await self.store.sweep(now_ms()):
            await self.deliver(entries)

    async def safely(self, name: str, job: Callable[[], Awaitable[None]]) -> None:
        """Run a timer job; a failure is logged and the next tick tries again."""
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except DataLost as exc:
            await self._stop_scoring(exc)
        except Exception as exc:
            log.error("leadscore: %s failed (%s: %s); next try in one interval",
                      name, type(exc).__name__, exc)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Let the batch in flight finish and commit before the partitions move on.
        async with self.scorer._batch_lock:
            with contextlib.suppress(Exception):  # a lost commit only means a harmless replay
                await self.scorer.commit()
            self.scorer.assigned -= set(revoked)
            for tp in revoked:  # another worker's to retry now, and to report
                self.scorer.failing.pop(tp, None)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.scorer.assigned |= set(assigned)
