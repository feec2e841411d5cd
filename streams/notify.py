"""``leadscore notify``: each notification to each destination that wants it, once
(README.md, "Delivering notifications to people"; SPEC 13).

    run_notify(settings, destinations)  the process: logging, signals, /metrics, a bounded stop
      Sink                              consume the notifications topic, fan out, commit
        Lane                            one per destination: its queue, ``concurrency``
                                        senders, its own HTTP connections (streams.sending)
        Ledger                          Redis: what each destination had (streams.ledger)
        Partition                       offsets read and not yet done: what may be committed

A record of the topic is *done* once every destination whose filter it passes has had
it (a 2xx answer, recorded in the ledger) or has had it dead-lettered (sent to
LEADSCORE_TOPIC_UNDELIVERABLE). A partition is committed up to its first record not
done, so a restart replays only records not done, and the ledger drops what a
destination already had. A delivery repeats only when the sink dies
after an endpoint answered 2xx and before the ledger recorded it: at most
``concurrency`` per destination, the requests in flight. A tombstone (an erased lead)
is never delivered: the ledger forgets that lead instead.

Each lane sends from its own queue over its own connections, so a slow or failing
destination holds back only itself; only when LEADSCORE_NOTIFY_BACKLOG notifications
wait for one destination does the sink stop reading, for all (offsets cannot pass
what a destination still owes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from streams import metrics
from streams.connect import redis_client
from streams.destinations import Destination
from streams.ledger import Ledger
from streams.runtime import bootstrap_servers, producer
from streams.sending import Abandoned, Lane
from streams.settings import Settings

__all__ = ["Item", "Partition", "Sink", "decode", "run_notify", "web_app"]

log = logging.getLogger("leadscore.notify")
COMMIT_SECONDS = 0.2
RETRY_SECONDS = 1.0  # Redis or the broker out of reach: wait, try again
T = TypeVar("T")


# ---------------------------------------------------------------- records and offsets


class Partition:
    """One assigned partition: its records not yet done, in offset order, and what may be
    committed. ``revoked`` ends every delivery of it not yet under way."""

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.pending: dict[int, Item] = {}
        self.next: int | None = None  # the offset after the last record read
        self.committed: int | None = None  # None until known (``Sink._pin``)
        self.revoked = asyncio.Event()
        self._sending = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def committable(self) -> int | None:
        return next(iter(self.pending), self.next)

    def check(self) -> None:
        if self.revoked.is_set():
            raise Abandoned(str(self.tp))

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """A request and its outcome's record: a revocation waits for these to end."""
        self._sending += 1
        self.idle.clear()
        try:
            yield
        finally:
            self._sending -= 1
            if not self._sending:
                self.idle.set()

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; raise ``Abandoned`` as soon as the partition is revoked."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.revoked.wait(), seconds)
        self.check()


@dataclass(eq=False)
class Item:
    """One record of the notifications topic on its way to its destinations."""

    part: Partition
    record: ConsumerRecord[Any, Any]
    note: dict[str, Any] | None  # None: a tombstone, or not a notification
    remaining: int  # destinations that have not had it yet
    finished: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def id(self) -> str:
        return str(self.note["notification_id"]) if self.note else f"offset {self.record.offset}"

    def done(self) -> None:
        """One destination had it; the last one makes its offset committable."""
        self.remaining -= 1
        if self.remaining == 0:
            self.part.pending.pop(self.record.offset, None)
            if not self.finished.done():
                self.finished.set_result(None)


def decode(value: bytes) -> tuple[dict[str, Any] | None, str]:
    """A notification, or None and why the record is not one."""
    try:
        note = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None, "not JSON"
    if not isinstance(note, dict):
        return None, "not a JSON object"
    if not isinstance(note.get("notification_id"), str) or not note["notification_id"]:
        return None, "no notification_id"
    return note, ""


# ---------------------------------------------------------------- the sink


class Sink:
    """Reads the notifications topic into one lane per destination and commits what is
    done; ``run`` until ``stop``."""

    def __init__(self, settings: Settings, destinations: list[Destination], redis: Any) -> None:
        self.settings, self.redis = settings, redis
        self.ledger = Ledger(redis, settings.key_prefix, settings.notify_dedupe_window)
        self.lanes = [Lane(self, d) for d in destinations]
        self.parts: dict[TopicPartition, Partition] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.ready = False  # partitions assigned, and where to start on each settled
        self.faults = 0  # deliveries that failed by a bug (the log has each)
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused = False
        self._committed_at = 0.0
        self.drain_seconds = max(d.timeout for d in destinations) + 1

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        self._stopping.set()

    def problems(self) -> list[str]:
        """Why this sink is not ready (/readyz), Redis aside."""
        problems = [] if self.ready else ["no partitions assigned yet"]
        if self.faults:
            problems.append(f"{self.faults} deliveries failed unexpectedly (see the log); they "
                            "are retried after a restart")
        return problems

    async def run(self) -> None:
        """Consume until ``stop`` (or cancelled); then let deliveries under way end, for a
        while, and commit what is done."""
        try:
            await self._start()
            while self.consumer is not None and not self.stopping:
                await self._pin()
                self._throttle()
                batch = await self.consumer.getmany(timeout_ms=200, max_records=1000)
                for tp, records in batch.items():
                    part = self.parts.get(tp)
                    if part is not None and not part.revoked.is_set():
                        for record in records:
                            self._take(part, record)
                await self._commit()
        finally:
            await self._close()

    async def _start(self) -> None:
        settings = self.settings
        while not self.stopping:
            self.producer = producer(settings, linger_ms=0)
            try:
                await self.producer.start()
                break
            except KafkaError as exc:
                log.error("cannot reach the broker (%s); retrying in %ss", exc, RETRY_SECONDS)
                await self.producer.stop()
                self.producer = None
                with contextlib.suppress(TimeoutError):  # back-off, unless told to stop
                    await asyncio.wait_for(self._stopping.wait(), RETRY_SECONDS)
        if self.stopping:
            return
        for lane in self.lanes:
            await lane.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers(settings.broker),
            group_id=settings.notify_group, enable_auto_commit=False,
            auto_offset_reset=settings.notify_start,
            session_timeout_ms=int(settings.broker_session_timeout * 1000),
            heartbeat_interval_ms=int(settings.broker_heartbeat_interval * 1000),
            fetch_max_wait_ms=50, **settings.kafka_options())
        self.consumer.subscribe([settings.topic_hot], listener=_Rebalance(self))
        await self.consumer.start()

    async def _close(self) -> None:
        await self.release(set(self.parts))
        for lane in self.lanes:
            await lane.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()

    def _take(self, part: Partition, record: ConsumerRecord[Any, Any]) -> None:
        """Hand one record to every lane whose filter it passes."""
        part.next = record.offset + 1
        if record.value is None:  # a tombstone: the lead was erased
            self._background(self._erase(self._pending(part, record, None, 1)))
            return
        note, why = decode(record.value)
        if note is None:
            self._background(self._refuse(self._pending(part, record, None, 1), why))
            return
        lanes = [lane for lane in self.lanes if lane.destination.filter.passes(note)]
        if lanes:
            item = self._pending(part, record, note, len(lanes))
            for lane in lanes:
                lane.put(item)

    def _pending(self, part: Partition, record: ConsumerRecord[Any, Any],
                 note: dict[str, Any] | None, remaining: int) -> Item:
        item = part.pending[record.offset] = Item(part, record, note, remaining)
        return item

    def _background(self, work: Awaitable[None]) -> None:
        async def guarded() -> None:
            with contextlib.suppress(Abandoned):
                await work

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _erase(self, item: Item) -> None:
        """Forget an erased lead in every destination's ledger, once the records of it
        read before its tombstone are done."""
        earlier = [other.finished for other in item.part.pending.values()
                   if other.record.key == item.record.key and other is not item]
        if earlier:  # (shielded: another tombstone of the lead may wait for them too)
            await _first(asyncio.gather(*map(asyncio.shield, earlier)),
                         item.part.revoked.wait())
        item.part.check()
        if item.record.key is not None:
            subject = item.record.key.decode("utf-8", "replace")
            keys = [self.ledger.lead_key(lane.destination.id, subject) for lane in self.lanes]
            await self.persist(lambda: self.ledger.forget(keys), "forgetting an erased lead")
        item.done()

    async def _refuse(self, item: Item, why: str) -> None:
        await self.dead_letter(item, "*", None, "not_a_notification",
                               f"not a notification: {why}", 0)
        item.done()

    async def dead_letter(self, item: Item, destination: str, status: int | None, kind: str,
                          reason: str, attempts: int) -> None:
        """The record to the undeliverable topic, with headers naming the destination,
        the last status and the reason; returns once the broker has it."""
        record = item.record
        headers = [(name, value.encode()) for name, value in (
            ("leadscore.destination", destination),
            ("leadscore.status", "" if status is None else str(status)),
            ("leadscore.reason", reason), ("leadscore.kind", kind),
            ("leadscore.attempts", str(attempts)),
            ("leadscore.notification_id", item.id if item.note else ""),
            ("leadscore.topic", record.topic), ("leadscore.partition", str(record.partition)),
            ("leadscore.offset", str(record.offset)))]
        topic = self.settings.topic_undeliverable

        async def send() -> None:
            assert self.producer is not None
            await self.producer.send_and_wait(topic, value=record.value or b"",
                                              key=record.key, headers=headers)

        await self.persist(send, "dead-lettering")
        metrics.NOTIFY_UNDELIVERABLE.labels(destination, kind).inc()
        # One template per destination: the log's Repeats filter then holds back a flood
        # of one destination's dead letters without hiding another's.
        log.warning(f"%s is undeliverable to {destination}: %s", item.id, reason)

    async def persist(self, action: Callable[[], Awaitable[T]], what: str,
                      part: Partition | None = None) -> T:
        """``action`` until it works: Redis or the broker out of reach is waited out.
        With ``part``, give up (``Abandoned``) once it is revoked."""
        while True:
            try:
                return await action()
            except (RedisError, KafkaError, OSError) as exc:
                log.error("%s failed (%s); retrying in %ss", what,
                          type(exc).__name__, RETRY_SECONDS)
            if part is None:
                await asyncio.sleep(RETRY_SECONDS)  # back-off before the retry
            else:
                await part.sleep(RETRY_SECONDS)

    # ------------------------------------------------------------ offsets

    def assigned(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self.parts.setdefault(tp, Partition(tp))
        self.ready = False

    async def release(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions revoked (or this sink stopping): deliveries not under way end now;
        those under way, within ``drain_seconds``; then what is done is committed."""
        parts = [self.parts[tp] for tp in tps if tp in self.parts]
        for part in parts:
            part.revoked.set()
        if parts:
            idle = [asyncio.ensure_future(part.idle.wait()) for part in parts]
            await asyncio.wait(idle, timeout=self.drain_seconds)
            for waiting in idle:
                waiting.cancel()
        await self._commit(parts, always=True)
        for part in parts:
            del self.parts[part.tp]

    async def _pin(self) -> None:
        """Where each newly assigned partition starts: its committed offset, or (a new
        group) LEADSCORE_NOTIFY_START's, committed at once so that a restart starts
        there too and nothing after it is skipped."""
        if self.ready or self.consumer is None or not self.parts:
            return
        try:
            for tp, part in list(self.parts.items()):
                if part.committed is None:
                    committed = await self.consumer.committed(tp)
                    if committed is None:
                        committed = part.committable()
                        if committed is None:
                            committed = part.next = await self.consumer.position(tp)
                        await self.consumer.commit({tp: committed})
                    part.committed = committed
        except KafkaError as exc:  # a rebalance under way, or an outage: on the next turn
            log.warning("cannot settle where to start (%s); retrying", exc)
            return
        self.ready = True

    async def _commit(self, parts: Iterable[Partition] | None = None,
                      always: bool = False) -> None:
        """Commit each partition up to its first record not done (at most every
        COMMIT_SECONDS)."""
        loop = asyncio.get_running_loop()
        if self.consumer is None or (not always and
                                     loop.time() - self._committed_at < COMMIT_SECONDS):
            return
        self._committed_at = loop.time()
        for lane in self.lanes:
            metrics.NOTIFY_BACKLOG.labels(lane.destination.id).set(lane.backlog)
        due = [(part, offset) for part in list(self.parts.values() if parts is None else parts)
               if part.committed is not None
               and (offset := part.committable()) is not None and offset != part.committed]
        if not due:
            return
        try:
            await self.consumer.commit({part.tp: offset for part, offset in due})
        except KafkaError as exc:  # a rebalance or an outage: committed later, or replayed
            log.warning("commit failed (%s); retried", exc)
            return
        for part, offset in due:
            part.committed = offset

    def _throttle(self) -> None:
        """Stop reading while a destination has LEADSCORE_NOTIFY_BACKLOG waiting."""
        assert self.consumer is not None
        full = [lane.destination.id for lane in self.lanes
                if lane.backlog >= self.settings.notify_backlog]
        if full:
            self.consumer.pause(*self.consumer.assignment())
            if not self._paused:
                log.warning("%s has %d notifications waiting; reading "
                            "paused", ", ".join(full), self.settings.notify_backlog)
            self._paused = True
        elif self._paused:
            self.consumer.resume(*self.consumer.assignment())
            self._paused = False


async def _first(*waits: Awaitable[Any]) -> None:
    """Return when the first of ``waits`` ends."""
    futures = [asyncio.ensure_future(w) for w in waits]
    _, pending = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    for future in pending:
        future.cancel()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.sink.release(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.sink.assigned(assigned)


# ---------------------------------------------------------------- the process


def web_app(sink: Sink) -> web.Application:
    """/metrics, /healthz and /readyz of the sink."""

    async def prometheus(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.REGISTRY),
                            content_type=CONTENT_TYPE_LATEST.split(";")[0]
                            + "; version=0.0.4")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problems = sink.problems()
        try:
            await sink.redis.ping()
        except Exception as exc:  # any failure means "not ready", with its reason
            problems.append(f"redis: {type(exc).__name__}")
        return web.json_response({"ready": not problems, "problems": problems},
                                 status=503 if problems else 200)

    app = web.Application()
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def run_notify(settings: Settings, destinations: list[Destination],
               loglevel: str = "warning") -> int:
    """Run the sink in this process until SIGINT/SIGTERM; a stop that takes longer than
    ``stop_timeout`` seconds ends the process (exit code 1)."""
    from streams.app import Repeats  # the worker's log filter for outages' repeated lines

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] "
                                           "%(name)s: %(message)s"))
    handler.addFilter(Repeats())
    logging.basicConfig(level=loglevel.upper(), handlers=[handler])
    print(f"leadscore notify: {settings.topic_hot} -> {len(destinations)} "
          f"destination{'s' if len(destinations) != 1 else ''} "
          f"(group {settings.notify_group}, undeliverable to {settings.topic_undeliverable}, "
          f"metrics on {settings.web_host}:{settings.notify_port})\n"
          + "".join(f"  {d.describe()}\n" for d in destinations) + settings.describe(),
          file=sys.stderr, flush=True)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(settings, destinations))
    return 0


async def _serve(settings: Settings, destinations: list[Destination]) -> None:
    loop = asyncio.get_running_loop()
    async with redis_client(settings) as redis:
        sink = Sink(settings, destinations, redis)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, functools.partial(_stop, sink, settings))
        runner = web.AppRunner(web_app(sink), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.web_host, settings.notify_port).start()
        try:
            await sink.run()
        finally:
            await runner.cleanup()


def _stop(sink: Sink, settings: Settings) -> None:
    if sink.stopping:
        return
    sink.stop()

    def give_up() -> None:
        sys.stderr.write(f"leadscore notify: not stopped {settings.stop_timeout:g} s after the "
                         "signal (is the broker or Redis unreachable?); exiting anyway. What "
                         "was not done is delivered at the next start.\n")
        sys.stderr.flush()
        os._exit(1)

    # A thread, not the event loop: the loop is what may be stuck.
    deadline = threading.Timer(settings.stop_timeout, give_up)
    deadline.daemon = True
    deadline.start()
