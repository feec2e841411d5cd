"""Offline scoring (``leadscore score``): replay a file of events through the engine.

The stream worker must reach the same states and notifications as this replay on
the same per-lead order of events; the integration tests compare the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from scoring.engine import LeadState, Notification, apply, cool
from scoring.errors import EventError
from scoring.events import MAX_EVENT_BYTES, parse_event
from scoring.rules import Ruleset


@dataclass
class Replay:
    """The outcome of replaying events: every lead's state, notifications, rejected lines."""

    states: dict[str, LeadState] = field(default_factory=dict)
    notifications: list[Notification] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    applied: int = 0
    after_at: int = 0  # events later than --at, not applied
    at: int | None = None  # the instant scores are reported at


def replay(lines: Iterable[bytes], rules: Ruleset, at: int | None = None,
           max_event_bytes: int = MAX_EVENT_BYTES, *, latest_ms: int | None = None) -> Replay:
    """Apply events in file order; with ``at``, events after it have not happened yet.

    A line the worker would dead-letter is recorded in ``bad_lines`` with the same
    reason and skipped: one that ``parse_event`` refuses (with ``latest_ms``, the
    latest event time accepted: ``--now`` plus the allowed clock skew; None = no
    limit) or that ``apply`` refuses (a profile grown past its bound), which leaves
    the lead as it was. A lead none of whose lines was applied is not reported.

    Then, as SPEC 3 step 3 says, every disarmed lead that has cooled by ``at``
    (default: the largest event time seen) is re-armed with its lead.cooled.
    Notifications are stamped ``emitted_at`` = ``event_ts``, the moment a live
    worker would have sent them, so that offline output is deterministic.
    """
    out = Replay()
    states = out.states
    latest: int | None = None
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        try:
            event = parse_event(line, max_event_bytes, latest_ms=latest_ms)
        except EventError as exc:
            out.bad_lines.append((number, exc.reason))
            continue
        if at is not None and event.ts > at:
            out.after_at += 1
            continue
        state = states.get(event.lead_id)
        try:
            if state is None:
                state = LeadState(event.lead_id)
                notes = apply(state, event, rules)
                states[event.lead_id] = state
            else:
                notes = apply(state, event, rules)
        except EventError as exc:  # the state is as it was: apply refuses before any change
            out.bad_lines.append((number, exc.reason))
            continue
        if notes:
            out.notifications.extend(notes)
        out.applied += 1
        if latest is None or event.ts > latest:
            latest = event.ts
    out.at = at if at is not None else latest
    if out.at is not None:
        cooled = [n for state in states.values() if (n := cool(state, out.at, rules))]
        cooled.sort(key=lambda n: (n["event_ts"], n["lead_id"]))
        out.notifications.extend(cooled)
    for n in out.notifications:
        n["emitted_at"] = n["event_ts"]
    return out
