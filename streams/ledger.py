"""What each destination of ``leadscore notify`` has had, in Redis, for a window.

    <prefix>:notify:<destination>:lead:<lead_id>     ZSET notification_id -> ms delivered,
    <prefix>:notify:<destination>:account:<id>       trimmed to LEADSCORE_NOTIFY_DEDUPE_WINDOW

Only deliveries (2xx answers) are recorded, by one script after the answer; a
notification recorded here is a repeat for that destination. Leads and accounts have
keys of their own, since their notification ids may coincide (``lead-1:3`` of the lead
``lead-1`` and of an account named ``lead-1``). A lead's tombstone deletes its keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from streams.runtime import now_ms

__all__ = ["Ledger"]

# ZADD the delivery, trim what is older than the window, keep the key as long.
_RECORD = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], window)
"""


class Ledger:
    """Which notifications each destination has had (answered 2xx), per lead or account,
    for ``window`` seconds."""

    def __init__(self, redis: Any, prefix: str, window: float) -> None:
        self.redis, self.prefix, self.window_ms = redis, prefix, int(window * 1000)

    def key(self, destination: str, note: Mapping[str, Any]) -> str:
        kind = "account" if str(note.get("type", "")).startswith("account.") else "lead"
        subject = note.get("account_id" if kind == "account" else "lead_id")
        if not isinstance(subject, str):
            subject = str(note["notification_id"]).rpartition(":")[0]
        return self.lead_key(destination, subject, kind)

    def lead_key(self, destination: str, subject: str, kind: str = "lead") -> str:
        return f"{self.prefix}:notify:{destination}:{kind}:{subject}"

    async def had(self, key: str, notification_id: str) -> bool:
        when = await self.redis.zscore(key, notification_id)
        return when is not None and when >= now_ms() - self.window_ms

    async def record(self, key: str, notification_id: str) -> None:
        await self.redis.eval(_RECORD, 1, key, now_ms(), notification_id, self.window_ms)

    async def forget(self, keys: Iterable[str]) -> None:
        for key in keys:  # one at a time: on a Redis Cluster they live in different slots
            await self.redis.delete(key)
