"""The live demo's funnel (streams.demo.LiveDemo) and its rules (config/demo-rules.yaml),
without servers: the deck's exact shape, reproducibility, and the story it tells when
its events are scored as the worker scores them, tick by tick, swept every second as
``leadscore dev`` sweeps; its history fast-forwarded (demo_history) and the conversion
model trained on it (config/demo-model.json, by bench.demo_model). tests/test_dev.py
runs the same demo through ``leadscore dev``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from scoring.engine import Notification, score_at
from scoring.events import CONVERTED, parse_event
from scoring.model import Model
from scoring.preview import band
from scoring.rules import Ruleset, load_rules, parse_duration
from scoring.store.in_memory import MemoryStore
from streams.demo import (
    DECK,
    FUNNEL,
    LOOKALIKES,
    NEW_LEAD_EVERY,
    TICK_SECONDS,
    LiveDemo,
    demo_history,
)

CONFIG = Path(__file__).resolve().parent.parent / "config"
DEMO_RULES = load_rules(CONFIG / "demo-rules.yaml")
DEMO_MODEL = Model.from_json(orjson.loads((CONFIG / "demo-model.json").read_bytes()))
T0 = 1_793_923_200_000  # 2026-11-06T00:00:00Z
TICK_MS = int(TICK_SECONDS * 1000)


def test_the_demo_rules_are_the_default_rules_with_a_half_life_of_minutes() -> None:
    demo = yaml.safe_load((CONFIG / "demo-rules.yaml").read_text())
    default = yaml.safe_load((CONFIG / "rules.yaml").read_text())
    assert (demo.pop("name"), demo.pop("half_life")) == ("demo", "2m")
    assert (default.pop("name"), default.pop("half_life")) == ("default", "30d")
    assert demo == default
    assert DEMO_RULES.half_life_ms == parse_duration("2m")


@pytest.mark.parametrize("seed", [1, 14, 99])
def test_every_deck_of_the_demo_holds_the_funnel_exactly(seed: int) -> None:
    demo = LiveDemo(seed)
    decks = 4
    for tick in range(decks * DECK * NEW_LEAD_EVERY):
        demo.tick(T0 + tick * TICK_MS)
    assert demo.leads == decks * DECK == 104
    dealt = list(demo.personas.values())  # in the order the leads came
    shape = {name: persona.per_deck for name, persona in FUNNEL.items()}
    assert shape == {"visitor": 12, "reader": 4, "enriched": 1, "evaluator": 2, "binger": 2,
                     "buyer": 1, "customer": 1, "unsubscriber": 2, "student": 1}
    for deck in range(decks):
        assert Counter(dealt[deck * DECK:(deck + 1) * DECK]) == shape


def test_the_demo_is_reproducible_tick_for_tick_and_its_events_are_valid() -> None:
    one, two, other = LiveDemo(5), LiveDemo(5), LiveDemo(6)
    ticks = [T0 + tick * TICK_MS for tick in range(400)]
    first = [one.tick(now) for now in ticks]
    assert first == [two.tick(now) for now in ticks]
    assert first != [other.tick(now) for now in ticks]
    events = [event for batch in first for event in batch]
    assert len({(e["lead_id"], e["event_id"]) for e in events}) == len(events)
    by_lead: dict[str, list[dict[str, Any]]] = {}
    for batch, now in zip(first, ticks, strict=True):
        for event in batch:
            assert event["ts"] == now
            parse_event(orjson.dumps(event), latest_ms=now)  # the worker would accept it
            by_lead.setdefault(event["lead_id"], []).append(event)
    for lead, sent in by_lead.items():
        profiled = bool(FUNNEL[one.personas[lead]].profiles)
        assert (sent[0]["type"] == "profile_update") == profiled, lead
    # Anonymous visitors send a page or two and nothing else.
    visitors = [sent for lead, sent in by_lead.items() if one.personas[lead] == "visitor"]
    assert visitors and all(1 <= len(sent) <= 2 for sent in visitors)
    assert {e["type"] for sent in visitors for e in sent} == {"page_view"}


@dataclass
class Played:
    """What the worker would have made of ``seconds`` of the demo."""

    notes: list[tuple[float, Notification]] = field(default_factory=list)  # (second, n)
    customer_at: float | None = None  # the second the first lead became a customer
    bands: dict[float, list[int]] = field(default_factory=dict)  # second -> leads per band


def play(demo: LiveDemo, rules: Ruleset, seconds: int, bands_at: set[float]) -> Played:
    store, played = MemoryStore(rules, history_size=0), Played()
    for tick in range(int(seconds / TICK_SECONDS)):
        now, second = T0 + tick * TICK_MS, tick * TICK_SECONDS
        events = [parse_event(orjson.dumps(e), latest_ms=now) for e in demo.tick(now)]
        notes = store.apply_now(events).notifications
        if tick % NEW_LEAD_EVERY == 0:  # dev sweeps every second
            notes += store.sweep_now(now)
        played.notes += [(second, n) for n in notes]
        states = store.states()
        if played.customer_at is None and any(s.stage == "customer" for s in states.values()):
            played.customer_at = second
        if second in bands_at:
            count = Counter(band(score_at(s, now, rules)) for s in states.values())
            played.bands[second] = [count[b] for b in range(10)]
    return played


def first(played: Played, kind: str, cause: str, group: str | None = None) -> float:
    """The second of the first ``kind`` by ``cause`` of the lead's own score, or of
    ``group``'s."""
    return next(second for second, n in played.notes
                if n["type"] == kind and n["cause"] == cause and n["group"] == group)


def test_the_demo_tells_the_story_within_its_first_minutes() -> None:
    """`make run` as README says: a lead turns hot within seconds, one converts within
    half a minute, one cools by decay within two minutes, and at two minutes the leads
    span every score band, hot for many different reasons."""
    played = play(LiveDemo(), DEMO_RULES, 300, {30.0, 120.0, 299.5})
    # The play is deterministic (seed 14): the seconds README's "The demo" promises.
    assert first(played, "lead.hot", "event") == 4.0
    assert played.customer_at == 9.0
    assert first(played, "lead.cooled", "event") == 21.5  # a hot lead that unsubscribed
    assert first(played, "lead.cooled", "decay") == 83.0
    assert sum(1 for leads in played.bands[30.0] if leads) >= 7
    assert all(played.bands[120.0]) and all(played.bands[299.5])
    # The long tail: most leads never get far, as in a real funnel.
    assert played.bands[299.5][0] > sum(played.bands[299.5]) / 2
    hot = [n for _, n in played.notes if n["type"] == "lead.hot" and n["group"] is None]
    assert len({n["reasons"][0]["rule"] for n in hot}) >= 4
    assert len({tuple(r["rule"] for r in n["reasons"][:3]) for n in hot}) >= 8


def test_the_demo_turns_leads_hot_for_each_product_line() -> None:
    """Score groups (SPEC 10) in `make run`: a product line's page and its pricing page
    make a lead hot for that line within seconds (the first before it is hot itself),
    each line's first cools by decay about two minutes later, and leads hot for a line
    alone are never moved to sql: only the lead's own score moves the stage."""
    played = play(LiveDemo(), DEMO_RULES, 300, set())
    assert first(played, "lead.hot", "event", "scoring") == 2.0  # demo-2, hot itself at 4.0
    assert first(played, "lead.hot", "event", "alerts") == 35.5
    assert first(played, "lead.cooled", "decay", "scoring") == 122.0  # crossed at 121.75
    assert first(played, "lead.cooled", "decay", "alerts") == 156.0  # crossed at 155.001
    notes = [n for _, n in played.notes]
    assert [(n["notification_id"], n["group"]) for n in notes if n["lead_id"] == "demo-2"
            ][:2] == [("demo-2:1", "scoring"), ("demo-2:2", None)]  # one counter
    for n in notes:
        if n["group"] is not None:
            assert n["fit"] == 0.0 and n["threshold"] == 25, n
            assert {r["rule"] for r in n["reasons"]} <= set(DEMO_RULES.group(n["group"]).rules)
    hot_itself = {n["lead_id"] for n in notes if n["group"] is None and n["type"] == "lead.hot"}
    line_alone = {n["lead_id"] for n in notes if n["group"] is not None} - hot_itself
    assert len(line_alone) >= 3
    assert all(n["stage"] != "sql" for n in notes if n["lead_id"] in line_alone)


def test_the_demo_model_is_trained_for_the_demo_rules() -> None:
    """dev --demo serves config/demo-model.json only for the rules it was trained for: an
    edit of config/demo-rules.yaml (any byte: a new rules_version) wants a new model."""
    assert DEMO_MODEL.rules_version == DEMO_RULES.version, (
        f"config/demo-model.json is for rules_version {DEMO_MODEL.rules_version}, but "
        f"config/demo-rules.yaml is {DEMO_RULES.version}: run `python -m bench.demo_model` "
        "and commit the new config/demo-model.json")
    DEMO_MODEL.check(DEMO_RULES)  # (its features are the rules')
    assert DEMO_MODEL.horizon == "10m"


def test_the_demo_history_is_the_live_demo_fast_forwarded() -> None:
    """demo_history: the events the live demo sends its first leads, tick for tick,
    stamped on a clock that moves TICK_SECONDS a tick, every journey to its end."""
    leads = 60
    history = demo_history(leads, 5, T0)
    demo, live = LiveDemo(5), []
    for tick in range(leads * NEW_LEAD_EVERY + 2400):  # 20 minutes: every journey is over
        live += [e for e in demo.tick(T0 + tick * TICK_MS)
                 if int(e["lead_id"].removeprefix("demo-")) <= leads]
    assert history == live
    assert {e["lead_id"] for e in history} <= {f"demo-{n}" for n in range(1, leads + 1)}
    assert history[0]["ts"] == T0 and all(e["ts"] % TICK_MS == T0 % TICK_MS for e in history)


def test_the_history_of_the_demo_model_adds_lookalikes_that_convert_or_not() -> None:
    """The model's history (bench.demo_model) deals the funnel and LOOKALIKES: customers
    and closers convert, every one; stalled customers-to-be and everyone else never do."""
    funnel = FUNNEL | LOOKALIKES
    leads = 3 * (DECK + 2)  # three decks
    demo = LiveDemo(3, funnel=funnel)  # the personas: dealt as the history deals them
    for tick in range(leads * NEW_LEAD_EVERY):
        demo.tick(T0 + tick * TICK_MS)
    assert Counter(demo.personas.values()) == {name: p.per_deck * 3
                                               for name, p in funnel.items()}
    sent: dict[str, list[str]] = {}
    for event in demo_history(leads, 3, T0, funnel=funnel):
        sent.setdefault(event["lead_id"], []).append(event["type"])
    converted = {lead for lead, types in sent.items() if CONVERTED in types}
    assert converted == {lead for lead, persona in demo.personas.items()
                         if persona in ("customer", "closer")}
    # Lookalikes: who they look like is all the model can see before they convert or not.
    assert LOOKALIKES["stalled"].profiles == FUNNEL["customer"].profiles
    assert LOOKALIKES["closer"].profiles == FUNNEL["buyer"].profiles


def test_the_demo_model_tells_the_buyers_from_the_crowd() -> None:
    """What the dashboard's drawer shows a minute into `make run`: the highest conversion
    probability is a buyer's, the anonymous visitors' are about 0, and each lead's
    factors are features of the model."""
    demo = LiveDemo()
    store = MemoryStore(DEMO_RULES, history_size=0)
    now = T0
    for tick in range(int(60 / TICK_SECONDS)):
        now = T0 + tick * TICK_MS
        store.apply_now([parse_event(orjson.dumps(e), latest_ms=now) for e in demo.tick(now)])
    explained = {lead: DEMO_MODEL.explain(state, now, DEMO_RULES)
                 for lead, state in store.states().items()}
    # (A customer's p_convert is None: it has converted.)
    by_p = sorted(explained, key=lambda lead: -(explained[lead]["p_convert"] or 0.0))
    assert demo.personas[by_p[0]] == "buyer", [(demo.personas[lead], explained[lead])
                                               for lead in by_p[:5]]
    assert explained[by_p[0]]["p_convert"] > 0.5
    visitors = [lead for lead in explained if demo.personas[lead] == "visitor"]
    assert visitors and all(explained[lead]["p_convert"] < 0.01 for lead in visitors)
    for lead, p in explained.items():
        if store.states()[lead].stage == "customer":  # converted: nothing left to predict
            assert p == {"p_convert": None, "p_factors": []}
            continue
        assert p["p_factors"] and {f["feature"] for f in p["p_factors"]} <= set(
            DEMO_MODEL.features)
