"""The HTTP API of a real worker on the real servers (SPEC 7): every number it shows
must be what the offline engine computes for the same instant."""

from __future__ import annotations

import asyncio
import copy
import math
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import aiohttp
import orjson
import pytest
from test_security import call as raw_call
from worker import Deployment, Worker, keyed, wait_for

from scoring import history
from scoring.engine import LeadState, cool, engagement_at, score_at
from scoring.events import event_from_dict, parse_ts
from scoring.rules import Ruleset, load_rules
from scoring.store import MemoryStore
from scoring.views import BANDS, band, describe
from streams.demo import Traffic
from streams.runtime import now_ms

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
RULES_PATH = ROOT / "config" / "rules.yaml"
RULES = load_rules(RULES_PATH)
DAY = 86_400_000
ADMIN_TOKEN = "admin-token-2e61c8"
# Lead ids the events accept (any 1 to 200 characters) that a URL path must carry; the
# old `/leads/{lead_id}` pattern (no braces, no /) and decoding broke some of them.
ODD_IDS = ["a{b}c", "a/b", "a%2Fb", "spa ce", "ünï", "..", ".", "%", "?q=1#f", "tab\tand\nline",
           "{" + "é/" * 99 + "}"]


class Offline:
    """The engine applied in production order, with what the API derives from it."""

    def __init__(self, events: list[dict[str, Any]], rules: Ruleset) -> None:
        self.rules = rules
        store = MemoryStore(rules, history_size=len(events))
        outcome = store.apply_now([event_from_dict(doc) for doc in events])
        self.states = store.states()
        self.entries = {lead_id: lead.history for lead_id, lead in store.leads.items()}
        self.awards = Counter({rule: int(times) for rule, (times, _) in outcome.awards.items()})
        self.duplicates = outcome.duplicates

    def at(self, lead: str, at: int) -> LeadState:
        """The lead's state as of ``at``: cooled if its cooling is due, as the API shows it."""
        state = copy.deepcopy(self.states[lead])
        cool(state, at, self.rules)
        return state

    def now(self, lead: str, at: int) -> dict[str, Any]:
        """One lead as the API must show it at ``at``."""
        return describe(self.at(lead, at), self.rules, at)

    def top(self, at: int, limit: int, hot: bool | None = None, stage: str | None = None
            ) -> list[dict[str, Any]]:
        ranked = []
        for lead in self.states:
            state = self.at(lead, at)
            view = describe(state, self.rules, at)
            if (hot is None or view["hot"] == hot) and (stage is None or view["stage"] == stage):
                del view["profile"]
                raw = state.fit + engagement_at(state, at, self.rules)
                ranked.append((score_at(state, at, self.rules), raw, lead, view))
        ranked.sort(key=lambda r: (-r[0], -r[1], r[2]))  # equal scores: unclamped, then id
        return [view for _, _, _, view in ranked[:limit]]

    def history(self, lead: str, limit: int) -> list[dict[str, Any]]:
        return [history.view(e) for e in reversed(self.entries.get(lead, [])[-limit:])]


def recent_traffic(leads: int, events: int, seed: int) -> list[dict[str, Any]]:
    """Reproducible traffic over the last three days, so that 'now' sees real decay."""
    start = now_ms() - 3 * DAY
    return list(Traffic(leads, seed=seed).history(events, start, 3 * DAY - 60_000))


def get_json(worker: Worker, path: str) -> tuple[int, Any]:
    status, body = worker.get(path)
    return status, orjson.loads(body) if body else None


def call(worker: Worker, path: str, method: str = "GET", token: str | None = None
         ) -> tuple[int, Any]:
    """Any method, with a bearer token; the status and the JSON answer."""
    status, body = raw_call(worker, path, method, token)
    return status, orjson.loads(body)


def lead_path(lead: str) -> str:
    """/leads/{id} as a client sends it: percent-encoded UTF-8, "/" as %2F, and dots too
    (clients drop "." and ".." path segments)."""
    return "/leads/" + quote(lead, safe="").replace(".", "%2E")


@pytest.fixture
async def served(bootstrap: str, redis_url: str, tmp_path: Path
                 ) -> AsyncIterator[tuple[Deployment, Worker]]:
    deployment = Deployment(bootstrap, redis_url, RULES_PATH, tmp_path, history_size="8")
    await deployment.create_topics()
    worker = deployment.worker().start()
    await worker.wait_ready()
    yield deployment, worker
    deployment.stop_all()


async def test_the_api_shows_what_the_offline_engine_computes(
        served: tuple[Deployment, Worker]) -> None:
    deployment, worker = served
    events = recent_traffic(leads=40, events=800, seed=11)
    await deployment.produce(keyed(events))
    offline = Offline(events, RULES)
    await wait_for(lambda: worker.metric("leadscore_events_consumed_total") == len(events),
                   90, f"the worker did not consume every event; log:\n{worker.log_tail()}")

    # One lead now: every field, exactly as the engine computes it for the same instant.
    for lead in ("lead-0", "lead-1", "lead-7", "lead-39"):
        status, shown = get_json(worker, f"/leads/{lead}")
        assert status == 200
        at = parse_ts(shown.pop("at"))
        assert abs(at - now_ms()) < 60_000
        parse_ts(shown.pop("updated_at"))
        assert shown == offline.now(lead, at)

    # The index: highest scores now, for each filter, against brute force over all leads.
    for query, hot, stage in [("limit=10", None, None), ("hot=true&limit=5", True, None),
                              ("stage=mql&limit=5", None, "mql"),
                              ("hot=false&stage=sql&limit=3", False, "sql"),
                              ("stage=customer&limit=4", None, "customer")]:
        status, page = get_json(worker, f"/leads?{query}")
        assert status == 200, page
        at = parse_ts(page["at"])
        assert page["leads"] == offline.top(at, int(query.rsplit("=", 1)[1]), hot, stage), query
        assert (page["threshold"], page["rearm_below"]) == (RULES.threshold, RULES.rearm_below)
    assert len(get_json(worker, "/leads?hot=true&limit=5")[1]["leads"]) == 5
    # The hot line as the rules file and the notifications write it (70, not 70.0).
    assert b'"threshold":70,"rearm_below":50,' in worker.get("/leads?limit=1")[1]

    # History: the last 8 changes (LEADSCORE_HISTORY_SIZE), newest first.
    busiest = max(offline.entries, key=lambda lead: len(offline.entries[lead]))
    assert len(offline.entries[busiest]) > 8
    for lead, limit in ((busiest, 50), (busiest, 3), ("lead-5", 50)):
        status, shown = get_json(worker, f"/leads/{lead}/history?limit={limit}")
        assert status == 200
        assert shown["history"] == offline.history(lead, min(limit, 8))
        assert shown["half_life_seconds"] == RULES.half_life_ms / 1000  # type: ignore[operator]

    # Metrics: what was counted is what happened.
    assert worker.metric("leadscore_events_duplicate_total") == offline.duplicates > 0
    assert worker.metric("leadscore_events_applied_total") == len(events) - offline.duplicates
    for rule, times in offline.awards.items():
        assert worker.metric(f'leadscore_rule_awards_total{{rule="{rule}"}}') == times, rule
    _, metrics = worker.get("/metrics")
    for family in (b"leadscore_apply_latency_seconds_bucket", b"leadscore_consumer_lag{",
                   b"leadscore_redis_roundtrip_seconds_bucket{",
                   b"leadscore_end_to_end_latency_seconds_bucket"):
        assert family in metrics


async def test_unknown_leads_and_bad_queries_get_json_errors(
        served: tuple[Deployment, Worker]) -> None:
    _, worker = served
    assert get_json(worker, "/leads/nobody") == (404, {"error": "no lead 'nobody'"})
    assert get_json(worker, "/leads/nobody/history") == (404, {"error": "no lead 'nobody'"})
    assert get_json(worker, "/lead?id=nobody") == (404, {"error": "no lead 'nobody'"})
    assert get_json(worker, "/lead/history?id=nobody") == (404, {"error": "no lead 'nobody'"})
    status, shown = get_json(worker, "/bands")
    parse_ts(shown.pop("at"))
    assert (status, shown) == (200, {"stage": None, "leads": 0, "bands": [0] * 10,
                                     "threshold": 70, "rearm_below": 50})
    assert get_json(worker, "/leads?limit=0") == (
        400, {"error": "limit must be a whole number from 1 to 1000, got '0'"})
    assert get_json(worker, "/leads?hot=yes") == (400, {"error": "hot must be true or false, "
                                                                 "got 'yes'"})
    assert get_json(worker, "/leads?stage=lost") == (
        400, {"error": "stage must be one of prospect, mql, sql, customer, got 'lost'"})
    status, page = get_json(worker, "/leads")
    assert (status, page["leads"]) == (200, [])
    assert get_json(worker, "/leads/" + "x" * 201) == (
        400, {"error": "lead_id is 201 characters, more than 200"})


async def test_every_lead_id_the_events_accept_is_readable_and_erasable(
        bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    deployment = Deployment(bootstrap, redis_url, RULES_PATH, tmp_path, admin_token=ADMIN_TOKEN)
    await deployment.create_topics()
    worker = deployment.worker().start()
    try:
        await worker.wait_ready()
        assert len(ODD_IDS[-1]) == 200
        now = now_ms()
        await deployment.produce(keyed([
            {"event_id": f"odd-{i}", "lead_id": lead, "type": "form_submit", "ts": now}
            for i, lead in enumerate(ODD_IDS)]))
        await wait_for(lambda: worker.metric("leadscore_events_applied_total") == len(ODD_IDS),
                       60, f"events not applied; log:\n{worker.log_tail()}")

        for lead in ODD_IDS:  # decoded exactly once: a%252Fb is "a%2Fb", a%2Fb is "a/b"
            status, shown = call(worker, lead_path(lead))
            assert (status, shown["lead_id"]) == (200, lead), (lead, shown)
            status, shown = call(worker, lead_path(lead) + "/history")
            assert (status, shown["lead_id"], len(shown["history"])) == (200, lead, 1), lead
        for lead in ODD_IDS:  # the query form, for browsers (which drop "." and ".." paths)
            status, shown = call(worker, "/lead?id=" + quote(lead, safe=""))
            assert (status, shown["lead_id"]) == (200, lead), (lead, shown)
            status, shown = call(worker, "/lead/history?limit=5&id=" + quote(lead, safe=""))
            assert (status, shown["lead_id"], len(shown["history"])) == (200, lead, 1), lead
        assert call(worker, "/lead?id=a+b")[1] == {"error": "no lead 'a b'"}  # + is a space
        # Braces need no encoding, and lower-case escapes decode like upper-case ones.
        assert call(worker, "/leads/a{b}c")[1]["lead_id"] == "a{b}c"
        assert call(worker, "/leads/a%2fb/history")[1]["lead_id"] == "a/b"

        for lead in ODD_IDS:  # erasing one does not touch its look-alikes
            assert call(worker, lead_path(lead), "DELETE", ADMIN_TOKEN) == (
                200, {"forgotten": lead}), lead
            assert call(worker, lead_path(lead)) == (404, {"error": f"no lead {lead!r}"})
        assert call(worker, "/leads?limit=100")[1]["leads"] == []
        too_long = lead_path("é" * 201)
        assert call(worker, too_long) == call(worker, too_long, "DELETE", ADMIN_TOKEN) == (
            400, {"error": "lead_id is 201 characters, more than 200"})
    finally:
        deployment.stop_all()


async def test_unknown_paths_and_odd_limits_get_json_errors(
        served: tuple[Deployment, Worker]) -> None:
    _, worker = served
    hint = "(a lead id is one path segment, percent-encoded: / as %2F)"
    for method, path in [("GET", "/leads/"), ("GET", "/leads/a/b"), ("GET", "/leads//history"),
                         ("GET", "/leads/a/history/"), ("GET", "/leads/a/story"),
                         ("DELETE", "/leads/a/history")]:
        assert call(worker, path, method) == (
            404, {"error": f"no such endpoint: {method} {path} {hint}"})
    assert call(worker, "/leads/%FF") == (
        400, {"error": "a lead id in the path must be UTF-8, percent-encoded"})
    # Only ASCII digits, 1 to 1000: "²" and 5,000 digits were 500s, "٣" (3) was taken.
    for query, shown in [("%C2%B2", "²"), ("%D9%A3", "٣"), ("1" * 5000, "1" * 20 + "..."),
                         ("00005", "00005"), ("%2B5", "+5"), ("%205", " 5"), ("1001", "1001")]:
        error = {"error": f"limit must be a whole number from 1 to 1000, got {shown!r}"}
        assert call(worker, f"/leads?limit={query}") == (400, error), query
        assert call(worker, f"/leads/nobody/history?limit={query}") == (400, error), query
    assert call(worker, "/leads?limit=1000")[0] == 200
    assert call(worker, "/leads?limit=0005")[0] == 200


async def test_the_live_stream_carries_each_notification_as_it_is_sent(
        served: tuple[Deployment, Worker]) -> None:
    """lead.hot, then lead.cooled (the dashboard's two feeds), each as it is sent."""
    deployment, worker = served
    now = now_ms()
    events = [{"event_id": f"s{i}", "lead_id": "streamed", "type": kind, "ts": now + i}
              for i, kind in enumerate(["consultation_requested", "add_to_cart",
                                        "form_submit"])]
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{worker.port}/stream") as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        assert await response.content.readline() == b": connected\n"

        async def next_notification() -> Any:
            lines: list[bytes] = []
            while not lines or not lines[-1].startswith(b"data: "):
                lines.append(await asyncio.wait_for(response.content.readline(), 30))
            assert lines[-2:-1] == [b"event: notification\n"]
            return orjson.loads(lines[-1][len(b"data: "):])

        await deployment.produce(keyed(events))
        hot = await next_notification()
        # Two unsubscribes: 115 - 50 is 65, still hot; 115 - 100 is below rearm_below (50).
        await deployment.produce(keyed([
            {"event_id": f"u{i}", "lead_id": "streamed", "type": "email_unsubscribed",
             "ts": now + 10 + i} for i in range(2)]))
        cooled = await next_notification()
    records = await deployment.read_all(deployment.hot, lambda rs: len(rs) >= 2)
    assert [hot, cooled] == [orjson.loads(record.value) for record in records]
    assert (hot["type"], hot["lead_id"], hot["event_id"]) == ("lead.hot", "streamed", "s1")
    assert (cooled["type"], cooled["lead_id"], cooled["event_id"], cooled["cause"]) == (
        "lead.cooled", "streamed", "u1", "event")


async def test_bands_and_the_stage_filter_count_and_rank_known_scores_exactly(
        served: tuple[Deployment, Worker]) -> None:
    """Seven leads whose scores now are known (config/rules.yaml: a CEO is fit 20, a
    form_submit +25, a consultation_requested +50, an add_to_cart +40, an unsubscribe
    -50; the half-life is 30 days, so a minute's decay takes 8e-4 from 50 points)."""
    deployment, worker = served
    t = now_ms() - 60_000
    ahead = now_ms() + 1_800_000  # half an hour ahead: within LEADSCORE_MAX_CLOCK_SKEW (1h)

    def lead(lead_id: str, start: int, *kinds: str) -> list[dict[str, Any]]:
        return [{"event_id": f"{lead_id}-{i}", "lead_id": lead_id, "ts": start + i * 1000,
                 **({"type": kind} if kind != "ceo" else {
                     "type": "profile_update", "properties": {"job_title": "CEO"}})}
                for i, kind in enumerate(kinds)]

    # A late form_submit, dated so long before the lead's last event that its 25 points
    # count 9.98 there: 79.98 now (band 7), though the index key, which reads every lead
    # as decaying since its last event, has this one's E grown back by 2^(30 min/30 d),
    # to 80.009 (band 8): the leads dated ahead must be read, not counted by key.
    half_life = RULES.half_life_ms
    assert half_life is not None
    late = ahead + 1000 - round(half_life * math.log2(25 / 9.98))
    events = (lead("zero", t, "email_unsubscribed")  # -50, clamped to 0: band 0
              + lead("fit-20", t, "ceo")  # 20 exactly: band 2
              + lead("mql-45", t, "ceo", "form_submit")  # 45 less decay: band 4
              + lead("hot-69", t, "ceo", "consultation_requested")  # 70 when sent, now
              #   69.9992, shown as 70.0: band 6 (SPEC 3 compares unrounded)
              + lead("hot-70", ahead, "ceo", "consultation_requested")  # dated ahead: no
              #   decay before its time, so 70 exactly: band 7
              + lead("hot-80-less", ahead, "ceo", "consultation_requested")
              + [{"event_id": "late", "lead_id": "hot-80-less", "type": "form_submit",
                  "ts": late}]  # 79.98: band 7
              + lead("hot-100", t, "ceo", "consultation_requested", "add_to_cart"))  # 110,
    #   clamped to 100: band 9
    await deployment.produce(keyed(events))
    await wait_for(lambda: worker.metric("leadscore_events_applied_total") == len(events),
                   60, f"events not applied; log:\n{worker.log_tail()}")
    offline = Offline(events, RULES)

    for query, want in [
            ("", [1, 0, 1, 0, 1, 0, 1, 2, 0, 1]),
            ("?stage=prospect", [1, 0, 1, 0, 0, 0, 0, 0, 0, 0]),
            ("?stage=mql", [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]),
            ("?stage=sql", [0, 0, 0, 0, 0, 0, 1, 2, 0, 1]),
            ("?stage=customer", [0] * 10)]:
        status, shown = call(worker, "/bands" + query)
        assert status == 200, shown
        at = parse_ts(shown.pop("at"))
        stage = query.partition("=")[2] or None
        assert shown == {"stage": stage, "leads": sum(want), "bands": want,
                         "threshold": 70, "rearm_below": 50}, query
        brute = [0] * BANDS
        for lead_id, state in offline.states.items():
            if stage in (None, state.stage):
                brute[band(score_at(offline.at(lead_id, at), at, RULES))] += 1
        assert brute == want, query
    assert call(worker, "/bands?stage=lost") == (
        400, {"error": "stage must be one of prospect, mql, sql, customer, got 'lost'"})

    # The stage filter of the lead list: exactly these leads, in this order (hot-70 before
    # hot-69, both shown as 70.0: the unrounded score orders them).
    for query, want in [("stage=sql", [("hot-100", 100.0), ("hot-80-less", 79.98),
                                       ("hot-70", 70.0), ("hot-69", 70.0)]),
                        ("stage=sql&limit=2", [("hot-100", 100.0), ("hot-80-less", 79.98)]),
                        ("stage=sql&hot=true&limit=1", [("hot-100", 100.0)]),
                        ("stage=sql&hot=false", []),
                        ("stage=mql", [("mql-45", 45.0)]),
                        ("stage=prospect", [("fit-20", 20.0), ("zero", 0.0)]),
                        ("stage=customer", [])]:
        status, page = call(worker, f"/leads?{query}")
        assert status == 200, page
        assert [(view["lead_id"], view["score"]) for view in page["leads"]] == want, query
        given = dict(parse_qsl(query))
        hot = {"true": True, "false": False}.get(given.get("hot", ""))
        assert page["leads"] == offline.top(parse_ts(page["at"]), int(given.get("limit", 20)),
                                            hot, given["stage"]), query
