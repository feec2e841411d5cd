"""A lead as people see it: one definition for the API, ``leadscore lead``,
``leadscore score`` and the dashboard, so that they can never disagree.

"Now" is the caller's clock: a disarmed lead whose cooling by decay is due but not
yet swept (the sweep runs every LEADSCORE_SWEEP_INTERVAL) is shown cooled, as the
next event or the sweep will make it (docs/semantics.md, "Hot, cooled, and the
crossing time").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scoring.engine import (
    LeadState,
    cool,
    engagement_at,
    group_engagement_at,
    group_score_at,
    reasons,
    score_at,
)
from scoring.rules import Group, Ruleset

__all__ = ["BANDS", "BAND_WIDTH", "Ranked", "as_of", "band", "best", "describe", "lead_now",
           "ranked", "summary"]

BANDS = 10  # SPEC 9: ten score bands of BAND_WIDTH points
BAND_WIDTH = 10


def as_of(state: LeadState, at: int, rules: Ruleset) -> LeadState:
    """The state as of ``at``: cooled first if its cooling by decay is due by then.
    Changes ``state`` (a copy read for showing, never written back)."""
    cool(state, at, rules)
    return state


def band(score: float) -> int:
    """The band of a score: [0,10) is 0, ... [90,100] is 9 (100 itself is in the last);
    a score outside 0..100 (rules with another score range) goes to the nearest band.
    Unrounded, as SPEC 3 compares: 9.999 is in [0,10) though it is shown as 10.0.

    For 1 <= i < BANDS, ``band(s) >= i`` exactly when ``s >= BAND_WIDTH * i`` (float
    floor division is exact here): the store counts bands by those edges
    (``scoring.store.queries``, "bands")."""
    index = int(score // BAND_WIDTH)
    return 0 if index < 0 else BANDS - 1 if index >= BANDS else index


def summary(state: LeadState, rules: Ruleset, at: float) -> dict[str, Any]:
    """One lead's numbers at ``at``, as ``leadscore score`` prints them."""
    shown = {
        "lead_id": state.lead_id,
        "score": round(score_at(state, at, rules), 2),
        "fit": round(state.fit, 2),
        "engagement": round(engagement_at(state, at, rules), 2),
        "stage": state.stage,
        "hot": state.hot,
    }
    if rules.groups:  # SPEC 10; absent without groups, so that those outputs never change
        shown["groups"] = {
            group.id: {"score": round(group_score_at(state, group, at, rules), 2),
                       "hot": group.id in state.groups_hot}
            for group in rules.groups}
    return shown


def describe(state: LeadState, rules: Ruleset, at: float) -> dict[str, Any]:
    """One lead with the why: the summary, its reasons, profile and rules version."""
    return {**summary(state, rules, at), "reasons": reasons(state, rules, at),
            "profile": state.profile, "rules_version": rules.version}


def lead_now(state: LeadState, rules: Ruleset, now_ms: int) -> dict[str, Any]:
    """A lead as the API and ``leadscore lead`` show it now: ``describe`` of the state
    cooled first if due (changes ``state``, a copy read for showing)."""
    return describe(as_of(state, now_ms, rules), rules, now_ms)


# A lead in the list of leads: its view, and how it ranks (score, then the score before
# clamping, then lead id: two leads clamped to 100 keep the order of their raw scores).
Ranked = tuple[float, float, str, dict[str, Any]]


def ranked(state: LeadState, rules: Ruleset, at: int,
           keep: Callable[[dict[str, Any]], bool] | None, group: Group | None = None
           ) -> Ranked | None:
    """A lead as the lead list shows it at ``at`` (no profile), if ``keep`` accepts it;
    ranked by its own score, or by ``group``'s (``/leads?group=``)."""
    view = describe(state, rules, at)
    del view["profile"]
    if keep is not None and not keep(view):
        return None
    if group is not None:
        return (group_score_at(state, group, at, rules),
                group_engagement_at(state, group, at, rules), state.lead_id, view)
    return (score_at(state, at, rules), state.fit + engagement_at(state, at, rules),
            state.lead_id, view)


def best(found: list[Ranked], limit: int) -> list[dict[str, Any]]:
    """The views of the ``limit`` highest-ranked leads."""
    found.sort(key=lambda f: (-f[0], -f[1], f[2]))
    return [view for _, _, _, view in found[:limit]]
