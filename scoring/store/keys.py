"""Where everything lives in Redis: the key layout, in shards.

A *shard* is the unit of atomicity: every key of a shard carries the same Redis
Cluster hash tag ``{<n>}``, so one transaction (and one Lua script) may touch any
of them, also on a Redis Cluster, where a transaction must stay in one slot. A
lead belongs to shard ``crc32(lead_id) % shards``; its state, ids and history sit
beside its shard's outbox, cooling index and rankings, so that a lead's change and
the notifications and index entries it causes land together.

A batch is committed per shard, the shards concurrently. A single Redis gets 4 by
default (the worker applies one shard's events while Redis commits another's); a
cluster wants several per master (the default there is 32), so that shards, and
the load, spread over the masters. The count is fixed for the life of the data
(``<prefix>:layout`` records it): changing it would move every lead.

    <prefix>:{n}:state:<lead_id>    the lead's state but its ids, + offsets applied, updated_at:
                                    a compact JSON array (scoring.store.record)
    <prefix>:{n}:ids:<lead_id>      ZSET event id -> T when applied (dedupe_window of them)
    <prefix>:{n}:history:<lead_id>  LIST of the last changes, newest first (scoring.history)
    <prefix>:{n}:outbox             ZSET notification JSON -> ms it was recorded
    <prefix>:{n}:cooling            ZSET lead_id -> event time (ms) it cools by decay
    <prefix>:{n}:rank:<group>:<F>   ZSET lead_id -> -(rank key), per group (stage:<s>, hot)
                                    and fit score F (see scoring.store.ranking)
    <prefix>:{n}:rank:fits          SET of the fit scores F that have rankings in the shard
    <prefix>:{n}:marker             "1": the shard's data exists; every COMMIT checks it, so
                                    a Redis emptied under a running worker is noticed
    <prefix>:layout                 JSON {"shards": n}, written once
    <prefix>:deadletters            ZSET "<topic>:<partition>:<offset>" -> wall ms it was
                                    dead-lettered, so that a message is dead-lettered once
    <prefix>:notifications          pub/sub channel: every notification once it is sent
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

PREFIX = "ls"  # of every key, unless LEADSCORE_KEY_PREFIX says otherwise


@dataclass(frozen=True, slots=True)
class Shard:
    """The keys of one shard."""

    number: int
    tag: str  # "<prefix>:{<n>}"

    @property
    def outbox(self) -> str:
        return f"{self.tag}:outbox"

    @property
    def cooling(self) -> str:
        return f"{self.tag}:cooling"

    @property
    def fits(self) -> str:
        return f"{self.tag}:rank:fits"

    @property
    def marker(self) -> str:
        return f"{self.tag}:marker"

    def state(self, lead_id: str) -> str:
        return f"{self.tag}:state:{lead_id}"

    def ids(self, lead_id: str) -> str:
        """Apart from the state, so that a batch reads and writes only its own event
        ids, not a busy lead's whole history of them."""
        return f"{self.tag}:ids:{lead_id}"

    def history(self, lead_id: str) -> str:
        return f"{self.tag}:history:{lead_id}"

    def rank(self, group: str, fit: float | str) -> str:
        return f"{self.tag}:rank:{group}:{fit!r}" if isinstance(fit, float) else \
            f"{self.tag}:rank:{group}:{fit}"


def layout_key(prefix: str) -> str:
    """Where the shard count of the data under ``prefix`` is recorded."""
    return f"{prefix}:layout"


class Layout:
    """The shards of one key prefix."""

    def __init__(self, prefix: str, shards: int) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.prefix = prefix
        self.shards = [Shard(n, f"{prefix}:{{{n}}}") for n in range(shards)]
        self.layout_key = layout_key(prefix)
        self.channel = f"{prefix}:notifications"
        self.dead_letters = f"{prefix}:deadletters"

    def of(self, lead_id: str) -> Shard:
        """The shard of a lead: stable across processes and restarts."""
        if len(self.shards) == 1:
            return self.shards[0]
        return self.shards[zlib.crc32(lead_id.encode()) % len(self.shards)]
