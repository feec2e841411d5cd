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
from test_worker import DEFAULT_RULES, assert_same_outcome, traffic
from worker import Deployment, Worker, keyed

pytestmark = pytest.mark.integration

PARTITIONS = 8
CHUNK = 10  # events per produce call while the test waits for the group to settle
LABEL = re.compile(r'(\w+)="([^"]*)"')


@pytest.fixture
def deployment(bootstrap: str, redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(bootstrap, redis_url, DEFAULT_RULES, tmp_path,
                            partitions=PARTITIONS)
    yield deployment
    deployment.stop_all()


def owned(worker: Worker, topic: str) -> set[int]:
    """The partitions of ``topic`` this worker owns and has read from: it reports a
    ``leadscore_consumer_lag`` line for each (none before its first fetch there)."""
    _, body = worker.get("/metrics")
    found = set()
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("leadscore_consumer_lag{"):
            labels = dict(LABEL.findall(line.split("}", 1)[0]))
            if labels.get("topic") == topic:
                found.add(int(labels["partition"]))
    return found


def split_among(deployment: Deployment, workers: list[Worker]) -> Callable[[], bool]:
    """True once ``workers`` are ready and share every partition, each owning some and
    none owned twice: the group has settled on exactly these members, and each has
    fetched from every partition it got."""
    def settled() -> bool:
        if any(w.get("/readyz")[0] != 200 for w in workers):
            return False
        shares = [owned(w, deployment.events) for w in workers]
        return (all(shares) and sum(map(len, shares)) == deployment.partitions
                and set().union(*shares) == set(range(deployment.partitions)))
    return settled


class Feed:
    """Produces ``events`` in order, a few at a time, for as long as the test waits: the
    stream keeps flowing through every rebalance."""

    def __init__(self, deployment: Deployment, events: list[dict[str, Any]]) -> None:
        self.deployment, self.events, self.sent = deployment, events, 0

    async def until(self, condition: Callable[[], bool], what: str, at_least: int,
                    timeout: float = 60) -> None:
        """Produce until at least ``at_least`` more events are out and ``condition()``
        holds; fail if it does not within ``timeout`` seconds or the events run out."""
        start, deadline = self.sent, time.monotonic() + timeout
        while not (self.sent - start >= at_least and condition()):
            if self.sent >= len(self.events) or time.monotonic() > deadline:
                logs = "\n".join(f"--- {w.log_path.name}:\n{w.log_tail(15)}"
                                 for w in self.deployment.workers)
                raise AssertionError(f"{what}: not so after {self.sent - start} more events "
                                     f"({self.sent}/{len(self.events)} sent)\n{logs}")
            chunk = self.events[self.sent:self.sent + CHUNK]
            await self.deployment.produce(keyed(chunk))
            self.sent += len(chunk)
            await asyncio.sleep(0.2)  # pacing the stream, not waiting for a result

    async def rest(self) -> int:
        """Produce what is left; return how many that was."""
        left = self.events[self.sent:]
        await self.deployment.produce(keyed(left))
        self.sent = len(self.events)
        return len(left)


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

    second.kill()  # and the other original one dies (SIGKILL): its uncommitted tail replays
    await feed.until(split_among(deployment, [third]),
                     "the last worker takes over every partition", at_least=200)
    consumed_before = third.metric("leadscore_events_consumed_total")
    rest = await feed.rest()
    assert rest >= 300, f"only {rest} events left for the last phase"

    await assert_same_outcome(deployment, events, timeout=60)
    # Every event produced since it was alone went through the last worker (replays may
    # add more); the dead workers' counters cannot be read.
    assert third.metric("leadscore_events_consumed_total") - consumed_before >= rest
