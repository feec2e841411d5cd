"""The worker's HTTP endpoints (SPEC 7), served by Faust's web server."""

from __future__ import annotations

import faust
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scoring.engine import describe
from scoring.events import format_ts
from streams import metrics
from streams.agents import Scorer, now_ms


def install(app: faust.App, scorer: Scorer) -> None:
    """Register the endpoints on the app."""

    @app.page("/healthz")
    async def healthz(web: View, request: Request) -> Response:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: View, request: Request) -> Response:
        problems = []
        try:
            await scorer.store.redis.ping()
        except Exception as exc:  # any failure means "not ready", with its reason
            problems.append(f"redis: {type(exc).__name__}")
        if scorer.consumer is None or not scorer.assigned:
            problems.append("no partitions assigned yet")
        status = 503 if problems else 200
        return web.json({"ready": not problems, "problems": problems}, status=status)

    @app.page("/metrics")
    async def prometheus(web: View, request: Request) -> Response:
        # aiohttp wants the charset apart from the content type.
        return web.bytes(generate_latest(metrics.REGISTRY),
                         content_type=CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4")

    @app.page("/leads/{lead_id}")
    async def lead(web: View, request: Request, lead_id: str) -> Response:
        loaded = await scorer.store.load(lead_id)
        if loaded is None:
            return web.json({"error": f"no lead {lead_id!r}"}, status=404)
        state, updated_at = loaded
        view = describe(state, scorer.store.rules, now_ms())
        return web.json({**view, "updated_at": format_ts(updated_at)})
