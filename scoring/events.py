"""Input events (the README's "Command line" shows one): parsing and validation of
one message, and time formatting.

``parse_event`` turns the raw bytes of a message into an ``Event`` or raises
``EventError`` whose ``reason`` is the one line that goes to the dead-letter topic.
Times are integer epoch milliseconds everywhere inside Leadscore.

What one event can be refused for on its own is refused here, at the door (what
depends on the lead, such as the bound of its profile, is refused by the engine):
times lie in years 1970-9999 (so that
``format_ts`` and every consumer of RFC 3339 can show them), ``properties`` nest
at most ``MAX_DEPTH`` levels (orjson decodes 1,024 but encodes only 254, and the
state that stores them must be encodable), and with ``latest_ms`` nothing dated
ahead of the caller's clock plus the allowed skew is accepted (one event from
year 9999 would make every later real event "late" and worth nothing).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from scoring.errors import EventError

MAX_EVENT_BYTES = 64 * 1024
PROFILE_UPDATE = "profile_update"
CONVERTED = "converted"
ACCOUNT_UPDATE = "account_update"  # merges into an account's profile (SPEC 11)
# The type of the award a lead event makes to its account (scoring.accounts): internal,
# so refused on an account event from outside.
MEMBER_AWARD = "member_award"

MAX_ID_LENGTH = 200
_LIMITS = {"event_id": MAX_ID_LENGTH, "lead_id": MAX_ID_LENGTH, "account_id": MAX_ID_LENGTH,
           "type": 100}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

MIN_TS_MS = 0  # 1970-01-01T00:00:00Z
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant datetime can show
_TS_RANGE = "1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"
# How deep `properties` may nest: the properties object is level 1, an object or
# array inside it level 2, and so on.
MAX_DEPTH = 32
_CONTAINERS = frozenset((dict, list))  # the types orjson decodes that can nest


@dataclass(slots=True)
class Event:
    """One event about one lead, or (``account``) about one account (SPEC 11): then
    ``lead_id`` holds the account's id, the id of the state the event is applied to."""

    event_id: str
    lead_id: str
    type: str
    ts: int  # event time, epoch milliseconds
    properties: dict[str, Any]
    account: bool = False


def parse_event(raw: bytes, max_bytes: int = MAX_EVENT_BYTES, *,
                latest_ms: int | None = None) -> Event:
    """Decode and validate one message; raise ``EventError`` saying what is wrong.

    ``latest_ms`` is the latest event time accepted (the caller's clock plus the
    allowed clock skew); ``None`` skips that check.
    """
    if len(raw) > max_bytes:
        raise EventError(f"event is {len(raw)} bytes, larger than max_event_bytes ({max_bytes})",
                         "too_large")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                         "not_json") from None
    return _event(doc, latest_ms)


def event_from_dict(doc: object, *, latest_ms: int | None = None) -> Event:
    """Validate an already decoded JSON value as an event (``latest_ms`` as in
    ``parse_event``)."""
    return _event(doc, latest_ms)


def _event(doc: object, latest_ms: int | None) -> Event:
    # Fast path for the common, well-formed event; anything unusual takes the slow
    # path below, which finds and explains the problem. It runs for every event.
    if type(doc) is dict:
        event_id, lead_id, kind, ts = (doc.get("event_id"), doc.get("lead_id"),
                                       doc.get("type"), doc.get("ts"))
        properties = doc.get("properties")
        if (type(event_id) is str and type(lead_id) is str and type(kind) is str
                and 0 < len(event_id) <= 200 and 0 < len(lead_id) <= 200
                and 0 < len(kind) <= 100 and kind != ACCOUNT_UPDATE
                and ts is not None and (type(properties) is dict or properties is None)
                and "account_id" not in doc):
            if type(ts) is not int or not 0 <= ts <= 253_402_300_799_999:  # MIN/MAX_TS_MS
                ts = parse_ts(ts)
            if latest_ms is not None and ts > latest_ms:
                raise _ahead(ts, latest_ms)
            if properties:
                # A flat dict of scalars costs one pass; only nested values are walked.
                for value in properties.values():
                    if type(value) in _CONTAINERS:
                        check_depth(properties)
                        break
                return Event(event_id, lead_id, kind, ts, properties)
            return Event(event_id, lead_id, kind, ts, {})
    return _explain(doc, latest_ms)


def _explain(doc: object, latest_ms: int | None) -> Event:
    if not isinstance(doc, dict):
        raise EventError(f"event must be a JSON object, got {_json_type(doc)}", "not_object")
    account = "account_id" in doc
    if account and "lead_id" in doc:
        raise EventError("event has both lead_id and account_id; an event is about a lead "
                         "or about an account (SPEC 11), not both", "both_ids")
    ids = [_text(doc, name) for name in ("event_id", "account_id" if account else "lead_id",
                                         "type")]
    if account and ids[2] in (PROFILE_UPDATE, CONVERTED, MEMBER_AWARD):
        hint = "use account_update to change an account's profile" \
            if ids[2] == PROFILE_UPDATE else "it is a lead's type, not an account's"
        raise EventError(f'type "{ids[2]}" is reserved: {hint}', "reserved_type")
    if not account and ids[2] == ACCOUNT_UPDATE:
        raise EventError('type "account_update" is for events about an account: send it '
                         "with account_id instead of lead_id", "reserved_type")
    if "ts" not in doc:
        raise EventError("missing field ts", "missing_field")
    properties = doc.get("properties")
    if properties is None:
        properties = {}
    elif not isinstance(properties, dict):
        raise EventError(f"properties must be an object, got {_json_type(properties)}",
                         "wrong_type")
    ts = parse_ts(doc["ts"])
    if latest_ms is not None and ts > latest_ms:
        raise _ahead(ts, latest_ms)
    check_depth(properties)
    return Event(ids[0], ids[1], ids[2], ts, properties, account)


def _ahead(ts: int, latest_ms: int) -> EventError:
    """The refusal of an event dated after the latest time accepted."""
    return EventError(f"ts {format_ts(ts)} is {_span(ts - latest_ms)} ahead of the latest event "
                      f"time accepted, {format_ts(latest_ms)} (the clock plus the allowed "
                      "clock skew)", "future_ts")


def check_depth(properties: dict[str, Any]) -> None:
    """Refuse properties nested deeper than MAX_DEPTH, naming their depth.

    Iterative, so that no nesting orjson decodes can hit Python's recursion limit.
    """
    deepest = 1
    stack: list[tuple[Any, int]] = [(properties, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > deepest:
            deepest = depth
        for value in container.values() if isinstance(container, dict) else container:
            if isinstance(value, dict | list | tuple):
                stack.append((value, depth + 1))
    if deepest > MAX_DEPTH:
        raise EventError(f"properties are nested {deepest} levels deep, more than {MAX_DEPTH}",
                         "too_deep")


def _text(doc: dict[str, Any], name: str) -> str:
    if name not in doc:
        raise EventError(f"missing field {name}", "missing_field")
    value = doc[name]
    if not isinstance(value, str):
        raise EventError(f"{name} must be a string, got {_json_type(value)}", "wrong_type")
    if not value:
        raise EventError(f"{name} must not be empty", "empty_field")
    if len(value) > _LIMITS[name]:
        raise EventError(f"{name} is {len(value)} characters, more than {_LIMITS[name]}",
                         "too_long")
    return value


def parse_ts(value: object) -> int:
    """RFC 3339 with an offset, or integer epoch milliseconds -> epoch milliseconds.

    Only instants from MIN_TS_MS to MAX_TS_MS (years 1970-9999 in UTC) are accepted.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if MIN_TS_MS <= value <= MAX_TS_MS:
            return value
        shown = str(value) if value.bit_length() <= 64 else f"(a {value.bit_length()}-bit integer)"
        raise EventError(f"ts {shown} is outside the accepted range, {MIN_TS_MS} to "
                         f"{MAX_TS_MS} epoch milliseconds ({_TS_RANGE})", "bad_ts")
    if not isinstance(value, str):
        raise EventError("ts must be an RFC 3339 string or integer epoch milliseconds, "
                         f"got {_json_type(value)}", "bad_ts")
    # fromisoformat also takes forms RFC 3339 forbids (dates alone, no offset): refuse those.
    moment = None
    if len(value) >= 19 and value[10] in "Tt ":
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            with contextlib.suppress(ValueError):  # RFC 3339 also allows "t" and "z"
                moment = datetime.fromisoformat(value.upper())
    if moment is None:
        raise EventError(f'ts "{_clip(value)}" is not an RFC 3339 time '
                         '(e.g. 2026-11-22T14:00:00Z)', "bad_ts")
    if moment.tzinfo is None:
        raise EventError(f'ts "{_clip(value)}" has no UTC offset (add Z or +01:00)', "bad_ts")
    ms = (moment - _EPOCH) // _MS  # aware datetimes subtract in UTC, whatever the offset
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise EventError(f'ts "{_clip(value)}" is outside the accepted range, {_TS_RANGE} '
                         "(compared in UTC)", "bad_ts")
    return ms


def format_ts(ms: int) -> str:
    """Epoch milliseconds -> RFC 3339 UTC, with milliseconds only when there are any.

    Never raises: every time ``parse_ts`` accepts is shown exactly. A derived instant
    outside that range (a cooling crossing time rounded past the last accepted
    millisecond) is shown as the nearest bound, which datetime can represent and
    ``parse_ts`` reads back.
    """
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        ms = MIN_TS_MS if ms < MIN_TS_MS else MAX_TS_MS
    moment = _EPOCH + ms * _MS
    if ms % 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(ms: int) -> str:
    """A positive duration in milliseconds for a person: "450 ms", "2.5 h", "3.1 years"."""
    for unit, size in (("years", 31_557_600_000), ("days", 86_400_000), ("h", 3_600_000),
                       ("min", 60_000), ("s", 1000)):
        if ms >= size:
            return f"{ms / size:.1f} {unit}"
    return f"{ms} ms"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."

