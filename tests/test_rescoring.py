"""A rules change in production, through real ``leadscore worker`` processes (SPEC 8):
rebuild, cutover, rescore notifications, rollback, and restarts that change settings
only; then the same with workers SIGKILLed during the rebuild and at the cutover."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import live
from redis.asyncio import Redis
from worker import Deployment, Worker, keyed, wait_for

from scoring.engine import LeadState, Notification
from scoring.events import event_from_dict, format_ts
from scoring.rules import Ruleset, load_rules
from scoring.store import MemoryStore
from scoring.store.generations import registry
from streams.demo import Traffic

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
RULES_A = ROOT / "config" / "rules.yaml"
START = 1_793_577_600_000  # 2026-11-02T00:00:00Z
DAY = 86_400_000


def rules_b(tmp: Path) -> Path:
    """The default rules with a lower bar, and a higher one for the first score group:
    leads between the bars change, for themselves and for the group (SPEC 10)."""
    original = RULES_A.read_text()
    text = original.replace("hot: {threshold: 70, rearm_below: 50}",
                            "hot: {threshold: 55, rearm_below: 40}")
    group_bar = load_rules(RULES_A).alerting[0]
    old_bar = f"hot: {{threshold: {group_bar.threshold:g}, rearm_below: " \
              f"{group_bar.rearm_below:g}}}"
    assert text.count(old_bar) >= 1, "the default rules' first group sets its own bar"
    text = text.replace(old_bar, f"hot: {{threshold: {group_bar.threshold + 10:g}, "
                                 f"rearm_below: {group_bar.rearm_below:g}}}", 1)
    assert text != original
    path = tmp / "rules-b.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def deployment(bootstrap: str, redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(bootstrap, redis_url, RULES_A, tmp_path, partitions=3,
                            rebuild_batch_size="200")
    yield deployment
    deployment.stop_all()


def worker(deployment: Deployment, rules: Path, **env: str) -> Worker:
    started = deployment.worker()
    started.env.update({"LEADSCORE_RULES": str(rules), **env})
    return started


async def first_generation(deployment: Deployment, history: list[dict[str, Any]]) -> Worker:
    """A worker of rules A that has applied ``history`` (the active generation)."""
    old = worker(deployment, RULES_A).start()
    await wait_for(lambda: old.metric("leadscore_events_consumed_total") == len(history), 120,
                   f"A never applied the history; log:\n{old.log_tail()}")
    return old


def offline(events: list[dict[str, Any]], rules: Ruleset, at: int) -> MemoryStore:
    store = MemoryStore(rules, history_size=0)
    store.apply_now([event_from_dict(e) for e in events])
    store.sweep_now(at)
    return store


def sent(events: list[dict[str, Any]], rules: Ruleset) -> list[Notification]:
    """The notifications a live generation sends for ``events`` (no sweep runs)."""
    return MemoryStore(rules, history_size=0).apply_now(
        [event_from_dict(e) for e in events]).notifications


def scored(state: LeadState | None) -> tuple[Any, ...] | None:
    """What a re-score must reproduce exactly (the counter carries over instead)."""
    if state is None:
        return None
    return (state.t_ref, state.engagement, state.fit, state.contributions, state.profile,
            state.stage, state.hot, state.counts, state.windows, state.groups_hot)


async def notes(deployment: Deployment, count: int) -> list[Notification]:
    records = await deployment.read_all(deployment.hot, lambda rs: len(rs) >= count)
    return [orjson.loads(r.value) for r in records]


async def active_since(deployment: Deployment, version: str) -> int:
    async with Redis.from_url(deployment.redis_url) as redis:
        for generation in await registry(redis, deployment.prefix):
            if generation.version == version and generation.active:
                assert generation.activated_at is not None
                return generation.activated_at
    raise AssertionError(f"generation {version} is not active")


async def assert_exact(deployment: Deployment, events: list[dict[str, Any]], rules: Ruleset,
                       at: int) -> None:
    """Every lead's state is ``leadscore score --rules RULES --at X`` of the events
    (once the worker has applied them all)."""
    want = {lead: scored(live(s, rules)) for lead, s in
            offline(events, rules, at).states().items()}
    got: dict[str, Any] = {}

    async def same() -> bool:
        got.update({lead: scored(s) for lead, s in
                    (await deployment.states(rules, sorted(want))).items()})
        return got == want
    try:
        await wait_for(same, 60, "")
    except AssertionError:
        assert got == want


def rescored(before: MemoryStore, after: MemoryStore) -> dict[tuple[str, str | None], str]:
    """(lead, group) -> the rescore notification owed: the hot flags, the lead's own
    (group None) or a score group's, differ at the cutover."""
    old, new = before.states(), after.states()
    owed: dict[tuple[str, str | None], str] = {
        (lead, None): "lead.hot" if state.hot else "lead.cooled"
        for lead, state in new.items() if state.hot != old[lead].hot}
    for lead, state in new.items():
        for group in set(state.groups_hot) ^ set(old[lead].groups_hot):
            owed[lead, group] = "lead.hot" if group in state.groups_hot else "lead.cooled"
    return owed


def keyed_by_group(notes: list[Notification]) -> dict[tuple[str, str | None], str]:
    return {(n["lead_id"], n["group"]): n["type"] for n in notes}


def decayed_by(events: list[dict[str, Any]], rules: Ruleset, x: int
               ) -> set[tuple[str, str | None]]:
    """(lead, group) of the coolings by decay a live generation of ``rules`` owes by ``x``
    for ``events`` (its sweep not yet run)."""
    store = MemoryStore(rules, history_size=0)
    store.apply_now([event_from_dict(e) for e in events])
    return {(n["lead_id"], n["group"]) for n in store.sweep_now(x)}


async def test_a_rules_change_rebuilds_cuts_over_once_and_rolls_back(
        deployment: Deployment, tmp_path: Path) -> None:
    await deployment.create_topics()
    a, b = load_rules(RULES_A), load_rules(rules_b(tmp_path))
    history = list(Traffic(40, seed=11).history(900, START, 12 * DAY))
    await deployment.produce(keyed(history))
    old = worker(deployment, RULES_A).start()
    await old.wait_ready()
    await wait_for(lambda: old.metric("leadscore_events_consumed_total") == len(history), 90,
                   f"A never applied the history; log:\n{old.log_tail()}")
    by_a = {n["notification_id"] for n in sent(history, a)}

    # B rebuilds beside A, which keeps scoring; B is not ready until it is active.
    new = worker(deployment, rules_b(tmp_path)).start()
    cold = [{"event_id": f"v{i}", "lead_id": f"visitor-{i}", "type": "page_view",
             "ts": format_ts(START + 12 * DAY + i), "properties": {"url": "/blog"}}
            for i in range(30)]
    await deployment.produce(keyed(cold))
    await new.wait_ready(timeout=120)
    events = history + cold
    x = await active_since(deployment, b.version)
    assert new.metric("leadscore_cutovers_total") == 1
    await assert_exact(deployment, events, b, x)

    # Exactly one rescore notification per lead whose hot flag differs at X; and the
    # lead.cooled A owed (due by X, not yet sent: A's sweep runs hourly here), once.
    owed = rescored(offline(events, a, x), offline(events, b, x))
    assert any(group is None for _, group in owed), "the change must move leads' own flags"
    assert any(group is not None for _, group in owed), "and a group's flags"
    decayed = decayed_by(events, a, x)
    everything = [orjson.loads(r.value) for r in await deployment.read_all(
        deployment.hot, lambda rs: sum(orjson.loads(r.value)["cause"] != "event" for r in rs)
        >= len(owed) + len(decayed))]
    rescores = [n for n in everything if n["cause"] == "rescore"]
    assert keyed_by_group(rescores) == owed
    assert len(rescores) == len(owed)
    assert {(n["rules_version"], n["event_ts"], n["event_id"]) for n in rescores} == {
        (b.version, format_ts(x), None)}

    # After the cutover B scores and notifies; A, still running, sends nothing more.
    lead = "visitor-0"
    push = [{"event_id": f"push-{i}", "lead_id": lead, "type": "demo_request",
             "ts": format_ts(START + 12 * DAY + DAY + i)} for i in range(2)]
    want = [(n["type"], n["event_id"]) for n in sent(events + push, b)
            if n["lead_id"] == lead]
    assert want, "the push must make the lead hot under B"
    await deployment.produce(keyed(push))
    everything = await notes(deployment, len(everything) + len(want))
    after = [n for n in everything if n["lead_id"] == lead and n["cause"] == "event"]
    assert [(n["type"], n["event_id"]) for n in after] == want
    assert {n["rules_version"] for n in after} == {b.version}
    await wait_for(lambda: b"is no longer active" in old.get("/readyz")[1], 60,
                   f"A did not stop; log:\n{old.log_tail()}")
    from_a = [n for n in everything if n["rules_version"] == a.version]
    assert {n["notification_id"] for n in from_a if n["cause"] == "event"} == by_a
    assert sorted((n["lead_id"], n["group"] or "") for n in from_a if n["cause"] == "decay"
                  ) == sorted((lead, group or "") for lead, group in decayed)
    assert len(from_a) == len(by_a) + len(decayed)
    ids: dict[str, Notification] = {}
    for n in everything:
        assert ids.setdefault(n["notification_id"], n) == n, "an id was used twice"

    # Rollback: A's generation is kept, so it only catches up (the push), then cuts over.
    old.kill()
    back = worker(deployment, RULES_A).start()
    await back.wait_ready(timeout=120)
    assert back.metric("leadscore_events_consumed_total") == len(push)
    x2 = await active_since(deployment, a.version)
    await assert_exact(deployment, events + push, a, x2)
    owed_back = rescored(offline(events + push, b, x2), offline(events + push, a, x2))

    def back_to_a(records: list[Any]) -> dict[tuple[str, str | None], str]:
        return keyed_by_group([n for n in map(lambda r: orjson.loads(r.value), records)
                               if n["cause"] == "rescore" and n["rules_version"] == a.version])
    records = await deployment.read_all(deployment.hot,
                                        lambda rs: back_to_a(rs).keys() >= owed_back.keys())
    assert back_to_a(records) == owed_back

    # A restart that changes settings only is the same generation: nothing to rebuild.
    back.kill()
    new.kill()
    same = worker(deployment, RULES_A, LEADSCORE_BATCH_SIZE="7").start()
    await same.wait_ready()
    assert same.metric("leadscore_cutovers_total") == 0
    assert same.metric("leadscore_rebuild_events_total") == 0
    assert await active_since(deployment, a.version) == x2


async def test_workers_killed_during_the_rebuild_and_at_the_cutover_lose_nothing(
        deployment: Deployment, tmp_path: Path) -> None:
    """Two workers for B on three partitions; one SIGKILLed mid-rebuild, then the one
    running the cutover SIGKILLed as soon as it fences the first shard. Every lead's
    state is then exactly B's, and each owed rescore notification is on the topic
    (repeats only as the same notification)."""
    await deployment.create_topics()
    a, b = load_rules(RULES_A), load_rules(rules_b(tmp_path))
    history = list(Traffic(60, seed=12).history(1200, START, 12 * DAY))
    await deployment.produce(keyed(history))
    old = await first_generation(deployment, history)
    old.kill()  # (a rolling update: A's pods go once B is ready; here, before)
    # As a worker of A killed between its commit and the send leaves it: a notification
    # in A's outbox that nobody of A will re-send now. The cutover sends it.
    orphan = {**sent(history, a)[0], "notification_id": "orphan:1", "lead_id": "orphan",
              "emitted_at": "2026-11-20T00:00:00Z"}
    async with Redis.from_url(deployment.redis_url) as redis:
        await redis.zadd(f"{deployment.prefix}:{a.version}:{{0}}:outbox",
                         {orjson.dumps(orphan): 1})
    # One process each (no rebuild helpers: tests/test_rebuilders.py), so that the first
    # worker surely has partitions to rebuild when it is killed.
    slow = {"LEADSCORE_REBUILD_BATCH_SIZE": "20", "LEADSCORE_REBUILD_PROCESSES": "1"}
    first, second = worker(deployment, rules_b(tmp_path), **slow).start(), \
        worker(deployment, rules_b(tmp_path), **slow).start()
    await wait_for(lambda: first.metric("leadscore_rebuild_events_total") > 0, 90,
                   f"no rebuild; log:\n{first.log_tail()}")
    first.kill()
    async with Redis.from_url(deployment.redis_url) as redis:
        shard = f"{deployment.prefix}:{{0}}:active"
        deadline = asyncio.get_running_loop().time() + 120
        while not (await redis.get(shard) or b"").startswith(b"fence:"):  # (a tight poll:
            assert asyncio.get_running_loop().time() < deadline, second.log_tail()  # the
        second.kill()  # fence stands for milliseconds)
        left = [await redis.get(f"{deployment.prefix}:{{{n}}}:active") for n in range(4)]
        assert any(value != b.version.encode() for value in left), (
            "the cutover had finished before the kill", left)
    third = worker(deployment, rules_b(tmp_path)).start()
    await third.wait_ready(timeout=120)
    x = await active_since(deployment, b.version)
    await assert_exact(deployment, history, b, x)
    owed = rescored(offline(history, a, x), offline(history, b, x))
    everything = await deployment.read_all(
        deployment.hot, lambda rs: set(keyed_by_group(
            [n for n in map(lambda r: orjson.loads(r.value), rs) if n["cause"] == "rescore"]))
        >= set(owed) and any(r.key == b"orphan" for r in rs))
    ids: dict[str, bytes] = {}
    for record in everything:
        assert ids.setdefault(orjson.loads(record.value)["notification_id"],
                              record.value) == record.value
    rescores = keyed_by_group([orjson.loads(raw) for raw in ids.values()
                               if orjson.loads(raw)["cause"] == "rescore"])
    assert rescores == owed
    assert orjson.loads(ids["orphan:1"]) == orphan
