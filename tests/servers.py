"""Where the integration tests get their Kafka broker and Redis server from.

In order: (1) servers named in the environment, (2) testcontainers when a Docker engine answers,
(3) the embedded child processes of :mod:`streams.embedded`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

from streams.embedded import EmbeddedBroker, EmbeddedRedis

BROKER_ENV = "LEADSCORE_TEST_BROKER"  # "kafka://host:port" or "host:port"
REDIS_ENV = "LEADSCORE_TEST_REDIS_URL"  # "redis://host:port/0"
KAFKA_IMAGE = "confluentinc/cp-kafka:7.6.0"
REDIS_IMAGE = "valkey/valkey:8.1"  # same server family and version as the embedded one


@functools.cache
def docker_available(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping within ``timeout`` seconds."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def strip_scheme(url: str) -> str:
    """``"kafka://host:port"`` -> ``"host:port"``."""
    return url.split("://", 1)[-1].rstrip("/")


@contextmanager
def broker_server() -> Iterator[str]:
    """Yield a ``kafka://host:port`` URL for the whole test session."""
    if url := os.environ.get(BROKER_ENV):
        yield f"kafka://{strip_scheme(url)}"
    elif docker_available():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE) as kafka:
            yield f"kafka://{kafka.get_bootstrap_server()}"
    else:
        with EmbeddedBroker() as broker:
            yield broker.url


@contextmanager
def redis_server() -> Iterator[str]:
    """Yield a ``redis://host:port/0`` URL for the whole test session."""
    if url := os.environ.get(REDIS_ENV):
        yield url
    elif docker_available():
        from testcontainers.community.redis import RedisContainer

        with RedisContainer(REDIS_IMAGE) as redis:
            host, port = redis.get_container_host_ip(), redis.get_exposed_port(redis.port)
            yield f"redis://{host}:{port}/0"
    else:
        with EmbeddedRedis() as server:
            yield server.url
