"""Rebuild helpers: a rebuild on every core (docs/generations.md, "A rebuild on every core").

A rebuild is the consume loop with nothing to send, so one process is bound by one
core's Python while the machine's others wait. A worker whose generation is far behind
the active one (more than START_BATCHES rebuild batches) therefore starts
LEADSCORE_REBUILD_PROCESSES - 1 helpers. Each helper is that consume loop alone (no web
server, no timers) in the generation's consumer group: the broker splits the partitions
between the worker and its helpers, and each commits its leads through the same store
and the same COMMIT checks as the worker, so the result is the one a single process
would reach (a lead's events all come from one partition, read by one member at a time;
a rebalance is a replay the store recognises by offset).

Helpers never score live, never claim a generation active, and send nothing. The
worker stops them a broker session timeout before the end at the rebuild's rate (a helper
commits its offsets and leaves the group on SIGTERM) and finishes the tail and the
cutover alone, so that a generation goes live on the deployment's own workers. A helper
whose generation became active all the same (another worker cut over) stops at its next
commit without writing, and one dies with its worker (PR_SET_PDEATHSIG; no helpers where
that signal does not exist).

    python -m streams.rebuilders    a helper; reads its settings and rules as JSON on stdin
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import uvloop
from pydantic import SecretStr

from scoring.rules import Ruleset, parse_rules
from streams import metrics
from streams.consume import EventsConsumer
from streams.delivery import Delivery
from streams.embedded import die_with_parent_fn
from streams.health import Health
from streams.runtime import connected
from streams.settings import Settings

__all__ = ["Helpers", "processes"]

log = logging.getLogger("leadscore")
START_BATCHES = 10  # helpers start only for a rebuild longer than this many batches
LEAVE_BATCHES = 4  # and leave within this many of the end (the cutover waits for 2), or
# LEADSCORE_BROKER_SESSION_TIMEOUT before it at the rebuild's rate, whichever is more: the
# time the group may take to hand their partitions back to the worker
MAX_AUTO = 8
# How long a helper may take to stop (commit, leave the group) before it is killed: a
# commit or a leave waits for a rebalance in progress, and what a killed helper had not
# committed is only replayed.
STOP_SECONDS = 5.0


def processes(settings: Settings) -> int:
    """How many processes a rebuild runs on, the worker included: one where a helper
    would not die with its worker (no PR_SET_PDEATHSIG outside Linux)."""
    if die_with_parent_fn() is None:
        return 1
    if settings.rebuild_processes:
        return settings.rebuild_processes
    return min(len(os.sched_getaffinity(0)), MAX_AUTO)


class Helpers:
    """The rebuild helpers of one worker: started when its rebuild is long, stopped
    near its end, at the worker's stop (``close``), or when the generation is active."""

    def __init__(self, settings: Settings, rules: Ruleset) -> None:
        self.settings, self.rules = settings, rules
        self.started = False  # once per worker: a helper that died is not replaced
        self.closed = False  # the worker is stopping: no helper starts any more
        self._helpers: list[asyncio.subprocess.Process] = []

    @property
    def running(self) -> list[asyncio.subprocess.Process]:
        """The helpers still alive."""
        return [helper for helper in self._helpers if helper.returncode is None]

    async def adjust(self, behind: int, rate: float) -> bool:
        """Start the helpers or stop them, by how many events the rebuild is behind and
        its rate (events/s); whether it stopped them. They leave a session timeout before
        the end at that rate (at least LEAVE_BATCHES batches before it), so that this
        worker owns their partitions again before it tries the cutover."""
        batch = self.settings.rebuild_batch_size
        if not self.started and behind > START_BATCHES * batch:
            await self.start(processes(self.settings) - 1)
        elif self.running and behind <= max(LEAVE_BATCHES * batch,
                                            rate * self.settings.broker_session_timeout):
            await self.stop()
            return True
        return False

    async def start(self, count: int) -> None:
        self.started = True
        if count < 1 or self.closed:
            return
        job = orjson.dumps({"settings": _settings_doc(self.settings),
                            "rules": self.rules.text.decode(),
                            "source": f"the rules of generation {self.rules.version}"})
        for _ in range(count):
            helper = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "streams.rebuilders", stdin=asyncio.subprocess.PIPE,
                preexec_fn=die_with_parent_fn())
            self._helpers.append(helper)  # (before any await: a stop now stops it too)
            assert helper.stdin is not None
            helper.stdin.write(job)
            await helper.stdin.drain()
            helper.stdin.close()
        metrics.REBUILD_PROCESSES.set(1 + count)
        log.warning("leadscore: rebuilding on %d processes (LEADSCORE_REBUILD_PROCESSES)",
                    1 + count)

    async def stop(self) -> None:
        """Stop every helper; each commits its offsets and leaves the consumer group (one
        that takes longer than STOP_SECONDS is killed: a replay is harmless)."""
        helpers, self._helpers = self._helpers, []
        for helper in helpers:
            if helper.returncode is None:
                helper.terminate()
        for helper in helpers:
            try:
                await asyncio.wait_for(helper.wait(), _stop_seconds(self.settings))
            except TimeoutError:
                helper.kill()
                await helper.wait()
        if helpers:
            metrics.REBUILD_PROCESSES.set(1)
            log.warning("leadscore: rebuild helpers stopped; this worker finishes the rebuild")

    async def close(self) -> None:
        """The worker stops: stop the helpers, and start none after."""
        self.closed = True
        await self.stop()


def _stop_seconds(settings: Settings) -> float:
    return min(STOP_SECONDS, settings.stop_timeout)


_NOT_FOR_HELPERS = ("api_token", "admin_token")  # a helper serves no HTTP


def _settings_doc(settings: Settings) -> dict[str, Any]:
    """The settings a helper needs, as JSON values, secrets included (they reach it on a
    pipe, never the command line)."""
    doc: dict[str, Any] = {}
    for name, value in settings:
        if name in _NOT_FOR_HELPERS:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, Path):
            value = str(value)
        doc[name] = value
    return doc


async def _help(settings: Settings, rules: Ruleset) -> None:
    """Rebuild the generation's share of partitions the broker gives this process, until
    stopped, or until the generation is active or replaced (``Superseded``)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    def stop() -> None:
        task.cancel()
        # The consumer's stop waits for the broker: with the broker out of reach (its
        # worker killed during an outage), leave anyway; a replay is harmless.
        loop.call_later(_stop_seconds(settings), os._exit, 1)
    for sign in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sign, stop)
    async with connected(settings, rules) as runtime:
        store = runtime.store
        store.rebuild_only = True
        health = Health(settings.stall_seconds)
        consumer = EventsConsumer(runtime.settings, store,
                                  Delivery(runtime.settings, store, health), health)
        with contextlib.suppress(asyncio.CancelledError):
            await consumer.run()  # (stops the consumer: offsets committed, group left)


def main() -> None:
    job = orjson.loads(sys.stdin.buffer.read())
    settings = Settings.model_validate(job["settings"])
    rules = parse_rules(job["rules"].encode(), job["source"])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s rebuild helper "
                        f"{os.getpid()}: %(message)s")
    uvloop.run(_help(settings, rules))


if __name__ == "__main__":
    main()
