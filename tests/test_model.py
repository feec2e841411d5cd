"""The conversion model (SPEC 12), the pure parts: features read from a lead's state at an
instant, the model file and its refusals, the probability and its factors, and which
examples a history gives with which labels."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from helpers import BASE_RULES, DAY, HOUR, T0, ev, rules, run

from scoring.errors import ModelError
from scoring.events import Event
from scoring.model import Model, feature_names, features_at, load_model, model_path
from scoring.rules import parse_rules
from scoring.suggest import rule_weights, scale_points, suggest
from scoring.training import build_examples, split_parts

BODY = """
fit:
  - {id: decision-maker, if: {job_title: CEO}, points: 20}
engagement:
  - {id: pricing, event: page_view, if: {url: {matches: "^/pricing"}}, points: 15}
  - {id: demo, event: demo_request, points: 50}
  - {id: blog, event: page_view, if: {url: {matches: "^/blog"}}, points: 2}
"""
RULES = rules(BODY, "1d")
BASE = BASE_RULES.format(half_life="1d")
NAMES = ["rule:pricing", "rule:demo", "rule:blog", "fit:decision-maker", "stage:mql",
         "stage:sql", "stage:customer", "engagement"]


def model(coefficients: list[float], intercept: float = -2.0, slope: float = 0.5,
          offset: float = 0.25, means: list[float] | None = None,
          scales: list[float] | None = None, **changes: Any) -> Model:
    fields: dict[str, Any] = {
        "rules_version": RULES.version, "horizon": "30d", "horizon_ms": 30 * DAY,
        "features": tuple(NAMES), "means": tuple(means or [0.0] * len(NAMES)),
        "scales": tuple(scales or [1.0] * len(NAMES)), "coefficients": tuple(coefficients),
        "intercept": intercept, "slope": slope, "offset": offset, "info": {}}
    return Model(**(fields | changes))


def hot_ceo() -> list[Event]:
    return [ev("p", "profile_update", T0, job_title="CEO"),
            ev("e1", "page_view", T0 + HOUR, url="/pricing"),
            ev("e2", "demo_request", T0 + 2 * HOUR)]


def test_features_are_the_states_numbers_decayed_to_the_instant() -> None:
    state, notes = run(hot_ceo(), RULES)
    assert [n["type"] for n in notes] == ["lead.hot"]  # 20 + 15 * 2^(-1/24) + 50 >= 70
    pricing = 15 * 2 ** (-1 / 24)
    assert feature_names(RULES) == NAMES
    # At its last event: nothing decayed since T.
    assert features_at(state, T0 + 2 * HOUR, RULES) == pytest.approx(
        [pricing, 50, 0, 1, 0, 1, 0, pricing + 50], rel=1e-12)
    # A day later every contribution and E have halved; fit and stage have not.
    later = features_at(state, T0 + 26 * HOUR, RULES)
    assert later == pytest.approx([pricing / 2, 25, 0, 1, 0, 1, 0, (pricing + 50) / 2],
                                  rel=1e-12)
    # An instant before T reads as T, as the score does.
    assert features_at(state, T0, RULES) == features_at(state, T0 + 2 * HOUR, RULES)


def test_probability_and_factors_follow_the_formula_and_decay() -> None:
    state, _ = run(hot_ceo(), RULES)
    coefficients = [0.08, 0.04, 0.5, 1.2, 0.3, -0.6, 0.0, 0.01]
    m = model(coefficients, means=[1.0] * 8, scales=[2.0] * 8)
    at = T0 + 26 * HOUR
    x = features_at(state, at, RULES)
    terms = [0.5 * c * (v - 1.0) / 2.0 for c, v in zip(coefficients, x, strict=True)]
    logit = 0.5 * -2.0 + 0.25 + sum(terms)
    shown = m.explain(state, at, RULES)
    assert shown["p_convert"] == round(1 / (1 + math.exp(-logit)), 4)
    # The three largest terms by size, signed, largest first: demo 0.5 * 0.04 * (25 - 1)
    # / 2, pricing 0.5 * 0.08 * (7.28 - 1) / 2, then blog (never seen: 0 is below the
    # mean of 1), ahead of engagement (0.078) and stage:mql (-0.075).
    assert shown["p_factors"] == [
        {"feature": "rule:demo", "effect": 0.24},
        {"feature": "rule:pricing", "effect": round(0.02 * (15 * 2 ** (-1 / 24) / 2 - 1), 4)},
        {"feature": "rule:blog", "effect": -0.125},
    ]
    assert [abs(f["effect"]) for f in shown["p_factors"]] == sorted(
        (abs(f["effect"]) for f in shown["p_factors"]), reverse=True)
    # Positive weights on decaying contributions: the probability fades with the score.
    assert m.explain(state, at + 30 * DAY, RULES)["p_convert"] < shown["p_convert"] < \
        m.explain(state, T0 + 2 * HOUR, RULES)["p_convert"]
    assert m.probability(x) == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-12)


def test_a_factor_of_no_effect_is_not_listed() -> None:
    state, _ = run(hot_ceo(), RULES)
    shown = model([0.0] * 7 + [0.02]).explain(state, T0 + 2 * HOUR, RULES)
    assert shown["p_factors"] == [{"feature": "engagement",
                                   "effect": round(0.5 * 0.02 * (15 * 2 ** (-1 / 24) + 50), 4)}]


def test_the_model_file_round_trips_and_is_refused_for_other_rules(tmp_path: Any) -> None:
    m = model([0.1] * 8, info={"metrics": {"auc": 0.8}})
    path = tmp_path / "model.json"
    path.write_bytes(orjson.dumps(m.to_json()))
    assert load_model(path, RULES) == m
    other = rules(BODY.replace("points: 50", "points: 40"), "1d")
    with pytest.raises(ModelError) as refused:
        load_model(path, other)
    assert str(refused.value) == (
        f"{path}: trained for rules_version {RULES.version}, but the rules in use are "
        f"{other.version} (test); retrain it with `leadscore model train --rules <the rules "
        "file> EVENTS` (README, \"Conversion probability\")")


@pytest.mark.parametrize(("content", "message"), [
    (b"{", "not JSON"),
    (b'{"format": "something else"}', "not a Leadscore model file"),
    (b'{"format": "leadscore-model/1", "rules_version": "x"}', "a damaged model file (KeyError"),
])
def test_a_bad_model_file_is_refused_saying_what_is_wrong(tmp_path: Any, content: bytes,
                                                          message: str) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message.replace("(", r"\(")):
        load_model(path)


def test_a_scale_of_zero_is_a_damaged_file(tmp_path: Any) -> None:
    data = model([0.1] * 8).to_json()
    data["features"][2]["scale"] = 0.0
    path = tmp_path / "model.json"
    path.write_bytes(orjson.dumps(data))
    with pytest.raises(ModelError, match="scale that is not positive"):
        load_model(path)


# --- examples and labels -----------------------------------------------------------------

def lines(events: list[Event]) -> list[bytes]:
    return [orjson.dumps({"event_id": e.event_id, "lead_id": e.lead_id, "type": e.type,
                          "ts": e.ts, "properties": e.properties}) for e in events]


def history() -> list[Event]:
    return [
        # a: three events, then converts at 10d, then more (never examples)
        ev("a1", "page_view", T0, "a", url="/pricing"),
        ev("a2", "page_view", T0 + 2 * DAY, "a", url="/blog"),
        ev("a3", "demo_request", T0 + 9 * DAY, "a"),
        ev("a4", "converted", T0 + 10 * DAY, "a"),
        ev("a5", "page_view", T0 + 11 * DAY, "a", url="/pricing"),
        # b: never converts; its late events' horizons run past the end
        ev("b1", "page_view", T0 + DAY, "b", url="/blog"),
        ev("b2", "page_view", T0 + 28 * DAY, "b", url="/pricing"),
        ev("b3", "page_view", T0 + 30 * DAY, "b", url="/blog"),
        # c: converts near the end; its example's horizon runs past the end too
        ev("c1", "demo_request", T0 + 29 * DAY, "c"),
        ev("c2", "converted", T0 + 29 * DAY + 12 * HOUR, "c"),
    ]


def test_examples_are_the_states_before_conversion_labelled_by_the_horizon() -> None:
    examples = build_examples(lines(history()), RULES, 5 * DAY)
    got = [(examples.lead_ids[lead], int(t - T0) // HOUR, int(y)) for lead, t, y
           in zip(examples.lead, examples.t, examples.y, strict=True)]
    # a at 0, 2d (conversion 10d and 8d ahead: beyond 5d), 9d (1d ahead); b at 1d. Left
    # out: b at 28d and 30d and c at 29d (horizon past the end, 30d), a after converting.
    assert got == [("a", 0, 0), ("b", 24, 0), ("a", 48, 0), ("a", 216, 1)]
    assert (examples.unlabelled, examples.conversions, examples.events) == (3, 2, 10)
    assert (examples.start, examples.end) == (T0, T0 + 30 * DAY)
    # The example at 9d is a's state then: the pricing page and the blog decayed (a
    # 1-day half-life), the demo request at full value, stage prospect.
    nine = list(examples.x[3])
    assert nine == pytest.approx([15 * 2.0 ** -9, 50, 2 * 2.0 ** -7, 0, 0, 0, 0,
                                  15 * 2.0 ** -9 + 50 + 2 * 2.0 ** -7], rel=1e-12)
    assert examples.score[3] == pytest.approx(15 * 2.0 ** -9 + 50 + 2 * 2.0 ** -7, rel=1e-12)


def test_examples_do_not_depend_on_arrival_order_so_none_sees_its_future() -> None:
    """Events replay in time order per lead: the state at t holds exactly the events at
    or before t, even when a later one arrived first (a late event, a shuffled file)."""
    ordered = build_examples(lines(history()), RULES, 5 * DAY)
    for seed in range(5):
        shuffled = history()
        random.Random(seed).shuffle(shuffled)
        examples = build_examples(lines(shuffled), RULES, 5 * DAY)
        assert examples.x.tolist() == ordered.x.tolist()
        assert examples.y.tolist() == ordered.y.tolist()
        assert examples.t.tolist() == ordered.t.tolist()
    # a's first example holds only its pricing page, though a3 (9 days later) may have
    # arrived before it.
    assert ordered.x[0].tolist() == [15, 0, 0, 0, 0, 0, 0, 15]


def test_bad_lines_are_listed_and_skipped() -> None:
    raw = lines(history())
    raw.insert(2, b'{"event_id": "x"}')
    examples = build_examples(raw, RULES, 5 * DAY)
    assert examples.bad_lines == [(3, "missing field lead_id")]
    assert len(examples.y) == 4


def test_the_split_keeps_every_training_label_out_of_the_test_period() -> None:
    """Test: the latest 20% of the span. Training: examples whose horizon ended before
    the split, so that no conversion in the test period labels a training example;
    a lead either fits or calibrates, never both."""
    times = [T0 + d * DAY for d in range(0, 101, 5)]  # 0, 5, ..., 100 days
    examples = build_examples(lines([ev(f"e{i}", "page_view", t, f"lead-{i % 7}", url="/blog")
                                     for i, t in enumerate(times)]
                                    + [ev("end", "page_view", T0 + 130 * DAY, "other")]),
                              RULES, 30 * DAY)
    split, parts = split_parts(examples, 30 * DAY)
    assert split == T0 + 80 * DAY  # examples span 0..100 days (130 is past its horizon)
    day = {name: sorted(int(t - T0) // DAY for t in examples.t[mask])
           for name, mask in parts.items()}
    assert day["test"] == [80, 85, 90, 95, 100]
    assert sorted(day["fit"] + day["calibration"]) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    fitted = set(examples.lead[parts["fit"]].tolist())
    assert fitted.isdisjoint(examples.lead[parts["calibration"]].tolist())


def test_suggested_points_follow_each_rules_weight_per_point_with_one_scale() -> None:
    """w_i = slope * (coef_i / scale_i + coef_E / scale_E): E is the sum of the
    contributions, so its weight counts for every rule. Points = k * w_i * p_i, with the
    one k that keeps the share of examples at or above the threshold, capped so that no
    award is worth more than the score range."""
    coefficients = [0.3, 0.0, -0.1, 0.0, 0.0, 0.0, 0.0, 0.2]
    m = model(coefficients, slope=0.5, scales=[3.0, 1.0, 2.0, 1, 1, 1, 1, 4.0])
    w = rule_weights(m, RULES)
    assert w == pytest.approx({"pricing": 0.5 * (0.1 + 0.05), "demo": 0.5 * 0.05,
                               "blog": 0.5 * (-0.05 + 0.05)}, abs=1e-15)
    # Examples: (pricing, demo, blog contributions); the rules' score is their sum.
    x = np.array([[15.0, 50, 0, 0, 0, 0, 0, 65], [0, 50, 2, 0, 0, 0, 0, 52],
                  [30, 0, 0, 0, 0, 0, 0, 30], [0, 0, 4, 0, 0, 0, 0, 4]])
    score = x[:, 7]
    # Under the rules none reaches 70: any k keeps that share (0), and bisection ends at
    # its lower bound, so the points are tiny.
    points = scale_points(m, RULES, x, score)
    assert set(points) == {"pricing", "demo", "blog"} and max(map(abs, points.values())) < 0.1
    # One example at 70 under the rules: k lifts exactly one learned sum to 70, the
    # first's (15 * 0.075 + 50 * 0.025 = 2.375; the third's is 2.25).
    points = scale_points(m, RULES, x, np.array([70.0, 52, 30, 4]))
    k = 70 / 2.375
    assert points == {"pricing": round(k * 0.075 * 15, 1), "demo": round(k * 0.025 * 50, 1),
                      "blog": 0.0} == {"pricing": 33.2, "demo": 36.8, "blog": 0.0}
    # All four at 70: the fourth has no learned points, so no k reaches it; the cap
    # stops k where the largest award (demo, 1.25 log-odds) is worth the range, 100.
    points = scale_points(m, RULES, x, np.array([70.0, 70, 70, 70]))
    assert points == {"pricing": 90.0, "demo": 100.0, "blog": 0.0}


def test_a_customer_has_no_probability_of_converting() -> None:
    """A lead that converted has settled the question; training never saw one."""
    state, _ = run([*hot_ceo(), ev("c", "converted", T0 + 3 * HOUR)], RULES)
    assert state.stage == "customer"
    assert model([0.1] * 8).explain(state, T0 + 3 * HOUR, RULES) == {"p_convert": None,
                                                                      "p_factors": []}


def test_a_model_path_may_name_the_rules_version() -> None:
    """One file per rules version (deploy/k8s): a worker of each rules reads its own."""
    assert model_path("/models/{rules_version}.json", RULES) == \
        Path(f"/models/{RULES.version}.json")
    assert model_path("/models/model.json", RULES) == Path("/models/model.json")


def test_suggest_refuses_points_written_through_an_anchor() -> None:
    """Points are rewritten where they are written: points shared through an anchor
    would be rewritten twice (the rules file refuses merge keys already)."""
    text = (BASE + """
engagement:
  - {id: pricing, event: page_view, if: {url: {matches: "^/pricing"}}, points: &p 15}
  - {id: pricing-again, event: page_view, if: {url: {matches: "^/pricing"}}, points: *p}
""").encode()
    anchored = parse_rules(text, "anchored.yaml")
    names = feature_names(anchored)
    m = model([0.1] * len(names), rules_version=anchored.version, features=tuple(names),
              means=[0.0] * len(names), scales=[1.0] * len(names),
              info={"suggested_points": {"pricing": 20.0, "pricing-again": 20.0}})
    with pytest.raises(ModelError, match=r"anchored.yaml: engagement\[1\] uses a YAML anchor"):
        suggest(m, anchored, text, "anchored.yaml")
