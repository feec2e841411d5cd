"""Small builders shared by the tests: events, rules from YAML text, replay of a list."""

from __future__ import annotations

import dataclasses
from typing import Any

from scoring.engine import LeadState, Notification, apply
from scoring.events import Event
from scoring.rules import Ruleset, parse_rules

DAY = 86_400_000
HOUR = 3_600_000
T0 = 1_793_923_200_000  # 2026-11-06T00:00:00Z, a Friday; 7d windows start on Thursdays

BASE_RULES = """
name: test
half_life: {half_life}
hot: {{threshold: 70, rearm_below: 50}}
mql_events: [form_submit]
"""


def rules(body: str = "", half_life: str = "30d") -> Ruleset:
    """A ruleset from YAML text appended to a minimal header."""
    return parse_rules((BASE_RULES.format(half_life=half_life) + body).encode(), "test.yaml")


def ev(event_id: str, type_: str, ts: int, lead: str = "lead-1", **props: Any) -> Event:
    return Event(event_id, lead, type_, ts, props)


def run(events: list[Event], ruleset: Ruleset, lead: str = "lead-1"
        ) -> tuple[LeadState, list[Notification]]:
    """Apply events in order to one fresh lead; return its state and all notifications."""
    state = LeadState(lead)
    notes: list[Notification] = []
    for event in events:
        notes.extend(apply(state, event, ruleset).notifications)
    return state, notes


def live(state: LeadState, ruleset: Ruleset) -> LeadState:
    """The state with only the event ids that still count as duplicates: what the Redis
    store keeps, where the offline engine may keep expired ones a little longer."""
    horizon = (state.t_ref or 0) - ruleset.dedupe_window_ms
    return dataclasses.replace(state, seen={i: t for i, t in state.seen.items()
                                            if t >= horizon})
