"""``leadscore rules preview`` (SPEC 9): the events of a file or of the events topic,
replayed under a new rules file and the current one, compared and backtested.

Nothing is written anywhere: the replays are in memory (``scoring.offline.replay_many``,
each line parsed once and applied under both rulesets), the topic is read without a
consumer group (``streams.snapshot``), and the only output is the report on stdout
and, with ``--html``, the page the user asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Callable, Iterable

import orjson
from pydantic_core import PydanticCustomError

from scoring.errors import LeadscoreError
from scoring.offline import Replay, replay_many
from scoring.preview import compare
from scoring.rules import load_rules, parse_duration
from streams.preview_report import Labels, print_report, write_html
from streams.runtime import now_ms
from streams.settings import load_settings

__all__ = ["horizon_ms", "run"]


def run(args: argparse.Namespace) -> int:
    """The command: exit status 0, or 1 when some events were refused (listed on stderr,
    as ``leadscore score`` lists them) although the report was made."""
    if (args.events is None) == (not args.topic):
        raise LeadscoreError("rules preview: give an events file (EVENTS.jsonl) or --topic, "
                             "not both and not neither")
    horizon = horizon_ms(args.horizon)
    settings = load_settings()
    new_rules = load_rules(args.new)
    old_path = args.against if args.against is not None else settings.rules_path()
    old_rules = load_rules(old_path)
    now = args.now if args.now is not None else now_ms()
    # As in `leadscore score`: the replays' states form no reference cycles.
    gc.set_threshold(100_000, 50, 100)

    def replayed(lines: Iterable[bytes | None]) -> list[Replay]:
        return replay_many(lines, [old_rules, new_rules], at=args.at,
                           max_event_bytes=settings.max_event_bytes,
                           latest_ms=now + args.max_clock_skew)

    if args.topic:
        from streams.snapshot import read_topic

        snapshot = asyncio.run(read_topic(settings))
        source, where = f"topic {snapshot.topic}", snapshot.where
        old, new = replayed(snapshot.values)
    else:
        source = str(args.events)

        def where(number: int) -> str:
            return f"{source}:{number}"

        try:
            with args.events.open("rb") as lines:
                old, new = replayed(lines)
        except OSError as exc:
            raise LeadscoreError(f"{args.events}: cannot read the events ({exc.strerror}); "
                                 "give a JSON-lines file of events, or --topic") from None
    labels = Labels(str(old_path), str(args.new), source)
    _report_refusals(old, new, where, labels)
    if old.at is None:
        raise LeadscoreError(f"{source}: no event could be applied, so there is no instant "
                             "to preview at; give --at, or events")
    preview = compare(old, old_rules, new, new_rules, args.horizon, horizon)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(preview.to_json(), option=orjson.OPT_INDENT_2)
                                + b"\n")
        sys.stdout.flush()
    else:
        print_report(preview, labels)
    if args.html is not None:
        try:
            write_html(preview, labels, args.html)
        except OSError as exc:
            raise LeadscoreError(f"{args.html}: cannot write the page ({exc.strerror}); "
                                 "give --html a file in a directory you can write") from None
    return 1 if old.bad_lines or new.bad_lines else 0


def horizon_ms(text: str, meaning: str = "the backtest counts an alert as a hit when its "
               "lead converted within this time after it") -> int:
    """``--horizon`` as milliseconds; a bad one is refused saying what to write and what
    the horizon means to the command (``meaning``)."""
    try:
        return parse_duration(text)
    except PydanticCustomError as exc:
        raise LeadscoreError(f"--horizon: {exc}; {meaning}") from None


def _report_refusals(old: Replay, new: Replay, where: Callable[[int], str],
                     labels: Labels) -> None:
    """Every refused line once, as ``leadscore score`` reports them; one that only one
    ruleset refused (an award that would not stay finite) says which."""
    refused_old, refused_new = set(old.bad_lines), set(new.bad_lines)
    for number, reason in sorted(refused_old | refused_new):
        only = "" if (number, reason) in refused_old and (number, reason) in refused_new \
            else f" (under {labels.old if (number, reason) in refused_old else labels.new} only)"
        print(f"{where(number)}: {reason}{only}", file=sys.stderr)
    if new.after_at:
        print(f"leadscore: {new.after_at} events after --at were not applied", file=sys.stderr)
