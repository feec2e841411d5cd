"""The worker's side of generations (docs/generations.md): how far its rebuild got, when
to cut over, and the clean-up of generations no longer kept.

Every second a worker whose generation is not active measures its lag behind the
active one, reports it (/readyz, the metrics, the registry for ``leadscore rules
status``), starts or stops its rebuild helpers by it (streams.rebuilders), and, once
the lag is under two rebuild batches with no helper left, tries the cutover
(scoring.store.generations.Cutover), whose notifications it then sends. A worker of
the active generation deletes, every minute, the generations that stopped being
active, and have had no live worker, for longer than LEADSCORE_GENERATION_KEEP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from scoring.errors import Superseded
from scoring.rules import Ruleset
from scoring.store import RedisStore
from scoring.store.commit import fenced_generations
from scoring.store.generations import (
    Cutover,
    active_generation,
    delete_generation,
    heartbeat,
    lag,
    registry,
)
from streams import metrics
from streams.delivery import Delivery
from streams.health import Health
from streams.rebuilders import Helpers
from streams.runtime import now_ms
from streams.settings import Settings

__all__ = ["Rebuild"]

log = logging.getLogger("leadscore")
CHECK_SECONDS = 0.05  # between catch-up checks while a cutover holds the fence
SAY_SECONDS = 5.0  # between log lines of a rebuild's progress


class Rebuild:
    """One per worker: its generation's progress, cutover and clean-up."""

    def __init__(self, settings: Settings, store: RedisStore, delivery: Delivery,
                 health: Health, accounts: RedisStore | None = None) -> None:
        self.settings, self.store, self.delivery, self.health = settings, store, delivery, health
        self.accounts = accounts  # the generation's accounts (SPEC 11), if any
        self.status: str | None = None  # "rebuilding: ..." while not active
        self._sample: tuple[float, int] | None = None  # (monotonic s, events applied)
        self.rate = 0.0
        self._said = 0.0  # when the progress was last logged
        self._cutover: asyncio.Task[None] | None = None
        self.helpers = Helpers(settings, store.rules)

    def problems(self) -> list[str]:
        """Why this worker is not ready (its generation is not active, or is rebuilding
        after Redis lost it), for /readyz."""
        store = self.store
        if self.health.lost is not None:
            return []
        if store.replay_until:
            until = ", ".join(f"{p}: {o}" for p, o in sorted(store.replay_until.items()))
            return [f"rebuilding after Redis lost the data: replaying the events topic, "
                    f"sending nothing up to the offsets consumed before (partition: offset "
                    f"{until})"]
        if store.active:
            # Active from the last shard's flip; ready once this worker's cutover is done
            # (its rescore notifications sent, counted): a rolling update then retires the
            # old pods only after the cutover's notifications have left.
            if self._cutover is not None and not self._cutover.done():
                return ["cutting over: sending the notifications of the leads whose hot "
                        "flag changed"]
            return []
        return [self.status or "rebuilding: starting"]

    async def tick(self) -> None:
        """Measure, report, and cut over when caught up."""
        store = self.store
        if self.health.lost is not None or not store.opened:
            return
        generation = store.generation
        if store.replay_until:
            await store.read_replay()  # (other workers' partitions pass too)
        if store.active:
            await self.helpers.stop()  # (none left, but after a cutover by another worker)
            # An idle worker makes no commit that would tell it of a cutover: look. (Its
            # next commit is refused: the consume loop stops then.)
            values = await store.active_values()
            if any(v not in ("", generation) and fenced_generations(v) is None
                   for v in values):
                self.health.stop_scoring(Superseded(await store.superseded()))
                return
            if all(v == generation for v in values):
                await self._finish_cutover()
            metrics.GENERATION_ACTIVE.set(1)
            self.status = None
            await heartbeat(store, now_ms())
            return
        metrics.GENERATION_ACTIVE.set(0)
        active = await active_generation(store.redis, store.keys.prefix)
        if active is None or active == generation:
            await store.refresh_active()  # (a cutover by another worker of ours)
            return
        behind = await lag(store, active)
        self._measure(behind.applied)
        share = 100.0 * behind.applied / behind.target if behind.target else 100.0
        left = f", about {behind.behind / self.rate:.0f} s left" if self.rate > 0 else ""
        helpers = len(self.helpers.running)
        on = f" on {1 + helpers} processes" if helpers else ""
        self.status = (f"rebuilding{on}: {behind.applied} of {behind.target} events "
                       f"({share:.1f}%) under rules {generation}; generation {active} is "
                       f"active{left}")
        if time.monotonic() - self._said >= SAY_SECONDS:
            self._said = time.monotonic()
            log.warning("leadscore: %s", self.status)
        metrics.REBUILD_APPLIED.set(behind.applied)
        metrics.REBUILD_TARGET.set(behind.target)
        await heartbeat(store, now_ms(), {"applied": behind.applied, "target": behind.target,
                                          "behind": behind.behind, "rate": round(self.rate)})
        if await self.helpers.adjust(behind.behind, self.rate):
            return  # (their partitions come back to this worker first)
        if behind.behind > 2 * self.settings.rebuild_batch_size or self.helpers.running:
            return
        old = next((g for g in await registry(store.redis, store.keys.prefix)
                    if g.version == active), None)
        if old is None or not old.rules:
            log.error("leadscore: generation %s has no rules in the registry; cannot cut "
                      "over to %s", active, generation)
            return
        if self._cutover is None or self._cutover.done():  # (it may outlast a tick)
            self._cutover = asyncio.create_task(self.health.safely(
                "cutover", lambda: self._cut_over(active, old.ruleset())))

    async def _cut_over(self, active: str, old_rules: Ruleset) -> None:
        done = await Cutover(self.store, active, old_rules, now_ms, self.accounts).run(
            lambda: asyncio.sleep(CHECK_SECONDS))
        if done is None:
            return
        store, generation = self.store, self.store.generation
        _, entries = done
        await self._drain(active)  # (OLD's first: they came before)
        await self.delivery.deliver(entries)
        metrics.CUTOVERS.inc()
        metrics.RESCORES.inc(len(entries))
        self.status = None
        log.warning("leadscore: cutover: rules %s (%s) active in place of %s; %d "
                    "notifications for leads whose hot flag changed", generation,
                    store.rules.name, active, len(entries))

    async def _finish_cutover(self) -> None:
        """Active in every shard while the deployment still names another generation: a
        cutover whose worker died after its last flip (or this worker's, whose send
        failed). Finish it: name this generation, and send what the old one left in its
        outbox."""
        store = self.store
        before = await active_generation(store.redis, store.keys.prefix)
        if before is None or before == store.generation:
            return
        at = now_ms()
        pipe: Any = store.redis.pipeline(transaction=False)
        pipe.set(store.keys.active, store.generation)
        pipe.hsetnx(store.keys.generations, f"{store.generation}:activated_at", at)
        pipe.hsetnx(store.keys.generations, f"{before}:deactivated_at", at)
        await pipe.execute()
        await self._drain(before)

    async def _drain(self, old_generation: str) -> None:
        """Send what the old generation recorded while it was active but had not sent (a
        worker of it killed before its outbox re-send); nobody else would. A repeat, if
        one of its workers sends it too, has the same id and bytes."""
        old = self.store.sibling(old_generation)
        left = await old.pending()
        if left:
            await self.delivery.deliver(left)
            await old.delivered(left, publish=False)

    def _measure(self, applied: int) -> None:
        now = time.monotonic()
        if self._sample is not None and now > self._sample[0]:
            rate = (applied - self._sample[1]) / (now - self._sample[0])
            self.rate = rate if self.rate == 0 else 0.7 * self.rate + 0.3 * rate
        self._sample = (now, applied)

    async def clean(self) -> None:
        """Delete the generations kept past LEADSCORE_GENERATION_KEEP (by the active
        generation's workers only: one that is rebuilding may be rolled back to)."""
        store = self.store
        if not store.active or self.health.lost is not None:
            return
        keep_ms = int(self.settings.generation_keep * 1000)
        now = now_ms()
        for generation in await registry(store.redis, store.keys.prefix):
            if generation.active or generation.version == store.generation:
                continue
            if now - generation.last_seen > keep_ms:
                deleted = await delete_generation(store.redis, store.keys.prefix,
                                                  generation.version)
                metrics.GENERATIONS_DELETED.inc()
                log.warning("leadscore: deleted generation %s (rules %r): not active for "
                            "over %s s, %d keys", generation.version, generation.name,
                            self.settings.generation_keep, deleted)
