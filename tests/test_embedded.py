"""The session servers are real: Kafka round trip through a consumer group, Redis GET/SET/EVAL."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.embedded import EmbeddedRedis, EmbeddedServerError, create_topics

MESSAGES = [(b"lead-1", b"signup"), (b"lead-2", b"pricing-view"), (b"lead-3", b"demo-request")]


@pytest.mark.integration
async def test_kafka_round_trip_through_consumer_group(bootstrap: str) -> None:
    topic = f"test-embedded-{uuid.uuid4().hex[:12]}"
    await create_topics(bootstrap, {topic: 4})
    await create_topics(bootstrap, {topic: 4})  # "already exists" is not an error

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for key, value in MESSAGES:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-group",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # Tansu needs about half the session timeout to form a group; 6 s is Kafka's minimum.
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    await consumer.start()
    received: list[tuple[bytes | None, bytes | None]] = []
    try:
        async with asyncio.timeout(30):
            while len(received) < len(MESSAGES):
                batches = await consumer.getmany(timeout_ms=500)
                received += [(r.key, r.value) for recs in batches.values() for r in recs]
        assert consumer.partitions_for_topic(topic) == {0, 1, 2, 3}
        assert len(consumer.assignment()) == 4
    finally:
        await consumer.stop()
    assert sorted(received) == sorted(MESSAGES)


@pytest.mark.integration
async def test_redis_set_get_and_lua(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    key = f"test-embedded:{uuid.uuid4().hex}"
    try:
        assert await client.set(key, "41") is True
        assert await client.get(key) == b"41"
        script = "return redis.call('INCRBY', KEYS[1], ARGV[1]) * 10"
        assert await client.eval(script, 1, key, "1") == 420
        assert await client.get(key) == b"42"
    finally:
        await client.delete(key)
        await client.aclose()


def test_embedded_start_failure_names_the_problem_and_shows_the_log(tmp_path: Path) -> None:
    server = EmbeddedRedis(log_path=tmp_path / "valkey.log", extra_args=["--no-such-option", "1"])
    with pytest.raises(EmbeddedServerError, match=r"valkey exited with code 1") as info:
        server.start()
    assert "no-such-option" in str(info.value)  # the log tail is part of the message
    assert not server.running
    server.stop()  # idempotent
