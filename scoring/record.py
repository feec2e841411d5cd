"""A lead's state key in Redis: one compact JSON array.

Positional rather than an object: it is decoded and encoded once per lead per batch
on the hot path, and an array is ~40% fewer bytes in Redis and ~2 us cheaper per lead
than the same data with field names. It stays JSON, so ``redis-cli GET`` is readable:

    [1, lead_id, T, E, F, contributions, profile, stage index, hot (0/1), counts,
     windows {rule: {window: used}}, notified, offsets {partition: offset}, updated_at]

The leading 1 is the format. The event ids a lead has applied are not here but in
their own sorted set (``scoring.keys``). An object (the format before this one) is
still read, so that data written by an earlier version needs no migration.
"""

from __future__ import annotations

import orjson

from scoring.engine import STAGES, LeadState
from scoring.errors import LeadscoreError

FORMAT = 1
_STAGE_INDEX = {stage: i for i, stage in enumerate(STAGES)}


def encode(state: LeadState, offsets: dict[str, int], updated_at: int) -> bytes:
    """The record of ``state`` (its ``seen`` left out), as last written at ``updated_at``
    (wall ms) after applying up to ``offsets`` of the source topic."""
    windows = {rule: {str(w): used for w, used in ws.items()}
               for rule, ws in state.windows.items()} if state.windows else {}
    return orjson.dumps([
        FORMAT, state.lead_id, state.t_ref, state.engagement, state.fit, state.contributions,
        state.profile, _STAGE_INDEX[state.stage], int(state.hot), state.counts, windows,
        state.notified, offsets, updated_at])


def decode(raw: bytes | str, seen: dict[str, int]) -> tuple[LeadState, dict[str, int], int]:
    """(state, offsets, updated_at) from a record; ``seen`` becomes the state's ids."""
    doc = orjson.loads(raw)
    if isinstance(doc, dict):  # written before this format
        doc["seen"] = seen
        return LeadState.from_dict(doc), doc["offsets"], doc["updated_at"]
    if doc[0] != FORMAT:
        raise LeadscoreError(f"lead state in format {doc[0]!r}, which this version cannot "
                             f"read (it reads format {FORMAT}): was it written by a newer "
                             "Leadscore?")
    (_, lead_id, t_ref, engagement, fit, contributions, profile, stage, hot, counts, windows,
     notified, offsets, updated_at) = doc
    if windows:
        windows = {rule: {int(w): used for w, used in ws.items()}
                   for rule, ws in windows.items()}
    return (LeadState(lead_id, t_ref, engagement, fit, contributions, profile, STAGES[stage],
                      bool(hot), counts, windows, seen, notified), offsets, updated_at)
