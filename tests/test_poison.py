"""Poison input never stops the worker (issue "Poison input and hostile rules"): each
bad message is dead-lettered once with its reason, the events around it are scored,
the partition keeps moving; Redis failures are waited out, loudly; a Redis that lost
its data is rebuilt from the topic instead of scored on from nothing."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from helpers import live
from test_worker import DEFAULT_RULES, START, offline, traffic
from worker import LEADSCORE, Deployment, keyed, wait_for

from scoring.rules import load_rules
from scoring.store.keys import Layout
from streams.embedded import EmbeddedRedis, free_port
from streams.runtime import committed_offsets, now_ms

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis of the test's own, to break (flush, starve of memory) without harming others."""
    with EmbeddedRedis() as server:
        yield server


def event(event_id: str, lead: str, type_: str, ts: Any, **properties: Any) -> dict[str, Any]:
    return {"event_id": event_id, "lead_id": lead, "type": type_, "ts": ts,
            "properties": properties}


def nested(event_id: str, lead: str, depth: int) -> bytes:
    """A profile_update whose properties are ``depth`` levels deep (orjson.dumps itself
    stops at 254, which is what made such an event impossible to store)."""
    properties = b'{"x":' * (depth - 1) + b"{}" + b"}" * (depth - 1)
    return (b'{"event_id": "%s", "lead_id": "%s", "type": "profile_update", "ts": %d, '
            b'"properties": %s}' % (event_id.encode(), lead.encode(), START, properties))


def dead_letters(records: list[Any]) -> dict[int, dict[str, str]]:
    """Source offset -> the dead letter's headers."""
    out = {}
    for record in records:
        headers = {k: v.decode() for k, v in record.headers}
        out[int(headers["leadscore.offset"])] = headers
    return out


async def test_poison_messages_are_dead_lettered_once_and_the_partition_moves_on(
        bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    """Every message that once stalled a batch for ever, on one partition between good
    events: each goes to the DLQ once, with its kind, and the good ones are scored."""
    deployment = Deployment(bootstrap, redis_url, DEFAULT_RULES, tmp_path)
    await deployment.create_topics()
    # A lead whose id set someone overwrote with a string: reading it fails in Redis
    # (WRONGTYPE) for that lead alone, which the worker cannot know in advance.
    broken = redis.Redis.from_url(redis_url)
    shard = Layout(deployment.prefix, 4, load_rules(DEFAULT_RULES).version).of("lead-x")
    broken.set(shard.ids("lead-x"), b"not a sorted set")
    good = [event("g0", "lead-p", "page_view", START, url="/pricing"),
            event("g1", "lead-q", "demo_request", START + 1),
            event("g2", "lead-p", "form_submit", START + 2),
            event("g3", "lead-p", "page_view", START + 3, url="/pricing")]
    huge = orjson.dumps(event("h", "lead-p", "page_view", START, blob="x" * 1_200_000))
    poison: list[tuple[bytes, str]] = [
        (nested("deep", "lead-p", 500), "too_deep"),
        (huge, "too_large"),
        (orjson.dumps(event("big-ts", "lead-p", "page_view", 10**15)), "bad_ts"),
        (orjson.dumps(event("y10k", "lead-p", "page_view", "9999-12-31T23:59:59-01:00")),
         "bad_ts"),
        (orjson.dumps(event("future", "lead-p", "page_view", now_ms() + 86_400_000)),
         "future_ts"),
        (orjson.dumps(event("x", "lead-x", "page_view", START)), "apply_failed"),
    ]
    growing = [orjson.dumps(event(f"grow{i}", "lead-p", "profile_update", START + 10 + i,
                                  **{f"k{i}": "v" * 12_000})) for i in range(3)]
    # All on partition 0, good and bad interleaved: the partition must keep moving.
    messages = [orjson.dumps(good[0]), *(raw for raw, _ in poison[:3]), orjson.dumps(good[1]),
                *(raw for raw, _ in poison[3:]), *growing, orjson.dumps(good[2]),
                orjson.dumps(good[3])]
    kinds = {raw: kind for raw, kind in poison} | {growing[2]: "profile_too_large"}
    worker = deployment.worker().start()
    try:
        await deployment.produce([(None, raw) for raw in messages], partition=0)
        offsets = {raw: offset for offset, raw in enumerate(messages)}
        records = await deployment.read_all(deployment.dlq, lambda rs: len(rs) >= len(kinds))
        dead = dead_letters(records)
        assert {offset: headers["leadscore.kind"] for offset, headers in dead.items()} == {
            offsets[raw]: kind for raw, kind in kinds.items()}
        assert dead[offsets[huge]]["leadscore.original_size"] == str(len(huge))
        assert dead[offsets[huge]]["leadscore.original_sha256"] == hashlib.sha256(
            huge).hexdigest()
        value_of = {int(dict(r.headers)["leadscore.offset"]): r.value for r in records}
        assert value_of[offsets[huge]] == huge[:1_000_000]
        assert "WRONGTYPE" in dead[offsets[poison[5][0]]]["leadscore.reason"]
        assert all("\n" not in headers["leadscore.reason"] for headers in dead.values())

        rules = load_rules(DEFAULT_RULES)
        applied = [*good, *(orjson.loads(raw) for raw in growing[:2])]
        want_states = offline(sorted(applied, key=lambda e: offsets[orjson.dumps(e)]), rules)[0]
        want = {lead: live(state, rules) for lead, state in want_states.items()}

        async def scored() -> bool:
            return await deployment.states(rules, ["lead-p", "lead-q"]) == want

        await wait_for(scored, 60, "the good events around the poison ones were not scored")
        assert worker.metric("leadscore_events_dead_lettered_total"
                             '{reason="apply_failed"}') == 1

        # A replay of the whole partition (offsets lost: a new consumer group on the same
        # data) recognises every applied event and dead-letters nothing again.
        worker.kill()
        replay = deployment.worker()
        replay.env["LEADSCORE_GROUP_ID"] = f"{deployment.prefix}-replay"
        replay.start()
        lag = f'leadscore_consumer_lag{{partition="0",topic="{deployment.events}"}}'
        await wait_for(lambda: replay.get("/metrics")[0] == 200 and lag in replay.get(
            "/metrics")[1].decode() and replay.metric(lag) == 0, 60,
            f"the replay did not reach the end; log:\n{replay.log_tail()}")
        # (the refused profile update counts too: its offset was applied, as a no-op)
        assert replay.metric("leadscore_events_replayed_total") == len(applied) + 1
        assert replay.metric("leadscore_events_dead_lettered_total"
                             '{reason="apply_failed"}') == 0
        again = await deployment.read_all(deployment.dlq, lambda rs: len(rs) >= len(kinds))
        assert len(again) == len(kinds)
        assert await deployment.states(rules, ["lead-p", "lead-q"]) == want
    finally:
        deployment.stop_all()
        broken.close()


async def test_redis_refusing_writes_is_waited_out_and_a_stalled_partition_is_named(
        bootstrap: str, own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    """Redis out of memory refuses every write: an outage, not a bad message. The
    batch is retried (nothing dead-lettered); past LEADSCORE_STALL_SECONDS /readyz says
    which partition is stuck and why; once Redis takes writes again it catches up."""
    deployment = Deployment(bootstrap, own_redis.url, DEFAULT_RULES, tmp_path,
                            stall_seconds="1")
    await deployment.create_topics()
    worker = deployment.worker().start()
    server = redis.Redis.from_url(own_redis.url)
    try:
        await worker.wait_ready()
        first = event("s0", "lead-s", "demo_request", START)
        await deployment.produce(keyed([first]), partition=2)
        rules = load_rules(DEFAULT_RULES)

        async def has(events: list[dict[str, Any]]) -> bool:
            want = {lead: live(s, rules) for lead, s in offline(events, rules)[0].items()}
            return await deployment.states(rules, ["lead-s"]) == want

        await wait_for(lambda: has([first]), 60, "the first event was not scored")
        server.config_set("maxmemory-policy", "noeviction")
        server.config_set("maxmemory", 1)
        second = event("s1", "lead-s", "page_view", START + 1, url="/pricing")
        await deployment.produce(keyed([second]), partition=2)

        def stalled() -> bool:
            status, body = worker.get("/readyz")
            return status == 503 and any(
                p.startswith(f"partition {deployment.events}[2] has not progressed for ")
                and "(OutOfMemoryError: " in p
                for p in orjson.loads(body)["problems"])

        await wait_for(stalled, 30, "/readyz never named the partition")
        failing = ('leadscore_partition_failing_seconds{partition="2",'
                   f'topic="{deployment.events}"}}')
        assert worker.metric(failing) >= 1
        server.config_set("maxmemory", 0)
        await wait_for(lambda: worker.get("/readyz")[0] == 200, 30, "never ready again")
        await wait_for(lambda: has([first, second]), 30, "the retried batch was not applied")
        assert worker.metric("leadscore_events_dead_lettered_total"
                             '{reason="apply_failed"}') == 0
        assert failing not in worker.get("/metrics")[1].decode()
    finally:
        server.config_set("maxmemory", 0)
        server.close()
        deployment.stop_all()


async def test_redis_killed_without_persistence_is_rebuilt_from_the_topic(
        bootstrap: str, tmp_path: Path) -> None:
    """A Redis without persistence SIGKILLed under a running worker and back empty:
    scoring on from nothing would reuse notification ids with other content. The
    worker notices (the shard markers are gone), says so in /readyz, replays the topic
    sending nothing for what its consumer group had already consumed, and goes on live:
    every state is the offline one, and every notification id means one notification,
    the offline one (a repeat is the same notification, at least once)."""
    with EmbeddedRedis(port=free_port()) as own:
        deployment = Deployment(bootstrap, own.url, DEFAULT_RULES, tmp_path)
        await deployment.create_topics()
        rules = load_rules(DEFAULT_RULES)
        history = traffic(leads=25, events=900, seed=21)
        before, after = history[:600], history[600:]
        want_states, want_notes = offline(history, rules)
        want_states = {lead: live(s, rules) for lead, s in want_states.items()}

        async def holds(events: list[dict[str, Any]]) -> bool:
            want = {lead: live(s, rules) for lead, s in offline(events, rules)[0].items()}
            return await deployment.states(rules, sorted(want)) == want

        try:
            worker = deployment.worker().start()
            await deployment.produce(keyed(before))
            await wait_for(lambda: holds(before), 60, "the first events were not scored")
            settings = deployment.settings()
            group = settings.generation_group(rules.version)
            consumed: dict[int, int] = {}
            while sum(consumed.values()) < 600:  # offsets are committed with a later batch
                tick = event(f"tick-{len(before)}", "ticker", "page_view", START)
                before.append(tick)
                await deployment.produce(keyed([tick]))
                await wait_for(lambda: holds(before), 60, "the tick was not scored")
                consumed = await committed_offsets(settings, group)
            history = before + after
            want_states, want_notes = offline(history, rules)
            want_states = {lead: live(s, rules) for lead, s in want_states.items()}
            own.kill()  # no persistence: everything Redis held is gone
            own.start()
            rebuilding: list[str] = []

            def says_rebuilding() -> bool:
                status, body = worker.get("/readyz")
                if status == 503:
                    rebuilding.extend(p for p in orjson.loads(body)["problems"]
                                      if p.startswith("rebuilding after Redis lost"))
                return bool(rebuilding)

            await deployment.produce(keyed(after))
            await wait_for(says_rebuilding, 60, f"no rebuild; log:\n{worker.log_tail()}")
            await wait_for(lambda: holds(history), 90,
                           f"the rebuild did not reach the offline states; "
                           f"log:\n{worker.log_tail()}")
            await worker.wait_ready()
            want = {n["notification_id"]: {**n, "emitted_at": None} for n in want_notes}
            records = await deployment.read_all(
                deployment.hot, lambda rs: {orjson.loads(r.value)["notification_id"]
                                            for r in rs} >= set(want))
            got: dict[str, Any] = {}
            times: dict[str, int] = {}
            for record in records:
                note = {**orjson.loads(record.value), "emitted_at": None}
                assert got.setdefault(note["notification_id"], note) == note, note
                times[note["notification_id"]] = times.get(note["notification_id"], 0) + 1
            assert got == want
            # What was sent before the loss, for events below the offsets the group had
            # committed, is not sent again (the rest may be: at least once).
            where = {orjson.loads(r.value)["event_id"]: (r.partition, r.offset) for r in
                     await deployment.read_all(deployment.events,
                                               lambda rs: len(rs) >= len(history))}
            early = {n["notification_id"] for n in offline(before, rules)[1]
                     if n["event_id"] is not None
                     and where[n["event_id"]][1] < consumed.get(where[n["event_id"]][0], 0)}
            assert early and {i: times[i] for i in early} == dict.fromkeys(early, 1)
            assert "Redis lost Leadscore's data" in worker.log_path.read_text()
        finally:
            deployment.stop_all()


async def test_a_backtracking_pattern_cannot_freeze_the_worker(
        bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    """``(a+)+$`` against a 29-character url froze the event loop for 17 s with Python's
    re, doubling per character; RE2 matches in linear time."""
    rules_path = tmp_path / "hostile.yaml"
    rules_path.write_text("name: hostile\nhalf_life: 30d\nhot: {threshold: 70, rearm_below: 50}\n"
                          "engagement:\n  - id: trap\n    event: page_view\n"
                          "    if: {url: {matches: \"(a+)+$\"}}\n    points: 5\n"
                          "  - {id: visit, event: page_view, points: 1}\n")
    deployment = Deployment(bootstrap, redis_url, rules_path, tmp_path)
    await deployment.create_topics()
    worker = deployment.worker().start()
    try:
        events = [event("r0", "lead-r", "page_view", START, url="a" * 60 + "!"),
                  event("r1", "lead-r", "page_view", START, url="/" + "a" * 60)]
        await deployment.produce(keyed(events))
        rules = load_rules(rules_path)
        want = {lead: live(s, rules) for lead, s in offline(events, rules)[0].items()}

        async def scored() -> bool:
            return await deployment.states(rules, ["lead-r"]) == want

        await wait_for(scored, 60, "the events were not scored")
        assert want["lead-r"].contributions == {"visit": 2.0, "trap": 5.0}
        assert worker.get("/healthz")[0] == 200
    finally:
        deployment.stop_all()


def test_a_worker_refuses_a_hostile_rules_file_with_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nhalf_life: 30d\nhot: {threshold: .inf, rearm_below: .nan}\n"
                   "engagement:\n  - {id: huge, event: page_view, points: 1e308}\n")
    done = subprocess.run([LEADSCORE, "worker"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "LEADSCORE_RULES": str(bad)},
                          check=False)
    assert done.returncode == 1
    assert done.stderr.startswith(f"leadscore: {bad}: ")
    for location in ("hot.threshold: ", "hot.rearm_below: ", "engagement[0].points: "):
        assert f"\n  {location}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
