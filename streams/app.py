"""The worker process: one Faust app over the runtime, run until a signal stops it.

    run_worker(settings, rules)    connected(...) on the loop Faust will run, then:
      create_app(runtime, served)  the consume loop (a task), the jobs (timers), the API,
                                   and with LEADSCORE_MODEL the model served (and reloaded)
      _Worker                      Faust's worker: logging held back, a bounded stop

Faust owns the event loop, the web server, the timers and the process lifecycle; the
runtime (Redis, the store) is opened before the app starts and closed after it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import faust
from faust.app.base import BootStrategy

from scoring.rules import Ruleset
from streams import erasure, jobs, metrics, web
from streams.consume import EventsConsumer
from streams.delivery import Delivery
from streams.feed import Feed
from streams.generations import Rebuild
from streams.health import Health
from streams.runtime import Runtime, connected
from streams.served import ServedModel
from streams.settings import Settings

__all__ = ["Repeats", "create_app", "run_worker", "use_uvloop"]


def create_app(runtime: Runtime, served: ServedModel | None = None) -> faust.App:
    """The worker's Faust app over a connected runtime, ready to run; with ``served`` (a
    conversion model for the runtime's rules), its notifications and API carry
    ``p_convert``, from whichever model file is current (checked every
    LEADSCORE_MODEL_RELOAD seconds)."""
    settings, store = runtime.settings, runtime.store
    if served is not None:
        store.explain = served.explain  # (read per notification: a reload applies at once)
    health = Health(settings.stall_seconds)
    delivery = Delivery(settings, store, health)
    consumer = EventsConsumer(settings, store, delivery, health)
    # With accounts (SPEC 11): the account side, its own loop over the account topic into
    # the generation's account store, its own delivery (account.hot, account.cooled).
    accounts = runtime.accounts
    rebuild = Rebuild(settings, store, delivery, health, accounts)
    delivery.accounts = accounts
    account_delivery = None if accounts is None else Delivery(settings, accounts, health)
    account_consumer = None if accounts is None or account_delivery is None else \
        EventsConsumer(settings, accounts, account_delivery, health, accounts=True)
    metrics.watch(consumer.lags if account_consumer is None else
                  lambda: consumer.lags() + account_consumer.lags(), health.stalls)
    app = _App(
        f"{settings.group_id}-worker",
        broker=settings.broker,
        store="memory://",
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        topic_replication_factor=1,
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        datadir=tempfile.mkdtemp(prefix="leadscore-faust-"),
        broker_credentials=_credentials(settings),
    )

    @app.task
    async def score_events() -> None:
        await consumer.run()

    jobs.schedule(app, settings, store, delivery, health, rebuild)
    if account_consumer is not None and accounts is not None and account_delivery is not None:
        @app.task
        async def score_accounts() -> None:
            await account_consumer.run()

        jobs.schedule_accounts(app, settings, accounts, account_delivery, health)
    feed = Feed(runtime.redis, store.channel)
    def problems() -> list[str]:
        found = consumer.problems() + rebuild.problems()
        if account_consumer is not None:
            found += [f"accounts: {problem}" for problem in account_consumer.problems()
                      if problem not in found]
        return found

    web.install(app, web.Api(settings, runtime.rules, runtime.redis, store, problems,
                             functools.partial(erasure.forget, store, delivery.tombstone,
                                               accounts),
                             feed, served, accounts))
    if served is not None:
        @app.timer(interval=settings.model_reload)
        async def model_reload() -> None:
            async def check() -> None:  # (a file read: off the event loop)
                await asyncio.to_thread(served.check)
            await health.safely("model reload", check)

    @app.on_before_shutdown.connect
    async def before_stop(sender: Any, /, *args: Any, **kwargs: Any) -> None:
        await feed.close()  # open dashboards end their streams so the web server can stop
        await rebuild.helpers.close()  # (they would die with this process anyway)

    return app


class _NoFaustConsumer(BootStrategy):
    """Faust runs the web server, the timers and the tasks; the events are consumed by
    the worker's own consumer (streams.consume), so Faust's consumer, its conductor
    and its tables are not started: they would join a consumer group of their own (an
    empty topic's) and wait for it, seconds of every start, for nothing."""

    enable_kafka_consumer = False


class _App(faust.App):
    BootStrategy = _NoFaustConsumer


def run_worker(settings: Settings, rules: Ruleset | None = None, loglevel: str = "warning",
               before: Callable[[faust.App, Settings], None] | None = None,
               served: ServedModel | None = None) -> None:
    """Run the worker in this process until SIGINT/SIGTERM; Faust owns the event loop.
    The rules are loaded from the settings unless given, and so is the model
    (LEADSCORE_MODEL) unless ``served`` is (for ``rules``): one trained for other rules
    stops it here (``ModelError``). ``before`` sees the app and the settled settings
    before the app starts (``leadscore dev`` prints its banner and adds its demo there).
    A stop that takes longer than ``stop_timeout`` seconds ends the process (exit code
    1)."""
    loop = asyncio.new_event_loop()  # of the policy in force: see use_uvloop
    asyncio.set_event_loop(loop)
    resources = contextlib.AsyncExitStack()
    try:  # Redis unreachable, a shard count other than the data's, a stale model: stop here
        runtime = loop.run_until_complete(resources.enter_async_context(
            connected(settings, rules, observe=metrics.observe_redis)))
        if served is None:
            served = ServedModel.configured(settings, runtime.rules)
    except BaseException:
        with contextlib.suppress(Exception):  # (the error to report is the first one)
            loop.run_until_complete(resources.aclose())
        loop.close()
        raise
    app = create_app(runtime, served)
    if before is not None:
        before(app, runtime.settings)
    worker = _Worker(app, loop=loop, loglevel=loglevel, redirect_stdouts=False,
                     quiet=not sys.stdout.isatty())
    worker.stop_timeout, worker.resources = settings.stop_timeout, resources
    # Faust's start-up spinner sets the root logger to DEBUG so that it turns on every
    # record: aiokafka, mode and Faust then build a log record (caller lookup and all)
    # for each fetch and timer tick, only for the handler to drop it (docs/performance.md,
    # "What changed, each measured on its own").
    worker.spinner = None
    worker.execute_from_commandline()


def _credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The Kafka security settings, for Faust's own connections."""
    options = settings.kafka_options()
    protocol = options["security_protocol"]
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=options["sasl_plain_username"], password=options["sasl_plain_password"],
            mechanism=options["sasl_mechanism"], ssl_context=options.get("ssl_context"))
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return None


def use_uvloop() -> None:
    """uvloop makes the asyncio machinery around each batch cheaper; call before
    ``run_worker``, whose event loop is of the policy in force."""
    import mode.loop

    mode.loop.use("uvloop")


class Repeats(logging.Filter):
    """Lets through at most one warning or error of each kind (logger and message
    template) every ``every`` seconds, and says how many it held back. With the broker
    unreachable, aiokafka logs every failed retry of each of the worker's clients, for
    as long as the outage lasts (docs/operations.md, "Reading the dashboards and
    alerts")."""

    def __init__(self, every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every, self.clock = every, clock
        self.seen: dict[tuple[str, object], list[float]] = {}  # kind -> [last let through, held]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now, kind = self.clock(), (record.name, record.msg)
        seen = self.seen.get(kind)
        if seen is not None and now - seen[0] < self.every:
            seen[1] += 1
            return False
        if len(self.seen) > 10_000:  # messages built without a template: forget them all
            self.seen.clear()
        if seen is not None and seen[1]:
            record.msg = f"{record.msg} [{seen[1]:.0f} more like this in the last {self.every:g} s]"
        self.seen[kind] = [now, 0]
        return True


class _Worker(faust.Worker):
    """Faust's worker, with repeated warnings held back (``Repeats``) and a bound on how
    long a stop may take. With the broker (or Redis) unreachable, Faust's and aiokafka's
    shutdown wait for it forever, and neither Ctrl-C nor a SIGTERM would end the
    process. Leaving anyway loses nothing: uncommitted events are replayed and
    recognised by offset, and notifications recorded but not sent are re-sent from the
    outbox at the next start. What ``run_worker`` opened (``resources``) is closed once
    the app has stopped."""

    stop_timeout: float  # seconds; set by run_worker from the settings
    resources: contextlib.AsyncExitStack  # set by run_worker
    _deadline: threading.Timer | None = None

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        await self.resources.aclose()

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        repeats = Repeats()
        for handler in logger.handlers:
            handler.addFilter(repeats)

    def _on_sigint(self) -> None:
        self._limit_stop()
        super()._on_sigint()

    def _on_sigterm(self) -> None:
        self._limit_stop()
        super()._on_sigterm()

    def _limit_stop(self) -> None:
        if self._deadline is None:
            # A thread, not the event loop: the loop is what may be stuck.
            self._deadline = threading.Timer(self.stop_timeout, self._give_up)
            self._deadline.daemon = True
            self._deadline.start()

    def _give_up(self) -> None:
        sys.stderr.write(
            f"leadscore worker: not stopped {self.stop_timeout:g} s after the signal (is the "
            "broker or Redis unreachable?); exiting anyway. Events not yet committed will "
            "be replayed and notifications not yet sent re-sent at the next start.\n")
        sys.stderr.flush()
        os._exit(1)
