"""``leadscore model train`` and ``leadscore model suggest`` (SPEC 12): the conversion model
learned from a history of events (a file, or the events topic read as
``leadscore rules preview --topic`` reads it), and turned back into points.

Training writes nothing but the files asked for: the model (``--out``, JSON) and, with
``--report``, its page. The work is scoring.training's; the summary and the page are
streams.model_report's. While the history is read and replayed into examples a progress
bar runs on stderr, when stderr is a terminal (piped, stderr holds only the refused lines,
as ``leadscore score`` and ``leadscore rules preview`` report them).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from scoring.errors import LeadscoreError
from scoring.model import Model, load_model, model_path
from scoring.rules import load_rules
from scoring.training import Examples, build_examples, train
from streams.model_report import Labels, print_summary, write_html
from streams.preview import horizon_ms
from streams.runtime import now_ms
from streams.settings import load_settings

__all__ = ["add_model_commands", "write_model"]

# scoring.training's phases, as the bars name them
PHASES = {"reading": "{source}: reading events", "examples": "replaying into examples"}


def add_model_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``leadscore model train`` and ``leadscore model suggest``, under ``commands``."""
    # The parsers of instants and durations that every command shares (streams.cli
    # imports this module only once it is loaded itself).
    from streams.cli import clock_options, topic_option

    model = commands.add_parser(
        "model", help="learn the conversion probability (p_convert) from history, and turn "
        "it back into points")
    model_commands = model.add_subparsers(title="model commands", metavar="COMMAND")
    trainer = model_commands.add_parser(
        "train", help="learn P(a lead converts within the horizon | its state now) from a "
        "history of events; write the model file, a summary and, with --report, a page")
    trainer.add_argument("events", type=Path, nargs="?", metavar="EVENTS.jsonl",
                         help="events, one JSON object per line (or --topic)")
    trainer.add_argument("--rules", type=Path, metavar="FILE",
                         help="the rules whose state the model reads (default: LEADSCORE_RULES)")
    topic_option(trainer)
    trainer.add_argument("--horizon", default="90d", metavar="DURATION",
                         help="predict a conversion within this time (default: 90d)")
    trainer.add_argument("--out", type=Path, default=Path("model.json"), metavar="FILE",
                         help="where to write the model (default: model.json); "
                         "{rules_version} in it is the rules' version")
    trainer.add_argument("--report", type=Path, metavar="FILE.html",
                         help="also write a self-contained HTML page: metrics, reliability "
                         "diagram, lift chart, weights")
    clock_options(trainer)
    trainer.set_defaults(run=_train)

    suggester = model_commands.add_parser(
        "suggest", help="print the rules file with engagement points that follow the model's "
        "weights (same rules, new points), to preview and adopt")
    suggester.add_argument("--model", type=Path, required=True, metavar="FILE",
                           help="a model file written by leadscore model train")
    suggester.add_argument("--rules", type=Path, metavar="FILE",
                           help="the rules file the model was trained for (default: "
                           "LEADSCORE_RULES)")
    suggester.set_defaults(run=_suggest)


def _train(args: argparse.Namespace) -> int:
    """Exit status 0 once the model is written, even when some events were refused
    (listed on stderr); 1 when no model could be trained."""
    if (args.events is None) == (not args.topic):
        raise LeadscoreError("model train: give an events file (EVENTS.jsonl) or --topic, "
                             "not both and not neither")
    horizon = horizon_ms(args.horizon, "the model predicts whether a lead converts within "
                         "this time")
    settings = load_settings()
    rules_path = args.rules if args.rules is not None else settings.rules_path()
    rules = load_rules(rules_path)
    now = args.now if args.now is not None else now_ms()
    # As in `leadscore score`: the replay's states form no reference cycles.
    gc.set_threshold(100_000, 50, 100)

    def examples_of(lines: Iterable[bytes | None], bars: _Bars) -> Examples:
        return build_examples(lines, rules, horizon, max_event_bytes=settings.max_event_bytes,
                              latest_ms=now + args.max_clock_skew, progress=bars.report)

    where: Callable[[int], str]
    with _bars() as bars:
        if args.topic:
            from streams.snapshot import read_topic

            fetching = bars.start(f"topic {settings.topic_events}: fetching")
            snapshot = asyncio.run(read_topic(settings))
            bars.done(fetching, len(snapshot.values))
            source, where = f"topic {snapshot.topic}", snapshot.where
            bars.source = source
            examples = examples_of(snapshot.values, bars)
        else:
            source = bars.source = str(args.events)

            def where(number: int) -> str:
                return f"{source}:{number}"

            try:
                with args.events.open("rb") as lines:
                    examples = examples_of(lines, bars)
            except OSError as exc:
                raise LeadscoreError(f"{args.events}: cannot read the events ({exc.strerror}); "
                                     "give a JSON-lines file of events, or --topic") from None
    for number, reason in examples.bad_lines:
        # 0: refused as it was applied, after the events were put in time order; the
        # reason names the event and its lead.
        print(f"{where(number) if number else source}: {reason}", file=sys.stderr)
    trained = train(examples, rules, args.horizon, horizon)
    out = model_path(args.out, rules)  # ({rules_version}: the file of these rules)
    write_model(trained.model, out)
    labels = Labels(str(rules_path), source, str(out))
    if args.report is not None:  # the files first: a closed stdout must not lose them
        try:
            write_html(trained, labels, model_path(args.report, rules))
        except OSError as exc:
            raise LeadscoreError(f"{args.report}: cannot write the page ({exc.strerror}); "
                                 "give --report a file in a directory you can write") from None
    print_summary(trained, labels)
    if examples.bad_lines:
        # Listed, and the model still written: exit 0, unlike `leadscore score`, since the
        # file is this command's product, and a topic's old poison messages (dead-lettered
        # by the worker long ago) must not fail every scheduled retraining (deploy/k8s).
        print(f"leadscore: {len(examples.bad_lines)} event(s) refused (above), as the worker "
              "refuses them; the model learned from the rest", file=sys.stderr)
    return 0


def _suggest(args: argparse.Namespace) -> int:
    from scoring.suggest import suggest

    path: Path = args.rules if args.rules is not None else load_settings().rules_path()
    rules = load_rules(path)
    model = load_model(model_path(args.model, rules), rules)  # refuses other rules' model
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise LeadscoreError(f"{path}: cannot read the rules file ({exc.strerror})") from None
    sys.stdout.write(suggest(model, rules, text, str(path)))
    sys.stdout.flush()
    return 0


def write_model(model: Model, path: Path) -> None:
    """The model file, indented JSON, replaced whole (a worker that reads it at start never
    sees half of one)."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("wb") as file:
            file.write(orjson.dumps(model.to_json(), option=orjson.OPT_INDENT_2) + b"\n")
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename makes it the model
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise LeadscoreError(f"{path}: cannot write the model ({exc.strerror}); give --out a "
                             "file in a directory you can write") from None


# --- progress ------------------------------------------------------------------------------


class _Bars:
    """scoring.training's progress reports as bars: one per phase, the last one done once
    the next starts."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.source = ""
        self.tasks: dict[str, TaskID] = {}

    def start(self, description: str) -> TaskID:
        return self.progress.add_task(description, total=None)

    def done(self, task: TaskID, count: int) -> None:
        self.progress.update(task, completed=count, total=count)

    def report(self, phase: str, done: int, total: int) -> None:
        task = self.tasks.get(phase)
        if task is None:
            if phase == "examples" and "reading" in self.tasks:
                self.done(self.tasks["reading"], total)  # every event read, in time order
            description = PHASES.get(phase, phase).format(source=self.source)
            task = self.tasks[phase] = self.start(description)
        self.progress.update(task, completed=done, total=total or None)


@contextmanager
def _bars() -> Iterator[_Bars]:
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console,
                  disable=not console.is_terminal) as progress:
        yield _Bars(progress)
