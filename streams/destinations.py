"""The destinations file of ``leadscore notify`` (README.md, "Delivering notifications to
people"): a pydantic schema for its shape, compiled into ``Destination``s.

Loading never stops at the first problem, as for the rules file (``scoring.rules``):
YAML problems, schema problems and cross-field checks (one of ``url`` and ``url_file``,
a webhook's secret, files that cannot be read, a filter that lets nothing through) are
collected and raised together as one ``DestinationsError``, each with its location,
e.g. ``destinations[1].url_file: cannot read /run/secrets/slack (No such file or
directory)``. No problem shows a URL or a secret: a Slack webhook URL is a credential.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretBytes,
    SecretStr,
    StrictBool,
    StrictInt,
    ValidationError,
)
from pydantic_core import PydanticCustomError
from yarl import URL

from scoring.conditions import show
from scoring.engine import STAGES
from scoring.errors import DestinationsError
from scoring.rules import Number
from scoring.rules import _load_yaml as load_yaml  # the rules file's safe YAML, traps disarmed

__all__ = ["TYPES", "Destination", "Filter", "Retry", "load_destinations",
           "parse_destinations"]

MAX_FILE_BYTES = 1024 * 1024
TYPES = ("lead.hot", "lead.cooled", "account.hot", "account.cooled")  # SPEC 4 and 11
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a metric label and a Redis key part
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
NOT_SHOWN = "(not shown: it may be a credential)"

# ---------------------------------------------------------------- value types


def _seconds(value: object) -> float:
    """``250ms``, ``1s``, ``5m``, ``1h`` or a number of seconds -> seconds."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is not None:
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise PydanticCustomError("duration", "{shown} is not a duration (use 250ms, 1s, 5m, 1h or "
                              "a number of seconds)", {"shown": show(value)})


def _names(allowed: tuple[str, ...], what: str) -> Any:
    def check(value: object) -> object:
        if not isinstance(value, list) or not value:
            raise PydanticCustomError("list", "expected a non-empty list of {what}, got {shown}",
                                      {"what": what, "shown": show(value)})
        for item in value:
            if item not in allowed:
                close = difflib.get_close_matches(str(item), allowed, n=1)
                hint = f'did you mean "{close[0]}"?' if close else f"use {', '.join(allowed)}"
                raise PydanticCustomError("name", "{shown} is not one of the {what} ({hint})",
                                          {"shown": show(item), "what": what, "hint": hint})
        return value
    return BeforeValidator(check)


def _groups(value: object) -> object:
    if not isinstance(value, list) or not value or not all(
            g is None or (isinstance(g, str) and g) for g in value):
        raise PydanticCustomError("groups", "expected a non-empty list of group ids, null "
                                  "meaning the lead's own score, got {shown}",
                                  {"shown": show(value)})
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]

# ---------------------------------------------------------------- the schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrySpec(_Strict):
    attempts: StrictInt = Field(8, ge=1, le=100)
    backoff: Seconds = Field(1.0, gt=0, le=86_400)
    max_backoff: Seconds = Field(300.0, gt=0, le=86_400)


class FilterSpec(_Strict):
    types: Annotated[list[str], _names(TYPES, "notification types")] | None = None
    min_score: Number | None = None
    stages: Annotated[list[str], _names(STAGES, "stages")] | None = None
    groups: Annotated[list[str | None], BeforeValidator(_groups)] | None = None
    accounts: StrictBool | None = None


class TlsSpec(_Strict):
    verify: StrictBool = True
    ca_file: Path | None = None


class DestinationSpec(_Strict):
    id: str
    type: Literal["webhook", "slack"]
    url: str | None = None
    url_file: Path | None = None
    secret_file: Path | None = None
    secret_env: str | None = None
    filter: FilterSpec = FilterSpec()
    retry: RetrySpec | None = None  # default: the file's
    concurrency: StrictInt = Field(4, ge=1, le=256)
    timeout: Seconds = Field(10.0, gt=0, le=600)
    tls: TlsSpec = TlsSpec()


class DestinationsSpec(_Strict):
    destinations: list[DestinationSpec] = Field(min_length=1)
    retry: RetrySpec = RetrySpec()


_MODEL_AT: dict[str, type[BaseModel]] = {
    "": DestinationsSpec, "destinations": DestinationSpec, "retry": RetrySpec,
    "destinations.retry": RetrySpec, "destinations.filter": FilterSpec,
    "destinations.tls": TlsSpec}

# ---------------------------------------------------------------- compiled


@dataclass(frozen=True, slots=True)
class Filter:
    """Which notifications a destination wants; an absent key does not filter.
    ``stages`` and ``groups`` concern leads: accounts' notifications have neither, and
    are chosen by ``types`` and ``accounts``."""

    types: frozenset[str] | None = None
    min_score: float | None = None
    stages: frozenset[str] | None = None
    groups: frozenset[str | None] | None = None
    accounts: bool | None = None

    def passes(self, note: Mapping[str, Any]) -> bool:
        kind = note.get("type")
        account = isinstance(kind, str) and kind.startswith("account.")
        if self.types is not None and kind not in self.types:
            return False
        if self.accounts is not None and account != self.accounts:
            return False
        if self.min_score is not None:
            score = note.get("score")
            if not isinstance(score, int | float) or score < self.min_score:
                return False
        if not account and self.stages is not None and note.get("stage") not in self.stages:
            return False
        # A notification without "group" (written before SPEC 10) is the lead's own.
        return account or self.groups is None or note.get("group") in self.groups


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: int  # tries in all, the first included
    backoff: float  # seconds after the first failed try; doubled after each next one
    max_backoff: float

    def wait(self, failed: int, jitter: float, retry_after: float | None = None) -> float:
        """Seconds before the next try, after ``failed`` failed tries: the back-off with
        its jitter (``jitter`` in [0, 1) takes up to half of it away), or what the
        endpoint's Retry-After asks when that is longer, at most ``max_backoff``."""
        base = min(self.backoff * 2.0 ** (failed - 1), self.max_backoff)
        wait = base * (1 - jitter / 2)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff))
        return wait


@dataclass(frozen=True, slots=True)
class Destination:
    id: str
    type: str  # "webhook" or "slack"
    url: SecretStr  # masked in every repr
    secret: SecretBytes | None  # a webhook's signing secret
    filter: Filter
    retry: Retry
    concurrency: int
    timeout: float  # seconds, one whole request
    tls: ssl.SSLContext | bool  # True: verify with the system's CAs; False: do not verify

    def describe(self) -> str:
        """One line for the start-up log: never the URL or the secret."""
        wants = []
        for name in (f.name for f in fields(Filter)):
            value = getattr(self.filter, name)
            if isinstance(value, frozenset):
                wants.append(f"{name} " + ", ".join(
                    "null" if v is None else v for v in sorted(value, key=str)))
            elif isinstance(value, bool):
                wants.append(f"{name} {str(value).lower()}")
            elif value is not None:
                wants.append(f"{name} {value:g}")
        unverified = ", TLS not verified" if self.tls is False else ""
        return (f"{self.id} ({self.type}, {self.concurrency} at a time, {self.retry.attempts} "
                f"tries, timeout {self.timeout:g} s{unverified}): "
                f"{'; '.join(wants) or 'every notification'}")


def load_destinations(path: str | Path) -> list[Destination]:
    """Read and compile a destinations file; raise ``DestinationsError`` listing every
    problem."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise DestinationsError(str(path), [f"cannot read the file ({exc.strerror})"]) from exc
    return parse_destinations(data, str(path))


def parse_destinations(data: bytes, source: str = "<destinations>") -> list[Destination]:
    """Compile destinations from the bytes of a YAML file; ``source`` names it in errors.
    Files it names (``url_file``, ``secret_file``, ``tls.ca_file``) are read now, and
    ``secret_env`` looked up now, so that a deployment missing one stops at start."""
    if len(data) > MAX_FILE_BYTES:
        raise DestinationsError(source, [f"(top): the file is larger than {MAX_FILE_BYTES:,} "
                                         "bytes; a destinations file takes a few hundred"])
    problems: list[str] = []
    raw = load_yaml(data, problems)
    if not isinstance(raw, dict):
        if not problems:
            problems.append(f"(top): the file must be a mapping with a destinations list, got "
                            f"{show(raw)}")
        raise DestinationsError(source, problems)
    spec: DestinationsSpec | None = None
    try:
        spec = DestinationsSpec.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_describe(err) for err in exc.errors())
    items = raw.get("destinations")
    resolved = [_resolve(d, f"destinations[{i}]", problems) if isinstance(d, dict) else None
                for i, d in enumerate(items if isinstance(items, list) else [])]
    _check_ids(items, problems)
    _check_retry(raw.get("retry"), "retry", problems)
    if problems or spec is None:
        raise DestinationsError(source, sorted(problems, key=_order))
    out = []
    for d, found in zip(spec.destinations, resolved, strict=True):
        assert found is not None
        url, secret, tls = found
        f, retry = d.filter, d.retry or spec.retry
        out.append(Destination(
            id=d.id, type=d.type, url=SecretStr(url),
            secret=SecretBytes(secret) if secret is not None else None,
            filter=Filter(_set(f.types), f.min_score, _set(f.stages), _set(f.groups),
                          f.accounts),
            retry=Retry(retry.attempts, retry.backoff, retry.max_backoff),
            concurrency=d.concurrency, timeout=d.timeout, tls=tls))
    return out


def _set(values: list[Any] | None) -> frozenset[Any] | None:
    return frozenset(values) if values is not None else None


# ---------------------------------------------------------------- cross-field checks


def _resolve(d: dict[str, Any], at: str, problems: list[str]
             ) -> tuple[str, bytes | None, ssl.SSLContext | bool] | None:
    """The destination's URL, secret and TLS context, from wherever the file says they
    are; ``None`` with the problems noted when one cannot be had."""
    before = len(problems)
    url = None
    if ("url" in d) == ("url_file" in d):
        problems.append(f"{at}: give one of url and url_file" + (", not both" if "url" in d
                                                                  else ""))
    elif isinstance(d.get("url"), str):
        url = _url(d["url"], f"{at}.url", problems)
    elif isinstance(d.get("url_file"), str):
        text = _read(d["url_file"], f"{at}.url_file", problems)
        url = _url(text.decode("utf-8", "replace"), f"{at}.url_file", problems) \
            if text is not None else None
    secret = None
    given = [key for key in ("secret_file", "secret_env") if key in d]
    if d.get("type") == "slack" and given:
        problems.append(f"{at}.{given[0]}: a slack destination is not signed (Slack does not "
                        "check signatures); remove it")
    elif d.get("type") == "webhook" and len(given) != 1:
        problems.append(f"{at}: a webhook is signed: give one of secret_file and secret_env"
                        + (", not both" if given else ""))
    elif isinstance(d.get("secret_file"), str):
        secret = _read(d["secret_file"], f"{at}.secret_file", problems)
    elif isinstance(d.get("secret_env"), str):
        value = os.environ.get(d["secret_env"], "").strip()
        if not value:
            problems.append(f"{at}.secret_env: the environment variable {d['secret_env']} is "
                            "not set, or empty")
        secret = value.encode()
    tls = _tls(d.get("tls"), f"{at}.tls", problems)
    _check_filter(d.get("filter"), f"{at}.filter", problems)
    _check_retry(d.get("retry"), f"{at}.retry", problems)
    if len(problems) > before or url is None:
        return None
    return url, secret, tls


def _read(name: str, at: str, problems: list[str]) -> bytes | None:
    """A secret's file, without the whitespace around it (the newline editors add)."""
    try:
        with open(name, "rb") as file:
            data = file.read(MAX_FILE_BYTES).strip()
    except OSError as exc:
        problems.append(f"{at}: cannot read {name} ({exc.strerror})")
        return None
    if not data:
        problems.append(f"{at}: {name} is empty")
        return None
    return data


def _url(text: str, at: str, problems: list[str]) -> str | None:
    text = text.strip()
    try:
        url = URL(text)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        problems.append(f"{at}: not an http:// or https:// URL with a host {NOT_SHOWN}")
        return None
    return text


def _tls(tls: object, at: str, problems: list[str]) -> ssl.SSLContext | bool:
    if not isinstance(tls, dict):
        return True
    if tls.get("verify") is False:
        if "ca_file" in tls:
            problems.append(f"{at}.ca_file: a CA file means nothing with verify: false; "
                            "remove one of them")
        return False
    ca_file = tls.get("ca_file")
    if not isinstance(ca_file, str):
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except OSError as exc:
        problems.append(f"{at}.ca_file: cannot read {ca_file} ({exc.strerror})")
    except ssl.SSLError:
        problems.append(f"{at}.ca_file: {ca_file} holds no PEM certificate")
    return True


def _check_filter(f: object, at: str, problems: list[str]) -> None:
    if not isinstance(f, dict) or not isinstance(f.get("types"), list):
        return
    if not isinstance(f.get("accounts"), bool):
        return
    accounts = f["accounts"]
    wrong = [t for t in f["types"] if isinstance(t, str) and t.startswith("account.")
             is not accounts]
    if len(wrong) == len(f["types"]):
        problems.append(f"{at}: types {', '.join(map(str, wrong))} with accounts: "
                        f"{str(accounts).lower()} let no notification through; remove one")


def _check_retry(retry: object, at: str, problems: list[str]) -> None:
    if not isinstance(retry, dict):
        return
    try:
        low = _seconds(retry.get("backoff", 1.0))
        high = _seconds(retry.get("max_backoff", 300.0))
    except PydanticCustomError:
        return  # the schema says so
    if high < low:
        problems.append(f"{at}.max_backoff: {high:g} s is shorter than backoff ({low:g} s)")


def _check_ids(items: object, problems: list[str]) -> None:
    seen: dict[str, int] = {}
    for i, d in enumerate(items if isinstance(items, list) else []):
        ident = d.get("id") if isinstance(d, dict) else None
        if not isinstance(ident, str):
            continue
        if not _ID.match(ident):
            problems.append(f"destinations[{i}].id: {show(ident)} is not an id (1 to 64 "
                            "letters, digits, '.', '_' or '-', from a letter or digit)")
        elif ident in seen:
            problems.append(f'destinations[{i}].id: duplicate id "{ident}" (first used at '
                            f"destinations[{seen[ident]}]); ids must be unique")
        else:
            seen[ident] = i


def _describe(err: Any) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    where = where or "(top)"
    if err["type"] == "missing":
        return f"{where}: required field is missing"
    if err["type"] == "extra_forbidden":
        model = _MODEL_AT.get(".".join(p for p in loc[:-1] if isinstance(p, str)))
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f'did you mean "{close[0]}"?' if close else f"known keys: {', '.join(known)}"
        return f"{where}: unknown key ({hint})"
    if err["type"] in _OURS or (loc and loc[-1] == "url"):
        return f"{where}: {err['msg']}"
    return f"{where}: {err['msg']}, got {show(err['input'])}"


_OURS = {"duration", "list", "name", "groups", "number"}  # messages that show the value


def _order(problem: str) -> int:
    """Problems of the file as a whole first, then destination by destination."""
    found = re.match(r"destinations\[(\d+)\]", problem)
    return int(found.group(1)) if found else -1
