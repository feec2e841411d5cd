"""The ``leadscore`` command line (README.md, "Command line")."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from pydantic_core import PydanticCustomError
from redis.exceptions import RedisError

from scoring.errors import EventError, LeadscoreError, SettingsError
from scoring.events import parse_ts
from scoring.model import load_model, model_path
from scoring.offline import Replay, replay
from scoring.rules import Ruleset, format_duration, load_rules, parse_duration
from scoring.views import account_summary, summary
from streams.runtime import now_ms
from streams.settings import load_settings

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except LeadscoreError as exc:
        print(f"leadscore: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:  # never the URL: it may carry a password
        print(f"leadscore: cannot use Redis ({type(exc).__name__}: {exc}); check "
              "LEADSCORE_REDIS_URL", file=sys.stderr)
        return 1
    except KafkaError as exc:
        print(f"leadscore: cannot use Kafka ({exc}); check "  # aiokafka's str has the type
              "LEADSCORE_BROKER and the LEADSCORE_KAFKA_* settings", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leadscore", description="Real-time lead scoring with exact recency decay.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    rules = commands.add_parser("rules", help="work with rules files")
    rules_commands = rules.add_subparsers(title="rules commands", metavar="COMMAND",
                                          parser_class=_Intermixed)
    check = rules_commands.add_parser("check", help="validate a rules file")
    check.add_argument("file", type=Path)
    check.set_defaults(run=_rules_check)
    status = rules_commands.add_parser(
        "status", help="show the generations (rules versions) in Redis: which is active, "
        "how far a rebuild got")
    status.add_argument("--watch", action="store_true",
                        help="redraw every second, with progress bars, until no rebuild runs")
    status.set_defaults(run=_rules_status)
    preview = rules_commands.add_parser(
        "preview", help="replay events under a new rules file and the current one: what "
        "changes, and a backtest of both against the leads that converted")
    preview.add_argument("new", type=Path, metavar="NEW.yaml", help="the rules file to try")
    preview.add_argument("events", type=Path, nargs="?", metavar="EVENTS.jsonl",
                         help="events, one JSON object per line (or --topic)")
    preview.add_argument("--against", type=Path, metavar="OLD.yaml",
                         help="the rules file to compare with (default: LEADSCORE_RULES)")
    topic_option(preview)
    preview.add_argument("--at", type=_instant,
                         help="compare at this time (RFC 3339 or epoch ms; default: the last "
                         "event)")
    preview.add_argument("--horizon", default="90d", metavar="DURATION",
                         help="how long before a conversion an alert counts as predicting it "
                         "(default: 90d)")
    clock_options(preview)
    preview.add_argument("--json", action="store_true",
                         help="print one JSON object (SPEC 9) instead of the report")
    preview.add_argument("--html", type=Path, metavar="FILE",
                         help="also write the report as a self-contained HTML page")
    preview.set_defaults(run=_rules_preview)

    score = commands.add_parser("score", help="offline scoring of a JSON-lines file of events")
    score.add_argument("events", type=Path, help="events, one JSON object per line")
    score.add_argument("--rules", type=Path, help="rules file (default: LEADSCORE_RULES)")
    score.add_argument("--at", type=_instant,
                       help="score at this time (RFC 3339 or epoch ms; default: the last event)")
    clock_options(score)
    score.add_argument("--notifications", action="store_true",
                       help="print the notifications instead of the leads")
    score.add_argument("--accounts", action="store_true",
                       help="print the accounts (rules with an accounts: section) instead of "
                            "the leads; with --notifications, the accounts' notifications")
    score.add_argument("--table", action="store_true",
                       help="print a readable table of leads, hottest first")
    score.add_argument("--model", type=Path, metavar="FILE",
                       help="a conversion model (leadscore model train): each lead also "
                       "gets its p_convert and p_factors at the same instant (the table a "
                       "p column)")
    score.set_defaults(run=_score)

    worker = commands.add_parser("worker", help="run the stream worker (settings from "
                                 "LEADSCORE_* variables)")
    worker.add_argument("--loglevel", default="warning",
                        choices=["debug", "info", "warning", "error"])
    worker.set_defaults(run=_worker)

    dev = commands.add_parser("dev", help="run everything locally: embedded broker and Redis, "
                              "worker, API")
    dev.add_argument("--demo", action="store_true", help="feed live synthetic traffic")
    dev.add_argument("--destinations", type=Path, metavar="FILE",
                     help="also run the delivery sink (leadscore notify) with this "
                     "destinations file (default: LEADSCORE_DESTINATIONS, if set)")
    dev.set_defaults(run=_dev)

    notify = commands.add_parser("notify", help="deliver notifications to webhooks and Slack "
                                 "(settings from LEADSCORE_* variables)")
    notify.add_argument("--destinations", type=Path, metavar="FILE",
                        help="the destinations file (default: LEADSCORE_DESTINATIONS)")
    notify.add_argument("--loglevel", default="warning",
                        choices=["debug", "info", "warning", "error"])
    notify.set_defaults(run=_notify)

    produce = commands.add_parser("produce", help="send a JSON-lines file of events to the "
                                  "events topic")
    produce.add_argument("events", type=Path)
    produce.set_defaults(run=_produce)

    lead = commands.add_parser("lead", help="show one lead's score, stage and reasons")
    lead.add_argument("lead_id")
    lead.set_defaults(run=_lead)

    account = commands.add_parser("account", help="show one account's score, members' "
                                  "contributions and reasons (SPEC 11)")
    account.add_argument("account_id")
    account.set_defaults(run=_account)

    forget = commands.add_parser("forget", help="erase a lead (GDPR) and tombstone it on the "
                                 "notifications topic")
    forget.add_argument("lead_id")
    forget.set_defaults(run=_forget)
    from streams.model_cli import add_model_commands
    add_model_commands(commands)
    return parser


def clock_options(parser: argparse.ArgumentParser) -> None:
    """--now and --max-clock-skew: what a command that reads events refuses as dated
    ahead, as the worker dead-letters it (SPEC 1)."""
    parser.add_argument("--now", type=_instant,
                        help="the clock that events may not be dated ahead of by more than "
                        "--max-clock-skew (RFC 3339 or epoch ms; default: the wall clock)")
    parser.add_argument("--max-clock-skew", type=_duration, default="1h", metavar="DURATION",
                        help="how far ahead of --now an event may be dated (30s, 15m, 12h, "
                        "7d, 2w; default: 1h); events dated later are reported as bad lines")


def topic_option(parser: argparse.ArgumentParser) -> None:
    """--topic: the events topic instead of a file (streams.snapshot)."""
    parser.add_argument("--topic", action="store_true",
                        help="read the events topic (LEADSCORE_TOPIC_EVENTS) from its earliest "
                        "offset, without a consumer group, instead of a file")


class _Intermixed(argparse.ArgumentParser):
    """A parser whose positionals may also follow its options: ``rules preview NEW.yaml
    --against OLD.yaml EVENTS.jsonl`` (argparse alone matches the optional EVENTS.jsonl,
    as empty, with NEW.yaml, and then refuses the file after the options)."""

    _parsing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._parsing:  # parse_known_intermixed_args calls back here
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def _worker(args: argparse.Namespace) -> int:
    from streams.app import run_worker, use_uvloop
    from streams.served import ServedModel

    settings = load_settings()
    rules = load_rules(settings.rules_path())  # a bad rules file stops here, every problem listed
    served = ServedModel.configured(settings, rules)  # so does a model of other rules
    print(f"leadscore worker: rules {settings.rules_path()} ({rules.name}, "
          f"rules_version {rules.version})"
          + ("" if served is None else f"\nleadscore worker: {served.describe()}")
          + f"\n{settings.describe()}", file=sys.stderr)
    use_uvloop()
    run_worker(settings, rules, args.loglevel, served=served)
    return 0


def _dev(args: argparse.Namespace) -> int:
    from streams.destinations import load_destinations
    from streams.dev import run_dev

    settings = load_settings()
    path = args.destinations or settings.destinations
    # A bad destinations file stops here, every problem listed, before any server starts.
    destinations = load_destinations(path) if path is not None else None
    run_dev(settings, demo=args.demo, destinations=destinations)
    return 0


def _notify(args: argparse.Namespace) -> int:
    from streams.destinations import load_destinations
    from streams.notify import run_notify

    settings = load_settings()
    path = args.destinations or settings.destinations
    if path is None:
        raise SettingsError("leadscore notify needs a destinations file: --destinations FILE "
                            "or LEADSCORE_DESTINATIONS (see config/destinations.example.yaml)")
    destinations = load_destinations(path)  # a bad file stops here, every problem listed
    return run_notify(settings, destinations, args.loglevel)


def _produce(args: argparse.Namespace) -> int:
    import asyncio

    from streams.client import produce_file

    return asyncio.run(produce_file(load_settings(), args.events))


def _lead(args: argparse.Namespace) -> int:
    import asyncio

    from streams.client import show_lead

    return asyncio.run(show_lead(load_settings(), args.lead_id))


def _account(args: argparse.Namespace) -> int:
    import asyncio

    from streams.client import show_account

    return asyncio.run(show_account(load_settings(), args.account_id))


def _forget(args: argparse.Namespace) -> int:
    import asyncio

    from streams.client import forget_lead

    return asyncio.run(forget_lead(load_settings(), args.lead_id))


def _instant(text: str) -> int:
    try:
        return parse_ts(int(text) if text.lstrip("-").isdigit() else text)
    except EventError as exc:
        raise argparse.ArgumentTypeError(exc.reason.replace("ts ", "", 1)) from None


def _duration(text: str) -> int:
    """A duration as the rules file writes it -> milliseconds."""
    try:
        return parse_duration(text)
    except PydanticCustomError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rules(path: Path | None) -> Ruleset:
    return load_rules(path if path is not None else load_settings().rules_path())


def _rules_status(args: argparse.Namespace) -> int:
    import asyncio

    from streams.status import show_status

    return asyncio.run(show_status(load_settings(), args.watch))


def _rules_check(args: argparse.Namespace) -> int:
    rules = load_rules(args.file)
    half_life = "no decay" if rules.half_life_ms is None else \
        f"half-life {format_duration(rules.half_life_ms)}"
    print(f"{args.file}: ok: {rules.name} (rules_version {rules.version}): "
          f"{len(rules.fit)} fit and {len(rules.engagement)} engagement rules, {half_life}, "
          f"hot at {rules.threshold:g}, re-armed below {rules.rearm_below:g}")
    for group in rules.groups:  # without groups the output is as it always was
        alerts = "no alerts" if group.threshold is None else \
            f"hot at {group.threshold:g}, re-armed below {group.rearm_below:g}"
        print(f"  score group {group.id}: {len(group.rules)} engagement rules, {alerts}")
    if rules.accounts is not None:
        account = rules.accounts
        print(f"  accounts by profile field {account.key} (lead_weight {account.lead_weight:g}): "
              f"{len(account.rules.fit)} fit and {len(account.rules.engagement)} engagement "
              f"rules, hot at {account.rules.threshold:g}, re-armed below "
              f"{account.rules.rearm_below:g}")
    return 0


def _rules_preview(args: argparse.Namespace) -> int:
    from streams.preview import run

    return run(args)


def _score(args: argparse.Namespace) -> int:
    rules = _rules(args.rules)
    model = None if args.model is None else load_model(model_path(args.model, rules), rules)
    # The replay keeps every lead's state alive and creates no reference cycles:
    # collecting less often saves ~10% with no growth in memory.
    gc.set_threshold(100_000, 50, 100)
    now = args.now if args.now is not None else now_ms()
    try:
        with args.events.open("rb") as lines:
            result = replay(lines, rules, at=args.at, latest_ms=now + args.max_clock_skew)
    except OSError as exc:
        raise LeadscoreError(f"{args.events}: cannot read ({exc.strerror})") from None
    for number, reason in result.bad_lines:
        print(f"{args.events}:{number}: {reason}", file=sys.stderr)
    if result.after_at:
        print(f"leadscore: {result.after_at} events after --at were not applied",
              file=sys.stderr)
    at = result.at if result.at is not None else 0
    if args.accounts:
        return _score_accounts(args, rules, result, at)
    leads = [summary(result.states[lead_id], rules, at) for lead_id in sorted(result.states)]
    if model is not None:  # the probability at the instant the score is shown at
        for lead in leads:
            lead.update(model.explain(result.states[lead["lead_id"]], at, rules))
    out = sys.stdout.buffer
    if args.notifications:
        out.writelines(orjson.dumps(n) + b"\n" for n in result.notifications)
    elif args.table:
        _print_table(leads)
    else:
        out.writelines(orjson.dumps(lead) + b"\n" for lead in leads)
    out.flush()
    return 1 if result.bad_lines else 0


def _score_accounts(args: argparse.Namespace, rules: Ruleset, result: Replay, at: int) -> int:
    """``leadscore score --accounts``: one line per account, by account_id (SPEC 11)."""
    accounts = rules.accounts
    if accounts is None:
        raise LeadscoreError(f"{args.rules or 'the rules'}: no accounts: section, so there "
                             "are no accounts to score (README, \"Accounts\")")
    out = sys.stdout.buffer
    if args.notifications:
        out.writelines(orjson.dumps(n) + b"\n" for n in result.account_notifications)
    else:
        out.writelines(orjson.dumps(account_summary(result.accounts[account_id],
                                                    accounts.rules, at)) + b"\n"
                       for account_id in sorted(result.accounts))
    out.flush()
    return 1 if result.bad_lines else 0


def _print_table(leads: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Leads, hottest first")
    if leads and leads[0].get("groups"):
        table.caption = "score groups: in red when the lead is hot for the group"
    # With a model (--model), p: the conversion probability, as a percent.
    probability = bool(leads) and "p_convert" in leads[0]
    for column in ("lead", "score", "fit", "engagement", "stage", "hot",
                   *(("p",) if probability else ())):
        table.add_column(column, justify="right" if column in ("score", "fit", "engagement",
                                                               "p") else "left")
    # A column per score group (SPEC 10): its score, in red when hot for the group.
    groups: list[str] = list(leads[0].get("groups", {})) if leads else []
    for group in groups:
        table.add_column(group, justify="right")
    for lead in sorted(leads, key=lambda lead: (-float(str(lead["score"])), str(lead["lead_id"]))):
        shown: dict[str, dict[str, Any]] = lead.get("groups", {})
        table.add_row(str(lead["lead_id"]), f"{lead['score']:.2f}", f"{lead['fit']:.2f}",
                      f"{lead['engagement']:.2f}", str(lead["stage"]),
                      "[bold red]HOT[/]" if lead["hot"] else "",
                      *((_percent(lead["p_convert"]),) if probability else ()),
                      *(f"[bold red]{shown[g]['score']:.2f}[/]" if shown[g]["hot"] else
                        f"{shown[g]['score']:.2f}" for g in groups))
    Console().print(table)


def _percent(p: Any) -> str:
    """A probability in the table; a customer's (None: it has converted) as a dash."""
    return "-" if p is None else f"{100 * float(p):.2f}%"


if __name__ == "__main__":
    sys.exit(main())
