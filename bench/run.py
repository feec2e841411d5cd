"""``make bench``: Leadscore's performance on this machine, against the embedded servers.

The benchmark mix (default 1,000,000 events, 100,000 leads, Zipf-like activity, 5%
late, 1% duplicates) is generated once. The embedded broker (Tansu) slows as its
topics grow, so every measured run gets a fresh broker and Redis-compatible server
(valkey) with the mix produced anew to a 4-partition topic (``servers_with``). Then:

1. throughput of one ``leadscore worker`` process, pre-filled topic to last state
   write (median of --runs), its peak RSS, Redis commands per event, Redis memory
   per lead (MEMORY USAGE of a sample of state keys); after each run, a worker with
   a changed rules file rebuilding its generation from the same topic (its rate on
   the processes LEADSCORE_REBUILD_PROCESSES gives it, one per CPU by default, and
   the time to the cutover), then another rules change rebuilt on one process;
2. the two baselines of bench/baselines.py (naive and take agents), over the first
   --naive-events / --take-events events, and the ratios to the worker's rate over
   the first --take-events events (the same work); the take agent runs after each
   worker run, and x_take is the median of those pairs' ratios;
3. end-to-end latency from produce to the lead.hot being readable on the
   notifications topic, at a fixed offered load (--rate events/s for --seconds),
   and the broker's own share: the same load produced and consumed, no worker;
4. offline ``leadscore score`` events/s on the same mix.

Prints a table, then one JSON line with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis import Redis
from rich.console import Console
from rich.table import Table

from bench import training
from bench.offline import measure as measure_offline
from scoring.events import parse_ts
from scoring.rules import load_rules
from scoring.store.generations import furthest
from scoring.store.keys import Layout, layout_key
from streams.demo import Traffic
from streams.embedded import EmbeddedBroker, EmbeddedRedis, create_topics, free_port
from streams.rebuilders import processes
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_MS = 1_790_812_800_000  # 2026-10-01T00:00:00Z
console = Console(stderr=True)


def metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def processed(port: int) -> float:
    """Events whose batch is in Redis: applied, or recognised as a duplicate or replay."""
    return sum(metric(port, f"leadscore_events_{kind}_total")
               for kind in ("applied", "duplicate", "replayed"))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_by_part(pid: int | None, seconds: float, parts: int) -> list[int]:
    """The process's CPU, % of one core, in each of ``parts`` equal parts of ``seconds``
    (none for a process not known here)."""
    if pid is None:
        return []
    shares = []
    for _ in range(parts):
        before = cpu_seconds(pid)
        await asyncio.sleep(seconds / parts)  # sampling interval
        shares.append(round(100 * (cpu_seconds(pid) - before) / (seconds / parts)))
    return shares


def redis_calls(redis: Redis) -> int:
    stats: dict[str, Any] = redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info",))


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False,
                                linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        for i in range(0, len(messages), 10_000):
            sends = [await producer.send(topic, value, key=key)
                     for key, value in messages[i:i + 10_000]]
            await asyncio.gather(*sends)
    finally:
        await producer.stop()


@contextlib.contextmanager
def servers_with(messages: list[tuple[bytes, bytes]]
                 ) -> Iterator[tuple[EmbeddedBroker, EmbeddedRedis]]:
    """A fresh broker and Redis-compatible server, the mix produced to a 4-partition
    topic: the embedded broker slows as its topics grow, so each measured run gets its
    own, and no figure depends on what ran before it."""
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis:
        console.print("  a fresh broker: producing the mix to a 4-partition topic ...")
        asyncio.run(create_topics(broker.bootstrap, {"bench-events": 4,
                                                     "bench-events-accounts": 4}))
        asyncio.run(produce(broker.bootstrap, "bench-events", messages))
        yield broker, redis


class Broker(Protocol):
    """The embedded broker, or one given by address (``python -m bench.latency --broker``)."""

    @property
    def url(self) -> str: ...  # kafka://host:port
    @property
    def bootstrap(self) -> str: ...  # host:port
    @property
    def pid(self) -> int | None: ...  # known for the embedded one: its CPU is sampled


class RedisServer(Protocol):
    @property
    def url(self) -> str: ...


def venv_bin(checkout: Path) -> Path:
    """The scripts of ``checkout``'s virtualenv (this one's, for this tree)."""
    return BIN if checkout == ROOT else checkout / ".venv" / "bin"


def worker_env(broker: Broker, redis: RedisServer, topic: str, name: str,
               port: int, checkout: Path = ROOT, rules: Path | None = None,
               model: Path | None = None) -> dict[str, str]:
    return {**os.environ, **({"LEADSCORE_MODEL": str(model)} if model else {}),
            "LEADSCORE_BROKER": broker.url, "LEADSCORE_REDIS_URL": redis.url,
            "LEADSCORE_TOPIC_EVENTS": topic, "LEADSCORE_TOPIC_HOT": f"{topic}-hot",
            "LEADSCORE_TOPIC_DLQ": f"{topic}-dlq", "LEADSCORE_GROUP_ID": name,
            "LEADSCORE_TOPIC_ACCOUNT_AWARDS": f"{topic}-accounts",
            "LEADSCORE_KEY_PREFIX": name, "LEADSCORE_WEB_PORT": str(port),
            "LEADSCORE_WEB_HOST": "127.0.0.1", "LEADSCORE_BROKER_SESSION_TIMEOUT": "3",
            "LEADSCORE_SWEEP_INTERVAL": "3600",
            "LEADSCORE_RULES": str(rules or checkout / "config" / "rules.yaml")}


def worker_throughput(broker: EmbeddedBroker, redis: EmbeddedRedis, topic: str, run: int,
                      events: int, log: Path, prefix: int,
                      checkout: Path = ROOT, rules: Path | None = None,
                      model: Path | None = None) -> dict[str, Any]:
    """Events/s over all ``events``, and over the first ``prefix`` of them: the part of
    the mix the baselines are measured on (its first events, of leads mostly new, are
    cheaper than the rest), so that the ratios compare the same work. ``checkout``: the
    source tree whose ``.venv`` runs the worker (bench.compare measures several);
    ``rules``: its rules file (default: the tree's config/rules.yaml); ``model``: its
    LEADSCORE_MODEL (default: none)."""
    port = free_port()
    client = Redis.from_url(redis.url)
    calls_before = redis_calls(client)
    with log.open("ab") as sink:
        worker = subprocess.Popen([str(venv_bin(checkout) / "leadscore"), "worker"],
                                  stdout=sink, stderr=sink, cwd=checkout,
                                  env=worker_env(broker, redis, topic, f"bench-w{run}", port,
                                                 checkout, rules, model))
    try:
        while processed(port) == 0:
            time.sleep(0.02)  # polling the worker's counter
        first = time.perf_counter()
        done, at, prefix_seconds = 0.0, first, 0.0
        while done < events:
            # Each scrape of /metrics costs the worker ~2 ms: polling at 50 Hz took 12% of
            # its time. At 4 Hz the end is known to 0.25 s, under 1% of a run.
            time.sleep(0.25)
            before, at_before = done, at
            done, at = processed(port), time.perf_counter()
            if before < prefix <= done:  # crossed between two polls: interpolate
                prefix_seconds = at_before - first + (at - at_before) * (
                    (prefix - before) / (done - before))
        seconds = at - first
        rss = peak_rss_mb(worker.pid)
    finally:
        worker.terminate()
        worker.wait(30)
    calls = redis_calls(client) - calls_before
    return {"events_per_s": events / seconds, "prefix_events_per_s": prefix / prefix_seconds,
            "rss_mb": rss, "redis_calls_per_event": calls / events, "prefix": f"bench-w{run}"}


def rebuild_throughput(broker: EmbeddedBroker, redis: EmbeddedRedis, topic: str, run: int,
                       events: int, log: Path, rules: Path,
                       processes: int | None = None, checkout: Path = ROOT) -> dict[str, float]:
    """A rules change after run ``run``: a worker with ``rules`` rebuilds its generation
    from the topic beside the run's (sending nothing, in rebuild batches, on the
    processes LEADSCORE_REBUILD_PROCESSES allows) and cuts over. Events/s from its first
    commit to its last, read from the generation's progress in Redis (which every process
    of the rebuild writes), and the seconds from then to the cutover. ``processes``:
    LEADSCORE_REBUILD_PROCESSES (default: the worker's, one per CPU); ``checkout``: the
    source tree whose ``.venv`` runs the worker."""
    port = free_port()
    env = {**worker_env(broker, redis, topic, f"bench-w{run}", port),
           "LEADSCORE_RULES": str(rules)}
    if processes is not None:
        env["LEADSCORE_REBUILD_PROCESSES"] = str(processes)
    client = Redis.from_url(redis.url)
    generation = load_rules(rules).version
    with log.open("ab") as sink:
        worker = subprocess.Popen([str(venv_bin(checkout) / "leadscore"), "worker"],
                                  stdout=sink, stderr=sink, env=env, cwd=checkout)
    try:
        while rebuilt(client, f"bench-w{run}", generation) == 0:
            time.sleep(0.02)  # polling the generation's progress
        first = time.perf_counter()
        while rebuilt(client, f"bench-w{run}", generation) < events:
            time.sleep(0.1)  # (a few cheap reads of Redis per poll)
        seconds = time.perf_counter() - first
        while metric(port, "leadscore_generation_active") != 1:
            time.sleep(0.05)  # polling for the cutover
        cutover = time.perf_counter() - first - seconds
    finally:
        worker.terminate()
        worker.wait(30)
    return {"events_per_s": events / seconds, "cutover_s": cutover}


def rebuilt(client: Redis, prefix: str, generation: str) -> int:
    """Events a generation has applied: its progress, summed over partitions."""
    raw = client.get(layout_key(prefix))
    if raw is None:
        return 0
    layout = Layout(prefix, int(orjson.loads(raw)["shards"]), generation)
    progress = [{int(p): int(o) for p, o in client.hgetall(shard.progress).items()}
                for shard in layout.shards]
    return sum(furthest(progress).values())


def redis_bytes_per_lead(redis: EmbeddedRedis, prefix: str, sample: int = 2000
                         ) -> dict[str, float]:
    """Mean MEMORY USAGE per lead of its state, its dedupe id set and its history
    (a sample of leads), and of its lead-index entries (all rankings / all leads) and
    its score groups' index entries (SPEC 10; all group rankings / all leads)."""
    client = Redis.from_url(redis.url)
    keys = [k for _, k in zip(range(sample), client.scan_iter(f"{prefix}:*:state:*",
                                                              count=1000), strict=False)]
    parts: dict[str, list[int]] = {"state": [], "ids": [], "history": []}
    for key in keys:
        for part in parts:
            parts[part].append(client.memory_usage(key.replace(b":state:", f":{part}:".encode()))
                               or 0)
    leads = sum(1 for _ in client.scan_iter(f"{prefix}:*:state:*", count=10_000))
    index = sum(client.memory_usage(k) or 0
                for k in client.scan_iter(f"{prefix}:*:rank:*", count=10_000))
    groups = sum(client.memory_usage(k) or 0 for pattern in ("gall", "ghot")
                 for k in client.scan_iter(f"{prefix}:*:{pattern}:*", count=10_000))
    return {**{part: statistics.mean(sizes) for part, sizes in parts.items()},
            "index": index / max(leads, 1), "group_index": groups / max(leads, 1)}


def baseline(mode: str, broker: EmbeddedBroker, redis: EmbeddedRedis, topic: str,
             events: int, checkout: Path = ROOT) -> float:
    """Events/s of a bench.baselines agent (of ``checkout``, with its store)."""
    with tempfile.NamedTemporaryFile() as result:
        subprocess.run([str(venv_bin(checkout) / "python"), "-m", "bench.baselines", mode,
                        broker.url, redis.url, topic, str(events), result.name], check=True,
                       cwd=checkout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        return float(Path(result.name).read_text())


async def latency(broker: Broker, redis: RedisServer, rate: int, seconds: int,
                  log: Path) -> dict[str, float]:
    """Offer ``rate`` events/s for ``seconds``; 10% of them start or finish a journey that
    turns a lead hot. Latency: the triggering event's send -> its lead.hot read back.
    Topics, consumer group and key prefix are new on each call, so that servers of an
    earlier run (``bench.latency --broker/--redis``) hold nothing of this one."""
    topic = f"bench-live-{time.time_ns()}"
    await create_topics(broker.bootstrap, {topic: 4, f"{topic}-hot": 4, f"{topic}-dlq": 1})
    port = free_port()
    with log.open("ab") as sink:
        worker = subprocess.Popen([str(BIN / "leadscore"), "worker"], stdout=sink, stderr=sink,
                                  env=worker_env(broker, redis, topic, topic, port))
    try:
        while metric(port, "leadscore_events_consumed_total") == 0 and worker.poll() is None:
            # the worker is ready when its probe event has been consumed
            await produce(broker.bootstrap, topic, [(b"probe", orjson.dumps(
                {"event_id": f"p{time.time_ns()}", "lead_id": "probe", "type": "page_view",
                 "ts": int(time.time() * 1000)}))])
            await asyncio.sleep(0.5)
        result, worker_cpu, broker_cpu = await asyncio.gather(
            _offer(broker.bootstrap, topic, rate, seconds), cpu_by_part(worker.pid, seconds, 4),
            cpu_by_part(broker.pid, seconds, 4))
        return {**result, **{f"broker_cpu_q{i + 1}": share for i, share in enumerate(broker_cpu)},
                **{f"worker_cpu_q{i + 1}": share for i, share in enumerate(worker_cpu)}}
    finally:
        worker.terminate()
        worker.wait(30)


async def _offer(bootstrap: str, topic: str, rate: int, seconds: int) -> dict[str, float]:
    sent: dict[str, float] = {}
    latencies: list[tuple[float, float]] = []  # (read at, latency ms)
    consumer = AIOKafkaConsumer(f"{topic}-hot", bootstrap_servers=bootstrap,
                                auto_offset_reset="latest", fetch_max_wait_ms=5)
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False,
                                linger_ms=1)
    await producer.start()
    stop = asyncio.Event()

    legs: list[tuple[int, int]] = []  # (event -> recorded, recorded -> read), ms

    async def read() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            now, wall = time.perf_counter(), int(time.time() * 1000)
            for records in batch.values():
                for record in records:
                    note = orjson.loads(record.value)
                    if note["type"] == "lead.hot" and note["event_id"] in sent:
                        latencies.append((now, (now - sent[note["event_id"]]) * 1000))
                        # event_ts is the wall clock when the event was made, emitted_at
                        # when the worker recorded the notification: where the time went
                        recorded = parse_ts(note["emitted_at"])
                        legs.append((recorded - parse_ts(note["event_ts"]), wall - recorded))

    reader = asyncio.create_task(read())
    rng = random.Random(3)
    journeys = 0

    def event(n: int) -> tuple[bytes, bytes]:
        nonlocal journeys
        ts = int(time.time() * 1000)
        body: dict[str, Any]
        if n % 20 == 0:  # a new lead asks for a consultation ...
            journeys += 1
            body = {"event_id": f"c{journeys}", "lead_id": f"hot-{journeys}",
                    "type": "consultation_requested", "ts": ts}
        elif n % 20 == 10 and journeys:  # ... and puts something in the cart: 90, hot
            body = {"event_id": f"a{journeys}", "lead_id": f"hot-{journeys}",
                    "type": "add_to_cart", "ts": ts}
        else:
            body = {"event_id": f"v{n}", "lead_id": f"browse-{rng.randrange(50_000)}",
                    "type": "page_view", "ts": ts, "properties": {"url": "/docs"}}
        sent[str(body["event_id"])] = time.perf_counter()
        return str(body["lead_id"]).encode(), orjson.dumps(body)

    started = time.perf_counter()
    n = await _paced(producer, topic, rate, seconds, event)
    offered = n / (time.perf_counter() - started)
    await _finish(stop, reader, producer, consumer, grace=2)
    q = statistics.quantiles([ms for _, ms in latencies], n=100)
    quarter = seconds / 4
    return {"offered_events_per_s": offered, "samples": len(latencies), "p50_ms": q[49],
            "p99_ms": q[98], "max_ms": max(ms for _, ms in latencies),
            "in_p99_ms": _p99([float(a) for a, _ in legs]),
            "out_p99_ms": _p99([float(b) for _, b in legs]),
            **{f"p99_q{i + 1}_ms": _p99([ms for at, ms in latencies
                                        if i * quarter <= at - started < (i + 1) * quarter])
               for i in range(4)}}


async def broker_floor(bootstrap: str, rate: int, seconds: int) -> dict[str, float]:
    """The broker's own share of the latency: ``rate`` events/s (~200 bytes, paced as
    ``_offer`` paces them) produced and consumed again, with no worker in between; an
    event crosses the broker twice on its way to a lead.hot. Kafka's record timestamp
    (set at send) to the consumer's read; p99 also for the first and the last third
    of the run (the embedded broker slows down as its in-memory topic grows)."""
    topic = "bench-floor"
    await create_topics(bootstrap, {topic: 4})
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id="bench-floor",
                                auto_offset_reset="latest", fetch_max_wait_ms=10)
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False,
                                linger_ms=1)
    await producer.start()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)  # joined the group: no event is missed
    seen: list[tuple[float, float]] = []  # (read at, latency), ms
    stop = asyncio.Event()

    async def read() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            now = time.time() * 1000
            seen.extend((now, now - record.timestamp) for records in batch.values()
                        for record in records)

    reader = asyncio.create_task(read())
    rng, value = random.Random(5), b"x" * 200
    await _paced(producer, topic, rate, seconds,
                 lambda _: (str(rng.randrange(50_000)).encode(), value))
    await _finish(stop, reader, producer, consumer, grace=1)
    first, last = seen[0][0], seen[-1][0]
    third = (last - first) / 3

    q = statistics.quantiles([ms for _, ms in seen], n=100)
    return {"p50_ms": q[49], "p99_ms": q[98], "max_ms": max(ms for _, ms in seen),
            "first_third_p99_ms": _p99([ms for at, ms in seen if at < first + third]),
            "last_third_p99_ms": _p99([ms for at, ms in seen if at >= last - third])}


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else float("nan")


async def _paced(producer: AIOKafkaProducer, topic: str, rate: int, seconds: int,
                 message: Callable[[int], tuple[bytes, bytes]]) -> int:
    """Send ``message(n)`` (key, value) for n = 1, 2, ... at ``rate`` events/s for
    ``seconds``, in ticks of 10 ms; returns how many were sent."""
    per_tick, n, started = max(rate // 100, 1), 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(per_tick):
            n += 1
            key, value = message(n)
            await producer.send(topic, value, key=key)
        next_tick = started + 0.01 * (n // per_tick)
        await asyncio.sleep(max(0.0, next_tick - time.perf_counter()))  # pacing the load
    return n


async def _finish(stop: asyncio.Event, reader: asyncio.Task[None], producer: AIOKafkaProducer,
                  consumer: AIOKafkaConsumer, grace: float) -> None:
    """Read for ``grace`` seconds more (the last ones are still on their way), then stop."""
    await asyncio.sleep(grace)
    stop.set()
    await reader
    await producer.stop()
    await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--naive-events", type=int, default=10_000)
    parser.add_argument("--take-events", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--train-leads", type=int, default=60_000,
                        help="leads of the planted history the model is trained on (60,000: "
                        "about a million events)")
    args = parser.parse_args()
    args.naive_events = min(args.naive_events, args.events)
    args.take_events = min(args.take_events, args.events)
    out = Path(tempfile.mkdtemp(prefix="leadscore-bench-"))
    results: dict[str, Any] = {"events": args.events, "leads": args.leads,
                               "machine": f"{platform.machine()} {os.cpu_count()} cores",
                               "python": platform.python_version()}
    began = time.perf_counter()
    console.print(f"generating {args.events:,} events over {args.leads:,} leads ...")
    traffic = Traffic(args.leads, seed=1).history(args.events, START_MS, 30 * 86_400_000)
    messages = [(e["lead_id"].encode(), orjson.dumps(e)) for e in traffic]
    mix = out / "events.jsonl"
    mix.write_bytes(b"\n".join(value for _, value in messages) + b"\n")
    changed = out / "rules-b.yaml"  # a rules change: a lower bar
    changed.write_text((ROOT / "config" / "rules.yaml").read_text().replace(
        "hot: {threshold: 70, rearm_below: 50}", "hot: {threshold: 60, rearm_below: 45}"))
    again = out / "rules-c.yaml"  # another, rebuilt on one process
    again.write_text((ROOT / "config" / "rules.yaml").read_text().replace(
        "hot: {threshold: 70, rearm_below: 50}", "hot: {threshold: 65, rearm_below: 45}"))

    console.print("the conversion model: a planted history, leadscore model train ...")
    planted_events = training.generate(out / "planted.jsonl", args.train_leads)
    model = out / "model.json"
    results.update({"train_events": planted_events,
                    **training.measure(out / "planted.jsonl", model, args.runs)})

    runs, rebuilds, singles, takes, modelled = [], [], [], [], []
    for run in range(args.runs):
        with servers_with(messages) as (broker, redis):
            console.print(f"worker throughput, run {run + 1} of {args.runs} ...")
            runs.append(worker_throughput(broker, redis, "bench-events", run, args.events,
                                          out / "worker.log", prefix=args.take_events))
            console.print(f"rebuild under changed rules, run {run + 1} of {args.runs} ...")
            rebuilds.append(rebuild_throughput(broker, redis, "bench-events", run, args.events,
                                               out / "rebuild.log", changed))
            console.print(f"rebuild on one process, run {run + 1} of {args.runs} ...")
            singles.append(rebuild_throughput(broker, redis, "bench-events", run, args.events,
                                              out / "rebuild.log", again, processes=1))
            if run == args.runs - 1:
                per_lead = redis_bytes_per_lead(redis, runs[-1]["prefix"])
        with servers_with(messages) as (broker, redis):
            console.print(f"worker serving the conversion model, run {run + 1} of "
                          f"{args.runs} ...")
            modelled.append(worker_throughput(broker, redis, "bench-events", run + 100,
                                              args.events, out / "worker.log",
                                              prefix=args.take_events, model=model))
        # The take agent right after each worker run: the machine's speed drifts over
        # minutes, so each ratio pairs two measurements taken close together.
        with servers_with(messages) as (broker, redis):
            console.print(f"baseline: Faust stream.take agent, {args.take_events:,} events, "
                          f"run {run + 1} of {args.runs} ...")
            takes.append(baseline("take", broker, redis, "bench-events", args.take_events))
    rebuild_rate = statistics.median(r["events_per_s"] for r in rebuilds)
    single_rate = statistics.median(r["events_per_s"] for r in singles)
    worker_rate = statistics.median(r["events_per_s"] for r in runs)
    prefix_rate = statistics.median(r["prefix_events_per_s"] for r in runs)
    results.update({
        "worker_events_per_s": round(worker_rate),
        "worker_runs": [round(r["events_per_s"]) for r in runs],
        "worker_prefix_events_per_s": round(prefix_rate), "take_events": args.take_events,
        "rebuild_events_per_s": round(rebuild_rate),
        "rebuild_runs": [round(r["events_per_s"]) for r in rebuilds],
        "x_rebuild": round(rebuild_rate / worker_rate, 2),
        "rebuild_processes": processes(Settings()),
        "rebuild_one_events_per_s": round(single_rate),
        "rebuild_one_runs": [round(r["events_per_s"]) for r in singles],
        "x_rebuild_one": round(single_rate / worker_rate, 2),
        "cutover_s": round(statistics.median(r["cutover_s"] for r in rebuilds), 2),
        "worker_peak_rss_mb": round(max(r["rss_mb"] for r in runs), 1),
        "redis_calls_per_event": round(statistics.median(
            r["redis_calls_per_event"] for r in runs), 4),
        **{f"redis_bytes_per_lead_{part}": round(size) for part, size in per_lead.items()}})

    with servers_with(messages) as (broker, redis):
        console.print(f"baseline: naive Faust agent, {args.naive_events:,} events ...")
        naive = baseline("naive", broker, redis, "bench-events", args.naive_events)
    ratios = [run["prefix_events_per_s"] / take for run, take in zip(runs, takes, strict=True)]
    with_model = [run["prefix_events_per_s"] / take
                  for run, take in zip(modelled, takes, strict=True)]
    results.update({"x_take_model": round(statistics.median(with_model), 2),
                    "x_take_model_runs": [round(ratio, 2) for ratio in with_model],
                    "worker_model_events_per_s": round(statistics.median(
                        r["events_per_s"] for r in modelled))})
    results.update({"naive_events_per_s": round(naive),
                    "take_events_per_s": round(statistics.median(takes)),
                    "take_runs": [round(take) for take in takes],
                    "x_naive": round(prefix_rate / naive, 2),
                    "x_take": round(statistics.median(ratios), 2),
                    "x_take_runs": [round(ratio, 2) for ratio in ratios]})

    with EmbeddedBroker() as broker, EmbeddedRedis() as redis:
        console.print(f"latency at {args.rate:,} events/s for {args.seconds} s ...")
        lat = asyncio.run(latency(broker, redis, args.rate, args.seconds, out / "live.log"))
        results.update({f"latency_{k}": round(v, 2) for k, v in lat.items()})
    with EmbeddedBroker() as broker:
        console.print(f"the broker alone at {args.rate:,} events/s for 21 s ...")
        floor = asyncio.run(broker_floor(broker.bootstrap, args.rate, 21))
        results.update({f"broker_hop_{k}": round(v, 2) for k, v in floor.items()})

    console.print("offline leadscore score ...")
    offline = measure_offline(mix, args.runs)
    results.update({"offline_events_per_s": offline["command_events_per_s"],
                    "offline_replay_events_per_s": offline["replay_events_per_s"],
                    "bench_seconds": round(time.perf_counter() - began)})
    _table(results)
    print(orjson.dumps(results).decode())


def _table(r: dict[str, Any]) -> None:
    table = Table(title=f"Leadscore bench: {r['events']:,} events, {r['leads']:,} leads, "
                  f"{r['machine']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("worker throughput (median)", f"{r['worker_events_per_s']:,} events/s"),
        ("  runs", ", ".join(f"{x:,}" for x in r["worker_runs"])),
        (f"rebuild under changed rules, {r['rebuild_processes']} processes (median)",
         f"{r['rebuild_events_per_s']:,} events/s, {r['x_rebuild']}x the worker"),
        ("  runs; cutover after the last event", ", ".join(
            f"{x:,}" for x in r["rebuild_runs"]) + f"; {r['cutover_s']} s"),
        ("rebuild on one process (median)", f"{r['rebuild_one_events_per_s']:,} events/s, "
                                            f"{r['x_rebuild_one']}x the worker"),
        ("  runs", ", ".join(f"{x:,}" for x in r["rebuild_one_runs"])),
        ("baseline: naive Faust agent", f"{r['naive_events_per_s']:,} events/s"),
        ("baseline: Faust stream.take agent (median)", f"{r['take_events_per_s']:,} events/s ("
         + ", ".join(f"{x:,}" for x in r["take_runs"]) + ")"),
        (f"  over the first {r['take_events']:,} events",
         f"{r['worker_prefix_events_per_s']:,} events/s"),
        ("worker / naive", f"{r['x_naive']}x"),
        ("worker / take (median of the runs' ratios)", f"{r['x_take']}x (" + ", ".join(
            f"{x}" for x in r["x_take_runs"]) + ")"),
        ("  serving the conversion model (LEADSCORE_MODEL)", f"{r['x_take_model']}x ("
         + ", ".join(f"{x}" for x in r["x_take_model_runs"]) + f"), worker "
         f"{r['worker_model_events_per_s']:,} events/s"),
        (f"leadscore model train, {r['train_events']:,} planted events (median)",
         f"{r['train_seconds']} s (" + ", ".join(f"{x}" for x in r["train_runs"])
         + f"), peak {r['train_peak_rss_mb']:,} MB"),
        ("  the model on its test set: AUC / the rules' AUC / calibration error",
         f"{r['model_auc']} / {r['model_rules_auc']} / {r['model_ece']}"),
        ("latency p50 / p99 / max",
         f"{r['latency_p50_ms']} / {r['latency_p99_ms']} / {r['latency_max_ms']} ms"),
        ("  at offered load", f"{r['latency_offered_events_per_s']:,.0f} events/s, "
                              f"{r['latency_samples']:,.0f} lead.hot samples"),
        ("  p99 in each quarter of the run", " / ".join(
            str(r[f"latency_p99_q{i}_ms"]) for i in range(1, 5)) + " ms"),
        ("  CPU in each quarter: broker, worker", " / ".join(
            str(r[f"latency_broker_cpu_q{i}"]) for i in range(1, 5)) + " %, " + " / ".join(
            str(r[f"latency_worker_cpu_q{i}"]) for i in range(1, 5)) + " % of a core"),
        ("  p99 event -> recorded / recorded -> read",
         f"{r['latency_in_p99_ms']} / {r['latency_out_p99_ms']} ms"),
        ("  the broker alone, one hop", f"{r['broker_hop_p50_ms']} / {r['broker_hop_p99_ms']} / "
                                        f"{r['broker_hop_max_ms']} ms (a lead.hot takes two)"),
        ("    p99, first / last 7 s", f"{r['broker_hop_first_third_p99_ms']} / "
                                       f"{r['broker_hop_last_third_p99_ms']} ms"),
        ("worker peak RSS", f"{r['worker_peak_rss_mb']} MB"),
        ("Redis memory per lead", f"state {r['redis_bytes_per_lead_state']} B, dedupe ids "
                                  f"{r['redis_bytes_per_lead_ids']} B, history "
                                  f"{r['redis_bytes_per_lead_history']} B, index "
                                  f"{r['redis_bytes_per_lead_index']} B, score groups' "
                                  f"index {r['redis_bytes_per_lead_group_index']} B"),
        ("Redis commands per event", str(r["redis_calls_per_event"])),
        ("offline leadscore score", f"{r['offline_events_per_s']:,} events/s"),
        ("bench took", f"{r['bench_seconds']} s"),
    ]
    for row in rows:
        table.add_row(*row)
    Console(width=110).print(table)


if __name__ == "__main__":
    main()
