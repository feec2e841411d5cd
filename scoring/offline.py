"""Offline scoring (``leadscore score``): replay a file of events through the engine.

The events go through the same ``apply_batch`` as the worker's (scoring.store), into
a store in memory: the stream worker must reach the same states and notifications on
the same per-lead order of events, and the integration tests compare the two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from scoring.engine import LeadState, Notification
from scoring.errors import EventError
from scoring.events import MAX_EVENT_BYTES, Event, parse_event
from scoring.rules import Ruleset
from scoring.store.in_memory import MemoryStore


@dataclass
class Replay:
    """The outcome of replaying events: every lead's state, notifications, rejected lines."""

    states: dict[str, LeadState] = field(default_factory=dict)
    notifications: list[Notification] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    applied: int = 0
    after_at: int = 0  # events later than --at, not applied
    at: int | None = None  # the instant scores are reported at


CHUNK = 10_000  # events applied to the store at a time


def replay(lines: Iterable[bytes], rules: Ruleset, at: int | None = None,
           max_event_bytes: int = MAX_EVENT_BYTES, *, latest_ms: int | None = None) -> Replay:
    """Apply events in file order; with ``at``, events after it have not happened yet.

    A line the worker would dead-letter is recorded in ``bad_lines`` with the same
    reason and skipped: one that ``parse_event`` refuses (with ``latest_ms``, the
    latest event time accepted: ``--now`` plus the allowed clock skew; None = no
    limit) or that ``apply`` refuses (a profile grown past its bound), which leaves
    the lead as it was. A lead none of whose lines was applied is not reported.

    Then, as the sweep does live (docs/semantics.md, "Hot, cooled, and the crossing
    time"), every disarmed lead that has cooled by ``at`` (default: the largest event
    time applied) is re-armed with its lead.cooled. Notifications are stamped
    ``emitted_at`` = ``event_ts``, the moment a live worker would have sent them, so
    that offline output is deterministic.
    """
    out = Replay()
    store = MemoryStore(rules, history_size=0)
    latest: int | None = None
    events: list[Event] = []
    numbers: list[int] = []

    def flush() -> None:
        nonlocal latest
        outcome = store.apply_now(events)
        refused = {index for index, _ in outcome.rejected}
        out.bad_lines += [(numbers[index], exc.reason) for index, exc in outcome.rejected]
        out.notifications += outcome.notifications
        out.applied += len(events) - len(refused)
        for index, event in enumerate(events):
            if index not in refused and (latest is None or event.ts > latest):
                latest = event.ts
        events.clear()
        numbers.clear()

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
        events.append(event)
        numbers.append(number)
        if len(events) >= CHUNK:
            flush()
    flush()
    out.bad_lines.sort()
    out.at = at if at is not None else latest
    if out.at is not None:
        out.notifications += store.sweep_now(out.at)
    for n in out.notifications:
        n["emitted_at"] = n["event_ts"]
    out.states = store.states()
    return out
