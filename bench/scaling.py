"""How throughput scales with worker processes: ``python -m bench.scaling [--workers 1 2]``.

The same pre-filled 4-partition topic, consumed by N ``leadscore worker`` processes
in one group; time from the first applied event to the last, summed over workers.
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
    args = parser.parse_args()
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis:
        traffic = Traffic(args.leads, seed=1).history(args.events, START_MS, 30 * 86_400_000)
        messages = [(e["lead_id"].encode(), orjson.dumps(e)) for e in traffic]
        asyncio.run(create_topics(broker.bootstrap, {"scale": 4}))
        asyncio.run(produce(broker.bootstrap, "scale", messages))
        for count in args.workers:
            ports = [free_port() for _ in range(count)]
            procs = [subprocess.Popen([str(BIN / "leadscore"), "worker"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env=worker_env(broker, redis, "scale", f"scale{count}", p))
                     for p in ports]
            try:
                def applied(ports: list[int] = ports) -> float:
                    return sum(processed(p) for p in ports)

                while applied() == 0:
                    time.sleep(0.02)  # polling the workers' counters
                first = time.perf_counter()
                while applied() < args.events:
                    time.sleep(0.02)
                rate = args.events / (time.perf_counter() - first)
                print(orjson.dumps({"workers": count, "events_per_s": round(rate)}).decode())
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(30)


if __name__ == "__main__":
    main()
