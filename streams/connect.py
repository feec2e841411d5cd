"""Redis from the settings: one server or a cluster, and the store over the data in it.

The store is built in one place, ``settled_store``, and only once the shard count is
settled: the data's own when LEADSCORE_REDIS_SHARDS is unset, and refused when set to
another (every lead would be looked for in the wrong shard).
"""

from __future__ import annotations

import contextlib
from typing import Any

import hiredis
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from scoring.rules import Ruleset
from scoring.store import RedisStore
from streams.settings import CLUSTER_SCHEMES, Settings

__all__ = ["redis_client", "settle_layout", "settled_store"]


class _HiredisPacking:
    """Commands packed by hiredis, in C. redis-py's asyncio connections pack them in
    Python, argument by argument, and a batch's MGET, MSET and script calls carry a few
    arguments per event (docs/performance.md, "What changed, each measured on its own")."""

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


def redis_client(settings: Settings) -> Any:
    """``redis://`` / ``rediss://``: one server; ``redis+cluster://`` /
    ``rediss+cluster://``: a Redis Cluster, found from that one node."""
    url = settings.redis_url.get_secret_value()
    scheme, rest = url.split("://", 1)
    if scheme in CLUSTER_SCHEMES:
        # (A cluster's node connections keep redis-py's packing: RedisCluster has no
        # public way to choose their class.)
        return RedisCluster.from_url(f"{scheme.removesuffix('+cluster')}://{rest}")
    return Redis.from_url(url, connection_class=_FAST.get(scheme, Connection))


async def settled_store(settings: Settings, rules: Ruleset, redis: Any,
                        **options: Any) -> tuple[Settings, RedisStore]:
    """The settings with the shard count of the data already in Redis when
    LEADSCORE_REDIS_SHARDS is unset (else the default, recorded by the first write), and
    the store as every part of Leadscore must see it: same prefix, same shards. A count
    set that differs from the data's is refused (see RedisStore.check_layout)."""
    shards = settings.redis_shards
    if shards is None:
        shards = (await RedisStore.recorded_shards(redis, settings.key_prefix)
                  or settings.default_shards())
        settings = settings.model_copy(update={"redis_shards": shards})
    store = RedisStore(redis, rules, prefix=settings.key_prefix,
                       history_size=settings.history_size, shards=shards, **options)
    await store.check_layout()
    return settings, store


async def settle_layout(settings: Settings, rules: Ruleset, redis: Any = None) -> Settings:
    """Only the settings of ``settled_store``, on a Redis client of its own unless given
    one."""
    async with contextlib.AsyncExitStack() as stack:
        if redis is None:
            redis = await stack.enter_async_context(redis_client(settings))
        settings, _ = await settled_store(settings, rules, redis)
    return settings
