"""Generations in a real Redis (docs/generations.md): a rebuild sends nothing, the
cutover is exact against offline replays of both rulesets, a fenced shard holds the
old generation's writes, a cutover killed half-way is finished by the next attempt
with every notification once, and the old generation learns it was replaced from its
next commit."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
from typing import Any

import orjson
import pytest
from helpers import DAY, HOUR, T0, ev, fresh, rules
from redis.asyncio import Redis, RedisCluster
from worker import LEADSCORE

from scoring.engine import hot_at
from scoring.errors import HandingOver, Superseded
from scoring.events import Event, format_ts
from scoring.rules import Ruleset
from scoring.store import MemoryStore, RedisStore
from scoring.store.commit import fence_value
from scoring.store.generations import (
    FENCE,
    Cutover,
    delete_generation,
    lag,
    registry,
)
from streams.generations import Rebuild
from streams.health import Health
from streams.runtime import now_ms
from streams.settings import Settings

pytestmark = pytest.mark.integration

OLD = rules("""
engagement:
  - {id: demo, event: demo_request, points: 50}
  - {id: visit, event: page_view, points: 10}
""", half_life="7d")
# A webinar counts, a visit less, a demo less: some leads turn hot under NEW only,
# some only under OLD, some under both.
NEW = rules("""
engagement:
  - {id: demo, event: demo_request, points: 40}
  - {id: visit, event: page_view, points: 4}
  - {id: webinar, event: webinar_attended, points: 45}
""", half_life="7d")


def history_of(seed: int, leads: int = 60, events: int = 900) -> list[Event]:
    """Events of many leads over three weeks, in time order."""
    rng = random.Random(seed)
    out = []
    for i in range(events):
        lead = f"lead-{rng.randrange(leads)}"
        kind = rng.choice(["page_view"] * 6 + ["demo_request", "webinar_attended"])
        out.append(ev(f"e{i}", kind, T0 + i * 21 * DAY // events, lead=lead))
    return out


def offline(events: list[Event], ruleset: Ruleset, at: int) -> MemoryStore:
    store = MemoryStore(ruleset, history_size=0)
    store.apply_now(events)
    store.sweep_now(at)
    return store


async def no_wait() -> None:
    await asyncio.sleep(0.01)


def positions(events: list[Event], start: int = 0) -> list[tuple[int, int]]:
    return [(0, start + i) for i in range(len(events))]


async def stores(redis: Any, shards: int = 3) -> tuple[RedisStore, RedisStore]:
    prefix = fresh("test-gen")
    old = RedisStore(redis, OLD, prefix, shards=shards, history_size=5)
    new = RedisStore(redis, NEW, prefix, shards=shards, history_size=5)
    await old.open()
    await new.open()
    return old, new


async def test_a_new_generation_rebuilds_silently_then_cuts_over_exactly(
        redis_url: str) -> None:
    async with Redis.from_url(redis_url) as redis:
        await rebuild_and_cut_over(redis, shards=3)


async def test_the_cutover_on_a_three_master_cluster(redis_cluster_url: str) -> None:
    """Every script stays in one slot: a shard's keys of both generations and its
    active key share the hash tag {n}; the counters' SCAN visits every master."""
    url = redis_cluster_url.replace("redis+cluster://", "redis://")
    async with RedisCluster.from_url(url) as redis:
        await rebuild_and_cut_over(redis, shards=8)


async def rebuild_and_cut_over(redis: Any, shards: int) -> None:
    events = history_of(1)
    at = events[-1].ts + HOUR
    old, new = await stores(redis, shards)
    assert old.active and not new.active and new.active_shards == set()
    sent = (await old.apply(events[:600], at, positions(events[:600]))).entries
    rebuilt = await new.apply(events[:600], at, positions(events[:600]))
    assert sent and rebuilt.entries == [] and rebuilt.notifications == []
    assert (await lag(new, old.generation)).caught_up  # (so far)
    # OLD goes on live while NEW catches up; NEW's second half is one batch.
    sent += (await old.apply(events[600:], at, positions(events[600:], 600))).entries
    assert (await lag(new, old.generation)).behind > 0
    await new.apply(events[600:], at, positions(events[600:], 600))
    assert (await lag(new, old.generation)).caught_up

    done = await Cutover(new, old.generation, OLD, lambda: at).run(no_wait)
    assert done is not None
    cut_at, entries = done
    assert cut_at == at and new.active
    # Exactly the leads whose hot flag at X differs between offline OLD and NEW.
    was, now = offline(events, OLD, at), offline(events, NEW, at)
    expected = {lead: now.states()[lead].hot for lead in now.states()
                if now.states()[lead].hot != was.states()[lead].hot}
    notes = [orjson.loads(e) for e in entries if orjson.loads(e)["cause"] == "rescore"]
    assert {n["lead_id"]: n["type"] == "lead.hot" for n in notes} == expected
    assert len(notes) == len(expected) > 0
    assert {n["event_ts"] for n in notes} == {format_ts(at)}
    assert {n["event_id"] for n in notes} == {None}
    assert {n["rules_version"] for n in notes} == {NEW.version}
    # And the lead.cooled OLD owed and never sent (no sweep ran): a cooling due by X.
    live_old = {lead: (await old.load(lead)) for lead in was.states()}
    owed = sorted(lead for lead, found in live_old.items()
                  if found and found[0].hot and not hot_at(found[0], at, OLD))
    decayed = [orjson.loads(e) for e in entries if orjson.loads(e)["cause"] == "decay"]
    assert sorted(n["lead_id"] for n in decayed) == owed
    assert {(n["type"], n["rules_version"]) for n in decayed} <= {("lead.cooled", OLD.version)}
    assert len(entries) == len(notes) + len(decayed)
    # Every lead's state is offline NEW's at X; ids continue past both counters.
    sent_ids = {orjson.loads(e)["notification_id"] for e in sent}
    for lead, state in now.states().items():
        loaded = await new.load(lead)
        assert loaded is not None
        mine = loaded[0]
        assert (mine.engagement, mine.fit, mine.t_ref, mine.stage, mine.hot) == (
            state.engagement, state.fit, state.t_ref, state.stage, state.hot), lead
        old_state = await old.load(lead)
        assert old_state is not None  # (ids sent by OLD: its own counter, unswept)
        assert mine.notified >= max(state.notified, old_state[0].notified)
    assert not sent_ids & {n["notification_id"] for n in notes}
    # The registry says so; OLD learns it from its next commit and sends nothing.
    generations = await registry(redis, new.keys.prefix)
    assert [(g.version, g.active) for g in generations] == [
        (NEW.version, True), (OLD.version, False)]
    assert generations[0].activated_at == at == generations[1].deactivated_at
    late = [ev("late-1", "demo_request", at + HOUR, lead="lead-1")]
    with pytest.raises(Superseded, match=f"generation {OLD.version} .* is no longer "
                                         f"active: generation {NEW.version} is"):
        await old.apply(late, at + HOUR, [(0, 900)])
    live = await new.apply(late, at + HOUR, [(0, 900)])
    assert live.applied == 1


async def test_a_fence_holds_the_old_generation_until_its_deadline(redis_url: str) -> None:
    async with Redis.from_url(redis_url) as redis:
        old, new = await stores(redis, shards=1)
        shard = old.keys.shards[0]
        fence = fence_value(T0 + 1000, old.generation, new.generation)
        assert await redis.eval(FENCE, 1, shard.active, old.generation, fence,
                                new.generation) == 1
        with pytest.raises(HandingOver, match="shard 0 is fenced for a cutover"):
            await old.apply([ev("a", "page_view", T0)], T0 + 999, [(0, 0)])
        # Past the deadline the fence no longer holds: OLD writes again (and a cutover
        # that read OLD's progress before will see it moved).
        outcome = await old.apply([ev("a", "page_view", T0)], T0 + 1001, [(0, 0)])
        assert outcome.applied == 1
        assert (await old.progress())[0] == {0: 1}


async def test_a_cutover_killed_half_way_is_finished_once_by_the_next(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    events = history_of(2)
    at = events[-1].ts + HOUR
    async with Redis.from_url(redis_url) as redis:
        old, new = await stores(redis, shards=3)
        await old.apply(events, at, positions(events))
        await new.apply(events, at, positions(events))
        flips = 0
        real = Cutover._flip

        async def dies_after_one(self: Cutover, *args: Any) -> list[bytes]:
            nonlocal flips
            if flips == 1:
                raise KeyboardInterrupt("killed")  # the process dies here
            flips += 1
            return await real(self, *args)

        monkeypatch.setattr(Cutover, "_flip", dies_after_one)
        with pytest.raises(KeyboardInterrupt):
            await Cutover(new, old.generation, OLD, lambda: at).run(no_wait)
        monkeypatch.setattr(Cutover, "_flip", real)
        assert new.active_shards == {0}
        first = [orjson.loads(e) for e in await new.pending()]  # shard 0's, in its outbox
        # A restarted worker finishes the job: the shards left get theirs, once.
        restarted = RedisStore(redis, NEW, new.keys.prefix, shards=3, history_size=5)
        await restarted.open()
        assert restarted.active_shards == {0}
        done = await Cutover(restarted, old.generation, OLD, lambda: at).run(no_wait)
        assert done is not None and restarted.active
        notes = [n for n in first + [orjson.loads(e) for e in done[1]]
                 if n["cause"] == "rescore"]
        was, now = offline(events, OLD, at), offline(events, NEW, at)
        expected = sorted(lead for lead, s in now.states().items()
                          if s.hot != was.states()[lead].hot)
        assert sorted(n["lead_id"] for n in notes) == expected


async def test_a_rebuild_that_cannot_catch_up_gives_the_shards_back(redis_url: str) -> None:
    """NEW is far behind: the fence expires unused, OLD is never held for longer."""
    events = history_of(3, events=100)
    async with Redis.from_url(redis_url) as redis:
        old, new = await stores(redis, shards=2)
        await old.apply(events, T0, positions(events))
        clock = iter(range(T0, T0 + 10**9, 10_000))  # each look at the clock: 10 s later
        assert await Cutover(new, old.generation, OLD, lambda: next(clock)).run(no_wait) is None
        assert [await redis.get(s.active) for s in old.keys.shards] == [
            old.generation.encode()] * 2
        assert old.active and (await old.apply(events[:1], T0, [(0, 100)])).replayed == 0


async def test_old_generations_are_deleted_key_by_key(redis_url: str) -> None:
    events = history_of(4, events=200)
    async with Redis.from_url(redis_url) as redis:
        old, new = await stores(redis, shards=2)
        await old.apply(events, T0, positions(events))
        before = [k async for k in redis.scan_iter(f"{old.keys.root}:*")]
        assert len(before) > 100
        deleted = await delete_generation(redis, old.keys.prefix, old.generation, step=7)
        assert deleted == len(before)
        assert [k async for k in redis.scan_iter(f"{old.keys.root}:*")] == []
        assert [g.version for g in await registry(redis, old.keys.prefix)] == [new.generation]


def test_hot_at_counts_a_cooling_due_by_then_as_done() -> None:
    """70 points at T0 with a 7-day half-life fall below 50 after 7d * log2(1.4), 3.40
    days: hot then, not after, whether or not a sweep has run."""
    state = offline([ev("d", "demo_request", T0), ev("v", "page_view", T0),
                     ev("w", "page_view", T0)], OLD, T0).states()["lead-1"]
    assert state.hot
    assert hot_at(state, T0 + 3 * DAY, OLD) and not hot_at(state, T0 + 4 * DAY, OLD)
    assert hot_at(state, T0 - DAY, OLD)  # (before T: as of T)


async def test_a_rebuilding_worker_says_how_far_it_got(redis_url: str) -> None:
    """/readyz and ``leadscore rules status`` report the rebuild: events applied against
    the active generation's, per partition, and the worker stays unready."""
    events = history_of(5, events=900)
    async with Redis.from_url(redis_url) as redis:
        old, new = await stores(redis, shards=2)
        await old.apply(events, T0, [(i % 2, i // 2) for i in range(900)])
        await new.apply(events[:600], T0, [(i % 2, i // 2) for i in range(600)])
        settings = Settings(key_prefix=old.keys.prefix, rebuild_batch_size=1, rebuild_processes=1,
                            redis_url=redis_url)  # type: ignore[arg-type]
        rebuild = Rebuild(settings, new, None, Health(60))  # type: ignore[arg-type]
        await rebuild.tick()
        assert rebuild.problems() == [
            f"rebuilding: 600 of 900 events (66.7%) under rules {NEW.version}; "
            f"generation {OLD.version} is active"]
        assert Rebuild(settings, old, None, Health(60)).problems() == []  # type: ignore[arg-type]
        shown = subprocess.run(
            [LEADSCORE, "rules", "status"], capture_output=True, text=True, check=False,
            env={**os.environ, "LEADSCORE_REDIS_URL": redis_url, "COLUMNS": "200",
                 "LEADSCORE_KEY_PREFIX": old.keys.prefix})
        assert shown.returncode == 0, shown.stderr
        rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
                for line in shown.stdout.splitlines() if line.count("│") > 3}
        assert rows[OLD.version][:2] == ["test", "active"]
        assert rows[NEW.version][:4] == ["test", "rebuilding", "600 of 900", "0: 150, 1: 150"]


async def test_the_active_generation_deletes_those_kept_past_the_window(
        redis_url: str) -> None:
    """LEADSCORE_GENERATION_KEEP after it stopped being active (and had no live worker),
    a generation is deleted by the active one's workers; inside the window it is kept,
    for a rollback."""
    events = history_of(6, events=300)
    async with Redis.from_url(redis_url) as redis:
        old, new = await stores(redis, shards=2)
        await old.apply(events, T0, positions(events))
        await new.apply(events, T0, positions(events))
        assert await Cutover(new, old.generation, OLD, now_ms).run(no_wait) is not None
        prefix = old.keys.prefix

        def settings(keep: str) -> Settings:
            return Settings(key_prefix=prefix, generation_keep=keep)  # type: ignore[arg-type]
        await Rebuild(settings("1h"), new, None, Health(60)).clean()  # type: ignore[arg-type]
        assert [g.version for g in await registry(redis, prefix)] == [NEW.version, OLD.version]
        assert [k async for k in redis.scan_iter(f"{old.keys.root}:*")] != []
        await Rebuild(settings("0"), new, None, Health(60)).clean()  # type: ignore[arg-type]
        assert [g.version for g in await registry(redis, prefix)] == [NEW.version]
        assert [k async for k in redis.scan_iter(f"{old.keys.root}:*")] == []
        # Nothing of the active one is touched.
        assert (await new.load("lead-1")) is not None
