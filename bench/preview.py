"""``leadscore rules preview`` on the benchmark mix: ``python -m bench.preview [--events N]``.

The issue's target: 1,000,000 events under two rulesets in under 30 s on one core.
Generates the mix of bench/offline.py (Traffic: 100,000 leads, Zipf-like activity, 5%
late, 1% duplicates) with conversions added (a busy buyer is likelier to convert, as
in life: 1% of a buyer's events and 0.2% of an evaluator's are followed, an hour to
two weeks later, by its `converted` event, at most once per lead), and times the
command a user runs, ``config/rules.yaml`` against a changed copy (lower threshold,
more points for forms and pricing pages), median of --runs; also the same in process
and a single ``replay`` for comparison. The command's CPU time is reported beside its
wall time: on a shared machine it is the better measure of "on one core". Prints one
line per figure, then one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from scoring.offline import replay, replay_many
from scoring.preview import compare
from scoring.rules import load_rules
from streams.demo import Traffic

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "rules.yaml"
START_MS = 1_790_812_800_000  # 2026-10-01T00:00:00Z
SPAN_MS = 30 * 86_400_000
CONVERTS = {"buyer": 0.01, "evaluator": 0.002}  # per event of a lead of that persona
# The changed copy: (text in config/rules.yaml, replacement), each found exactly once.
CHANGES = [("hot: {threshold: 70, rearm_below: 50}", "hot: {threshold: 60, rearm_below: 45}"),
           ("  - id: form-submit\n    event: form_submit\n    points: 25",
            "  - id: form-submit\n    event: form_submit\n    points: 35"),
           # The plans page (the mix's pricing pages are all /pricing, /pricing#enterprise).
           ('matches: "^/pricing/?($|[?#])"}}\n    points: 15\n    limit: {points: 45, per: 7d}',
            'matches: "^/pricing/?($|[?#])"}}\n    points: 20\n    limit: {points: 60, per: 7d}')]


def history(events: int, leads: int, seed: int = 1) -> Iterator[dict[str, Any]]:
    """``events`` lines: the Traffic mix with each lead's conversion, if any, inserted."""
    traffic, rng = Traffic(leads, seed=seed), random.Random(seed + 1)
    converted: set[str] = set()
    pending: list[tuple[int, dict[str, Any]]] = []  # (time due, conversion), by time
    written = 0
    for event in traffic.history(events, START_MS, SPAN_MS):
        while pending and pending[0][0] <= event["ts"] and written < events:
            yield pending.pop(0)[1]
            written += 1
        if written >= events:
            return
        yield event
        written += 1
        lead = event["lead_id"]
        chance = CONVERTS.get(traffic.persona[lead], 0.0)
        if lead not in converted and chance and rng.random() < chance:
            converted.add(lead)
            due = event["ts"] + rng.randint(3_600_000, 14 * 86_400_000)
            pending.append((due, {"event_id": f"c-{lead}", "lead_id": lead,
                                  "type": "converted", "ts": due}))
            pending.sort(key=lambda p: p[0])


def candidate_rules(path: Path) -> Path:
    text = RULES.read_text()
    for before, after in CHANGES:
        assert text.count(before) == 1, before
        text = text.replace(before, after)
    path.write_text(text)
    return path


def measure(path: Path, new: Path, runs: int) -> dict[str, Any]:
    old_rules, new_rules = load_rules(RULES), load_rules(new)
    now = str(START_MS + SPAN_MS + 86_400_000)
    gc.set_threshold(100_000, 50, 100)  # as the commands set it (streams.preview)
    command, command_cpu, in_process, single = [], [], [], []
    for _ in range(runs):
        cpu = _children_cpu()
        started = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "leadscore"), "rules", "preview",
                        str(new), str(path), "--against", str(RULES), "--json", "--now", now],
                       check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        command.append(time.perf_counter() - started)
        command_cpu.append(_children_cpu() - cpu)
        gc.collect()
        started = time.perf_counter()
        with path.open("rb") as lines:
            old, replayed = replay_many(lines, [old_rules, new_rules])
        preview = compare(old, old_rules, replayed, new_rules, "90d", 90 * 86_400_000)
        in_process.append(time.perf_counter() - started)
        events = old.applied + len(old.bad_lines) + old.after_at
        del old, replayed  # not kept through the next runs
        gc.collect()
        started = time.perf_counter()
        with path.open("rb") as lines:
            replay(lines, old_rules)
        single.append(time.perf_counter() - started)
    report = preview.to_json()
    return {
        "events": events,
        "leads": report["old"]["leads"], "conversions": report["old"]["backtest"]["conversions"],
        "alerts": [report["old"]["alerts"], report["new"]["alerts"]],
        "command_s": _spread(command), "command_cpu_s": _spread(command_cpu),
        "command_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                     / 1024),
        "in_process_s": _spread(in_process),
        "one_replay_s": _spread(single)}


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _spread(seconds: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(seconds), 2), "min": round(min(seconds), 2),
            "max": round(max(seconds), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"preview-{args.events}-{args.leads}.jsonl"
    if not path.exists():
        with path.open("wb") as out:
            out.writelines(orjson.dumps(e) + b"\n" for e in history(args.events, args.leads))
    new = candidate_rules(args.dir / "rules-candidate.yaml")
    summary = {**measure(path, new, args.runs), "runs": args.runs,
               "python": platform.python_version(),
               "machine": f"{platform.machine()} {os.cpu_count()} cores"}
    for name, label in (("command_s", "leadscore rules preview, end to end"),
                        ("command_cpu_s", "  its CPU time (user + system)"),
                        ("in_process_s", "replay_many + compare, in process"),
                        ("one_replay_s", "one replay (leadscore score's), in process")):
        figures = summary[name]
        print(f"{label:<45} {figures['median']:6.2f} s median of {args.runs} "
              f"({figures['min']:.2f}-{figures['max']:.2f})")
    print(orjson.dumps(summary).decode())


if __name__ == "__main__":
    main()
