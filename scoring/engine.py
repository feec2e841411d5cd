"""The state transition: one lead's state, one event, one ruleset (docs/semantics.md).

``apply`` is the single definition of the scoring semantics. Every store runs it
through ``scoring.store.batch.apply_batch``: on states in memory (offline) or loaded
from Redis and written back atomically (the worker). It mutates the state it is
given (the hot path allocates no copies) and returns what the event did
(``Applied``: its notifications in order, its awards, whether it was a repeat). An
event it cannot apply (a profile that would grow past its bound, a number that would
stop being finite) raises
``EventError`` before anything in the state has changed, so that the caller can
dead-letter it and go on with the state as it was.

State is plain data (``LeadState.to_dict`` is JSON) so that it can live anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from scoring.decay import crossing_time, factor
from scoring.errors import EventError
from scoring.events import MEMBER_AWARD, Event, format_ts, parse_ts
from scoring.rules import Group, Ruleset

STAGES = ("prospect", "mql", "sql", "customer")
_RANK = {stage: rank for rank, stage in enumerate(STAGES)}
MAX_REASONS = 5
_KEEP_IDS = 8

# The bound of a lead's merged profile (README, "Bad input never stops the worker"):
# every event of the lead reads and rewrites its state, so a profile that grew without
# limit would slow every one of them. Bytes are counted as orjson encodes the profile
# (compact JSON, UTF-8).
MAX_PROFILE_KEYS = 256
MAX_PROFILE_BYTES = 32 * 1024

Notification = dict[str, Any]
# What a conversion model adds to a notification (scoring.model.Model.explain, bound to
# its rules): the lead's state and the instant in, p_convert and p_factors out.
Explain = Callable[["LeadState", int], dict[str, Any]]
Award = tuple[str, float]  # (rule id, points as awarded at the event's own time)
_INF = math.inf


@dataclass(slots=True)
class LeadState:
    """Everything Leadscore knows about one lead, as of event time ``t_ref``
    (docs/semantics.md, "One lead's state")."""

    lead_id: str
    t_ref: int | None = None  # T: the largest event time applied, epoch ms
    engagement: float = 0.0  # E as of T
    fit: float = 0.0  # F, from the profile; never decays
    contributions: dict[str, float] = field(default_factory=dict)  # rule id -> share of E
    profile: dict[str, Any] = field(default_factory=dict)
    stage: str = "prospect"
    hot: bool = False  # True = disarmed: lead.hot was sent and it has not cooled since
    counts: dict[str, int] = field(default_factory=dict)  # `after` rules: matches so far
    # `limit` rules: rule id -> window index -> |points| awarded in that window
    windows: dict[str, dict[int, float]] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # event id -> T when applied, for dedupe
    notified: int = 0  # notifications emitted so far; numbers notification ids
    # Score groups (SPEC 10) whose own lead.hot was sent and that have not cooled since,
    # in the rules file's order. A group's score is not kept: it is the sum of its
    # rules' shares in ``contributions``, so it cannot drift from them.
    groups_hot: list[str] = field(default_factory=list)
    # An account's (SPEC 11): each member lead's share of E, as of T, decayed like the
    # rules' shares; a lead's state has none.
    members: dict[str, float] = field(default_factory=dict)
    # A lead's: the member awards it has made to each account, numbering them from 1 per
    # account. An account's: per member, the awards applied, [n, m, ...]: every award
    # numbered up to n, and those above n that came early (see ``_award_applied``).
    awarded: dict[str, int] = field(default_factory=dict)
    awards_seen: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lead_id": self.lead_id, "t_ref": self.t_ref, "engagement": self.engagement,
            "fit": self.fit, "contributions": self.contributions, "profile": self.profile,
            "stage": self.stage, "hot": self.hot, "counts": self.counts,
            "windows": {rule: {str(w): used for w, used in ws.items()}
                        for rule, ws in self.windows.items()},
            "seen": self.seen, "notified": self.notified,
            **({"groups_hot": self.groups_hot} if self.groups_hot else {}),
            **({"members": self.members} if self.members else {}),
            **({"awarded": self.awarded} if self.awarded else {}),
            **({"awards_seen": self.awards_seen} if self.awards_seen else {}),
        }


class Applied(NamedTuple):
    """What applying one event did."""

    notifications: list[Notification]  # in order: a cooling by decay first, then the event's
    # Each rule that awarded points, as awarded at the event's own time; a fit rule that
    # starts or stops holding counts as an award of +/- its points.
    awards: list[Award]
    duplicate: bool  # a repeat of an applied event_id: nothing changed


def apply(state: LeadState, event: Event, rules: Ruleset,
          explain: Explain | None = None) -> Applied:
    """Apply one event to its lead's state; say what it did (``Applied``).

    ``explain`` (a conversion model's, SPEC 12): each notification also gets what it
    returns for the lead's state at that notification's moment and ``event_ts``: a
    cooling by decay found due before the event's awards from the state before them,
    the others from the state after the event. Called for notifications only.

    Raises ``EventError`` with kind ``profile_too_large`` (a profile_update that
    would grow the profile past MAX_PROFILE_KEYS or MAX_PROFILE_BYTES) or
    ``not_finite`` (an award that would make the engagement, a rule's share of it
    or the fit score infinite or NaN) before changing anything in the state: all
    that can fail is computed first, then applied in steps that cannot fail.
    """
    t, t_ref = event.ts, state.t_ref
    latest = t if t_ref is None or t > t_ref else t_ref
    if event.type == MEMBER_AWARD and rules.subject == "account":
        # A member award is recognised by its number, exactly, whatever the dedupe
        # window: it may be re-sent after any stretch of event time (scoring.accounts).
        member, number = event.properties["lead"], event.properties["n"]
        if _award_applied(state.awards_seen.get(member), number):
            return Applied([], [], True)
        first_seen = None
    else:
        member = None
        first_seen = state.seen.get(event.event_id)
        if first_seen is not None and first_seen >= latest - rules.dedupe_window_ms:
            return Applied([], [], True)  # a duplicate changes nothing and emits nothing
    in_order = t_ref is None or t >= t_ref
    # What one point is worth after moving from T to t (in order) or from t to T (late).
    f = 1.0 if t_ref is None else factor(abs(t - t_ref), rules.half_life_ms)

    # Plan: everything that can refuse the event, with the state untouched.
    if event.type == rules.profile_type:
        profile, fit, awards = _merged_profile(state, event.properties, rules)
    else:
        profile, awards = None, []
    if not rules.awards_stay_finite:
        _refuse_if_not_finite(state, event, rules, in_order, f)

    # Apply: from here on nothing raises.
    out: list[Notification] = []
    # Step 1: a disarmed lead (or group) that decayed below rearm_below before this event
    # cools first. (Validation keeps rearm_below inside the score range, so the clamp
    # cannot matter.)
    if in_order and ((state.hot and state.fit + state.engagement * f < rules.rearm_below)
                     or (state.groups_hot and _groups_cool(state, rules, f))):
        out += cool(state, t, rules)
        if explain is not None:  # the state as it was before the event, at each crossing
            _explained(out, state, explain)

    if profile is not None:
        state.profile = profile
        state.fit = fit  # F

    if in_order:
        # Rebase E and every contribution to t; the awards then arrive at full value.
        if f != 1.0:
            state.engagement *= f
            contributions = state.contributions
            for rule_id in contributions:
                contributions[rule_id] *= f
            if state.members:
                members = state.members
                for lead_id in members:
                    members[lead_id] *= f
        state.t_ref = t
        _award(state, event, rules, 1.0, awards)
    else:
        _award(state, event, rules, f, awards)  # a late event's awards arrive decayed from t to T

    stage = rules.stage_after.get(event.type)
    if stage is not None:
        _advance(state, stage)
    # An id is remembered at T as of its application, not at its own (maybe late) time:
    # a replay of a late event is then a duplicate for as long as any other replay.
    # Recorded times never decrease, so the dict stays in time order for pruning.
    if member is not None:
        _record_award(state, member, number)
    else:
        if first_seen is not None:
            del state.seen[event.event_id]
        state.seen[event.event_id] = latest
    # Prune when T crosses a mark every eighth of dedupe_window: scanning on every event
    # would be quadratic for a busy lead. The dedupe and `limit` checks compare times
    # with the horizon themselves, so pruning only frees memory, never changes a result.
    # A quiet lead keeps its few ids: at most _KEEP_IDS may outlive the window.
    if (t_ref is not None and t_ref // rules.prune_step_ms != t // rules.prune_step_ms
            and (len(state.seen) > _KEEP_IDS or state.windows)):
        _forget_old(state, rules)

    # Step 2: the event's own effect on the hot flag, judged at T (where no decay applies).
    now = state.t_ref
    assert now is not None
    score = state.fit + state.engagement
    score = rules.score_min if score < rules.score_min else \
        rules.score_max if score > rules.score_max else score
    if not state.hot and score >= rules.threshold:
        state.hot = True
        _advance(state, "sql")
        out.append(_notification(state, rules, "lead.hot", now, event.event_id, t, "event"))
    elif state.hot and score < rules.rearm_below:
        state.hot = False
        out.append(_notification(state, rules, "lead.cooled", now, event.event_id, t, "event"))
    if rules.alerting and (awards or rules.decay_lifts_groups):
        # Then each group's, in the file's order, with F = 0 (SPEC 10). Only a group this
        # event awarded can change here: between its own awards an armed group's score
        # only decays towards 0, below its threshold (unless the threshold is at most 0:
        # see decay_lifts_groups), and a disarmed one that decayed below rearm_below was
        # cooled in step 1, in order, or keeps its score, late.
        fed = {rules.group_of.get(rule_id) for rule_id, _ in awards}
        for group in rules.alerting:
            if group.id not in fed and not rules.decay_lifts_groups:
                continue
            assert group.threshold is not None and group.rearm_below is not None
            score = group_engagement(state, group)
            score = rules.score_min if score < rules.score_min else \
                rules.score_max if score > rules.score_max else score
            was_hot = group.id in state.groups_hot
            if not was_hot and score >= group.threshold:
                _set_group_hot(state, group.id, True, rules)
                out.append(_group_notification(state, rules, group, "lead.hot", now,
                                               event.event_id, t, "event"))
            elif was_hot and score < group.rearm_below:
                _set_group_hot(state, group.id, False, rules)
                out.append(_group_notification(state, rules, group, "lead.cooled", now,
                                               event.event_id, t, "event"))
    if explain is not None and out and "p_convert" not in out[-1]:
        _explained(out, state, explain)
    return Applied(out, awards, False)


def cool(state: LeadState, at: int, rules: Ruleset) -> list[Notification]:
    """Cooling by decay at instant ``at`` (docs/semantics.md, "Hot, cooled, and the crossing
    time"): re-arm a disarmed lead, and each disarmed group, whose score decayed below its
    rearm_below by then; return their lead.cooled as of each one's exact crossing time,
    the lead's own first, then its groups' in the file's order (SPEC 4)."""
    t_ref = state.t_ref
    out: list[Notification] = []
    if t_ref is None or at < t_ref:
        return out
    if state.hot and score_at(state, at, rules) < rules.rearm_below:
        crossed = cooling_due(state, rules, groups=False)
        state.hot = False
        when = t_ref if crossed is None else crossed
        out.append(_notification(state, rules, "lead.cooled", when, None, round(when), "decay"))
    if state.groups_hot:
        f = factor(at - t_ref, rules.half_life_ms)
        for group in rules.alerting:
            if group.id not in state.groups_hot:
                continue
            assert group.rearm_below is not None
            engagement = group_engagement(state, group)
            # (Unclamped: rearm_below lies inside the score range, so the clamp of the
            # group's score cannot decide this comparison.)
            if engagement * f >= group.rearm_below:
                continue
            crossed = crossing_time(t_ref, engagement, 0.0, group.rearm_below,
                                    rules.half_life_ms)
            _set_group_hot(state, group.id, False, rules)
            when = t_ref if crossed is None else crossed
            out.append(_group_notification(state, rules, group, "lead.cooled", when, None,
                                           round(when), "decay"))
    return out


def hot_at(state: LeadState, at: int, rules: Ruleset) -> bool:
    """Whether the lead is hot at ``at`` once a cooling by decay due by then is done."""
    return state.hot and (state.t_ref is None or at < state.t_ref
                          or score_at(state, at, rules) >= rules.rearm_below)


def rescore(state: LeadState, was_hot: bool, notified: int, at: int, rules: Ruleset,
            was_hot_groups: Sequence[str] = ()) -> list[Notification]:
    """A cutover at ``at`` (docs/generations.md): the new generation's lead takes over
    the old one's notification counter (``notified``; ids stay unique per lead across
    generations), is cooled by decay if that was due by ``at`` (silently: a cooling due
    in both counts as done), and gets the one notification owed for each hot flag that
    now differs from the old generation's as of ``at``: its own (``was_hot``), then each
    group's in the file's order (``was_hot_groups``: the groups hot in the old one), then
    a lead.cooled for each group hot in the old generation that no longer has alerts."""
    state.notified = max(state.notified, notified)
    kept = state.notified
    cool(state, at, rules)
    state.notified = kept
    out: list[Notification] = []
    if state.hot != was_hot:
        kind = "lead.hot" if state.hot else "lead.cooled"
        out.append(_notification(state, rules, kind, at, None, at, "rescore"))
    for group in rules.alerting:
        now_hot = group.id in state.groups_hot
        if now_hot != (group.id in was_hot_groups):
            kind = "lead.hot" if now_hot else "lead.cooled"
            out.append(_group_notification(state, rules, group, kind, at, None, at, "rescore"))
    alerting = {group.id for group in rules.alerting}
    declared = {group.id: group for group in rules.groups}
    for group_id in sorted(set(was_hot_groups) - alerting):
        group = declared.get(group_id, Group(group_id, ()))  # gone: nothing feeds it
        out.append(_group_notification(state, rules, group, "lead.cooled", at, None, at,
                                       "rescore"))
    return out


def cooling_due(state: LeadState, rules: Ruleset, groups: bool = True) -> float | None:
    """When the lead, or (``groups``) the first of its disarmed groups, will decay below
    its rearm_below (epoch ms), if ever: the cooling index's time for the lead."""
    t_ref = state.t_ref
    if t_ref is None:
        return None
    due = crossing_time(t_ref, state.engagement, state.fit, rules.rearm_below,
                        rules.half_life_ms) if state.hot else None
    if groups and state.groups_hot:
        for group in rules.alerting:
            if group.id in state.groups_hot:
                assert group.rearm_below is not None
                crossed = crossing_time(t_ref, group_engagement(state, group), 0.0,
                                        group.rearm_below, rules.half_life_ms)
                if crossed is not None and (due is None or crossed < due):
                    due = crossed
    return due


def group_engagement(state: LeadState, group: Group) -> float:
    """A group's engagement as of T: the sum of its rules' shares (SPEC 10), in the
    file's order, so that every reader sums the same floats the same way."""
    contributions = state.contributions
    total = 0.0
    for rule_id in group.rules:
        share = contributions.get(rule_id)
        if share is not None:
            total += share
    return total


def in_group(state: LeadState, group: Group) -> bool:
    """Whether any of the group's rules has awarded the lead points: the leads a group's
    list holds (``/leads?group=``)."""
    contributions = state.contributions
    return any(rule_id in contributions for rule_id in group.rules)


def group_engagement_at(state: LeadState, group: Group, at: float, rules: Ruleset) -> float:
    """The group's engagement decayed to ``at`` (held at T before it, as ``engagement_at``)."""
    raw = group_engagement(state, group)
    if state.t_ref is not None and at > state.t_ref:
        raw *= factor(at - state.t_ref, rules.half_life_ms)
    return raw


def group_score_at(state: LeadState, group: Group, at: float, rules: Ruleset) -> float:
    """G(at) = clamp(G_E * 2^(-(at - T)/H), min, max), unrounded (SPEC 10)."""
    raw = group_engagement_at(state, group, at, rules)
    return min(max(raw, rules.score_min), rules.score_max)


def engagement_at(state: LeadState, at: float, rules: Ruleset) -> float:
    """E decayed to ``at``; an instant before T reads as T (the score never runs backwards)."""
    if state.t_ref is None or at <= state.t_ref:
        return state.engagement
    return state.engagement * factor(at - state.t_ref, rules.half_life_ms)


def score_at(state: LeadState, at: float, rules: Ruleset) -> float:
    """S(at) = clamp(F + E * 2^(-(at - T)/H), min, max), unrounded."""
    raw = state.fit + engagement_at(state, at, rules)
    return min(max(raw, rules.score_min), rules.score_max)


def reasons(state: LeadState, rules: Ruleset, at: float, group: Group | None = None
            ) -> list[dict[str, Any]]:
    """The largest current contributions at ``at`` by absolute value, at most five: of
    every rule, or of ``group``'s rules only."""
    f = _worth_at(state, at, rules)
    if group is None:
        parts = [(rule_id, value * f) for rule_id, value in state.contributions.items()]
        parts += [(r.id, r.points) for r in rules.fit if r.test(state.profile)]
    else:
        parts = [(rule_id, state.contributions[rule_id] * f) for rule_id in group.rules
                 if rule_id in state.contributions]
    return _largest(parts, "rule", MAX_REASONS)


def _worth_at(state: LeadState, at: float, rules: Ruleset) -> float:
    """What a point of the state's shares as of T is worth at ``at`` (1 before T)."""
    t_ref = state.t_ref
    return factor(at - t_ref, rules.half_life_ms) if t_ref is not None and at > t_ref else 1.0


def _largest(parts: list[tuple[str, float]], name: str, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` largest parts by absolute value, rounded to 2 decimals (those that
    round to 0 left out; ties by id), as ``{name: id, "points": points}``."""
    rounded = [(part_id, round(points, 2)) for part_id, points in parts
               if round(points, 2) != 0]
    rounded.sort(key=lambda p: (-abs(p[1]), p[0]))
    return [{name: part_id, "points": points} for part_id, points in rounded[:limit]]


def stamp(notification: Notification, emitted_at: int) -> Notification:
    """Set ``emitted_at`` (epoch ms) when the notification actually leaves."""
    notification["emitted_at"] = format_ts(emitted_at)
    return notification


def _award(state: LeadState, event: Event, rules: Ruleset, weight: float,
           awards: list[Award] | None) -> None:
    """Add what each matching engagement rule awards (after `after` and `limit`) to E
    and to the rule's own share, each worth ``weight`` as of T. An account's member award
    (SPEC 11) brings its points ready-made: each also adds to the member's share."""
    if event.type == MEMBER_AWARD and rules.subject == "account":
        _member_awards(state, event, weight, awards)
        return
    candidates = rules.by_type.get(event.type)
    if not candidates:
        return
    for rule in candidates:
        if rule.test is not None and not rule.test(event.properties):
            continue
        points = rule.points
        if rule.after is not None:
            count = state.counts.get(rule.id, 0) + 1
            if count > rule.after:
                continue  # awarded already; the count stays at N
            state.counts[rule.id] = count
            if count < rule.after:
                continue
        if rule.limit_points is not None and rule.limit_per_ms is not None:
            window = event.ts // rule.limit_per_ms  # tumbling, aligned to the Unix epoch
            used = state.windows.setdefault(rule.id, {})
            t_ref = state.t_ref
            latest = event.ts if t_ref is None or event.ts > t_ref else t_ref
            if (window + 1) * rule.limit_per_ms <= latest - rules.dedupe_window_ms:
                used.pop(window, None)  # forgotten (see _forget_old), whether pruned yet or not
            room = rule.limit_points - used.get(window, 0.0)
            if room <= 0:
                continue
            if abs(points) > room:
                points = math.copysign(room, points)
            used[window] = used.get(window, 0.0) + abs(points)
        if points:
            if awards is not None:
                awards.append((rule.id, points))
            points *= weight
            state.engagement += points
            state.contributions[rule.id] = state.contributions.get(rule.id, 0.0) + points


def _member_awards(state: LeadState, event: Event, weight: float,
                   awards: list[Award] | None) -> None:
    """A lead's awards to its account (``scoring.accounts.rolled_up``): points already
    weighted by ``lead_weight``, at the lead event's time, attributed to the lead."""
    lead_id = event.properties["lead"]
    contributions = state.contributions
    total = 0.0
    for rule_id, points in event.properties["awards"]:
        if awards is not None:
            awards.append((rule_id, points))
        points *= weight
        total += points
        state.engagement += points
        contributions[rule_id] = contributions.get(rule_id, 0.0) + points
    state.members[lead_id] = state.members.get(lead_id, 0.0) + total


def _award_applied(seen: list[int] | None, number: int) -> bool:
    """Whether award ``number`` of a member is among those applied: ``seen`` is [n, early
    ones above n, ascending] (a member's awards arrive in order but for a re-send)."""
    return seen is not None and (number <= seen[0] or number in seen[1:])


def _record_award(state: LeadState, member: str, number: int) -> None:
    """Count award ``number`` of ``member`` as applied; the early ones that now follow
    n without a gap fold into it, so the list stays [n] in the steady state."""
    seen = state.awards_seen.get(member)
    if seen is None:
        seen = state.awards_seen[member] = [0]
    if number == seen[0] + 1:
        seen[0] = number
        while len(seen) > 1 and seen[1] == seen[0] + 1:
            seen[0] = seen.pop(1)
    else:
        seen.append(number)
        seen[1:] = sorted(seen[1:])


def _refuse_if_not_finite(state: LeadState, event: Event, rules: Ruleset, in_order: bool,
                          f: float) -> None:
    """Raise ``EventError`` (``not_finite``) if the event's awards would make E or a
    rule's share infinite or NaN; the state is left untouched.

    Only for rules whose ``awards_stay_finite`` is false (see scoring.rules.SAFE_POINTS):
    the awards are tried on a copy of the parts of the state they change, by the code
    that then applies them.
    """
    trial = LeadState(state.lead_id, state.t_ref, state.engagement,
                      contributions=dict(state.contributions), counts=dict(state.counts),
                      windows={rule_id: dict(used) for rule_id, used in state.windows.items()},
                      members=dict(state.members))
    if in_order:
        trial.engagement *= f
        for rule_id in trial.contributions:
            trial.contributions[rule_id] *= f
        trial.t_ref = event.ts
    _award(trial, event, rules, 1.0 if in_order else f, None)
    for rule_id, share in trial.contributions.items():
        if not -_INF < share < _INF:
            raise EventError(f'rule "{rule_id}" would make its share of the engagement score '
                             f"{share}; the event is refused so that the lead's state stays "
                             "finite", "not_finite")
    if not -_INF < trial.engagement < _INF:
        raise EventError(f"the event's awards would make the engagement score "
                         f"{trial.engagement}; the event is refused so that the lead's state "
                         "stays finite", "not_finite")


def _merged_profile(state: LeadState, changes: dict[str, Any], rules: Ruleset
                    ) -> tuple[dict[str, Any], float, list[Award]]:
    """The profile after a profile_update, its F and the fit rules it turns on or off,
    without changing the state.

    Raises ``EventError``: ``profile_too_large`` when the update would grow the profile
    past MAX_PROFILE_KEYS keys or MAX_PROFILE_BYTES bytes (an update that keeps or
    shrinks it, such as one that only sets keys to null, is always accepted), or
    ``not_finite`` when the fit rules would sum to an infinite or NaN F.
    """
    current = state.profile
    profile = current.copy()
    profile.update(changes)
    for key, value in changes.items():
        if value is None:
            del profile[key]  # null removes a key
    if len(profile) > MAX_PROFILE_KEYS and len(profile) > len(current):
        raise EventError(f"profile_update would grow the lead's profile to {len(profile)} keys, "
                         f"more than MAX_PROFILE_KEYS ({MAX_PROFILE_KEYS}); a key set to null "
                         "is removed", "profile_too_large")
    try:
        size = len(orjson.dumps(profile))
    except orjson.JSONEncodeError as exc:  # only an Event built in code can get here
        raise EventError(f"profile_update properties cannot be stored as JSON ({exc})",
                         "wrong_type") from None
    if size > MAX_PROFILE_BYTES and size > len(orjson.dumps(current)):
        raise EventError(f"profile_update would grow the lead's profile to {size} bytes of "
                         f"JSON, more than MAX_PROFILE_BYTES ({MAX_PROFILE_BYTES}); a key set "
                         "to null is removed", "profile_too_large")
    holds = [r.test(profile) for r in rules.fit]
    try:
        fit = math.fsum(r.points for r, h in zip(rules.fit, holds, strict=True) if h)
    except OverflowError:  # a sum of finite points past the largest float
        fit = math.inf
    except ValueError:  # inf - inf
        fit = math.nan
    if not -_INF < fit < _INF:
        raise EventError(f"the fit rules would make the fit score {fit}; the event is refused "
                         "so that the lead's state stays finite", "not_finite")
    changed: list[Award] = []
    for rule, after in zip(rules.fit, holds, strict=True):
        before = rule.test(current)
        if after != before:
            changed.append((rule.id, rule.points if not before else -rule.points))
    return profile, fit, changed


def _advance(state: LeadState, stage: str) -> None:
    if _RANK[stage] > _RANK[state.stage]:
        state.stage = stage


def _forget_old(state: LeadState, rules: Ruleset) -> None:
    """Drop event ids and limit windows more than dedupe_window of event time behind T."""
    assert state.t_ref is not None
    horizon = state.t_ref - rules.dedupe_window_ms
    # Ids are recorded at non-decreasing times: the expired ones are all at the front.
    expired = []
    for event_id, ts in state.seen.items():
        if ts >= horizon:
            break
        expired.append(event_id)
    for event_id in expired:
        del state.seen[event_id]
    for rule_id, used in state.windows.items():
        # A window is dropped once it ends behind the horizon (or its rule is gone).
        width = rules.window_ms.get(rule_id, 0)
        for window in [w for w in used if (w + 1) * width <= horizon]:
            del used[window]
    for rule_id in [r for r, used in state.windows.items() if not used]:
        del state.windows[rule_id]


def _notification(state: LeadState, rules: Ruleset, kind: str, at: float,
                  event_id: str | None, event_ts: int, cause: str) -> Notification:
    state.notified += 1
    engagement = engagement_at(state, at, rules)
    if rules.subject == "account":
        return _account_notification(state, rules, kind, at, engagement, event_ts, cause)
    return {
        "type": kind,
        "notification_id": f"{state.lead_id}:{state.notified}",
        "lead_id": state.lead_id,
        "score": round(score_at(state, at, rules), 2),
        "fit": round(state.fit, 2),
        "engagement": round(engagement, 2),
        "stage": state.stage,
        "threshold": plain(rules.threshold),
        "event_id": event_id,
        "event_ts": format_ts(event_ts),
        "emitted_at": None,
        "rules_version": rules.version,
        "reasons": reasons(state, rules, at),
        "cause": cause,  # event, decay or rescore (SPEC 4)
        "group": None,  # the lead's own score (score groups: SPEC 10)
    }


def _account_notification(state: LeadState, rules: Ruleset, kind: str, at: float,
                          engagement: float, event_ts: int, cause: str) -> Notification:
    """An account's account.hot or account.cooled (SPEC 11): no stage, event or group;
    its members' largest contributions in ``leads``."""
    return {
        "type": kind.replace("lead.", "account.", 1),
        "notification_id": f"{state.lead_id}:{state.notified}",
        "account_id": state.lead_id,
        "score": round(score_at(state, at, rules), 2),
        "fit": round(state.fit, 2),
        "engagement": round(engagement, 2),
        "threshold": plain(rules.threshold),
        "cause": cause,
        "event_ts": format_ts(event_ts),
        "emitted_at": None,
        "rules_version": rules.version,
        "leads": members_at(state, rules, at),
        "reasons": reasons(state, rules, at),
    }


def members_at(state: LeadState, rules: Ruleset, at: float, limit: int = MAX_REASONS
               ) -> list[dict[str, Any]]:
    """An account's members with the largest contributions at ``at`` by absolute value
    (its buying committee), at most ``limit``; ties by lead id."""
    f = _worth_at(state, at, rules)
    return _largest([(lead_id, value * f) for lead_id, value in state.members.items()],
                    "lead_id", limit)


def _group_notification(state: LeadState, rules: Ruleset, group: Group, kind: str,
                        at: float, event_id: str | None, event_ts: int, cause: str
                        ) -> Notification:
    """A group's lead.hot or lead.cooled (SPEC 10): the lead's shape with the group's own
    score, engagement, threshold and reasons, fit 0, sharing the lead's counter."""
    state.notified += 1
    engagement = group_engagement_at(state, group, at, rules)
    return {
        "type": kind,
        "notification_id": f"{state.lead_id}:{state.notified}",
        "lead_id": state.lead_id,
        "score": round(group_score_at(state, group, at, rules), 2),
        "fit": 0.0,
        "engagement": round(engagement, 2),
        "stage": state.stage,
        "threshold": None if group.threshold is None else plain(group.threshold),
        "event_id": event_id,
        "event_ts": format_ts(event_ts),
        "emitted_at": None,
        "rules_version": rules.version,
        "reasons": reasons(state, rules, at, group),
        "cause": cause,
        "group": group.id,
    }


def _explained(notes: list[Notification], state: LeadState, explain: Explain) -> None:
    """Annotate the notifications not yet explained, from ``state`` at their event_ts."""
    for note in notes:
        if "p_convert" not in note:
            note.update(explain(state, parse_ts(note["event_ts"])))


def _groups_cool(state: LeadState, rules: Ruleset, f: float) -> bool:
    """Whether a disarmed group decays below its rearm_below when its engagement is worth
    ``f`` of what it was at T (step 1 of apply, before calling ``cool``)."""
    by_id = rules.by_group
    for group_id in state.groups_hot:
        group = by_id[group_id]
        assert group.rearm_below is not None
        if group_engagement(state, group) * f < group.rearm_below:
            return True
    return False


def _set_group_hot(state: LeadState, group_id: str, hot: bool, rules: Ruleset) -> None:
    """Mark a group hot or not, keeping ``groups_hot`` in the file's order."""
    hot_now = set(state.groups_hot)
    if hot:
        hot_now.add(group_id)
    else:
        hot_now.discard(group_id)
    state.groups_hot = [g.id for g in rules.alerting if g.id in hot_now]


def subject_of(note: Notification) -> str:
    """The id a notification is about: its lead's, or an account's (SPEC 11); its key on
    the notifications topic."""
    lead_id = note.get("lead_id")
    return lead_id if lead_id is not None else note["account_id"]  # type: ignore[no-any-return]


def plain(number: float) -> float | int:
    """A whole number as an int, so that JSON shows 70 as the rules file wrote it, not
    70.0."""
    return int(number) if number.is_integer() else number
