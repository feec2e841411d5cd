"""The dead-letter topic: every bad message once, with why and where it came from.

A message the worker cannot use (one refused at the door, docs/semantics.md,
"Decisions where the spec is silent", or one that fails to apply on its own) goes to
``LEADSCORE_TOPIC_DLQ`` with its original bytes as the value and headers saying why
(``leadscore.reason``, one line; ``leadscore.kind``) and where it came from
(``leadscore.topic``, ``.partition``, ``.offset``). A value larger than
``LEADSCORE_DLQ_MAX_BYTES`` is cut to that size, with ``leadscore.original_size`` and
``leadscore.original_sha256`` of the whole, so that dead-lettering itself can never
fail on a message the topic would refuse.

Each message is dead-lettered once: the batch's offsets are committed only after
its dead letters are acknowledged, and the store remembers which messages were
dead-lettered, so neither a retried batch nor a replay after a crash sends one
again (one can repeat only if the worker dies between the broker's acknowledgement
and that record, the same edge as the notifications' at-least-once).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from scoring.errors import EventError
from scoring.store import RedisStore
from streams import metrics

__all__ = ["DeadLetters", "dead_letter"]

MAX_REASON = 1_000  # characters of the reason header
MAX_KEY = 1_024  # bytes of the key kept; a longer one is cut too


def dead_letter(record: ConsumerRecord[Any, Any], error: EventError, max_bytes: int
                ) -> tuple[bytes, bytes | None, list[tuple[str, bytes]]]:
    """(value, key, headers) of the dead letter of ``record``."""
    value: bytes = record.value or b""
    key: bytes | None = record.key
    reason = " ".join(error.reason.split())[:MAX_REASON]
    headers = [("leadscore.reason", reason.encode()),
               ("leadscore.kind", error.kind.encode()),
               ("leadscore.topic", record.topic.encode()),
               ("leadscore.partition", str(record.partition).encode()),
               ("leadscore.offset", str(record.offset).encode())]
    if len(value) > max_bytes:
        headers += [("leadscore.original_size", str(len(value)).encode()),
                    ("leadscore.original_sha256", hashlib.sha256(value).hexdigest().encode())]
        value = value[:max_bytes]
    if key is not None and len(key) > MAX_KEY:
        headers.append(("leadscore.original_key_size", str(len(key)).encode()))
        key = key[:MAX_KEY]
    return value, key, headers


class DeadLetters:
    """Sends bad messages to the dead-letter topic, each once."""

    def __init__(self, producer: AIOKafkaProducer, store: RedisStore, topic: str,
                 max_bytes: int) -> None:
        self.producer, self.store, self.topic, self.max_bytes = producer, store, topic, max_bytes

    async def send(self, dead: Sequence[tuple[ConsumerRecord[Any, Any], EventError]],
                   now_ms: int) -> None:
        """Dead-letter each message not dead-lettered before; return once the broker has
        acknowledged them all (a failure raises, and the batch is retried)."""
        unique = {f"{record.topic}:{record.partition}:{record.offset}": (record, error)
                  for record, error in dead}  # (a retried batch may owe one twice)
        dead, names = list(unique.values()), list(unique)
        before = await self.store.dead_lettered(names)
        fresh = [(item, name) for item, name, old in zip(dead, names, before, strict=True)
                 if not old]
        sends = []
        for (record, error), _ in fresh:
            value, key, headers = dead_letter(record, error, self.max_bytes)
            sends.append(await self.producer.send(self.topic, value=value, key=key,
                                                  headers=headers))
        await asyncio.gather(*sends)
        await self.store.record_dead_letters([name for _, name in fresh], now_ms)
        for (_, error), _ in fresh:
            metrics.EVENTS_DEAD.labels(error.kind).inc()
