"""``leadscore notify`` (SPEC 13) against a real HTTP server, a real broker and Redis.

The endpoints are an aiohttp server in a thread of its own (its own event loop), which
records every request and answers as each test's script says. The sink runs in the
test's event loop (``running``) or as a real ``leadscore notify`` process (SIGKILL,
logs). Every wait is on a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import hmac
import itertools
import signal
import ssl
import subprocess
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka_secure import make_pki
from worker import LEADSCORE, wait_for

from scoring.errors import DestinationsError
from scoring.events import format_ts
from streams import metrics
from streams.connect import redis_client
from streams.destinations import Destination, load_destinations, parse_destinations
from streams.embedded import create_topics, free_port
from streams.notify import Sink
from streams.runtime import now_ms
from streams.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
RUN = uuid.uuid4().hex[:6]  # topics, groups and keys of this session only
_tests = itertools.count()
SECRET = "whsec-7f3a9c2e-do-not-log"

# ---------------------------------------------------------------- the endpoint


@dataclass(frozen=True)
class Received:
    path: str
    at: float  # time.monotonic() on arrival
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def id(self) -> str | None:
        return self.headers.get("x-leadscore-notification-id")


@dataclass(frozen=True)
class Answer:
    status: int = 200
    delay: float = 0.0  # the endpoint's own latency
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None  # answer only once it is set


Script = Callable[[Received, int], Answer]  # a request, and how many came before with its id


class Endpoint:
    """A real HTTP server on 127.0.0.1: POST /<name> answers as ``scripts[name]`` says
    (200 by default) and is recorded."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.port, self.tls = free_port(), tls
        self.scripts: dict[str, Script] = {}
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> Endpoint:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def url(self, name: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/{name}"

    def received(self, name: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if name is None or r.path == name]

    def ids(self, name: str) -> list[str | None]:
        return [r.id for r in self.received(name)]

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls).start()

    async def _handle(self, request: web.Request) -> web.Response:
        got = Received(request.match_info["name"], time.monotonic(),
                       {k.lower(): v for k, v in request.headers.items()}, await request.read())
        with self._lock:
            before = sum(1 for r in self._received if r.path == got.path and r.id == got.id)
            self._received.append(got)
        answer = self.scripts.get(got.path, lambda r, n: Answer())(got, before)
        if answer.hold is not None:
            await asyncio.get_running_loop().run_in_executor(None, answer.hold.wait, 60)
        if answer.delay:
            await asyncio.sleep(answer.delay)  # the endpoint's latency, part of the script
        return web.Response(status=answer.status, headers=answer.headers)


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    with Endpoint() as server:
        yield server


# ---------------------------------------------------------------- topics, sink, notifications


class Topics:
    """A notifications topic, an undeliverable topic, a group and a key prefix of its own."""

    def __init__(self, bootstrap: str, redis_url: str, partitions: int) -> None:
        n = f"notify-{RUN}-{next(_tests)}"
        self.bootstrap, self.redis_url, self.partitions = bootstrap, redis_url, partitions
        self.hot, self.undeliverable, self.prefix = f"{n}-hot", f"{n}-undeliverable", n
        self.group = f"{n}-group"

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "broker": f"kafka://{self.bootstrap}", "redis_url": self.redis_url,
            "topic_hot": self.hot, "topic_undeliverable": self.undeliverable,
            "key_prefix": self.prefix, "notify_group": self.group, "notify_start": "earliest",
            "broker_session_timeout": 3.0, "web_host": "127.0.0.1", "notify_port": free_port(),
            "dashboard_url": "https://leadscore.example.com/", **overrides}
        return Settings(**values)

    def env(self, settings: Settings) -> dict[str, str]:
        """The environment of a ``leadscore notify`` process with these settings."""
        import os

        names = ("broker", "topic_hot", "topic_undeliverable", "key_prefix", "notify_group",
                 "notify_start", "broker_session_timeout", "web_host", "notify_port")
        return {**os.environ, "LEADSCORE_REDIS_URL": self.redis_url,
                **{f"LEADSCORE_{name.upper()}": str(getattr(settings, name)) for name in names}}

    async def produce(self, records: list[tuple[bytes, bytes | None]]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=False,
                                    acks="all")
        await producer.start()
        try:
            await asyncio.gather(*[await producer.send(self.hot, value, key=key)
                                   for key, value in records])
        finally:
            await producer.stop()

    async def read(self, topic: str, count: int, timeout: float = 30) -> list[Any]:
        """The first ``count`` records of ``topic``."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            records: list[Any] = []
            deadline = time.monotonic() + timeout
            while len(records) < count:
                assert time.monotonic() < deadline, f"{topic}: {len(records)} of {count} records"
                for part in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(part)
            return records
        finally:
            await consumer.stop()

    async def size(self, topic: str) -> int:
        """How many records ``topic`` holds (its partition 0)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            return int((await consumer.end_offsets([tp]))[tp])
        finally:
            await consumer.stop()

    async def committed(self) -> int:
        """The group's committed offsets, summed over the partitions."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            offsets = [await consumer.committed(TopicPartition(self.hot, p))
                       for p in range(self.partitions)]
            return sum(o or 0 for o in offsets)
        finally:
            await consumer.stop()


async def new_topics(bootstrap: str, redis_url: str, partitions: int = 1) -> Topics:
    made = Topics(bootstrap, redis_url, partitions)
    await create_topics(bootstrap, {made.hot: made.partitions, made.undeliverable: 1})
    return made


@pytest.fixture
async def topics(bootstrap: str, redis_url: str) -> Topics:
    return await new_topics(bootstrap, redis_url)


def destinations(tmp_path: Path, text: str) -> list[Destination]:
    (tmp_path / "secret").write_text(SECRET + "\n")  # the newline an editor adds
    path = tmp_path / "destinations.yaml"
    path.write_text(textwrap.dedent(text).replace("SECRET_FILE", str(tmp_path / "secret")))
    return load_destinations(path)


def note(lead: str, n: int, kind: str = "lead.hot", score: float = 80.0, stage: str = "sql",
         **fields: Any) -> dict[str, Any]:
    """A notification as the worker writes one (SPEC 4)."""
    return {"type": kind, "notification_id": f"{lead}:{n}", "lead_id": lead, "score": score,
            "fit": 20.0, "engagement": score - 20, "stage": stage, "threshold": 70,
            "event_id": f"e-{lead}-{n}", "event_ts": format_ts(now_ms()),
            "emitted_at": format_ts(now_ms()), "rules_version": "3f2a9c0d1b7e",
            "reasons": [{"rule": "pricing-page", "points": 44.1},
                        {"rule": "decision-maker", "points": 20.0},
                        {"rule": "webinar", "points": 10.0}, {"rule": "site-visit", "points": 6}],
            "cause": "event", "group": None, **fields}


def account_note(account: str, n: int, score: float = 85.0) -> dict[str, Any]:
    """An account's notification (SPEC 11): no lead_id, stage or group."""
    return {"type": "account.hot", "notification_id": f"{account}:{n}", "account_id": account,
            "score": score, "fit": 20.0, "engagement": score - 20, "threshold": 80,
            "cause": "event", "event_ts": format_ts(now_ms()), "emitted_at": format_ts(now_ms()),
            "rules_version": "3f2a9c0d1b7e", "leads": [{"lead_id": "lead-1", "points": 40.0}],
            "reasons": [{"rule": "intent-surge", "points": 15.0}]}


def keyed(*notes: dict[str, Any]) -> list[tuple[bytes, bytes | None]]:
    return [(str(n.get("lead_id") or n["account_id"]).encode(), orjson.dumps(n)) for n in notes]


@contextlib.asynccontextmanager
async def running(settings: Settings, chosen: list[Destination]) -> AsyncIterator[Sink]:
    """The sink in this event loop, ready (partitions assigned, starts settled)."""
    async with redis_client(settings) as redis:
        sink = Sink(settings, chosen, redis)
        task = asyncio.create_task(sink.run())
        try:
            await wait_for(lambda: sink.ready or task.done(), 60, "the sink never got ready")
            assert not task.done(), task.exception()
            yield sink
        finally:
            sink.stop()
            await asyncio.wait_for(task, 60)


def settled(sink: Sink, count: int) -> Callable[[], bool]:
    """Every one of ``count`` records read and done for every destination."""
    return lambda: (sum(p.next or 0 for p in sink.parts.values()) == count
                    and not any(p.pending for p in sink.parts.values()))


def sample(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(port: int) -> str:
    """A sink process's /metrics ("" while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())
    except OSError:
        return ""


def gaps(received: list[Received]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(received)]


# ---------------------------------------------------------------- the destinations file

BAD = """\
destinations:
  - id: crm
    type: webhook
    url: https://crm.example.com/hooks/tok-SECRETPATH
    secret_env: LEADSCORE_TEST_UNSET_SECRET
    filter: {types: [lead.hott], min_score: high, stages: [sql, won]}
  - id: sales-floor
    type: slack
    url_file: /nonexistent/slack_url
    secret_file: /run/secrets/x
    filter: {accounts: yes}
  - id: crm
    type: webhok
    url: ftp://files.example.com/tok-SECRETPATH
    concurrency: 0
    retry: {attempts: 3, backoff: 10s, max_backoff: 1s}
    timeout: 7x
    fliter: {}
  - id: slack
    type: slack
    url: https://hooks.slack.com/services/T0/B0/tok-SECRETPATH
    url_file: /run/secrets/slack
    filter: {types: [lead.hot], accounts: true}
retry: {attempts: 8, backoff: 1s, max_backoff: 5m}
"""


def test_a_bad_destinations_file_is_refused_with_every_problem_located() -> None:
    with pytest.raises(DestinationsError) as refused:
        parse_destinations(BAD.encode(), "bad.yaml")
    assert refused.value.problems == [
        'destinations[0].filter.types: "lead.hott" is not one of the notification types '
        '(did you mean "lead.hot"?)',
        'destinations[0].filter.min_score: expected a number, got "high"',
        'destinations[0].filter.stages: "won" is not one of the stages (use prospect, mql, '
        'sql, customer)',
        "destinations[0].secret_env: the environment variable LEADSCORE_TEST_UNSET_SECRET is "
        "not set, or empty",
        'destinations[1].filter.accounts: Input should be a valid boolean, got "yes"',
        "destinations[1].url_file: cannot read /nonexistent/slack_url (No such file or "
        "directory)",
        "destinations[1].secret_file: a slack destination is not signed (Slack does not check "
        "signatures); remove it",
        "destinations[2].type: Input should be 'webhook' or 'slack', got \"webhok\"",
        "destinations[2].concurrency: Input should be greater than or equal to 1, got 0",
        'destinations[2].timeout: "7x" is not a duration (use 250ms, 1s, 5m, 1h or a number '
        'of seconds)',
        'destinations[2].fliter: unknown key (did you mean "filter"?)',
        "destinations[2].url: not an http:// or https:// URL with a host (not shown: it may be "
        "a credential)",
        "destinations[2].retry.max_backoff: 1 s is shorter than backoff (10 s)",
        'destinations[2].id: duplicate id "crm" (first used at destinations[0]); ids must be '
        'unique',
        "destinations[3]: give one of url and url_file, not both",
        "destinations[3].filter: types lead.hot with accounts: true let no notification "
        "through; remove one",
    ]
    assert "SECRETPATH" not in str(refused.value)


def test_the_example_destinations_file_is_valid(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    example = (ROOT / "config" / "destinations.example.yaml").read_text()
    (tmp_path / "slack_webhook_url").write_text("https://hooks.slack.com/services/T0/B0/x\n")
    monkeypatch.setenv("CRM_HOOK_SECRET", "s3cret")
    loaded = parse_destinations(
        example.replace("/run/secrets/", f"{tmp_path}/").encode(), "example")
    assert [(d.id, d.type) for d in loaded] == [("crm", "webhook"), ("sales-floor", "slack")]
    assert "hooks.slack.com" not in repr(loaded)  # URLs and secrets are masked


@pytest.mark.parametrize("command", ["notify", "dev"])
def test_the_commands_refuse_a_bad_file_before_they_start(command: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    done = subprocess.run([LEADSCORE, command, "--destinations", str(bad)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"leadscore: {bad}: 16 problems\n  destinations[0].filter")
    assert "SECRETPATH" not in done.stderr


# ---------------------------------------------------------------- what is sent


async def test_a_webhook_gets_the_topic_bytes_signed_and_slack_a_readable_message(
        topics: Topics, endpoint: Endpoint, tmp_path: Path) -> None:
    chosen = destinations(tmp_path, f"""
        destinations:
          - {{id: crm, type: webhook, url: "{endpoint.url('crm')}", secret_file: SECRET_FILE}}
          - {{id: sales, type: slack, url: "{endpoint.url('sales')}"}}
        """)
    hot = note("lead 7/ä", 3, score=72.5)
    raw = orjson.dumps(hot, option=orjson.OPT_INDENT_2)  # any bytes: sent exactly as read
    await topics.produce([(b"lead 7/\xc3\xa4", raw), (b"lead-8", None)])  # and a tombstone
    async with running(topics.settings(), chosen) as sink:
        await wait_for(settled(sink, 2), 30, "not delivered")
    (crm,) = endpoint.received("crm")
    assert crm.body == raw
    assert crm.headers["content-type"] == "application/json"
    assert crm.headers["x-leadscore-notification-id"] == "lead 7/%C3%A4:3"
    expected = hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    assert crm.headers["x-leadscore-signature"] == f"sha256={expected}"
    (slack,) = endpoint.received("sales")
    assert orjson.loads(slack.body) == {"text": (
        ":fire: Lead *lead 7/ä* is hot: score 72.5 (hot at 70), stage sql\n"
        "Why: pricing-page +44.1, decision-maker +20, webinar +10\n"
        "<https://leadscore.example.com/#lead=lead%207%2F%C3%A4|Open lead 7/ä on the "
        "dashboard>")}
    # The tombstone went nowhere: neither to a destination nor to the undeliverable topic.
    assert endpoint.ids("crm") == ["lead 7/%C3%A4:3"]
    assert await topics.size(topics.undeliverable) == 0


async def test_each_filter_lets_through_only_what_it_names(
        topics: Topics, endpoint: Endpoint, tmp_path: Path) -> None:
    filters = {"all": "{}", "cooled": "{types: [lead.cooled]}", "high": "{min_score: 75}",
               "customers": "{stages: [customer]}", "own": "{groups: [null]}",
               "product": "{groups: [product-a]}", "accounts": "{accounts: true}",
               "leads": "{accounts: false}",
               "crm": "{types: [lead.hot], min_score: 70, stages: [sql, customer], "
                      "groups: [null]}"}
    chosen = destinations(tmp_path, "destinations:\n" + "".join(
        f"  - {{id: {name}, type: slack, url: \"{endpoint.url(name)}\", filter: {f}}}\n"
        for name, f in filters.items()))
    notes = {"a": note("a", 1), "b": note("b", 1, "lead.cooled", 49.0),
             "c": note("c", 1, score=72.0, stage="customer"),
             "d": note("d", 1, score=90.0, group="product-a"),
             "e": account_note("e", 1), "f": {**note("f", 1, score=71.0, stage="mql")}}
    del notes["f"]["group"]  # written before groups existed: the lead's own score
    await topics.produce(keyed(*notes.values()))
    async with running(topics.settings(), chosen) as sink:
        await wait_for(settled(sink, len(notes)), 30, "not delivered")
    got = {name: sorted(str(i).split(":")[0] for i in endpoint.ids(name)) for name in filters}
    assert got == {"all": ["a", "b", "c", "d", "e", "f"], "cooled": ["b"],
                   "high": ["a", "d", "e"], "customers": ["c", "e"],
                   "own": ["a", "b", "c", "e", "f"], "product": ["d", "e"], "accounts": ["e"],
                   "leads": ["a", "b", "c", "d", "f"], "crm": ["a", "c"]}


async def test_repeats_of_a_notification_id_are_delivered_once(
        topics: Topics, endpoint: Endpoint, tmp_path: Path) -> None:
    chosen = destinations(tmp_path, f"""
        destinations:
          - {{id: crm, type: webhook, url: "{endpoint.url('crm')}", secret_file: SECRET_FILE}}
        """)
    endpoint.scripts["crm"] = lambda r, n: Answer(delay=0.2)  # repeats arrive while on its way
    first, other = note("lead-1", 1), note("lead-2", 1)
    namesake = account_note("lead-1", 1)  # an account's own id, "lead-1:1" too: not a repeat
    dropped = sample("leadscore_notify_duplicates_total", {"destination": "crm"})
    await topics.produce(keyed(first, first, other, namesake, first))
    async with running(topics.settings(), chosen) as sink:
        await wait_for(settled(sink, 5), 30, "not delivered")
        await topics.produce(keyed(first))  # after it was delivered
        await wait_for(settled(sink, 6), 30, "not settled")
    # A new group reads the topic again from the start: the ledger still knows them all.
    async with running(topics.settings(notify_group=f"{topics.group}-2"), chosen) as sink:
        await wait_for(settled(sink, 6), 30, "not settled")
    got = sorted((orjson.loads(r.body)["type"], r.id) for r in endpoint.received("crm"))
    assert got == [("account.hot", "lead-1:1"), ("lead.hot", "lead-1:1"), ("lead.hot", "lead-2:1")]
    # Two read while the first was on its way, one after, six on the second reading.
    assert sample("leadscore_notify_duplicates_total", {"destination": "crm"}) - dropped == 9


async def test_a_tombstone_makes_every_destination_forget_the_lead(
        topics: Topics, endpoint: Endpoint, tmp_path: Path) -> None:
    chosen = destinations(tmp_path, f"""
        destinations:
          - {{id: one, type: slack, url: "{endpoint.url('one')}"}}
          - {{id: two, type: slack, url: "{endpoint.url('two')}"}}
        """)
    await topics.produce(keyed(note("gone", 1), note("kept", 1)))
    settings = topics.settings()
    async with running(settings, chosen) as sink:
        await wait_for(settled(sink, 2), 30, "not delivered")
        keys = sorted(await sink.redis.keys(f"{topics.prefix}:notify:*"))
        assert keys == [f"{topics.prefix}:notify:{d}:lead:{lead}".encode()
                        for d in ("one", "two") for lead in ("gone", "kept")]
        await topics.produce([(b"gone", None)])
        await wait_for(settled(sink, 3), 30, "tombstone not done")
        keys = sorted(await sink.redis.keys(f"{topics.prefix}:notify:*"))
        assert keys == [f"{topics.prefix}:notify:{d}:lead:kept".encode() for d in ("one", "two")]


# ---------------------------------------------------------------- failures


async def test_500s_and_timeouts_are_retried_with_exponential_backoff(
        topics: Topics, endpoint: Endpoint, tmp_path: Path) -> None:
    chosen = destinations(tmp_path, f"""
        destinations:
          - {{id: flaky, type: webhook, url: "{endpoint.url('flaky')}",
              secret_file: SECRET_FILE}}
          - {{id: slow, type: webhook, url: "{endpoint.url('slow')}", secret_file: SECRET_FILE,
              timeout: 300ms}}
        retry: {{attempts: 5, backoff: 200ms, max_backoff: 10s}}
        """)
    endpoint.scripts["flaky"] = lambda r, n: Answer(500 if n < 3 else 200)
    endpoint.scripts["slow"] = lambda r, n: Answer(delay=1.0 if n < 2 else 0)
    await topics.produce(keyed(note("lead-1", 1)))
    async with running(topics.settings(), chosen) as sink:
        await wait_for(settled(sink, 1), 30, "not delivered")
    flaky, slow = endpoint.received("flaky"), endpoint.received("slow")
    assert len(flaky) == 4 and len(slow) == 3
    # Waits of 200, 400, 800 ms, each less at most half of it by the jitter.
    assert [g >= low for g, low in zip(gaps(flaky), (0.1, 0.2, 0.4), strict=True)] == [True] * 3
    assert gaps(flaky)[2] > gaps(flaky)[0]  # it grows
    # A timeout (300 ms) and then the back-off.
    assert [g >= 0.3 + low for g, low in zip(gaps(slow), (0.1, 0.2), strict=True)] == [True] * 2
    labels = {"destination": "flaky", "reason": "http_5xx"}
    assert sample("leadscore_notify_failures_total", labels) == 3
    labels = {"destination": "slow", "reason": "timeout"}
    assert sample("leadscore_notify_failures_total", labels) == 2


async def test_retry_after_is_honoured_in_seconds_and_as_an_http_date(
        topics: Topics, endpoint: Endpoint, tmp_path: Path) -> None:
    chosen = destinations(tmp_path, f"""
        destinations:
          - {{id: busy, type: slack, url: "{endpoint.url('busy')}"}}
          - {{id: later, type: slack, url: "{endpoint.url('later')}"}}
        retry: {{attempts: 3, backoff: 50ms, max_backoff: 10s}}
        """)
    endpoint.scripts["busy"] = lambda r, n: Answer(429, headers={"Retry-After": "1"}) \
        if n == 0 else Answer()

    def later(r: Received, n: int) -> Answer:
        date = email.utils.formatdate(time.time() + 2.5, usegmt=True)  # whole seconds: >= 1.5
        return Answer(503, headers={"Retry-After": date}) if n == 0 else Answer()

    endpoint.scripts["later"] = later
    await topics.produce(keyed(note("lead-1", 1)))
    async with running(topics.settings(), chosen) as sink:
        await wait_for(settled(sink, 1), 30, "not delivered")
    assert gaps(endpoint.received("busy"))[0] >= 1.0
    assert gaps(endpoint.received("later"))[0] >= 1.4


async def test_the_undeliverable_topic_gets_what_was_refused_or_ran_out_of_retries(
        topics: Topics, endpoint: Endpoint, tmp_path: Path) -> None:
    chosen = destinations(tmp_path, f"""
        destinations:
          - {{id: down, type: slack, url: "{endpoint.url('down')}"}}
          - {{id: refuses, type: slack, url: "{endpoint.url('refuses')}",
              retry: {{attempts: 5, backoff: 50ms}}}}
        retry: {{attempts: 3, backoff: 50ms, max_backoff: 1s}}
        """)
    endpoint.scripts["down"] = lambda r, n: Answer(503)
    endpoint.scripts["refuses"] = lambda r, n: Answer(400)
    sent = orjson.dumps(note("lead-1", 1))
    await topics.produce([(b"lead-1", sent), (b"lead-2", b"{not json")])
    async with running(topics.settings(), chosen) as sink:
        await wait_for(settled(sink, 2), 30, "not dead-lettered")
    assert (len(endpoint.received("down")), len(endpoint.received("refuses"))) == (3, 1)
    records = await topics.read(topics.undeliverable, 3)
    letters = {dict(r.headers)["leadscore.destination"].decode(): (r, {
        name: value.decode() for name, value in r.headers}) for r in records}
    assert sorted(letters) == ["*", "down", "refuses"]
    for name, status, kind, reason, tries in [
            ("down", "503", "retries_exhausted", "3 tries failed, the last: answered 503", "3"),
            ("refuses", "400", "rejected", "not retried: answered 400", "1")]:
        record, headers = letters[name]
        assert (record.key, record.value) == (b"lead-1", sent)
        assert {k: headers[k] for k in ("leadscore.status", "leadscore.kind", "leadscore.reason",
                                        "leadscore.attempts", "leadscore.notification_id",
                                        "leadscore.topic", "leadscore.offset")} == {
            "leadscore.status": status, "leadscore.kind": kind, "leadscore.reason": reason,
            "leadscore.attempts": tries, "leadscore.notification_id": "lead-1:1",
            "leadscore.topic": topics.hot, "leadscore.offset": "0"}
    record, headers = letters["*"]
    assert (record.value, headers["leadscore.reason"]) == (b"{not json",
                                                           "not a notification: not JSON")


async def test_a_dead_letter_produced_back_reaches_only_the_destinations_without_it(
        topics: Topics, endpoint: Endpoint, tmp_path: Path) -> None:
    chosen = destinations(tmp_path, f"""
        destinations:
          - {{id: fine, type: slack, url: "{endpoint.url('fine')}"}}
          - {{id: fixed, type: slack, url: "{endpoint.url('fixed')}"}}
        """)
    endpoint.scripts["fixed"] = lambda r, n: Answer(404 if n == 0 else 200)  # then mended
    await topics.produce(keyed(note("lead-1", 1)))
    async with running(topics.settings(), chosen) as sink:
        await wait_for(settled(sink, 1), 30, "not dead-lettered")
        (letter,) = await topics.read(topics.undeliverable, 1)
        await topics.produce([(letter.key, letter.value)])
        await wait_for(settled(sink, 2), 30, "not delivered")
    assert (endpoint.ids("fine"), endpoint.ids("fixed")) == (["lead-1:1"], ["lead-1:1"] * 2)
    assert [r.body for r in endpoint.received("fixed")] == [endpoint.received("fine")[0].body] * 2


async def test_tls_is_verified_unless_a_destination_says_otherwise(
        topics: Topics, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki.server_cert, pki.server_key)  # signed by a CA no system trusts
    with Endpoint(tls) as endpoint:
        chosen = destinations(tmp_path, f"""
            destinations:
              - {{id: strict, type: slack, url: "{endpoint.url('strict')}"}}
              - {{id: trusted, type: slack, url: "{endpoint.url('trusted')}",
                  tls: {{ca_file: {pki.ca}}}}}
              - {{id: unverified, type: slack, url: "{endpoint.url('unverified')}",
                  tls: {{verify: false}}}}
            """)
        await topics.produce(keyed(note("lead-1", 1)))
        async with running(topics.settings(), chosen) as sink:
            await wait_for(settled(sink, 1), 30, "not delivered")
        assert [r.path for r in endpoint.received()] in (["trusted", "unverified"],
                                                          ["unverified", "trusted"])
    (letter,) = await topics.read(topics.undeliverable, 1)
    headers = {name: value.decode() for name, value in letter.headers}
    assert (headers["leadscore.destination"], headers["leadscore.kind"],
            headers["leadscore.attempts"]) == ("strict", "rejected", "1")  # not retried
    assert headers["leadscore.reason"].startswith("not retried: the TLS handshake failed")


async def test_a_stuck_destination_does_not_delay_another(
        topics: Topics, endpoint: Endpoint, tmp_path: Path) -> None:
    chosen = destinations(tmp_path, f"""
        destinations:
          - {{id: stuck, type: slack, url: "{endpoint.url('stuck')}", concurrency: 2,
              timeout: 60s}}
          - {{id: healthy, type: slack, url: "{endpoint.url('healthy')}"}}
        """)
    release = threading.Event()
    endpoint.scripts["stuck"] = lambda r, n: Answer(hold=release)  # no answer until released
    await topics.produce(keyed(*[note(f"lead-{i}", 1) for i in range(50)]))
    try:
        async with running(topics.settings(), chosen) as sink:
            await wait_for(lambda: len(endpoint.received("healthy")) == 50, 30,
                           "the healthy destination waited for the stuck one")
            assert len(endpoint.received("stuck")) == 2  # its concurrency, all still waiting
            assert sink.lanes[0].backlog == 50
            release.set()
            await wait_for(settled(sink, 50), 30, "not delivered")
    finally:
        release.set()
    assert len(endpoint.received("stuck")) == 50


# ---------------------------------------------------------------- a real process


def start(topics: Topics, settings: Settings, path: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([LEADSCORE, "notify", "--destinations", str(path),
                                 "--loglevel", "debug"], env=topics.env(settings),
                                stdout=out, stderr=out)


async def test_sigkill_mid_delivery_loses_nothing_and_repeats_at_most_the_concurrency(
        bootstrap: str, redis_url: str, endpoint: Endpoint, tmp_path: Path) -> None:
    topics = await new_topics(bootstrap, redis_url, partitions=4)
    path = tmp_path / "destinations.yaml"
    path.write_text(f"destinations:\n  - {{id: crm, type: slack, url: \"{endpoint.url('crm')}\","
                    " concurrency: 4}\n")
    endpoint.scripts["crm"] = lambda r, n: Answer(delay=0.03)
    ids = [f"lead-{i}:1" for i in range(300)]
    await topics.produce(keyed(*[note(f"lead-{i}", 1) for i in range(300)]))
    settings, log = topics.settings(), tmp_path / "notify.log"
    kills = 0
    for stop_at in (60, 160):
        sink = start(topics, settings, path, log)
        try:
            await wait_for(lambda at=stop_at, process=sink: len(endpoint.received()) >= at
                           or process.poll() is not None, 60, "the sink stopped delivering")
            assert sink.poll() is None, log.read_text()
        finally:
            sink.send_signal(signal.SIGKILL)
            sink.wait()
        kills += 1
        assert len(set(endpoint.ids("crm"))) < len(ids)  # killed mid-stream
    sink = start(topics, settings, path, log)
    try:
        await wait_for(lambda: set(endpoint.ids("crm")) == set(ids), 90,
                       f"not all delivered; log:\n{log.read_text()[-3000:]}")
        async def all_committed() -> bool:
            return await topics.committed() == len(ids)

        await wait_for(all_committed, 30, "offsets not committed")
    finally:
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(30) == 0
    got = endpoint.ids("crm")
    print(f"{len(got) - len(set(got))} repeats after {kills} kills")
    assert len(got) - len(set(got)) <= 4 * kills  # the requests in flight at each kill


async def test_no_url_secret_or_signature_is_logged_or_exported(
        topics: Topics, endpoint: Endpoint, tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there: connection refused
    path = tmp_path / "destinations.yaml"
    (tmp_path / "secret").write_text(SECRET)
    (tmp_path / "slack_url").write_text(endpoint.url("tok-SLACKPATH"))
    path.write_text(textwrap.dedent(f"""
        destinations:
          - {{id: crm, type: webhook, url: "{endpoint.url('tok-CRMPATH')}",
              secret_file: {tmp_path / 'secret'}}}
          - {{id: slack, type: slack, url_file: {tmp_path / 'slack_url'}}}
          - {{id: nowhere, type: slack, url: "http://127.0.0.1:{closed}/tok-NOWHEREPATH"}}
        retry: {{attempts: 2, backoff: 50ms}}
        """))
    endpoint.scripts["tok-CRMPATH"] = lambda r, n: Answer(500 if n == 0 else 200)
    endpoint.scripts["tok-SLACKPATH"] = lambda r, n: Answer(404)
    await topics.produce(keyed(note("lead-1", 1), note("lead-2", 1)))
    settings, log = topics.settings(), tmp_path / "notify.log"
    sink = start(topics, settings, path, log)
    try:
        await topics.read(topics.undeliverable, 4)  # slack's 404s, nowhere's refusals
        delivered = 'leadscore_notify_delivered_total{destination="crm"} 2.0'
        await wait_for(lambda: delivered in scrape(settings.notify_port), 30, "not delivered")
        exported = scrape(settings.notify_port)
    finally:
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(30) == 0
    text = log.read_text()
    assert len(endpoint.received("tok-CRMPATH")) == 4  # lead-1 and lead-2: a 500, then a 200
    assert 'reason="connection"' in exported and "crm (webhook" in text
    assert "is undeliverable to nowhere" in text and "is undeliverable to slack" in text
    signatures = {r.headers["x-leadscore-signature"] for r in endpoint.received("tok-CRMPATH")}
    for secret in ("tok-CRMPATH", "tok-SLACKPATH", "tok-NOWHEREPATH", SECRET,
                   *signatures, *(s.removeprefix("sha256=") for s in signatures)):
        assert secret not in text, secret
        assert secret not in exported, secret


async def test_a_new_group_starts_at_the_end_of_the_topic_by_default(
        topics: Topics, endpoint: Endpoint, tmp_path: Path) -> None:
    chosen = destinations(tmp_path, f"""
        destinations:
          - {{id: crm, type: slack, url: "{endpoint.url('crm')}"}}
        """)
    await topics.produce(keyed(note("old", 1)))
    settings = topics.settings(notify_start="latest")
    async with running(settings, chosen):
        pass  # it starts at the end, and says so to the broker at once: a restart starts there
    await topics.produce(keyed(note("new", 1)))
    async with running(settings, chosen) as sink:
        await wait_for(settled(sink, 2), 30, "not delivered")
    assert endpoint.ids("crm") == ["new:1"]
