"""How throughput scales with partitions and worker processes:

    python -m bench.scaling [--partitions 1 4 8] [--workers 1 2]

For each partition count, a topic pre-filled with the same events, consumed by N
``leadscore worker`` processes in one group; time from the first applied event to
the last, summed over workers. One line of JSON per (partitions, workers).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time

import orjson

from bench.run import BIN, START_MS, processed, produce, worker_env
from streams.demo import Traffic
from streams.embedded import EmbeddedBroker, EmbeddedRedis, create_topics, free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--leads", type=int, default=30_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--partitions", type=int, nargs="+", default=[4])
    args = parser.parse_args()
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis:
        traffic = Traffic(args.leads, seed=1).history(args.events, START_MS, 30 * 86_400_000)
        messages = [(e["lead_id"].encode(), orjson.dumps(e)) for e in traffic]
        for partitions in args.partitions:
            topic = f"scale-{partitions}"
            asyncio.run(create_topics(broker.bootstrap, {topic: partitions}))
            asyncio.run(produce(broker.bootstrap, topic, messages))
            for count in args.workers:
                rate = _consume(broker, redis, topic, f"{topic}-{count}", count, args.events)
                print(orjson.dumps({"partitions": partitions, "workers": count,
                                    "events_per_s": round(rate)}).decode(), flush=True)


def _consume(broker: EmbeddedBroker, redis: EmbeddedRedis, topic: str, name: str, count: int,
             events: int) -> float:
    ports = [free_port() for _ in range(count)]
    procs = [subprocess.Popen([str(BIN / "leadscore"), "worker"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL,
                              env=worker_env(broker, redis, topic, name, port))
             for port in ports]
    try:
        def applied() -> float:
            return sum(processed(port) for port in ports)

        while applied() == 0:
            time.sleep(0.02)  # polling the workers' counters
        first = time.perf_counter()
        while applied() < events:
            time.sleep(0.25)  # each scrape costs a worker ~2 ms: not too often
        return events / (time.perf_counter() - first)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)

if __name__ == "__main__":
    main()
