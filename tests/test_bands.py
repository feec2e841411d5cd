"""How many leads score in each band now (SPEC 9's bands), counted from the lead index on
a real Redis and a real Redis Cluster: exactly what ``band(score_at(...))`` says of
every lead, also for scores on a band edge to the last bit, leads dated ahead of the
clock, and rules with no decay."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from typing import Any

import pytest
from helpers import DAY, HOUR, T0, ev, fresh, rules
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis, RedisCluster

from scoring.engine import STAGES, LeadState, engagement_at, score_at
from scoring.events import Event
from scoring.rules import Ruleset
from scoring.store import MemoryStore, RedisStore
from scoring.store.ranking import least_engagement
from scoring.views import BANDS, band

pytestmark = pytest.mark.integration

# Fit and awards that land on band edges (20, 30, 40), below them by a little after
# decay, and negative engagement that decays towards an edge from below.
RULES = rules("""
score: {min: 0, max: 100}
fit:
  - {id: ceo, if: {title: CEO}, points: 20}
  - {id: big, if: {size: big}, points: 10}
engagement:
  - {id: visit, event: page_view, points: 10}
  - {id: demo, event: demo_request, points: 25}
  - {id: unsub, event: email_unsubscribed, points: -10}
""", "1d")
FLAT = """
score: {min: -50, max: 150}
engagement:
  - {id: big, event: demo_request, points: 60}
  - {id: unsub, event: email_unsubscribed, points: -30}
"""
GROUPS = ["all", *(f"stage:{stage}" for stage in STAGES)]


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def brute_force(states: list[LeadState], at: int, ruleset: Ruleset, group: str) -> list[int]:
    counts = [0] * BANDS
    for state in states:
        if group == "all" or group == f"stage:{state.stage}":
            counts[band(score_at(state, at, ruleset))] += 1
    return counts


async def assert_counts(redis: Any, events: list[Event], instants: list[int],
                        ruleset: Ruleset = RULES, shards: int = 1) -> list[int]:
    """Redis's counts are brute force's (and the in-memory store's), at every instant and
    for every group; returns the counts of all leads at the first instant."""
    store = RedisStore(redis, ruleset, prefix=fresh("test-bands"), shards=shards)
    await store.apply(events, now_ms=T0)
    memory = MemoryStore(ruleset)
    memory.apply_now(events)
    states = list(memory.states().values())
    latest = max(state.t_ref or 0 for state in states)
    first: list[int] = []
    for at in instants:
        ahead = max(0, latest - at)  # how far ahead of `at` the leads may be dated
        for group in GROUPS:
            want = brute_force(states, at, ruleset, group)
            assert await store.bands(at, f"{group}", ahead) == want, (at, group)
            assert await memory.bands(at, group) == want
            if not first:
                first = want
    return first


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    events = []
    for i in range(draw(st.integers(min_value=1, max_value=30))):
        lead = draw(st.sampled_from(["a", "b", "c", "d", "e"]))
        kind = draw(st.sampled_from(["page_view", "demo_request", "email_unsubscribed",
                                     "profile_update", "form_submit"]))
        ts = T0 + draw(st.integers(min_value=0, max_value=4 * DAY))
        props: dict[str, Any] = {}
        if kind == "profile_update":
            props = {"title": draw(st.sampled_from(["CEO", None])),
                     "size": draw(st.sampled_from(["big", None]))}
        events.append(Event(f"{lead}-{i}", lead, kind, ts, props))
    return events


INSTANTS = st.lists(st.integers(min_value=-DAY, max_value=12 * DAY).map(lambda d: T0 + d),
                    min_size=1, max_size=4)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), INSTANTS, st.sampled_from([1, 3]))
def test_the_counts_are_brute_forces(redis_url: str, events: list[Event], instants: list[int],
                                     shards: int) -> None:
    async def scenario() -> None:
        async with Redis.from_url(redis_url) as redis:
            await assert_counts(redis, events, instants, shards=shards)

    run_async(scenario())


async def test_a_score_on_an_edge_is_in_the_band_floating_point_puts_it(redis_url: str
                                                                         ) -> None:
    """Fit 20 alone is 20.0 (band 2). Fit 20 and -10 decayed over 60 half-lives is
    20 - 8.7e-18 as a real number, 20.0 in floating point (band 2, as score_at says).
    Fit 9.04 + 0.94 + 0.02 is 9.999999999999998, and with 10 points decayed to about
    1.3e-15 it rounds up to 10.0 (band 1): below 10 - F = 1.8e-15 as a real number,
    above the least engagement that floating point rounds up to 10 (8.9e-16)."""
    edgy = rules("""
fit:
  - {id: ceo, if: {title: CEO}, points: 20}
  - {id: a, if: {a: 1}, points: 9.04}
  - {id: b, if: {b: 1}, points: 0.94}
  - {id: c, if: {c: 1}, points: 0.02}
engagement:
  - {id: visit, event: page_view, points: 10}
  - {id: unsub, event: email_unsubscribed, points: -10}
""", "1d")
    h = edgy.half_life_ms
    assert h is not None
    events = [ev("f", "profile_update", T0, "fit-only", title="CEO"),
              ev("n0", "profile_update", T0, "tiny-negative", title="CEO"),
              ev("n1", "email_unsubscribed", T0, "tiny-negative"),
              ev("r0", "profile_update", T0, "rounds-up", a=1, b=1, c=1),
              ev("r1", "page_view", T0, "rounds-up")]
    at = T0 + 60 * h
    tiny = _state(edgy, events, "tiny-negative")
    assert (engagement_at(tiny, at, edgy) < 0, score_at(tiny, at, edgy)) == (True, 20.0)
    rounds = _state(edgy, events, "rounds-up")
    at_edge = T0 + round(h * math.log2(10 / 1.3e-15))
    e = engagement_at(rounds, at_edge, edgy)
    assert rounds.fit == 9.999999999999998
    assert least_engagement(rounds.fit, 10.0) <= e < 10 - rounds.fit
    assert score_at(rounds, at_edge, edgy) == 10.0
    assert await _counts(redis_url, edgy, events[:3], at) == [0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
    assert await _counts(redis_url, edgy, events[3:], at_edge) == [0, 1] + [0] * 8
    async with Redis.from_url(redis_url) as redis:
        await assert_counts(redis, events, [T0, at, at_edge], edgy)


async def test_leads_within_the_index_keys_rounding_are_read(redis_url: str) -> None:
    """20 + 25, with the longest half-life, decaying through 30 at instants 1 ms apart:
    near the crossing a millisecond moves the score by about as much as the index key
    rounds, so the key alone puts some instants on the wrong side of the edge (it
    does at the crossing + 1 ms); the window around the key bound is read instead."""
    slow = rules("""
fit: [{id: ceo, if: {title: CEO}, points: 20}]
engagement: [{id: demo, event: demo_request, points: 25}]
""", "36500d")
    h = slow.half_life_ms
    assert h is not None
    events = [ev("p0", "profile_update", T0, "crossing", title="CEO"),
              ev("p1", "demo_request", T0, "crossing")]
    crossing = int(T0 + h * math.log2(25 / 10))  # 20 + 25 * 2^(-(t - T0)/h) = 30
    instants = list(range(crossing - 20, crossing + 21))
    state = _state(slow, events, "crossing")
    sides = {score_at(state, at, slow) >= 30 for at in instants}
    assert sides == {True, False}  # the instants straddle the edge
    async with Redis.from_url(redis_url) as redis:
        await assert_counts(redis, events, instants, slow)


async def test_a_lead_dated_ahead_of_the_clock_counts_by_its_score_now(redis_url: str) -> None:
    """An event an hour ahead: until then engagement is held, not grown back. 9.5
    points are 9.5 (band 0) though the index key reads 9.5 * 2^(1h/2h) = 13.4."""
    ahead = rules("engagement: [{id: small, event: page_view, points: 9.5}]", "2h")
    events = [ev("x", "page_view", T0 + HOUR, "ahead")]
    assert await _counts(redis_url, ahead, events, T0, HOUR) == [1] + [0] * 9
    async with Redis.from_url(redis_url) as redis:
        await assert_counts(redis, events, [T0, T0 + HOUR, T0 + 3 * HOUR], ahead)


async def test_no_decay_and_scores_outside_the_bands(redis_url: str) -> None:
    """Rules that never decay (the key is E itself), and a score range of -50..150:
    below 0 is counted in band 0, above 100 in band 9 (SPEC 9)."""
    flat = rules(FLAT, "never")
    events = [ev("a1", "demo_request", T0, "a"), ev("a2", "demo_request", T0, "a"),
              ev("a3", "demo_request", T0, "a"),  # 180, clamped to 150: band 9
              ev("b1", "email_unsubscribed", T0, "b"),  # -30: band 0
              ev("c1", "demo_request", T0, "c"), ev("c2", "email_unsubscribed", T0, "c"),
              ev("d1", "demo_request", T0, "d")]  # 30 and 60
    assert await _counts(redis_url, flat, events, T0 + 400 * DAY) == [1, 0, 0, 1, 0, 0, 1,
                                                                      0, 0, 1]
    # A range of 15..85: every lead is at least 15, so the edge of 10 holds them all,
    # and none reaches 90 (edges the clamp decides, with no ranking read).
    narrow = rules(FLAT.replace("{min: -50, max: 150}", "{min: 15, max: 85}"), "never")
    assert await _counts(redis_url, narrow, events, T0) == [0, 1, 0, 1, 0, 0, 1, 0, 1, 0]


async def test_the_counts_on_a_cluster_are_brute_forces(redis_cluster_url: str) -> None:
    events = [Event(f"e{i}", f"lead-{i % 17}", kind, T0 + i * HOUR // 3,
                    {"title": "CEO"} if kind == "profile_update" else {})
              for i, kind in enumerate(["profile_update", "page_view", "demo_request",
                                        "email_unsubscribed", "form_submit"] * 12)]
    async with RedisCluster.from_url(redis_cluster_url.replace("redis+cluster://",
                                                               "redis://")) as redis:
        await assert_counts(redis, events, [T0 + DAY, T0 + 3 * DAY, T0 - HOUR], shards=8)


def test_the_least_engagement_is_exact_to_the_last_bit() -> None:
    for fit, level in [(20.0, 20.0), (20.0, 30.0), (0.0, 10.0), (50.0, 20.0),
                       (9.999999999999998, 10.0), (-35.5, 90.0), (1e6, 10.0)]:
        least = least_engagement(fit, level)
        assert fit + least >= level
        assert fit + math.nextafter(least, -math.inf) < level


def _state(ruleset: Ruleset, events: list[Event], lead: str) -> LeadState:
    memory = MemoryStore(ruleset)
    memory.apply_now(events)
    return memory.states()[lead]


async def _counts(redis_url: str, ruleset: Ruleset, events: list[Event], at: int,
                  ahead: int = 0) -> list[int]:
    async with Redis.from_url(redis_url) as redis:
        store = RedisStore(redis, ruleset, prefix=fresh("test-bands"), shards=3)
        await store.apply(events, now_ms=T0)
        counts: list[int] = await store.bands(at, "all", ahead)
        return counts
