"""The rules file: loading, the YAML traps, and one test per class of problem."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import re2
from helpers import rules
from hypothesis import given, settings
from hypothesis import strategies as st

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
        "dedupe_window, groups, fit, engagement, accounts)"]


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
         '(missing ) at "(unclosed")']


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


# ---------------------------------------------------------------- hostile or careless files
# Each is refused with located problems, never a traceback, a hang or gigabytes of memory.

BOUND = "expected a number from -1,000,000 to 1,000,000, got"
BOMB = "line 12, column 28: the aliases of &h expand the file to 1,470,987,229 YAML nodes; " \
    "a rules file may have at most 100,000 with every alias expanded"
LEADSCORE = str(Path(sys.executable).parent / "leadscore")


@pytest.mark.parametrize(("written", "shown"), [
    (".nan", ".nan"), (".inf", ".inf"), ("-.inf", "-.inf"), ("1e308", "1e+308"),
    ("1000001", "1000001"), ("-1e7", "-10000000.0"),
    ("1" + "0" * 400, "1" + "0" * 99 + "... (401 characters)")])
def test_points_must_be_finite_and_at_most_a_million(written: str, shown: str) -> None:
    assert problems(GOOD_HEADER + f"""
fit:
  - {{id: a, if: {{x: 1}}, points: {written}}}
engagement:
  - {{id: b, event: x, points: {written}, limit: {{points: {written}, per: 1d}}}}
""") == [f"fit[0].points: {BOUND} {shown}", f"engagement[0].points: {BOUND} {shown}",
         f"engagement[0].limit.points: {BOUND} {shown}"]


def test_the_score_range_and_the_thresholds_must_be_finite_and_bounded() -> None:
    assert problems("name: x\nhalf_life: 30d\nscore: {min: -.inf, max: .inf}\n"
                    "hot: {threshold: .nan, rearm_below: 1e308}\n") == [
        f"score.min: {BOUND} -.inf", f"score.max: {BOUND} .inf",
        f"hot.threshold: {BOUND} .nan", f"hot.rearm_below: {BOUND} 1e+308"]


def test_every_bound_itself_is_accepted() -> None:
    r = parse_rules(b"""
name: x
half_life: 36500d
dedupe_window: 36500d
score: {min: -1000000, max: 1000000}
hot: {threshold: 1000000, rearm_below: -999999}
fit:
  - {id: a, if: {x: 1}, points: -1000000}
engagement:
  - {id: b, event: x, points: 1000000, after: 1000000, limit: {points: 1000000, per: 5214w}}
""")
    assert (r.score_min, r.score_max, r.threshold, r.rearm_below) == (-1e6, 1e6, 1e6, -999_999)
    assert (r.fit[0].points, r.engagement[0].points, r.engagement[0].limit_points) == (
        -1e6, 1e6, 1e6)
    assert (r.half_life_ms, r.engagement[0].after) == (36_500 * 86_400_000, 1_000_000)


def test_a_threshold_must_be_above_score_min() -> None:
    assert problems("name: x\nhalf_life: 30d\nscore: {min: 10, max: 100}\n"
                    "hot: {threshold: 10, rearm_below: 10}\n") == [
        "hot.threshold: 10 is not above score.min (10); every lead would be hot from its "
        "first event",
        "hot.rearm_below: 10 is not above score.min (10); a hot lead could never re-arm"]


def test_counts_and_durations_are_bounded() -> None:
    assert problems(GOOD_HEADER.replace("30d", "36501d") + """
dedupe_window: 99999999999999999999999999999w
engagement:
  - {id: a, event: x, points: 1, after: 1000001, limit: {points: 1, per: 5300w}}
""") == ['half_life: "36501d" is longer than 36500d (100 years)',
         'dedupe_window: "99999999999999999999999999999w" is longer than 36500d (100 years)',
         'engagement[0].limit.per: "5300w" is longer than 36500d (100 years)',
         "engagement[0].after: expected a whole number up to 1,000,000, got 1000001"]


def test_condition_values_must_be_finite_numbers() -> None:
    assert problems(GOOD_HEADER + """
fit:
  - id: a
    if: {x: .nan, y: {gt: .inf}, z: {in: [1, -.inf]}, w: {equals: .nan}}
    points: 1
""") == ["fit[0].if.x: .nan is not a finite number", "fit[0].if.y.gt: .inf is not a finite number",
         "fit[0].if.z.in: -.inf is not a finite number",
         "fit[0].if.w.equals: .nan is not a finite number"]


def alias_bomb(levels: int = 9) -> str:
    """Billion laughs: each rule's condition is any of nine copies of the one before, so
    that the last one holds 9**levels conditions, and every rule alone looks right."""
    names = "abcdefghijklmnopqrstuvwxyz"[:levels]
    lol = ", ".join(["{t: lol}"] * 9)
    text = GOOD_HEADER + f"fit:\n  - {{id: a, points: 1, if: &a {{any_of: [{lol}]}}}}\n"
    for before, name in itertools.pairwise(names):
        copies = ", ".join([f"*{before}"] * 9)
        text += f"  - {{id: {name}, points: 1, if: &{name} {{any_of: [{copies}]}}}}\n"
    return text


def test_an_alias_bomb_is_refused_at_the_anchor_that_explodes() -> None:
    text = alias_bomb()
    assert len(text) < 1000
    assert problems(text) == [BOMB]


def test_a_small_anchor_can_be_reused() -> None:
    executive, in_target = parse_rules((GOOD_HEADER + """
fit:
  - id: executive
    if: &executive {any_of: [{title: {matches: "(?i)^chief"}}, {title: CEO}]}
    points: 10
  - id: executive-in-target
    if: {any_of: [*executive], industry: saas}
    points: 5
""").encode()).fit
    assert executive.test({"title": "Chief of Staff"})
    assert in_target.test({"title": "CEO", "industry": "saas"})
    assert not in_target.test({"title": "CEO", "industry": "retail"})


def values_reused(rules: int, values: int, padding: int) -> str:
    """A file of 15 + padding + rules * (values + 11) nodes with every alias expanded."""
    text = GOOD_HEADER + f"mql_events: [{', '.join(['e'] * padding)}]\nfit:\n"
    text += f"  - {{id: r0, if: {{x: {{in: &values [{', '.join(['v'] * values)}]}}}}, points: 1}}\n"
    return text + "".join(f"  - {{id: r{i}, if: {{x: {{in: *values}}}}, points: 1}}\n"
                          for i in range(1, rules))


def test_aliases_may_expand_the_file_to_100_000_nodes_and_no_more() -> None:
    assert len(parse_rules(values_reused(99, 989, 985).encode()).fit) == 99
    assert problems(values_reused(99, 989, 986)) == [
        "line 6, column 27: the aliases of &values expand the file to 100,001 YAML nodes; "
        "a rules file may have at most 100,000 with every alias expanded"]


def test_a_recursive_alias_is_refused() -> None:
    assert problems(GOOD_HEADER + "fit:\n  - {id: a, if: &a {any_of: [*a]}, points: 1}\n") == [
        "line 5, column 17: &a contains an alias of itself; a rules file cannot be recursive"]


def test_nesting_deeper_than_64_levels_is_refused() -> None:
    # The top mapping is level 1: 63 lists inside it reach level 64.
    assert problems(GOOD_HEADER + "x: " + "[" * 63 + "]" * 63 + "\n") == [
        "x: unknown key (known keys: name, half_life, score, hot, mql_events, "
        "dedupe_window, groups, fit, engagement, accounts)"]
    deep = "line 4, column 67: nested more than 64 levels deep; a rules file may nest at most 64"
    assert problems(GOOD_HEADER + "x: " + "[" * 64 + "]" * 64 + "\n") == [deep]
    assert problems(GOOD_HEADER + "x: " + "[" * 100_000 + "]" * 100_000 + "\n") == [deep]


def test_nesting_through_aliases_is_bounded_too() -> None:
    assert problems(GOOD_HEADER + "a: &a " + "[" * 40 + "]" * 40 + "\n"
                    "b: " + "[" * 30 + "*a" + "]" * 30 + "\n") == [
        "line 4, column 4: the aliases of &a nest the file more than 64 levels deep; "
        "a rules file may nest at most 64"]


def test_more_than_100_000_nodes_are_refused_as_they_are_read() -> None:
    assert problems(GOOD_HEADER + f"mql_events: [{', '.join(['e'] * 100_000)}]\n") == [
        "line 4, column 299975: more than 100,000 YAML nodes (values, lists and mappings); "
        "a rules file may have at most 100,000"]


def test_a_file_over_1_mib_is_refused_unparsed(tmp_path: Path) -> None:
    at_most = GOOD_HEADER + "#" * (1024 * 1024 - len(GOOD_HEADER) - 1) + "\n"
    assert parse_rules(at_most.encode()).name == "x"
    too_big = "(top): the file is 1,048,577 bytes; a rules file may be at most 1,048,576 " \
        "bytes (1 MiB)"
    assert problems(at_most + "\n") == [too_big]
    path = tmp_path / "big.yaml"
    path.write_text(at_most + "\n")
    with pytest.raises(RulesError) as caught:
        load_rules(path)
    assert caught.value.problems == [too_big]


def test_bytes_that_are_not_utf_8_are_located() -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules(GOOD_HEADER.encode() + b"mql_events: [caf\xe9]\n")
    assert caught.value.problems == [
        "line 4: not UTF-8 at byte 77 (0xe9); save the file as UTF-8"]
    with pytest.raises(RulesError) as caught:  # UTF-16, with its byte order mark
        parse_rules(GOOD_HEADER.encode("utf-16"))
    assert caught.value.problems == ["line 1: not UTF-8 at byte 0 (0xff); save the file as UTF-8"]
    assert parse_rules(("\ufeff" + GOOD_HEADER).encode()).name == "x"  # UTF-8's mark is fine


def test_a_control_character_is_located() -> None:
    assert problems(GOOD_HEADER + "mql_events: [a\x00b]\n") == [
        "line 4, column 15: not valid YAML (character #x0000: special characters are not "
        "allowed)"]


def test_yaml_values_that_python_cannot_hold_are_refused() -> None:
    assert problems(GOOD_HEADER + "fit:\n  - {id: a, if: {[x]: 1}, points: 1}\n") == [
        "line 5, column 18: a key must be a single value, not a list or a mapping"]
    assert problems(GOOD_HEADER + "mql_events: [" + "9" * 5000 + "]\n") == [
        'line 4, column 14: "' + "9" * 100 + '..." (5,000 characters) is not a whole number '
        "of at most 4,300 decimal digits"]
    assert problems(GOOD_HEADER + "mql_events: [!!int " + ":".join(["59"] * 100_000) + "]\n") == [
        'line 4, column 14: "' + "59:" * 33 + '5..." (299,999 characters) is not a whole '
        "number of at most 4,300 decimal digits"]
    assert problems(GOOD_HEADER + 'engagement:\n  - {id: "a\\ud800", event: x, points: 1}\n') == [
        "line 5, column 10: \\ud800 is half of a UTF-16 pair, not a character (write the "
        "character itself)"]


# ---------------------------------------------------------------- patterns: RE2

RE2_LACKS = "is not supported: Leadscore matches with RE2, which has no"


def pattern_problems(*patterns: str) -> list[str]:
    rules_ = "".join(f"  - {{id: p{i}, if: {{t: {{matches: {json.dumps(p)}}}}}, points: 1}}\n"
                     for i, p in enumerate(patterns))
    return problems(GOOD_HEADER + "fit:\n" + rules_)


def matcher(pattern: str) -> Callable[[str], bool]:
    """The compiled ``{t: {matches: pattern}}``, as a test of one string."""
    (rule,) = rules(f"fit:\n  - {{id: p, if: {{t: {{matches: {json.dumps(pattern)}}}}}, "
                    "points: 1}\n").fit
    return lambda text: rule.test({"t": text})


@pytest.mark.parametrize(("pattern", "lacks"), [
    ("(a)\\1", "backreferences (write the repeated text out, e.g. (aa|bb) for (a|b)\\1)"),
    ("(?P<x>a)(?P=x)", "backreferences (write the repeated text out, e.g. (aa|bb) for (a|b)\\1)"),
    ("a(?=b)", "lookahead or lookbehind (a search can match the text itself: ab for a(?=b) "
               "or for (?<=a)b; a negative one has no equivalent)"),
    ("a(?!b)", "lookahead or lookbehind (a search can match the text itself: ab for a(?=b) "
               "or for (?<=a)b; a negative one has no equivalent)"),
    ("(?<=a)b", "lookahead or lookbehind (a search can match the text itself: ab for a(?=b) "
                "or for (?<=a)b; a negative one has no equivalent)"),
    ("(?<!a)b", "lookahead or lookbehind (a search can match the text itself: ab for a(?=b) "
                "or for (?<=a)b; a negative one has no equivalent)"),
    ("a++", "possessive quantifiers (they only stop backtracking, which RE2 never does: "
            "write a+ for a++)"),
    ("(?>a+)b", "atomic groups (they only stop backtracking, which RE2 never does: "
                "write (?:...) for (?>...))"),
    ("(a)?(?(1)b|c)", "conditional groups (use any_of)"),
    ("(?x) a b", "verbose mode (?x) (remove the spaces and comments)"),
    ("(?a)\\w", "(?a), (?u) or (?L) flags (its \\w, \\d, \\s and \\b are ASCII-only; "
                "it knows the flags i, m, s and U)"),
    ("end\\Z", "\\Z (it writes the end of the text \\z)"),
    ("a{1001}", "counts above 1000, nested counts multiplied (use + or * for more)"),
])
def test_a_pattern_re2_lacks_a_construct_for_is_refused_with_the_reason(
        pattern: str, lacks: str) -> None:
    assert pattern_problems(pattern) == [f'fit[0].if.t.matches: "{pattern}" {RE2_LACKS} {lacks}']


def test_patterns_that_re2_would_read_otherwise_or_cannot_hold_are_refused() -> None:
    too_large = "is too large: RE2 needs more than 1 MiB to match it (use smaller counts " \
        "in {n}, or split it into several rules)"
    assert pattern_problems("ab{,3}c", "\\pL{1000}", "\\pL{28}", "\\pL{27}") == [
        'fit[0].if.t.matches: "ab{,3}c" is ambiguous: {,3} is a count in Python but plain '
        "text to RE2 (write {0,3} for the count, or \\{,3} for the text)",
        f'fit[1].if.t.matches: "\\pL{{1000}}" {too_large}',
        f'fit[2].if.t.matches: "\\pL{{28}}" {too_large}']  # only its reverse is too large


def test_at_most_256_different_patterns_besides_plain_text() -> None:
    plain = [f"^/p{i}" for i in range(2000)] + [f"p{i}" for i in range(2000)]
    searched = [f"^/p{i}s?/" for i in range(256)]
    assert len(parse_rules((GOOD_HEADER + "fit:\n" + "".join(
        f"  - {{id: p{i}, if: {{t: {{matches: {json.dumps(p)}}}}}, points: 1}}\n"
        for i, p in enumerate(plain + searched + searched))).encode()).fit) == 4512
    assert pattern_problems(*searched, "^/p256s?/", "^/p257s?/", *searched) == [
        "fit[256].if.t.matches: more than 256 different patterns in one rules file, "
        "besides plain text (join some with |)"]


def test_a_refused_pattern_is_listed_wherever_it_is_used() -> None:
    assert pattern_problems("(a)\\1", "x", "(a)\\1") == [
        f'fit[{i}].if.t.matches: "(a)\\1" {RE2_LACKS} backreferences (write the repeated '
        "text out, e.g. (aa|bb) for (a|b)\\1)" for i in (0, 2)]


def test_case_folding_word_boundaries_anchors_and_classes_work() -> None:
    title = matcher("(?i)^(ceo|cto)$|\\bvp\\b|director")
    assert title("CEO") and title("Vp of Sales") and title("Sales Director")
    assert not title("CEO assistant") and not title("mvp") and not title("Direct sales")
    size = matcher("^[0-9]{2,3}$")
    assert size("50") and size("999") and not size("5") and not size("1000")
    mail = matcher("(?i)@(gmail|yahoo)\\.[a-z]+$")
    assert mail("Jo@GMail.com") and not mail("jo@gmail.com.evil!")


# Every pattern of config/rules.yaml, and of the tests, on text made of their own parts.
PATTERNS = [*re.findall(r'matches: "((?:[^"\\]|\\.)*)"', DEFAULT_RULES.read_text()),
            "^/pricing", "(?i)student", "(?i)^chief", "^[0-9]{2,3}$"]
MATCHERS = {pattern: matcher(pattern) for pattern in PATTERNS}
PARTS = ["ceo", "CTO", "vp", "VP ", "Vice President", "head of", "Director", "manager",
         "lead", "student", "Intern", "@gmail.", "@Yahoo.", "/pricing", "/products/",
         "/product/", "/Products/", "/pricing/enterprise", "Chief", "50", "1000", " ", "-",
         "_", "x", "é", "/docs/", "scoring", "/alerts", "/", "#", "?"]


@settings(max_examples=500)
@given(st.lists(st.sampled_from(PARTS), max_size=6).map("".join))
def test_re2_answers_as_python_re_for_the_patterns_in_use(text: str) -> None:
    for pattern, test in MATCHERS.items():
        assert test(text) == (re.search(pattern, text) is not None), pattern


def test_where_re2_and_python_re_differ() -> None:
    """As the README says: $ is the very end, and \\b, \\w, \\d, \\s are ASCII."""
    assert re.search("^ceo$", "ceo\n") and not matcher("^ceo$")("ceo\n")
    assert not re.search("\\bvp\\b", "évp") and matcher("\\bvp\\b")("évp")
    assert re.search("\\w", "é") and not matcher("\\w")("é") and matcher("\\pL")("é")


def test_text_that_is_not_unicode_matches_nothing() -> None:
    """No event holds a lone surrogate (JSON cannot): a str that does is no match, never
    an error."""
    assert matcher("^a.c")("abc") and not matcher("^a.c")("a\ud800c")


FAST = ["^/pricing", "^/products?/", "^/a\\.b", "^ab{2}", "^ab|c", "^", "", "student",
        "^x*", "^\\$5", "^é", "(?i)^ab", "^a.c", "ab$", "^ab$"]
FAST_AND_RE2 = {pattern: (matcher(pattern), re2.compile(pattern).search) for pattern in FAST}


@settings(max_examples=300)
@given(st.lists(st.sampled_from(["/pricing", "/products/", "/product", "/a.b", "/aXb", "a",
                                 "b", "bb", "c", "x", "$5", "é", "A", "\n", "student"]),
                max_size=5).map("".join))
def test_the_plain_text_shortcuts_answer_exactly_as_re2(text: str) -> None:
    for pattern, (test, search) in FAST_AND_RE2.items():
        assert test(text) == (search(text) is not None), pattern


LINEAR = """
from scoring.conditions import compile_if
test = compile_if({"url": {"matches": "(a+)+$"}}, "if", [])
print(test({"url": "a" * 5000 + "!"}), test({"url": "a" * 5000}))
"""


def test_a_backtracking_pattern_is_matched_in_linear_time() -> None:
    """Python's re takes time doubling with every "a" here (17 s for 29 of them): a
    regression hangs, and the timeout ends it. RE2 answers in microseconds."""
    done = subprocess.run([sys.executable, "-c", LINEAR], capture_output=True, text=True,
                          timeout=60, check=True, cwd=Path(__file__).resolve().parent.parent)
    assert done.stdout == "False True\n"


# ---------------------------------------------------------------- leadscore rules check


def test_rules_check_lists_an_alias_bomb_and_bytes_that_are_not_utf_8(tmp_path: Path) -> None:
    bomb, latin = tmp_path / "bomb.yaml", tmp_path / "latin.yaml"
    bomb.write_text(alias_bomb())
    latin.write_bytes(GOOD_HEADER.encode() + b"name2: caf\xe9\n")
    for path, problem in [
            (bomb, BOMB),
            (latin, "line 4: not UTF-8 at byte 71 (0xe9); save the file as UTF-8")]:
        done = subprocess.run([LEADSCORE, "rules", "check", str(path)], capture_output=True,
                              text=True, timeout=60, check=False)
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == f"leadscore: {path}: 1 problem\n  {problem}\n"
