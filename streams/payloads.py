"""What ``leadscore notify`` sends: a request's body and headers, per destination type.

- ``webhook``: the notification's bytes exactly as they are on the topic, signed:
  ``X-Leadscore-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>``.
- ``slack``: ``{"text": ...}``, one message a person reads at a glance (who, score,
  stage, the top reasons, a link to the lead on the dashboard).

Both carry ``X-Leadscore-Notification-Id``, so that a receiver can drop a repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import string
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from streams.destinations import Destination

__all__ = ["header_value", "request", "sign", "slack_text"]

USER_AGENT = "leadscore-notify/0.1"
_HEADER_SAFE = "".join(sorted(set(string.printable) - set(string.whitespace) - {"%"})) + " "
MAX_REASONS = 3  # in a Slack message


def request(destination: Destination, value: bytes, note: Mapping[str, Any],
            dashboard_url: str | None) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a notification's request to ``destination``."""
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               "X-Leadscore-Notification-Id": header_value(str(note["notification_id"]))}
    if destination.type == "slack":
        return orjson.dumps({"text": slack_text(note, dashboard_url)}), headers
    assert destination.secret is not None  # a webhook has one (streams.destinations)
    headers["X-Leadscore-Signature"] = sign(destination.secret.get_secret_value(), value)
    return value, headers


def sign(secret: bytes, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the body with the secret>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def header_value(text: str) -> str:
    """Text as a header may carry it: printable ASCII as is, anything else (and ``%``)
    percent-encoded as UTF-8. Ids are any string; a header cannot hold a newline."""
    return quote(text, safe=_HEADER_SAFE)


def slack_text(note: Mapping[str, Any], dashboard_url: str | None) -> str:
    """One readable message, in Slack's mrkdwn:

        :fire: Lead *lead-42* is hot: score 72.5 (hot at 70), stage sql
        Why: pricing-page +44.1, decision-maker +20
        <https://leadscore.example.com/#lead=lead-42|Open lead-42 on the dashboard>
    """
    kind = str(note.get("type", ""))
    account = kind.startswith("account.")
    who = str(note.get("account_id") if account else note.get("lead_id"))
    event = kind.split(".", 1)[-1]
    icon, verb = {"hot": (":fire:", "is hot"), "cooled": (":snowflake:", "cooled")}.get(
        event, (":bell:", _escape(kind)))
    group = note.get("group")
    line = (f"{icon} {'Account' if account else 'Lead'} *{_escape(who)}* {verb}"
            f"{f' for {_escape(str(group))}' if group else ''}: score {_number(note.get('score'))}"
            f" ({'hot at' if event == 'hot' else 'threshold'} {_number(note.get('threshold'))})")
    if not account and note.get("stage"):
        line += f", stage {_escape(str(note['stage']))}"
    lines = [line]
    reasons = _parts(note.get("reasons"), "rule")
    if reasons:
        lines.append(f"Why: {reasons}")
    members = _parts(note.get("leads"), "lead_id")
    if account and members:
        lines.append(f"Leads: {members}")
    if dashboard_url and not account:
        link = f"{dashboard_url.rstrip('/')}/#lead={quote(who, safe='')}"
        lines.append(f"<{link}|Open {_escape(who).replace('|', '¦')} on the dashboard>")
    return "\n".join(lines)


def _parts(items: object, name: str) -> str:
    """``rule +points`` for the first few of a notification's reasons (or members)."""
    if not isinstance(items, list):
        return ""
    shown = [f"{_escape(str(item.get(name)))} {_number(item.get('points'), sign=True)}"
             for item in items[:MAX_REASONS] if isinstance(item, dict)]
    return ", ".join(shown)


def _number(value: object, sign: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "?"
    return f"{value:+g}" if sign else f"{value:g}"


def _escape(text: str) -> str:
    """Slack's three control characters, escaped as its API asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
