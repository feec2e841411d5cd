"""Accounts (SPEC 11) in the worker: ``python -m bench.accounts [--runs 3]``.

Per run, each on a fresh broker and Redis (``bench.run.servers_with``), in this order so
that the three figures of a run are taken close together: the worker on the mix without
accounts, the worker on the same mix with accounts (every lead of one of
``leads / 10`` companies, 2% of the events intent signals about a company), and the
Faust take agent (``bench.baselines``). ``x_take`` of each worker is its rate over the
first --take-events events over the take agent's, as in ``make bench``. Also: the account
stage's own rate (messages of the account topic applied per second, from its first to
its last, while it shares the process and the pace of the lead side; and how long after
the lead side it finished) and Redis memory per account (MEMORY USAGE of every
account key: state, history, index entries).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
from redis import Redis

from bench.run import (
    START_MS,
    baseline,
    console,
    metric,
    processed,
    servers_with,
    venv_bin,
    worker_env,
)
from streams.demo import Traffic
from streams.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
# Member awards and account events applied (a message carries a commit's awards for one
# partition, so messages consumed would undercount them).
APPLIED = "leadscore_account_messages_applied_total"


def mix(leads: int, events: int, accounts: int) -> list[tuple[bytes, bytes]]:
    traffic = Traffic(leads, seed=1, accounts=accounts).history(events, START_MS,
                                                                30 * 86_400_000)
    return [((e.get("lead_id") or e["account_id"]).encode(), orjson.dumps(e)) for e in traffic]


def run_worker(messages: list[tuple[bytes, bytes]], prefix: int, name: str,
               accounts: bool) -> dict[str, Any]:
    """The worker over the mix: events/s over all and over the first ``prefix``; with
    accounts, the account stage's rate and Redis bytes per account. (Its lead events
    are counted: account events are forwarded, not applied, by the lead side.)"""
    events = sum(1 for _, value in messages if b'"lead_id"' in value)
    with servers_with(messages) as (broker, redis):
        port = free_port()
        env = worker_env(broker, redis, "bench-events", name, port)
        worker = subprocess.Popen([str(venv_bin(ROOT) / "leadscore"), "worker"], env=env,
                                  cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            while processed(port) == 0:
                time.sleep(0.02)  # polling the worker's counter
            first = at = time.perf_counter()
            done, prefix_s, lead_s = 0.0, 0.0, 0.0
            # The account side's messages, and when they were first and last seen growing.
            seen, seen_first, seen_last = 0.0, 0.0, first
            while done < events or (accounts and at - seen_last < 3):
                time.sleep(0.25)  # (4 Hz: a scrape costs the worker ~2 ms)
                before, at_before = done, at
                done, at = processed(port), time.perf_counter()
                if before < prefix <= done:
                    prefix_s = at_before - first + (at - at_before) * (
                        (prefix - before) / (done - before))
                if before < events <= done:
                    lead_s = at - first
                if accounts:
                    now = metric(port, APPLIED)
                    if now != seen:
                        seen, seen_last = now, at
                        seen_first = seen_first or at
            out: dict[str, Any] = {"events_per_s": events / lead_s,
                                   "prefix_events_per_s": prefix / prefix_s}
            if accounts:
                out.update(_account_stage(redis.url, name))
                out["account_messages"] = seen
                # (while sharing the process, and the pace, with the lead side)
                out["account_stage_per_s"] = seen / max(seen_last - seen_first, 1e-9)
                out["account_done_after_leads_s"] = seen_last - first - lead_s
        finally:
            worker.terminate()
            worker.wait(30)
    return out


def _account_stage(redis_url: str, name: str) -> dict[str, Any]:
    """The accounts' Redis memory: every key of the account side, per account."""
    client = Redis.from_url(redis_url)
    states = list(client.scan_iter(f"{name}:*:accounts:*:state:*", count=10_000))
    memory = sum(client.memory_usage(k) or 0
                 for k in client.scan_iter(f"{name}:*:accounts:*", count=10_000))
    return {"accounts": len(states), "redis_bytes_per_account": memory / max(len(states), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--take-events", type=int, default=100_000)
    args = parser.parse_args()
    plain = mix(args.leads, args.events, 0)
    rolled = mix(args.leads, args.events, args.leads // 10)
    rows: list[dict[str, Any]] = []
    for run in range(args.runs):
        console.print(f"run {run + 1} of {args.runs}: without accounts, with, take agent ...")
        without = run_worker(plain, args.take_events, f"acc-off-{run}", False)
        with_ = run_worker(rolled, args.take_events, f"acc-on-{run}", True)
        with servers_with(plain) as (broker, redis):
            take = baseline("take", broker, redis, "bench-events", args.take_events)
        rows.append({"x_take": without["prefix_events_per_s"] / take,
                     "x_take_accounts": with_["prefix_events_per_s"] / take,
                     "worker": without["events_per_s"], "worker_accounts": with_["events_per_s"],
                     **{k: with_[k] for k in ("account_stage_per_s", "account_messages",
                                              "account_done_after_leads_s", "accounts",
                                              "redis_bytes_per_account")}})
        console.print(rows[-1])
    summary = {key: round(statistics.median(row[key] for row in rows), 2) for key in rows[0]}
    summary["runs"] = rows
    summary["ratio_accounts"] = round(summary["x_take_accounts"] / summary["x_take"], 3)
    print(orjson.dumps(summary).decode())


if __name__ == "__main__":
    main()
