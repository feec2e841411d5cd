"""The latency part of ``make bench`` alone: ``python -m bench.latency [SECONDS] [RATE]``.

Fresh embedded servers, a fresh worker; prints p50 / p99 / max from the send of a
triggering event to its lead.hot read back (see bench/run.py, latency()).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from bench.run import latency
from streams.embedded import EmbeddedBroker, EmbeddedRedis


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    rate = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis:
        log = Path(tempfile.mkdtemp(prefix="leadscore-latency-")) / "worker.log"
        print(asyncio.run(latency(broker, redis, rate, seconds, log)))


if __name__ == "__main__":
    main()
