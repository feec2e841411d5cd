"""The rules file: loading, the YAML traps, and one test per class of problem."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers import rules

from scoring.errors import RulesError
from scoring.rules import load_rules, parse_rules

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "config" / "rules.yaml"


def problems(text: str) -> list[str]:
    with pytest.raises(RulesError) as caught:
        parse_rules(text.encode(), "bad.yaml")
    return caught.value.problems


GOOD_HEADER = "name: x\nhalf_life: 30d\nhot: {threshold: 70, rearm_below: 50}\n"


def test_the_spec_example_loads_with_every_field() -> None:
    text = """
name: default
half_life: 30d
score: {min: 0, max: 100}
hot: {threshold: 70, rearm_below: 50}
mql_events: [form_submit, demo_request, chat_started]
dedupe_window: 3d
fit:
  - id: decision-maker
    if: {job_title: {in: [CEO, CTO, VP Sales]}}
    points: 20
engagement:
  - id: pricing-page
    event: page_view
    if: {url: {matches: "^/pricing"}}
    points: 15
    limit: {points: 45, per: 7d}
  - id: workshops
    event: [workshop_attended, workshop_joined]
    points: 30
    after: 3
"""
    r = parse_rules(text.encode())
    assert (r.name, r.half_life_ms, r.threshold, r.rearm_below) == ("default", 30 * 86_400_000,
                                                                     70.0, 50.0)
    assert (r.score_min, r.score_max, r.dedupe_window_ms) == (0.0, 100.0, 3 * 86_400_000)
    assert r.mql_events == frozenset({"form_submit", "demo_request", "chat_started"})
    pricing, workshops = r.engagement
    assert (pricing.limit_points, pricing.limit_per_ms) == (45.0, 7 * 86_400_000)
    assert workshops.events == frozenset({"workshop_attended", "workshop_joined"})
    assert workshops.after == 3
    assert r.by_type["page_view"] == (pricing,)
    assert r.version == hashlib.sha256(text.encode()).hexdigest()[:12]


@pytest.mark.parametrize(("text", "ms"), [("30s", 30_000), ("15m", 900_000),
                                          ("12h", 43_200_000), ("7d", 604_800_000),
                                          ("2w", 1_209_600_000)])
def test_durations_take_every_unit(text: str, ms: int) -> None:
    assert rules(half_life=text).half_life_ms == ms


def test_half_life_never_turns_decay_off() -> None:
    assert rules(half_life="never").half_life_ms is None


def test_defaults_for_optional_fields() -> None:
    r = parse_rules(GOOD_HEADER.encode())
    assert (r.score_min, r.score_max, r.dedupe_window_ms) == (0.0, 100.0, 7 * 86_400_000)
    assert (r.fit, r.engagement, r.mql_events) == ((), (), frozenset())


def test_yaml_1_1_words_stay_the_strings_the_user_wrote() -> None:
    r = parse_rules((GOOD_HEADER + """
mql_events: [on, off, yes, no, y, n]
fit:
  - id: opted-in
    if: {newsletter: yes, consent: on, notes: 12:30}
    points: 5
""").encode())
    assert r.mql_events == frozenset({"on", "off", "yes", "no", "y", "n"})
    (rule,) = r.fit
    assert rule.test({"newsletter": "yes", "consent": "on", "notes": "12:30"})
    assert not rule.test({"newsletter": True, "consent": True, "notes": 750})


def test_true_and_false_written_as_booleans_are_booleans() -> None:
    (rule,) = parse_rules((GOOD_HEADER + """
fit:
  - id: verified
    if: {verified: true}
    points: 5
""").encode()).fit
    assert rule.test({"verified": True}) and not rule.test({"verified": "true"})


def test_a_key_named_on_is_an_unknown_key_not_a_boolean() -> None:
    assert problems(GOOD_HEADER + "on: page_view\n") == [
        "on: unknown key (known keys: name, half_life, score, hot, mql_events, "
        "dedupe_window, fit, engagement)"]


def test_bad_duration_names_the_location_and_the_fix() -> None:
    assert problems(GOOD_HEADER + """
engagement:
  - {id: a, event: x, points: 1}
  - {id: b, event: x, points: 1}
  - {id: c, event: x, points: 1, limit: {points: 5, per: 7x}}
""") == ['engagement[2].limit.per: "7x" is not a duration (use 30s, 15m, 12h, 7d or 2w)']


def test_unknown_key_suggests_the_key_meant() -> None:
    assert problems(GOOD_HEADER + "engagement:\n  - {id: a, event: x, pionts: 1}\n") == [
        "engagement[0].points: required field is missing",
        'engagement[0].pionts: unknown key (did you mean "points"?)']


def test_duplicate_rule_ids_are_refused_across_sections() -> None:
    assert problems(GOOD_HEADER + """
fit:
  - {id: same, if: {a: 1}, points: 1}
engagement:
  - {id: same, event: x, points: 1}
""") == ['engagement[0].id: duplicate rule id "same" (first used at fit[0].id); '
         "ids must be unique"]


def test_rearm_below_above_threshold_is_refused() -> None:
    assert problems("name: x\nhalf_life: 30d\nhot: {threshold: 70, rearm_below: 80}\n") == [
        "hot.rearm_below: 80 is above hot.threshold (70); a hot lead must fall below the "
        "threshold to re-arm"]


def test_threshold_outside_the_score_range_is_refused() -> None:
    assert problems("name: x\nhalf_life: 30d\nscore: {min: 0, max: 60}\n"
                    "hot: {threshold: 70, rearm_below: 0}\n") == [
        "hot.threshold: 70 is above score.max (60); no lead could ever turn hot",
        "hot.rearm_below: 0 is not above score.min (0); a hot lead could never re-arm"]


def test_a_regex_that_does_not_compile_is_refused() -> None:
    assert problems(GOOD_HEADER + """
engagement:
  - {id: a, event: x, points: 1, if: {url: {matches: "(unclosed"}}}
""") == ['engagement[0].if.url.matches: "(unclosed" is not a valid regular expression '
         "(missing ), unterminated subpattern at position 0)"]


def test_bad_conditions_are_each_located() -> None:
    assert problems(GOOD_HEADER + """
fit:
  - id: a
    if: {title: {inn: [CEO]}, size: [1, 2], n: {gt: [1]}, e: {exists: maybe},
         any_of: []}
    points: 1
""") == [
        'fit[0].if.title.inn: unknown operator "inn" (use one of equals, in, not_in, '
        "matches, gt, gte, lt, lte, exists)",
        "fit[0].if.size: expected a value or a mapping of operators, got a list "
        "(use in: [...] for a list of values)",
        "fit[0].if.n.gt: expected a number or a string, got a list",
        'fit[0].if.e.exists: expected true or false, got "maybe"',
        "fit[0].if.any_of: must be a non-empty list of mappings, got a list"]


def test_wrong_types_and_missing_fields() -> None:
    assert problems("""
name: x
half_life: soon
hot: {threshold: high}
fit:
  - {id: a, if: {x: 1}, points: true}
engagement:
  - {id: b, event: 3, points: 1, after: 0}
""") == [
        'half_life: "soon" is not a duration (use 30s, 15m, 12h, 7d or 2w)',
        'hot.threshold: expected a number, got "high"',
        "hot.rearm_below: required field is missing",
        "fit[0].points: expected a number, got true",
        "engagement[0].event: expected an event type or a non-empty list of them, got 3",
        "engagement[0].after: expected a whole number of at least 1, got 0"]


def test_duplicate_yaml_keys_are_refused_with_their_line() -> None:
    assert problems(GOOD_HEADER + "engagement:\n  - id: a\n    event: x\n    points: 1\n"
                    "    points: 2\n") == [
        'line 8: duplicate key "points"; each key may appear once per mapping']


def test_invalid_yaml_and_non_mapping_files() -> None:
    assert problems("name: [unclosed\n")[0].startswith("line 2, column 1: not valid YAML")
    assert problems("- a list\n") == ["(top): the rules file must be a mapping, got a list"]


def test_every_problem_is_listed_at_once() -> None:
    found = problems("""
name: x
half_life: 30x
hot: {threshold: 70, rearm_below: 80}
engagement:
  - {id: a, event: x, points: 1, limit: {points: 5, per: 1y}}
  - {id: a, event: x, points: 1, if: {u: {matches: "("}}}
""")
    assert len(found) == 5
    assert str(RulesError("bad.yaml", found)).startswith("bad.yaml: 5 problems\n  ")


def test_the_bundled_default_rules_load() -> None:
    r = load_rules(DEFAULT_RULES)
    assert (r.name, r.threshold, r.rearm_below, r.half_life_ms) == ("default", 70, 50,
                                                                   30 * 86_400_000)
    assert r.version == hashlib.sha256(DEFAULT_RULES.read_bytes()).hexdigest()[:12]


def test_an_unreadable_file_is_a_rules_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read the file"):
        load_rules(tmp_path / "missing.yaml")
