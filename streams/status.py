"""``leadscore rules status [--watch]``: the generations of a deployment, read from Redis.

For each generation: its rules version and name, whether it is active, rebuilding (a
worker of it reported in the last few seconds) or only kept (until when), the events
it applied against the active generation's, per partition, its rate and the time left.
``--watch`` redraws it every second with a progress bar per rebuild, until no
generation is rebuilding.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from scoring.events import format_ts
from scoring.rules import load_rules
from scoring.store.generations import Generation, partition_lag, registry
from streams.connect import redis_client, settled_store
from streams.runtime import now_ms
from streams.settings import Settings

__all__ = ["show_status"]

ALIVE_MS = 10_000  # a generation whose workers reported this recently is rebuilding


async def show_status(settings: Settings, watch: bool) -> int:
    console = Console()
    async with redis_client(settings) as redis:
        settings, store = await settled_store(settings, load_rules(settings.rules_path()), redis)
        view = await _view(redis, settings, store)
        if not watch or not view[1]:
            console.print(view[0])
            return 0
        with Live(view[0], console=console, refresh_per_second=2) as live:
            while view[1]:
                await asyncio.sleep(1.0)  # the refresh period of the display
                view = await _view(redis, settings, store)
                live.update(view[0])
    return 0


async def _view(redis: Any, settings: Settings, store: Any) -> tuple[Any, bool]:
    """(what to print, whether a generation is rebuilding)."""
    generations = await registry(redis, settings.key_prefix)
    now = now_ms()
    memory = (await redis.info("memory")).get("used_memory_human", "?")
    table = Table(title=f"Generations under the prefix {settings.key_prefix!r} "
                        f"(Redis uses {memory})")
    for column in ("rules_version", "name", "state", "events applied", "lag per partition",
                   "rate", "time left"):
        table.add_column(column)
    active = next((g for g in generations if g.active), None)
    bars = Progress(TextColumn("{task.description}"), BarColumn(),
                    TextColumn("{task.completed:,.0f} of {task.total:,.0f} events"))
    rebuilding = False
    for generation in generations:
        state, lags = _state(generation, now, settings), ""
        if active is not None and generation is not active:
            mine = await store.progress(generation.version)
            theirs = await store.progress(active.version)
            lags = ", ".join(f"{p}: {n}" for p, n in sorted(partition_lag(mine, theirs).items()))
        progress = generation.progress
        rate = progress.get("rate", 0) if state == "rebuilding" else 0
        applied, target = progress.get("applied"), progress.get("target")
        left = f"{progress.get('behind', 0) / rate:.0f} s" if rate else ""
        table.add_row(generation.version, generation.name, state,
                      "" if generation.active or applied is None else f"{applied} of {target}",
                      lags, f"{rate:,} events/s" if rate else "", left)
        if state == "rebuilding":
            rebuilding = True
            bars.add_task(f"rules {generation.version}", completed=applied or 0,
                          total=max(target or 0, 1))
    if not generations:
        table.caption = "no generation yet: no worker has started on this Redis"
    return (Group(table, bars) if rebuilding else table), rebuilding


def _state(generation: Generation, now: int, settings: Settings) -> str:
    if generation.active:
        return "active"
    if generation.seen_at is not None and now - generation.seen_at < ALIVE_MS and (
            generation.deactivated_at is None
            or generation.seen_at > generation.deactivated_at):
        return "rebuilding"
    return f"kept until {format_ts(generation.last_seen + int(settings.generation_keep * 1000))}"
