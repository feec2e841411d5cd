"""Everything a worker sends to the broker, through its one producer.

- Notifications, from the outbox: a batch's are handed to the producer in order (so
  that a lead's keep their order on its partition) and the next batch goes on while
  the broker acknowledges them. That is safe because the outbox already holds them: a
  send that fails stays there and is re-sent within ``outbox_interval``, with the same
  ``notification_id`` and bytes. Once acknowledged they are cleared from the outbox
  and published on Redis for the dashboards of every worker (``RedisStore.delivered``).
- Dead letters (``streams.deadletters``), each message once.
- Tombstones of erased leads (``streams.erasure``).
- With accounts (SPEC 11), to the account topic (keyed by account id): the member
  awards recorded in the outbox beside the notifications, and the account events the
  events topic carries (``forward``).

A worker has one ``Delivery`` per store: its leads', and its accounts' (whose outbox
holds account.hot and account.cooled).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from scoring.accounts import AWARDS, message
from scoring.engine import Notification, subject_of
from scoring.events import Event, parse_ts
from scoring.store import RedisStore
from streams import metrics
from streams.deadletters import DeadLetters
from streams.erasure import send_tombstone
from streams.health import Health
from streams.runtime import now_ms, producer
from streams.settings import Settings

__all__ = ["Delivery"]

DRAIN_SECONDS = 5.0  # how long a stop waits for acknowledgements (the rest is re-sent)


class Delivery:
    """The worker's producer and what goes through it; ``start`` before use."""

    def __init__(self, settings: Settings, store: RedisStore, health: Health) -> None:
        self.settings, self.store, self.health = settings, store, health
        self.producer: AIOKafkaProducer | None = None
        self.dead_letters: DeadLetters | None = None
        self._in_flight: set[asyncio.Future[None]] = set()  # deliveries awaiting acks
        # The account store whose lead side this is (SPEC 11): told how far the account
        # topic was sent, for the cutover (``RedisStore.account_topic_progress``).
        self.accounts: RedisStore | None = None

    async def start(self) -> None:
        self.producer = producer(
            self.settings, linger_ms=0,
            max_request_size=max(1_048_576, self.settings.dlq_max_bytes + 65_536))
        await self.producer.start()
        self.dead_letters = DeadLetters(self.producer, self.store, self.settings.topic_dlq,
                                        self.settings.dlq_max_bytes)
        if self.store.rules.accounts is not None:  # the lead side of accounts (SPEC 11)
            self.store.award_route = await self._route()

    async def _route(self) -> Callable[[str], int]:
        """Account id -> its partition of the account topic, as the producer's own
        partitioner keys it (where its account events go too), so that an account's
        messages all reach one partition and a commit's awards can travel together."""
        assert self.producer is not None
        partitions = sorted(await self.producer.partitions_for(
            self.settings.topic_account_awards))
        partitioner = DefaultPartitioner()  # (once: the route runs per award)

        # Cached: the route runs per award, aiokafka's murmur2 is pure Python, and a
        # worker sees the same few thousand accounts again and again.
        @functools.lru_cache(maxsize=65_536)
        def route(account_id: str) -> int:
            return int(partitioner(account_id.encode(), partitions, partitions))
        return route

    async def drain(self) -> None:
        """Let sent notifications be acknowledged, for a while (else they are re-sent)."""
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=DRAIN_SECONDS)

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = self.dead_letters = None

    async def deliver(self, entries: Iterable[bytes]) -> None:
        """Send outbox entries to the notifications topic; clear them once acknowledged."""
        entries = list(entries)
        await self._acknowledged(*await self._enqueue(entries), entries)

    async def deliver_behind(self, entries: list[bytes], notes: list[Notification]) -> None:
        """Hand a batch's outbox entries (and ``notes``, the notifications they encode, as
        ``Outcome`` pairs them) to the producer and return: their acknowledgements are
        awaited in the background (see the module's docstring)."""
        sends, notes = await self._enqueue(entries, notes)
        task = asyncio.ensure_future(self.health.safely(
            "notification delivery", lambda: self._acknowledged(sends, notes, entries)))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def resend_pending(self) -> None:
        """Re-send what was recorded but not sent: by a crashed run, or a failed send."""
        if self.health.lost is not None:
            return
        horizon = now_ms() - self.settings.outbox_interval * 1000
        pending = await self.store.pending(recorded_before_ms=horizon)
        if pending:
            await self.deliver(pending)
        metrics.OUTBOX_PENDING.set(await self.store.outbox_size())

    async def forward(self, events: list[tuple[Event, tuple[int, int]]]) -> None:
        """Send account events (each with its events-topic position) to the account topic
        and wait for the broker's acknowledgements (before the events topic's offsets are
        committed): a crash before then sends them again, and the account side knows the
        repeats by their position (``scoring.accounts.position``)."""
        assert self.producer is not None, "Delivery.start first"
        topic, generation = self.settings.topic_account_awards, self.store.generation
        sends = [await self.producer.send(topic, value=message(event, generation, source),
                                          key=event.lead_id.encode())
                 for event, source in events]
        await self._produced(await asyncio.gather(*sends))
        metrics.ACCOUNT_FORWARDS.labels("event").inc(len(events))

    async def _produced(self, acks: list[Any]) -> None:
        """Record how far the account topic was sent (its acknowledgements' offsets)."""
        if self.accounts is not None and acks:
            furthest: dict[int, int] = {}
            for ack in acks:
                furthest[ack.partition] = max(furthest.get(ack.partition, 0), ack.offset + 1)
            await self.accounts.account_topic_progress(produced=furthest)

    async def tombstone(self, lead_id: str) -> None:
        """Tell downstream systems to forget an erased lead (``streams.erasure``)."""
        assert self.producer is not None, "Delivery.start first"
        await send_tombstone(self.producer, self.settings.topic_hot, lead_id)

    async def _enqueue(self, entries: list[bytes], notes: list[Notification] | None = None
                       ) -> tuple[list[asyncio.Future[Any]], list[Notification]]:
        """Hand entries to the producer, in order; the futures of their acknowledgements,
        and the notifications (decoded from the entries unless given)."""
        assert self.producer is not None, "Delivery.start first"
        topic, awards = self.settings.topic_hot, self.settings.topic_account_awards
        if notes is None:
            notes = [orjson.loads(entry) for entry in entries]
        sends = [await self.producer.send(topic, value=entry, key=subject_of(note).encode())
                 if note["type"] != AWARDS else
                 await self.producer.send(awards, value=entry, partition=note["p"])
                 if note["p"] is not None else
                 await self.producer.send(awards, value=entry,
                                          key=note["awards"][0][1].encode())
                 for entry, note in zip(entries, notes, strict=True)]
        return sends, notes

    async def _acknowledged(self, sends: list[asyncio.Future[Any]], notes: list[Notification],
                            entries: list[bytes]) -> None:
        acks = await asyncio.gather(*sends)
        sent = now_ms()
        told: list[bytes] = []
        owners: list[str] = []
        awarded: list[bytes] = []
        members: list[str] = []
        for entry, note in zip(entries, notes, strict=True):
            if note["type"] == AWARDS:
                awarded.append(entry)
                members.append(note["o"])  # (a lead of the shard whose outbox holds it)
                continue
            told.append(entry)
            owners.append(subject_of(note))
            metrics.NOTIFICATIONS.labels(note["type"], note.get("group") or "").inc()
            if note.get("event_id") is not None:  # caused by an event: its end-to-end latency
                metrics.END_TO_END_LATENCY.observe(max(sent - parse_ts(note["event_ts"]), 0)
                                                   / 1000)
        if told:
            await self.store.delivered(told, owners)
        if awarded:
            metrics.ACCOUNT_FORWARDS.labels("award").inc(
                sum(len(note["awards"]) for note in notes if note["type"] == AWARDS))
            await self._produced([ack for ack, note in zip(acks, notes, strict=True)
                                  if note["type"] == AWARDS])
            await self.store.delivered(awarded, members, publish=False)
