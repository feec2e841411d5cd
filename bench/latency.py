"""The latency part of ``make bench`` alone.

    python -m bench.latency [--seconds 60] [--rate 5000] [--broker URL --redis URL]

Fresh embedded servers and a fresh worker, unless ``--broker`` (``kafka://host:port``,
plaintext) and ``--redis`` name servers to measure against instead: on this project's
development VM the embedded broker is what bounds latency (docs/performance.md), so a
run against a real Kafka is the one that says what the worker adds. Prints p50 / p99 /
max from the send of a triggering event to its lead.hot read back, per quarter too,
and split at the worker (see bench/run.py, latency()).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.run import latency
from streams.embedded import EmbeddedBroker, EmbeddedRedis
from streams.runtime import bootstrap_servers


@dataclass(frozen=True)
class GivenBroker:
    url: str
    pid: None = None  # not on this machine, or not ours: its CPU is not sampled

    @property
    def bootstrap(self) -> str:
        return ",".join(bootstrap_servers(self.url))


@dataclass(frozen=True)
class GivenRedis:
    url: str


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--rate", type=int, default=5000, help="events/s offered")
    parser.add_argument("--broker", help="kafka://host:port of a broker to use")
    parser.add_argument("--redis", help="redis://... of a Redis-compatible server to use")
    args = parser.parse_args()
    if (args.broker is None) != (args.redis is None):
        parser.error("give both --broker and --redis, or neither (embedded servers)")
    log = Path(tempfile.mkdtemp(prefix="leadscore-latency-")) / "worker.log"
    with contextlib.ExitStack() as servers:
        if args.broker is None:
            broker: EmbeddedBroker | GivenBroker = servers.enter_context(EmbeddedBroker())
            redis: EmbeddedRedis | GivenRedis = servers.enter_context(EmbeddedRedis())
        else:
            broker, redis = GivenBroker(args.broker), GivenRedis(args.redis)
        result = asyncio.run(latency(broker, redis, args.rate, args.seconds, log))
    print({name: round(value, 2) for name, value in result.items()})
    print(f"(the worker's log: {log})")


if __name__ == "__main__":
    main()
