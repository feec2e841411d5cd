"""Write a JSON-lines file of synthetic events: ``python -m bench.generate OUT [options]``."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import orjson

from streams.demo import Traffic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--start", default="2026-10-01T00:00:00Z")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--late", type=float, default=0.05)
    parser.add_argument("--duplicates", type=float, default=0.01)
    args = parser.parse_args()
    start = int(datetime.fromisoformat(args.start).astimezone(UTC).timestamp() * 1000)
    traffic = Traffic(args.leads, seed=args.seed)
    events = traffic.history(args.events, start, int(args.days * 86_400_000),
                             late=args.late, duplicates=args.duplicates)
    with open(args.out, "wb") as out:
        for event in events:
            out.write(orjson.dumps(event) + b"\n")


if __name__ == "__main__":
    main()
