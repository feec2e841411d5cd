"""Training the conversion model at the benchmark size: ``python -m bench.training
[--leads 60000] [--runs 3]``.

Writes a planted history (bench.planted: 60,000 leads, about a million events, a
year) and times ``leadscore model train`` on it as a user runs it (a subprocess: read,
examples, fit, calibration, the model file), ``--runs`` times; prints the median
seconds, the peak memory of the command and the model's test-set numbers. ``make
bench`` runs it and serves the model it wrote to one more worker run (bench.run).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench import planted

ROOT = Path(__file__).resolve().parent.parent


def generate(path: Path, leads: int) -> int:
    """The planted history of ``leads`` leads at ``path``; the number of events."""
    count = 0
    with path.open("wb") as out:
        for event in planted.events(leads, seed=1):
            out.write(orjson.dumps(event) + b"\n")
            count += 1
    return count


def measure(events: Path, model: Path, runs: int, checkout: Path = ROOT) -> dict[str, Any]:
    """Seconds of ``leadscore model train`` per run (writing ``model``), its peak RSS,
    and the model's metrics."""
    seconds, peaks = [], []
    for _ in range(runs):
        began = time.perf_counter()
        command = subprocess.Popen(
            [str(checkout / ".venv" / "bin" / "leadscore"), "model", "train", "--rules",
             str(checkout / "config" / "rules.yaml"), str(events), "--horizon", "90d",
             "--out", str(model)], cwd=checkout, stdout=subprocess.DEVNULL)
        peak = 0.0
        while command.poll() is None:
            peak = max(peak, _high_water_mb(command.pid))
            time.sleep(0.2)  # sampling the command's memory high-water mark
        seconds.append(time.perf_counter() - began)
        if command.returncode:
            raise SystemExit(f"leadscore model train exited {command.returncode}")
        peaks.append(peak)
    # (Not getrusage's children: a child forked from this process, which holds the mix,
    # counts the parent's pages until it execs.)
    peak_mb = max(peaks)
    info = orjson.loads(model.read_bytes())
    return {"train_seconds": round(statistics.median(seconds), 1),
            "train_runs": [round(s, 1) for s in seconds], "train_peak_rss_mb": round(peak_mb),
            "train_examples": sum(info["examples"][part]
                                  for part in ("fit", "calibration", "test")),
            **{f"model_{k}": v for k, v in info["metrics"].items()}}


def _high_water_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leads", type=int, default=60_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="leadscore-training-"))
    events = generate(out / "planted.jsonl", args.leads)
    result = measure(out / "planted.jsonl", out / "model.json", args.runs)
    print(orjson.dumps({"events": events, **result}).decode())


if __name__ == "__main__":
    main()
