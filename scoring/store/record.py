"""A lead's state key in Redis: one compact JSON array.

Positional rather than an object: it is decoded and encoded once per lead per batch
on the hot path, and an array is much smaller and cheaper to handle than the same
data with field names (docs/performance.md). It stays JSON, so ``redis-cli GET`` is
readable:

    [1, version, lead_id, T, E, F, contributions, profile, stage index, hot (0/1),
     counts, windows {rule: {window: used}}, notified, offsets {partition: offset},
     updated_at(, the score groups hot for the lead, when there are any: SPEC 10)
     (, an account's members' shares {lead_id: share}, a lead's awards made per account
      {account_id: n}, an account's awards applied per member {lead_id: [n, ...]}: each
      with those after it, when there are any: SPEC 11)]

The leading 1 is the format. The version counts the lead's writes: the store's
COMMIT script reads it from the front (``[1,<version>,``) to refuse a write based on
a state that has changed since (scoring.store.commit). The event ids a lead has applied
are not here but in their own sorted set (scoring.store.keys).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import orjson

from scoring.engine import STAGES, LeadState
from scoring.errors import StoreError

FORMAT = 1
_STAGE_INDEX = {stage: i for i, stage in enumerate(STAGES)}


class Record(NamedTuple):
    state: LeadState
    offsets: dict[str, int]  # partition -> last offset applied to the lead
    updated_at: int  # wall ms of the last write
    version: int  # writes so far


def encode(state: LeadState, offsets: dict[str, int], updated_at: int, version: int) -> bytes:
    """The record of ``state`` (its ``seen`` left out). A number that is not finite is
    refused: orjson would write it as null, and the state could not be read back."""
    # One sum covers them all: NaN or an infinity anywhere makes it non-finite.
    if not math.isfinite(state.engagement + state.fit + sum(state.contributions.values())
                         + (sum(state.members.values()) if state.members else 0.0)):
        raise StoreError(f"lead {state.lead_id!r}: its engagement, fit or a rule's "
                         "contribution is not a finite number; not stored")
    windows = {rule: {str(w): used for w, used in ws.items()}
               for rule, ws in state.windows.items()} if state.windows else {}
    fields = [
        FORMAT, version, state.lead_id, state.t_ref, state.engagement, state.fit,
        state.contributions, state.profile, _STAGE_INDEX[state.stage], int(state.hot),
        state.counts, windows, state.notified, offsets, updated_at]
    # Optional trailing fields: each written, with those before it, when it or one after
    # it is not empty; an old reader's state (groups only) stays as it was.
    tail = [state.groups_hot, state.members, state.awarded, state.awards_seen]
    while tail and not tail[-1]:
        tail.pop()
    fields += tail
    return orjson.dumps(fields)


def decode(raw: bytes | str, seen: dict[str, int]) -> Record:
    """A record read back; ``seen`` becomes the state's ids."""
    doc = orjson.loads(raw)
    if not isinstance(doc, list) or doc[0] != FORMAT:
        found = doc[0] if isinstance(doc, list) else "object"
        raise StoreError(f"lead state in format {found!r}, which this version cannot "
                         f"read (it reads format {FORMAT}): was it written by a newer "
                         "Leadscore?")
    (_, version, lead_id, t_ref, engagement, fit, contributions, profile, stage, hot, counts,
     windows, notified, offsets, updated_at) = doc[:15]
    groups_hot = doc[15] if len(doc) > 15 else []
    members = doc[16] if len(doc) > 16 else {}
    awarded = doc[17] if len(doc) > 17 else {}
    awards_seen = doc[18] if len(doc) > 18 else {}
    if windows:
        windows = {rule: {int(w): used for w, used in ws.items()}
                   for rule, ws in windows.items()}
    return Record(LeadState(lead_id, t_ref, engagement, fit, contributions, profile,
                            STAGES[stage], bool(hot), counts, windows, seen, notified,
                            groups_hot, members, awarded, awards_seen),
                  offsets, updated_at, version)
