"""What a worker knows of its own health, for /readyz and the metrics.

Two things make it unready beyond Redis not answering: a partition whose batches keep
failing for ``stall_seconds`` (an outage being waited out, named with its error), and
a Redis that lost Leadscore's data (``DataLost``), which stops scoring for good until
someone restores Redis. Background work (the timers, the acknowledgements of sent
notifications) runs through ``safely``: a failure is logged and the next try goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from aiokafka.structs import TopicPartition

from scoring.errors import DataLost, Superseded

__all__ = ["Health"]

log = logging.getLogger("leadscore")


class Health:
    """One per worker process; written by the consume loop and the background jobs."""

    def __init__(self, stall_seconds: float) -> None:
        self.stall_seconds = stall_seconds
        self.lost: str | None = None  # why this worker stopped scoring (DataLost)
        # partition -> (monotonic time its batches started failing, the last failure)
        self.failing: dict[TopicPartition, tuple[float, str]] = {}

    def stop_scoring(self, exc: Exception) -> None:
        """Stop for good, loudly: /readyz says why until the worker is restarted (after
        Redis is restored, for ``DataLost``; any other exception is a bug to report)."""
        self.lost = str(exc) if isinstance(exc, DataLost | Superseded) else \
            f"the consume loop stopped ({type(exc).__name__}: {exc}); restart the worker"
        log.error("leadscore: %s", exc)

    def failed(self, partitions: Iterable[TopicPartition], exc: Exception) -> None:
        """A batch of these partitions failed: they are failing since their first failure."""
        failed_at, error = time.monotonic(), f"{type(exc).__name__}: {exc}"
        for tp in partitions:
            self.failing[tp] = (self.failing.get(tp, (failed_at, ""))[0], error)

    def progressed(self, partitions: Iterable[TopicPartition]) -> None:
        """These partitions moved on, or are no longer this worker's to report."""
        for tp in partitions:
            self.failing.pop(tp, None)

    def problems(self) -> list[str]:
        """Why this worker is not ready to score, beyond Redis answering and partitions
        being assigned."""
        problems = [] if self.lost is None else [self.lost]
        now = time.monotonic()
        for tp, (since, error) in sorted(self.failing.items()):
            if now - since >= self.stall_seconds:
                problems.append(f"partition {tp.topic}[{tp.partition}] has not progressed "
                                f"for {now - since:.0f} s ({error})")
        return problems

    def stalls(self) -> list[tuple[str, int, float]]:
        """(topic, partition, seconds) of each partition whose batches keep failing."""
        now = time.monotonic()
        return [(tp.topic, tp.partition, now - since)
                for tp, (since, _) in sorted(self.failing.items())]

    async def safely(self, name: str, job: Callable[[], Awaitable[None]]) -> None:
        """Run background work; a failure is logged and the next tick tries again."""
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Superseded as exc:
            self.stop_scoring(exc)
        except Exception as exc:  # (DataLost too: the consume loop rebuilds)
            log.error("leadscore: %s failed (%s: %s); next try in one interval",
                      name, type(exc).__name__, exc)
