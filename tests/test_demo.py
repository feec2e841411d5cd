"""The live demo's funnel (streams.demo.LiveDemo) and its rules (config/demo-rules.yaml),
without servers: the deck's exact shape, reproducibility, and the story it tells when
its events are scored as the worker scores them, tick by tick, swept every second as
``leadscore dev`` sweeps (its companies' too: accounts, SPEC 11); its history
fast-forwarded (demo_history) and the conversion model trained on it
(config/demo-model.json, by bench.demo_model). tests/test_dev.py runs the same demo
through ``leadscore dev``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from scoring.engine import Notification, score_at
from scoring.events import CONVERTED, Event, format_ts, parse_event
from scoring.model import Model
from scoring.preview import band
from scoring.rules import Ruleset, load_rules, parse_duration
from scoring.store.in_memory import MemoryStore
from streams.demo import (
    COMPANIES,
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
    assert len({(e.get("lead_id"), e.get("account_id"), e["event_id"]) for e in events}) \
        == len(events)
    by_lead: dict[str, list[dict[str, Any]]] = {}
    by_account: dict[str, list[dict[str, Any]]] = {}
    for batch, now in zip(first, ticks, strict=True):
        for event in batch:
            assert event["ts"] == now
            parse_event(orjson.dumps(event), latest_ms=now)  # the worker would accept it
            if "account_id" in event:
                by_account.setdefault(event["account_id"], []).append(event)
            else:
                by_lead.setdefault(event["lead_id"], []).append(event)
    for lead, sent in by_lead.items():
        if lead in one.accounts:  # a company's: its profile names the company
            assert lead not in one.personas
            assert sent[0]["type"] == "profile_update", lead
            assert sent[0]["properties"]["account_id"] == one.accounts[lead] \
                == lead.rsplit("-", 1)[0]
            continue
        profiled = bool(FUNNEL[one.personas[lead]].profiles)
        assert (sent[0]["type"] == "profile_update") == profiled, lead
    # The companies: each one's profile first, then intent data; every one of its leads
    # has sent its events by 400 ticks (200 s).
    assert {a: [e["type"] for e in sent] for a, sent in by_account.items()} == {
        "acme": ["account_update", "intent_surge", "intent_surge"],
        "globex": ["account_update", "intent_surge"], "initech": ["account_update"]}
    assert sorted(one.accounts) == ["acme-1", "acme-2", "acme-3", "globex-1", "globex-2",
                                    "initech-1", "initech-2"]
    theirs = [e for e in events if "account_id" in e or e["lead_id"] in one.accounts]
    assert len(theirs) == sum(1 + len(c.members) + len(c.timeline) for c in COMPANIES)
    # They draw nothing from the seed's generator: without them, the funnel is the same.
    alone = LiveDemo(5, companies=())
    assert [[e for e in batch if e.get("lead_id") in one.personas] for batch in first] == \
        [alone.tick(now) for now in ticks]
    # Anonymous visitors send a page or two and nothing else.
    visitors = [sent for lead, sent in by_lead.items() if one.personas.get(lead) == "visitor"]
    assert visitors and all(1 <= len(sent) <= 2 for sent in visitors)
    assert {e["type"] for sent in visitors for e in sent} == {"page_view"}


@dataclass
class Played:
    """What the worker would have made of ``seconds`` of the demo."""

    notes: list[tuple[float, Notification]] = field(default_factory=list)  # (second, n)
    customer_at: float | None = None  # the second the first lead became a customer
    bands: dict[float, list[int]] = field(default_factory=dict)  # second -> leads per band
    # The accounts' (SPEC 11) account.hot and account.cooled, and their final states.
    account_notes: list[tuple[float, Notification]] = field(default_factory=list)
    accounts: MemoryStore | None = None
    leads: MemoryStore | None = None


def account_side(events: list[Event], forwards: list[tuple[int, Event]]) -> list[Event]:
    """What reaches the accounts of a tick's ``events``: each account event, and each lead
    event's member award (``forwards``: by the index of the event among the lead events),
    in the order of their events (as scoring.offline replays them)."""
    awards, stream = dict(forwards), []
    leads = 0
    for event in events:
        if event.account:
            stream.append(event)
        else:
            if leads in awards:
                stream.append(awards[leads])
            leads += 1
    return stream


def play(demo: LiveDemo, rules: Ruleset, seconds: int, bands_at: set[float]) -> Played:
    store, played = MemoryStore(rules, history_size=0), Played()
    accounts = MemoryStore(rules.accounts.rules, history_size=0) if rules.accounts else None
    played.leads, played.accounts = store, accounts
    for tick in range(int(seconds / TICK_SECONDS)):
        now, second = T0 + tick * TICK_MS, tick * TICK_SECONDS
        events = [parse_event(orjson.dumps(e), latest_ms=now) for e in demo.tick(now)]
        outcome = store.apply_now([e for e in events if not e.account])
        notes = outcome.notifications
        account_notes = [] if accounts is None else \
            accounts.apply_now(account_side(events, outcome.forwards)).notifications
        if tick % NEW_LEAD_EVERY == 0:  # dev sweeps every second
            notes += store.sweep_now(now)
            if accounts is not None:
                account_notes += accounts.sweep_now(now)
        played.notes += [(second, n) for n in notes]
        played.account_notes += [(second, n) for n in account_notes]
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


H_S = DEMO_RULES.half_life_ms / 1000  # 120 s


def decayed(awards: list[tuple[float, float]], at: float) -> float:
    """The closed form: the sum of ``awards`` (second, points) up to ``at``, each decayed
    2^(-(at - second)/H) from its own second."""
    return math.fsum(points * 2.0 ** (-(at - s) / H_S) for s, points in awards if s <= at)


def test_the_demo_turns_a_company_hot_with_none_of_its_leads_hot_then_it_cools() -> None:
    """Accounts (SPEC 11) in `make run`: acme's three people read the pricing page and
    the docs, none of them more than warm, and an intent-data provider reports acme
    researching lead scoring twice: acme turns hot at 44 s, on the second intent surge,
    with no lead of it ever hot (not even for a product line), and cools by decay about
    3.5 minutes in. initech turns hot with its champion (hot itself), globex never."""
    demo = LiveDemo()
    played = play(demo, DEMO_RULES, 300, set())
    assert played.accounts is not None and played.leads is not None
    # The awards (second, points) each reaches acme with, by the demo rules: a page view is
    # site-visit 1 plus its page's rule (pricing-page 15, scoring-docs 5), a webinar 20,
    # an intent surge 15 (the account's own rule); acme's fit is 15 + 10 (400 employees,
    # saas). By lead, as the account attributes them:
    members = {"acme-1": [(20.0, 1 + 15), (48.0, 20)], "acme-2": [(26.0, 1 + 5), (52.0, 1 + 5)],
               "acme-3": [(36.0, 1 + 15)]}
    intent = [(32.0, 15), (44.0, 15)]
    awards = sorted([*intent, *(a for sent in members.values() for a in sent)])
    fit = 25.0
    # Before the second surge acme is warm; with it, hot.
    assert fit + decayed(awards, 43.5) < 80 <= fit + decayed(awards, 44.0)
    hot_at = 44.0

    def at(second: float, rule_parts: dict[str, list[tuple[float, float]]]
           ) -> list[dict[str, Any]]:
        return [{"rule": rule, "points": round(decayed(parts, second), 2)}
                for rule, parts in rule_parts.items()]

    by_rule = {"intent-surge": intent, "pricing-page": [(20.0, 15), (36.0, 15)],
               "scoring-docs": [(26.0, 5)], "site-visit": [(20.0, 1), (26.0, 1), (36.0, 1)]}
    reasons = sorted([*at(hot_at, by_rule), {"rule": "account-mid-market", "points": 15.0},
                      {"rule": "account-target-industry", "points": 10.0}],
                     key=lambda r: (-r["points"], r["rule"]))[:5]
    leads = sorted(({"lead_id": lead, "points": round(decayed(sent, hot_at), 2)}
                    for lead, sent in members.items()), key=lambda m: -m["points"])
    engagement = decayed(awards, hot_at)
    # Its cooling: the last award at 52 s, then decay until fit + E falls below 60.
    last = max(s for s, _ in awards)
    crossing = last + H_S * math.log2(decayed(awards, last) / (60 - fit))
    f = (60 - fit) / decayed(awards, last)
    cooled_leads = sorted(({"lead_id": lead, "points": round(decayed(sent, last) * f, 2)}
                           for lead, sent in members.items()), key=lambda m: -m["points"])
    # initech: its champion's pricing page (16) and consultation request (50) at 75 and
    # 78 s, an engineer's docs page (6) at 82 s; fit 25 (150 employees, fintech).
    initech = [(75.0, 16), (78.0, 50), (82.0, 6)]
    initech_crossing = 82 + H_S * math.log2(decayed(initech, 82) / (60 - 25))
    assert [(second, n["type"], n["account_id"]) for second, n in played.account_notes] == [
        (hot_at, "account.hot", "acme"), (78.0, "account.hot", "initech"),
        (math.ceil(initech_crossing), "account.cooled", "initech"),  # (the sweep after)
        (math.ceil(crossing), "account.cooled", "acme")]
    assert 200 < initech_crossing < crossing < 210  # about 3.5 minutes in
    hot, cooled = (n for _, n in played.account_notes if n["account_id"] == "acme")
    assert hot == {
        "type": "account.hot", "notification_id": "acme:1", "account_id": "acme",
        "score": round(fit + engagement, 2), "fit": fit, "engagement": round(engagement, 2),
        "threshold": 80, "cause": "event", "event_ts": format_ts(T0 + int(hot_at * 1000)),
        "emitted_at": None, "rules_version": DEMO_RULES.version,
        "leads": leads, "reasons": reasons}
    assert [m["lead_id"] for m in hot["leads"]] == ["acme-3", "acme-1", "acme-2"]
    assert hot["score"] == 88.61  # (streams.demo's comments: "89, hot")
    assert (cooled["type"], cooled["cause"], cooled["score"], cooled["engagement"]) == \
        ("account.cooled", "decay", 60.0, 35.0)
    assert cooled["event_ts"] == format_ts(round(T0 + crossing * 1000))
    assert cooled["leads"] == cooled_leads
    # None of the companies' leads was ever hot, for its own score or a product line's,
    # but initech's champion: hot at 78 s (fit 20 + 66), cooled by decay below 50.
    champion = 78 + H_S * math.log2(decayed([(75.0, 16), (78.0, 50)], 78) / (50 - 20))
    assert [(second, n["type"], n["lead_id"], n["group"]) for second, n in played.notes
            if n["lead_id"] in demo.accounts] == [
        (78.0, "lead.hot", "initech-1", None),
        (math.ceil(champion), "lead.cooled", "initech-1", None)]
    states = played.leads.states()
    assert sorted(demo.accounts) == [*sorted(members), "globex-1", "globex-2", "initech-1",
                                     "initech-2"]
    assert all(not states[lead].hot and not states[lead].groups_hot for lead in demo.accounts)
    # What the account keeps: its members' contributions and its profile.
    acme = played.accounts.states()["acme"]
    assert acme.profile == {"employees": 400, "industry": "saas"}
    assert acme.members == pytest.approx({lead: decayed(sent, last)
                                          for lead, sent in members.items()}, abs=1e-9)
    # globex: fit 0 (5,000 employees, retail); at its last award it is 46, warm.
    globex = played.accounts.states()["globex"]
    assert globex.fit == 0.0 and not globex.hot
    assert score_at(globex, T0 + 68_000, DEMO_RULES.accounts.rules) == pytest.approx(
        decayed([(50.0, 1), (54.0, 10), (58.0, 15), (62.0, 1 + 15), (68.0, 1 + 5)], 68),
        abs=1e-9)


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
        live += [e for e in demo.tick(T0 + tick * TICK_MS)  # (not the companies')
                 if e.get("lead_id", "").startswith("demo-")
                 and int(e["lead_id"].removeprefix("demo-")) <= leads]
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
        store.apply_now([parse_event(orjson.dumps(e), latest_ms=now) for e in demo.tick(now)
                         if "lead_id" in e])  # (the leads' events; the accounts' are not theirs)
    explained = {lead: DEMO_MODEL.explain(state, now, DEMO_RULES)
                 for lead, state in store.states().items()
                 if lead in demo.personas}  # the funnel's leads (not the companies')
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
