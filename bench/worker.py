"""Worker throughput: ``python -m bench.worker [--events N] [--runs R]``.

Against the embedded broker and Redis: pre-fills a 4-partition topic with the
benchmark mix, starts one ``leadscore worker`` process, and times from its first
consumed event to its last (read from its own /metrics). Median of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from streams.demo import Traffic
from streams.embedded import EmbeddedBroker, EmbeddedRedis, create_topics, free_port

ROOT = Path(__file__).resolve().parent.parent
START_MS = 1_790_812_800_000


def consumed(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("leadscore_events_consumed_total "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


async def fill(bootstrap: str, topic: str, events: int, leads: int) -> None:
    await create_topics(bootstrap, {topic: 4})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False,
                                linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        sends = []
        for event in Traffic(leads, seed=1).history(events, START_MS, 30 * 86_400_000):
            sends.append(await producer.send(topic, orjson.dumps(event),
                                             key=event["lead_id"].encode()))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


def one_run(n: int, events: int, leads: int) -> float:
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis:
        topic = f"bench-{n}"
        asyncio.run(fill(broker.bootstrap, topic, events, leads))
        port = free_port()
        env = {**os.environ, "LEADSCORE_BROKER": broker.url, "LEADSCORE_REDIS_URL": redis.url,
               "LEADSCORE_TOPIC_EVENTS": topic, "LEADSCORE_WEB_PORT": str(port),
               "LEADSCORE_WEB_HOST": "127.0.0.1", "LEADSCORE_BROKER_SESSION_TIMEOUT": "3",
               "LEADSCORE_RULES": str(ROOT / "config" / "rules.yaml")}
        with tempfile.TemporaryFile() as log:
            import subprocess

            worker = subprocess.Popen([str(Path(sys.executable).parent / "leadscore"),
                                       "worker"], env=env, stdout=log, stderr=log)
            try:
                while consumed(port) == 0:
                    time.sleep(0.05)  # polling the worker's counter
                first = time.perf_counter()
                while consumed(port) < events:
                    time.sleep(0.05)
                return events / (time.perf_counter() - first)
            finally:
                worker.terminate()
                worker.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--leads", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates = [one_run(n, args.events, args.leads) for n in range(args.runs)]
    print(f"worker throughput: {statistics.median(rates):,.0f} events/s "
          f"(median of {args.runs}: {', '.join(f'{r:,.0f}' for r in rates)})")
    print(orjson.dumps({"worker_events_per_s": round(statistics.median(rates)),
                        "runs": [round(r) for r in rates], "events": args.events,
                        "leads": args.leads}).decode())


if __name__ == "__main__":
    main()
