"""The worker's HTTP endpoints (README.md, "HTTP"), served by Faust's web server.

    GET /                         the live dashboard (one self-contained page)
    GET /stream                   Server-Sent Events: every notification as it is sent
    GET /leads?hot=&stage=&limit= the highest scores now, from the lead index
    GET /leads?group=&hot=&limit= a score group's highest scores now, from its index
    GET /leads?order=p_convert&...  the highest conversion probabilities now (a model's,
                                  SPEC 12): a scan of every lead, not an index read
    GET /leads/{id}               one lead now; 404 if unknown
    DELETE /leads/{id}            erase the lead (admin token) and tombstone it downstream
    GET /leads/{id}/history       its last changes, newest first
    GET /lead?id=, /lead/history?id=  the same two, the id in the query (for browsers)
    GET /bands?stage=             how many leads score in each band now (SPEC 9's bands)
    GET /accounts?hot=&limit=     the highest account scores now, from the account index
    GET /accounts/{id}            one account now: members' contributions, reasons; 404
    GET /accounts/{id}/history    its last changes; /account?id=, /account/history?id=
                                  the same two with the id in the query (SPEC 11)
    GET /healthz /readyz /metrics

Each endpoint is a function of the ``Api`` (what the answers come from) and the
request, so that it can be called on its own; ``install`` puts them on the app.

A lead id is any string of 1 to 200 characters (as the events accept it), sent
percent-encoded as one path segment: ``/`` as ``%2F``, ``%`` as ``%25``. A browser
cannot send every such path: its URL parser drops the segments ``.`` and ``..``, also
written ``%2E`` and ``%2E%2E``, before the request leaves. So ``/lead?id=`` and
``/lead/history?id=`` answer the same with the id as a query parameter, which no
client rewrites; the dashboard uses them.

With LEADSCORE_API_TOKEN set, the lead endpoints and the stream need a bearer token
(``Authorization: Bearer ...`` or ``?access_token=...``); the probes, the metrics and
the page itself (which holds no data) stay open. Every client is rate limited.

With a conversion model (LEADSCORE_MODEL, streams.served) every lead shown, alone or
in a list, also carries ``p_convert`` and ``p_factors`` at the answer's ``at``; without
one every answer is as it was, and ``order=p_convert`` is a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

import faust
import orjson
from aiohttp import web as aiohttp_web
from faust.web import View
from faust.web.base import BlueprintManager
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scoring.engine import STAGES, plain
from scoring.events import MAX_ID_LENGTH, format_ts
from scoring.rules import Group, Ruleset
from scoring.store import RedisStore
from scoring.views import Explain, Selection, account_now, lead_now
from streams import metrics
from streams.feed import Feed
from streams.runtime import now_ms
from streams.served import ServedModel
from streams.settings import Settings

__all__ = ["ROUTES", "Api", "RateLimiter", "account_path", "account_query", "accounts",
           "bands", "dashboard", "erase", "healthz",
           "history_of", "install", "lead_path", "lead_query", "leads", "prometheus", "readyz",
           "show", "stream"]

DASHBOARD = Path(__file__).resolve().parent / "static" / "dashboard.html"
MAX_LIMIT = 1000
KEEP_ALIVE_SECONDS = 15.0
# /bands: how far apart two workers' clocks may be (NTP keeps them to milliseconds), for
# a lead's last event to be dated beyond LEADSCORE_MAX_CLOCK_SKEW of this one's (``bands``).
CLOCKS_APART_MS = 1_000

Request = aiohttp_web.Request
Response = aiohttp_web.StreamResponse


class RateLimiter:
    """A token bucket per client address: ``rate`` requests a second, bursts of 2x."""

    def __init__(self, rate: float) -> None:
        self.rate, self.burst = rate, 2 * rate
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        tokens, then = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if len(self.buckets) > 10_000:  # forget idle clients rather than grow forever
            self.buckets.clear()
        self.buckets[client] = (tokens - 1, now) if tokens >= 1 else (tokens, now)
        return tokens >= 1


@dataclass
class Api:
    """What the endpoints answer from."""

    settings: Settings
    rules: Ruleset
    redis: Any  # the store's client, for /readyz
    store: RedisStore
    problems: Callable[[], list[str]]  # why the worker is not ready, beyond Redis
    forget: Callable[[str], Awaitable[bool]]  # erase a lead and tombstone it; False if unknown
    feed: Feed  # the live notifications, for /stream
    served: ServedModel | None = None  # the conversion model (SPEC 12), if configured
    accounts: RedisStore | None = None  # the accounts (SPEC 11), with an accounts: section
    limiter: RateLimiter = field(init=False)
    page: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.settings.api_rate_limit)
        self.page = DASHBOARD.read_bytes()

    @property
    def explain(self) -> Explain | None:
        """The served model's ``explain``, by the model current now (one per answer), or
        None (no model configured, or its file not there yet)."""
        return None if self.served is None else self.served.current()


class BadRequest(ValueError):
    """A query parameter that cannot be used; the message says which and why."""


Handler = Callable[[Api, Request], Awaitable[Response]]


def install(app: faust.App, api: Api) -> None:
    """Serve the endpoints on the app's web server, and nothing else.

    Faust's web server has views of its own besides ours: /router/ (which worker owns
    a table key, with every worker's URL), /table/ (table contents), and the index,
    statistics, /assignment/ and /graph/ pages its settings switch on. None is part of
    Leadscore's API (no Faust tables, nothing routed between workers), and all of them
    would answer anyone, token or not. So the web server applies no blueprint at all:
    unlike the web_*_enabled settings (which Faust's APP_WEB_*_ENABLED variables
    override), this also keeps out any view a later Faust adds.
    """
    app.web.blueprints = BlueprintManager()
    for path, methods in ROUTES.items():
        app.page(path)(_view(api, methods))


def _view(api: Api, methods: Mapping[str, Handler]) -> type[View]:
    """A Faust view answering each of ``methods`` (``"get"``, ``"delete"``) by its handler."""

    def method(handler: Handler) -> Callable[..., Awaitable[Response]]:
        async def answer(view: View, request: Any, **match_info: str) -> Response:
            return await handler(api, cast(Request, request))  # faust passes aiohttp's
        return answer

    name = "_".join(dict.fromkeys(handler.__name__ for handler in methods.values()))
    return type(name, (View,), {verb: method(handler) for verb, handler in methods.items()})


def _json(value: Any, status: int = 200, **headers: str) -> aiohttp_web.Response:
    """A JSON answer, written as Faust's web server writes one."""
    return aiohttp_web.Response(body=orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS),
                                content_type="application/json", charset="utf-8",
                                status=status, headers=headers or None)


def _error(status: int, message: str, **headers: str) -> aiohttp_web.Response:
    return _json({"error": message}, status, **headers)


async def dashboard(api: Api, request: Request) -> Response:
    return aiohttp_web.Response(body=api.page, content_type="text/html")


async def healthz(api: Api, request: Request) -> Response:
    return _json({"status": "ok"})


async def readyz(api: Api, request: Request) -> Response:
    problems = []
    try:
        await api.redis.ping()
    except Exception as exc:  # any failure means "not ready", with its reason
        problems.append(f"redis: {type(exc).__name__}")
    problems += api.problems()
    return _json({"ready": not problems, "problems": problems}, 503 if problems else 200)


async def prometheus(api: Api, request: Request) -> Response:
    # aiohttp wants the charset apart from the content type.
    return aiohttp_web.Response(body=generate_latest(metrics.REGISTRY),
                                content_type=CONTENT_TYPE_LATEST.split(";")[0]
                                + "; version=0.0.4")


async def leads(api: Api, request: Request) -> Response:
    """GET /leads: the highest scores now, from the lead index; or, ``order=p_convert``
    (with a model), the highest conversion probabilities now, from a scan of every
    lead (``RedisStore.top_by_probability``: the probability follows no index)."""
    if (no := _refused(api, request, "read")) is not None:
        return no
    try:
        limit = _limit(request, 20)
        hot, stage, scored = _hot(request), _stage(request), _group(api, request)
        by_probability = _order(api, request) == "p_convert"
    except BadRequest as exc:
        return _error(400, str(exc))
    now = now_ms()
    explain = api.explain
    if scored is not None:
        # A group's own list, by its score (SPEC 10). Its leads' "hot" is the group's;
        # a group without alerts is never hot.
        def keep_in(view: dict[str, Any]) -> bool:
            return ((hot is None or view["groups"][scored.id]["hot"] == hot)
                    and (stage is None or view["stage"] == stage))

        if by_probability:
            assert explain is not None
            found = await api.store.top_by_probability(now, limit, explain, keep_in,
                                                       within=scored.id)
        else:
            found = await api.store.top(now, limit, "hot" if hot else "all",
                                        keep_in if explain is None else
                                        Selection(keep_in, explain),
                                        within=scored.id, ahead_ms=_ahead_ms(api))
        return _json({"at": format_ts(now), "group": scored.id,
                      "threshold": _plain_or_none(scored.threshold),
                      "rearm_below": _plain_or_none(scored.rearm_below), "leads": found})
    # Read the smallest ranking that holds every match; filter the rest as we go.
    group = "hot" if hot else f"stage:{stage}" if stage else "all"

    def keep(view: dict[str, Any]) -> bool:
        return (hot is None or view["hot"] == hot) and (stage is None or view["stage"] == stage)

    if by_probability:
        assert explain is not None
        found = await api.store.top_by_probability(now, limit, explain, keep)
    else:
        found = await api.store.top(now, limit, group,
                                    keep if explain is None else Selection(keep, explain),
                                    ahead_ms=_ahead_ms(api))
    answer = {"at": format_ts(now), "threshold": plain(api.rules.threshold),
              "rearm_below": plain(api.rules.rearm_below), "leads": found}
    if api.rules.groups:  # what ?group= may name (the dashboard's selector)
        answer["groups"] = [{"id": g.id, "threshold": _plain_or_none(g.threshold),
                             "rearm_below": _plain_or_none(g.rearm_below)}
                            for g in api.rules.groups]
    return _json(answer)


async def bands(api: Api, request: Request) -> Response:
    """GET /bands: how many leads score in each of SPEC 9's ten bands now, [0,10) ...
    [90,100] (outside 0..100 in the nearest), by the unrounded score; ``?stage=`` for
    one stage's leads. Counted from the lead index, exactly, in a few reads per shard
    however many leads there are (``RedisStore.bands``).

    The index must be told how far ahead of this clock a lead's last event may be dated,
    since its engagement does not decay before then: what the consume loop accepts
    (LEADSCORE_MAX_CLOCK_SKEW), plus CLOCKS_APART_MS for the worker that consumed it
    to have had a clock ahead of this one. A longer reach costs reads, never exactness.
    """
    if (no := _refused(api, request, "read")) is not None:
        return no
    try:
        stage = _stage(request)
    except BadRequest as exc:
        return _error(400, str(exc))
    now = now_ms()
    counts = await api.store.bands(now, f"stage:{stage}" if stage else "all", _ahead_ms(api))
    return _json({"at": format_ts(now), "stage": stage, "leads": sum(counts), "bands": counts,
                  "threshold": plain(api.rules.threshold),
                  "rearm_below": plain(api.rules.rearm_below)})


async def show(api: Api, request: Request, lead_id: str) -> Response:
    """GET /leads/{id}: the lead now (a cooling that is due shows, swept or not)."""
    if (no := _refused(api, request, "read") or _bad_id(lead_id)) is not None:
        return no
    loaded = await api.store.load(lead_id)
    if loaded is None:
        return _error(404, f"no lead {lead_id!r}")
    state, updated_at = loaded
    now = now_ms()
    return _json({**lead_now(state, api.rules, now, api.explain),
                  "updated_at": format_ts(updated_at), "at": format_ts(now)})


async def erase(api: Api, request: Request, lead_id: str) -> Response:
    """DELETE /leads/{id}: erase the lead (GDPR) and tombstone it downstream."""
    if (no := _refused(api, request, "admin") or _bad_id(lead_id)) is not None:
        return no
    if not await api.forget(lead_id):
        return _error(404, f"no lead {lead_id!r}")
    return _json({"forgotten": lead_id})


async def history_of(api: Api, request: Request, lead_id: str) -> Response:
    """GET /leads/{id}/history: the lead's last changes, newest first."""
    if (no := _refused(api, request, "read") or _bad_id(lead_id)) is not None:
        return no
    entries = await _history(api.store, request, lead_id, "lead")
    if isinstance(entries, Response):
        return entries
    rules = api.rules
    return _json({"lead_id": lead_id, "threshold": plain(rules.threshold),
                  "rearm_below": plain(rules.rearm_below),
                  "half_life_seconds": None if rules.half_life_ms is None
                  else rules.half_life_ms / 1000,
                  "history": entries})


def _no_accounts(api: Api) -> Response | None:
    if api.accounts is None:
        return _error(404, "no accounts: the rules have no accounts: section (README, "
                           "\"Accounts\")")
    return None


async def accounts(api: Api, request: Request) -> Response:
    """GET /accounts: the highest account scores now, exactly, from the account index
    (the lead list's, over the accounts' store); ``hot=true`` the hot ones."""
    if (no := _refused(api, request, "read") or _no_accounts(api)) is not None:
        return no
    assert api.accounts is not None
    try:
        limit, hot = _limit(request, 20), _hot(request)
    except BadRequest as exc:
        return _error(400, str(exc))
    now = now_ms()

    def keep(view: dict[str, Any]) -> bool:
        return hot is None or view["hot"] == hot

    found = await api.accounts.top(now, limit, "hot" if hot else "all", keep,
                                   ahead_ms=_ahead_ms(api))
    rules = api.accounts.rules
    return _json({"at": format_ts(now), "threshold": plain(rules.threshold),
                  "rearm_below": plain(rules.rearm_below), "accounts": found})


async def show_account(api: Api, request: Request, account_id: str) -> Response:
    """GET /accounts/{id}: the account now, its buying committee and reasons."""
    if (no := _refused(api, request, "read") or _no_accounts(api)
            or _bad_id(account_id)) is not None:
        return no
    assert api.accounts is not None
    loaded = await api.accounts.load(account_id)
    if loaded is None:
        return _error(404, f"no account {account_id!r}")
    state, updated_at = loaded
    now = now_ms()
    return _json({**account_now(state, api.accounts.rules, now),
                  "updated_at": format_ts(updated_at), "at": format_ts(now)})


async def account_history(api: Api, request: Request, account_id: str) -> Response:
    """GET /accounts/{id}/history: the account's last changes, newest first."""
    if (no := _refused(api, request, "read") or _no_accounts(api)
            or _bad_id(account_id)) is not None:
        return no
    assert api.accounts is not None
    entries = await _history(api.accounts, request, account_id, "account")
    if isinstance(entries, Response):
        return entries
    return _json({"account_id": account_id, "history": entries})


async def _history(store: RedisStore, request: Request, subject_id: str, what: str
                   ) -> list[dict[str, Any]] | Response:
    """The last changes of a lead or an account (``what``), ``?limit=`` of them (the
    store's history size by default), or the answer saying why not (400, 404)."""
    try:
        limit = _limit(request, store.history_size or 1)
    except BadRequest as exc:
        return _error(400, str(exc))
    entries = await store.history(subject_id, limit)
    if not entries and not await store.exists(subject_id):
        return _error(404, f"no {what} {subject_id!r}")
    return entries


async def account_path(api: Api, request: Request) -> Response:
    """Every path under /accounts/, split as ``lead_path`` splits those under /leads/."""
    return await _under(api, request, _UNDER_ACCOUNT,
                        "an account id is one path segment, percent-encoded")


async def account_query(api: Api, request: Request) -> Response:
    """GET /account?id= and /account/history?id= (as ``lead_query``)."""
    return await _by_query(api, request, show_account, account_history)


LeadHandler = Callable[[Api, Request, str], Awaitable[Response]]
_UNDER_LEAD: dict[str, dict[str, LeadHandler]] = {  # method -> what follows the id -> handler
    "get": {"": show, "history": history_of},
    "delete": {"": erase},
}
_UNDER_ACCOUNT: dict[str, dict[str, LeadHandler]] = {"get": {"": show_account,
                                                             "history": account_history}}


async def lead_path(api: Api, request: Request) -> Response:
    """Every path under /leads/, in one route that reads the raw path itself.

    aiohttp matches routes on a path it has already percent-decoded (all but %2F and
    %25), and its ``{lead_id}`` pattern stops at ``{``, ``}`` and ``/``: ids holding them
    could not be routed, and ``a%2Fb`` would be split like ``a/b``. ``_lead_path`` splits
    the still-encoded path and decodes each segment once; the handler is the one for
    what follows the lead id ("" for the lead itself, "history"), and any other path is
    a JSON 404.
    """
    return await _under(api, request, _UNDER_LEAD,
                        "a lead id is one path segment, percent-encoded: / as %2F")


async def _under(api: Api, request: Request, handlers: dict[str, dict[str, LeadHandler]],
                 hint: str) -> Response:
    """The handler of ``handlers`` (method -> what follows the id -> handler) for a path
    under /leads/ or /accounts/, with the id it names; a 400 or a JSON 404 (``hint``
    says what an id is) otherwise."""
    try:
        found = _lead_path(request)
    except BadRequest as exc:
        return _error(400, str(exc))
    verb = "get" if request.method == "HEAD" else request.method.lower()
    handler = handlers.get(verb, {}).get(found[1]) if found else None
    if found is None or handler is None:
        return _error(404, f"no such endpoint: {request.method} {request.rel_url.raw_path} "
                           f"({hint})")
    return await handler(api, request, found[0])


async def lead_query(api: Api, request: Request) -> Response:
    """GET /lead?id= and /lead/history?id=: ``show`` and ``history_of`` with the lead id
    as a query parameter, percent-encoded as UTF-8 (``+`` is a space there, as in any
    query: send ``%2B``), for a client that cannot send the path (a browser, for the
    ids ``.`` and ``..``). Exactly one ``id``, decoded once; anything else is a 400."""
    return await _by_query(api, request, show, history_of)


async def _by_query(api: Api, request: Request, show_one: LeadHandler, history: LeadHandler
                    ) -> Response:
    """``show_one`` or (a path ending in /history) ``history`` with the id of ``?id=``."""
    try:
        subject_id = _query_id(request)
    except BadRequest as exc:  # (before the token, as a path under /leads/ that is not one)
        return _error(400, str(exc))
    handler = history if request.rel_url.raw_path.endswith("/history") else show_one
    return await handler(api, request, subject_id)


async def stream(api: Api, request: Request) -> Response:
    """GET /stream: every notification as it is sent, as Server-Sent Events."""
    if (no := _refused(api, request, "read")) is not None:
        return no
    response = aiohttp_web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    with api.feed.subscription() as queue, contextlib.suppress(ConnectionError):
        await response.write(b": connected\n\n")
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), KEEP_ALIVE_SECONDS)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")  # proxies drop idle streams
                continue
            if data is None:
                break  # the worker is stopping
            await response.write(b"event: notification\ndata: " + data + b"\n\n")
    return response


ROUTES: dict[str, dict[str, Handler]] = {
    "/": {"get": dashboard},
    "/healthz": {"get": healthz},
    "/readyz": {"get": readyz},
    "/metrics": {"get": prometheus},
    "/leads": {"get": leads},
    "/leads/{path:(?s:.*)}": {"get": lead_path, "delete": lead_path},
    "/lead": {"get": lead_query},
    "/lead/history": {"get": lead_query},
    "/bands": {"get": bands},
    "/stream": {"get": stream},
    "/accounts": {"get": accounts},
    "/accounts/{path:(?s:.*)}": {"get": account_path},
    "/account": {"get": account_query},
    "/account/history": {"get": account_query},
}


def _refused(api: Api, request: Request, scope: str) -> Response | None:
    """Why this request may not go on, or None: rate first, then the token."""
    if not api.limiter.allow(request.remote or ""):
        return _error(429, "too many requests: slow down (LEADSCORE_API_RATE_LIMIT)",
                      **{"Retry-After": "1"})
    settings, given = api.settings, _token(request)
    admin = settings.admin_token.get_secret_value() if settings.admin_token else None
    if scope == "admin":
        if admin is None:
            return _error(403, "erasing leads is disabled: set LEADSCORE_ADMIN_TOKEN")
        if given is None or not _same(given, admin):
            return _error(401, "an admin bearer token is needed",
                          **{"WWW-Authenticate": 'Bearer realm="leadscore"'})
        return None
    read = settings.api_token.get_secret_value() if settings.api_token else None
    if read is None or (given is not None and any(
            _same(given, token) for token in (read, admin) if token)):
        return None
    return _error(401, "a bearer token is needed (LEADSCORE_API_TOKEN)",
                  **{"WWW-Authenticate": 'Bearer realm="leadscore"'})


def _same(given: str, token: str) -> bool:
    """Whether a token sent by a client is ``token``, in constant time. Compared as
    bytes: ``hmac.compare_digest`` refuses a str with any non-ASCII character, and a
    client may send anything (surrogatepass encodes every str, even lone surrogates)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               token.encode("utf-8", "surrogatepass"))


def _token(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer "):].strip()
    return request.query.get("access_token")


def _lead_path(request: Request) -> tuple[str, str] | None:
    """The lead id and what follows it in a path under /leads/ (``("a/b", "history")``
    for ``/leads/a%2Fb/history``), or None for a path of another shape.

    The raw path is split on ``/`` before anything is decoded, so that ``%2F`` stays in
    its segment, then each segment is decoded exactly once (``a%252Fb`` is ``a%2Fb``).
    aiohttp matched the route on a path that keeps %2F encoded, so the raw path has the
    same slashes: its first two segments are "" and "leads".
    """
    segments = request.rel_url.raw_path.split("/")[2:]
    lead_id, *rest = (_decoded(segment) for segment in segments)
    if not lead_id or len(rest) > 1:
        return None
    return lead_id, rest[0] if rest else ""


def _decoded(segment: str) -> str:
    """One path segment, percent-decoded as UTF-8; anything else is a 400."""
    try:
        text = unquote(segment, errors="strict")
        text.encode()  # a raw byte that is not UTF-8 would arrive as a lone surrogate
    except UnicodeError:
        raise BadRequest("a lead id in the path must be UTF-8, percent-encoded") from None
    return text


def _query_id(request: Request) -> str:
    """``?id=``, given once and not empty, percent-decoded as UTF-8; else a BadRequest."""
    try:
        ids = [value for name, value in parse_qsl(request.rel_url.raw_query_string,
                                                  keep_blank_values=True, errors="strict")
               if name == "id"]
    except UnicodeError:
        raise BadRequest("the query must be UTF-8, percent-encoded") from None
    if len(ids) != 1 or not ids[0]:
        raise BadRequest("give the lead id once, percent-encoded: ?id=<lead_id>")
    return ids[0]


def _bad_id(lead_id: str) -> Response | None:
    if len(lead_id) > MAX_ID_LENGTH:
        return _error(400, f"lead_id is {len(lead_id)} characters, more than {MAX_ID_LENGTH}")
    return None


def _limit(request: Request, default: int) -> int:
    """``?limit=``: 1 to 4 ASCII digits, from 1 to MAX_LIMIT; else a 400. Not
    ``str.isdigit`` then ``int``: ``isdigit`` passes ``²``, which ``int`` refuses, and
    ``int`` refuses over 4,300 digits (both were 500s); ``int`` also takes other
    scripts' digits, signs and spaces."""
    raw = request.query.get("limit")
    if raw is None:
        return default
    if re.fullmatch(r"[0-9]{1,4}", raw) is None or not 1 <= int(raw) <= MAX_LIMIT:
        shown = raw if len(raw) <= 20 else raw[:20] + "..."
        raise BadRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {shown!r}")
    return int(raw)


def _hot(request: Request) -> bool | None:
    raw = request.query.get("hot")
    if raw is None:
        return None
    if raw.lower() not in ("true", "false"):
        raise BadRequest(f"hot must be true or false, got {raw!r}")
    return raw.lower() == "true"


def _order(api: Api, request: Request) -> str:
    """``?order=``: ``score`` (the default) or ``p_convert``, which needs a model."""
    raw = request.query.get("order", "score")
    if raw not in ("score", "p_convert"):
        shown = raw if len(raw) <= 100 else raw[:100] + "..."
        raise BadRequest(f"order must be score or p_convert, got {shown!r}")
    if raw == "p_convert" and (api.served is None or api.served.model is None):
        raise BadRequest("order=p_convert needs a conversion model, and this worker serves "
                         "none: set LEADSCORE_MODEL to a file of `leadscore model train`"
                         + ("" if api.served is None else
                            f" ({api.served.path} does not exist yet, or was refused: see "
                            "the worker's log)"))
    return raw


def _ahead_ms(api: Api) -> int:
    """How far ahead of this clock a lead's last event may be dated: what the consume
    loop accepts (LEADSCORE_MAX_CLOCK_SKEW), plus CLOCKS_APART_MS for the worker that
    consumed it to have had a clock ahead of this one (the lead index needs it: see
    ``bands``)."""
    return int(api.settings.max_clock_skew * 1000) + CLOCKS_APART_MS


def _group(api: Api, request: Request) -> Group | None:
    raw = request.query.get("group")
    if raw is None:
        return None
    try:
        return api.rules.group(raw)
    except KeyError:
        declared = ", ".join(g.id for g in api.rules.groups)
        shown = raw if len(raw) <= 100 else raw[:100] + "..."
        raise BadRequest(f"group must be one of the rules' score groups ({declared})"
                         f", got {shown!r}" if declared else
                         f"group {shown!r}: the rules declare no score groups") from None


def _plain_or_none(number: float | None) -> float | int | None:
    return None if number is None else plain(number)


def _stage(request: Request) -> str | None:
    raw = request.query.get("stage")
    if raw is not None and raw not in STAGES:
        raise BadRequest(f"stage must be one of {', '.join(STAGES)}, got {raw!r}")
    return raw
