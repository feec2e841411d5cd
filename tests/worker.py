"""Run ``leadscore worker`` as a real subprocess, and talk to the topics around it."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from helpers import RUN

from scoring.engine import LeadState
from scoring.rules import Ruleset
from streams.embedded import create_topics, free_port
from streams.runtime import connected
from streams.settings import Settings

LEADSCORE = str(Path(sys.executable).parent / "leadscore")
_runs = itertools.count()


class Deployment:
    """Topics, a Redis key prefix and a consumer group of its own, for one test."""

    def __init__(self, bootstrap: str, redis_url: str, rules_path: Path, tmp: Path,
                 partitions: int = 4, **settings: str) -> None:
        # Settings by field name: a LEADSCORE_ prefix here would be doubled, unnoticed.
        assert not [k for k in settings if k.upper().startswith("LEADSCORE_")], settings
        n = f"{RUN}-{next(_runs)}"  # (helpers.RUN: unique per test process)
        self.bootstrap, self.redis_url, self.tmp = bootstrap, redis_url, tmp
        self.partitions = partitions
        self.events, self.hot, self.dlq = f"t{n}-events", f"t{n}-hot", f"t{n}-dlq"
        self.awards = f"t{n}-awards"
        self.prefix = f"t{n}"
        self.env = {
            **os.environ,
            "LEADSCORE_BROKER": f"kafka://{bootstrap}", "LEADSCORE_REDIS_URL": redis_url,
            "LEADSCORE_RULES": str(rules_path), "LEADSCORE_TOPIC_EVENTS": self.events,
            "LEADSCORE_TOPIC_HOT": self.hot, "LEADSCORE_TOPIC_DLQ": self.dlq,
            "LEADSCORE_TOPIC_ACCOUNT_AWARDS": self.awards,
            "LEADSCORE_KEY_PREFIX": self.prefix, "LEADSCORE_GROUP_ID": f"t{n}-group",
            "LEADSCORE_BROKER_SESSION_TIMEOUT": "3", "LEADSCORE_WEB_HOST": "127.0.0.1",
            "LEADSCORE_SWEEP_INTERVAL": "3600", "LEADSCORE_OUTBOX_INTERVAL": "1",
            "LEADSCORE_BATCH_SIZE": "50",
            **{f"LEADSCORE_{k.upper()}": v for k, v in settings.items()},
        }
        self.workers: list[Worker] = []

    def kafka_options(self) -> dict[str, Any]:
        """aiokafka's security arguments for the workers' settings (TLS, SASL)."""
        return self.settings().kafka_options()

    async def create_topics(self) -> None:
        await create_topics(self.bootstrap, {self.events: self.partitions,
                                             self.hot: self.partitions, self.dlq: 1,
                                             self.awards: self.partitions},
                            security=self.kafka_options())

    def worker(self) -> Worker:
        worker = Worker(self.env, self.tmp / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.kill()

    async def produce(self, messages: list[tuple[bytes | None, bytes]],
                      partition: int | None = None) -> None:
        """Send to the events topic, by key or all to one ``partition``."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=False,
                                    acks="all", linger_ms=5, max_request_size=4 * 1024 * 1024,
                                    **self.kafka_options())
        await producer.start()
        try:
            sends = [await producer.send(self.events, value, key=key, partition=partition)
                     for key, value in messages]
            await asyncio.gather(*sends)
        finally:
            await producer.stop()

    def settings(self) -> Settings:
        """The workers' settings, as the workers read them from their environment."""
        return Settings(**{name[len("LEADSCORE_"):].lower(): value  # type: ignore[arg-type]
                           for name, value in self.env.items() if name.startswith("LEADSCORE_")})

    async def states(self, rules: Ruleset, leads: list[str]) -> dict[str, LeadState | None]:
        async with connected(self.settings(), rules) as runtime:
            loaded = {lead: await runtime.store.load(lead) for lead in leads}
        return {lead: (found[0] if found else None) for lead, found in loaded.items()}

    async def read_all(self, topic: str, until: Callable[[list[Any]], bool],
                       timeout: float = 90) -> list[Any]:
        """Every record of ``topic`` from the start, until ``until(records)`` holds."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    **self.kafka_options())
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            for _ in range(50):
                if partitions:
                    break
                await consumer.topics()  # refresh metadata until the topic is known
                partitions = consumer.partitions_for_topic(topic) or set()
            consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
            records: list[Any] = []
            deadline = time.monotonic() + timeout
            while not until(records):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{topic}: condition not met in {timeout}s; "
                                         f"{len(records)} records read")
                batch = await consumer.getmany(timeout_ms=500)
                for part in batch.values():
                    records.extend(part)
            return records
        finally:
            await consumer.stop()


class Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = dict(env, LEADSCORE_WEB_PORT=str(free_port()))
        self.port = int(self.env["LEADSCORE_WEB_PORT"])
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([LEADSCORE, "worker", "--loglevel", "info"],
                                            env=self.env, stdout=log, stderr=log)
        return self

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def metric(self, name: str) -> float:
        _, body = self.get("/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    async def wait_ready(self, timeout: float = 60) -> None:
        await wait_for(lambda: self.get("/readyz")[0] == 200, timeout,
                       f"worker not ready; log:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def wait_for(condition: Callable[[], bool | Awaitable[bool]], timeout: float,
                   message: str) -> None:
    """Poll a condition until it holds; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(0.1)  # polling interval of the condition above


def keyed(events: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    return [((e["lead_id"] if "lead_id" in e else e["account_id"]).encode(), orjson.dumps(e))
            for e in events]
