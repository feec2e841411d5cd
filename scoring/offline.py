"""Offline scoring (``leadscore score``, ``leadscore rules preview``): replay a file of
events through the engine.

The events go through the same ``apply_batch`` as the worker's (scoring.store), into
a store in memory: the stream worker must reach the same states and notifications on
the same per-lead order of events, and the integration tests compare the two.
``replay_many`` replays one source under several rulesets at once: each line is parsed
once and applied to one store per ruleset (parsing is a sixth of a replay's time).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from scoring.accounts import NO_ACCOUNTS
from scoring.engine import LeadState, Notification
from scoring.errors import EventError
from scoring.events import CONVERTED, MAX_EVENT_BYTES, Event, parse_event
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
    # lead_id -> the earliest time of its `converted` events accepted at the door, at or
    # before ``at`` (the backtest's conversion times, SPEC 9); the same for every ruleset.
    conversions: dict[str, int] = field(default_factory=dict)
    # With an accounts: section (SPEC 11): every account's state, and its notifications
    # (in the order their awards and events reached it: the file's).
    accounts: dict[str, LeadState] = field(default_factory=dict)
    account_notifications: list[Notification] = field(default_factory=list)


CHUNK = 10_000  # events applied to the store at a time
NO_VALUE = "message has no value"  # a Kafka message without a value, as the worker says


def parsed(lines: Iterable[bytes | None], refused: list[tuple[int, str]],
           max_event_bytes: int = MAX_EVENT_BYTES, latest_ms: int | None = None
           ) -> Iterator[tuple[int, Event]]:
    """Each line's event with its line number (from 1), as the worker parses messages;
    a line it would dead-letter is appended to ``refused`` as (line number, reason) and
    skipped, and a blank line skipped. ``None`` for a line is a Kafka message without a
    value."""
    for number, line in enumerate(lines, start=1):
        if line is None:
            refused.append((number, NO_VALUE))
            continue
        line = line.strip()
        if not line:
            continue
        try:
            yield number, parse_event(line, max_event_bytes, latest_ms=latest_ms)
        except EventError as exc:
            refused.append((number, exc.reason))


def first_conversion(conversions: dict[str, int], event: Event) -> None:
    """Keep in ``conversions`` each lead's earliest `converted` time (SPEC 9, 12)."""
    if event.type == CONVERTED:
        first = conversions.get(event.lead_id)
        if first is None or event.ts < first:
            conversions[event.lead_id] = event.ts


def replay(lines: Iterable[bytes | None], rules: Ruleset, at: int | None = None,
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
    return replay_many(lines, [rules], at, max_event_bytes, latest_ms=latest_ms)[0]


def replay_many(lines: Iterable[bytes | None], rulesets: Sequence[Ruleset],
                at: int | None = None, max_event_bytes: int = MAX_EVENT_BYTES, *,
                latest_ms: int | None = None) -> list[Replay]:
    """``replay`` under each of ``rulesets``, in one pass over ``lines``: one Replay each,
    in order, each exactly what ``replay`` returns for its ruleset alone.

    Each line is parsed once and the event applied to one store per ruleset, so that
    comparing two rulesets (``leadscore rules preview``) costs one parse, not two. All
    replays report at one instant: ``at``, else the largest event time applied under
    any of the rulesets (they differ only if a ruleset refuses an event another
    accepts: an award that would not stay finite). ``None`` for a line is a Kafka
    message without a value, refused as the worker refuses it.
    """
    stores = [MemoryStore(rules, history_size=0) for rules in rulesets]
    # Each ruleset's accounts (SPEC 11): the awards of its lead events and the account
    # events, in the file's order, through a store of their own.
    account_stores = [MemoryStore(rules.accounts.rules, history_size=0)
                      if rules.accounts is not None else None for rules in rulesets]
    outs = [Replay() for _ in rulesets]
    door: list[tuple[int, str]] = []  # refused by parse_event: the same for every ruleset
    latest: list[int | None] = [None] * len(stores)
    conversions: dict[str, int] = {}
    after_at = 0
    events: list[Event] = []
    numbers: list[int] = []
    lead_index: list[int] = []  # a lead event's index among the chunk's lead events -> in it

    def flush() -> None:
        if not events:
            return
        chunk_latest = max(event.ts for event in events)  # of every store that refused none
        mixed = any(event.account for event in events)
        leads = [event for event in events if not event.account] if mixed else events
        for i, (store, out) in enumerate(zip(stores, outs, strict=True)):
            outcome = store.apply_now(leads)
            out.notifications += outcome.notifications
            newest: int | None = chunk_latest
            refused = {lead_index[index] if mixed else index for index, _ in outcome.rejected}
            out.bad_lines += [(numbers[lead_index[index] if mixed else index], exc.reason)
                              for index, exc in outcome.rejected]
            accounts = account_stores[i]
            if accounts is not None:
                refused |= _apply_accounts(accounts, events, outcome.forwards,
                                           lead_index if mixed else None, numbers, out)
            elif mixed:
                for index, event in enumerate(events):
                    if event.account:
                        refused.add(index)
                        out.bad_lines.append((numbers[index], NO_ACCOUNTS))
            if refused:
                newest = max((event.ts for index, event in enumerate(events)
                              if index not in refused), default=None)
            out.applied += len(events) - len(refused)
            before = latest[i]
            if newest is not None and (before is None or newest > before):
                latest[i] = newest
        events.clear()
        numbers.clear()
        lead_index.clear()

    for number, event in parsed(lines, door, max_event_bytes, latest_ms):
        if at is not None and event.ts > at:
            after_at += 1
            continue
        if not event.account:
            first_conversion(conversions, event)
            lead_index.append(len(events))
        events.append(event)
        numbers.append(number)
        if len(events) >= CHUNK:
            flush()
    flush()
    if at is None:
        known = [t for t in latest if t is not None]
        at = max(known) if known else None
    for store, accounts, out in zip(stores, account_stores, outs, strict=True):
        out.bad_lines += door
        out.bad_lines.sort()
        out.after_at, out.at, out.conversions = after_at, at, conversions
        if at is not None:
            out.notifications += store.sweep_now(at)
            if accounts is not None:
                out.account_notifications += accounts.sweep_now(at)
        for n in (*out.notifications, *out.account_notifications):
            n["emitted_at"] = n["event_ts"]
        out.states = store.states()
        if accounts is not None:
            out.accounts = accounts.states()
    return outs


def _apply_accounts(store: MemoryStore, events: list[Event], forwards: list[tuple[int, Event]],
                    lead_index: list[int] | None, numbers: list[int], out: Replay) -> set[int]:
    """A chunk's account side, in the file's order: each account event where it stands,
    each lead event's member award where its event stands. Returns the indexes (in the
    chunk) of the account events refused, which ``out.bad_lines`` then names."""
    at_index = {lead_index[i] if lead_index is not None else i: award for i, award in forwards}
    stream: list[Event] = []
    origin: list[int | None] = []  # index in the chunk of an account event, None: an award
    for index, event in enumerate(events):
        if event.account:
            stream.append(event)
            origin.append(index)
        elif index in at_index:
            stream.append(at_index[index])
            origin.append(None)
    if not stream:
        return set()
    outcome = store.apply_now(stream)
    out.account_notifications += outcome.notifications
    refused = set()
    for index, exc in outcome.rejected:
        source = origin[index]
        if source is not None:  # (an award is never refused: its points are a lead's)
            refused.add(source)
            out.bad_lines.append((numbers[source], exc.reason))
    return refused
