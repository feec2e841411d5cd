"""A rebuild on several processes (streams.rebuilders), through real workers and
helpers: the helpers share the partitions, leave before the cutover, never score live,
and the result is exactly the one-process rebuild's (offline's)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_rescoring import (
    RULES_A,
    active_since,
    assert_exact,
    first_generation,
    rules_b,
    sent,
    worker,
)
from worker import Deployment, keyed, wait_for

from scoring.events import format_ts
from scoring.rules import load_rules
from scoring.store.generations import lag
from streams.demo import Traffic
from streams.rebuilders import Helpers
from streams.runtime import connected

pytestmark = pytest.mark.integration

START = 1_793_577_600_000  # 2026-11-02T00:00:00Z
DAY = 86_400_000


@pytest.fixture
def deployment(bootstrap: str, redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    # Rebuild batches of 10: a rebuild of thousands of events is "long" (helpers start
    # beyond 10 batches behind) and lasts long enough for them to take part.
    # (Live batches of 1,000: the first generation is applied quickly.)
    deployment = Deployment(bootstrap, redis_url, RULES_A, tmp_path, partitions=4,
                            rebuild_batch_size="10", batch_size="1000")
    yield deployment
    deployment.stop_all()


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux: /proc/<pid>/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped (it runs no code)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_a_rebuild_on_three_processes_is_exact_helpers_die_with_their_worker_and_leave_first(
        deployment: Deployment, tmp_path: Path) -> None:
    await deployment.create_topics()
    b = load_rules(rules_b(tmp_path))
    history = list(Traffic(300, seed=5).history(12_000, START, 20 * DAY))
    await deployment.produce(keyed(history))
    await first_generation(deployment, history)

    # A worker of B starts its helpers at its first look at the lag, and is SIGKILLed
    # right then: the kernel sends each helper SIGTERM, and they go.
    first = worker(deployment, rules_b(tmp_path), LEADSCORE_REBUILD_PROCESSES="3").start()
    await wait_for(lambda: "rebuilding on 3 processes" in first.log_path.read_text(), 120,
                   f"no helpers; log:\n{first.log_tail()}")
    assert first.process is not None
    helpers = children(first.process.pid)
    assert len(helpers) == 2
    first.kill()
    await wait_for(lambda: all(map(gone, helpers)), 60, f"helpers left running: {helpers}")

    # The next worker rebuilds the rest on three processes; its helpers are gone before
    # the generation goes live, and the result is offline's exactly.
    new = worker(deployment, rules_b(tmp_path), LEADSCORE_REBUILD_PROCESSES="3").start()
    await new.wait_ready(timeout=180)
    # (Ready as soon as the generation is active; the cutover's log line follows it.)
    await wait_for(lambda: "cutover: rules" in new.log_path.read_text(), 30,
                   f"no cutover logged; log:\n{new.log_tail()}")
    log = new.log_path.read_text()
    assert "rebuilding on 3 processes" in log, "the rest of the rebuild was still long"
    stopped, cutover = log.find("rebuild helpers stopped"), log.find("cutover: rules")
    assert 0 <= stopped < cutover
    assert new.metric("leadscore_rebuild_processes") == 1
    x = await active_since(deployment, b.version)
    await assert_exact(deployment, history, b, x)


async def test_a_helper_rebuilds_its_share_exactly_and_stops_when_the_generation_is_live(
        deployment: Deployment, tmp_path: Path) -> None:
    await deployment.create_topics()
    a, b = load_rules(RULES_A), load_rules(rules_b(tmp_path))
    history = list(Traffic(60, seed=9).history(3_000, START, 12 * DAY))
    await deployment.produce(keyed(history))
    await first_generation(deployment, history)

    # One helper alone, started as a worker starts it: it rebuilds every partition.
    helpers = Helpers(deployment.settings(), b)
    await helpers.start(1)
    [helper] = helpers.running
    try:
        async with connected(deployment.settings(), b) as runtime:
            async def caught_up() -> bool:
                return (await lag(runtime.store, a.version)).behind == 0
            await wait_for(caught_up, 120, "the helper did not rebuild the generation")
            await runtime.store.refresh_active()
            assert not runtime.store.active_shards  # a helper never makes its generation live
        # Not active: no sweep has run, so the states are the events' alone (``at`` before
        # them all cools nothing).
        await assert_exact(deployment, history, b, START)

        # A worker of the generation joins, cuts over (nothing left to rebuild) and scores
        # live; the helper, still in the group, stops at its first commit after that.
        new = worker(deployment, rules_b(tmp_path), LEADSCORE_REBUILD_PROCESSES="1").start()
        await new.wait_ready(timeout=120)
        x = await active_since(deployment, b.version)
        # New leads, after the cutover in event time too: what they do is the live
        # generation's alone (no cooling at the cutover involved).
        push = [{"event_id": f"push-{i}-{t}", "lead_id": f"new-{i}", "type": t,
                 "ts": format_ts(x + 1000 + i)}
                for i in range(40) for t in ("demo_request", "add_to_cart", "form_submit")]
        await deployment.produce(keyed(push))
        assert await asyncio.wait_for(helper.wait(), 60) == 0
        await assert_exact(deployment, push, b, x)
    finally:
        await helpers.stop()

    # Every pushed event scored live exactly once, by the worker.
    pushed = {e["event_id"] for e in push}
    want = sorted((n["lead_id"], n["type"], n["event_id"]) for n in sent(push, b))
    assert want, "the push must make some leads hot"

    def live(records: list[Any]) -> list[tuple[str, str, str]]:
        return sorted((n["lead_id"], n["type"], n["event_id"])
                      for n in map(lambda r: orjson.loads(r.value), records)
                      if n["event_id"] in pushed)
    records = await deployment.read_all(deployment.hot, lambda rs: len(live(rs)) >= len(want))
    assert live(records) == want
