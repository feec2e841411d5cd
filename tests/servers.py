"""Where the integration tests get their Kafka broker and Redis server from.

In order: (1) servers named in the environment, (2) testcontainers when a Docker engine answers,
(3) the embedded child processes of :mod:`streams.embedded`.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis

from streams.embedded import EmbeddedBroker, EmbeddedRedis, free_port

BROKER_ENV = "LEADSCORE_TEST_BROKER"  # "kafka://host:port" or "host:port"
REDIS_ENV = "LEADSCORE_TEST_REDIS_URL"  # "redis://host:port/0"
CLUSTER_ENV = "LEADSCORE_TEST_REDIS_CLUSTER_URL"  # "redis+cluster://host:port"
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


@contextmanager
def redis_cluster() -> Iterator[str]:
    """Yield a ``redis+cluster://host:port`` URL of a Redis Cluster with three masters:
    the one named in the environment, else three embedded servers made into one (the
    same binary as the single server; a Docker cluster image is not standard)."""
    if url := os.environ.get(CLUSTER_ENV):
        yield url
        return
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="leadscore-cluster-") as tmp:
        nodes, buses = [], []
        for n in range(3):
            buses.append(free_port())  # the cluster bus; else port + 10000, maybe past 65535
            node = EmbeddedRedis(port=free_port(), data_dir=Path(tmp) / f"node{n}", extra_args=[
                "--cluster-enabled", "yes", "--cluster-node-timeout", "5000",
                "--cluster-port", str(buses[-1]),
                "--cluster-config-file", str(Path(tmp) / f"nodes-{n}.conf")])
            stack.enter_context(node)
            nodes.append(node)
        clients = [stack.enter_context(redis.Redis(port=node.port)) for node in nodes]
        # 16384 slots in three ranges, then every node meets the first.
        bounds = [0, 5461, 10923, 16384]
        for client, start, end in zip(clients, bounds, bounds[1:], strict=False):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", start, end - 1)
        for client in clients[1:]:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0].port, buses[0])
        deadline = time.monotonic() + 30
        while not all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                      and len(c.execute_command("CLUSTER", "NODES").splitlines()) == 3
                      for c in clients):
            if time.monotonic() > deadline:
                raise RuntimeError("the embedded Redis Cluster did not form in 30 s")
            time.sleep(0.1)  # polling the cluster's own state until it is formed
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}"
