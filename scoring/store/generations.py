"""Generations in Redis: the registry, the cutover and the clean-up (docs/generations.md).

A generation is the state of one rules version, in its own keyspace (scoring.store.keys).
The one active in a shard is named by the shard's ``active`` key, which every COMMIT
reads in the same atomic step as its writes. A cutover from the active generation OLD
to NEW, run by one worker of NEW at a time (the ``cutover`` lock):

1. fence every shard: OLD's live commits wait (COMMIT answers -2) until the fence's
   deadline, renewed at each step below, so OLD's progress freezes;
2. wait until NEW has applied, in every shard, every event OLD applied (the
   progress hashes, written by the same COMMITs as the states they count);
3. close the fences: NEW's own rebuilding commits wait too, but the cutover's;
4. carry every lead's notification counter over (ids stay unique per lead);
5. per shard, one COMMIT that re-checks the fence and OLD's progress, writes NEW's
   leads whose hot flag at the cutover instant X differs from OLD's with their
   ``cause: "rescore"`` notification (and OLD's ``lead.cooled`` that was due but not
   sent) in the outbox, and makes NEW active there. With a conversion model (the
   store's ``explain``) each rescore carries the lead's ``p_convert`` at X; OLD's
   owed coolings do not (they are of OLD's rules, which NEW's model does not fit).

With accounts (SPEC 11), NEW's account store (``accounts``) takes part: at step 4 every
account's counter is carried over too, and after each shard's flip its accounts whose
hot flag at X differs get their ``account.hot`` / ``account.cooled`` with cause
``rescore``, recorded in the account outbox (sent by the account side's re-send). The
cutover also waits (step 2) until NEW's account side has applied every member award
and account event NEW's lead side has sent (``accounts_caught_up``).

A worker killed at any step leaves every shard either OLD's (its fence expires and
OLD goes on; nothing was sent by NEW) or NEW's (flipped with its notifications in the
outbox, re-sent from there): the next attempt skips the flipped shards and redoes the
others. OLD's workers learn of the cutover from their next commit (-3) and stop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from scoring import history
from scoring.engine import LeadState, Notification, cool, rescore
from scoring.errors import HandingOver
from scoring.rules import Ruleset, parse_rules
from scoring.store import record
from scoring.store.batch import Outcome
from scoring.store.commit import Stored, fence_value
from scoring.store.in_redis import RedisStore
from scoring.store.keys import Layout, Shard, active_key, generations_key
from scoring.store.queries import as_text
from scoring.views import explained

__all__ = ["Cutover", "Generation", "Lag", "active_generation", "delete_generation",
           "furthest", "heartbeat", "lag", "partition_lag", "registry"]

# A cutover holds OLD's commits for at most FENCE_MS past its last sign of life: the
# fence and the lock are renewed at each step, so a worker killed mid-way holds
# nothing for long, while a cutover of many leads may take as long as it needs.
FENCE_MS = 10_000
LOCK_MS = 15_000
CATCH_UP_MS = 8_000  # how long NEW may take to catch up with OLD's frozen progress
CHUNK = 500  # leads per commit when carrying counters over

# Fence a shard for a cutover from ARGV[1] to ARGV[3] (ARGV[2]: the fence): 1 fenced,
# 2 already NEW's, 0 someone else's (another generation became active meanwhile). A
# fence of an earlier attempt from OLD to NEW (whose worker died) is taken over.
FENCE = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[3] then return 2 end
if current == ARGV[1] or (current and string.match(current, '^%a+:%d+:' .. ARGV[1] ..
                                                  ':' .. ARGV[3] .. '$')) then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
# Set KEYS[1] to ARGV[2] if it is exactly ARGV[1] (renew a fence, close it, lift it):
# 1 when swapped, else 0.
SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
# Extend the lock (KEYS[1]) by ARGV[2] ms if ARGV[1] still holds it: 1, else 0.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


@dataclass(slots=True)
class Generation:
    """One generation as the registry knows it (times in wall ms)."""

    version: str
    name: str = ""
    rules: str = ""  # the rules file's text
    active: bool = False
    created_at: int | None = None
    activated_at: int | None = None
    deactivated_at: int | None = None
    seen_at: int | None = None  # the last heartbeat of one of its workers
    progress: dict[str, Any] = field(default_factory=dict)  # applied, target, rate

    @property
    def last_seen(self) -> int:
        """When it was last active, alive or created: its kept window starts there."""
        return max(self.seen_at or 0, self.deactivated_at or 0, self.created_at or 0)

    def ruleset(self) -> Ruleset:
        return parse_rules(self.rules.encode(), f"the rules of generation {self.version}")


async def registry(redis: Any, prefix: str) -> list[Generation]:
    """Every generation of the deployment, the active one first, then newest first."""
    raw = {as_text(k): v for k, v in (await redis.hgetall(generations_key(prefix))).items()}
    active = await active_generation(redis, prefix)
    found: dict[str, Generation] = {}
    for name, value in raw.items():
        version, _, part = name.partition(":")
        generation = found.setdefault(version, Generation(version, active=version == active))
        if not part:
            doc = orjson.loads(value)
            generation.rules, generation.name = doc.get("rules", ""), doc.get("name", "")
            generation.created_at = doc.get("created_at")
        elif part == "progress":
            generation.progress = orjson.loads(value)
        elif part in ("activated_at", "deactivated_at", "seen_at"):
            setattr(generation, part, int(value))
    return sorted(found.values(), key=lambda g: (not g.active, -(g.created_at or 0)))


async def active_generation(redis: Any, prefix: str) -> str | None:
    raw = await redis.get(active_key(prefix))
    return None if raw is None else as_text(raw)


async def heartbeat(store: RedisStore, now_ms: int,
                    progress: dict[str, Any] | None = None) -> None:
    """Say that a worker of the store's generation is alive (and, rebuilding, how far
    it got): the clean-up never deletes a generation with live workers."""
    keys, version = store.keys, store.generation
    pipe: Any = store.redis.pipeline(transaction=False)
    pipe.hset(keys.generations, f"{version}:seen_at", now_ms)
    if progress is not None:
        pipe.hset(keys.generations, f"{version}:progress", orjson.dumps(progress))
    await pipe.execute()


@dataclass(frozen=True, slots=True)
class Lag:
    """How far a generation is behind the active one."""

    applied: int  # events applied, summed over partitions
    target: int  # events the active generation applied
    behind: int  # events still to apply before the shards all caught up

    @property
    def caught_up(self) -> bool:
        return self.behind == 0


async def lag(store: RedisStore, active: str) -> Lag:
    """The store's generation against the active one, from their progress hashes. A
    partition's count is its next offset (the furthest any shard reached)."""
    mine, theirs = await store.progress(), await store.progress(active)
    gaps: dict[int, int] = {}  # partition -> the largest gap of any shard
    for own, other in zip(mine, theirs, strict=True):
        for partition, offset in other.items():
            gaps[partition] = max(gaps.get(partition, 0), offset - own.get(partition, 0))
    behind = sum(gaps.values())
    return Lag(sum(furthest(mine).values()), sum(furthest(theirs).values()), behind)


def furthest(progress: list[dict[int, int]]) -> dict[int, int]:
    """Partition -> the next offset of the shard that got furthest in it."""
    best: dict[int, int] = {}
    for one in progress:
        for partition, offset in one.items():
            best[partition] = max(best.get(partition, 0), offset)
    return best


def partition_lag(mine: list[dict[int, int]], theirs: list[dict[int, int]]) -> dict[int, int]:
    """Partition -> how far one generation is behind the other (furthest shards)."""
    own, other = furthest(mine), furthest(theirs)
    return {p: max(0, o - own.get(p, 0)) for p, o in other.items()}


class Cutover:
    """One attempt at making ``store``'s generation active in place of ``old``."""

    def __init__(self, store: RedisStore, old: str, old_rules: Ruleset,
                 now: Callable[[], int], accounts: RedisStore | None = None) -> None:
        self.store, self.old, self.old_rules, self.now = store, old, old_rules, now
        self.accounts = accounts  # NEW's account store (SPEC 11), if its rules have accounts
        self.old_keys: Layout = store.keys.of_generation(old)
        self.token = uuid.uuid4().hex
        self.fence = ""  # the fence this attempt set, as last renewed
        self.frozen: list[dict[int, int]] = []  # OLD's progress per shard, caught up with
        self.todo: list[Shard] = []  # the shards not flipped yet

    async def run(self, wait: Callable[[], Awaitable[None]]) -> tuple[int, list[bytes]] | None:
        """Cut over, or give the shards back to OLD and return None when NEW does not
        catch up in time. ``wait`` paces the catch-up checks. Returns the cutover
        instant and the outbox entries of the notifications it owes, for the caller to
        send."""
        store, redis, keys = self.store, self.store.redis, self.store.keys
        if not await redis.set(keys.cutover_lock, self.token, nx=True, px=LOCK_MS):
            return None  # another worker of a generation is cutting over
        self.fence = fence_value(self.now() + FENCE_MS, self.old, store.generation)
        try:
            fenced = [shard for shard in keys.shards if await redis.eval(
                FENCE, 1, shard.active, self.old, self.fence, store.generation) == 1]
            await store.refresh_active()
            self.todo = [s for s in keys.shards if s.number not in store.active_shards]
            if any(shard not in fenced for shard in self.todo):
                await self._unfence()  # a third generation is active somewhere
                return None
            give_up = self.now() + CATCH_UP_MS
            while not ((await lag(store, self.old)).caught_up
                       and await self._accounts_caught_up()):
                if self.now() > give_up:
                    await self._unfence()
                    return None
                await wait()
            # OLD's progress as NEW caught up with it: each flip checks it is unchanged
            # (a fence that expired would have let OLD apply, and notify, more).
            self.frozen = await store.progress(self.old)
            try:
                await self._renew("closed")  # NEW's own commits wait now too
                at = self.now()
                await self._carry_counters()
                if self.accounts is not None:
                    await self._carry_counters(self.accounts)
                entries: list[bytes] = []
                flipped = list(self.todo)
                for shard in flipped:
                    await self._renew("closed")
                    entries += await self._flip(shard, at)
                    self.todo.remove(shard)
            except HandingOver:  # the fence expired under us: OLD wrote again
                await self._unfence()
                return None
            pipe: Any = redis.pipeline(transaction=False)
            pipe.set(keys.active, store.generation)
            pipe.hset(keys.generations, mapping={f"{store.generation}:activated_at": at,
                                                 f"{self.old}:deactivated_at": at})
            await pipe.execute()
            if self.accounts is not None:
                for shard in flipped:
                    await self._rescore_accounts(self.accounts, shard.number, at)
            return at, entries
        finally:
            await redis.eval(RELEASE, 1, keys.cutover_lock, self.token)

    async def _accounts_caught_up(self) -> bool:
        """With accounts: NEW's account side has applied every member award and account
        event NEW's lead side has recorded (its outbox empty: all sent) and sent."""
        accounts = self.accounts
        if accounts is None:
            return True
        return await self.store.outbox_size() == 0 and await accounts.accounts_caught_up()

    async def _renew(self, kind: str) -> None:
        """Push the fence's deadline and the lock's expiry on (this worker is alive),
        each only if it is still exactly as this attempt left it."""
        redis, store = self.store.redis, self.store
        if not await redis.eval(RENEW, 1, store.keys.cutover_lock, self.token, LOCK_MS):
            raise HandingOver("the cutover lock expired")
        fence = fence_value(self.now() + FENCE_MS, self.old, store.generation, kind)
        for shard in self.todo:
            if await redis.eval(SWAP, 1, shard.active, self.fence, fence) != 1:
                raise HandingOver(f"shard {shard.number} is no longer fenced by this cutover")
        self.fence = fence

    async def _unfence(self) -> None:
        for shard in self.todo:
            await self.store.redis.eval(SWAP, 1, shard.active, self.fence, self.old)

    async def _carry_counters(self, store: RedisStore | None = None) -> None:
        """NEW's notification counter of every lead (or, ``store`` NEW's accounts, every
        account) becomes at least OLD's. One SCAN of OLD's states (a pattern does not
        narrow a SCAN to one slot), in commits of CHUNK leads per shard, renewing the
        fences as it goes."""
        store = store or self.store
        old_keys = store.keys.of_generation(self.old)
        todo = {shard.number: store.keys.shards[shard.number] for shard in self.todo}
        pattern = f"{old_keys.root}:{{*}}:state:*"
        found: dict[int, list[str]] = {}
        async for key in store.redis.scan_iter(match=pattern, count=1000):
            tag, _, lead = as_text(key)[len(old_keys.root) + 2:].partition("}:state:")
            if tag.isdigit() and int(tag) in todo:
                found.setdefault(int(tag), []).append(lead)
        for number, leads in found.items():
            shard = todo[number]
            for start in range(0, len(leads), CHUNK):
                await self._renew("closed")
                old = await _states(store, old_keys.shards[number], leads[start:start + CHUNK])
                counters = {lead: state.notified for lead, state in old.items()
                            if state.notified}
                if counters:
                    await store._transact(
                        shard, {lead: [] for lead in counters}, _raise_counters(counters),
                        self.now(), silent=True, fence=self.fence)

    async def _rescore_accounts(self, accounts: RedisStore, number: int, at: int) -> None:
        """After shard ``number`` flipped: each account of it whose hot flag at ``at``
        differs between OLD's accounts and NEW's gets its rescore notification, in NEW's
        account outbox (the generation is live there now)."""
        shard = accounts.keys.shards[number]
        old_shard = accounts.keys.of_generation(self.old).shards[number]
        old_accounts = self.old_rules.accounts
        candidates = await self._hot(shard, accounts.rules)
        if old_accounts is not None:
            candidates |= await self._hot(old_shard, old_accounts.rules)
        if not candidates:
            return
        owed: dict[str, tuple[bool, int, list[Notification]]] = {}
        if old_accounts is not None:  # as for leads: OLD's cooling due by X, then NEW's say
            for account, state in (await _states(accounts, old_shard,
                                                 sorted(candidates))).items():
                cooled = cool(state, at, old_accounts.rules)  # (OLD's, not written)
                owed[account] = (state.hot, state.notified, cooled)
        rules = accounts.rules

        def change(found: dict[str, Stored]) -> Outcome:
            outcome = Outcome()
            for account_id, stored in found.items():
                hot, notified, cooled = owed.get(account_id, (False, 0, []))
                if cooled:
                    outcome.notifications += cooled
                    stored.history += map(history.cooling, cooled)
                if stored.state.t_ref is None:
                    continue  # (none in NEW: nothing to say under NEW's rules)
                notes = rescore(stored.state, hot, notified, at, rules)
                outcome.notifications += notes
                stored.history += map(history.rescored, notes)
            return outcome

        await accounts._transact(shard, {a: [] for a in sorted(candidates)}, change, self.now())

    async def _old(self, shard: Shard, leads: list[str]) -> dict[str, LeadState]:
        """OLD's states of these leads (those it has)."""
        return await _states(self.store, self.old_keys.shards[shard.number], leads)

    async def _flip(self, shard: Shard, at: int) -> list[bytes]:
        """Make NEW active in the shard, with the notifications it owes: for a lead OLD
        left hot whose cooling by decay was due by ``at`` but not yet sent (the sweep
        runs every minute, and waits on the fence), OLD's ``lead.cooled``; then the
        rescore of every lead whose hot flag at ``at`` differs."""
        old_shard, old_rules = self.old_keys.shards[shard.number], self.old_rules
        candidates = sorted(await self._hot(old_shard, old_rules)
                            | await self._hot(shard, self.store.rules))
        owed: dict[str, tuple[bool, list[str], int, list[Notification]]] = {}
        for lead, state in (await self._old(shard, candidates)).items():
            cooled = cool(state, at, old_rules)  # (OLD's, not written)
            owed[lead] = (state.hot, list(state.groups_hot), state.notified, cooled)
        rules, explain = self.store.rules, self.store.explain

        def change(leads: dict[str, Stored]) -> Outcome:
            outcome = Outcome()
            for lead_id, stored in leads.items():
                hot, hot_groups, notified, cooled = owed.get(lead_id, (False, [], 0, []))
                if cooled:  # (OLD's, under OLD's rules: a model of NEW's cannot explain them)
                    outcome.notifications += cooled
                    stored.history += map(history.cooling, cooled)
                notes = rescore(stored.state, hot, notified, at, rules, hot_groups)
                if notes:
                    if explain is not None:  # NEW's lead at the cutover instant
                        for note in notes:
                            explained(note, stored.state, explain)
                    outcome.notifications += notes
                    stored.history += map(history.rescored, notes)
            return outcome

        outcome = await self.store._transact(
            shard, {lead: [] for lead in candidates}, change, self.now(),
            flip=(self.fence, old_shard.progress, self.frozen[shard.number]))
        return outcome.entries

    async def _hot(self, shard: Shard, rules: Ruleset) -> set[str]:
        """The leads of a shard whose state says hot, for themselves or for one of the
        score groups of ``rules`` (the "hot" rankings)."""
        redis = self.store.redis
        fits = await redis.smembers(shard.fits)
        keys = [shard.rank("hot", as_text(fit)) for fit in fits]
        keys += [shard.group_rank(group.id, hot=True) for group in rules.alerting]
        found: set[str] = set()
        for key in keys:
            found.update(as_text(m) for m in await redis.zrange(key, 0, -1))
        return found


async def _states(store: RedisStore, shard: Shard, ids: list[str]) -> dict[str, LeadState]:
    """The states of these leads (or accounts) in ``shard``, those it has."""
    raws = await store.redis.execute_command(
        "MGET", *[shard.state(one) for one in ids]) if ids else []
    return {one: record.decode(raw, {}).state
            for one, raw in zip(ids, raws, strict=True) if raw is not None}


def _raise_counters(counters: dict[str, int]) -> Callable[[dict[str, Stored]], Outcome]:
    def change(leads: dict[str, Stored]) -> Outcome:
        for lead_id, stored in leads.items():
            stored.state.notified = max(stored.state.notified, counters[lead_id])
        return Outcome()
    return change


async def delete_generation(redis: Any, prefix: str, version: str, step: int = 500) -> int:
    """Delete a generation's keys in small steps (SCAN and UNLINK, so that Redis never
    blocks on it), then its registry entries. Returns the keys deleted."""
    deleted = 0
    batch: list[Any] = []
    async for key in redis.scan_iter(match=f"{prefix}:{version}:*", count=step):
        batch.append(key)
        if len(batch) >= step:
            deleted += await _unlink(redis, batch)
            batch = []
            await asyncio.sleep(0)
    deleted += await _unlink(redis, batch)
    fields = [version, *(f"{version}:{part}" for part in
                         ("progress", "activated_at", "deactivated_at", "seen_at"))]
    await redis.hdel(generations_key(prefix), *fields)
    return deleted


async def _unlink(redis: Any, keys: list[Any]) -> int:
    if not keys:
        return 0
    pipe: Any = redis.pipeline(transaction=False)
    for key in keys:  # one by one: on a cluster the keys are in many slots
        pipe.unlink(key)
    return sum(await pipe.execute())
