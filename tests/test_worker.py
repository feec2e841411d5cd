"""``leadscore worker`` as a real process on a real broker and Redis (SPEC 1, 3, 4)."""

from __future__ import annotations

import asyncio
import random
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import live
from worker import LEADSCORE, Deployment, keyed, wait_for

from scoring.engine import LeadState, Notification, apply
from scoring.events import event_from_dict, format_ts
from scoring.rules import Ruleset, load_rules
from streams.demo import Traffic
from streams.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from streams.runtime import now_ms

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RULES = ROOT / "config" / "rules.yaml"
START = 1_793_577_600_000  # 2026-11-02T00:00:00Z


@pytest.fixture
def deployment(bootstrap: str, redis_url: str, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(bootstrap, redis_url, DEFAULT_RULES, tmp_path)
    yield deployment
    deployment.stop_all()


@pytest.fixture
async def topics(deployment: Deployment) -> AsyncIterator[Deployment]:
    await deployment.create_topics()
    yield deployment


def offline(events: list[dict[str, Any]], rules: Ruleset
            ) -> tuple[dict[str, LeadState], list[Notification]]:
    """What the worker must reach: the engine applied in production order."""
    states: dict[str, LeadState] = {}
    notes: list[Notification] = []
    for doc in events:
        event = event_from_dict(doc)
        state = states.setdefault(event.lead_id, LeadState(event.lead_id))
        notes.extend(apply(state, event, rules).notifications)
    return states, notes


def traffic(leads: int, events: int, seed: int) -> list[dict[str, Any]]:
    return list(Traffic(leads, seed=seed).history(events, START, 10 * 86_400_000))


async def assert_same_outcome(deployment: Deployment, events: list[dict[str, Any]],
                              timeout: float = 120) -> None:
    """Redis holds exactly the offline states, and lead-hot every offline notification:
    repeats only with the same id and the same content."""
    rules = load_rules(DEFAULT_RULES)
    want_states, want_notes = offline(events, rules)
    want_states = {lead: live(state, rules) for lead, state in want_states.items()}

    async def states_match() -> bool:
        return await deployment.states(rules, sorted(want_states)) == want_states

    await wait_for(states_match, timeout, "Redis never reached the offline states")
    want = {n["notification_id"]: {**n, "emitted_at": None} for n in want_notes}
    records = await deployment.read_all(
        deployment.hot, lambda rs: len({orjson.loads(r.value)["notification_id"]
                                        for r in rs}) >= len(want))
    seen: dict[str, bytes] = {}
    for record in records:
        note = orjson.loads(record.value)
        assert record.key == note["lead_id"].encode()
        assert seen.setdefault(note["notification_id"], record.value) == record.value
    got = {nid: {**orjson.loads(raw), "emitted_at": None} for nid, raw in seen.items()}
    assert got == want


async def test_the_worker_agrees_with_the_offline_engine(topics: Deployment,
                                                        tmp_path: Path) -> None:
    events = traffic(leads=30, events=600, seed=3)
    assert any(n["group"] for n in offline(events, load_rules(DEFAULT_RULES))[1]), \
        "the traffic must make leads hot for a score group too"
    worker = topics.worker().start()
    events_file = tmp_path / "events.jsonl"
    events_file.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    produced = subprocess.run([LEADSCORE, "produce", str(events_file)], env=topics.env,
                              capture_output=True, check=False)
    assert produced.returncode == 0, produced.stderr
    await worker.wait_ready()
    await assert_same_outcome(topics, events)
    assert worker.metric("leadscore_events_consumed_total") == len(events)

    shown = subprocess.run([LEADSCORE, "lead", "lead-0"], env=topics.env,
                           capture_output=True, check=False)
    assert shown.returncode == 0, shown.stderr
    lead = orjson.loads(shown.stdout)
    state = offline(events, load_rules(DEFAULT_RULES))[0]["lead-0"]
    assert (lead["lead_id"], lead["stage"], lead["hot"], lead["fit"]) == (
        "lead-0", state.stage, state.hot, round(state.fit, 2))
    missing = subprocess.run([LEADSCORE, "lead", "nobody"], env=topics.env,
                             capture_output=True, check=False)
    assert (missing.returncode, missing.stderr) == (1, b"leadscore: no lead 'nobody' in Redis\n")


async def test_bad_input_goes_to_the_dead_letter_topic_and_the_rest_is_scored(
        bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    deployment = Deployment(bootstrap, redis_url, DEFAULT_RULES, tmp_path,
                            max_event_bytes="1024")
    await deployment.create_topics()
    good = [{"event_id": f"g{i}", "lead_id": "lead-dlq", "type": "add_to_cart",
             "ts": START + i} for i in range(2)]
    oversized = orjson.dumps({"event_id": "big", "lead_id": "lead-dlq", "type": "t", "ts": 1,
                              "properties": {"x": "y" * 2000}})
    bad: list[tuple[bytes, str, str]] = [
        (b"{not json", "not_json", "not valid JSON at line 1 column 2: "),
        (b"[1, 2]", "not_object", "event must be a JSON object, got array"),
        (b'{"event_id": "x", "lead_id": "lead-dlq", "type": "t"}', "missing_field",
         "missing field ts"),
        (b'{"event_id": "x", "lead_id": 7, "type": "t", "ts": 1}', "wrong_type",
         "lead_id must be a string, got number"),
        (b'{"event_id": "x", "lead_id": "lead-dlq", "type": "t", "ts": "noon"}', "bad_ts",
         'ts "noon" is not an RFC 3339 time (e.g. 2026-11-22T14:00:00Z)'),
        (b'{"event_id": "", "lead_id": "lead-dlq", "type": "t", "ts": 1}', "empty_field",
         "event_id must not be empty"),
        (oversized, "too_large",
         f"event is {len(oversized)} bytes, larger than max_event_bytes (1024)"),
    ]
    messages = [(b"lead-dlq", orjson.dumps(good[0]))]
    messages += [(b"lead-dlq", raw) for raw, _, _ in bad]
    messages += [(b"lead-dlq", orjson.dumps(good[1]))]
    worker = deployment.worker().start()
    try:
        await deployment.produce(messages)
        dead = await deployment.read_all(deployment.dlq, lambda rs: len(rs) >= len(bad))
        source = await deployment.read_all(deployment.events,
                                           lambda rs: len(rs) >= len(messages))
        where = {r.value: (r.partition, r.offset) for r in source}
        assert [r.value for r in dead] == [raw for raw, _, _ in bad]
        for record, (raw, kind, reason) in zip(dead, bad, strict=True):
            headers = {k: v.decode() for k, v in record.headers}
            assert headers["leadscore.kind"] == kind
            assert headers["leadscore.reason"].startswith(reason)
            assert headers["leadscore.topic"] == deployment.events
            assert (int(headers["leadscore.partition"]),
                    int(headers["leadscore.offset"])) == where[raw]
            assert record.key == b"lead-dlq"
        rules = load_rules(DEFAULT_RULES)
        want = {lead: live(state, rules) for lead, state in offline(good, rules)[0].items()}

        async def scored() -> bool:
            return await deployment.states(rules, ["lead-dlq"]) == want

        await wait_for(scored, 60, "the good events around the bad ones were not scored")
        for kind in {k for _, k, _ in bad}:
            assert worker.metric(
                f'leadscore_events_dead_lettered_total{{reason="{kind}"}}') == 1
    finally:
        deployment.stop_all()


async def test_a_hot_lead_with_no_new_events_cools_on_time(
        bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    rules_path = tmp_path / "fast.yaml"
    rules_path.write_text("name: fast\nhalf_life: 4s\nhot: {threshold: 70, rearm_below: 50}\n"
                          "engagement:\n  - {id: demo, event: demo_request, points: 80}\n")
    deployment = Deployment(bootstrap, redis_url, rules_path, tmp_path,
                            sweep_interval="0.5")
    await deployment.create_topics()
    worker = deployment.worker().start()
    try:
        await worker.wait_ready()
        ts = now_ms()
        await deployment.produce(keyed([{"event_id": "d", "lead_id": "cool-1",
                                         "type": "demo_request", "ts": ts}]))
        records = await deployment.read_all(deployment.hot, lambda rs: len(rs) >= 2, 60)
        hot, cooled = (orjson.loads(r.value) for r in records)
        assert (hot["type"], hot["score"]) == ("lead.hot", 80.0)
        t_c = ts + 4000 * 0.6780719051126377  # 4 s * log2(80 / 50)
        assert {k: cooled[k] for k in ("type", "notification_id", "score", "event_id",
                                       "event_ts")} == {
            "type": "lead.cooled", "notification_id": "cool-1:2", "score": 50.0,
            "event_id": None, "event_ts": format_ts(round(t_c))}
        # On time: within one sweep interval (plus the time to send it) of the crossing.
        emitted = (await deployment.read_all(deployment.hot, lambda rs: len(rs) >= 2))[1]
        assert emitted.timestamp - t_c < 500 + 1500
    finally:
        deployment.stop_all()


async def test_sigkill_at_random_points_loses_nothing_and_repeats_only_same_ids(
        topics: Deployment) -> None:
    events = traffic(leads=60, events=3000, seed=11)
    assert any(n["group"] for n in offline(events, load_rules(DEFAULT_RULES))[1]), \
        "the traffic must make leads hot for a score group too"
    rng = random.Random(5)
    worker = topics.worker().start()
    producing = asyncio.create_task(produce_slowly(topics, events))
    for kill in range(3):
        await worker.wait_ready()
        target = rng.randint(100, 500)
        await wait_for(lambda w=worker, n=target: w.metric(
            "leadscore_events_consumed_total") >= n, 90,
            f"kill {kill}: worker made no progress")
        worker.kill()
        worker = topics.worker().start()
    await producing
    await assert_same_outcome(topics, events, timeout=180)


async def test_a_worker_leaving_mid_stream_hands_over_exactly(topics: Deployment) -> None:
    events = traffic(leads=60, events=2000, seed=21)
    first, second = topics.worker().start(), topics.worker().start()
    await first.wait_ready()
    await second.wait_ready()
    producing = asyncio.create_task(produce_slowly(topics, events))
    await wait_for(lambda: first.metric("leadscore_events_consumed_total") >= 200
                   and second.metric("leadscore_events_consumed_total") >= 200, 90,
                   "both workers should be consuming")
    assert first.terminate() == 0
    await producing
    await assert_same_outcome(topics, events, timeout=180)


async def produce_slowly(deployment: Deployment, events: list[dict[str, Any]],
                         chunks: int = 20) -> None:
    """A stream that keeps flowing while workers come and go."""
    size = len(events) // chunks + 1
    for i in range(0, len(events), size):
        await deployment.produce(keyed(events[i:i + size]))
        await asyncio.sleep(0.2)  # pacing the stream, not waiting for a result


async def test_redis_killed_mid_stream_is_waited_out_and_nothing_is_lost(
        bootstrap: str, tmp_path: Path) -> None:
    # appendfsync always: every write is on disk before Redis acknowledges it.
    redis = EmbeddedRedis(port=free_port(), data_dir=tmp_path / "redis",
                          extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    redis.start()
    deployment = Deployment(bootstrap, redis.url, DEFAULT_RULES, tmp_path)
    try:
        await deployment.create_topics()
        events = traffic(leads=40, events=1500, seed=31)
        worker = deployment.worker().start()
        await worker.wait_ready()
        producing = asyncio.create_task(produce_slowly(deployment, events))
        await wait_for(lambda: worker.metric("leadscore_events_consumed_total") >= 300, 90,
                       "worker made no progress")
        redis.kill()
        await wait_for(lambda: "leadscore: batch of" in worker.log_path.read_text(), 60,
                       "no batch met the outage")
        redis.start()
        await producing
        await assert_same_outcome(deployment, events, timeout=180)
    finally:
        deployment.stop_all()
        redis.stop()


async def test_a_worker_whose_broker_is_gone_still_stops_on_sigterm(
        redis_url: str, tmp_path: Path) -> None:
    """A shutdown may wait for an unreachable broker (aiokafka retries its last commit
    and its connections); the worker gives it LEADSCORE_STOP_TIMEOUT seconds (here 1, less
    than those retries take), then exits with code 1 and says why (nothing is lost:
    see streams/app.py)."""
    broker = EmbeddedBroker(port=free_port())
    broker.start()
    deployment = Deployment(broker.bootstrap, redis_url, DEFAULT_RULES, tmp_path,
                            stop_timeout="1")
    try:
        await deployment.create_topics()
        worker = deployment.worker().start()
        await worker.wait_ready()
        await deployment.produce(keyed(traffic(leads=3, events=20, seed=5)))
        await wait_for(lambda: worker.metric("leadscore_events_applied_total")
                       + worker.metric("leadscore_events_duplicate_total") == 20, 60,
                       "the worker did not apply the events")
        broker.kill()
        assert worker.terminate(timeout=30) == 1
        log = worker.log_path.read_text()
        assert ("leadscore worker: not stopped 1 s after the signal (is the broker or Redis "
                "unreachable?); exiting anyway.") in log, worker.log_tail()
        # aiokafka logs each failed retry of each client (~60 lines a second): one passes
        assert log.count("Unable connect to node with id") <= 1, worker.log_tail()
    finally:
        deployment.stop_all()
        broker.stop()
