"""The Redis store against a real Redis-compatible server: it must agree with the
offline engine exactly, also when two workers apply the same batches at once."""

from __future__ import annotations

import asyncio
import copy
import itertools
import re
from collections.abc import Coroutine
from typing import Any

import orjson
import pytest
from helpers import DAY, HOUR, T0, ev, fresh, live, rules
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from scoring import history
from scoring.engine import (
    LeadState,
    Notification,
    apply,
    cool,
    cooling_due,
    engagement_at,
    score_at,
)
from scoring.errors import LeadscoreError
from scoring.events import Event
from scoring.store import RedisStore, record

pytestmark = pytest.mark.integration

RULES = rules("""
dedupe_window: 2d
fit:
  - {id: ceo, if: {title: CEO}, points: 30}
engagement:
  - {id: visit, event: page_view, points: 5}
  - {id: pricing, event: page_view, if: {url: /pricing}, points: 20, limit: {points: 30, per: 1d}}
  - {id: demo, event: demo_request, points: 45}
  - {id: workshops, event: workshop_attended, points: 25, after: 2}
  - {id: unsub, event: email_unsubscribed, points: -40}
""", "1d")
KINDS = ["page_view", "demo_request", "workshop_attended", "email_unsubscribed",
         "profile_update", "form_submit", "converted"]


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Hypothesis drives sync tests; each example gets its own short event loop."""
    return asyncio.run(coro)


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    """Events for three leads: out of order, repeated, over a few half-lives."""
    events: list[Event] = []
    for i in range(draw(st.integers(min_value=1, max_value=40))):
        lead = draw(st.sampled_from(["a", "b", "c"]))
        kind = draw(st.sampled_from(KINDS))
        ts = T0 + draw(st.integers(min_value=0, max_value=5 * DAY))
        props: dict[str, Any] = {}
        if kind == "page_view":
            props = {"url": draw(st.sampled_from(["/", "/pricing"]))}
        elif kind == "profile_update":
            props = {"title": draw(st.sampled_from(["CEO", None]))}
        if events and draw(st.integers(min_value=0, max_value=9)) == 0:
            events.append(draw(st.sampled_from(events)))  # a re-delivery
        else:
            events.append(Event(f"{lead}-{i}", lead, kind, ts, props))
    return events


def offline(events: list[Event], entries: dict[str, list[Any]] | None = None
            ) -> tuple[dict[str, LeadState], dict[str, list[Notification]]]:
    """The engine applied in order; with ``entries``, each lead's history is collected."""
    states: dict[str, LeadState] = {}
    notes: dict[str, list[Notification]] = {}
    for event in events:
        state = states.setdefault(event.lead_id, LeadState(event.lead_id))
        stage, fit = state.stage, state.fit
        applied = apply(state, event, RULES)
        notes.setdefault(event.lead_id, []).extend(applied.notifications)
        if entries is not None and not applied.duplicate:
            entries.setdefault(event.lead_id, []).extend(
                history.entries(state, event, applied, stage, fit, RULES))
    return states, notes


def ranked(states: dict[str, LeadState], at: int, limit: int, hot: bool | None = None
           ) -> list[tuple[str, float]]:
    """The top of the lead index worked out by brute force: every lead's score at ``at``."""
    scores = []
    for state in states.values():
        state = copy.deepcopy(state)
        cool(state, at, RULES)
        if hot is None or state.hot == hot:
            raw = state.fit + engagement_at(state, at, RULES)  # orders leads clamped alike
            scores.append((score_at(state, at, RULES), raw, state.lead_id))
    scores.sort(key=lambda s: (-s[0], -s[1], s[2]))
    return [(lead, round(score, 2)) for score, _, lead in scores[:limit]]


def batches(events: list[Event], cuts: list[int]) -> list[list[Event]]:
    bounds = sorted({0, len(events), *(c % (len(events) + 1) for c in cuts)})
    return [events[a:b] for a, b in itertools.pairwise(bounds)]


async def outbox_by_lead(redis: Redis, store: RedisStore) -> dict[str, list[Notification]]:
    found: dict[str, list[Notification]] = {}
    for raw in await store.pending():
        note = orjson.loads(raw)
        assert note.pop("emitted_at") == "2026-11-06T00:00:00Z"
        found.setdefault(note["lead_id"], []).append(note)
    for notes in found.values():
        notes.sort(key=lambda n: int(n["notification_id"].rsplit(":", 1)[1]))
    return found


async def stored_states(store: RedisStore, leads: list[str]) -> dict[str, LeadState]:
    out = {}
    for lead in leads:
        loaded = await store.load(lead)
        assert loaded is not None
        out[lead] = loaded[0]
    return out


def expected_outbox(notes: dict[str, list[Notification]]) -> dict[str, list[Notification]]:
    return {lead: [{k: v for k, v in n.items() if k != "emitted_at"} for n in ns]
            for lead, ns in notes.items() if ns}


async def assert_matches_offline(store: RedisStore, redis: Any, events: list[Event],
                                 entries: dict[str, list[Any]] | None = None
                                 ) -> dict[str, LeadState]:
    """Redis holds exactly the offline engine's states and outbox; returns the states."""
    want_states, want_notes = offline(events, entries)
    assert await stored_states(store, sorted(want_states)) == {
        lead: live(state, RULES) for lead, state in want_states.items()}
    assert await outbox_by_lead(redis, store) == expected_outbox(want_notes)
    return want_states


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(min_value=0, max_value=100), max_size=6),
       st.sampled_from([1, 3]))
def test_the_store_agrees_with_the_offline_engine(redis_url: str, events: list[Event],
                                                  cuts: list[int], shards: int) -> None:
    async def scenario() -> None:
        async with Redis.from_url(redis_url) as redis:
            store = RedisStore(redis, RULES, prefix=fresh("test-store"),
                              history_size=4, shards=shards)
            for batch in batches(events, cuts):
                await store.apply(batch, now_ms=T0)
            entries: dict[str, list[Any]] = {}
            want_states = await assert_matches_offline(store, redis, events, entries)
            for lead in want_states:
                assert await store.history(lead, 50) == [
                    history.view(entry) for entry in reversed(entries.get(lead, [])[-4:])]
            # The index answers "top N now" as brute force over every lead does, at
            # instants that reorder leads of different fit.
            for at in (T0 + 5 * DAY, T0 + 9 * DAY, T0 + 40 * DAY):
                for limit in (1, 2, 3):
                    for hot in (None, True, False):
                        group = "hot" if hot else "all"
                        found = await store.top(at, limit, group, None if hot is None else
                                                lambda v, hot=hot: v["hot"] == hot)
                        assert [(v["lead_id"], v["score"]) for v in found] == \
                            ranked(want_states, at, limit, hot)

    run_async(scenario())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.sampled_from([1, 3]))
def test_the_index_is_exact_for_leads_dated_ahead_of_now(redis_url: str, events: list[Event],
                                                         shards: int) -> None:
    """Leads whose last event is later than "now" (up to LEADSCORE_MAX_CLOCK_SKEW ahead of
    the worker's clock) hold their engagement until then, while their keys read as if it
    had grown back: the top N is still brute force's, for positive and negative scores."""
    async def scenario() -> None:
        async with Redis.from_url(redis_url) as redis:
            store = RedisStore(redis, RULES, prefix=fresh("test-store"),
                              shards=shards)
            await store.apply(events, now_ms=T0)
            states, _ = offline(events)
            for at in (T0 + HOUR, T0 + DAY, T0 + 2 * DAY + 7, T0 + 4 * DAY):
                for limit in (1, 2, 3):
                    found = await store.top(at, limit, ahead_ms=5 * DAY)
                    assert [(v["lead_id"], v["score"]) for v in found] == \
                        ranked(states, at, limit)

    run_async(scenario())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(min_value=0, max_value=100), max_size=6))
def test_two_workers_applying_the_same_batches_at_once_apply_each_event_once(
        redis_url: str, events: list[Event], cuts: list[int]) -> None:
    async def scenario() -> None:
        async with Redis.from_url(redis_url) as one, Redis.from_url(redis_url) as two:
            prefix = fresh("test-store")
            first, second = RedisStore(one, RULES, prefix), RedisStore(two, RULES, prefix)
            # Both read the same records of one partition, as during a rebalance.
            positions = [(0, offset) for offset in range(len(events))]
            start = 0
            for batch in batches(events, cuts):
                at = positions[start:start + len(batch)]
                start += len(batch)
                await asyncio.gather(first.apply(batch, T0, at), second.apply(batch, T0, at))
            await assert_matches_offline(first, one, events)

    run_async(scenario())


async def test_writers_racing_on_the_same_leads_lose_no_update(redis_url: str) -> None:
    """Four stores apply different events to the same leads at once: each reads the
    leads before any writes, so all but one commit on stale states. Those must be
    refused and re-applied, not written over each other."""
    stores = [RedisStore(Redis.from_url(redis_url), RULES, prefix) for prefix in
              [fresh("test-store")] * 4]
    try:
        for round_ in range(3):
            await asyncio.gather(*(
                store.apply([ev(f"v{round_}-{n}-{lead}", "page_view", T0, lead=lead)
                             for lead in "abc"], now_ms=T0)
                for n, store in enumerate(stores)))
        for lead in "abc":
            loaded = await stores[0].load(lead)
            assert loaded is not None
            assert (loaded[0].engagement, len(loaded[0].seen)) == (4 * 3 * 5.0, 12)
            assert len(await stores[0].history(lead, 50)) == 12
    finally:
        for store in stores:
            await store.redis.aclose()


async def test_a_batch_of_more_leads_than_lua_can_unpack_at_once_is_written(
        redis_url: str) -> None:
    """9,000 new leads in one batch: 18,000 values for one ranking's ZADD, more than a
    Lua unpack() takes (~8,000); the commit slices them (LEADSCORE_BATCH_SIZE allows
    100,000)."""
    async with Redis.from_url(redis_url) as redis:
        store = RedisStore(redis, RULES, prefix=fresh("test-store"))
        leads = [f"l{n:05}" for n in range(9000)]
        outcome = await store.apply([ev(f"d-{lead}", "demo_request", T0, lead=lead)
                                     for lead in leads], now_ms=T0)
        assert (outcome.applied, len(outcome.entries)) == (9000, 0)
        shard = store.keys.of(leads[0])
        assert await redis.zcard(shard.rank("stage:prospect", 0.0)) == 9000
        assert [view["lead_id"] for view in await store.top(T0, 3)] == leads[:3]
        assert await redis.exists(*(shard.ids(lead) for lead in leads)) == 9000


async def test_a_leads_event_ids_are_dropped_from_redis_once_out_of_the_window(
        redis_url: str) -> None:
    """dedupe_window 2d: ids are pruned when T crosses a mark every 6 h; then those more
    than 2 days behind T go (the rest, and the one exactly at the horizon, stay)."""
    async with Redis.from_url(redis_url) as redis:
        store = RedisStore(redis, RULES, prefix=fresh("test-store"))
        ids = store.keys.of("a").ids("a")
        for event in [ev("e1", "page_view", T0, lead="a"),
                      ev("e2", "page_view", T0 + DAY, lead="a"),
                      ev("e3", "page_view", T0 + DAY + HOUR, lead="a")]:
            await store.apply([event], now_ms=T0)
        assert await redis.zrange(ids, 0, -1) == [b"e1", b"e2", b"e3"]
        await store.apply([ev("e4", "page_view", T0 + 3 * DAY, lead="a")], now_ms=T0)
        assert await redis.zrange(ids, 0, -1, withscores=True) == [
            (b"e2", T0 + DAY), (b"e3", T0 + DAY + HOUR), (b"e4", T0 + 3 * DAY)]


async def test_the_sweep_cools_a_lead_at_its_exact_crossing_time(redis_url: str) -> None:
    async with Redis.from_url(redis_url) as redis:
        store = RedisStore(redis, RULES, prefix=fresh("test-store"))
        await store.apply([ev("p", "profile_update", T0, lead="a", title="CEO"),
                           ev("d", "demo_request", T0, lead="a")], now_ms=T0)
        loaded = await store.load("a")
        assert loaded is not None
        t_c = cooling_due(loaded[0], RULES)  # 30 + 45 * 2^(-d/1d) = 50 -> d = log2(2.25) days
        assert t_c == pytest.approx(T0 + DAY * 1.169925001442312)
        cooling = store.keys.of("a").cooling
        assert await redis.zscore(cooling, "a") == t_c

        assert await store.sweep(now_ms=int(t_c) - 1) == []
        (entry,) = await store.sweep(now_ms=T0 + 2 * DAY)
        cooled = orjson.loads(entry)
        assert {k: cooled[k] for k in ("type", "notification_id", "score", "event_id",
                                       "event_ts", "emitted_at")} == {
            "type": "lead.cooled", "notification_id": "a:2", "score": 50.0, "event_id": None,
            "event_ts": "2026-11-07T04:04:41.520Z",
            "emitted_at": "2026-11-08T00:00:00Z"}
        assert await redis.zscore(cooling, "a") is None
        assert await store.sweep(now_ms=T0 + 3 * DAY) == []


async def test_outbox_entries_stay_until_delivered(redis_url: str) -> None:
    async with Redis.from_url(redis_url) as redis:
        store = RedisStore(redis, RULES, prefix=fresh("test-store"))
        recorded = (await store.apply([ev("d1", "demo_request", T0, lead="a"),
                                       ev("d2", "demo_request", T0 + HOUR, lead="a")],
                                      now_ms=T0)).entries
        assert [orjson.loads(r)["type"] for r in recorded] == ["lead.hot"]
        (entry,) = await store.pending()
        assert entry == recorded[0]
        assert await store.outbox_size() == 1
        assert await store.pending(recorded_before_ms=T0) == []
        await store.delivered([entry])
        assert await store.pending() == []
        assert await store.outbox_size() == 0


async def test_a_shard_count_other_than_the_datas_is_refused(redis_url: str) -> None:
    async with Redis.from_url(redis_url) as redis:
        prefix = fresh("test-store")
        await RedisStore(redis, RULES, prefix, shards=4).open()  # recorded on first use
        await RedisStore(redis, RULES, prefix, shards=4).check_layout()  # same count: fine
        with pytest.raises(LeadscoreError) as refused:
            await RedisStore(redis, RULES, prefix, shards=1).check_layout()
        with pytest.raises(LeadscoreError):
            await RedisStore(redis, RULES, prefix, shards=1).open()
        assert str(refused.value) == (
            f"Redis holds Leadscore data in 4 shards under the prefix {prefix!r}, not 1: set "
            "LEADSCORE_REDIS_SHARDS=4, or use another LEADSCORE_KEY_PREFIX and "
            "LEADSCORE_GROUP_ID for a fresh start")


async def test_the_shard_count_is_the_datas_unless_set(redis_url: str) -> None:
    """Unset LEADSCORE_REDIS_SHARDS: fresh data gets 4 shards on one Redis (recorded by
    the first write, not by a reader), and data written with another count keeps it; a
    count set that differs is refused."""
    from streams.connect import settle_layout
    from streams.settings import Settings

    async with Redis.from_url(redis_url) as redis:
        new, old = fresh("test-store"), fresh("test-store")
        await RedisStore(redis, RULES, old, shards=1).open()
        unset = Settings(redis_url=redis_url)
        settled = await settle_layout(unset.model_copy(update={"key_prefix": new}), RULES)
        assert (settled.redis_shards, await RedisStore.recorded_shards(redis, new)) == (4, None)
        await RedisStore(redis, RULES, new, shards=settled.redis_shards).open()
        assert await RedisStore.recorded_shards(redis, new) == 4
        settled = await settle_layout(unset.model_copy(update={"key_prefix": old}), RULES)
        assert settled.redis_shards == 1
        with pytest.raises(LeadscoreError, match="in 1 shards under the prefix"):
            await settle_layout(unset.model_copy(update={"key_prefix": old,
                                                         "redis_shards": 4}), RULES)


async def test_forget_starts_over_when_the_lead_changes_while_it_erases(
        redis_url: str) -> None:
    """Another writer changes the lead after forget has read it: the erasure is refused
    by Redis (WATCH) and done again on what the lead is then; nothing of it is left."""
    prefix = fresh("test-store")

    class Meddling(Redis):  # the real server; one write slipped in after the first read
        reads = 0

        async def get(self, name: Any) -> Any:
            raw = await super().get(name)
            self.reads += 1
            if self.reads == 1:
                await writer.apply([ev("late", "demo_request", T0 + HOUR, lead="a")],
                                   now_ms=T0 + HOUR)
            return raw

    async with Redis.from_url(redis_url) as plain, Meddling.from_url(redis_url) as meddling:
        writer = RedisStore(plain, RULES, prefix)
        await writer.apply([ev("v", "page_view", T0, lead="a"),
                            ev("w", "page_view", T0, lead="b")], now_ms=T0)
        forgetting = RedisStore(meddling, RULES, prefix)

        assert await forgetting.forget("a")
        assert meddling.reads == 2  # read, refused at EXEC, read again
        assert await writer.load("a") is None
        keys = [key.decode() async for key in plain.scan_iter(f"{prefix}:*")]
        assert [key for key in keys if key.endswith(":a")] == []
        assert [key for key in keys if await plain.type(key) == b"zset"
                and await plain.zscore(key, "a") is not None] == []
        assert await writer.load("b") is not None  # another lead stays


async def keys_under(redis: Redis, prefix: str) -> dict[str, Any]:
    """Every key under ``prefix`` and its whole value, to compare before and after."""
    found: dict[str, Any] = {}
    async for raw in redis.scan_iter(f"{prefix}:*"):
        key, kind = raw.decode(), (await redis.type(raw)).decode()
        found[key] = (await redis.get(key) if kind == "string" else
                      await redis.zrange(key, 0, -1, withscores=True) if kind == "zset" else
                      sorted(await redis.smembers(key)) if kind == "set" else
                      await redis.hgetall(key) if kind == "hash" else
                      await redis.lrange(key, 0, -1))
    return found


async def test_a_commit_that_fails_in_redis_writes_nothing(redis_url: str) -> None:
    """Redis keeps what a script wrote before an error. A shard key of the wrong type
    (here the outbox, written by hand as a string) made COMMIT fail after it had written
    the states: the lead turned hot in Redis while its lead.hot never reached the outbox.
    Now the script checks before it writes, and the error leaves everything as it was."""
    async with Redis.from_url(redis_url) as redis:
        prefix = fresh("test-store")
        store = RedisStore(redis, RULES, prefix)
        await store.apply([ev("d", "demo_request", T0, lead="a")], now_ms=T0)
        shard = store.keys.of("a")
        await redis.delete(shard.outbox)
        await redis.set(shard.outbox, b"not a sorted set")
        before = await keys_under(redis, prefix)
        with pytest.raises(ResponseError, match=re.escape(
                f"COMMIT refused, nothing written: {shard.outbox} is a string, not a zset")):
            await store.apply([ev("e", "demo_request", T0 + HOUR, lead="a"),
                               ev("f", "page_view", T0 + HOUR, lead="b")], now_ms=T0)
        assert await keys_under(redis, prefix) == before


@pytest.mark.parametrize("head_change, reason", [
    ({"cool": [None, "a"]}, "the cooling index: a score that is not a finite number"),
    ({"ranks": [[["x", "a"], []]]}, "a ranking: a score that is not a finite number"),
    ({"now": None}, "a malformed head"),
    ({"hist": [5]}, "a key count that does not add up"),
])
async def test_the_commit_script_checks_its_arguments_before_writing(
        redis_url: str, head_change: dict[str, Any], reason: str) -> None:
    """Arguments the Python side would never build (a NaN written by orjson as null, a
    count that does not add up) are refused before the first write."""
    from scoring.store.commit import COMMIT

    async with Redis.from_url(redis_url) as redis:
        prefix = fresh("test-store")
        store = RedisStore(redis, RULES, prefix)
        await store.open()
        shard = store.keys.of("a")
        state = LeadState("a", T0, 45.0, stage="mql")
        stored_keys = [shard.state("a"), shard.rank("stage:mql", 0.0), shard.cooling,
                       shard.outbox, shard.fits, shard.marker, shard.active, shard.progress]
        head = {"v": [-1], "ids": [], "cap": 50, "hist": [], "now": T0, "uncool": ["a"],
                "cool": [], "fits": ["0.0"], "ranks": [[[-1.0, "a"], []]],
                "gen": store.generation, "live": True, "prog": [], "mark": store.markers[0],
                **head_change}
        before = await keys_under(redis, prefix)
        with pytest.raises(ResponseError, match=f"COMMIT refused, nothing written: {reason}"):
            await redis.eval(COMMIT, len(stored_keys), *stored_keys, orjson.dumps(head),
                             record.encode(state, {}, T0, 1))
        assert await keys_under(redis, prefix) == before


async def test_redis_emptied_under_a_running_store_is_noticed_and_nothing_written(
        redis_url: str) -> None:
    """Redis restarted without persistence under a running worker: the next commit finds
    its shard's marker gone, writes nothing, and says so (the worker then stops)."""
    from scoring.errors import DataLost

    async with Redis.from_url(redis_url) as redis:
        prefix = fresh("test-store")
        store = RedisStore(redis, RULES, prefix, shards=2)
        await store.apply([ev("d", "demo_request", T0, lead="a")], now_ms=T0)
        await redis.delete(*[key async for key in redis.scan_iter(f"{prefix}:*")])
        with pytest.raises(DataLost, match=f"Redis lost Leadscore's data under the prefix "
                                           f"{prefix!r} \\(shard \\d's marker is gone or new\\)"):
            await store.apply([ev("e", "page_view", T0 + HOUR, lead="a")], now_ms=T0)
        assert await keys_under(redis, prefix) == {}


async def test_every_worker_notices_the_loss_even_after_another_wrote_new_markers(
        redis_url: str) -> None:
    """Two workers of one generation; Redis emptied. The first to commit notices and
    writes new markers as it starts its rebuild; the second, committing after that,
    must notice too (its marker is not the one it found), or it would score its leads
    on from nothing."""
    from scoring.errors import DataLost

    async with Redis.from_url(redis_url) as redis:
        prefix = fresh("test-store")
        first, second = (RedisStore(redis, RULES, prefix, shards=2) for _ in range(2))
        for store in (first, second):
            await store.apply([ev("d", "demo_request", T0, lead="a")], now_ms=T0)
        await redis.delete(*[key async for key in redis.scan_iter(f"{prefix}:*")])
        with pytest.raises(DataLost):
            await first.apply([ev("e", "page_view", T0 + HOUR, lead="a")], now_ms=T0)
        first.reopen()
        await first.apply([ev("e", "page_view", T0 + HOUR, lead="a")], now_ms=T0)
        with pytest.raises(DataLost, match="marker is gone or new"):
            await second.apply([ev("f", "page_view", T0 + HOUR, lead="b")], now_ms=T0)


async def test_a_start_on_empty_redis_after_events_were_consumed_rebuilds_quietly(
        redis_url: str) -> None:
    """No data but committed offsets: Redis lost it, and the generation is rebuilt from
    the topic sending nothing below those offsets (``replay_until``, kept in Redis for a
    restart during the rebuild). No data and no offsets: a first start, which makes the
    generation active. Some shards' markers gone but not others': lost too (a cluster
    master replaced empty)."""
    async def offsets() -> dict[int, int]:
        return {0: 5, 3: 9}

    async with Redis.from_url(redis_url) as redis:
        prefix = fresh("test-store")
        lost = RedisStore(redis, RULES, prefix, shards=2, committed=offsets)
        await lost.open()
        assert lost.replay_until == {0: 5, 3: 9} and lost.active
        assert await redis.hgetall(f"{prefix}:{RULES.version}:replay_until") == {
            b"0": b"5", b"3": b"9"}
        await lost.replayed_to({0: 5, 3: 8})  # partition 0 is done, 3 is not
        assert lost.replay_until == {3: 9}
        await lost.replayed_to({0: 6, 3: 9})
        assert lost.replay_until == {}
        assert await redis.exists(f"{prefix}:{RULES.version}:replay_until") == 0

        prefix = fresh("test-store")
        store = RedisStore(redis, RULES, prefix, shards=2)
        await store.open()  # a first start
        gen = f"{prefix}:{RULES.version}"
        assert set(await keys_under(redis, prefix)) == {
            f"{prefix}:active", f"{prefix}:generations", f"{prefix}:layout",
            f"{prefix}:{{0}}:active", f"{prefix}:{{1}}:active",
            f"{gen}:{{0}}:marker", f"{gen}:{{1}}:marker"}
        assert store.active and store.replay_until == {}
        await redis.delete(f"{gen}:{{1}}:marker")
        again = RedisStore(redis, RULES, prefix, shards=2, committed=offsets)
        await again.open()
        assert again.replay_until == {0: 5, 3: 9}

        # A deployment from before generations: its group (LEADSCORE_GROUP_ID itself)
        # sent the notifications up to its offsets, so the first generation is quiet
        # up to there. Once generations exist, a new one owes nothing to that group.
        prefix = fresh("test-store")
        upgraded = RedisStore(redis, RULES, prefix, shards=2, legacy=offsets)
        await upgraded.open()
        assert upgraded.replay_until == {0: 5, 3: 9} and upgraded.active
        other = RedisStore(redis, rules("dedupe_window: 1d"), prefix, shards=2, legacy=offsets)
        await other.open()
        assert other.replay_until == {} and not other.active


async def test_dead_letters_are_remembered(redis_url: str) -> None:
    async with Redis.from_url(redis_url) as redis:
        store = RedisStore(redis, RULES, fresh("test-store"))
        assert await store.dead_lettered(["t:0:1", "t:0:2"]) == [False, False]
        await store.record_dead_letters(["t:0:2"], T0)
        assert await store.dead_lettered(["t:0:1", "t:0:2"]) == [False, True]
        await store.record_dead_letters(["t:0:3"], T0 + 2 * DAY)  # a day later: 2 forgotten
        assert await store.dead_lettered(["t:0:2", "t:0:3"]) == [False, True]


async def test_an_event_the_engine_refuses_is_reported_and_writes_nothing(
        redis_url: str) -> None:
    """A profile_update past the profile's bound is refused by the engine: the batch
    reports it (the worker dead-letters it) and commits the rest; a new lead whose only
    event was refused is not written at all, as offline (MemoryStore) does not know it."""
    from scoring.store import MemoryStore

    huge = {f"k{i}": "v" * 200 for i in range(200)}  # past the 32 KiB bound
    events = [ev("ok", "demo_request", T0, lead="a"),
              ev("big", "profile_update", T0 + 1, lead="a", **huge),
              ev("only", "profile_update", T0, lead="ghost", **huge)]
    async with Redis.from_url(redis_url) as redis:
        store = RedisStore(redis, RULES, fresh("test-store"), shards=2)
        outcome = await store.apply(events, T0, [(0, 0), (0, 1), (0, 2)])
        assert sorted((i, e.kind) for i, e in outcome.rejected) == [
            (1, "profile_too_large"), (2, "profile_too_large")]
        assert outcome.applied == 1
        assert await store.load("ghost") is None and not await store.exists("ghost")
        loaded = await store.load("a")
        assert loaded is not None and loaded[0].profile == {}
    memory = MemoryStore(RULES)
    assert sorted(i for i, _ in memory.apply_now(events, T0, [(0, 0), (0, 1), (0, 2)])
                  .rejected) == [1, 2]
    assert await memory.load("ghost") is None
    assert (await memory.load("a")) is not None
