"""Score history: the last changes of a lead, to answer "why is this lead hot?".

An entry is recorded for each applied event that changed something a person cares
about (a rule awarded points, a fit rule started or stopped holding, the stage
moved, a notification was emitted) and for each cooling by decay. Entries are
stored as compact JSON arrays (a busy lead keeps dozens) and expanded by ``view``.
"""

from __future__ import annotations

from typing import Any

from scoring.engine import STAGES, Applied, LeadState, Notification, score_at
from scoring.events import Event, format_ts
from scoring.rules import Ruleset

# [at (epoch ms; RFC 3339 for a cooling), event_ts_ms|None, event_id|None, event_type,
#  [[rule, points(, group)], ...], score after, stage index, hot (0/1),
#  notification type|None(, groups)]
# With score groups (SPEC 10), an award names the group its rule fed, and the optional
# last element says what happened to groups: for an event, the notifications of its
# groups, [[group, type], ...]; for a group's own cooling or rescore, the group's id,
# and then score and hot are the group's. Without groups, entries are as before.
Entry = list[Any]
_STAGE_INDEX = {stage: i for i, stage in enumerate(STAGES)}
SIZE = 50  # changes kept per lead unless LEADSCORE_HISTORY_SIZE says otherwise


def entries(state: LeadState, event: Event, applied: Applied, stage: str, fit: float,
            rules: Ruleset) -> list[Entry]:
    """The history entries of one applied event: a cooling by decay that came first, and
    the event itself if it changed something a person cares about. ``stage`` and ``fit``
    are the lead's before the event."""
    found: list[Entry] = []
    caused: list[str] = []
    grouped: list[list[str]] = []
    for note in applied.notifications:  # (most events emit none)
        if note["cause"] == "decay":
            found.append(cooling(note))  # cooled before it
        elif note.get("group") is None:  # (an account's have no group)
            caused.append(note["type"])
        else:
            grouped.append([note["group"], note["type"]])
    if applied.awards or caused or grouped or state.stage != stage or state.fit != fit:
        assert state.t_ref is not None
        group_of = rules.group_of
        entry = [
            state.t_ref, event.ts, event.event_id, event.type,
            [[rule, round(points, 2)] if rule not in group_of else
             [rule, round(points, 2), group_of[rule]] for rule, points in applied.awards],
            round(score_at(state, state.t_ref, rules), 2), _STAGE_INDEX[state.stage],
            int(state.hot), caused[-1] if caused else None]
        if grouped:
            entry.append(grouped)
        found.append(entry)
    return found


def cooling(note: Notification) -> Entry:
    """The entry of a lead.cooled by decay (no event caused it): as of its crossing time."""
    entry = [note["event_ts"], None, None, note["type"], [], note["score"],
             _STAGE_INDEX[note.get("stage", "prospect")], 0, note["type"]]
    return entry if note.get("group") is None else [*entry, note["group"]]


def rescored(note: Notification) -> Entry:
    """The entry of a cutover's notification (docs/generations.md): as of the cutover."""
    entry = [note["event_ts"], None, None, "rescore", [], note["score"],
             _STAGE_INDEX[note.get("stage", "prospect")], int(note["type"].endswith(".hot")),
             note["type"]]
    return entry if note.get("group") is None else [*entry, note["group"]]


def view(entry: Entry) -> dict[str, Any]:
    """An entry as the API shows it (``group``: the group a cooling or rescore is of;
    ``groups``: the notifications an event caused for groups; each only when there is
    one)."""
    at, ts, event_id, event_type, awards, score, stage, hot, note = entry[:9]
    shown = {
        "at": at if isinstance(at, str) else format_ts(at),
        "event_ts": None if ts is None else format_ts(ts),
        "event_id": event_id,
        "event_type": event_type,
        "awards": [{"rule": award[0], "points": award[1]} if len(award) == 2 else
                   {"rule": award[0], "points": award[1], "group": award[2]}
                   for award in awards],
        "score": score,
        "stage": STAGES[stage],
        "hot": bool(hot),
        "notification": note,
    }
    if len(entry) > 9:
        extra = entry[9]
        if isinstance(extra, str):
            shown["group"] = extra
        else:
            shown["groups"] = [{"group": group, "notification": kind} for group, kind in extra]
    return shown
