"""Commands that talk to a running deployment: ``leadscore produce``, ``lead``, ``forget``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from scoring.engine import describe
from scoring.errors import LeadscoreError
from scoring.events import format_ts
from scoring.rules import load_rules
from streams.agents import bootstrap_servers, now_ms
from streams.connect import lead_store, redis_client, settle_layout
from streams.settings import Settings

FLUSH_EVERY = 5_000


async def produce_file(settings: Settings, path: Path) -> int:
    """Send every line, keyed by its lead_id, so that a lead's events stay in order.

    Lines are sent as they are: a bad one is the worker's to dead-letter, with its reason.
    """
    try:
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    except OSError as exc:
        raise LeadscoreError(f"{path}: cannot read ({exc.strerror})") from None
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.broker),
                                enable_idempotence=False, linger_ms=5, acks="all",
                                **settings.kafka_options())
    try:
        await producer.start()  # inside: a producer that fails to start is stopped too
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn()) as progress:
            task = progress.add_task(f"{path.name} -> {settings.topic_events}", total=len(lines))
            pending = []
            for line in lines:
                pending.append(await producer.send(settings.topic_events, line,
                                                   key=_lead_key(line)))
                if len(pending) >= FLUSH_EVERY:
                    await asyncio.gather(*pending)
                    progress.advance(task, len(pending))
                    pending.clear()
            await asyncio.gather(*pending)
            progress.advance(task, len(pending))
    finally:
        await producer.stop()
    return 0


def _lead_key(line: bytes) -> bytes | None:
    try:
        lead_id = orjson.loads(line).get("lead_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return lead_id.encode() if isinstance(lead_id, str) else None


async def show_lead(settings: Settings, lead_id: str) -> int:
    rules = load_rules(settings.rules_path())
    async with redis_client(settings) as redis:
        settings = await settle_layout(settings, rules, redis)
        loaded = await lead_store(settings, rules, redis).load(lead_id)
    if loaded is None:
        raise LeadscoreError(f"no lead {lead_id!r} in Redis")
    state, updated_at = loaded
    view = describe(state, rules, now_ms())
    print(orjson.dumps({**view, "updated_at": format_ts(updated_at)},
                       option=orjson.OPT_INDENT_2).decode())
    return 0


async def forget_lead(settings: Settings, lead_id: str) -> int:
    """Erase every key of a lead, then tombstone it on the notifications topic, as
    ``DELETE /leads/{id}`` does."""
    rules = load_rules(settings.rules_path())
    async with redis_client(settings) as redis:
        settings = await settle_layout(settings, rules, redis)
        known = await lead_store(settings, rules, redis).forget(lead_id)
    if not known:
        raise LeadscoreError(f"no lead {lead_id!r} in Redis (nothing to forget)")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.broker),
                                enable_idempotence=False, acks="all",
                                **settings.kafka_options())
    try:
        await producer.start()
        await producer.send_and_wait(settings.topic_hot, value=None, key=lead_id.encode())
    finally:
        await producer.stop()
    print(f"forgot {lead_id}: its keys are erased and a tombstone is on {settings.topic_hot}")
    return 0
