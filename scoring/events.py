"""Input events (SPEC 1): parsing and validation of one message, and time formatting.

``parse_event`` turns the raw bytes of a message into an ``Event`` or raises
``EventError`` whose ``reason`` is the one line that goes to the dead-letter topic.
Times are integer epoch milliseconds everywhere inside Leadscore.
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

MAX_ID_LENGTH = 200
_LIMITS = {"event_id": MAX_ID_LENGTH, "lead_id": MAX_ID_LENGTH, "type": 100}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(slots=True)
class Event:
    event_id: str
    lead_id: str
    type: str
    ts: int  # event time, epoch milliseconds
    properties: dict[str, Any]


def parse_event(raw: bytes, max_bytes: int = MAX_EVENT_BYTES) -> Event:
    """Decode and validate one message; raise ``EventError`` saying what is wrong."""
    if len(raw) > max_bytes:
        raise EventError(f"event is {len(raw)} bytes, larger than max_event_bytes ({max_bytes})",
                         "too_large")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                         "not_json") from None
    return event_from_dict(doc)


def event_from_dict(doc: object) -> Event:
    """Validate an already decoded JSON value as an event."""
    # Fast path for the common, well-formed event; anything unusual takes the slow
    # path below, which finds and explains the problem.
    if type(doc) is dict:
        event_id, lead_id, kind, ts = (doc.get("event_id"), doc.get("lead_id"),
                                       doc.get("type"), doc.get("ts"))
        properties = doc.get("properties")
        if (type(event_id) is str and type(lead_id) is str and type(kind) is str
                and 0 < len(event_id) <= 200 and 0 < len(lead_id) <= 200
                and 0 < len(kind) <= 100
                and ts is not None and (type(properties) is dict or properties is None)):
            return Event(event_id, lead_id, kind, ts if type(ts) is int else parse_ts(ts),
                         properties or {})
    return _explain(doc)


def _explain(doc: object) -> Event:
    if not isinstance(doc, dict):
        raise EventError(f"event must be a JSON object, got {_json_type(doc)}", "not_object")
    ids = [_text(doc, name) for name in ("event_id", "lead_id", "type")]
    if "ts" not in doc:
        raise EventError("missing field ts", "missing_field")
    properties = doc.get("properties")
    if properties is None:
        properties = {}
    elif not isinstance(properties, dict):
        raise EventError(f"properties must be an object, got {_json_type(properties)}",
                         "wrong_type")
    return Event(ids[0], ids[1], ids[2], parse_ts(doc["ts"]), properties)


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
    """RFC 3339 with an offset, or integer epoch milliseconds -> epoch milliseconds."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
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
    return (moment - _EPOCH) // _MS


def format_ts(ms: int) -> str:
    """Epoch milliseconds -> RFC 3339 UTC, with milliseconds only when there are any."""
    moment = _EPOCH + ms * _MS
    if ms % 1000:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


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

