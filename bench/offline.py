"""Offline scoring throughput: ``python -m bench.offline [--events N] [--runs R]``.

Generates the benchmark mix once (1,000,000 events over 100,000 leads, Zipf-like
activity, 5% late, 1% duplicates) and times ``leadscore score`` on it, in-process
and as the command a user runs; prints the median of the runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

from scoring.offline import replay
from scoring.rules import load_rules
from streams.demo import Traffic

ROOT = Path(__file__).resolve().parent.parent
START_MS = 1_790_812_800_000  # 2026-10-01T00:00:00Z


def generate(path: Path, events: int, leads: int) -> None:
    traffic = Traffic(leads, seed=1)
    with path.open("wb") as out:
        for event in traffic.history(events, START_MS, 30 * 86_400_000):
            out.write(orjson.dumps(event) + b"\n")


def measure(path: Path, runs: int) -> dict[str, float]:
    """Events/s of the replay in-process and of the ``leadscore score`` command."""
    rules = load_rules(ROOT / "config" / "rules.yaml")
    in_process, command = [], []
    for _ in range(runs):
        started = time.perf_counter()
        with path.open("rb") as lines:
            result = replay(lines, rules)
        in_process.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "leadscore"), "score", str(path)],
                       check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        command.append(time.perf_counter() - started)
    events = result.applied + len(result.bad_lines) + result.after_at
    return {"events": events, "leads": len(result.states),
            "replay_events_per_s": round(events / statistics.median(in_process)),
            "command_events_per_s": round(events / statistics.median(command))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"events-{args.events}-{args.leads}.jsonl"
    if not path.exists():
        generate(path, args.events, args.leads)
    summary = {**measure(path, args.runs), "runs": args.runs,
               "python": platform.python_version(),
               "machine": f"{platform.machine()} {os.cpu_count()} cores"}
    print(f"offline replay, in-process: {summary['replay_events_per_s']:>9,} events/s "
          f"(median of {args.runs})")
    print(f"leadscore score, end to end: {summary['command_events_per_s']:>9,} events/s "
          f"(median of {args.runs}, incl. start-up and output)")
    print(orjson.dumps(summary).decode())


if __name__ == "__main__":
    main()
