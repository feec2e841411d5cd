"""The stored form of a lead's state (scoring.store.record): exact round trips, old data
still readable, unknown formats refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import DAY, T0, ev, run

from scoring.engine import LeadState
from scoring.errors import LeadscoreError
from scoring.rules import load_rules
from scoring.store import record

DEFAULT = load_rules(Path(__file__).resolve().parent.parent / "config" / "rules.yaml")


def busy_lead() -> LeadState:
    """A lead with every part of the state filled: profile, counts, limit windows,
    contributions, a stage, the hot flag, notifications."""
    state, notes = run([ev("p", "profile_update", T0, job_title="CEO", company_size=500),
                        *[ev(f"v{i}", "page_view", T0 + i, url="/pricing") for i in range(6)],
                        ev("w", "workshop_attended", T0 + 10),
                        ev("c", "consultation_requested", T0 + DAY)], DEFAULT)
    assert state.windows and state.counts and state.hot and notes  # (what makes it busy)
    return state


def test_a_state_round_trips_exactly_with_its_offsets_write_time_and_version() -> None:
    state = busy_lead()
    seen = dict(state.seen)
    raw = record.encode(state, {"3": 1_234_567}, T0 + 2 * DAY, 17)
    assert record.decode(raw, seen) == (state, {"3": 1_234_567}, T0 + 2 * DAY, 17)
    assert raw.startswith(b"[1,17,") and b"seen" not in raw


def test_a_record_of_an_unknown_format_is_refused_with_what_to_do() -> None:
    raw = record.encode(busy_lead(), {}, T0, 1).replace(b"[1,", b"[2,", 1)
    with pytest.raises(LeadscoreError, match="format 2, which this version cannot read"):
        record.decode(raw, {})


@pytest.mark.parametrize("field, value", [("engagement", float("nan")),
                                          ("engagement", float("inf")),
                                          ("fit", float("-inf"))])
def test_a_number_that_is_not_finite_is_never_stored(field: str, value: float) -> None:
    """orjson writes NaN and infinities as null: such a record could not be read back."""
    state = busy_lead()
    setattr(state, field, value)
    with pytest.raises(LeadscoreError, match="is not a finite number; not stored"):
        record.encode(state, {}, T0, 1)
    state = busy_lead()
    state.contributions["pricing-page"] = float("nan")
    with pytest.raises(LeadscoreError, match=f"lead {state.lead_id!r}: its engagement"):
        record.encode(state, {}, T0, 1)
