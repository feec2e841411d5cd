"""Redis Cluster: a real three-master cluster of the same server binary. The store
keeps every transaction and script inside one slot (one shard), and a worker runs
on the cluster unchanged, with exactly the offline engine's results."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
import pytest
from helpers import fresh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import RedisCluster
from test_store import RULES, T0, assert_matches_offline, batches, run_async, streams
from test_worker import DEFAULT_RULES, assert_same_outcome, traffic
from worker import Deployment, keyed

from scoring.events import Event
from scoring.store import RedisStore

pytestmark = pytest.mark.integration


def cluster(url: str) -> RedisCluster:
    return RedisCluster.from_url(url.replace("redis+cluster://", "redis://"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(min_value=0, max_value=100), max_size=6))
def test_the_store_on_a_cluster_agrees_with_the_offline_engine(
        redis_cluster_url: str, events: list[Event], cuts: list[int]) -> None:
    async def scenario() -> None:
        async with cluster(redis_cluster_url) as redis:
            store = RedisStore(redis, RULES, prefix=fresh("cluster"), shards=8)
            for batch in batches(events, cuts):
                await store.apply(batch, now_ms=T0)
            await assert_matches_offline(store, redis, events)

    run_async(scenario())


async def test_shards_spread_over_every_master(redis_cluster_url: str) -> None:
    async with cluster(redis_cluster_url) as redis:
        store = RedisStore(redis, RULES, prefix="spread", shards=32)
        masters = {redis.get_node_from_key(shard.outbox).name for shard in store.keys.shards}
        assert len(masters) == 3


async def test_the_worker_runs_unchanged_on_a_cluster(
        bootstrap: str, redis_cluster_url: str, tmp_path: Path) -> None:
    deployment = Deployment(bootstrap, redis_cluster_url, DEFAULT_RULES, tmp_path)
    await deployment.create_topics()
    try:
        events = traffic(leads=30, events=600, seed=41)
        worker = deployment.worker().start()
        await worker.wait_ready()
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{worker.port}/stream") as stream:
            assert await stream.content.readline() == b": connected\n"
            await deployment.produce(keyed(events))
            await assert_same_outcome(deployment, events)
            # The live feed (pub/sub) works on a cluster too.
            line = b""
            while not line.startswith(b"data: "):
                line = await asyncio.wait_for(stream.content.readline(), 30)
            assert orjson.loads(line[len(b"data: "):])["type"] == "lead.hot"
        consumed = worker.metric("leadscore_events_consumed_total")
        assert consumed == len(events), (consumed, worker.log_tail())
        status, body = worker.get("/leads?limit=3")
        assert status == 200 and body.count(b'"lead_id"') == 3
        # A score group's list, from its own rankings on the cluster (SPEC 10).
        status, body = worker.get("/leads?group=scoring&limit=5")
        listed = orjson.loads(body)["leads"]
        assert status == 200 and len(listed) == 5
        scores = [lead["groups"]["scoring"]["score"] for lead in listed]
        assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    finally:
        deployment.stop_all()


async def test_accounts_on_a_cluster_reach_the_offline_ones(
        bootstrap: str, redis_cluster_url: str, tmp_path: Path) -> None:
    """SPEC 11 on the cluster: the member awards' outbox, the account side's commits and
    the account index each stay in one slot."""
    from test_account_stream import assert_accounts_equal_offline
    from test_account_stream import traffic as account_traffic

    deployment = Deployment(bootstrap, redis_cluster_url, DEFAULT_RULES, tmp_path)
    deployment.rules_path = DEFAULT_RULES  # type: ignore[attr-defined]
    await deployment.create_topics()
    try:
        events = account_traffic(800, seed=43)
        worker = deployment.worker().start()
        await worker.wait_ready()
        await deployment.produce(keyed(events))
        await assert_accounts_equal_offline(deployment, events)
        status, body = worker.get("/accounts?hot=true&limit=3")
        listed = orjson.loads(body)["accounts"]
        assert status == 200 and len(listed) == 3 and all(a["hot"] for a in listed)
        scores = [a["score"] for a in listed]
        assert scores == sorted(scores, reverse=True)
    finally:
        deployment.stop_all()
