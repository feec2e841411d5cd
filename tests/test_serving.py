"""The conversion probability served (SPEC 12, "Served live"): in the API, the lead
list and its order=p_convert ranking, the notifications, ``leadscore lead`` and
``leadscore score --model``; a model of other rules refused at start; a new model file
served without a restart, a bad one refused.

Every probability is checked exactly (4 decimals, the factors too) against
``Model.explain`` of the offline state at the very instant the answer shows: the API's
own ``at``, a notification's own ``event_ts``. The expected notifications come from the
engine's ``apply`` alone, the state copied before each event: the stores' annotation
(scoring.store.batch) shares no code with that.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import random
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from helpers import DAY, HOUR, T0, ev
from redis.asyncio import Redis, RedisCluster
from worker import LEADSCORE, Deployment, Worker, keyed, wait_for

from scoring.engine import (
    LeadState,
    Notification,
    apply,
    cool,
    engagement_at,
    group_engagement_at,
    group_score_at,
    in_group,
    score_at,
)
from scoring.errors import ModelError
from scoring.events import event_from_dict, parse_ts
from scoring.model import Model, feature_names
from scoring.offline import replay
from scoring.rules import Ruleset, parse_rules
from scoring.store import MemoryStore, RedisStore
from scoring.store.generations import Cutover
from scoring.views import ByProbability, describe, summary
from streams import metrics, web
from streams.feed import Feed
from streams.runtime import now_ms
from streams.served import ServedModel
from streams.settings import Settings

RULES_TEXT = """
name: serving
half_life: 1d
hot: {threshold: 70, rearm_below: 50}
mql_events: [form_submit]
groups:
  - id: product
    hot: {threshold: 25, rearm_below: 15}
fit:
  - id: decision-maker
    if: {job_title: {matches: "(?i)director|\\\\bvp\\\\b"}}
    points: 20
  - id: student
    if: {job_title: {matches: "(?i)student"}}
    points: -15
engagement:
  - {id: visit, event: page_view, points: 2}
  - {id: product-page, event: page_view, if: {url: {matches: "^/product"}}, points: 12,
     group: product}
  - {id: pricing, event: page_view, if: {url: {matches: "^/pricing"}}, points: 15,
     group: product}
  - {id: form, event: form_submit, points: 25}
  - {id: demo, event: demo_request, points: 45}
  - {id: unsubscribe, event: email_unsubscribed, points: -40}
"""
RULES = parse_rules(RULES_TEXT.encode(), "serving.yaml")
# The model's numbers, per feature (standardised: (x - mean) / scale, times coefficient).
WEIGHTS = {  # feature -> (mean, scale, coefficient)
    "rule:visit": (1.0, 2.0, 0.1), "rule:product-page": (3.0, 6.0, 0.5),
    "rule:pricing": (3.0, 8.0, 0.8), "rule:form": (5.0, 10.0, 0.6),
    "rule:demo": (5.0, 15.0, 0.9), "rule:unsubscribe": (-2.0, 10.0, 0.7),
    "fit:decision-maker": (0.2, 0.4, 0.7), "fit:student": (0.1, 0.3, -0.5),
    "stage:mql": (0.3, 0.45, 0.3), "stage:sql": (0.2, 0.4, 0.6),
    "stage:customer": (0.05, 0.2, 1.2), "engagement": (15.0, 20.0, 0.2)}


def a_model(rules: Ruleset = RULES, intercept: float = -1.5) -> Model:
    names = feature_names(rules)
    assert set(names) == set(WEIGHTS), names
    return Model(rules_version=rules.version, horizon="30d", horizon_ms=30 * DAY,
                 features=tuple(names), means=tuple(WEIGHTS[n][0] for n in names),
                 scales=tuple(WEIGHTS[n][1] for n in names),
                 coefficients=tuple(WEIGHTS[n][2] for n in names), intercept=intercept,
                 slope=0.9, offset=-0.2, info={"metrics": {"auc": 0.8}})


def stale(model: Model) -> Model:
    """Another model, trained for other rules (served by mistake, it would show)."""
    return dataclasses.replace(model, rules_version="0123456789ab",
                               intercept=model.intercept + 2)


def write(path: Path, model: Model) -> Path:
    path.write_bytes(orjson.dumps(model.to_json()))
    return path


def refusal(model: Model, path: Path) -> str:
    """The ModelError a model of other rules is refused with."""
    with pytest.raises(ModelError) as refused:
        model.check(RULES, str(path))
    return str(refused.value)


def explained(notes: list[Notification], docs: list[dict[str, Any]], rules: Ruleset,
              model: Model) -> list[Notification]:
    """``notes`` is what the engine emitted for ``docs``, in order: each, as it must be
    sent with a model, explained from the lead's state at that moment (before the event
    for a cooling by decay it found due, after it for the event's own) at its event_ts."""
    states: dict[str, LeadState] = {}
    out = []
    for doc in docs:
        event = event_from_dict(doc)
        state = states.setdefault(event.lead_id, LeadState(event.lead_id))
        before = copy.deepcopy(state)
        for note in apply(state, event, rules).notifications:
            moment = before if note["cause"] == "decay" else state
            out.append({**note, **model.explain(moment, parse_ts(note["event_ts"]), rules)})
    assert [n["notification_id"] for n in out] == [n["notification_id"] for n in notes]
    return out


def engine_notes(docs: list[dict[str, Any]], rules: Ruleset) -> list[Notification]:
    states: dict[str, LeadState] = {}
    out: list[Notification] = []
    for doc in docs:
        event = event_from_dict(doc)
        out += apply(states.setdefault(event.lead_id, LeadState(event.lead_id)), event,
                     rules).notifications
    return out


# --- the holder: a new file served, a bad one refused (no servers) --------------------


def reloads(outcome: str) -> float:
    return metrics.REGISTRY.get_sample_value("leadscore_model_reloads_total",
                                             {"outcome": outcome}) or 0.0


def test_a_new_model_file_is_served_and_a_bad_one_refused_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "model.json", a_model())
    served = ServedModel(path, RULES)
    state = LeadState("x", T0, 30.0, 20.0, {"demo": 30.0}, {"job_title": "VP"}, "mql")
    assert served.explain(state, T0 + DAY) == a_model().explain(state, T0 + DAY, RULES)
    assert served.check() == "unchanged"
    refused, loaded = reloads("refused"), reloads("loaded")

    caplog.set_level(logging.WARNING, logger="leadscore")
    write(path, stale(a_model()))  # trained for other rules
    assert [served.check(), served.check()] == ["refused", "refused"]
    half = b'{"format": "leadscore-model/1", "features": ['  # half written
    path.write_bytes(half)
    assert served.check() == "refused"
    with pytest.raises(orjson.JSONDecodeError) as bad:
        orjson.loads(half)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"leadscore: the new model file is refused, the model in use (sha256 "
        f"{served.digest[:12]}) stays: {refusal(stale(a_model()), path)}",
        f"leadscore: the new model file is refused, the model in use (sha256 "
        f"{served.digest[:12]}) stays: {path}: not JSON ({bad.value}); give a file written "
        "by `leadscore model train`"]
    assert reloads("refused") == refused + 2
    assert served.explain(state, T0 + DAY) == a_model().explain(state, T0 + DAY, RULES)

    newer = a_model(intercept=0.5)
    write(path, newer)
    assert served.check() == "loaded"
    assert served.explain(state, T0 + DAY) == newer.explain(state, T0 + DAY, RULES) != \
        a_model().explain(state, T0 + DAY, RULES)
    assert reloads("loaded") == loaded + 1
    assert caplog.records[-1].getMessage().startswith(f"leadscore: serving the new model {path}")
    assert served.check() == "unchanged"
    path.unlink()  # gone: refused, the model in use stays
    assert served.check() == "refused"
    assert served.explain(state, T0 + DAY) == newer.explain(state, T0 + DAY, RULES)


def test_a_model_file_not_there_yet_is_no_model_until_it_appears(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A deployment whose training job has not run yet (deploy/k8s) starts without a
    probability, and serves one from the first check after the file appears."""
    caplog.set_level(logging.WARNING, logger="leadscore")
    path = tmp_path / "model.json"
    served = ServedModel(path, RULES)
    state = LeadState("x", T0, 30.0, 20.0, {"demo": 30.0}, {"job_title": "VP"}, "mql")
    assert (served.model, served.explain(state, T0), served.current()) == (None, {}, None)
    assert [served.check(), served.check()] == ["unchanged", "unchanged"]
    assert [r.getMessage() for r in caplog.records] == [
        f"leadscore: no model file at {path} yet: leads are served without p_convert until "
        "one appears (checked every LEADSCORE_MODEL_RELOAD)"]
    write(path, a_model())
    assert served.check() == "loaded"
    assert served.explain(state, T0 + DAY) == a_model().explain(state, T0 + DAY, RULES)


def test_the_settings_name_the_model_and_how_often_it_is_checked() -> None:
    default = Settings()
    assert (default.model, default.model_reload) == (None, 60.0)
    set_ = Settings(model="/models/m.json", model_reload="2m")
    assert (set_.model, set_.model_reload) == (Path("/models/m.json"), 120.0)


async def test_order_by_probability_without_a_model_is_a_400() -> None:
    class Unreachable:
        def __getattr__(self, name: str) -> Any:
            async def fail(*args: Any, **kwargs: Any) -> Any:
                raise AssertionError("the request was refused before any read")
            return fail

    redis: Any = Unreachable()

    async def forget(lead_id: str) -> bool:
        raise AssertionError

    api = web.Api(Settings(), RULES, redis, redis, list, forget, Feed(redis, "ls:x"))
    for query, message in [
            ("order=p_convert", "order=p_convert needs a conversion model, and this worker "
             "serves none: set LEADSCORE_MODEL to a file of `leadscore model train`"),
            ("order=p_convert&hot=true", None), ("group=product&order=p_convert", None),
            ("order=probability", "order must be score or p_convert, got 'probability'")]:
        response = await web.leads(api, make_mocked_request("GET", f"/leads?{query}"))
        assert response.status == 400
        body = orjson.loads(response.body)  # type: ignore[attr-defined]
        assert message is None or body == {"error": message}


# --- offline: leadscore score --model, and the memory store --------------------------------


def traffic(start: int, span: int, leads: int = 40, events: int = 500, seed: int = 5
            ) -> list[dict[str, Any]]:
    """Reproducible events of many leads in time order: pages, forms, demos, profiles,
    unsubscribes and conversions, so that every feature and stage occurs."""
    rng = random.Random(seed)
    kinds = ["page_view"] * 8 + ["form_submit", "demo_request", "profile_update",
                                 "email_unsubscribed", "converted"]
    times = sorted(rng.randrange(span) for _ in range(events))
    out = []
    for i, dt in enumerate(times):
        kind = rng.choice(kinds)
        props: dict[str, Any] = {}
        if kind == "page_view":
            props = {"url": rng.choice(["/", "/blog/a", "/product/x", "/pricing"])}
        elif kind == "profile_update":
            props = {"job_title": rng.choice(["Director", "VP Sales", "Student", "Engineer"])}
        out.append({"event_id": f"e{i}", "lead_id": f"lead-{rng.randrange(leads)}",
                    "type": kind, "ts": start + dt, "properties": props})
    return out


def cooled_before_an_event(lead: str, start: int) -> list[dict[str, Any]]:
    """A lead hot for itself and for the product group at ``start``, cooled by decay for
    both long before its next event (cause "decay", emitted by that event)."""
    def doc(i: int, kind: str, dt: int, **props: Any) -> dict[str, Any]:
        return {"event_id": f"{lead}-{i}", "lead_id": lead, "type": kind, "ts": start + dt,
                "properties": props}

    return [doc(1, "profile_update", 0, job_title="Director"),
            doc(2, "page_view", 1000, url="/product/x"), doc(3, "page_view", 2000, url="/pricing"),
            doc(4, "demo_request", 3000), doc(5, "form_submit", 4000),
            doc(6, "page_view", 2 * DAY, url="/blog/a")]


def test_score_with_a_model_prints_each_lead_with_its_probability(tmp_path: Path) -> None:
    docs = traffic(T0, 3 * DAY) + cooled_before_an_event("cool-a", T0)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(RULES_TEXT)
    model = a_model()
    path = write(tmp_path / "model.json", model)
    base = [LEADSCORE, "score", str(events), "--rules", str(rules_path), "--now", str(T0 + 9 * DAY)]

    plain = subprocess.run(base, capture_output=True, check=True).stdout
    shown = subprocess.run([*base, "--model", str(path)], capture_output=True, check=True).stdout
    with events.open("rb") as lines:
        result = replay(lines, RULES)
    at = result.at
    assert at is not None
    want = [{**summary(result.states[lead], RULES, at),
             **model.explain(result.states[lead], at, RULES)} for lead in sorted(result.states)]
    assert [orjson.loads(line) for line in shown.splitlines()] == want
    assert {len(lead["p_factors"]) for lead in want if lead["p_convert"] is not None} == {3}
    # Without the model, the lines are as they were (the same minus p_convert, p_factors).
    assert plain == b"".join(orjson.dumps(summary(result.states[lead], RULES, at)) + b"\n"
                             for lead in sorted(result.states))

    table = subprocess.run([*base, "--model", str(path), "--table"], capture_output=True,
                           check=True, env={"COLUMNS": "200", "PATH": ""}).stdout.decode()
    header = next(line for line in table.splitlines() if "lead" in line and "score" in line)
    assert header.split("┃")[7].strip() == "p"
    row = next(line for line in table.splitlines() if "│ cool-a " in line)
    cool_a = next(lead for lead in want if lead["lead_id"] == "cool-a")
    assert row.split("│")[7].strip() == f"{100 * cool_a['p_convert']:.2f}%"

    refused = subprocess.run([*base, "--model", str(write(tmp_path / "old.json",
                                                          stale(model)))],
                             capture_output=True, check=False)
    assert (refused.returncode, refused.stdout) == (1, b"")
    assert refused.stderr.decode() == f"leadscore: {refusal(stale(model), tmp_path / 'old.json')}\n"


def test_the_memory_store_explains_each_notification_from_the_state_of_its_moment() -> None:
    docs = traffic(T0, 3 * DAY) + cooled_before_an_event("cool-a", T0)
    docs.sort(key=lambda d: d["ts"])
    model = a_model()
    store = MemoryStore(RULES)
    store.explain = lambda state, at: model.explain(state, at, RULES)
    notes = store.apply_now([event_from_dict(d) for d in docs]).notifications
    assert notes == explained(engine_notes(docs, RULES), docs, RULES, model)
    assert {(n["lead_id"], n["cause"], n["group"]) for n in notes if n["cause"] == "decay"} \
        >= {("cool-a", "decay", None), ("cool-a", "decay", "product")}
    # The sweep's coolings: the state as the last event left it, at the crossing time.
    at = docs[-1]["ts"] + 30 * DAY
    finals = {lead: copy.deepcopy(state) for lead, state in store.states().items()}
    swept = store.sweep_now(at)
    assert swept
    for note in swept:
        assert note["p_convert"] == model.explain(finals[note["lead_id"]],
                                                  parse_ts(note["event_ts"]), RULES)["p_convert"]
        assert note["p_factors"] == model.explain(finals[note["lead_id"]],
                                                  parse_ts(note["event_ts"]), RULES)["p_factors"]
    # Without a model, nothing is added.
    assert not any("p_convert" in n for n in MemoryStore(RULES).apply_now(
        [event_from_dict(d) for d in docs]).notifications)


async def test_the_probability_ranking_reads_every_lead_and_keeps_the_best() -> None:
    """Many more leads than the ranking keeps at a time (it trims as it goes), some
    offered twice (as a SCAN may return a key twice): the best by brute force."""
    model = a_model()
    store = MemoryStore(RULES, history_size=0)
    store.apply_now([event_from_dict(d) for d in traffic(T0, 3 * DAY, leads=3000,
                                                          events=9000, seed=2)])
    at = T0 + 4 * DAY

    def explain(state: LeadState, at: int) -> dict[str, Any]:
        return model.explain(state, at, RULES)

    def brute(limit: int, keep: Any = None, group: str | None = None) -> list[dict[str, Any]]:
        found = []
        for lead, state in store.states().items():
            state = copy.deepcopy(state)
            cool(state, at, RULES)
            scored = RULES.group(group) if group else None
            if scored is not None and not in_group(state, scored):
                continue
            view = {**describe(state, RULES, at), **explain(state, at)}
            del view["profile"]
            if keep is not None and not keep(view):
                continue
            score = score_at(state, at, RULES) if scored is None else \
                group_score_at(state, scored, at, RULES)
            raw = state.fit + engagement_at(state, at, RULES) if scored is None else \
                group_engagement_at(state, scored, at, RULES)
            p = view["p_convert"]  # None: a customer, ranked last
            found.append(((1.0 if p is None else -p, -score, -raw, lead), view))
        return [view for _, view in sorted(found, key=lambda f: f[0])[:limit]]

    def hot(view: dict[str, Any]) -> bool:
        return bool(view["hot"])

    assert len(store.states()) > 2500
    for limit, keep, group in [(7, None, None), (1000, None, None), (5, hot, None),
                               (9, None, "product")]:
        assert await store.top_by_probability(at, limit, explain, keep, group) == \
            brute(limit, keep, group)
    twice = ByProbability(RULES, at, 3, explain)
    for state in [*store.states().values(), *store.states().values()]:
        twice.offer(copy.deepcopy(state))
    assert twice.best() == brute(3)


# --- Redis: the worker's store, the sweep and the cutover ---------------------------------

OLD = parse_rules(RULES_TEXT.replace("name: serving", "name: old")
                  .replace("points: 45", "points: 60").encode(), "old.yaml")


@pytest.mark.integration
async def test_the_redis_store_explains_events_sweeps_and_rescores(redis_url: str) -> None:
    """Live commits carry p_convert by the store's explain, before they reach the outbox;
    the sweep's coolings and a cutover's rescores too."""
    model = a_model()
    docs = sorted(traffic(T0, 3 * DAY, leads=30, events=300, seed=9)
                  + cooled_before_an_event("cool-a", T0), key=lambda d: d["ts"])
    events = [event_from_dict(d) for d in docs]
    positions = [(0, i) for i in range(len(events))]
    async with Redis.from_url(redis_url) as redis:
        prefix = f"serving-{now_ms()}"
        old = RedisStore(redis, OLD, prefix, shards=3)
        new = RedisStore(redis, RULES, prefix, shards=3)
        new.explain = lambda state, at: model.explain(state, at, RULES)
        await old.open()
        await new.open()
        await old.apply(events, T0, positions)
        assert (await new.apply(events, T0, positions)).entries == []  # rebuilding: silent
        at = docs[-1]["ts"] + HOUR

        async def no_wait() -> None:
            await asyncio.sleep(0.01)

        done = await Cutover(new, old.generation, OLD, lambda: at).run(no_wait)
        assert done is not None
        rescored = [orjson.loads(e) for e in done[1]]
        offline = MemoryStore(RULES)
        offline.apply_now(events)
        offline.sweep_now(at)
        mine = [n for n in rescored if n["rules_version"] == RULES.version]
        assert mine and {n["cause"] for n in mine} == {"rescore"}
        for note in mine:
            assert {k: note[k] for k in ("p_convert", "p_factors")} == model.explain(
                offline.states()[note["lead_id"]], at, RULES)
        assert not any("p_convert" in n for n in rescored if n not in mine)  # OLD's coolings

        # Live now: each notification as explained offline, in the outbox entries.
        more = [ev(f"m{i}", kind, at + i * 1000, lead=lead, **props) for i, (lead, kind, props)
                in enumerate([("fresh", "demo_request", {}), ("fresh", "form_submit", {}),
                              ("fresh", "page_view", {"url": "/pricing"}),
                              ("fresh", "page_view", {"url": "/product/x"})])]
        sent = [orjson.loads(e) for e in (await new.apply(
            more, at, [(0, len(events) + i) for i in range(len(more))])).entries]
        more_docs = [{"event_id": e.event_id, "lead_id": e.lead_id, "type": e.type,
                      "ts": e.ts, "properties": e.properties} for e in more]
        want = explained(engine_notes(more_docs, RULES), more_docs, RULES, model)
        assert [{**n, "emitted_at": None} for n in sent] == want and len(want) == 2

        # The sweep: "fresh" cools (for itself and the group) by decay, a month later.
        loaded = await new.load("fresh")
        assert loaded is not None
        state = loaded[0]
        later = at + 30 * DAY
        swept = [orjson.loads(e) for e in await new.sweep(later)]
        fresh = [n for n in swept if n["lead_id"] == "fresh"]
        assert [(n["type"], n["group"]) for n in fresh] == [("lead.cooled", None),
                                                            ("lead.cooled", "product")]
        for note in fresh:
            assert {k: note[k] for k in ("p_convert", "p_factors")} == model.explain(
                state, parse_ts(note["event_ts"]), RULES)


async def every_state_once(redis: Any, shards: int) -> None:
    """``RedisStore.states`` pages through a SCAN of the generation's state keys: every
    lead once (no key returned twice here), as applied; none of another prefix."""
    events = [event_from_dict(d) for d in traffic(T0, 3 * DAY, leads=50, events=400, seed=4)]
    prefix = f"serving-scan-{now_ms()}"
    store = RedisStore(redis, RULES, prefix + "?", shards=shards)  # (a glob character)
    other = RedisStore(redis, RULES, prefix + "x", shards=shards)  # what "?" would match
    await store.apply(events, T0)
    await other.apply(events[:10], T0)
    offline = MemoryStore(RULES, history_size=0)
    offline.apply_now(events)

    def shown(state: LeadState) -> tuple[Any, ...]:
        return (state.lead_id, state.t_ref, state.engagement, state.fit, state.contributions,
                state.profile, state.stage, state.hot, state.groups_hot, state.notified)

    found = [shown(state) async for state in store.states(page=7)]
    assert sorted(found) == sorted(shown(state) for state in offline.states().values())


@pytest.mark.integration
async def test_every_state_is_scanned_once(redis_url: str) -> None:
    async with Redis.from_url(redis_url) as redis:
        await every_state_once(redis, shards=3)


@pytest.mark.integration
async def test_every_state_is_scanned_once_on_a_cluster(redis_cluster_url: str) -> None:
    url = redis_cluster_url.replace("redis+cluster://", "redis://")
    async with RedisCluster.from_url(url) as redis:
        await every_state_once(redis, shards=8)


# --- a real worker ---------------------------------------------------------------------


@pytest.fixture
def rules_path(tmp_path: Path) -> Path:
    path = tmp_path / "serving.yaml"
    path.write_text(RULES_TEXT)
    return path


@pytest.fixture
async def deployment(bootstrap: str, redis_url: str, rules_path: Path, tmp_path: Path
                     ) -> AsyncIterator[Deployment]:
    model = write(tmp_path / "model.json", a_model())
    deployment = Deployment(bootstrap, redis_url, rules_path, tmp_path, history_size="8",
                            model=str(model), model_reload="0.5")
    await deployment.create_topics()
    yield deployment
    deployment.stop_all()


def get_json(worker: Worker, path: str) -> Any:
    status, body = worker.get(path)
    assert status == 200, body
    return orjson.loads(body)


class Offline:
    """The states of the same events, as the API must show them at an instant."""

    def __init__(self, docs: list[dict[str, Any]], model: Model) -> None:
        store = MemoryStore(RULES, history_size=0)
        store.apply_now([event_from_dict(d) for d in docs])
        self.states, self.model = store.states(), model

    def at(self, lead: str, at: int) -> LeadState:
        state = copy.deepcopy(self.states[lead])
        cool(state, at, RULES)
        return state

    def lead(self, lead: str, at: int) -> dict[str, Any]:
        state = self.at(lead, at)
        return {**describe(state, RULES, at), **self.model.explain(state, at, RULES)}

    def ranking(self, at: int, limit: int, by_probability: bool, hot: bool | None = None,
                stage: str | None = None, group: str | None = None) -> list[dict[str, Any]]:
        scored = RULES.group(group) if group else None
        found = []
        for lead in self.states:
            state = self.at(lead, at)
            if scored is not None and not in_group(state, scored):
                continue
            view = self.lead(lead, at)
            del view["profile"]
            is_hot = view["hot"] if scored is None else view["groups"][scored.id]["hot"]
            if (hot is not None and is_hot != hot) or (stage is not None and
                                                       view["stage"] != stage):
                continue
            if scored is None:
                score, raw = score_at(state, at, RULES), state.fit + engagement_at(state, at,
                                                                                   RULES)
            else:
                score = group_score_at(state, scored, at, RULES)
                raw = group_engagement_at(state, scored, at, RULES)
            p = view["p_convert"]  # None: a customer, ranked last
            first = (1.0 if p is None else -p) if by_probability else 0.0
            found.append(((first, -score, -raw, lead), view))
        found.sort(key=lambda f: f[0])
        return [view for _, view in found[:limit]]


@pytest.mark.integration
async def test_a_worker_serves_the_probability_everywhere_and_reloads_its_model(
        deployment: Deployment, tmp_path: Path) -> None:
    model = a_model()
    start = now_ms() - 2 * DAY
    docs = traffic(start, 2 * DAY - 60_000) + cooled_before_an_event("cool-a", start - 3 * DAY)
    docs.append({"event_id": "still-1", "lead_id": "still", "type": "profile_update",
                 "ts": start, "properties": {"job_title": "VP Sales"}})  # nothing decays
    # Likely to convert, but outside the product group: its lists must leave it out.
    docs += [{"event_id": f"out-{i}", "lead_id": "outsider", "type": kind, "ts": start + i,
              "properties": {"job_title": "Director"} if i == 0 else {}}
             for i, kind in enumerate(["profile_update", "demo_request", "form_submit"])]
    worker = deployment.worker().start()
    await deployment.produce(keyed(docs))
    await worker.wait_ready()
    await wait_for(lambda: worker.metric("leadscore_events_consumed_total") == len(docs), 90,
                   f"the worker did not consume every event; log:\n{worker.log_tail()}")
    offline = Offline(docs, model)

    # One lead now: its view and p_convert, p_factors at the answer's own instant.
    for lead in ("lead-0", "lead-3", "lead-17", "cool-a", "still"):
        for path in (f"/leads/{lead}", f"/lead?id={lead}"):
            shown = get_json(worker, path)
            at = parse_ts(shown.pop("at"))
            del shown["updated_at"]
            assert shown == offline.lead(lead, at), path
            assert len(shown["p_factors"]) == (0 if shown["stage"] == "customer" else 3)

    # The lists: by score (each lead with its probability), and by probability, exactly
    # the offline ranking, with every filter.
    cases: list[tuple[str, bool, dict[str, Any]]] = [
            ("limit=10", False, {}), ("hot=true&limit=5", False, {"hot": True}),
            ("group=product&limit=6", False, {"group": "product"}),
            ("order=p_convert&limit=10", True, {}),
            ("order=p_convert&limit=1000", True, {}),
            ("order=p_convert&hot=false&limit=7", True, {"hot": False}),
            ("order=p_convert&stage=mql&limit=5", True, {"stage": "mql"}),
            ("order=p_convert&stage=customer&limit=3", True, {"stage": "customer"}),
            ("order=p_convert&group=product&limit=8", True, {"group": "product"}),
            ("order=p_convert&group=product&limit=1000", True, {"group": "product"}),
            ("order=p_convert&group=product&hot=false&limit=4", True,
             {"group": "product", "hot": False})]
    for query, by_p, filters in cases:
        page = get_json(worker, f"/leads?{query}")
        at = parse_ts(page["at"])
        want = offline.ranking(at, int(query.rsplit("limit=", 1)[1]), by_p, **filters)
        assert page["leads"] == want, query
        assert want, query
    assert len(get_json(worker, "/leads?order=p_convert&limit=1000")["leads"]) == \
        len(offline.states)

    # Every notification sent: p_convert and p_factors of the lead's state at that moment,
    # at its event_ts; among them, the coolings by decay that an event found due.
    want_notes = explained(engine_notes(docs, RULES), docs, RULES, model)
    assert {(n["lead_id"], n["group"]) for n in want_notes if n["cause"] == "decay"} >= {
        ("cool-a", None), ("cool-a", "product")}
    records = await deployment.read_all(deployment.hot,
                                        lambda rs: len(rs) >= len(want_notes))
    got = {}
    for record in records:
        note = orjson.loads(record.value)
        got[note["notification_id"]] = {**note, "emitted_at": None}
    assert got == {n["notification_id"]: n for n in want_notes}

    # leadscore lead, with LEADSCORE_MODEL: the same probability. A lead that does not
    # decay is shown exactly; one that does lies between its values before and after.
    # A customer (converted) has none.
    decaying = 0
    for lead in ("still", "lead-0", "lead-3", "lead-17"):
        before = now_ms()
        shown = subprocess.run([LEADSCORE, "lead", lead], env=deployment.env,
                               capture_output=True, check=True)
        after = now_ms()
        p = orjson.loads(shown.stdout)["p_convert"]
        values = [offline.lead(lead, at)["p_convert"] for at in (before, after)]
        if offline.lead(lead, after)["stage"] == "customer":
            assert p is None and values == [None, None], lead
            continue
        bounds = sorted(values)
        assert bounds[0] <= p <= bounds[1], (lead, p, bounds)
        if lead == "still":
            assert bounds[0] == bounds[1]
        else:
            decaying += 1
    assert decaying >= 1
    old = write(tmp_path / "old.json", stale(model))
    refused = subprocess.run([LEADSCORE, "lead", "still"], capture_output=True, check=False,
                             env={**deployment.env, "LEADSCORE_MODEL": str(old)})
    assert (refused.returncode, refused.stderr.decode()) == (
        1, f"leadscore: {refusal(stale(model), old)}\n")

    # A model file trained for other rules: refused with one line, the model in use stays.
    served = Path(deployment.env["LEADSCORE_MODEL"])
    write(served, stale(model))
    await wait_for(lambda: worker.metric(
        'leadscore_model_reloads_total{outcome="refused"}') == 1, 30,
        f"the stale model was not refused; log:\n{worker.log_tail()}")
    shown = get_json(worker, "/leads/still")  # (not a customer: it has a probability)
    assert shown["p_convert"] == offline.lead("still", parse_ts(shown["at"]))["p_convert"]

    # A new model: served without a restart, by the API and the notifications.
    newer = a_model(intercept=0.7)
    write(served, newer)
    new_offline = Offline(docs, newer)

    def serves_the_new_model() -> bool:
        shown = get_json(worker, "/leads/still")
        at = parse_ts(shown.pop("at"))
        del shown["updated_at"]
        return bool(shown == new_offline.lead("still", at))

    await wait_for(serves_the_new_model, 30,
                   f"the new model was not served; log:\n{worker.log_tail()}")
    assert worker.metric('leadscore_model_reloads_total{outcome="loaded"}') == 1
    log = worker.log_path.read_text()
    assert log.count("the new model file is refused") == 1
    assert f"stays: {refusal(stale(model), served)}" in log
    late = [{"event_id": "late-1", "lead_id": "late", "type": "demo_request", "ts": now_ms(),
             "properties": {}},
            {"event_id": "late-2", "lead_id": "late", "type": "form_submit",
             "ts": now_ms(), "properties": {}}]
    await deployment.produce(keyed(late))
    (want_late,) = explained(engine_notes(late, RULES), late, RULES, newer)
    records = await deployment.read_all(deployment.hot, lambda rs: any(
        orjson.loads(r.value)["lead_id"] == "late" for r in rs))
    (sent,) = [orjson.loads(r.value) for r in records if orjson.loads(r.value)["lead_id"] == "late"]
    assert {**sent, "emitted_at": None} == want_late


@pytest.fixture
def no_servers(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment whose broker and Redis nobody listens on."""
    yield {"PATH": "", "LEADSCORE_BROKER": "kafka://127.0.0.1:9",
           "LEADSCORE_REDIS_URL": "redis://127.0.0.1:9/0"}


@pytest.mark.parametrize("command", [["worker"], ["dev"]])
def test_a_worker_given_a_model_of_other_rules_refuses_to_start(
        command: list[str], rules_path: Path, tmp_path: Path,
        no_servers: dict[str, str]) -> None:
    old = write(tmp_path / "old.json", stale(a_model()))
    started = subprocess.run([LEADSCORE, *command], capture_output=True, check=False, timeout=60,
                             env={**no_servers, "LEADSCORE_RULES": str(rules_path),
                                  "LEADSCORE_MODEL": str(old)})
    assert started.returncode == 1
    assert started.stderr.decode() == f"leadscore: {refusal(stale(a_model()), old)}\n"
    damaged = tmp_path / "damaged.json"
    damaged.write_bytes(b"{}")
    started = subprocess.run([LEADSCORE, *command], capture_output=True, check=False, timeout=60,
                             env={**no_servers, "LEADSCORE_RULES": str(rules_path),
                                  "LEADSCORE_MODEL": str(damaged)})
    assert (started.returncode, started.stderr.decode()) == (
        1, f"leadscore: {damaged}: not a Leadscore model file (\"format\" is not "
           "'leadscore-model/1'); train one with `leadscore model train`\n")

