"""The in-run baselines of ``make bench``: the worker written as plain Faust agents.

    python -m bench.baselines naive|take  BROKER REDIS_URL TOPIC EVENTS RESULT_FILE

Both do the worker's work (parse, then the store's transaction with the engine)
through Faust's own consumer and per-event stream:
- naive: one awaited store transaction per event;
- take:  ``stream.take(1000, within=0.1)`` and one store transaction per batch.
It writes the events/s over the first EVENTS events to RESULT_FILE and exits.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import faust
from redis.asyncio import Redis

from scoring.events import parse_event
from scoring.rules import load_rules
from scoring.store import RedisStore
from streams.runtime import now_ms

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    mode, broker, redis_url, topic_name, total, result = sys.argv[1:7]
    target = int(total)
    rules = load_rules(ROOT / "config" / "rules.yaml")
    app = faust.App(f"bench-{mode}-{os.getpid()}", broker=broker, store="memory://",
                    topic_replication_factor=1, broker_session_timeout=3,
                    broker_heartbeat_interval=0.3, web_enabled=False,
                    consumer_auto_offset_reset="earliest",
                    datadir=tempfile.mkdtemp(prefix="bench-faust-"))
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
    done = {"n": 0, "start": 0.0}

    def count(n: int) -> None:
        if done["n"] == 0:
            done["start"] = time.perf_counter()
        done["n"] += n
        if done["n"] >= target:
            rate = done["n"] / (time.perf_counter() - done["start"])
            Path(result).write_text(f"{rate:.0f}\n")
            os._exit(0)  # the measurement is taken; no need for an orderly shutdown

    @app.agent(topic)
    async def score(stream: faust.StreamT[bytes]) -> None:
        store = RedisStore(Redis.from_url(redis_url), rules, prefix=f"bench-{mode}")
        if mode == "naive":
            async for value in stream:
                await store.apply([parse_event(value)], now_ms())
                count(1)
        else:
            async for values in stream.take(1000, within=0.1):
                await store.apply([parse_event(v) for v in values], now_ms())
                count(len(values))

    faust.Worker(app, loglevel="error", quiet=True, redirect_stdouts=False
                 ).execute_from_commandline()


if __name__ == "__main__":
    main()
