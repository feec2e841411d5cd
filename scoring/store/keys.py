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

Every rules version has its own keyspace, a *generation* (docs/generations.md), under
``<prefix>:<rules_version>``, written <gen> below. Shard n of every generation carries
the same hash tag ``{n}``, so a generation's shard and the deployment's ``active`` key
of that shard share a slot: the commit script checks, in the same atomic step as its
writes, which generation is active there.

    <gen>:{n}:state:<lead_id>       the lead's state but its ids, + offsets applied, updated_at:
                                    a compact JSON array (scoring.store.record)
    <gen>:{n}:ids:<lead_id>         ZSET event id -> T when applied (dedupe_window of them)
    <gen>:{n}:history:<lead_id>     LIST of the last changes, newest first (scoring.history)
    <gen>:{n}:outbox                ZSET notification JSON -> ms it was recorded
    <gen>:{n}:cooling               ZSET lead_id -> event time (ms) it cools by decay
    <gen>:{n}:rank:<group>:<F>      ZSET lead_id -> -(rank key), per group (stage:<s>, hot)
                                    and fit score F (see scoring.store.ranking)
    <gen>:{n}:gall:<group id>       ZSET lead_id -> -(rank key of the group's engagement):
                                    the leads a score group's rules have awarded points
    <gen>:{n}:ghot:<group id>       ZSET the same, of the leads hot for the group (SPEC 10)
    <gen>:{n}:rank:fits             SET of the fit scores F that have rankings in the shard
    <gen>:{n}:progress              HASH partition -> next offset: every event of the shard's
                                    leads below it is applied (written by each COMMIT)
    <gen>:{n}:marker                a random token: the shard's data exists; every COMMIT
                                    checks it is the one its store found, so a Redis
                                    emptied under a running worker is noticed, also once
                                    another worker wrote a new marker
    <gen>:accounts:topic_produced   HASH partition of the account topic -> next offset after
    <gen>:accounts:topic_consumed   what the lead side sent / the account side applied
    <gen>:replay_until              HASH partition -> offset: a generation rebuilding after
                                    Redis lost it sends nothing for events below these
    <gen>:accounts:{n}:...          the same keys for the generation's accounts (SPEC 11;
                                    an account's state as a lead's, by account id), in
                                    the same slots: the account side's commits check the
                                    same active keys
    <prefix>:{n}:active             the rules_version active in shard n, or
                                    "fence:<deadline ms>:<old>:<new>" during a cutover
    <prefix>:active                 the rules_version active everywhere (for readers)
    <prefix>:generations            HASH rules_version -> JSON: its rules file, when it was
                                    created, activated, deactivated, its rebuild progress
    <prefix>:cutover                a lock: the worker running a cutover
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
    tag: str  # "<prefix>:<generation>:{<n>}"
    deployment: str  # "<prefix>"

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

    @property
    def progress(self) -> str:
        return f"{self.tag}:progress"

    @property
    def active(self) -> str:
        """The deployment's key naming the generation active in this shard (same slot)."""
        return f"{self.deployment}:{{{self.number}}}:active"

    def state(self, lead_id: str) -> str:
        return f"{self.tag}:state:{lead_id}"

    def ids(self, lead_id: str) -> str:
        """Apart from the state, so that a batch reads and writes only its own event
        ids, not a busy lead's whole history of them."""
        return f"{self.tag}:ids:{lead_id}"

    def history(self, lead_id: str) -> str:
        return f"{self.tag}:history:{lead_id}"

    def group_rank(self, group_id: str, hot: bool = False) -> str:
        """A score group's ranking (SPEC 10): the leads its rules have awarded points
        (``gall``), or those hot for it (``ghot``), by the group's decayed engagement."""
        return f"{self.tag}:{'ghot' if hot else 'gall'}:{group_id}"

    def rank(self, group: str, fit: float | str) -> str:
        return f"{self.tag}:rank:{group}:{fit!r}" if isinstance(fit, float) else \
            f"{self.tag}:rank:{group}:{fit}"


def layout_key(prefix: str) -> str:
    """Where the shard count of the data under ``prefix`` is recorded."""
    return f"{prefix}:layout"


def generations_key(prefix: str) -> str:
    """The registry of the generations under ``prefix``."""
    return f"{prefix}:generations"


def active_key(prefix: str) -> str:
    """The rules_version active in every shard (readers look here)."""
    return f"{prefix}:active"


class Layout:
    """The shards of one generation (``generation``, a rules_version) of a key prefix: of
    its leads, or (``part`` "accounts") of its accounts."""

    def __init__(self, prefix: str, shards: int, generation: str, part: str = "") -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        self.prefix = prefix
        self.generation = generation
        self.part = part
        # Every key of the generation's part starts so.
        self.root = f"{prefix}:{generation}:{part}" if part else f"{prefix}:{generation}"
        self.shards = [Shard(n, f"{self.root}:{{{n}}}", prefix) for n in range(shards)]
        self.layout_key = layout_key(prefix)
        self.generations = generations_key(prefix)
        self.active = active_key(prefix)
        self.cutover_lock = f"{prefix}:cutover"
        self.replay_until = f"{self.root}:replay_until"
        # An account side's (SPEC 11): how far the account topic was sent and applied.
        self.produced = f"{self.root}:topic_produced"
        self.consumed = f"{self.root}:topic_consumed"
        self.channel = f"{prefix}:notifications"
        self.dead_letters = f"{prefix}:deadletters"

    def of_generation(self, generation: str) -> Layout:
        """The same shards, in another generation's keyspace."""
        return Layout(self.prefix, len(self.shards), generation, self.part)

    def of(self, lead_id: str) -> Shard:
        """The shard of a lead: stable across processes and restarts."""
        if len(self.shards) == 1:
            return self.shards[0]
        return self.shards[zlib.crc32(lead_id.encode()) % len(self.shards)]
