"""A lead as people see it: one definition for the API, ``leadscore lead``,
``leadscore score`` and the dashboard, so that they can never disagree.

"Now" is the caller's clock: a disarmed lead whose cooling by decay is due but not
yet swept (the sweep runs every LEADSCORE_SWEEP_INTERVAL) is shown cooled, as the
next event or the sweep will make it (docs/semantics.md, "Hot, cooled, and the
crossing time").

With a conversion model (SPEC 12) a view also carries ``p_convert`` and ``p_factors``:
an ``Explain`` (the model's ``explain`` bound to its rules, given by the caller: this
package never loads a model) applied to the state shown, at the instant shown. Without
one every view is exactly what it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scoring.engine import (
    Explain,
    LeadState,
    Notification,
    cool,
    engagement_at,
    group_engagement_at,
    group_score_at,
    in_group,
    members_at,
    reasons,
    score_at,
)
from scoring.events import parse_ts
from scoring.rules import Group, Ruleset

__all__ = ["BANDS", "BAND_WIDTH", "ByProbability", "Explain", "Ranked", "Selection",
           "account_now", "account_summary", "as_of", "band", "best", "describe", "explained",
           "lead_now", "ranked", "summary"]

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
    """One lead's numbers at ``at``, as ``leadscore score`` prints them (an account's,
    under the accounts' rules: ``account_summary``)."""
    if rules.subject == "account":
        return account_summary(state, rules, at)
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


def account_summary(state: LeadState, rules: Ruleset, at: float) -> dict[str, Any]:
    """One account's numbers at ``at`` (``rules``: the accounts' own), as ``leadscore
    score --accounts`` prints them (SPEC 11)."""
    return {
        "account_id": state.lead_id,
        "score": round(score_at(state, at, rules), 2),
        "fit": round(state.fit, 2),
        "engagement": round(engagement_at(state, at, rules), 2),
        "hot": state.hot,
    }


def account_now(state: LeadState, rules: Ruleset, now_ms: int) -> dict[str, Any]:
    """An account as the API and ``leadscore account`` show it now (cooled first if due;
    changes ``state``, a copy read for showing): its numbers, every member's current
    contribution, largest first (the buying committee), its reasons by rule, profile."""
    state = as_of(state, now_ms, rules)
    return {**describe(state, rules, now_ms),
            "members": members_at(state, rules, now_ms, limit=len(state.members))}


def describe(state: LeadState, rules: Ruleset, at: float) -> dict[str, Any]:
    """One lead with the why: the summary, its reasons, profile and rules version; an
    account's also with its five largest members' contributions (``leads``)."""
    shown = {**summary(state, rules, at), "reasons": reasons(state, rules, at),
             "profile": state.profile, "rules_version": rules.version}
    if rules.subject == "account":
        shown["leads"] = members_at(state, rules, at)
    return shown


def lead_now(state: LeadState, rules: Ruleset, now_ms: int, explain: Explain | None = None
             ) -> dict[str, Any]:
    """A lead as the API and ``leadscore lead`` show it now: ``describe`` of the state
    cooled first if due (changes ``state``, a copy read for showing), and with a model
    its ``p_convert`` and ``p_factors`` at the same instant."""
    view = describe(as_of(state, now_ms, rules), rules, now_ms)
    if explain is not None:
        view.update(explain(state, now_ms))
    return view


def explained(note: Notification, state: LeadState, explain: Explain) -> Notification:
    """Add ``p_convert`` and ``p_factors`` to a notification: ``state`` (the lead as it
    was at that moment) explained at the notification's own ``event_ts``."""
    note.update(explain(state, parse_ts(note["event_ts"])))
    return note


@dataclass(frozen=True, slots=True)
class Selection:
    """Which leads a list keeps (``keep``, over their views) and, with a model, how
    each is explained: passed as the ``keep`` of a store's ``top``, so that every view
    it ranks carries ``p_convert`` and ``p_factors`` computed from the very state that
    view shows (``ranked``)."""

    keep: Callable[[dict[str, Any]], bool] | None = None
    explain: Explain | None = None

    def __call__(self, view: dict[str, Any]) -> bool:
        return self.keep is None or self.keep(view)


# A lead in the list of leads: its view, and how it ranks (score, then the score before
# clamping, then lead id: two leads clamped to 100 keep the order of their raw scores).
Ranked = tuple[float, float, str, dict[str, Any]]


def ranked(state: LeadState, rules: Ruleset, at: int,
           keep: Callable[[dict[str, Any]], bool] | None, group: Group | None = None
           ) -> Ranked | None:
    """A lead as the lead list shows it at ``at`` (no profile), if ``keep`` accepts it;
    ranked by its own score, or by ``group``'s (``/leads?group=``). A ``Selection``
    with a model adds the lead's ``p_convert`` and ``p_factors`` at ``at``."""
    view = describe(state, rules, at)
    del view["profile"]
    if keep is not None and not keep(view):
        return None
    # (After the filter, which reads the score's fields only: no model for a lead it drops.)
    if isinstance(keep, Selection) and keep.explain is not None:
        view.update(keep.explain(state, at))
    if group is not None:
        return (group_score_at(state, group, at, rules),
                group_engagement_at(state, group, at, rules), state.lead_id, view)
    return (score_at(state, at, rules), state.fit + engagement_at(state, at, rules),
            state.lead_id, view)


def best(found: list[Ranked], limit: int) -> list[dict[str, Any]]:
    """The views of the ``limit`` highest-ranked leads."""
    found.sort(key=lambda f: (-f[0], -f[1], f[2]))
    return [view for _, _, _, view in found[:limit]]


class ByProbability:
    """The ``limit`` leads with the highest ``p_convert`` at ``at`` among those offered
    (``/leads?order=p_convert``), with ``keep`` (over their views) and, with ``group``,
    only the leads the group's rules have awarded, shown as ``ranked`` shows them.

    The probability is monotone in no index the store keeps (it weighs each rule's
    contribution, the fit rules and the stage, each its own way), so the exact answer
    needs every lead of the selection: a store offers each of its states (a scan), and
    this keeps only the best candidates as it goes (at most 2 * ``limit`` + 1000 views,
    not one per lead); a lead that ranks below the ``limit`` best kept so far is not
    even shown (its view is most of the cost). Ties of the shown (4-decimal)
    probability go by score (the group's, with ``group``), then the score before
    clamping, then lead id, as the score order breaks its own. A lead offered again
    while it is a candidate (a SCAN may return a key twice) keeps its first reading."""

    def __init__(self, rules: Ruleset, at: int, limit: int, explain: Explain,
                 keep: Callable[[dict[str, Any]], bool] | None = None,
                 group: Group | None = None) -> None:
        self.rules, self.at, self.limit, self.group = rules, at, limit, group
        self.explain, self.keep = explain, keep
        # lead_id -> (sort key, view): the candidates, trimmed to the best ``limit`` as
        # they grow; ``bar``, once ``limit`` are kept, the key of the last of them.
        self.found: dict[str, tuple[tuple[float, float, float, str], dict[str, Any]]] = {}
        self.bar: tuple[float, float, float, str] | None = None

    def offer(self, state: LeadState) -> None:
        """Consider one lead (cooled first if due: changes ``state``, a copy read for
        showing)."""
        lead_id, group, rules, at = state.lead_id, self.group, self.rules, self.at
        if lead_id in self.found or (group is not None and not in_group(state, group)):
            return
        as_of(state, at, rules)
        explained = self.explain(state, at)
        if group is None:
            score, raw = score_at(state, at, rules), state.fit + engagement_at(state, at, rules)
        else:
            score = group_score_at(state, group, at, rules)
            raw = group_engagement_at(state, group, at, rules)
        p = explained["p_convert"]
        key = (1.0 if p is None else -p, -score, -raw, lead_id)  # (a customer's None: last)
        if self.bar is not None and key > self.bar:
            return  # (below the ``limit`` best already kept: it cannot be shown)
        view = describe(state, rules, at)
        del view["profile"]
        view.update(explained)
        if self.keep is not None and not self.keep(view):
            return
        self.found[lead_id] = (key, view)
        if len(self.found) >= 2 * self.limit + 1000:
            self._trim()

    def best(self) -> list[dict[str, Any]]:
        """The views of the best ``limit``, highest probability first."""
        self._trim()
        return [view for _, view in self.found.values()]

    def _trim(self) -> None:
        kept = sorted(self.found.items(), key=lambda item: item[1][0])[:self.limit]
        self.found = dict(kept)
        if len(kept) == self.limit:
            self.bar = kept[-1][1][0]
