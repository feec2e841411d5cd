"""The events topic as it is now, read from its earliest offset without a consumer group
(``leadscore rules preview --topic``): nothing is joined, committed or written.

A plain consumer (``group_id=None``) is assigned every partition, seeks to the
beginning and reads up to each partition's end *as of the start of the read*: the
high watermark the broker reports with the first fetch of that partition. Messages
produced after that are left out, so that a busy topic cannot keep the read going
for ever. The end is taken from the fetches, not from ``end_offsets``: the embedded
broker (Tansu) answers ListOffsets with the base offset of its last batch, short of
the end. The read stops once every partition has reached its end and a fetch brings
nothing more below it; a partition that stops short for ``idle_seconds`` is an error
that names it.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from scoring.errors import LeadscoreError
from streams.runtime import bootstrap_servers
from streams.settings import Settings

__all__ = ["Snapshot", "read_topic"]

POLL_MS = 500
MAX_RECORDS = 10_000


@dataclass(slots=True)
class Snapshot:
    """Every message of a topic, partition by partition in offset order.

    A lead's events are on one partition (producers key them by lead_id), so reading
    the partitions one after the other keeps each lead's order, which is all that
    scoring depends on.
    """

    topic: str
    values: list[bytes | None] = field(default_factory=list)  # None: a message with no value
    offsets: list[int] = field(default_factory=list)  # of each value
    starts: list[int] = field(default_factory=list)  # index in ``values`` of each partition's first
    partitions: list[int] = field(default_factory=list)  # the partition starting there

    def where(self, number: int) -> str:
        """``topic:partition:offset`` of the ``number``-th message (from 1), as
        ``FILE:LINE`` names a line of a file."""
        part = bisect.bisect_right(self.starts, number - 1) - 1
        return f"{self.topic}:{self.partitions[part]}:{self.offsets[number - 1]}"


async def read_topic(settings: Settings, topic: str | None = None,
                     idle_seconds: float = 30.0) -> Snapshot:
    """Read ``topic`` (default: the settings' events topic) from its earliest offset to
    its end at the start of the read, without a consumer group (module docstring)."""
    topic = topic or settings.topic_events
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers(settings.broker),
                                group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", **settings.kafka_options())
    await consumer.start()
    try:
        await consumer.topics()  # metadata of every topic, without creating any
        found = consumer.partitions_for_topic(topic)
        if not found:
            raise LeadscoreError(f"no topic {topic!r} on {settings.broker}: check "
                                 "LEADSCORE_TOPIC_EVENTS and LEADSCORE_BROKER")
        assigned = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        return await _read(consumer, topic, assigned, idle_seconds)
    finally:
        await consumer.stop()


async def _read(consumer: AIOKafkaConsumer, topic: str, assigned: list[TopicPartition],
                idle_seconds: float) -> Snapshot:
    ends: dict[TopicPartition, int] = {}
    values: dict[TopicPartition, list[bytes | None]] = {tp: [] for tp in assigned}
    offsets: dict[TopicPartition, list[int]] = {tp: [] for tp in assigned}
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    while True:
        batch = await consumer.getmany(timeout_ms=POLL_MS, max_records=MAX_RECORDS)
        for tp in assigned:
            if tp not in ends and consumer.highwater(tp) is not None:
                ends[tp] = consumer.highwater(tp)  # the end as of this partition's first fetch
        more = False
        for tp, records in batch.items():
            end, kept, at = ends.get(tp), values[tp], offsets[tp]
            for record in records:
                if end is not None and record.offset >= end:
                    break  # produced after the read began
                kept.append(record.value)
                at.append(record.offset)
                more = True
        behind = [tp for tp in assigned
                  if tp not in ends or await consumer.position(tp) < ends[tp]]
        if not behind and not more:
            break
        if more:
            idle_since = loop.time()
        elif loop.time() - idle_since > idle_seconds:
            shown = ", ".join([
                f"partition {tp.partition} at offset {await consumer.position(tp)} of "
                f"{ends[tp]}" if tp in ends else f"partition {tp.partition} (never fetched)"
                for tp in behind])
            raise LeadscoreError(f"topic {topic!r}: no message for {idle_seconds:g} s while "
                                 f"reading it to its end: {shown}; check the broker")
    snapshot = Snapshot(topic)
    for tp in assigned:
        snapshot.starts.append(len(snapshot.values))
        snapshot.partitions.append(tp.partition)
        snapshot.values += values[tp]
        snapshot.offsets += offsets[tp]
    return snapshot
