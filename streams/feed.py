"""The live feed behind the dashboard: notifications from Redis pub/sub to browsers.

Every worker publishes each notification it has sent (``RedisStore.delivered``), so
a dashboard served by any one worker sees the leads of all partitions. One
subscription per process fans out to every open page; a page that cannot keep up
loses its oldest messages, never blocks the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from redis.asyncio import Redis

__all__ = ["Feed"]

log = logging.getLogger("leadscore")
QUEUE_SIZE = 256
RETRY_SECONDS = 1.0

Queue = asyncio.Queue[bytes | None]  # None: the feed is closing


class Feed:
    """Fans one Redis channel out to any number of listeners, while any are listening."""

    def __init__(self, redis: Redis, channel: str) -> None:
        self.redis = redis
        self.channel = channel
        self.listeners: set[Queue] = set()
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def subscription(self) -> Iterator[Queue]:
        """A queue of raw notification JSON, for as long as the ``with`` lasts."""
        queue: Queue = asyncio.Queue(QUEUE_SIZE)
        self.listeners.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._pump())
        try:
            yield queue
        finally:
            self.listeners.discard(queue)

    async def close(self) -> None:
        """Stop the subscription and tell every listener to finish."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for queue in self.listeners:
            _offer(queue, None)

    async def _pump(self) -> None:
        while self.listeners:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    while self.listeners:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message["type"] == "message":
                            for queue in self.listeners:
                                _offer(queue, message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: the pages wait, we reconnect
                log.warning("leadscore: live feed lost Redis (%s); reconnecting", exc)
                await asyncio.sleep(RETRY_SECONDS)  # back-off before reconnecting


def _offer(queue: Queue, item: bytes | None) -> None:
    if queue.full():
        queue.get_nowait()  # a slow page loses its oldest message
    queue.put_nowait(item)
