"""What every store does with a batch of events, wherever the state lives.

A store reads the batch's leads, hands them to ``apply_batch`` (the engine's
``apply`` per event, in order per lead, with replays, duplicates and refusals
sorted out and the history recorded), and keeps what it returns: atomically per
shard in Redis (scoring.store.in_redis), in a dict in memory (scoring.store.in_memory).
Offline and streaming therefore differ only in where the state lives.

With a conversion model (SPEC 12), a store's ``explain`` annotates each notification
with the lead's ``p_convert`` and ``p_factors`` at the notification's ``event_ts``, in
the engine's ``apply`` (which knows the state of each notification's moment): work per
notification, none per event.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from scoring import history
from scoring.accounts import rolled_up
from scoring.engine import Explain, LeadState, Notification, apply
from scoring.errors import EventError
from scoring.events import Event
from scoring.rules import Ruleset

# A batch's events, in order: (index in the batch, event, its (partition, offset)).
Batch = list[tuple[int, Event, tuple[int, int] | None]]


@dataclass(slots=True)
class Outcome:
    """What a batch did: its notifications (and, from Redis, the outbox entries that carry
    them), and what to count."""

    notifications: list[Notification] = field(default_factory=list)
    entries: list[bytes] = field(default_factory=list)  # the outbox entries (RedisStore)
    applied: int = 0
    duplicates: int = 0
    replayed: int = 0
    awards: dict[str, list[float]] = field(default_factory=dict)  # rule -> [count, |points|]
    # Events the engine refused (their index in the batch, why): applied as no-ops, so
    # that their offsets count as applied, and the caller dead-letters them.
    rejected: list[tuple[int, EventError]] = field(default_factory=list)
    # With accounts (SPEC 11): each applied event's member award for its lead's account
    # (its index in the batch, the award), in order; and, from Redis, the outbox entries
    # that carry them to the account side (``award_entries``, in the same order).
    forwards: list[tuple[int, Event]] = field(default_factory=list)
    award_entries: list[bytes] = field(default_factory=list)

    def award(self, rule_id: str, times: float, points: float) -> None:
        tally = self.awards.get(rule_id)
        if tally is None:
            self.awards[rule_id] = [times, points]
        else:
            tally[0] += times
            tally[1] += points

    def add(self, other: Outcome) -> None:
        """Count another part of the batch in (a shard, a half)."""
        self.notifications += other.notifications
        self.entries += other.entries
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.replayed += other.replayed
        self.rejected += other.rejected
        self.forwards += other.forwards
        self.award_entries += other.award_entries
        for rule_id, (times, points) in other.awards.items():
            self.award(rule_id, times, points)

    def __bool__(self) -> bool:
        return bool(self.notifications or self.applied or self.replayed or self.duplicates
                    or self.rejected)


class PartlyApplied(Exception):
    """Some shards of a batch committed, another failed (``cause``). ``outcome`` is what
    the committed shards did: their events are replays from now on, so whoever retries
    the batch must act on it (deliver, dead-letter) or lose it."""

    def __init__(self, outcome: Outcome, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.outcome, self.cause = outcome, cause


@dataclass(slots=True)
class Lead:
    """One lead as a store keeps it: its engine state, the last offset applied per source
    partition (to recognise replays), and its history entries not yet stored."""

    state: LeadState
    offsets: dict[str, int] = field(default_factory=dict)
    history: list[history.Entry] = field(default_factory=list)
    # The score groups whose rules awarded it points in this batch (SPEC 10): only their
    # rankings need its new key (scoring.store.commit). None: none did.
    fed: set[str] | None = None


def numbered(events: Sequence[Event], positions: Sequence[tuple[int, int] | None] | None
             ) -> Iterable[tuple[int, Event, tuple[int, int] | None]]:
    """The events with their index in the batch and their source position, if any."""
    if positions is None:
        return zip(itertools.count(), events, itertools.repeat(None))
    return zip(itertools.count(), events, positions, strict=False)


def apply_batch(leads: Mapping[str, Lead],
                events: Iterable[tuple[int, Event, tuple[int, int] | None]], rules: Ruleset,
                keep_history: bool = True, track_fed: bool = False,
                explain: Explain | None = None) -> Outcome:
    """Apply the events to their leads (each in ``leads``), in order. An event at or
    below the last offset
    applied to its lead from the same partition is a replay (a crash, a rebalance; a
    lead's events all come from one partition in order) and is skipped, whatever the
    dedupe window; a repeat of an event id is a duplicate; an event the engine refuses
    changes nothing and is reported in ``rejected``. Notifications come in the order
    of the events that caused them. ``track_fed``: record in each ``Lead.fed`` the
    score groups its events fed (a store whose leads live for one batch: Redis's).
    ``explain``: annotate each notification with the lead's conversion probability
    (``scoring.engine.apply``)."""
    outcome = Outcome()
    notes, awards, rejected = outcome.notifications, outcome.awards, outcome.rejected
    applied_count = duplicates = replayed = 0
    group_of = rules.group_of if track_fed else None
    rolls_up = rules.accounts is not None
    forwards = outcome.forwards
    for index, event, position in events:
        lead = leads[event.lead_id]
        state = lead.state
        if position is not None:
            partition = str(position[0])
            if lead.offsets.get(partition, -1) >= position[1]:
                replayed += 1
                continue
            lead.offsets[partition] = position[1]
        if keep_history:
            stage, fit = state.stage, state.fit
        try:
            applied = apply(state, event, rules, explain)
        except EventError as exc:  # refused before it changed anything
            rejected.append((index, exc))
            continue
        if applied.duplicate:
            duplicates += 1
            continue
        applied_count += 1
        if applied.notifications:
            notes += applied.notifications
        if rolls_up and applied.awards:
            award = rolled_up(state, event, applied, rules)
            if award is not None:
                forwards.append((index, award))
        if keep_history:
            found = history.entries(state, event, applied, stage, fit, rules)
            if found:
                lead.history += found
        for rule_id, points in applied.awards:  # (Outcome.award, inline: once per award)
            tally = awards.get(rule_id)
            if tally is None:
                awards[rule_id] = [1, abs(points)]
            else:
                tally[0] += 1
                tally[1] += abs(points)
            if group_of and rule_id in group_of:
                if lead.fed is None:
                    lead.fed = set()
                lead.fed.add(group_of[rule_id])
    outcome.applied, outcome.duplicates, outcome.replayed = applied_count, duplicates, replayed
    return outcome

