"""x_take of several source trees in one run: ``python -m bench.compare TREE [TREE ...]``.

    python -m bench.compare /tmp/before /tmp/after [--runs 3] [--events 300000]
    python -m bench.compare . .=/tmp/no-groups.yaml    # one tree, two rules files
    python -m bench.compare . .@/tmp/model.json        # without and with a model

A TREE may name the rules file its worker runs as ``TREE=RULES`` (default: the tree's
config/rules.yaml), to compare rulesets in one run (issue bounds such as "x_take with
score groups within 10% of without"), and a conversion model as ``TREE@MODEL`` or
``TREE=RULES@MODEL`` (LEADSCORE_MODEL; default none).

Each TREE is a checkout with its own installed ``.venv`` (``git clone``, then ``make
install`` in it). Per run, the trees take turns (so that a machine that speeds up or
slows down during the run weighs on each alike); each tree's worker and its Faust take
agent (bench.baselines, with that tree's store) are measured over the first
``--prefix`` events of the benchmark mix, each on a fresh broker holding the first
``--events`` events of the mix. Prints each measurement, then per tree the medians
and x_take = worker / take, which is what an issue's bound on x_take compares.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import orjson

from bench.run import START_MS, baseline, console, servers_with, worker_throughput
from streams.demo import Traffic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", help="TREE, TREE=RULES, TREE@MODEL or "
                        "TREE=RULES@MODEL")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--prefix", type=int, default=100_000)
    args = parser.parse_args()
    # (name as given, tree, rules file or None, model file or None)
    trees: list[tuple[str, Path, Path | None, Path | None]] = []
    for given in args.trees:
        spec, _, model = given.partition("@")
        tree, _, rules = spec.partition("=")
        trees.append((given, Path(tree).resolve(), Path(rules).resolve() if rules else None,
                      Path(model).resolve() if model else None))
    for _, tree, rules, model in trees:
        if not (tree / ".venv" / "bin" / "leadscore").exists():
            parser.error(f"{tree} has no .venv/bin/leadscore: run `make install` in it first")
        if rules is not None and not rules.is_file():
            parser.error(f"{rules}: no such rules file")
        if model is not None and not model.is_file():
            parser.error(f"{model}: no such model file")
    traffic = Traffic(args.leads, seed=1).history(args.events, START_MS, 30 * 86_400_000)
    messages = [(e["lead_id"].encode(), orjson.dumps(e)) for e in traffic]
    log = Path(tempfile.mkdtemp(prefix="leadscore-compare-")) / "worker.log"
    found: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in trees}
    for run in range(args.runs):
        for name, tree, rules, model in trees:
            with servers_with(messages) as (broker, redis):
                worker = worker_throughput(broker, redis, "bench-events", run, args.events,
                                           log, args.prefix, tree, rules,
                                           model)["prefix_events_per_s"]
            with servers_with(messages) as (broker, redis):
                take = baseline("take", broker, redis, "bench-events", args.prefix, tree)
            found[name].append((worker, take))
            console.print(f"run {run + 1} {name}: worker {worker:,.0f}, take {take:,.0f}, "
                          f"x_take {worker / take:.2f}")
    for name, pairs in found.items():
        ratios = [worker / take for worker, take in pairs]
        print(orjson.dumps({
            "tree": name, "runs": len(pairs),
            "worker_events_per_s": round(statistics.median(w for w, _ in pairs)),
            "take_events_per_s": round(statistics.median(t for _, t in pairs)),
            "x_take": round(statistics.median(ratios), 2),
            "x_take_runs": [round(r, 2) for r in ratios]}).decode())


if __name__ == "__main__":
    main()
