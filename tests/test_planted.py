"""The planted histories of bench/planted.py keep their own promises, without servers:
the same bytes for a seed, valid events, conversions only where STRONG events put them,
NOISE that carries nothing, late and repeated deliveries in the stated shares, and the
leak event only after conversion. Which rule an event triggers is read from
config/rules.yaml, as the model reads it, never from the generator."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import planted
from scoring.events import parse_event, parse_ts
from scoring.rules import load_rules

RULES = load_rules(Path(__file__).resolve().parent.parent / "config" / "rules.yaml")
DAY = 86_400_000
START = parse_ts(planted.START)
END = START + int(planted.DAYS * DAY)
Event = dict[str, Any]


def fired(event: Event) -> set[str]:
    """The engagement rules of the default rules that an event triggers."""
    return {rule.id for rule in RULES.by_type.get(event["type"], ())
            if rule.test is None or rule.test(event["properties"])}


def strong_rule(event: Event) -> str | None:
    hits = fired(event) & set(planted.STRONG)
    assert len(hits) <= 1
    return next(iter(hits), None)


def first_deliveries(events: list[Event]) -> list[Event]:
    seen: set[tuple[str, str]] = set()
    out = []
    for event in events:
        key = (event["lead_id"], event["event_id"])
        if key not in seen:
            seen.add(key)
            out.append(event)
    return out


def conversions(events: list[Event]) -> dict[str, int]:
    return {e["lead_id"]: e["ts"] for e in events if e["type"] == "converted"}


@pytest.fixture(scope="module")
def default() -> list[Event]:
    return planted.history()  # 4,000 leads over a year, seed 1


@pytest.fixture(scope="module")
def leaky() -> list[Event]:
    return planted.history(leak=True)


@pytest.fixture(scope="module")
def no_base() -> list[Event]:
    """Many leads with little everyday behaviour and no base rate: conversions are all
    STRONG events' doing."""
    return planted.history(20_000, base_rate=0.0, events_per_lead=1)


def test_the_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    paths = [tmp_path / name for name in ("a.jsonl", "b.jsonl", "c.jsonl")]
    for path, seed in zip(paths, ("7", "7", "8"), strict=True):
        planted.main([str(path), "--leads", "300", "--days", "60", "--seed", seed,
                      "--start", "2026-03-01T00:00:00Z"])
    a, b, c = (path.read_bytes() for path in paths)
    assert a == b != c
    assert [orjson.loads(line) for line in a.splitlines()] == planted.history(
        300, 60, 7, parse_ts("2026-03-01T00:00:00Z"))


def test_every_event_is_valid_and_each_lead_opens_with_its_profile(
        default: list[Event]) -> None:
    assert 60_000 < len(default) < 75_000
    opened: dict[str, str] = {}
    for event in default:
        parsed = parse_event(orjson.dumps(event))
        assert (parsed.event_id, parsed.lead_id, parsed.type, parsed.ts) == (
            event["event_id"], event["lead_id"], event["type"], event["ts"])
        assert START <= parsed.ts <= END
        opened.setdefault(event["lead_id"], event["type"])
    assert len(opened) == 4000
    assert set(opened.values()) == {"profile_update"}
    # A repeated event_id is a re-delivery of the same event, never another event.
    by_id: dict[tuple[str, str], Event] = {}
    for event in default:
        assert by_id.setdefault((event["lead_id"], event["event_id"]), event) == event


def test_late_and_repeated_deliveries_come_in_the_stated_shares(
        default: list[Event]) -> None:
    first = first_deliveries(default)
    assert 0.5 * planted.DUPLICATES < 1 - len(first) / len(default) < 1.5 * planted.DUPLICATES
    latest = late = 0
    for event in first:  # ts earlier than an event that arrived before it
        late += event["ts"] < latest
        latest = max(latest, event["ts"])
    assert 0.7 * planted.LATE < late / len(first) < 1.2 * planted.LATE
    # Across leads, arrival follows time: the output is interleaved, not lead by lead.
    runs = sum(a["lead_id"] != b["lead_id"] for a, b in pairwise(default))
    assert runs > 0.9 * len(default)


def test_a_few_hundred_leads_convert_most_just_after_a_strong_event(
        default: list[Event]) -> None:
    converted = conversions(default)
    assert 300 < len(converted) < 550  # of 4,000
    assert Counter(e["lead_id"] for e in first_deliveries(default)
                   if e["type"] == "converted").most_common(1)[0][1] == 1
    strong = defaultdict(list)
    for event in default:
        if strong_rule(event):
            strong[event["lead_id"]].append(event["ts"])
    after_strong = sum(any(c - 20 * DAY <= t < c for t in strong[lead])
                       for lead, c in converted.items())
    assert after_strong / len(converted) > 0.85  # the rest: the base rate


def test_without_the_base_rate_every_conversion_follows_a_strong_event(
        no_base: list[Event]) -> None:
    converted = conversions(no_base)
    assert len(converted) > 1000
    strong = defaultdict(list)
    competitors = set()
    for event in no_base:
        if strong_rule(event):
            strong[event["lead_id"]].append(event["ts"])
        if event["type"] == "profile_update" and any(
                r.id == "competitor" and r.test(event["properties"]) for r in RULES.fit):
            competitors.add(event["lead_id"])
    low, high = (days * DAY for days in planted.CONVERT_AFTER_DAYS)
    for lead, c in converted.items():
        assert any(low <= c - t <= high for t in strong[lead]), lead
    assert competitors and not competitors & set(converted)  # FIT_EFFECT: 0


def test_each_strong_rule_converts_at_its_own_rate_and_docs_beat_pricing(
        no_base: list[Event]) -> None:
    """The lead's first STRONG event: how often the lead converts within 20 days, by its
    rule. Later STRONG events add the same for every rule, so the order is P_CONVERT's."""
    converted = conversions(no_base)
    firsts: dict[str, tuple[int, str]] = {}
    for event in no_base:
        rule = strong_rule(event)
        if rule and (event["lead_id"] not in firsts or event["ts"] < firsts[event["lead_id"]][0]):
            firsts[event["lead_id"]] = (event["ts"], rule)
    tried: Counter[str] = Counter()
    won: Counter[str] = Counter()
    for lead, (ts, rule) in firsts.items():
        tried[rule] += 1
        won[rule] += lead in converted and converted[lead] - ts <= 20 * DAY
    rate = {rule: won[rule] / tried[rule] for rule in planted.STRONG}
    assert rate["consultation-request"] > rate["scoring-docs"] > rate["scoring-pricing-page"]
    assert rate["scoring-docs"] - rate["scoring-pricing-page"] > 0.025
    assert min(tried.values()) > 500


def test_noise_events_are_as_common_among_converted_leads_as_among_the_rest(
        default: list[Event]) -> None:
    """Of each lead's everyday events (not STRONG) before its conversion, the share that
    triggers a NOISE rule is the same whether the lead converts or not: the mix's 16%."""
    converted = conversions(default)
    noise: Counter[bool] = Counter()
    everyday: Counter[bool] = Counter()
    follows: Counter[str] = Counter()
    for event in first_deliveries(default):
        c = converted.get(event["lead_id"])
        if event["type"] in ("profile_update", "converted") or (c and event["ts"] > c):
            continue
        rules = fired(event)
        if rules & set(planted.STRONG):
            follows["strong"] += bool(c and c - event["ts"] <= 20 * DAY)
            follows["strong events"] += 1
            continue
        everyday[c is not None] += 1
        if rules & set(planted.NOISE):
            noise[c is not None] += 1
            follows["noise"] += bool(c and c - event["ts"] <= 20 * DAY)
    share = {group: noise[group] / everyday[group] for group in (True, False)}
    assert abs(share[True] - 0.16) < 0.02 and abs(share[False] - 0.16) < 0.01
    assert everyday[True] > 3000
    # NOISE events are followed by a conversion only as often as co-occurring STRONG
    # events make it: a fraction of what STRONG events see.
    assert follows["noise"] / noise.total() < 0.3 * follows["strong"] / follows["strong events"]


def test_after_converting_a_lead_only_reads_docs(leaky: list[Event]) -> None:
    converted = conversions(leaky)
    for event in leaky:
        c = converted.get(event["lead_id"])
        if c is not None and event["ts"] > c:
            assert event["type"] == planted.LEAK_EVENT or (
                event["type"] == "page_view" and event["properties"]["url"].startswith("/docs/"))


def test_the_leak_only_adds_its_events_and_only_after_the_first_conversion(
        default: list[Event], leaky: list[Event]) -> None:
    assert [e for e in leaky if e["type"] != planted.LEAK_EVENT] == default
    converted = conversions(leaky)
    leaked = [e for e in leaky if e["type"] == planted.LEAK_EVENT]
    assert leaked
    assert all(e["ts"] > converted[e["lead_id"]] for e in leaked)
    ahead = {lead for lead, c in converted.items() if c <= END - 14 * DAY}
    assert ahead <= {e["lead_id"] for e in leaked}  # converted in time: called at least once
    assert planted.LEAK_EVENT not in {e["type"] for e in default}


def test_the_constants_name_the_default_rules_as_they_are() -> None:
    engagement = {rule.id: rule for rule in RULES.engagement}
    fit = {rule.id for rule in RULES.fit}
    assert set(planted.STRONG) | set(planted.NOISE) | set(planted.MISPRICED) <= set(engagement)
    assert not set(planted.STRONG) & set(planted.NOISE)
    assert set(planted.P_CONVERT) == set(planted.STRONG) and set(planted.FIT_EFFECT) <= fit
    docs, pricing = "scoring-docs", "scoring-pricing-page"
    assert engagement[docs].points < engagement[pricing].points
    assert planted.P_CONVERT[docs] > planted.P_CONVERT[pricing]
    assert engagement["media-download"].points >= 20 and "media-download" in planted.NOISE
    for title, rule_id, _ in planted.TITLES:
        holds = {r.id for r in RULES.fit if r.test({"job_title": title})}
        assert holds == ({rule_id} if rule_id else set()), title
