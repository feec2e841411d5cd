"""What ``leadscore model train`` learned, for people: a terminal summary and, with
``--report``, a self-contained HTML page (SPEC 12). The numbers are scoring.training's;
this module only lays them out.

Both lead with the test set's verdict, the question a model is asked to answer: does
p_convert rank the leads that went on to convert above the others better than the rules'
own score does, and are its probabilities right? Then the example counts and the
training window, and the largest weights. The page draws the reliability diagram, the
lift chart and the weights with matplotlib as inline SVG (streams.charts: nothing
fetched, the same bytes for the same model) and repeats the tables.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from scoring.model import Model
from scoring.training import Trained
from streams import charts

__all__ = ["TOP_WEIGHTS", "Labels", "html_page", "largest_weights", "print_summary",
           "write_html"]

TOP_WEIGHTS = 8  # the weights shown in the summary and drawn on the page
MODEL_COLOUR, RULES_COLOUR, NEGATIVE_COLOUR = "#1a73e8", "#9aa0a6", "#d93025"
PARTS = ("fit", "calibration", "test")


@dataclass(frozen=True, slots=True)
class Labels:
    """What the reports call the rules file, the history and the model file: as the user
    named them."""

    rules: str
    source: str
    out: str


def print_summary(trained: Trained, labels: Labels, console: Console | None = None) -> None:
    """The model on the terminal: the test set's metrics beside the rules' score, the
    examples and their window, the largest weights."""
    console = console or Console()
    model, horizon = trained.model, trained.model.horizon
    console.print(Text.assemble(
        ("Conversion model", "bold"), f" for {labels.rules} ({_rules_name(model)}, "
        f"rules_version {model.rules_version}): P(the first `converted` event within "
        f"{horizon}), learned from {_info(model, 'examples', 'events'):,} events of "
        f"{labels.source}; written to ", (labels.out, "bold")))
    console.print(Panel(Group(Text(verdict(trained)), _table(
        "", ["test set", "model (p_convert)", "rules' score"], metric_rows(trained))),
        title="[bold]Test set[/]: does p_convert pick the leads that converted, and are its "
              "probabilities right?", border_style="bold cyan"))
    console.print(_table("Examples (lead states at their event times, before conversion)",
                         ["part", "examples", f"converted within {horizon}", "from", "to"],
                         example_rows(model)))
    console.print(Text(left_out(model)))
    console.print(_table(f"Largest weights (of {len(model.features)}): log-odds per standard "
                         "deviation of the feature", ["feature", "weight", "what it is"],
                         weight_rows(model, TOP_WEIGHTS), left=1))


def verdict(trained: Trained) -> str:
    """The test set's numbers in a few sentences, for the top of both reports."""
    model, evaluation = trained.model, trained.evaluation
    horizon, window = model.horizon, model.info.get("window", {})
    rate = evaluation.positives / evaluation.examples if evaluation.examples else 0.0
    top_model = evaluation.lift_model[0] if evaluation.lift_model else 0.0
    top_rules = evaluation.lift_rules[0] if evaluation.lift_rules else 0.0
    return (f"On the test set ({evaluation.examples:,} examples from "
            f"{window.get('split', '?')} to {window.get('end', '?')}, "
            f"{evaluation.positives:,} of them ({100 * rate:.1f}%) followed by a conversion "
            f"within {horizon}), p_convert ranks an example that converted above one that "
            f"did not {100 * evaluation.auc:.1f}% of the time (AUC {evaluation.auc:.4f}); "
            f"the rules' own score does {100 * evaluation.rules_auc:.1f}% (AUC "
            f"{evaluation.rules_auc:.4f}). The tenth p_convert ranks highest converts at "
            f"{top_model:.2f} times the base rate, the rules' score's at {top_rules:.2f}. "
            f"Calibration: its probabilities are {evaluation.ece:.4f} from the observed "
            f"rates on average (ECE), Brier score {evaluation.brier:.4f}.")


def meaning(model: Model) -> str:
    """What p_convert is, in a sentence or three, for the page."""
    return (f"p_convert is the probability that a lead's first converted event comes within "
            f"{model.horizon} of the moment it is read, given its state then: each engagement "
            "rule's points decayed to that moment, which fit rules hold, its stage and its "
            "engagement. It is calibrated on held-out leads, so that of leads given 0.2 "
            f"about one in five convert within {model.horizon} (the reliability diagram "
            "shows how close the test set came). Set LEADSCORE_MODEL (or --model) to this "
            "file and the API, notifications, leadscore lead and leadscore score serve it "
            "beside the score, with the three features that moved it most (p_factors); it "
            "is computed when read, so it decays with the score.")


def left_out(model: Model) -> str:
    conversions = _info(model, "examples", "conversions")
    unlabelled = _info(model, "examples", "unlabelled")
    return (f"{conversions:,} leads converted in the history. {unlabelled:,} examples are "
            f"left out: their {model.horizon} horizon runs past the end of the data, so "
            "their label is not known.")


def largest_weights(model: Model, count: int | None = None) -> list[tuple[str, float]]:
    """(feature, weight) by decreasing absolute value (ties in feature order): the
    weight is the calibrated log-odds per standard deviation, ``slope * coefficient``,
    the scale of ``p_factors``, so the report and the drawer say the same."""
    order = sorted(range(len(model.features)),
                   key=lambda i: (-abs(model.coefficients[i]), i))
    return [(model.features[i], model.slope * model.coefficients[i]) for i in order[:count]]


# --- rows shared by both reports ---------------------------------------------------------


def metric_rows(trained: Trained) -> list[list[str]]:
    """The SPEC 12 metrics, as the model file has them (4 decimals); a probability's
    metrics have no meaning for the rules' score, which is not one."""
    metrics = trained.model.info.get("metrics", {})
    evaluation = trained.evaluation

    def shown(key: str) -> str:
        return f"{metrics.get(key, getattr(evaluation, key)):.4f}"

    return [["AUC (ranking; 0.5 is chance)", shown("auc"), shown("rules_auc")],
            ["Brier score (lower is better)", shown("brier"), "-"],
            ["expected calibration error (10 bins)", shown("ece"), "-"],
            ["top tenth's lift", *(f"{lift[0]:.2f}" if lift else "-" for lift
                                   in (evaluation.lift_model, evaluation.lift_rules))]]


def example_rows(model: Model) -> list[list[str]]:
    examples = model.info.get("examples", {})
    positives = examples.get("positives", {})
    window = model.info.get("window", {})
    start, split, end = (str(window.get(k, "?")) for k in ("start", "split", "end"))
    spans = {"fit": (start, split), "calibration": (start, split), "test": (split, end)}
    return [[part, f"{examples.get(part, 0):,}", f"{positives.get(part, 0):,}", *spans[part]]
            for part in PARTS]


def weight_rows(model: Model, count: int | None = None) -> list[list[str]]:
    return [[name, f"{weight:+.4f}", describe_feature(name)]
            for name, weight in largest_weights(model, count)]


def describe_feature(name: str) -> str:
    kind, _, rule = name.partition(":")
    if kind == "rule":
        return f"engagement rule {rule}'s points, decayed to the instant"
    if kind == "fit":
        return f"fit rule {rule} holds (1 or 0)"
    if kind == "stage":
        return f"the lead is at stage {rule} (1 or 0)"
    if name == "engagement":
        return "the engagement: every rule's points, decayed"
    return name


def _rules_name(model: Model) -> str:
    return str(model.info.get("rules_name", "rules"))


def _info(model: Model, section: str, key: str) -> int:
    return int(model.info.get(section, {}).get(key, 0))


# --- terminal ------------------------------------------------------------------------------


def _table(title: str, columns: list[str], rows: list[list[str]], left: int = 1) -> Table:
    """Numbers to the right, the first ``left`` columns and descriptions to the left."""
    table = Table(title=title or None, title_justify="left", title_style="bold")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < left or column in
                         ("what it is", "from", "to") else "right")
    for row in rows:
        table.add_row(*row)
    return table


# --- HTML ----------------------------------------------------------------------------------


def write_html(trained: Trained, labels: Labels, path: Path) -> None:
    path.write_text(html_page(trained, labels), encoding="utf-8")


def html_page(trained: Trained, labels: Labels) -> str:
    """The model as one self-contained HTML page: inline CSS and SVG, nothing fetched."""
    model, evaluation = trained.model, trained.evaluation
    e = html.escape
    horizon = e(model.horizon)
    window = model.info.get("window", {})
    shown = largest_weights(model, TOP_WEIGHTS)
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Conversion model: "
        f"{e(labels.rules)}, {horizon}</title><style>{_CSS}</style></head><body>",
        f"<h1>Conversion model: P(converted within {horizon})</h1>",
        f"<p>Rules {e(labels.rules)} ({e(_rules_name(model))}, rules_version "
        f"{e(model.rules_version)}); learned from "
        f"{_info(model, 'examples', 'events'):,} events of {e(labels.source)}, "
        f"{e(str(window.get('start', '?')))} to {e(str(window.get('end', '?')))}; the test "
        f"set is the time from {e(str(window.get('split', '?')))}. Model file: "
        f"{e(labels.out)}.</p>",
        "<section class=verdict><h2>Test set: does p_convert pick the leads that converted, "
        f"and are its probabilities right?</h2><p>{e(verdict(trained))}</p>"
        + charts.html_table(["test set", "model (p_convert)", "rules' score"],
                            metric_rows(trained)) + "</section>",
        f"<p class=meaning>{e(meaning(model))}</p>",
        "<div class=charts><figure>" + charts.svg(_reliability_chart(evaluation.reliability))
        + "<figcaption>Reliability on the test set: the observed conversion rate per bin of "
        "p_convert (examples per bin beside each point); on the diagonal, a probability "
        "means what it says</figcaption></figure><figure>"
        + charts.svg(_lift_chart(evaluation.lift_model, evaluation.lift_rules))
        + "<figcaption>Lift on the test set: each tenth's conversion rate over the base rate, "
        "the examples ranked by p_convert or by the rules' score, best first</figcaption>"
        "</figure><figure class=wide>" + charts.svg(_weights_chart(shown))
        + f"<figcaption>The {len(shown)} largest weights: how far one standard deviation of "
        "the feature moves the log-odds of converting</figcaption></figure></div>",
        "<h2>Examples (lead states at their event times, before conversion)</h2>"
        + charts.html_table(["part", "examples", f"converted within {model.horizon}", "from",
                             "to"], example_rows(model))
        + f"<p class=note>{e(left_out(model))}</p>",
        "<h2>Reliability (test set)</h2>" + charts.html_table(
            ["p_convert", "mean p_convert", "observed rate", "examples"],
            [[_bin(p), f"{p:.4f}", f"{o:.4f}", f"{n:,}"] for p, o, n in evaluation.reliability]),
        "<h2>Lift per tenth (test set, best first)</h2>" + charts.html_table(
            ["tenth", "p_convert", "rules' score"],
            [[f"{i + 1}", f"{m:.2f}", f"{r:.2f}"]
             for i, (m, r) in enumerate(zip(evaluation.lift_model, evaluation.lift_rules,
                                            strict=True))]),
        f"<h2>Every weight ({len(model.features)} features, largest first)</h2>"
        + "<div class=weights>"
        + charts.html_table(["feature", "weight", "what it is"], weight_rows(model)) + "</div>",
        "<p class=note>Turn the weights back into points with <code>leadscore model suggest "
        "--model FILE</code>, then preview that rules file with <code>leadscore rules preview"
        "</code>.</p></body></html>",
    ]
    return "\n".join(parts)


def _bin(mean: float) -> str:
    """The bin of predicted probability a bin's mean lies in: [0, 0.1) ... [0.9, 1]."""
    low = min(int(mean * 10), 9)
    return f"{low / 10:.1f}-{(low + 1) / 10:.1f}"


def _reliability_chart(bins: list[tuple[float, float, int]]) -> Any:
    figure, axes = charts.figure((6.4, 4.2))
    predicted, observed = [b[0] for b in bins], [b[1] for b in bins]
    # Probabilities are mostly small: draw up to the largest tenth in use, square.
    top = max([0.1, *predicted, *observed])
    limit = min(1.0, (int(top * 10 + 1e-9) + 1) / 10)
    axes.plot([0, limit], [0, limit], linestyle="--", color=RULES_COLOUR,
              label="perfectly calibrated")
    axes.plot(predicted, observed, marker="o", color=MODEL_COLOUR, label="p_convert")
    for p, o, count in bins:
        axes.annotate(f"{count:,}", (p, o), textcoords="offset points", xytext=(0, 7),
                      ha="center", fontsize=8, color="#5f6368")
    axes.set_xlim(0, limit)
    axes.set_ylim(0, limit)
    axes.set_xlabel("mean p_convert in the bin")
    axes.set_ylabel("observed conversion rate")
    charts.finish(axes, grid="both")
    return figure


def _lift_chart(model: list[float], rules: list[float]) -> Any:
    figure, axes = charts.figure((6.4, 4.2))
    positions = range(len(model))
    axes.bar([p - 0.2 for p in positions], model, width=0.4, label="p_convert",
             color=MODEL_COLOUR)
    axes.bar([p + 0.2 for p in positions], rules, width=0.4, label="rules' score",
             color=RULES_COLOUR)
    axes.axhline(1.0, linestyle="--", color="#5f6368", linewidth=1, label="base rate")
    axes.set_xticks(list(positions), [str(p + 1) for p in positions], fontsize=8)
    axes.set_xlabel("tenth of the test set, ranked best first")
    axes.set_ylabel("lift (conversion rate / base rate)")
    charts.finish(axes)
    return figure


def _weights_chart(weights: list[tuple[str, float]]) -> Any:
    figure, axes = charts.figure((12.8, 0.8 + 0.36 * max(len(weights), 1)))
    positions = list(range(len(weights)))
    axes.barh(positions, [w for _, w in weights],
              color=[MODEL_COLOUR if w >= 0 else NEGATIVE_COLOUR for _, w in weights])
    axes.set_yticks(positions, [name for name, _ in weights], fontsize=9)
    axes.invert_yaxis()  # the largest at the top
    axes.axvline(0, color="#5f6368", linewidth=0.8)
    axes.set_xlabel("weight: log-odds per standard deviation (blue raises p_convert, red "
                    "lowers it)")
    charts.finish(axes, grid="x", legend=False)
    return figure


_CSS = charts.css(box="""\
.verdict{border:2px solid #1a73e8;border-radius:8px;padding:4px 16px 12px;background:#f4f8fe}
.verdict p{font-size:15px}
""", extra="""\
figure.wide{flex-basis:100%}
.weights th:nth-child(3),.weights td:nth-child(3){text-align:left}
.weights td:nth-child(3){color:#5f6368}
.meaning{color:#3c4043;max-width:1100px}.note{color:#5f6368}
""")
