"""What every part of Leadscore that talks to a deployment starts from.

    async with connected(settings) as runtime:   # the worker, leadscore dev, lead, forget
        await runtime.store.load(lead_id)

``connected`` goes settings -> rules -> Redis client -> settled layout -> store, in
that order, and closes the client on the way out; the store exists only inside it, so
none can be used before its shard count is settled (streams.connect). Also here, in
one place: the clock (``now_ms``), the brokers (``bootstrap_servers``) and the Kafka
clients built from the settings.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from scoring.rules import Ruleset, load_rules
from scoring.store import RedisStore
from scoring.store.generations import active_generation, registry
from streams.connect import redis_client, settled_store
from streams.settings import Settings

__all__ = ["Runtime", "bootstrap_servers", "committed_offsets", "connected", "now_ms", "producer",
           "producing"]


def now_ms() -> int:
    """The wall clock, in epoch milliseconds: what "now" means everywhere in Leadscore."""
    return time.time_ns() // 1_000_000


def bootstrap_servers(broker: str) -> list[str]:
    """``kafka://a:9092;kafka://b:9092`` (Faust style) -> ``["a:9092", "b:9092"]``."""
    return [url.split("://", 1)[-1].strip("/") for url in broker.replace(",", ";").split(";")
            if url.strip()]


def producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    """A producer to the settings' brokers, not started. Plain, not idempotent: Tansu (the
    embedded broker) refuses idempotent producers, and notifications carry their own ids
    for consumers to drop repeats."""
    return AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.broker),
                            enable_idempotence=False, acks="all",
                            **settings.kafka_options(), **options)


@contextlib.asynccontextmanager
async def producing(settings: Settings, **options: Any) -> AsyncIterator[AIOKafkaProducer]:
    """A started ``producer``, stopped on the way out (also when it failed to start)."""
    started = producer(settings, **options)
    try:
        await started.start()
        yield started
    finally:
        await started.stop()


async def committed_offsets(settings: Settings, group: str, topic: str | None = None
                            ) -> dict[int, int]:
    """Partition -> the offset consumer group ``group`` has committed on the events topic
    (or ``topic``; none: it has not consumed). Asked by the store when a generation's data
    is missing: a first start, or lost data?"""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers(settings.broker),
                                group_id=group, enable_auto_commit=False,
                                **settings.kafka_options())
    await consumer.start()
    try:
        topic = topic or settings.topic_events
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer.topics()  # metadata, once
            partitions = consumer.partitions_for_topic(topic) or set()
        found = {}
        for partition in sorted(partitions):
            offset = await consumer.committed(TopicPartition(topic, partition))
            if offset is not None:
                found[partition] = offset
        return found
    finally:
        await consumer.stop()


@dataclass(frozen=True, slots=True)
class Runtime:
    """A deployment's Redis side, ready to use."""

    settings: Settings  # with ``redis_shards`` settled: the data's
    rules: Ruleset
    redis: Any  # redis.asyncio.Redis or RedisCluster
    store: RedisStore
    # The generation's accounts (SPEC 11), when the rules have an accounts: section.
    accounts: RedisStore | None = None


@contextlib.asynccontextmanager
async def connected(settings: Settings, rules: Ruleset | None = None, *, reader: bool = False,
                    **store_options: Any) -> AsyncIterator[Runtime]:
    """The runtime of ``settings``: the rules file (when not given) loaded and validated
    first, then Redis, its layout settled, and the store over it (``store_options`` are
    RedisStore's, such as ``observe``). A ``reader`` (``leadscore lead``, ``forget``)
    gets the active generation's store and rules, whatever its own rules file says
    (docs/generations.md)."""
    rules = rules if rules is not None else load_rules(settings.rules_path())
    async with redis_client(settings) as redis:
        if reader:
            rules = await _active_rules(redis, settings.key_prefix) or rules
        group = settings.generation_group(rules.version)
        settings, store = await settled_store(
            settings, rules, redis,
            committed=functools.partial(committed_offsets, settings, group),
            legacy=functools.partial(committed_offsets, settings, settings.group_id),
            **store_options)
        yield Runtime(settings, rules, redis, store, account_store(settings, rules, store))


def account_store(settings: Settings, rules: Ruleset, leads: RedisStore) -> RedisStore | None:
    """The store of the accounts of ``leads``'s generation (SPEC 11): the same Redis,
    prefix and shards, the accounts' own rules and keyspace; None without accounts."""
    if rules.accounts is None:
        return None
    return RedisStore(
        leads.redis, rules.accounts.rules, leads.keys.prefix, leads.history_size,
        leads.observe, len(leads.keys.shards),
        committed=functools.partial(committed_offsets, settings,
                                    settings.account_group(leads.generation),
                                    settings.topic_account_awards),
        generation=leads.generation, part="accounts")


async def _active_rules(redis: Any, prefix: str) -> Ruleset | None:
    active = await active_generation(redis, prefix)
    for generation in await registry(redis, prefix) if active else ():
        if generation.version == active and generation.rules:
            return generation.ruleset()
    return None
