"""The delivery sink's throughput (docs/performance.md, "Delivery (leadscore notify)"):

    python -m bench.notify [--notifications 6000] [--latency 0.02] [--concurrency 16]
                           [--runs 3]

One embedded broker and one valkey (as bench/run.py); the notifications pre-filled on
a 4-partition topic; a local endpoint in this process (aiohttp, in a thread and event
loop of its own) that answers every POST 200 after ``--latency`` seconds. Each run is
a fresh ``leadscore notify`` process (fresh consumer group and key prefix) with one
webhook destination of ``--concurrency``: deliveries per second from the endpoint's
first request to its last, and the sink's CPU per delivery. Median of ``--runs``.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from rich.console import Console
from rich.table import Table

from bench.run import BIN, cpu_seconds, produce
from scoring.events import format_ts
from streams.embedded import EmbeddedBroker, EmbeddedRedis, create_topics, free_port
from streams.runtime import now_ms

console = Console(stderr=True)
PARTITIONS = 4


class Endpoint:
    """POST /hook: 200 after ``latency`` seconds; the arrival time of every request."""

    def __init__(self, latency: float) -> None:
        self.latency, self.port = latency, free_port()
        self.arrivals: list[float] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> Endpoint:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.perf_counter())  # (list.append is atomic)
        await request.read()
        await asyncio.sleep(self.latency)  # the endpoint's own latency
        return web.Response(status=200)


def notifications(count: int) -> list[tuple[bytes, bytes]]:
    """``count`` lead.hot notifications as the worker writes them (about 450 bytes)."""
    out = []
    for i in range(count):
        lead = f"lead-{i}"
        note = {"type": "lead.hot", "notification_id": f"{lead}:1", "lead_id": lead,
                "score": 82.5, "fit": 35.0, "engagement": 47.5, "stage": "sql",
                "threshold": 70, "event_id": f"e-{i}", "event_ts": format_ts(now_ms()),
                "emitted_at": format_ts(now_ms()), "rules_version": "3f2a9c0d1b7e",
                "reasons": [{"rule": "pricing-page", "points": 30.0},
                            {"rule": "decision-maker", "points": 20.0},
                            {"rule": "mid-market", "points": 15.0}],
                "cause": "event", "group": None}
        out.append((lead.encode(), orjson.dumps(note)))
    return out


def run_once(broker: EmbeddedBroker, redis: EmbeddedRedis, endpoint: Endpoint, topic: str,
             count: int, concurrency: int, run: int, tmp: Path) -> dict[str, Any]:
    (tmp / "secret").write_text("bench-secret")
    destinations = tmp / f"destinations-{run}.yaml"
    destinations.write_text(
        f"destinations:\n  - {{id: bench, type: webhook, url: "
        f"\"http://127.0.0.1:{endpoint.port}/hook\", secret_file: {tmp / 'secret'}, "
        f"concurrency: {concurrency}}}\n")
    env = {**os.environ, "LEADSCORE_BROKER": broker.url, "LEADSCORE_REDIS_URL": redis.url,
           "LEADSCORE_TOPIC_HOT": topic, "LEADSCORE_TOPIC_UNDELIVERABLE": f"{topic}-undeliverable",
           "LEADSCORE_NOTIFY_GROUP": f"bench-notify-{run}", "LEADSCORE_KEY_PREFIX": f"bn{run}",
           "LEADSCORE_NOTIFY_START": "earliest", "LEADSCORE_NOTIFY_PORT": str(free_port()),
           "LEADSCORE_WEB_HOST": "127.0.0.1", "LEADSCORE_BROKER_SESSION_TIMEOUT": "3"}
    endpoint.arrivals.clear()
    with (tmp / "notify.log").open("ab") as log:
        sink = subprocess.Popen([str(BIN / "leadscore"), "notify", "--destinations",
                                 str(destinations)], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 600
        while not endpoint.arrivals:
            time.sleep(0.01)  # polling the endpoint's record
        cpu_before = cpu_seconds(sink.pid)
        while len(endpoint.arrivals) < count:
            if time.monotonic() > deadline or sink.poll() is not None:
                raise RuntimeError(f"{len(endpoint.arrivals)} of {count} delivered; see "
                                   f"{tmp / 'notify.log'}")
            time.sleep(0.05)  # polling the endpoint's record
        cpu = cpu_seconds(sink.pid) - cpu_before
        arrivals = list(endpoint.arrivals)
    finally:
        sink.terminate()
        sink.wait(60)
    seconds = arrivals[count - 1] - arrivals[0]
    return {"per_s": (count - 1) / seconds, "seconds": seconds,
            "cpu_ms_per_delivery": 1000 * cpu / count, "requests": len(arrivals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notifications", type=int, default=6000)
    parser.add_argument("--latency", type=float, default=0.02, help="the endpoint's, seconds")
    parser.add_argument("--concurrency", type=int, default=16, help="of the destination")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="leadscore-bench-notify-"))
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis, \
            Endpoint(args.latency) as endpoint:
        topic = "bench-notify"
        asyncio.run(create_topics(broker.bootstrap, {topic: PARTITIONS,
                                                     f"{topic}-undeliverable": 1}))
        asyncio.run(produce(broker.bootstrap, topic, notifications(args.notifications)))
        runs = [run_once(broker, redis, endpoint, topic, args.notifications, args.concurrency,
                         run, tmp) for run in range(args.runs)]
    rates = [r["per_s"] for r in runs]
    result = {"notifications": args.notifications, "latency_ms": args.latency * 1000,
              "concurrency": args.concurrency, "deliveries_per_s": round(statistics.median(rates)),
              "runs_per_s": [round(r) for r in rates],
              "cpu_ms_per_delivery": round(statistics.median(
                  r["cpu_ms_per_delivery"] for r in runs), 3),
              "ceiling_per_s": round(args.concurrency / args.latency)}
    table = Table(title="leadscore notify: one webhook destination")
    for column in ("what", "value"):
        table.add_column(column)
    table.add_row("deliveries/s (median)", f"{result['deliveries_per_s']:,}")
    table.add_row("runs", ", ".join(f"{r:,}" for r in result["runs_per_s"]))
    table.add_row("ceiling (concurrency / latency)", f"{result['ceiling_per_s']:,}")
    table.add_row("sink CPU per delivery", f"{result['cpu_ms_per_delivery']} ms")
    console.print(table)
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
