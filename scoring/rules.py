"""The rules file (the README's "The rules file"): a pydantic schema for its shape,
compiled into a ``Ruleset``.

Loading never stops at the first problem: YAML-level problems (duplicate keys),
schema problems (pydantic), condition problems and cross-field checks are all
collected and raised together as one ``RulesError``, each with its location,
e.g. ``engagement[2].limit.per: "7x" is not a duration (use 30s, 15m, 12h, 7d or 2w)``.

A hostile or careless file is refused the same way, never with a traceback, a hang or
gigabytes of memory: the file's size, the YAML's nesting and its size with every alias
expanded are bounded before anything is built from it (an "alias bomb" of a few hundred
bytes expands to billions of nodes), every number is finite and bounded, and patterns
are matched by RE2 (see ``scoring.conditions``).
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from scoring.conditions import Patterns, Predicate, compile_if, show
from scoring.errors import RulesError
from scoring.events import ACCOUNT_UPDATE, CONVERTED, PROFILE_UPDATE

# ---------------------------------------------------------------- limits

MAX_RULES_BYTES = 1024 * 1024  # refused unread beyond this; real rules take a few KiB
MAX_YAML_DEPTH = 64  # a rule with nested any_of needs about 10 levels
MAX_YAML_NODES = 100_000  # scalars, lists and mappings, every alias expanded

# Points, limit points, the score range and the hot thresholds. A lead's engagement is a
# sum of awards (less decay): at 10^6 each, overflowing a double takes some 10^302 of
# them, and after 10^9 of the largest the sum is about 10^15, below 2^53, where a double
# still holds every whole number, so sums of whole points stay exact.
MAX_POINTS = 1_000_000
MAX_AFTER = 1_000_000  # a count of matching events, kept per lead
# Durations (half_life, limit.per, dedupe_window). Event times reach the year 9999,
# 2.5 * 10^14 ms; a time plus or minus a duration, or a window's number times its length,
# then stays below 2^53, exact as an integer and as a double (Redis scores, Lua numbers).
MAX_DURATION_MS = 36_500 * 86_400_000  # 100 years; "never" turns decay off

# ---------------------------------------------------------------- value types

_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"^([0-9]+)([smhdw])$")
DURATION_HINT = "use 30s, 15m, 12h, 7d or 2w"


def format_duration(ms: int) -> str:
    """Milliseconds -> a duration as a rules file writes it, in the largest unit that
    divides it (``parse_duration``'s inverse for whole seconds)."""
    for unit, size in sorted(_UNITS_MS.items(), key=lambda item: -item[1]):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms / 1000:g}s"


def parse_duration(value: object) -> int:
    """``"7d"`` -> milliseconds. Raises a pydantic error that names the bad value."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise PydanticCustomError(
            "duration", "{shown} is not a duration ({hint})", {"shown": show(value),
                                                               "hint": DURATION_HINT})
    digits = match.group(1).lstrip("0") or "0"
    # More digits than any bound has are too long, unread: int() refuses past 4,300.
    ms = MAX_DURATION_MS + 1 if len(digits) > 15 else int(digits) * _UNITS_MS[match.group(2)]
    if ms <= 0:
        raise PydanticCustomError("duration", "a duration must be longer than 0")
    if ms > MAX_DURATION_MS:
        raise PydanticCustomError("duration", "{shown} is longer than 36500d (100 years)",
                                  {"shown": show(value)})
    return ms


def _half_life(value: object) -> int | None:
    return None if value == "never" else parse_duration(value)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number", "expected a number, got {shown}",
                                  {"shown": show(value)})
    if _num(value) is None:
        raise PydanticCustomError(
            "number", "expected a number from -{bound} to {bound}, got {shown}",
            {"bound": f"{MAX_POINTS:,}", "shown": show(value)})
    return float(value)


def _positive_number(value: object) -> float:
    number = _number(value)
    if number <= 0:
        raise PydanticCustomError("number", "must be greater than 0, got {shown}",
                                  {"shown": show(value)})
    return number


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PydanticCustomError("count", "expected a whole number of at least 1, got {shown}",
                                  {"shown": show(value)})
    if value > MAX_AFTER:
        raise PydanticCustomError("count", "expected a whole number up to {bound}, got {shown}",
                                  {"bound": f"{MAX_AFTER:,}", "shown": show(value)})
    return value


def _event_types(value: object) -> list[str]:
    types = [value] if isinstance(value, str) else value
    if not isinstance(types, list) or not types or not all(
            isinstance(t, str) and t for t in types):
        raise PydanticCustomError(
            "event", "expected an event type or a non-empty list of them, got {shown}",
            {"shown": show(value)})
    return types


Duration = Annotated[int, BeforeValidator(parse_duration)]
HalfLife = Annotated[int | None, BeforeValidator(_half_life)]
Number = Annotated[float, BeforeValidator(_number)]
PositiveNumber = Annotated[float, BeforeValidator(_positive_number)]
Count = Annotated[int, BeforeValidator(_count)]
EventTypes = Annotated[list[str], BeforeValidator(_event_types)]
RuleId = Annotated[str, Field(min_length=1, max_length=100)]

# ---------------------------------------------------------------- the schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LimitSpec(_Strict):
    points: PositiveNumber
    per: Duration


class FitRuleSpec(_Strict):
    id: RuleId
    if_: Any = Field(alias="if")
    points: Number


class EngagementRuleSpec(_Strict):
    id: RuleId
    event: EventTypes
    if_: Any = Field(default=None, alias="if")
    points: Number
    limit: LimitSpec | None = None
    after: Count | None = None
    group: RuleId | None = None


class HotSpec(_Strict):
    threshold: Number
    rearm_below: Number


class GroupSpec(_Strict):
    id: RuleId
    hot: HotSpec | None = None


class ScoreSpec(_Strict):
    min: Number = 0.0
    max: Number = 100.0


class AccountsSpec(_Strict):
    """The ``accounts:`` section (SPEC 11): how leads roll up into their companies."""

    key: str = Field(default="account_id", min_length=1, max_length=100)
    lead_weight: Number = 1.0
    score: ScoreSpec = ScoreSpec()
    hot: HotSpec
    fit: list[FitRuleSpec] = []
    engagement: list[EngagementRuleSpec] = []


class RulesSpec(_Strict):
    name: str = Field(min_length=1)
    half_life: HalfLife
    score: ScoreSpec = ScoreSpec()
    hot: HotSpec
    mql_events: list[str] = []
    dedupe_window: Duration = 7 * _UNITS_MS["d"]
    groups: list[GroupSpec] = []
    fit: list[FitRuleSpec] = []
    engagement: list[EngagementRuleSpec] = []
    accounts: AccountsSpec | None = None


# Which model a location belongs to, to suggest the key a typo meant.
_MODEL_AT: dict[str, type[BaseModel]] = {
    "": RulesSpec, "fit": FitRuleSpec, "engagement": EngagementRuleSpec,
    "engagement.limit": LimitSpec, "hot": HotSpec, "score": ScoreSpec,
    "groups": GroupSpec, "groups.hot": HotSpec, "accounts": AccountsSpec,
    "accounts.fit": FitRuleSpec, "accounts.engagement": EngagementRuleSpec,
    "accounts.engagement.limit": LimitSpec, "accounts.hot": HotSpec,
    "accounts.score": ScoreSpec}
# The sections of rules whose `if` conditions are compiled, and where they sit.
_RULE_SECTIONS = (("fit",), ("engagement",), ("accounts", "fit"), ("accounts", "engagement"))

# ---------------------------------------------------------------- compiled rules


@dataclass(frozen=True, slots=True)
class FitRule:
    id: str
    test: Predicate
    points: float


@dataclass(frozen=True, slots=True)
class EngagementRule:
    id: str
    events: frozenset[str]
    test: Predicate | None
    points: float
    limit_points: float | None
    limit_per_ms: int | None
    after: int | None
    group: str | None = None  # the score group it feeds, if any (SPEC 10)


@dataclass(frozen=True, slots=True)
class Group:
    """A score group (SPEC 10): the engagement rules that feed it, and its own hot
    thresholds if it has alerts (``threshold`` None: a score without alerts)."""

    id: str
    rules: tuple[str, ...]  # its rules' ids, in the file's order
    threshold: float | None = None
    rearm_below: float | None = None


# Points below this in magnitude can never make a finite score infinite, however many
# are awarded: the state's numbers are finite, a rebase multiplies them by a factor in
# [0, 1], an award is at most its rule's points times such a factor, and the largest
# float is 2**1024 - 2**971, so a finite number plus a term below 2**970 lies less than
# half a float's spacing beyond it and rounds back to a finite float. F is the correctly
# rounded sum of fewer than 2**53 such points. A rules file's points are far below it.
SAFE_POINTS = 2.0 ** 970


@dataclass(frozen=True, slots=True)
class Ruleset:
    """Everything the engine needs, validated and compiled; immutable."""

    name: str
    version: str
    half_life_ms: int | None
    score_min: float
    score_max: float
    threshold: float
    rearm_below: float
    mql_events: frozenset[str]
    dedupe_window_ms: int
    fit: tuple[FitRule, ...]
    engagement: tuple[EngagementRule, ...]
    by_type: dict[str, tuple[EngagementRule, ...]]  # event type -> rules that may match
    window_ms: dict[str, int]  # `limit` rule id -> window length
    prune_step_ms: int  # how often, in event time, a lead's expired ids are dropped
    stage_after: dict[str, str]  # event type -> the stage it moves a lead to (at least)
    groups: tuple[Group, ...] = ()  # in the file's order: the order of their notifications
    alerting: tuple[Group, ...] = field(init=False)  # the groups with `hot`, in that order
    group_of: dict[str, str] = field(init=False)  # rule id -> its group's id
    by_group: dict[str, Group] = field(init=False)  # group id -> the group
    # A group whose threshold is at most 0 (a score range below 0) can turn hot by decay
    # alone, a negative score fading up to its bar: then every event checks every group.
    decay_lifts_groups: bool = field(init=False)
    # Whether no event can make E, a rule's share or F non-finite (scoring.engine):
    # decided once, here, also for a ruleset built in code with dataclasses.replace.
    awards_stay_finite: bool = field(init=False)
    # The file's bytes, kept with a generation so that any reader can score its leads
    # (docs/generations.md); empty for a ruleset built in code.
    text: bytes = field(default=b"", repr=False, compare=False)
    # The roll-up of leads into accounts (SPEC 11), if the file has ``accounts:``.
    accounts: Accounts | None = None
    # Whose state the rules score: "lead", or "account" for the ruleset of an
    # ``accounts:`` section (``Accounts.rules``), whose notifications are account.hot and
    # account.cooled and whose profile changes by ``profile_type`` events.
    subject: str = "lead"
    profile_type: str = PROFILE_UPDATE
    engagement_ids: frozenset[str] = field(init=False)  # (to tell fit awards apart)

    def __post_init__(self) -> None:
        object.__setattr__(self, "engagement_ids", frozenset(r.id for r in self.engagement))
        bounded = all(-SAFE_POINTS < r.points < SAFE_POINTS for r in self.fit) and all(
            -SAFE_POINTS < r.points < SAFE_POINTS for r in self.engagement)
        object.__setattr__(self, "awards_stay_finite", bounded)
        object.__setattr__(self, "alerting",
                           tuple(g for g in self.groups if g.threshold is not None))
        object.__setattr__(self, "group_of",
                           {rule_id: g.id for g in self.groups for rule_id in g.rules})
        object.__setattr__(self, "by_group", {g.id: g for g in self.groups})
        object.__setattr__(self, "decay_lifts_groups", any(
            g.threshold is not None and g.threshold <= 0 for g in self.alerting))


    def group(self, group_id: str) -> Group:
        """A declared score group; ``KeyError`` naming the declared ones otherwise."""
        group = self.by_group.get(group_id)
        if group is not None:
            return group
        declared = ", ".join(g.id for g in self.groups) or "none"
        raise KeyError(f"no score group {group_id!r} in rules {self.version} "
                       f"(declared: {declared})")


@dataclass(frozen=True, slots=True)
class Accounts:
    """The ``accounts:`` section compiled (SPEC 11): the profile field that names a lead's
    account, the share of each member award the account receives, and the account's own
    ruleset (its score range, hot thresholds, fit and engagement rules, with the file's
    half-life, dedupe window and version), which the engine applies to an account's
    state as it applies a lead's rules to a lead's."""

    key: str
    lead_weight: float
    rules: Ruleset


def load_rules(path: str | Path) -> Ruleset:
    """Read and compile a rules file; raise ``RulesError`` listing every problem."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_RULES_BYTES + 1)  # never more: the file may be huge
            if len(data) > MAX_RULES_BYTES:
                size = os.fstat(file.fileno()).st_size
                raise RulesError(str(path), [_too_big(size if size > MAX_RULES_BYTES else None)])
    except OSError as exc:
        raise RulesError(str(path), [f"cannot read the file ({exc.strerror})"]) from exc
    return parse_rules(data, str(path))


def parse_rules(data: bytes, source: str = "<rules>") -> Ruleset:
    """Compile rules from the bytes of a YAML file; ``source`` names it in errors."""
    if len(data) > MAX_RULES_BYTES:
        raise RulesError(source, [_too_big(len(data))])
    problems: list[str] = []
    raw = _load_yaml(data, problems)
    if not isinstance(raw, dict):
        if not problems:
            problems.append(f"(top): the rules file must be a mapping, got {show(raw)}")
        raise RulesError(source, problems)

    patterns = Patterns()  # shared, so that a pattern used by several rules compiles once
    tests = {(".".join(path), i): compile_if(rule["if"], f"{'.'.join(path)}[{i}].if",
                                             problems, patterns)
             for path in _RULE_SECTIONS
             for i, rule in enumerate(_section(raw, path))
             if isinstance(rule, dict) and "if" in rule}
    spec: RulesSpec | None = None
    try:
        spec = RulesSpec.model_validate(raw)
    except ValidationError as exc:
        # A fit rule's group: is explained by _group_checks, not as an unknown key.
        problems.extend(_describe(err) for err in exc.errors() if not _explained_apart(err))
    problems.extend(_cross_checks(raw))
    if problems or spec is None:
        raise RulesError(source, problems)
    return _compile(spec, tests, hashlib.sha256(data).hexdigest()[:12], data)


def _explained_apart(err: Any) -> bool:
    """A schema error that a cross-check explains better: a fit rule's group:."""
    loc = err["loc"]
    return bool(err["type"] == "extra_forbidden" and loc[-1] == "group") and (
        loc[:1] == ("fit",) or loc[:1] == ("accounts",))


def _section(raw: dict[str, Any], path: tuple[str, ...]) -> list[Any]:
    """The list of rules at ``path`` (("fit",), ("accounts", "engagement"), ...), or []."""
    node: Any = raw
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return _as_list(node)


def _rules_of(fit_specs: list[FitRuleSpec], engagement_specs: list[EngagementRuleSpec],
              tests: dict[tuple[str, int], Predicate], where: str = ""
              ) -> tuple[tuple[FitRule, ...], tuple[EngagementRule, ...]]:
    fit = tuple(FitRule(r.id, tests[(f"{where}fit", i)], r.points)
                for i, r in enumerate(fit_specs))
    engagement = tuple(
        EngagementRule(
            id=r.id, events=frozenset(r.event), test=tests.get((f"{where}engagement", i)),
            points=r.points, after=r.after,
            limit_points=r.limit.points if r.limit else None,
            limit_per_ms=r.limit.per if r.limit else None, group=r.group)
        for i, r in enumerate(engagement_specs))
    return fit, engagement


def _by_type(engagement: tuple[EngagementRule, ...]) -> dict[str, tuple[EngagementRule, ...]]:
    by_type: dict[str, list[EngagementRule]] = {}
    for rule in engagement:
        for event_type in sorted(rule.events):
            by_type.setdefault(event_type, []).append(rule)
    return {t: tuple(rules) for t, rules in by_type.items()}


def _accounts(spec: RulesSpec, tests: dict[tuple[str, int], Predicate], version: str,
              data: bytes) -> Accounts | None:
    """The ``accounts:`` section's own ruleset: no stages, no groups; the file's
    half-life, dedupe window, version and bytes (which register the generation, whichever
    of its stores opens first)."""
    section = spec.accounts
    if section is None:
        return None
    fit, engagement = _rules_of(section.fit, section.engagement, tests, "accounts.")
    rules = Ruleset(
        name=spec.name, version=version, half_life_ms=spec.half_life,
        score_min=section.score.min, score_max=section.score.max,
        threshold=section.hot.threshold, rearm_below=section.hot.rearm_below,
        mql_events=frozenset(), dedupe_window_ms=spec.dedupe_window, fit=fit,
        engagement=engagement, by_type=_by_type(engagement),
        window_ms={r.id: r.limit_per_ms for r in engagement if r.limit_per_ms is not None},
        prune_step_ms=max(spec.dedupe_window // 8, 1), stage_after={},
        subject="account", profile_type=ACCOUNT_UPDATE, text=data)
    return Accounts(section.key, section.lead_weight, rules)


def _compile(spec: RulesSpec, tests: dict[tuple[str, int], Predicate], version: str,
             data: bytes) -> Ruleset:
    fit, engagement = _rules_of(spec.fit, spec.engagement, tests)
    groups = tuple(
        Group(g.id, tuple(r.id for r in engagement if r.group == g.id),
              g.hot.threshold if g.hot else None, g.hot.rearm_below if g.hot else None)
        for g in spec.groups)
    return Ruleset(
        name=spec.name, version=version, half_life_ms=spec.half_life,
        score_min=spec.score.min, score_max=spec.score.max,
        threshold=spec.hot.threshold, rearm_below=spec.hot.rearm_below,
        mql_events=frozenset(spec.mql_events), dedupe_window_ms=spec.dedupe_window,
        fit=fit, engagement=engagement,
        by_type=_by_type(engagement),
        window_ms={r.id: r.limit_per_ms for r in engagement if r.limit_per_ms is not None},
        prune_step_ms=max(spec.dedupe_window // 8, 1),
        stage_after={**{t: "mql" for t in spec.mql_events}, CONVERTED: "customer"},
        groups=groups, text=data, accounts=_accounts(spec, tests, version, data))


# ---------------------------------------------------------------- problems


def _too_big(size: int | None) -> str:
    shown = f"{size:,} bytes" if size is not None else f"more than {MAX_RULES_BYTES:,} bytes"
    return (f"(top): the file is {shown}; a rules file may be at most "
            f"{MAX_RULES_BYTES:,} bytes (1 MiB)")


def _describe(err: Any) -> str:
    loc = tuple(err["loc"])
    where = _location(loc) or "(top)"
    kind = err["type"]
    if kind == "missing":
        return f"{where}: required field is missing"
    if kind == "extra_forbidden":
        context = ".".join(p for p in loc[:-1] if isinstance(p, str))
        model = _MODEL_AT.get(context)
        known = [f.alias or name for name, f in model.model_fields.items()] if model else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f'did you mean "{close[0]}"?' if close else f"known keys: {', '.join(known)}"
        return f"{where}: unknown key ({hint})"
    return f"{where}: {err['msg']}"


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-before[_event_types(), list[str]]",):
            continue
        else:
            out += f".{'if' if part == 'if_' else part}" if out else str(part)
    return out


def _cross_checks(raw: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    # One namespace for every rule, the accounts' too: an account's reasons name the
    # rules of its members' awards beside its own.
    _first_ids([(f"{'.'.join(path)}[{i}].id", rule) for path in _RULE_SECTIONS
                for i, rule in enumerate(_section(raw, path))],
               "duplicate rule id {id} (first used at {first}); ids must be unique", problems)
    score = raw.get("score") or {}
    if isinstance(score, dict):
        low, high = _num(score.get("min", 0)), _num(score.get("max", 100))
        if low is not None and high is not None and low >= high:
            problems.append(f"score.min: {low:g} must be below score.max ({high:g})")
        problems += _hot_checks(raw.get("hot"), "hot", "lead", low, high)
        for i, group in enumerate(_as_list(raw.get("groups"))):
            if isinstance(group, dict):
                problems += _hot_checks(group.get("hot"), f"groups[{i}].hot", "group", low,
                                        high)
    problems += _group_checks(raw)
    problems += _account_checks(raw.get("accounts"))
    return problems


def _account_checks(accounts: object) -> list[str]:
    """The ``accounts:`` section's thresholds against its own score range; its weight;
    no groups in it (an account has no score groups)."""
    if not isinstance(accounts, dict):
        return []
    problems: list[str] = []
    score = accounts.get("score") or {}
    if isinstance(score, dict):
        low, high = _num(score.get("min", 0)), _num(score.get("max", 100))
        if low is not None and high is not None and low >= high:
            problems.append(f"accounts.score.min: {low:g} must be below accounts.score.max "
                            f"({high:g})")
        problems += [p.replace("score.", "accounts.score.") for p in
                     _hot_checks(accounts.get("hot"), "accounts.hot", "account", low, high)]
    weight = _num(accounts.get("lead_weight", 1.0))
    if weight is not None and weight < 0:
        problems.append(f"accounts.lead_weight: {weight:g} is negative; it is the share of "
                        "each member award the account receives (1.0: all of it, 0: none)")
    for section in ("fit", "engagement"):
        for i, rule in enumerate(_as_list(accounts.get(section))):
            if isinstance(rule, dict) and "group" in rule:
                problems.append(f"accounts.{section}[{i}].group: an account has no score "
                                "groups (drop group:)")
    return problems


def _first_ids(entries: list[tuple[str, object]], duplicate: str, problems: list[str]
               ) -> dict[str, str]:
    """Each string ``id`` of the (location, entry) pairs, with where it first appears;
    a later repeat is reported as ``duplicate`` says ({id}: quoted, {first}: that place)."""
    first_seen: dict[str, str] = {}
    for here, entry in entries:
        entry_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(entry_id, str):
            continue
        if entry_id in first_seen:
            problems.append(f"{here}: " + duplicate.format(id=f'"{entry_id}"',
                                                            first=first_seen[entry_id]))
        else:
            first_seen[entry_id] = here
    return first_seen


def _hot_checks(hot: object, where: str, what: str, low: float | None, high: float | None
                ) -> list[str]:
    """The thresholds of the lead's ``hot`` or a group's, against each other and the
    score range (a group's score is clamped to the same range)."""
    if not isinstance(hot, dict):
        return []
    problems = []
    threshold, rearm = _num(hot.get("threshold")), _num(hot.get("rearm_below"))
    if rearm is not None and threshold is not None and rearm > threshold:
        problems.append(f"{where}.rearm_below: {rearm:g} is above {where}.threshold "
                        f"({threshold:g}); a hot {what} must fall below the threshold to "
                        "re-arm")
    if threshold is not None and high is not None and threshold > high:
        problems.append(f"{where}.threshold: {threshold:g} is above score.max ({high:g}); "
                        f"no {what} could ever turn hot")
    if threshold is not None and low is not None and threshold <= low:
        problems.append(f"{where}.threshold: {threshold:g} is not above score.min ({low:g}); "
                        f"every {what} would be hot from its first event")
    if rearm is not None and low is not None and rearm <= low:
        problems.append(f"{where}.rearm_below: {rearm:g} is not above score.min ({low:g}); "
                        f"a hot {what} could never re-arm")
    return problems


def _group_checks(raw: dict[str, Any]) -> list[str]:
    """Group ids unique; every ``group:`` of an engagement rule declared; none on a fit
    rule (a group's score is engagement only: SPEC 10)."""
    problems: list[str] = []
    declared = _first_ids(
        [(f"groups[{i}].id", group) for i, group in enumerate(_as_list(raw.get("groups")))],
        "duplicate group id {id} (first declared at {first}); group ids must be unique",
        problems)
    for i, rule in enumerate(_as_list(raw.get("engagement"))):
        group_id = rule.get("group") if isinstance(rule, dict) else None
        if isinstance(group_id, str) and group_id and group_id not in declared:
            close = difflib.get_close_matches(group_id, list(declared), n=1)
            hint = f'did you mean "{close[0]}"?' if close else \
                f"declared: {', '.join(declared)}" if declared else \
                "declare it under groups: at the top level"
            problems.append(f'engagement[{i}].group: "{group_id}" is not a declared group '
                            f"({hint})")
    for i, rule in enumerate(_as_list(raw.get("fit"))):
        if isinstance(rule, dict) and "group" in rule:
            problems.append(f"fit[{i}].group: a fit rule cannot feed a group; a group's "
                            "score is engagement only (move the rule to engagement: or "
                            "drop group:)")
    return problems


def _num(value: object) -> float | None:
    """The value as a number, or None when it is not a finite one within MAX_POINTS
    (the schema reports that)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > MAX_POINTS:
        return None
    return float(value)


def _as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


# ---------------------------------------------------------------- YAML without traps


class _Refused(yaml.MarkedYAMLError):
    """YAML that is well formed but that we will not build: too deep, too large, recursive."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem=problem, problem_mark=mark)


class _Loader(yaml.SafeLoader):
    """Safe YAML that reads ``on``/``yes``/``off`` and ``12:30`` as the strings the user wrote.

    PyYAML implements YAML 1.1, where ``on: x`` is the key True and ``1:30`` is the
    integer 90. We keep only the YAML 1.2 core forms of booleans and numbers, and
    report duplicate keys instead of silently keeping the last one.

    PyYAML composes nodes recursively, so nesting is refused past MAX_YAML_DEPTH
    levels (before Python's recursion limit), and the document past MAX_YAML_NODES
    nodes as they are read; ``_check_expansion`` then bounds what aliases make of them.
    """

    def __init__(self, text: str, problems: list[str]) -> None:
        super().__init__(text)
        self.problems = problems
        self.anchors_of: dict[int, str] = {}  # id(node) -> its anchor's name
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # (untyped in the stubs)
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise _Refused(f"more than {MAX_YAML_NODES:,} YAML nodes (values, lists and "
                           f"mappings); a rules file may have at most {MAX_YAML_NODES:,}",
                           event.start_mark)
        if self._depth == MAX_YAML_DEPTH:
            raise _Refused(_TOO_DEEP, event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        anchor = getattr(event, "anchor", None)
        if anchor is not None and node is not None and not isinstance(event, yaml.AliasEvent):
            self.anchors_of[id(node)] = anchor
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # a list or a mapping as a key
                raise _Refused("a key must be a single value, not a list or a mapping",
                               key_node.start_mark) from None
            if repeated:
                mark = key_node.start_mark
                self.problems.append(f"line {mark.line + 1}: duplicate key {show(key)}; "
                                     "each key may appear once per mapping")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """Decimal digits only, as the implicit resolver reads them: PyYAML would also
        read ``!!int 0x1f`` and ``!!int 1:30``, and a long ``1:2:3:...`` in time
        quadratic in its length."""
        value = self.construct_scalar(node)
        if not _DECIMAL.fullmatch(value) or len(value) > _MAX_DIGITS:
            raise _Refused(f"{show(value)} is not a whole number of at most {_MAX_DIGITS:,} "
                           "decimal digits", node.start_mark)
        return int(value)


_TOO_DEEP = f"nested more than {MAX_YAML_DEPTH} levels deep; a rules file may nest at most " \
            f"{MAX_YAML_DEPTH}"
_DECIMAL = re.compile(r"[-+]?[0-9]+")
_MAX_DIGITS = 4_300  # Python's own limit for int() of a string
_SURROGATE = re.compile("[\ud800-\udfff]")  # "\ud800" in YAML: not a character, no UTF-8
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                           "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?[0-9]+[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _load_yaml(data: bytes, problems: list[str]) -> Any:
    try:
        text = data.decode("utf-8")  # a UTF-8 byte order mark is skipped by the scanner
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        problems.append(f"line {line}: not UTF-8 at byte {exc.start} ({data[exc.start]:#04x}); "
                        "save the file as UTF-8")
        return None
    loader: _Loader | None = None
    try:
        loader = _Loader(text, problems)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, loader)
        return loader.construct_document(node)
    except _Refused as exc:
        problems.append(f"{_where(exc.problem_mark)}: {exc.problem}")
    except yaml.reader.ReaderError as exc:  # a control character, say
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        problems.append(f"line {line}, column {column}: not valid YAML (character "
                        f"#x{exc.character:04x}: {exc.reason})")
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problems.append(f"{_where(mark)}: not valid YAML ({getattr(exc, 'problem', exc)})")
    except RecursionError:  # not expected below MAX_YAML_DEPTH; never a traceback, though
        problems.append(f"(top): {_TOO_DEEP}")
    finally:
        if loader is not None:
            loader.dispose()
    return None


def _where(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(top)"


def _check_expansion(root: yaml.Node, loader: _Loader) -> None:
    """Refuse a document that aliases expand past MAX_YAML_NODES nodes or MAX_YAML_DEPTH
    levels, or that contains itself; list strings that are not Unicode.

    An alias shares its anchor's node, so building the document is cheap, but
    everything after (the schema, the conditions) walks it expanded: the 10 nodes of
    ``&a [*b, *b, ...]`` nested nine times are a billion. Each node is measured once
    and its measure reused for every alias of it, so the check itself is linear.
    """
    measures: dict[int, tuple[int, int]] = {}  # id(node) -> nodes and levels, expanded
    inside: set[int] = set()  # the nodes being measured: an alias of one is a cycle
    largest: list[tuple[int, yaml.Node]] = []  # the largest node used more than once

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in inside:
            raise _Refused(f"{_anchor(loader, node)} contains an alias of itself; a rules "
                           "file cannot be recursive", node.start_mark)
        known = measures.get(key)
        if known is not None:
            if not largest or known[0] > largest[0][0]:
                largest[:] = [(known[0], node)]
        elif isinstance(node, yaml.ScalarNode):
            known = measures[key] = (1, 1)
            bad = _SURROGATE.search(node.value)
            if bad:
                loader.problems.append(
                    f"{_where(node.start_mark)}: \\u{ord(bad.group()):04x} is half of a "
                    "UTF-16 pair, not a character (write the character itself)")
                # Built as its escape, so that nothing after reports it again, or fails.
                node.value = node.value.encode("utf-8", "backslashreplace").decode()
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else \
                [part for pair in node.value for part in pair]
            inside.add(key)
            nodes, levels = 1, 0
            for child in children:
                child_nodes, child_levels = measure(child, depth + 1)
                nodes, levels = nodes + child_nodes, max(levels, child_levels)
            inside.discard(key)
            known = measures[key] = (nodes, levels + 1)
        if depth + known[1] - 1 > MAX_YAML_DEPTH:  # only through an alias: see compose_node
            raise _Refused(f"the aliases of {_anchor(loader, node)} nest the file more than "
                           f"{MAX_YAML_DEPTH} levels deep; a rules file may nest at most "
                           f"{MAX_YAML_DEPTH}", node.start_mark)
        return known

    nodes, _ = measure(root, 1)
    if nodes > MAX_YAML_NODES:
        culprit = largest[0][1] if largest else root
        raise _Refused(f"the aliases of {_anchor(loader, culprit)} expand the file to "
                       f"{nodes:,} YAML nodes; a rules file may have at most "
                       f"{MAX_YAML_NODES:,} with every alias expanded", culprit.start_mark)


def _anchor(loader: _Loader, node: yaml.Node) -> str:
    name = loader.anchors_of.get(id(node))
    return f"&{name}" if name is not None else "an anchor"
