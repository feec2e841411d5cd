"""Input events (SPEC 1): both timestamp forms, and one exact reason per rejection."""

from __future__ import annotations

import orjson
import pytest

from scoring.errors import EventError
from scoring.events import Event, format_ts, parse_event, parse_ts

GOOD = {"event_id": "e-1", "lead_id": "lead-42", "type": "page_view",
        "ts": "2026-11-22T14:00:00Z", "properties": {"url": "/pricing"}}


def with_(**changes: object) -> bytes:
    doc = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in doc.items() if v is not DROP})


DROP = object()


def test_a_good_event() -> None:
    assert parse_event(with_()) == Event("e-1", "lead-42", "page_view", 1_795_356_000_000,
                                         {"url": "/pricing"})


@pytest.mark.parametrize(("ts", "ms"), [
    ("2026-11-22T14:00:00Z", 1_795_356_000_000),
    ("2026-11-22T15:30:00+01:30", 1_795_356_000_000),
    ("2026-11-22T09:00:00-05:00", 1_795_356_000_000),
    ("2026-11-22T14:00:00.250Z", 1_795_356_000_250),
    ("2026-11-22t14:00:00z", 1_795_356_000_000),
    (1_795_356_000_123, 1_795_356_000_123),
])
def test_timestamps_in_both_forms(ts: object, ms: int) -> None:
    assert parse_ts(ts) == ms


def test_properties_are_optional() -> None:
    assert parse_event(with_(properties=DROP)).properties == {}
    assert parse_event(with_(properties=None)).properties == {}


@pytest.mark.parametrize(("raw", "reason", "kind"), [
    (b"[1, 2]", "event must be a JSON object, got array", "not_object"),
    (with_(event_id=DROP), "missing field event_id", "missing_field"),
    (with_(ts=DROP), "missing field ts", "missing_field"),
    (with_(lead_id=42), "lead_id must be a string, got number", "wrong_type"),
    (with_(type=None), "type must be a string, got null", "wrong_type"),
    (with_(properties=[1]), "properties must be an object, got array", "wrong_type"),
    (with_(event_id=""), "event_id must not be empty", "empty_field"),
    (with_(lead_id="x" * 201), "lead_id is 201 characters, more than 200", "too_long"),
    (with_(type="t" * 101), "type is 101 characters, more than 100", "too_long"),
    (with_(ts="yesterday"),
     'ts "yesterday" is not an RFC 3339 time (e.g. 2026-11-22T14:00:00Z)', "bad_ts"),
    (with_(ts="2026-11-22"),
     'ts "2026-11-22" is not an RFC 3339 time (e.g. 2026-11-22T14:00:00Z)', "bad_ts"),
    (with_(ts="2026-11-22T14:00:00"),
     'ts "2026-11-22T14:00:00" has no UTC offset (add Z or +01:00)', "bad_ts"),
    (with_(ts="2026-13-22T14:00:00Z"),
     'ts "2026-13-22T14:00:00Z" is not an RFC 3339 time (e.g. 2026-11-22T14:00:00Z)',
     "bad_ts"),
    (with_(ts=1.5), "ts must be an RFC 3339 string or integer epoch milliseconds, got number",
     "bad_ts"),
    (with_(ts=True),
     "ts must be an RFC 3339 string or integer epoch milliseconds, got boolean", "bad_ts"),
])
def test_each_rejection_says_what_is_wrong(raw: bytes, reason: str, kind: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(raw)
    assert (caught.value.reason, caught.value.kind) == (reason, kind)


def test_invalid_json_is_refused_with_its_position() -> None:
    with pytest.raises(EventError) as caught:
        parse_event(b'{"event_id": "e-1",\n  oops}')
    assert caught.value.kind == "not_json"
    assert caught.value.reason.startswith("not valid JSON at line 2 column 3: ")


def test_an_oversized_event_is_refused_before_decoding() -> None:
    raw = with_(properties={"blob": "x" * 70_000})
    with pytest.raises(EventError) as caught:
        parse_event(raw)
    assert caught.value.reason == f"event is {len(raw)} bytes, larger than max_event_bytes (65536)"
    assert parse_event(raw, max_bytes=len(raw)).event_id == "e-1"


def test_format_ts_shows_milliseconds_only_when_there_are_any() -> None:
    assert format_ts(1_795_356_000_000) == "2026-11-22T14:00:00Z"
    assert format_ts(1_795_356_000_012) == "2026-11-22T14:00:00.012Z"
