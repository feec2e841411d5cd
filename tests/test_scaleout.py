"""Scale-out: three worker processes on eight partitions, consumers joining and leaving
while the stream flows; the outcome still exactly equals the offline engine (SPEC 1, 4)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_worker
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from test_worker import DEFAULT_RULES, assert_same_outcome, traffic
from worker import Deployment, Worker, keyed, wait_for

from scoring.rules import load_rules

pytestmark = pytest.mark.integration

PARTITIONS = 8
CHUNK = 10  # events per produce call while the test waits for the group to settle
CONSUMED = "leadscore_events_consumed_total"
LABEL = re.compile(r'(\w+)="([^"]*)"')


@pytest.fixture
def rules_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default rules with a 1 s dedupe window instead of 7 days. Events are minutes of
    event time apart, so a replayed event is no longer dropped as a repeat of its
    event_id: only the source offsets the store keeps per lead make replays exact."""
    path = tmp_path / "rules.yaml"
    default = DEFAULT_RULES.read_text()
    changed = re.sub(r"(?m)^dedupe_window: .*$", "dedupe_window: 1s", default)
    assert changed != default
    path.write_text(changed)
    # assert_same_outcome runs the offline engine on test_worker.DEFAULT_RULES.
    monkeypatch.setattr(test_worker, "DEFAULT_RULES", path)
    return path


@pytest.fixture
def deployment(bootstrap: str, redis_url: str, tmp_path: Path,
               rules_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(bootstrap, redis_url, rules_path, tmp_path, partitions=PARTITIONS)
    yield deployment
    deployment.stop_all()


def lags(worker: Worker, topic: str) -> dict[int, float]:
    """Partition -> lag of the partitions of ``topic`` this worker owns and has read from:
    it reports a ``leadscore_consumer_lag`` line for each (none before its first fetch)."""
    _, body = worker.get("/metrics")
    found = {}
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("leadscore_consumer_lag{"):
            labels, value = line[len("leadscore_consumer_lag{"):].rsplit("} ", 1)
            parsed = dict(LABEL.findall(labels))
            if parsed.get("topic") == topic:
                found[int(parsed["partition"])] = float(value)
    return found


def split_among(deployment: Deployment, workers: list[Worker]) -> Callable[[], bool]:
    """True once ``workers`` are ready and share every partition, each owning some and
    none owned twice: the group has settled on exactly these members, and each has
    fetched from every partition it got."""
    def settled() -> bool:
        if any(w.get("/readyz")[0] != 200 for w in workers):
            return False
        shares = [set(lags(w, deployment.events)) for w in workers]
        return (all(shares) and sum(map(len, shares)) == deployment.partitions
                and set().union(*shares) == set(range(deployment.partitions)))
    return settled


def caught_up(deployment: Deployment, worker: Worker, quiet: float = 0.3
              ) -> Callable[[], bool]:
    """True once ``worker`` has applied everything it was sent and is done with it: no lag
    on any of its partitions, and nothing consumed for ``quiet`` seconds (a batch is
    applied and committed in milliseconds)."""
    last = [-1.0, time.monotonic()]  # consumed, since when

    def check() -> bool:
        consumed, behind = worker.metric(CONSUMED), lags(worker, deployment.events)
        if consumed != last[0]:
            last[:] = [consumed, time.monotonic()]
        return (time.monotonic() - last[1] >= quiet and bool(behind)
                and not any(behind.values()))
    return check


async def uncommitted(deployment: Deployment, partitions: set[int]) -> bool:
    """Whether the group's committed offset is behind the end of any of these partitions."""
    tps = [TopicPartition(deployment.events, p) for p in sorted(partitions)]
    admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=deployment.bootstrap)
    await admin.start()
    try:
        await consumer.start()
        try:
            group = deployment.settings().generation_group(load_rules(DEFAULT_RULES).version)
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
            ends = await consumer.end_offsets(tps)
        finally:
            await consumer.stop()
    finally:
        await admin.close()
    return any(tp not in committed or committed[tp].offset < ends[tp] for tp in tps)


class Feed:
    """Produces ``events`` in order, a few at a time, for as long as the test waits: the
    stream keeps flowing through every rebalance."""

    def __init__(self, deployment: Deployment, events: list[dict[str, Any]]) -> None:
        self.deployment, self.events, self.sent = deployment, events, 0

    def fail(self, what: str) -> AssertionError:
        logs = "\n".join(f"--- {w.log_path.name}:\n{w.log_tail(15)}"
                         for w in self.deployment.workers)
        return AssertionError(f"{what} ({self.sent}/{len(self.events)} events sent)\n{logs}")

    async def produce(self, count: int) -> int:
        """Produce the next ``count`` events (fewer at the end); return how many."""
        chunk = self.events[self.sent:self.sent + count]
        if not chunk:
            raise self.fail("ran out of events")
        await self.deployment.produce(keyed(chunk))
        self.sent += len(chunk)
        return len(chunk)

    async def until(self, condition: Callable[[], bool], what: str, at_least: int,
                    timeout: float = 60) -> None:
        """Produce until at least ``at_least`` more events are out and ``condition()``
        holds; fail if it does not within ``timeout`` seconds or the events run out."""
        start, deadline = self.sent, time.monotonic() + timeout
        while not (self.sent - start >= at_least and condition()):
            if time.monotonic() > deadline:
                raise self.fail(f"{what}: not so after {self.sent - start} more events")
            await self.produce(CHUNK)
            await asyncio.sleep(0.2)  # pacing the stream, not waiting for a result

    async def rest(self) -> int:
        """Produce what is left; return how many that was."""
        return await self.produce(len(self.events) - self.sent)


async def test_three_workers_on_eight_partitions_joining_and_leaving_mid_stream(
        deployment: Deployment) -> None:
    await deployment.create_topics()
    events = traffic(leads=60, events=3000, seed=41)
    feed = Feed(deployment, events)
    first, second = deployment.worker().start(), deployment.worker().start()
    await first.wait_ready()
    await second.wait_ready()
    await feed.until(split_among(deployment, [first, second]),
                     "the first two workers share the partitions", at_least=300)

    third = deployment.worker().start()  # joins mid-stream
    await feed.until(split_among(deployment, [first, second, third]),
                     "all three workers own partitions", at_least=200)

    assert first.terminate() == 0  # an original worker leaves cleanly
    await feed.until(split_among(deployment, [second, third]),
                     "the two left take over the partitions of the one that left",
                     at_least=200)

    # The other original one dies (SIGKILL) holding events it applied to Redis but has
    # not committed yet (it commits at most every 0.2 s): the last one must replay them.
    for _ in range(10):
        for _ in range(3):
            await feed.produce(3 * CHUNK)
            await asyncio.sleep(0.05)  # pacing: batches closer than the commit interval
        await wait_for(caught_up(deployment, second), 30, "the second worker fell behind")
        if await uncommitted(deployment, set(lags(second, deployment.events))):
            break
    else:
        raise feed.fail("the second worker committed every burst at once")
    second.kill()
    await feed.until(split_among(deployment, [third]),
                     "the last worker takes over every partition", at_least=200)
    consumed_before = third.metric(CONSUMED)
    rest = await feed.rest()
    assert rest >= 300, f"only {rest} events left for the last phase"

    await assert_same_outcome(deployment, events, timeout=60)
    # Every event produced since it was alone went through the last worker; the dead
    # workers' counters cannot be read.
    assert third.metric(CONSUMED) - consumed_before >= rest
    assert third.metric("leadscore_events_replayed_total") > 0
