"""The Faust application: wires settings, rules, Redis, the scoring agent and the web."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import faust
from faust.web.base import BlueprintManager

from scoring.rules import Ruleset, load_rules
from streams import metrics, web
from streams.agents import Scorer
from streams.connect import lead_store
from streams.settings import Settings


def create_app(settings: Settings, rules: Ruleset | None = None) -> tuple[faust.App, Scorer]:
    """A ready-to-run Faust app and its scorer; the rules file is validated here."""
    rules = rules if rules is not None else load_rules(settings.rules_path())
    store = lead_store(settings, rules, observe=metrics.observe_redis)
    scorer = Scorer(settings, store)
    metrics.watch(scorer.lags, scorer.stalls)
    app = faust.App(
        f"{settings.group_id}-worker",
        broker=settings.broker,
        store="memory://",
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        topic_replication_factor=1,
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=max(settings.broker_session_timeout / 10, 0.1),
        datadir=tempfile.mkdtemp(prefix="leadscore-faust-"),
        broker_credentials=_credentials(settings),
    )
    # Faust's web server has views of its own besides ours: /router/ (which worker owns
    # a table key, with every worker's URL), /table/ (table contents), and the index,
    # statistics, /assignment/ and /graph/ pages its settings switch on. None is part
    # of Leadscore's API (no Faust tables, nothing routed between workers), and all of
    # them would answer anyone, token or not. So the web server applies no blueprint
    # at all: unlike the web_*_enabled settings (which Faust's APP_WEB_*_ENABLED
    # variables override), this also keeps out any view a later Faust adds.
    app.web.blueprints = BlueprintManager()

    @app.task
    async def score_events() -> None:
        await scorer.run()

    @app.timer(interval=settings.sweep_interval)
    async def cooling_sweep() -> None:
        await scorer.safely("cooling sweep", scorer.sweep)

    @app.timer(interval=settings.outbox_interval)
    async def outbox_resend() -> None:
        await scorer.safely("outbox re-send", scorer.resend_pending)

    feed = web.install(app, scorer)

    @app.on_before_shutdown.connect
    async def close_feed(sender: Any, /, *args: Any, **kwargs: Any) -> None:
        await feed.close()  # open dashboards end their streams so the web server can stop

    return app, scorer


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
    ``create_app``, which binds the app to the loop policy in force."""
    import mode.loop

    mode.loop.use("uvloop")


class Repeats(logging.Filter):
    """Lets through at most one warning or error of each kind (logger and message
    template) every ``every`` seconds, and says how many it held back. With the broker
    unreachable, aiokafka logs every failed retry of each of the worker's clients:
    ~60 lines a second, for as long as the outage lasts."""

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
    outbox at the next start."""

    stop_timeout: float  # seconds; set by run_worker from the settings
    _deadline: threading.Timer | None = None

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


def run_worker(app: faust.App, stop_timeout: float, loglevel: str = "warning") -> None:
    """Run the app in this process until SIGINT/SIGTERM; Faust owns the event loop. A
    stop that takes longer than ``stop_timeout`` seconds ends the process (exit code 1)."""
    worker = _Worker(app, loglevel=loglevel, redirect_stdouts=False,
                     quiet=not sys.stdout.isatty())
    worker.stop_timeout = stop_timeout
    # Faust's start-up spinner sets the root logger to DEBUG so that it turns on every
    # record: aiokafka, mode and Faust then build a log record (caller lookup and
    # all) for each fetch and timer tick, ~10% of an idle worker's CPU, only for the
    # handler to drop it.
    worker.spinner = None
    worker.execute_from_commandline()
