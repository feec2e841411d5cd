"""The scoring semantics of SPEC 3, one behaviour per test, with exact values."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import orjson
import pytest
from helpers import DAY, HOUR, T0, ev, rules, run

from scoring.engine import (
    MAX_PROFILE_BYTES,
    MAX_PROFILE_KEYS,
    LeadState,
    apply,
    cool,
    cooling_due,
    reasons,
    score_at,
)
from scoring.errors import EventError
from scoring.events import MAX_DEPTH, Event
from scoring.rules import Ruleset, load_rules

DEFAULT = load_rules(Path(__file__).resolve().parent.parent / "config" / "rules.yaml")
H30 = 30 * DAY

SIMPLE = rules("""
engagement:
  - {id: visit, event: page_view, points: 10}
  - {id: big, event: demo_request, points: 80}
  - {id: minus, event: email_unsubscribed, points: -30}
""")


def test_worked_example_hot_at_90_then_cooled_at_40_by_an_unsubscribe() -> None:
    events = [ev(f"v{i}", "page_view", T0, url="/blog") for i in range(4)]
    events += [ev("p", "page_view", T0, url="/products/scoring"),
               ev("c", "add_to_cart", T0)]
    events += [ev(f"w{i}", "workshop_attended", T0) for i in range(3)]
    state, notes = run(events, DEFAULT)
    assert score_at(state, T0, DEFAULT) == 90.0
    assert [(n["type"], n["score"], n["event_id"]) for n in notes] == [
        ("lead.hot", 90.0, "w2")]
    assert state.contributions == {"site-visit": 5.0, "scoring-product-page": 15.0,
                                   "add-to-cart": 40.0, "workshops": 30.0}

    notes = apply(state, ev("u", "email_unsubscribed", T0), DEFAULT).notifications
    assert score_at(state, T0, DEFAULT) == 40.0
    assert [(n["type"], n["notification_id"], n["score"]) for n in notes] == [
        ("lead.cooled", "lead-1:2", 40.0)]
    assert not state.hot


def test_engagement_halves_every_half_life() -> None:
    state, _ = run([ev("a", "page_view", T0)], SIMPLE)
    assert [score_at(state, T0 + k * H30, SIMPLE) for k in range(4)] == [10.0, 5.0, 2.5, 1.25]


def test_each_event_decays_from_its_own_time() -> None:
    state, _ = run([ev("a", "page_view", T0), ev("b", "page_view", T0 + H30)], SIMPLE)
    assert (state.t_ref, state.engagement) == (T0 + H30, 15.0)
    assert score_at(state, T0 + 2 * H30, SIMPLE) == 7.5


def test_a_late_event_counts_as_if_it_had_arrived_in_order() -> None:
    state, _ = run([ev("b", "page_view", T0 + H30), ev("a", "page_view", T0)], SIMPLE)
    assert (state.t_ref, state.engagement) == (T0 + H30, 15.0)
    assert state.contributions == {"visit": 15.0}


def test_no_decay_with_half_life_never() -> None:
    r = rules("engagement:\n  - {id: visit, event: page_view, points: 10}\n", "never")
    state, _ = run([ev("a", "page_view", T0)], r)
    assert score_at(state, T0 + 1000 * DAY, r) == 10.0
    assert cooling_due(state, r) is None


def test_score_is_clamped_but_engagement_is_not() -> None:
    state, _ = run([ev("a", "demo_request", T0), ev("b", "demo_request", T0)], SIMPLE)
    assert (score_at(state, T0, SIMPLE), state.engagement) == (100.0, 160.0)
    state, _ = run([ev("a", "email_unsubscribed", T0)], SIMPLE)
    assert (score_at(state, T0, SIMPLE), state.engagement) == (0.0, -30.0)


def test_every_matching_rule_awards_its_points() -> None:
    state, _ = run([ev("a", "page_view", T0, url="/pricing")], DEFAULT)
    assert state.contributions == {"site-visit": 1.0, "pricing-page": 15.0}


def test_limit_caps_a_rule_per_epoch_aligned_window_and_cuts_the_last_award() -> None:
    r = rules("""
engagement:
  - {id: pricing, event: page_view, points: 20, limit: {points: 45, per: 7d}}
""", "never")
    week = 7 * DAY
    start = (T0 // week) * week  # a window boundary: Thursday 00:00 UTC
    views = [ev(f"a{i}", "page_view", start + i * HOUR) for i in range(4)]
    state, _ = run(views, r)
    assert state.engagement == 45.0  # 20 + 20 + 5 (cut) + 0
    state, _ = run([*views, ev("next", "page_view", start + week)], r)
    assert state.engagement == 65.0  # a new window starts on the boundary
    state, _ = run([ev("prev", "page_view", start - 1), *views], r)
    assert state.engagement == 65.0  # the millisecond before belongs to the previous window


def test_limit_counts_negative_points_by_absolute_value() -> None:
    r = rules("""
engagement:
  - {id: bounce, event: bounce, points: -20, limit: {points: 30, per: 1d}}
""", "never")
    state, _ = run([ev(f"b{i}", "bounce", T0 + i) for i in range(3)], r)
    assert state.engagement == -30.0


def test_limit_applies_to_late_events_in_their_own_window() -> None:
    r = rules("""
engagement:
  - {id: visit, event: page_view, points: 10, limit: {points: 10, per: 1d}}
""", "never")
    day = (T0 // DAY) * DAY
    state, _ = run([ev("a", "page_view", day + DAY), ev("late", "page_view", day),
                    ev("late2", "page_view", day + 1)], r)
    assert state.engagement == 20.0


def test_after_awards_once_on_the_nth_matching_event() -> None:
    totals = []
    state = LeadState("lead-1")
    for i in range(5):
        apply(state, ev(f"w{i}", "workshop_attended", T0 + i), DEFAULT)
        totals.append(state.contributions.get("workshops", 0.0))
    assert totals[0:2] == [0.0, 0.0]
    assert [round(t, 6) for t in totals[2:]] == [30.0, 30.0, 30.0]
    assert state.counts == {"workshops": 3}


def test_after_ignores_duplicates() -> None:
    events = [ev("w1", "workshop_attended", T0), ev("w1", "workshop_attended", T0 + 1),
              ev("w2", "workshop_attended", T0 + 2)]
    state, _ = run(events, DEFAULT)
    assert state.counts == {"workshops": 2} and "workshops" not in state.contributions


def test_fit_follows_the_merged_profile_and_null_removes_a_field() -> None:
    state, _ = run([ev("p1", "profile_update", T0, job_title="CEO", company_size=200,
                       industry="saas")], DEFAULT)
    assert (state.fit, state.profile) == (45.0, {"job_title": "CEO", "company_size": 200,
                                                 "industry": "saas"})
    apply(state, ev("p2", "profile_update", T0 + 1, company_size=None, industry="retail"),
          DEFAULT)
    assert (state.fit, state.profile) == (20.0, {"job_title": "CEO", "industry": "retail"})
    apply(state, ev("p3", "profile_update", T0 + 2, job_title="PhD student"), DEFAULT)
    assert state.fit == -10.0


def test_fit_never_decays() -> None:
    state, _ = run([ev("p", "profile_update", T0, job_title="CTO")], DEFAULT)
    assert score_at(state, T0 + 10 * H30, DEFAULT) == 20.0


def test_a_profile_update_can_make_a_lead_hot() -> None:
    _state, notes = run([ev("d", "demo_request", T0),
                        ev("p", "profile_update", T0, job_title="CEO")], DEFAULT)
    assert [(n["type"], n["event_id"], n["fit"]) for n in notes] == [("lead.hot", "p", 20.0)]


def test_stages_move_forward_only() -> None:
    state = LeadState("lead-1")
    stages = []
    for i, kind in enumerate(["page_view", "form_submit", "demo_request", "form_submit",
                              "converted", "form_submit", "demo_request"]):
        apply(state, ev(f"e{i}", kind, T0 + i), DEFAULT)
        stages.append(state.stage)
    assert stages == ["prospect", "mql", "sql", "sql", "customer", "customer", "customer"]


def test_a_converted_lead_keeps_being_scored() -> None:
    state, _ = run([ev("c", "converted", T0), ev("v", "page_view", T0 + 1)], DEFAULT)
    assert (state.stage, state.engagement) == ("customer", 1.0)


def test_hot_once_until_rearmed_below_rearm_below() -> None:
    r = rules("""
engagement:
  - {id: visit, event: page_view, points: 10}
  - {id: minus, event: minus, points: -10}
""", "never")
    kinds = ["page_view"] * 7 + ["minus", "page_view", "minus", "minus", "minus",
                                 "page_view", "page_view", "page_view"]
    state = LeadState("lead-1")
    seen = []
    for i, kind in enumerate(kinds):
        for n in apply(state, ev(f"e{i}", kind, T0 + i), r).notifications:
            seen.append((i, n["type"], n["score"], n["notification_id"]))
    # 70 hot; 60 and 70 again stay hot; 50 is not below 50; 40 re-arms; 70 is hot again.
    assert seen == [(6, "lead.hot", 70.0, "lead-1:1"), (11, "lead.cooled", 40.0, "lead-1:2"),
                    (14, "lead.hot", 70.0, "lead-1:3")]


def test_cooling_by_decay_is_emitted_at_the_exact_crossing_time() -> None:
    r = rules("""
fit:
  - {id: ceo, if: {job_title: CEO}, points: 20}
engagement:
  - {id: demo, event: demo_request, points: 60}
  - {id: visit, event: page_view, points: 1}
""")
    state, notes = run([ev("p", "profile_update", T0, job_title="CEO"),
                        ev("d", "demo_request", T0)], r)
    assert [n["type"] for n in notes] == ["lead.hot"]
    t_c = T0 + H30 * math.log2(60 / (50 - 20))  # = T0 + 30 days exactly
    assert cooling_due(state, r) == t_c == T0 + H30
    notes = apply(state, ev("late-visit", "page_view", T0 + 40 * DAY), r).notifications
    cooled = notes[0]
    assert {k: cooled[k] for k in ("type", "notification_id", "event_id", "event_ts", "score",
                                   "fit", "engagement")} == {
        "type": "lead.cooled", "notification_id": "lead-1:2", "event_id": None,
        "event_ts": "2026-12-06T00:00:00Z", "score": 50.0, "fit": 20.0, "engagement": 30.0}
    assert len(notes) == 1 and not state.hot


def test_no_cooling_before_the_crossing_time() -> None:
    r = rules("engagement:\n  - {id: demo, event: demo_request, points: 80}\n"
              "  - {id: v, event: page_view, points: 0.5}\n")
    state, _ = run([ev("d", "demo_request", T0)], r)
    t_c = cooling_due(state, r)
    assert t_c is not None
    assert cool(state, math.floor(t_c) - 1, r) == [] and state.hot
    assert apply(state, ev("v", "page_view", math.floor(t_c) - 1), r).notifications == [] \
        and state.hot


def test_cool_then_hot_again_from_one_event() -> None:
    r = rules("engagement:\n  - {id: demo, event: demo_request, points: 80}\n")
    state, _ = run([ev("d1", "demo_request", T0)], r)
    notes = apply(state, ev("d2", "demo_request", T0 + 60 * DAY), r).notifications
    assert [(n["type"], n["notification_id"], n["score"]) for n in notes] == [
        ("lead.cooled", "lead-1:2", 50.0), ("lead.hot", "lead-1:3", 100.0)]


def test_a_duplicate_event_changes_nothing_and_emits_nothing() -> None:
    state, _ = run([ev("d", "demo_request", T0, lead="lead-1")], DEFAULT)
    before = state.to_dict()
    assert apply(state, ev("d", "demo_request", T0 + DAY), DEFAULT).notifications == []
    assert state.to_dict() == before


def test_ids_older_than_the_dedupe_window_may_count_again() -> None:
    r = rules("dedupe_window: 1d\nengagement:\n  - {id: v, event: page_view, points: 1}\n",
              "never")
    state, _ = run([ev("a", "page_view", T0), ev("b", "page_view", T0 + DAY),
                    ev("a", "page_view", T0 + DAY + 1)], r)
    assert state.engagement == 3.0 and set(state.seen) == {"a", "b"}
    state, _ = run([ev("a", "page_view", T0), ev("b", "page_view", T0 + DAY),
                    ev("a", "page_view", T0 + DAY)], r)
    assert state.engagement == 2.0  # T - window = T0: "a" is exactly at the edge, still kept


def test_notification_has_the_spec_shape() -> None:
    _state, notes = run([ev("p", "profile_update", T0, job_title="CEO", company_size=200),
                        ev("e-991", "demo_request", T0 + 14 * HOUR)], DEFAULT)
    assert notes == [{
        "type": "lead.hot", "notification_id": "lead-1:1", "lead_id": "lead-1",
        "score": 85.0, "fit": 35.0, "engagement": 50.0, "stage": "sql", "threshold": 70,
        "event_id": "e-991", "event_ts": "2026-11-06T14:00:00Z", "emitted_at": None,
        "rules_version": DEFAULT.version,
        "reasons": [{"rule": "consultation-request", "points": 50.0},
                    {"rule": "decision-maker", "points": 20.0},
                    {"rule": "mid-market", "points": 15.0}],
        "cause": "event", "group": None}]


def test_reasons_are_the_five_largest_by_absolute_value_decayed_to_now() -> None:
    r = rules("""
engagement:
  - {id: a, event: a, points: 8}
  - {id: b, event: b, points: -40}
  - {id: c, event: c, points: 6}
  - {id: d, event: d, points: 6}
  - {id: e, event: e, points: 2}
  - {id: f, event: f, points: 1}
""")
    state, _ = run([ev(k, k, T0) for k in "abcdef"], r)
    assert reasons(state, r, T0 + H30) == [
        {"rule": "b", "points": -20.0}, {"rule": "a", "points": 4.0},
        {"rule": "c", "points": 3.0}, {"rule": "d", "points": 3.0}, {"rule": "e", "points": 1.0}]


# ---------------------------------------------------------------- refusals (SPEC 1)


def decayed_hot_lead() -> LeadState:
    """A disarmed lead that has decayed below rearm_below by T0 + 60 days: any event at
    that time would first cool it (step 1 changes the state), so a refusal must come
    before step 1."""
    state, notes = run([ev("d", "demo_request", T0)], SIMPLE)
    assert state.hot and [n["type"] for n in notes] == ["lead.hot"]
    return state


LATER = T0 + 60 * DAY


def refused(state: LeadState, event: Event, rules: Ruleset) -> EventError:
    """Apply an event that must be refused; check that nothing changed, byte for byte."""
    before = orjson.dumps(state.to_dict())
    with pytest.raises(EventError) as caught:
        apply(state, event, rules)
    assert orjson.dumps(state.to_dict()) == before
    return caught.value


def test_a_profile_may_hold_256_keys_and_an_update_past_that_is_refused() -> None:
    state = decayed_hot_lead()
    apply(state, ev("p1", "profile_update", T0, **{f"k{i}": i for i in range(256)}), SIMPLE)
    assert len(state.profile) == MAX_PROFILE_KEYS == 256
    error = refused(state, ev("p2", "profile_update", LATER, k0=None, new1=1, new2=2), SIMPLE)
    assert (error.reason, error.kind) == (
        "profile_update would grow the lead's profile to 257 keys, more than "
        "MAX_PROFILE_KEYS (256); a key set to null is removed", "profile_too_large")
    # Changing existing keys, or removing some while adding as many, keeps it at 256.
    apply(state, ev("p3", "profile_update", LATER, k0="changed", k1=None, new1=1), SIMPLE)
    assert len(state.profile) == 256 and state.profile["k0"] == "changed"
    assert not state.hot  # the lead cooled as it would have without the refused update


def test_a_profile_may_hold_32_kib_of_json_and_an_update_past_that_is_refused() -> None:
    state = decayed_hot_lead()
    blob = "x" * (MAX_PROFILE_BYTES - len('{"blob":""}'))
    apply(state, ev("p1", "profile_update", T0, blob=blob), SIMPLE)
    assert len(orjson.dumps(state.profile)) == MAX_PROFILE_BYTES == 32 * 1024
    error = refused(state, ev("p2", "profile_update", LATER, blob=blob + "y"), SIMPLE)
    assert (error.reason, error.kind) == (
        "profile_update would grow the lead's profile to 32769 bytes of JSON, more than "
        "MAX_PROFILE_BYTES (32768); a key set to null is removed", "profile_too_large")
    error = refused(state, ev("p3", "profile_update", LATER, a=1), SIMPLE)
    assert "to 32774 bytes of JSON" in error.reason  # ,"a":1 is 6 bytes more


def test_an_update_that_removes_or_shrinks_is_accepted_even_above_the_bound() -> None:
    # A profile stored before the bound existed may be larger; it can only shrink.
    state = decayed_hot_lead()
    state.profile = {f"k{i}": "v" * 200 for i in range(300)}
    apply(state, ev("p1", "profile_update", LATER, k0=None, k1=None), SIMPLE)
    assert len(state.profile) == 298
    apply(state, ev("p2", "profile_update", LATER + 1, k2="short", k3=None, new="v"), SIMPLE)
    assert (len(state.profile), state.profile["k2"]) == (298, "short")
    error = refused(state, ev("p3", "profile_update", LATER + 2, new2="v"), SIMPLE)
    assert error.reason.startswith("profile_update would grow the lead's profile to 299 keys")
    grown = len(orjson.dumps({**state.profile, "k4": "v" * 300}))
    error = refused(state, ev("p4", "profile_update", LATER + 2, k4="v" * 300), SIMPLE)
    assert error.reason.startswith(f"profile_update would grow the lead's profile to {grown} "
                                   "bytes of JSON")


def test_a_profile_32_levels_deep_can_be_stored() -> None:
    deep: object = 1
    for _ in range(MAX_DEPTH - 1):
        deep = {"a": deep}
    state, _ = run([ev("p", "profile_update", T0, a=deep)], DEFAULT)
    orjson.dumps(state.to_dict())


def with_points(ruleset: Ruleset, **points: float) -> Ruleset:
    """The ruleset with some rules' points replaced, past what the rules file allows:
    the engine must stay finite whatever the rules."""
    fit = tuple(dataclasses.replace(r, points=points.get(r.id, r.points)) for r in ruleset.fit)
    engagement = tuple(dataclasses.replace(r, points=points.get(r.id, r.points))
                       for r in ruleset.engagement)
    by_id = {r.id: r for r in engagement}
    return dataclasses.replace(
        ruleset, fit=fit, engagement=engagement,
        by_type={t: tuple(by_id[r.id] for r in rs) for t, rs in ruleset.by_type.items()})


HUGE = rules("""
fit:
  - {id: ceo, if: {job_title: CEO}, points: 20}
  - {id: large, if: {size: {gte: 100}}, points: 15}
engagement:
  - {id: big, event: demo_request, points: 80}
  - {id: visit, event: page_view, points: 10}
  - {id: also, event: page_view, points: 10}
""")
REFUSED = "the event is refused so that the lead's state stays finite"


def test_an_infinite_or_nan_award_is_refused_before_anything_changes() -> None:
    for points, shown in [(math.inf, "inf"), (-math.inf, "-inf"), (math.nan, "nan")]:
        r = with_points(HUGE, big=points)
        state, _ = run([ev(f"v{i}", "page_view", T0) for i in range(4)], r)
        assert state.hot  # and decayed below rearm_below by LATER: step 1 would cool it
        error = refused(state, ev("d", "demo_request", LATER), r)
        assert (error.reason, error.kind) == (
            f'rule "big" would make its share of the engagement score {shown}; {REFUSED}',
            "not_finite")


def test_a_sum_that_would_overflow_is_refused_and_one_that_does_not_is_applied() -> None:
    r = with_points(HUGE, big=1.5e308)
    state, _ = run([ev("d1", "demo_request", T0)], r)
    assert state.engagement == 1.5e308
    error = refused(state, ev("d2", "demo_request", T0 + 1), r)
    assert error.reason == f'rule "big" would make its share of the engagement score inf; {REFUSED}'
    apply(state, ev("d3", "demo_request", T0 + 10 * H30), r)  # decayed enough: finite
    assert math.isfinite(state.engagement) and state.engagement > 1.5e308
    apply(state, ev("late", "demo_request", T0 + 1), r)  # a late award arrives decayed
    assert math.isfinite(state.engagement)


def test_shares_that_fit_but_sum_past_the_largest_float_are_refused() -> None:
    r = with_points(HUGE, visit=1e308, also=1e308)
    state = LeadState("lead-1")
    error = refused(state, ev("v", "page_view", T0), r)
    assert (error.reason, error.kind) == (
        f"the event's awards would make the engagement score inf; {REFUSED}", "not_finite")


def test_fit_rules_that_would_sum_to_a_non_finite_fit_are_refused() -> None:
    for points, shown in [({"ceo": math.inf}, "inf"), ({"ceo": 1e308, "large": 1e308}, "inf"),
                          ({"ceo": math.inf, "large": -math.inf}, "nan")]:
        r = with_points(HUGE, **points)
        state = decayed_hot_lead()
        error = refused(state, ev("p", "profile_update", LATER, job_title="CEO", size=200), r)
        assert (error.reason, error.kind) == (
            f"the fit rules would make the fit score {shown}; {REFUSED}", "not_finite")


def test_awards_below_2_to_the_970_can_never_overflow() -> None:
    # The proof behind Ruleset.awards_stay_finite: the largest float plus anything below 2**970
    # rounds back to the largest float; 2**970 itself would round up to inf.
    largest = sys.float_info.max
    below = math.nextafter(2.0 ** 970, 0.0)
    assert largest + below == largest and largest + 2.0 ** 970 == math.inf
    state = LeadState("lead-1", t_ref=T0, engagement=largest, contributions={"big": largest})
    safe = with_points(HUGE, big=below)
    apply(state, ev("d1", "demo_request", T0), safe)  # applied on the proof alone
    assert (state.engagement, state.contributions["big"]) == (largest, largest)
    error = refused(state, ev("d2", "demo_request", T0), with_points(HUGE, big=2.0 ** 970))
    assert error.kind == "not_finite"
