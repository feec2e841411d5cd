"""Algebraic claims of SPEC 3, checked on random input with hypothesis."""

from __future__ import annotations

import math

from helpers import DAY, T0, ev, rules, run, same
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.events import Event

# Rules without `limit` or `after`, whose order-independence SPEC 3 promises.
PLAIN = rules("""
engagement:
  - {id: visit, event: page_view, points: 1}
  - {id: pricing, event: page_view, if: {url: /pricing}, points: 15}
  - {id: click, event: email_click, points: 10}
  - {id: demo, event: demo_request, points: 50}
  - {id: unsub, event: email_unsubscribed, points: -50}
""", "3d")
POINTS = {"page_view": 1, "email_click": 10, "demo_request": 50, "email_unsubscribed": -50}
# Rules with every feature, for the claims that hold whatever the rules.
FULL = rules("""
dedupe_window: 7d
fit:
  - {id: ceo, if: {title: CEO}, points: 20}
engagement:
  - {id: visit, event: page_view, points: 1}
  - {id: pricing, event: page_view, if: {url: /pricing}, points: 15, limit: {points: 40, per: 1d}}
  - {id: demo, event: demo_request, points: 50}
  - {id: workshops, event: workshop_attended, points: 30, after: 2}
  - {id: unsub, event: email_unsubscribed, points: -50}
""", "2d")


@st.composite
def event_lists(draw: st.DrawFn, kinds: list[str], span_ms: int, max_size: int = 25
                ) -> list[Event]:
    size = draw(st.integers(min_value=1, max_value=max_size))
    events = []
    for i in range(size):
        kind = draw(st.sampled_from(kinds))
        ts = T0 + draw(st.integers(min_value=0, max_value=span_ms))
        if kind == "page_view":
            events.append(ev(f"e{i}", kind, ts, url=draw(st.sampled_from(["/", "/pricing"]))))
        elif kind == "profile_update":
            events.append(ev(f"e{i}", kind, ts, title=draw(st.sampled_from(["CEO", None]))))
        else:
            events.append(ev(f"e{i}", kind, ts))
    return events


PLAIN_EVENTS = event_lists(list(POINTS), span_ms=20 * DAY)
FULL_EVENTS = event_lists(["page_view", "demo_request", "workshop_attended",
                           "email_unsubscribed", "profile_update"], span_ms=6 * DAY)


@settings(max_examples=300)
@given(st.data(), PLAIN_EVENTS)
def test_any_order_gives_the_same_engagement(data: st.DataObject, events: list[Event]) -> None:
    shuffled = data.draw(st.permutations(events))
    one, _ = run(events, PLAIN)
    other, _ = run(shuffled, PLAIN)
    assert one.t_ref == other.t_ref
    assert same(one.engagement, other.engagement)
    assert one.contributions.keys() == other.contributions.keys()
    assert all(same(one.contributions[r], other.contributions[r]) for r in one.contributions)


@settings(max_examples=300)
@given(PLAIN_EVENTS)
def test_engagement_is_the_closed_form_sum(events: list[Event]) -> None:
    state, _ = run(events, PLAIN)
    t_ref = max(e.ts for e in events)
    half_life = 3 * DAY
    expected = math.fsum(
        (POINTS[e.type] + (15 if e.properties.get("url") == "/pricing" else 0))
        * 2 ** (-(t_ref - e.ts) / half_life) for e in events)
    assert state.t_ref == t_ref
    assert same(state.engagement, expected)
    assert same(math.fsum(state.contributions.values()), expected)


@settings(max_examples=300)
@given(st.data(), FULL_EVENTS)
def test_delivering_any_event_twice_changes_nothing(data: st.DataObject,
                                                    events: list[Event]) -> None:
    original = data.draw(st.integers(min_value=0, max_value=len(events) - 1))
    again_at = data.draw(st.integers(min_value=original + 1, max_value=len(events)))
    twice = [*events[:again_at], events[original], *events[again_at:]]
    once_state, once_notes = run(events, FULL)
    twice_state, twice_notes = run(twice, FULL)
    assert twice_state == once_state
    assert twice_notes == once_notes
