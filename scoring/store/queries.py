"""The read side of the store: one lead, its history, the top leads now, how many
leads score in each band now, the outbox.

Reads need no transaction: each reads keys that one transaction wrote together. The
band counts are the exception: they read many keys of a shard, so they read them in
one MULTI per shard, and each lead is counted once, as it is at that instant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import orjson

from scoring import history
from scoring.engine import LeadState, score_at
from scoring.errors import StoreError
from scoring.rules import Ruleset
from scoring.store import record
from scoring.store.keys import Layout, Shard
from scoring.store.ranking import OFFSET, SLACK, KeyBounds, counted, level_bounds, members
from scoring.views import BAND_WIDTH, BANDS, Ranked, as_of, band, best, ranked

MAX_PAGE = 1000
MAX_SNAPSHOTS = 8  # band counts: reads of a shard until its windows hold no new lead


class Queries:
    """The reads of one ``RedisStore``'s data (it offers them as its own)."""

    def __init__(self, redis: Any, rules: Ruleset, keys: Layout) -> None:
        self.redis = redis  # redis.asyncio.Redis or RedisCluster
        self.rules = rules
        self.keys = keys

    async def load(self, lead_id: str) -> tuple[LeadState, int] | None:
        """A lead's state (with the ids that still count as duplicates) and when it was
        last written (wall ms), or None if unknown."""
        shard = self.keys.of(lead_id)
        raw = await self.redis.get(shard.state(lead_id))
        if raw is None:
            return None
        state, _, updated_at, _ = record.decode(raw, {})
        horizon = (state.t_ref or 0) - self.rules.dedupe_window_ms
        ids = cast(list[tuple[bytes, float]], await self.redis.zrangebyscore(
            shard.ids(lead_id), horizon, "+inf", withscores=True))
        state.seen = {as_text(event_id): int(t) for event_id, t in ids}
        return state, updated_at

    async def exists(self, lead_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.of(lead_id).state(lead_id)))

    async def history(self, lead_id: str, limit: int) -> list[dict[str, Any]]:
        """The lead's last ``limit`` changes, newest first."""
        raw = await self.redis.lrange(self.keys.of(lead_id).history(lead_id), 0, limit - 1)
        return [history.view(orjson.loads(entry)) for entry in raw]

    async def top(self, now_ms: int, limit: int, group: str = "all",
                  keep: Callable[[dict[str, Any]], bool] | None = None,
                  within: str | None = None, ahead_ms: int = 0) -> list[dict[str, Any]]:
        """The ``limit`` highest scores at ``now_ms`` among the leads of ``group`` (all,
        hot, stage:<stage>) that ``keep`` accepts, as ``describe`` shows them; with
        ``within`` (a score group's id, SPEC 10), the highest scores of that group among
        the leads its rules have awarded (``group`` all) or those hot for it (hot).

        Each ranking (one per shard, fit score and group; ``all`` is the four stage
        groups, see scoring.store.ranking; one per shard for a score group, which has no
        fit) is read from the top in pages until it has yielded ``limit`` leads (or runs
        out); the best of those are the answer (see scoring.store.ranking for why that
        is exact). A lead is shown as of now: one whose cooling by decay is due but not
        yet swept is shown cooled. ``ahead_ms``: how far past ``now_ms`` a lead's last
        event may be dated (as for ``bands``; a longer reach costs reads, never
        exactness).
        """
        rules = self.rules
        scored = rules.group(within) if within is not None else None
        # ranking key -> (where its next page starts, how many of its leads were kept)
        if scored is not None:
            if group not in ("all", "hot"):
                raise ValueError(f"a score group's leads are all or hot, not {group!r}")
            rankings = {shard.group_rank(scored.id, hot=group == "hot"): (0, 0)
                        for shard in self.keys.shards}
        else:
            reads: Any = self.redis.pipeline(transaction=False)
            for shard in self.keys.shards:
                reads.smembers(shard.fits)
            rankings = {shard.rank(ranking, as_text(fit)): (0, 0) for shard, fits in
                        zip(self.keys.shards, await reads.execute(), strict=True)
                        for fit in fits for ranking in members(group)}
        # Ordered by score, then by the score before clamping (the ranking's own order, so
        # that a page cut between leads clamped to the same score is still exact), then id.
        found: list[Ranked] = []
        # A ranking past its first `limit` matches has nothing to add, so the first page
        # is `limit`; later pages double, so that a filter dropping many leads (hot=false
        # under a run of hot ones) costs a few round trips, not one per `limit` leads.
        page = limit
        # Leads dated ahead of now (T > now: an event up to ``ahead_ms`` in the future) sit
        # at keys that read as if their engagement had grown back to T, which it does
        # not (see scoring.store.ranking). Only leads with T <= now count towards a
        # ranking's `limit`; a positive key only overstates an ahead lead (it is read
        # early, and scored exactly), but a negative one understates it, by up to
        # ``ahead`` in key units: below zero, reading goes on until the last key read
        # is that far below the limit-th counted one. Keys within rounding of it are
        # read too (``_past``): a lead whose score equals another's up to the last bits
        # may sit on either side of it in the ranking, and its score decides.
        half_life = rules.half_life_ms
        ahead = ahead_ms / half_life if half_life is not None else 0.0
        nth: dict[str, float] = {}  # ranking -> the key of its limit-th counted lead
        while rankings:
            reads = self.redis.pipeline(transaction=False)
            for ranking, (start, _) in rankings.items():
                reads.zrange(ranking, start, start + page - 1, withscores=True)
            pages = [[(as_text(lead), -stored) for lead, stored in ids]
                     for ids in await reads.execute()]
            states = await self._peek([lead for ids in pages for lead, _ in ids], now_ms)
            for (ranking, (start, kept)), ids in zip(list(rankings.items()), pages,
                                                     strict=True):
                for lead, key in ids:
                    state = states.get(lead)
                    if state is None:
                        continue
                    entry = ranked(state, rules, now_ms, keep, scored)
                    if entry is not None:
                        found.append(entry)
                        if half_life is None or state.t_ref is None or \
                                state.t_ref <= now_ms:
                            kept += 1
                            if kept == limit:
                                nth[ranking] = key
                rankings[ranking] = start + page, kept
                # Enough from this ranking, or it has no more: the rest cannot make the top.
                if len(ids) < page or (kept >= limit and _past(nth[ranking], ids[-1][1],
                                                               ahead)):
                    del rankings[ranking]
            page = min(2 * page, MAX_PAGE)
        return best(found, limit)

    async def bands(self, now_ms: int, group: str = "all", ahead_ms: int = 0) -> list[int]:
        """How many leads of ``group`` (all, stage:<stage>) score in each of the BANDS
        bands at ``now_ms``, as ``band(score_at(...))`` puts them (SPEC 9's bands), in
        a few reads of each shard however many leads there are.

        A band count is a difference of "at least" counts at the band edges 10, 20 ...
        90, and one of those is, per ranking, a ZCOUNT above a key bound (see
        scoring.store.ranking, ``level_bounds``) plus the leads of a narrow window of keys
        read and scored exactly. An edge at or below the score range's min holds every
        lead (they are clamped up to it), one above its max none. ``ahead_ms``: how far
        past ``now_ms`` an event may be dated (the wider it is, the more leads a window
        holds, never a wrong count).
        """
        counted(group)  # a group that can be counted, or ValueError
        counts = await asyncio.gather(*(self._shard_bands(shard, group, now_ms, ahead_ms)
                                        for shard in self.keys.shards))
        return [sum(column) for column in zip(*counts, strict=True)]

    async def _shard_bands(self, shard: Shard, group: str, now_ms: int, ahead_ms: int
                           ) -> list[int]:
        """One shard's band counts, from one MULTI: the fit scores, each ranking's size,
        "at least" counts and windows, and the states of the leads in the windows (as
        found by the previous read; read again until no window holds a lead not read)."""
        rules = self.rules
        fits = {as_text(fit) for fit in await self.redis.smembers(shard.fits)}
        read: set[str] = set()  # leads of the windows, read with the counts
        for _ in range(MAX_SNAPSHOTS):
            # (ranking key, per edge: its bounds, or True: every lead, False: none)
            plan = [(shard.rank(ranking, fit), [_edge(float(fit), BAND_WIDTH * i, now_ms,
                                                      rules, ahead_ms)
                                                for i in range(1, BANDS)])
                    for fit in sorted(fits) for ranking in counted(group)]
            leads = sorted(read)
            async with self.redis.pipeline(transaction=True) as tx:
                # By name, not .smembers: a cluster transaction passes SMEMBERS's reply
                # callback an argument it does not take (redis-py 8.1).
                tx.execute_command("SMEMBERS", shard.fits)
                if leads:  # (cluster pipelines refuse .mget by name)
                    tx.execute_command("MGET", *[shard.state(lead) for lead in leads])
                for key, edges in plan:
                    tx.zcard(key)
                    for edge in edges:
                        if isinstance(edge, tuple):
                            low, high = edge  # keys are stored negated (see commit.py)
                            tx.zcount(key, "-inf", _score(-high))
                            if low < high:
                                tx.zrangebyscore(key, "(" + _score(-high), _score(-low))
                replies = iter(await tx.execute())
            now_fits = {as_text(fit) for fit in next(replies)}
            states = {}
            for lead, raw in zip(leads, next(replies) if leads else (), strict=True):
                if raw is not None:
                    states[lead] = record.decode(raw, {}).state
            at_least = [0] * BANDS  # leads at or above each band's lower edge
            windows: set[str] = set()
            for _, edges in plan:
                size = next(replies)
                at_least[0] += size
                for i, edge in enumerate(edges, start=1):
                    if edge is True:
                        at_least[i] += size
                    elif isinstance(edge, tuple):
                        at_least[i] += next(replies)
                        if edge[0] < edge[1]:
                            found = [as_text(lead) for lead in next(replies)]
                            windows.update(found)
                            at_least[i] += sum(
                                1 for lead in found if lead in states
                                and band(score_at(states[lead], now_ms, rules)) >= i)
            if not now_fits <= fits:  # a ranking of a new fit score: count it too
                fits |= now_fits
            elif windows <= read:
                return [at_least[i] - (at_least[i + 1] if i + 1 < BANDS else 0)
                        for i in range(BANDS)]
            read |= windows
        raise StoreError(f"could not count the bands of shard {shard.number}: its leads "
                         f"kept changing over {MAX_SNAPSHOTS} reads")

    async def _peek(self, leads: list[str], now_ms: int) -> dict[str, LeadState]:
        """The states of some leads as of ``now_ms`` (cooled if due), without their ids."""
        by_shard: dict[Shard, list[str]] = {}
        for lead in leads:
            by_shard.setdefault(self.keys.of(lead), []).append(lead)
        if not by_shard:
            return {}
        reads: Any = self.redis.pipeline(transaction=False)
        for shard, some in by_shard.items():
            reads.execute_command("MGET", *[shard.state(lead) for lead in some])
        states = {}
        for raws in await reads.execute():
            for raw in raws:
                if raw is not None:
                    state = as_of(record.decode(raw, {}).state, now_ms, self.rules)
                    states[state.lead_id] = state
        return states

    async def pending(self, recorded_before_ms: float = float("inf")) -> list[bytes]:
        """Outbox entries recorded before the given instant, oldest first."""
        upto = "+inf" if recorded_before_ms == float("inf") else f"({recorded_before_ms}"
        reads: Any = self.redis.pipeline(transaction=False)
        for shard in self.keys.shards:
            reads.zrangebyscore(shard.outbox, "-inf", upto, withscores=True)
        found = [pair for pairs in await reads.execute() for pair in pairs]
        found.sort(key=lambda pair: pair[1])
        return [entry for entry, _ in found]

    async def outbox_size(self) -> int:
        """How many notifications are recorded but not yet acknowledged by the broker."""
        reads: Any = self.redis.pipeline(transaction=False)
        for shard in self.keys.shards:
            reads.zcard(shard.outbox)
        return sum(await reads.execute())



def _past(nth: float, last: float, ahead: float) -> bool:
    """Whether a ranking read down to key ``last`` holds no lead left that could rank
    above the one at key ``nth`` (the limit-th counted): none within rounding of it
    (SLACK, as the band counts allow) and, for a negative key, none dated up to
    ``ahead`` (in key units) past now, whose key understates it by that much."""
    slack = SLACK * max(abs(nth), OFFSET)
    return last < nth - slack if nth >= 0 else last + ahead < nth - slack


def _edge(fit: float, edge: float, now_ms: int, rules: Ruleset, ahead_ms: int
          ) -> KeyBounds | bool:
    """Which leads of the ranking of ``fit`` score at least ``edge`` at ``now_ms``: all
    (True) or none (False) when the score range's clamp decides, else key bounds."""
    if edge <= rules.score_min:
        return True
    if edge > rules.score_max:
        return False
    return level_bounds(fit, edge, now_ms, rules.half_life_ms, ahead_ms)


def _score(value: float) -> str:
    """A sorted-set score bound, exactly (repr round-trips a double)."""
    return "+inf" if value == float("inf") else "-inf" if value == float("-inf") \
        else repr(value)


def as_text(value: object) -> str:
    """Redis replies are bytes; keys and ids are text."""
    return value.decode() if isinstance(value, bytes) else str(value)
