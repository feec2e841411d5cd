"""Connections built from the settings: Redis (one server or a cluster) and the store."""

from __future__ import annotations

import contextlib
from typing import Any

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from scoring.rules import Ruleset
from scoring.store import LeadStore
from streams.settings import Settings

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
CLUSTER_SHARDS = 32  # a few per master, so that the shards spread over them
# On one Redis, a few shards let the worker apply one shard's events while Redis runs
# another's commit: ~15% more events/s than one (docs/performance.md).
SINGLE_SHARDS = 4


class _HiredisPacking:
    """Commands packed by hiredis, in C. redis-py's asyncio connections pack them in
    Python at ~1 us per argument, and a batch's MGET, MSET and script calls carry a few
    arguments per event: that was a tenth of the worker's time per event."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if isinstance(name, str):  # "CLUSTER SLOTS" and the like: one argument per word
            args = (*name.encode().split(), *args[1:])
        elif b" " in name:
            args = (*name.split(), *args[1:])
        return [hiredis.pack_command(args)]


class _FastConnection(_HiredisPacking, Connection):
    pass


class _FastSSLConnection(_HiredisPacking, SSLConnection):
    pass


class _FastUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


_FAST = {"redis": _FastConnection, "rediss": _FastSSLConnection, "unix": _FastUnixConnection}


def is_cluster(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def redis_client(settings: Settings) -> Any:
    """``redis://`` / ``rediss://``: one server; ``redis+cluster://`` /
    ``rediss+cluster://``: a Redis Cluster, found from that one node."""
    url = settings.redis_url.get_secret_value()
    scheme, rest = url.split("://", 1)
    if scheme in CLUSTER_SCHEMES:
        # (A cluster's node connections keep redis-py's packing: RedisCluster has no
        # public way to choose their class.)
        return RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}")
    return Redis.from_url(url, connection_class=_FAST.get(scheme, Connection))


def shard_count(settings: Settings) -> int:
    """LEADSCORE_REDIS_SHARDS, or the default; ``settle_layout`` adopts the data's."""
    if settings.redis_shards is not None:
        return settings.redis_shards
    return CLUSTER_SHARDS if is_cluster(settings.redis_url.get_secret_value()) else SINGLE_SHARDS


def lead_store(settings: Settings, rules: Ruleset, redis: Any = None,
               **options: Any) -> LeadStore:
    """The store as every part of Leadscore must see it: same prefix, same shards."""
    return LeadStore(redis if redis is not None else redis_client(settings), rules,
                     prefix=settings.key_prefix, history_size=settings.history_size,
                     shards=shard_count(settings), **options)


async def settle_layout(settings: Settings, rules: Ruleset, redis: Any = None) -> Settings:
    """The settings with the shard count of the data already in Redis when
    LEADSCORE_REDIS_SHARDS is unset (else the default, recorded now); a count set
    that differs from the data's is refused (see LeadStore.check_layout)."""
    async with contextlib.AsyncExitStack() as stack:
        if redis is None:
            redis = await stack.enter_async_context(redis_client(settings))
        if settings.redis_shards is None:
            found = await LeadStore.recorded_shards(redis, settings.key_prefix)
            settings = settings.model_copy(update={"redis_shards": found or shard_count(settings)})
        await lead_store(settings, rules, redis).check_layout()
    return settings
