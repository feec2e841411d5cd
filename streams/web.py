"""The worker's HTTP endpoints (SPEC 7), served by Faust's web server.

    GET /                         the live dashboard (one self-contained page)
    GET /stream                   Server-Sent Events: every notification as it is sent
    GET /leads?hot=&stage=&limit= the highest scores now, from the lead index
    GET /leads/{id}               one lead now; 404 if unknown
    DELETE /leads/{id}            erase the lead (admin token) and tombstone it downstream
    GET /leads/{id}/history       its last changes, newest first
    GET /healthz /readyz /metrics

A lead id is any string of 1 to 200 characters (as the events accept it), sent
percent-encoded as one path segment: ``/`` as ``%2F``, ``%`` as ``%25``.

With LEADSCORE_API_TOKEN set, the lead endpoints and the stream need a bearer token
(``Authorization: Bearer ...`` or ``?access_token=...``); the probes, the metrics and
the page itself (which holds no data) stay open. Every client is rate limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import faust
from aiohttp import web as aiohttp_web
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scoring.engine import STAGES, cool, describe, plain
from scoring.events import MAX_ID_LENGTH, format_ts
from streams import metrics
from streams.agents import Scorer, now_ms
from streams.feed import Feed

DASHBOARD = Path(__file__).resolve().parent / "static" / "dashboard.html"
MAX_LIMIT = 1000
KEEP_ALIVE_SECONDS = 15.0

LeadHandler = Callable[[View, Request, str], Awaitable[Response]]


class BadRequest(ValueError):
    """A query parameter that cannot be used; the message says which and why."""


def install(app: faust.App, scorer: Scorer) -> Feed:
    """Register the endpoints on the app; returns the live feed (closed on shutdown)."""
    store = scorer.store
    rules = store.rules
    feed = Feed(store.redis, store.channel)
    page = DASHBOARD.read_bytes()

    settings = scorer.settings
    limiter = RateLimiter(settings.api_rate_limit)

    def error(web: View, status: int, message: str, **headers: str) -> Response:
        response = web.json({"error": message}, status=status)
        response.headers.update(headers)
        return response

    def refused(web: View, request: Request, scope: str) -> Response | None:
        """Why this request may not go on, or None: rate first, then the token."""
        if not limiter.allow(getattr(request, "remote", None) or ""):  # aiohttp's request
            return error(web, 429, "too many requests: slow down (LEADSCORE_API_RATE_LIMIT)",
                         **{"Retry-After": "1"})
        given = _token(request)
        admin = settings.admin_token.get_secret_value() if settings.admin_token else None
        if scope == "admin":
            if admin is None:
                return error(web, 403, "erasing leads is disabled: set LEADSCORE_ADMIN_TOKEN")
            if given is None or not _same(given, admin):
                return error(web, 401, "an admin bearer token is needed",
                             **{"WWW-Authenticate": 'Bearer realm="leadscore"'})
            return None
        read = settings.api_token.get_secret_value() if settings.api_token else None
        if read is None or (given is not None and any(
                _same(given, token) for token in (read, admin) if token)):
            return None
        return error(web, 401, "a bearer token is needed (LEADSCORE_API_TOKEN)",
                     **{"WWW-Authenticate": 'Bearer realm="leadscore"'})

    @app.page("/")
    async def dashboard(web: View, request: Request) -> Response:
        return web.bytes(page, content_type="text/html")

    @app.page("/healthz")
    async def healthz(web: View, request: Request) -> Response:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: View, request: Request) -> Response:
        problems = []
        try:
            await store.redis.ping()
        except Exception as exc:  # any failure means "not ready", with its reason
            problems.append(f"redis: {type(exc).__name__}")
        problems += scorer.problems()
        if scorer.lost is None and (scorer.consumer is None or not scorer.assigned):
            problems.append("no partitions assigned yet")
        status = 503 if problems else 200
        return web.json({"ready": not problems, "problems": problems}, status=status)

    @app.page("/metrics")
    async def prometheus(web: View, request: Request) -> Response:
        # aiohttp wants the charset apart from the content type.
        return web.bytes(generate_latest(metrics.REGISTRY),
                         content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")

    @app.page("/leads")
    async def leads(web: View, request: Request) -> Response:
        if (no := refused(web, request, "read")) is not None:
            return no
        try:
            limit = _limit(request, 20)
            hot, stage = _hot(request), _stage(request)
        except BadRequest as exc:
            return error(web, 400, str(exc))
        # Read the smallest ranking that holds every match; filter the rest as we go.
        group = "hot" if hot else f"stage:{stage}" if stage else "all"

        def keep(view: dict[str, Any]) -> bool:
            return (hot is None or view["hot"] == hot) and (stage is None
                                                            or view["stage"] == stage)

        now = now_ms()
        found = await store.top(now, limit, group, keep)
        return web.json({"at": format_ts(now), "threshold": plain(rules.threshold),
                         "rearm_below": plain(rules.rearm_below), "leads": found})

    async def show(web: View, request: Request, lead_id: str) -> Response:
        """GET /leads/{id}: the lead now (a cooling that is due shows, swept or not)."""
        if (no := refused(web, request, "read") or _bad_id(web, lead_id)) is not None:
            return no
        loaded = await store.load(lead_id)
        if loaded is None:
            return error(web, 404, f"no lead {lead_id!r}")
        state, updated_at = loaded
        now = now_ms()
        cool(state, now, rules)  # as of now: a cooling not yet swept already shows
        return web.json({**describe(state, rules, now),
                         "updated_at": format_ts(updated_at), "at": format_ts(now)})

    async def erase(web: View, request: Request, lead_id: str) -> Response:
        """DELETE /leads/{id}: erase the lead (GDPR) and tombstone it downstream."""
        if (no := refused(web, request, "admin") or _bad_id(web, lead_id)) is not None:
            return no
        if not await scorer.forget(lead_id):
            return error(web, 404, f"no lead {lead_id!r}")
        return web.json({"forgotten": lead_id})

    async def history_of(web: View, request: Request, lead_id: str) -> Response:
        """GET /leads/{id}/history: the lead's last changes, newest first."""
        if (no := refused(web, request, "read") or _bad_id(web, lead_id)) is not None:
            return no
        try:
            limit = _limit(request, store.history_size or 1)
        except BadRequest as exc:
            return error(web, 400, str(exc))
        entries = await store.history(lead_id, limit)
        if not entries and not await store.exists(lead_id):
            return error(web, 404, f"no lead {lead_id!r}")
        return web.json({
            "lead_id": lead_id, "threshold": plain(rules.threshold),
            "rearm_below": plain(rules.rearm_below),
            "half_life_seconds": None if rules.half_life_ms is None
            else rules.half_life_ms / 1000,
            "history": entries})

    async def under_leads(web: View, request: Request, handlers: dict[str, LeadHandler]
                          ) -> Response:
        """Answer a path under /leads/ with the handler for what follows the lead id
        ("" for the lead itself, "history"); any other path is a JSON 404."""
        try:
            found = _lead_path(request)
        except BadRequest as exc:
            return error(web, 400, str(exc))
        handler = handlers.get(found[1]) if found else None
        if found is None or handler is None:
            return error(web, 404, f"no such endpoint: {request.method} "
                                   f"{request.rel_url.raw_path} (a lead id is one path "
                                   "segment, percent-encoded: / as %2F)")
        return await handler(web, request, found[0])

    @app.page("/leads/{path:(?s:.*)}")
    class LeadPaths(View):
        """Every path under /leads/, in one route that reads the raw path itself.

        aiohttp matches routes on a path it has already percent-decoded (all but %2F
        and %25), and its ``{lead_id}`` pattern stops at ``{``, ``}`` and ``/``: ids
        holding them could not be routed, and ``a%2Fb`` would be split like ``a/b``.
        ``_lead_path`` splits the still-encoded path and decodes each segment once.
        """

        async def get(self, request: Request, path: str) -> Response:
            return await under_leads(self, request, {"": show, "history": history_of})

        async def delete(self, request: Request, path: str) -> Response:
            return await under_leads(self, request, {"": erase})

    @app.page("/stream")
    async def stream(web: View, request: Request) -> Any:
        if (no := refused(web, request, "read")) is not None:
            return no
        response = aiohttp_web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)  # type: ignore[arg-type]  # faust passes aiohttp's
        with feed.subscription() as queue, contextlib.suppress(ConnectionError):
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

    return feed


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


def _bad_id(web: View, lead_id: str) -> Response | None:
    if len(lead_id) > MAX_ID_LENGTH:
        return web.json({"error": f"lead_id is {len(lead_id)} characters, more than "
                                  f"{MAX_ID_LENGTH}"}, status=400)
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


def _stage(request: Request) -> str | None:
    raw = request.query.get("stage")
    if raw is not None and raw not in STAGES:
        raise BadRequest(f"stage must be one of {', '.join(STAGES)}, got {raw!r}")
    return raw
