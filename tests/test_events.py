"""Input events (SPEC 1): both timestamp forms, and one exact reason per rejection."""

from __future__ import annotations

import orjson
import pytest

from scoring.errors import EventError
from scoring.events import (
    MAX_DEPTH,
    MAX_TS_MS,
    MIN_TS_MS,
    Event,
    event_from_dict,
    format_ts,
    parse_event,
    parse_ts,
)

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


def deep(levels: int, lists: bool = True) -> str:
    """JSON text of a properties object nested ``levels`` deep (the object itself is
    level 1), alternating objects and arrays unless ``lists`` is False."""
    opening = ['{"a":' if i % 2 == 0 or not lists else "[" for i in range(levels)]
    closing = ["}" if o.startswith("{") else "]" for o in reversed(opening)]
    return "".join(opening) + "1" + "".join(closing)


def with_raw_properties(text: str, kind: str = "profile_update") -> bytes:
    return (b'{"event_id": "e-1", "lead_id": "lead-42", "type": "' + kind.encode()
            + b'", "ts": 1795356000000, "properties": ' + text.encode() + b"}")


@pytest.mark.parametrize("lists", [True, False])
def test_properties_may_nest_32_levels_and_no_deeper(lists: bool) -> None:
    event = parse_event(with_raw_properties(deep(MAX_DEPTH, lists)))
    orjson.dumps({"state": {"profile": event.properties}})  # storable, with room to spare
    with pytest.raises(EventError) as caught:
        parse_event(with_raw_properties(deep(MAX_DEPTH + 1, lists)))
    assert (caught.value.reason, caught.value.kind) == (
        "properties are nested 33 levels deep, more than 32", "too_deep")


def test_properties_500_levels_deep_are_refused_naming_their_depth() -> None:
    # orjson decodes this (it allows 1,024 levels) but could never encode a state with it
    # (254 levels): the worker could not store the lead.
    raw = with_raw_properties(deep(500, lists=False))
    assert len(raw) > 3000
    for kind in ("profile_update", "page_view"):
        with pytest.raises(EventError) as caught:
            parse_event(with_raw_properties(deep(500, lists=False), kind))
        assert (caught.value.reason, caught.value.kind) == (
            "properties are nested 500 levels deep, more than 32", "too_deep")


def test_depth_counts_the_deepest_branch_wherever_it_is() -> None:
    props = ('{"flat": 1, "x": "{[{[", "list": [1, [2, [3]]], "deep": '
             + deep(MAX_DEPTH) + ', "last": {}}')
    with pytest.raises(EventError) as caught:
        parse_event(with_raw_properties(props))
    assert caught.value.reason == "properties are nested 33 levels deep, more than 32"
    shallow = '{"x": "{[{[{[{[{[{[{[{[{[{[{[{[{[{[{[{[{[{[{[", "list": [1, [2, [3]]]}'
    assert parse_event(with_raw_properties(shallow)).properties["list"] == [1, [2, [3]]]


class Doc(dict[str, object]):
    """A dict that is not exactly a dict: takes the slow, explaining path."""


def test_the_slow_path_checks_the_depth_and_the_clock_too() -> None:
    doc = orjson.loads(with_raw_properties(deep(MAX_DEPTH + 1)))
    with pytest.raises(EventError) as caught:
        event_from_dict(Doc(doc))
    assert caught.value.kind == "too_deep"
    with pytest.raises(EventError) as caught:
        event_from_dict(Doc(GOOD), latest_ms=1_795_356_000_000 - 1)
    assert caught.value.kind == "future_ts"
    assert event_from_dict(Doc(GOOD), latest_ms=1_795_356_000_000).ts == 1_795_356_000_000


@pytest.mark.parametrize(("ts", "ms"), [
    (0, 0),
    (MAX_TS_MS, 253_402_300_799_999),
    ("1970-01-01T00:00:00Z", 0),
    ("1970-01-01T01:00:00+01:00", 0),
    ("1969-12-31T23:00:00-01:00", 0),
    ("9999-12-31T23:59:59.999Z", MAX_TS_MS),
    ("9999-12-31T23:59:59.999+00:00", MAX_TS_MS),
    ("9999-12-31T23:59:59.999+01:00", MAX_TS_MS - 3_600_000),
])
def test_times_from_1970_to_9999_are_accepted_in_both_forms(ts: object, ms: int) -> None:
    assert parse_ts(ts) == ms
    assert parse_event(with_(ts=ts)).ts == ms


INT_RANGE = ("is outside the accepted range, 0 to 253402300799999 epoch milliseconds "
             "(1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z)")
STR_RANGE = ("is outside the accepted range, 1970-01-01T00:00:00Z to "
             "9999-12-31T23:59:59.999Z (compared in UTC)")


@pytest.mark.parametrize(("ts", "reason"), [
    (-1, f"ts -1 {INT_RANGE}"),
    (MAX_TS_MS + 1, f"ts 253402300800000 {INT_RANGE}"),
    (10**15, f"ts 1000000000000000 {INT_RANGE}"),
    (2**64 - 1, f"ts 18446744073709551615 {INT_RANGE}"),
    ("9999-12-31T23:59:59-01:00", f'ts "9999-12-31T23:59:59-01:00" {STR_RANGE}'),
    ("1969-12-31T23:59:59.999Z", f'ts "1969-12-31T23:59:59.999Z" {STR_RANGE}'),
    ("1970-01-01T00:59:59+01:00", f'ts "1970-01-01T00:59:59+01:00" {STR_RANGE}'),
    ("0001-01-01T00:00:00Z", f'ts "0001-01-01T00:00:00Z" {STR_RANGE}'),
])
def test_times_outside_1970_to_9999_are_refused_saying_the_range(ts: object,
                                                                 reason: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(with_(ts=ts))
    assert (caught.value.reason, caught.value.kind) == (reason, "bad_ts")


def test_an_integer_too_large_to_show_is_refused_without_showing_it() -> None:
    with pytest.raises(EventError) as caught:
        parse_ts(10**5000)
    assert caught.value.reason == f"ts (a 16610-bit integer) {INT_RANGE}"


def test_format_ts_never_raises_and_round_trips_over_the_whole_range() -> None:
    step = MAX_TS_MS // 20_011  # a prime count of steps: every field takes many values
    walk = [*range(MIN_TS_MS, MAX_TS_MS, step), 1, 999, 1000, MAX_TS_MS - 1000,
            MAX_TS_MS - 1, MAX_TS_MS]
    for ms in walk:
        assert parse_ts(format_ts(ms)) == ms, ms
    assert format_ts(MIN_TS_MS) == "1970-01-01T00:00:00Z"
    assert format_ts(MAX_TS_MS) == "9999-12-31T23:59:59.999Z"


def test_format_ts_shows_an_instant_beyond_the_range_as_the_nearest_bound() -> None:
    assert format_ts(MAX_TS_MS + 1) == format_ts(10**18) == "9999-12-31T23:59:59.999Z"
    assert format_ts(-1) == format_ts(-(10**18)) == "1970-01-01T00:00:00Z"


NOW = 1_796_032_800_000  # 2026-11-30T10:00:00Z
AHEAD = "ahead of the latest event time accepted"


@pytest.mark.parametrize(("ts", "reason"), [
    (NOW + 1, f"ts 2026-11-30T10:00:00.001Z is 1 ms {AHEAD}, 2026-11-30T10:00:00Z "
              "(the clock plus the allowed clock skew)"),
    ("2026-11-30T11:30:00+01:00",
     f"ts 2026-11-30T10:30:00Z is 30.0 min {AHEAD}, 2026-11-30T10:00:00Z "
     "(the clock plus the allowed clock skew)"),
    ("2030-01-01T00:00:00Z", f"ts 2030-01-01T00:00:00Z is 3.1 years {AHEAD}, "
                             "2026-11-30T10:00:00Z (the clock plus the allowed clock skew)"),
    (MAX_TS_MS, f"ts 9999-12-31T23:59:59.999Z is 7972.9 years {AHEAD}, 2026-11-30T10:00:00Z "
                "(the clock plus the allowed clock skew)"),
])
def test_an_event_dated_after_latest_ms_is_refused(ts: object, reason: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(with_(ts=ts), latest_ms=NOW)
    assert (caught.value.reason, caught.value.kind) == (reason, "future_ts")


def test_latest_ms_itself_is_accepted_and_none_means_no_limit() -> None:
    assert parse_event(with_(ts=NOW), latest_ms=NOW).ts == NOW
    assert parse_event(with_(ts="2026-11-30T10:00:00Z"), latest_ms=NOW).ts == NOW
    assert parse_event(with_(ts=MAX_TS_MS)).ts == MAX_TS_MS
    assert event_from_dict({**GOOD, "ts": MAX_TS_MS}).ts == MAX_TS_MS


@pytest.mark.parametrize(("ahead_ms", "shown"), [
    (1, "1 ms"), (999, "999 ms"), (1500, "1.5 s"), (150_000, "2.5 min"),
    (3 * 3_600_000, "3.0 h"), (12 * 86_400_000 + 43_200_000, "12.5 days"),
    (31_557_600_000, "1.0 years"),
])
def test_how_far_ahead_is_said_in_a_readable_unit(ahead_ms: int, shown: str) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(with_(ts=NOW + ahead_ms), latest_ms=NOW)
    assert f" is {shown} ahead " in caught.value.reason
