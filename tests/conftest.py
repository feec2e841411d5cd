"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import broker_server, redis_cluster, redis_server, strip_scheme

# --- servers (session-scoped; see tests/servers.py for where they come from) ---------------


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """``kafka://host:port`` of a Kafka-compatible broker."""
    with broker_server() as url:
        yield url


@pytest.fixture(scope="session")
def bootstrap(broker_url: str) -> str:
    """``host:port`` of the broker, for aiokafka's ``bootstrap_servers``."""
    return strip_scheme(broker_url)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://host:port/0`` of a Redis-compatible server."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """``redis+cluster://host:port`` of a Redis Cluster with three masters."""
    with redis_cluster() as url:
        yield url
