"""What a rules change would do (``leadscore rules preview``, SPEC 9): two replays of the
same events, one per ruleset, compared lead by lead, and a backtest of each ruleset's
alerts against the conversions that followed.

Pure functions over ``scoring.offline.Replay``: the command (streams.preview) reads the
events once and replays them under both rulesets (``replay_many``), this module turns
the two replays into numbers, and streams.preview_report shows them. The JSON shape
is SPEC 9's; where SPEC 9 is silent the choice is written down where it is made and in
the README ("Previewing a rules change").
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scoring.engine import STAGES, LeadState, Notification, engagement_at, reasons, score_at
from scoring.events import format_ts, parse_ts
from scoring.offline import Replay
from scoring.rules import Ruleset
from scoring.views import BANDS, band

__all__ = ["BANDS", "LARGEST_CHANGES", "Backtest", "Preview", "Side", "alerts", "backtest",
           "band", "compare", "iso_week"]

LARGEST_CHANGES = 20  # SPEC 9: "the 20 largest score changes"
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Backtest:
    """One ruleset's alerts judged against the conversions that followed them.

    ``counted`` and ``hits`` (alerts), ``caught`` (converted leads alerted within the
    horizon) are what the ratios are made of; the reports show them so that a reader
    sees "12 of 40" and not only "0.3", but SPEC 9's JSON has only the ratios.
    """

    conversions: int  # leads with a conversion time c_l
    counted: int  # alerts of leads that never converted, or sent before c_l
    hits: int  # counted alerts sent at most the horizon before their lead's c_l
    caught: int  # converted leads with an alert in [c_l - horizon, c_l)
    precision: float | None  # hits / counted, 4 decimals; None when nothing was counted
    recall: float | None  # caught / conversions, 4 decimals; None without conversions
    median_lead_time_h: float | None  # over the caught leads, c_l - their earliest such alert

    def to_json(self) -> dict[str, Any]:
        return {"conversions": self.conversions, "precision": self.precision,
                "recall": self.recall, "median_lead_time_h": self.median_lead_time_h}


@dataclass(frozen=True, slots=True)
class Side:
    """One ruleset's replay, summed up at the preview's instant (SPEC 9's "S")."""

    name: str  # the rules file's name: for the reports, not in the JSON
    rules_version: str
    leads: int
    hot: int
    stages: dict[str, int]  # every stage, in the order leads move through them
    bands: list[int]  # leads per score band [0,10) ... [90,100]
    alerts: int
    alerts_per_week: dict[str, int]  # ISO week of event_ts ("2026-W47") -> alerts, sorted
    backtest: Backtest
    applied: int  # events applied: for the reports, not in the JSON

    def to_json(self) -> dict[str, Any]:
        return {"rules_version": self.rules_version, "leads": self.leads, "hot": self.hot,
                "stages": self.stages, "bands": self.bands, "alerts": self.alerts,
                "alerts_per_week": self.alerts_per_week, "backtest": self.backtest.to_json()}


@dataclass(frozen=True, slots=True)
class Preview:
    """Both sides and what differs between them, lead by lead."""

    at: int  # epoch ms: the instant every score, stage and hot flag is taken at
    horizon: str  # as the user wrote it ("90d")
    horizon_ms: int
    old: Side
    new: Side
    became_hot: list[str]  # hot at ``at`` under NEW and not under OLD, sorted
    no_longer_hot: list[str]  # the reverse
    stage_changes: list[dict[str, Any]]  # {"lead_id", "old", "new"}, by lead_id
    largest_changes: list[dict[str, Any]]  # see ``_largest_changes``
    changed_scores: int = 0  # leads whose rounded score differs

    def to_json(self) -> dict[str, Any]:
        return {"at": format_ts(self.at), "horizon": self.horizon, "old": self.old.to_json(),
                "new": self.new.to_json(), "became_hot": self.became_hot,
                "no_longer_hot": self.no_longer_hot, "stage_changes": self.stage_changes,
                "largest_changes": self.largest_changes}


def compare(old: Replay, old_rules: Ruleset, new: Replay, new_rules: Ruleset,
            horizon: str, horizon_ms: int) -> Preview:
    """The preview of replacing ``old_rules`` by ``new_rules``, from the replays of the
    same events under each (``scoring.offline.replay_many``, which reports both at one
    instant)."""
    if old.at is None or old.at != new.at:
        raise ValueError("both replays must be reported at one instant (replay_many)")
    at = old.at
    old_scores = {lead: score_at(s, at, old_rules) for lead, s in old.states.items()}
    new_scores = {lead: score_at(s, at, new_rules) for lead, s in new.states.items()}
    old_hot = {lead for lead, s in old.states.items() if s.hot}
    new_hot = {lead for lead, s in new.states.items() if s.hot}
    # A lead can be missing on one side only if that ruleset refused all its events (an
    # award that would not stay finite): it then counts as not hot, with no stage.
    stage_changes = []
    for lead in sorted(old.states.keys() | new.states.keys()):
        before, after = old.states.get(lead), new.states.get(lead)
        old_stage = before.stage if before is not None else None
        new_stage = after.stage if after is not None else None
        if old_stage != new_stage:
            stage_changes.append({"lead_id": lead, "old": old_stage, "new": new_stage})
    both = old_scores.keys() & new_scores.keys()
    return Preview(
        at=at, horizon=horizon, horizon_ms=horizon_ms,
        old=_side(old, old_rules, old_scores, horizon_ms),
        new=_side(new, new_rules, new_scores, horizon_ms),
        became_hot=sorted(new_hot - old_hot), no_longer_hot=sorted(old_hot - new_hot),
        stage_changes=stage_changes,
        largest_changes=_largest_changes(old, old_rules, old_scores, new, new_rules,
                                         new_scores, at),
        changed_scores=sum(1 for lead in both
                           if round(new_scores[lead], 2) != round(old_scores[lead], 2)))


def iso_week(ms: int) -> str:
    """The ISO 8601 week of an instant, in UTC: ``"2026-W47"`` (ISO year, so that
    2027-01-01, a Friday, is ``"2026-W53"``)."""
    year, week, _ = datetime.fromtimestamp(ms / 1000, UTC).isocalendar()
    return f"{year:04d}-W{week:02d}"


def alerts(replay: Replay) -> list[Notification]:
    """The lead.hot notifications of leads' own scores: group null, or no group at all
    (notifications before score groups, SPEC 10, carry none)."""
    return [n for n in replay.notifications
            if n["type"] == "lead.hot" and n.get("group") is None]


def _side(replay: Replay, rules: Ruleset, scores: dict[str, float], horizon_ms: int) -> Side:
    stages = Counter(state.stage for state in replay.states.values())
    bands = [0] * BANDS
    for score in scores.values():
        bands[band(score)] += 1
    sent = [(n["lead_id"], parse_ts(n["event_ts"])) for n in alerts(replay)]
    # Many alerts share a day: the week of each day is found once.
    weeks: dict[int, str] = {}
    per_week: Counter[str] = Counter()
    for _, ts in sent:
        day = ts // 86_400_000
        week = weeks.get(day)
        if week is None:
            week = weeks[day] = iso_week(day * 86_400_000)
        per_week[week] += 1
    return Side(
        name=rules.name, rules_version=rules.version, leads=len(replay.states),
        hot=sum(1 for state in replay.states.values() if state.hot),
        stages={stage: stages.get(stage, 0) for stage in STAGES}, bands=bands,
        alerts=len(sent), alerts_per_week=dict(sorted(per_week.items())),
        backtest=backtest(sent, replay.conversions, horizon_ms), applied=replay.applied)


def backtest(sent: list[tuple[str, int]], conversions: dict[str, int],
             horizon_ms: int) -> Backtest:
    """SPEC 9's backtest of alerts ``sent`` as (lead_id, event time) against the leads'
    conversion times: an alert is counted when its lead never converted or it came
    before the conversion (an alert after it says nothing about predicting it), and is
    a hit when also at most ``horizon_ms`` before it."""
    counted = hits = 0
    earliest: dict[str, int] = {}  # converted lead -> its earliest alert in the horizon
    for lead, ts in sent:
        converted = conversions.get(lead)
        if converted is None:
            counted += 1
        elif ts < converted:
            counted += 1
            if converted - ts <= horizon_ms:
                hits += 1
                if lead not in earliest or ts < earliest[lead]:
                    earliest[lead] = ts
    lead_times = [conversions[lead] - ts for lead, ts in earliest.items()]
    return Backtest(
        conversions=len(conversions), counted=counted, hits=hits, caught=len(earliest),
        precision=round(hits / counted, 4) if counted else None,
        recall=round(len(earliest) / len(conversions), 4) if conversions else None,
        median_lead_time_h=round(statistics.median(lead_times) / HOUR_MS, 2)
        if lead_times else None)


def _largest_changes(old: Replay, old_rules: Ruleset, old_scores: dict[str, float],
                     new: Replay, new_rules: Ruleset, new_scores: dict[str, float],
                     at: int) -> list[dict[str, Any]]:
    """The leads whose score moves most, by the unrounded |change| then lead_id: at most
    LARGEST_CHANGES of them, each ``{"lead_id", "change", "old", "new"}`` where a side is
    ``{"score", "fit", "engagement", "stage", "hot", "reasons"}`` as ``leadscore lead``
    shows them. A change that rounds to 0.00 is no change; a lead known on one side
    only has no score to compare and is left out."""
    moved = []
    for lead in old_scores.keys() & new_scores.keys():
        change = new_scores[lead] - old_scores[lead]
        if round(change, 2) != 0:
            moved.append((-abs(change), lead, change))
    moved.sort()
    return [{"lead_id": lead, "change": round(change, 2),
             "old": _view(old.states[lead], old_rules, old_scores[lead], at),
             "new": _view(new.states[lead], new_rules, new_scores[lead], at)}
            for _, lead, change in moved[:LARGEST_CHANGES]]


def _view(state: LeadState, rules: Ruleset, score: float, at: int) -> dict[str, Any]:
    return {"score": round(score, 2), "fit": round(state.fit, 2),
            "engagement": round(engagement_at(state, at, rules), 2), "stage": state.stage,
            "hot": state.hot, "reasons": reasons(state, rules, at)}
