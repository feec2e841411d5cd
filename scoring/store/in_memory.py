"""Lead state in a dict: ``leadscore score`` and the tests.

The same batches as ``RedisStore`` through the same ``apply_batch``, so that offline
and streaming differ only in where the state lives. One process owns the dict, so a
batch needs no transaction; the index a "top N now" needs is a scan of every lead.
With ``explain`` set (a conversion model, SPEC 12) its notifications carry the lead's
``p_convert`` and ``p_factors``, as the Redis store's do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from scoring import history
from scoring.engine import (
    LeadState,
    Notification,
    cool,
    in_group,
    score_at,
    stamp,
    subject_of,
)
from scoring.events import Event
from scoring.rules import Ruleset
from scoring.store.batch import Lead, Outcome, apply_batch, numbered
from scoring.store.ranking import counted, members
from scoring.views import (
    BANDS,
    ByProbability,
    Explain,
    Ranked,
    as_of,
    band,
    best,
    explained,
    ranked,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    """Every lead's state, offsets and history, in memory."""

    def __init__(self, rules: Ruleset, history_size: int = history.SIZE) -> None:
        self.rules = rules
        self.history_size = history_size
        self.leads: dict[str, Lead] = {}
        self.updated_at: dict[str, int] = {}
        # Annotates notifications with the conversion probability (SPEC 12); None: none.
        self.explain: Explain | None = None

    def apply_now(self, events: Sequence[Event], now_ms: int | None = None,
                  positions: Sequence[tuple[int, int] | None] | None = None) -> Outcome:
        """``apply`` without the event loop, and without stamping ``emitted_at`` unless
        ``now_ms`` is given: what ``leadscore score`` needs."""
        leads = self.leads
        for event in events:
            if event.lead_id not in leads:
                leads[event.lead_id] = Lead(LeadState(event.lead_id))
        outcome = apply_batch(leads, numbered(events, positions), self.rules,
                              self.history_size > 0, explain=self.explain)
        if self.history_size > 0:
            for event in events:
                lead = leads[event.lead_id]
                if len(lead.history) > self.history_size:
                    del lead.history[:-self.history_size]
        if now_ms is not None:
            for event in events:
                self.updated_at[event.lead_id] = now_ms
            outcome.entries = [orjson.dumps(stamp(n, now_ms)) for n in outcome.notifications]
        if outcome.rejected:
            self._drop_unapplied(events)
        return outcome

    async def apply(self, events: Sequence[Event], now_ms: int,
                    positions: Sequence[tuple[int, int] | None] | None = None) -> Outcome:
        """As ``RedisStore.apply``: the outcome's ``entries`` are the notifications as
        JSON, stamped ``emitted_at`` = ``now_ms``."""
        return self.apply_now(events, now_ms, positions)

    def sweep_now(self, at: int) -> list[Notification]:
        """Cool every disarmed lead and group whose cooling by decay is due by ``at``;
        their lead.cooled, each lead's together (its own first, then its groups'), by
        the first one's crossing time then lead id."""
        cooled = []
        explain = self.explain
        for lead in self.leads.values():
            notes = cool(lead.state, at, self.rules)
            if notes:
                if explain is not None:  # (cooling changes no feature: the state as it was)
                    for note in notes:
                        explained(note, lead.state, explain)
                cooled.append(notes)
                if self.history_size > 0:
                    lead.history += map(history.cooling, notes)
        # A lead's coolings stay together, in the order SPEC 4 gives them.
        cooled.sort(key=lambda notes: (notes[0]["event_ts"], subject_of(notes[0])))
        return [note for notes in cooled for note in notes]

    async def sweep(self, now_ms: int) -> list[bytes]:
        return [orjson.dumps(stamp(n, now_ms)) for n in self.sweep_now(now_ms)]

    async def load(self, lead_id: str) -> tuple[LeadState, int] | None:
        lead = self.leads.get(lead_id)
        if lead is None:
            return None
        return _copy(lead.state), self.updated_at.get(lead_id, 0)

    async def exists(self, lead_id: str) -> bool:
        return lead_id in self.leads

    async def history(self, lead_id: str, limit: int) -> list[dict[str, Any]]:
        lead = self.leads.get(lead_id)
        found = [] if lead is None else lead.history[::-1][:limit]
        return [history.view(entry) for entry in found]

    async def top(self, now_ms: int, limit: int, group: str = "all",
                  keep: Callable[[dict[str, Any]], bool] | None = None,
                  within: str | None = None, ahead_ms: int = 0) -> list[dict[str, Any]]:
        """As ``RedisStore.top``, by brute force over every lead (``ahead_ms``, which
        only widens what the Redis store reads, does not matter here)."""
        rules = self.rules
        scored = rules.group(within) if within is not None else None
        wanted = set(members(group)) if scored is None else set()
        found: list[Ranked] = []
        for lead in self.leads.values():
            state = as_of(_copy(lead.state), now_ms, rules)
            if scored is not None:
                if not in_group(state, scored) or (
                        group == "hot" and scored.id not in state.groups_hot):
                    continue
            elif f"stage:{state.stage}" not in wanted and not ("hot" in wanted and state.hot):
                continue
            entry = ranked(state, rules, now_ms, keep, scored)
            if entry is not None:
                found.append(entry)
        return best(found, limit)

    async def top_by_probability(self, now_ms: int, limit: int, explain: Explain,
                                 keep: Callable[[dict[str, Any]], bool] | None = None,
                                 within: str | None = None) -> list[dict[str, Any]]:
        """As ``RedisStore.top_by_probability``: a scan of every lead (``ByProbability``)."""
        scored = self.rules.group(within) if within is not None else None
        best_now = ByProbability(self.rules, now_ms, limit, explain, keep, scored)
        for lead in self.leads.values():
            best_now.offer(_copy(lead.state))
        return best_now.best()

    async def bands(self, now_ms: int, group: str = "all", ahead_ms: int = 0) -> list[int]:
        """As ``RedisStore.bands``, by brute force over every lead (``ahead_ms``, which
        only widens what the Redis store reads, does not matter here)."""
        wanted = set(counted(group))
        counts = [0] * BANDS
        for lead in self.leads.values():
            if f"stage:{lead.state.stage}" in wanted:
                counts[band(score_at(lead.state, now_ms, self.rules))] += 1
        return counts

    async def forget(self, lead_id: str) -> bool:
        self.updated_at.pop(lead_id, None)
        return self.leads.pop(lead_id, None) is not None

    def states(self) -> dict[str, LeadState]:
        """Every lead's state (the store's own objects: read, do not change)."""
        return {lead_id: lead.state for lead_id, lead in self.leads.items()}

    def _drop_unapplied(self, events: Sequence[Event]) -> None:
        """A new lead whose every event was refused was never seen: it has no state,
        as in Redis (scoring.store.commit)."""
        for event in events:
            lead = self.leads.get(event.lead_id)
            if lead is not None and lead.state.t_ref is None:
                del self.leads[event.lead_id]


def _copy(state: LeadState) -> LeadState:
    """A copy deep enough to be cooled or shown without touching the stored state."""
    return LeadState(state.lead_id, state.t_ref, state.engagement, state.fit,
                     dict(state.contributions), dict(state.profile), state.stage, state.hot,
                     dict(state.counts), {r: dict(w) for r, w in state.windows.items()},
                     dict(state.seen), state.notified, list(state.groups_hot),
                     dict(state.members), dict(state.awarded),
                     {lead: list(seen) for lead, seen in state.awards_seen.items()})
