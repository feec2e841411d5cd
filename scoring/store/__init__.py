"""Where lead state lives: one way of applying a batch, two places to keep it.

    batch.apply_batch      the engine's apply over a batch: replays, duplicates, refusals,
                           history (what every store runs)
    in_redis.RedisStore    Redis or Redis Cluster, atomic per shard: the worker
      keys, record,        its key layout, state record, commit script and lead index
      commit, ranking,
      queries
    in_memory.MemoryStore  a dict: ``leadscore score`` and the tests

Both offer ``apply``, ``sweep``, ``load``, ``exists``, ``history``, ``top``, ``bands``
and ``forget`` with the same meaning, so that offline and streaming differ only in where
the state lives; the outbox, dead letters and layout are Redis's alone.
"""

from scoring.store.batch import Lead, Outcome, PartlyApplied, apply_batch
from scoring.store.in_memory import MemoryStore
from scoring.store.in_redis import RedisStore
from scoring.store.keys import Layout

__all__ = ["Layout", "Lead", "MemoryStore", "Outcome", "PartlyApplied", "RedisStore",
           "apply_batch"]
