"""Erasing a lead (GDPR): every key of it in Redis, then a tombstone downstream.

``DELETE /leads/{id}`` and ``leadscore forget`` both erase through ``forget``: the
worker tombstones through its own producer (``Delivery.tombstone``), the command
through one it starts only once it knows the lead (``forget_once``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaProducer

from scoring.store import RedisStore
from scoring.store.generations import registry
from streams.runtime import Runtime, producing

__all__ = ["Tombstone", "forget", "forget_once", "send_tombstone"]

Tombstone = Callable[[str], Awaitable[None]]  # tells downstream systems to forget a lead


async def forget(store: RedisStore, tombstone: Tombstone, accounts: RedisStore | None,
                 lead_id: str) -> bool:
    """Erase every key of a lead (state, ids, history, its places in the lead and
    cooling indexes, its notifications and member awards not yet sent), and with
    ``accounts`` (SPEC 11) its name from every account's member list, then tombstone it.
    False if the lead is unknown: nothing to erase, nothing sent. Every generation kept
    forgets it (a rollback must not bring it back)."""
    known = await store.forget(lead_id)
    if known and accounts is not None:
        await accounts.forget_member(lead_id)
    for generation in await registry(store.redis, store.keys.prefix):
        if generation.version != store.generation:
            known = await store.sibling(generation.version).forget(lead_id) or known
            if accounts is not None:
                await accounts.sibling(generation.version).forget_member(lead_id)
    if known:
        await tombstone(lead_id)
    return known


async def send_tombstone(producer: AIOKafkaProducer, topic: str, lead_id: str) -> None:
    """Key = lead_id, no value, on the notifications topic: downstream systems forget
    the lead, and a compacted topic drops its notifications."""
    await producer.send_and_wait(topic, value=None, key=lead_id.encode())


async def forget_once(runtime: Runtime, lead_id: str) -> bool:
    """``forget``, from a process that has no producer running."""
    topic = runtime.settings.topic_hot

    async def tombstone(lead_id: str) -> None:
        async with producing(runtime.settings) as producer:
            await send_tombstone(producer, topic, lead_id)

    return await forget(runtime.store, tombstone, runtime.accounts, lead_id)
