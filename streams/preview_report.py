"""The preview of a rules change for people: a terminal report and a self-contained HTML
page (``leadscore rules preview``, SPEC 9). The numbers are scoring.preview's; this
module only lays them out.

Both lead with the backtest, the question a rules change is asked to answer: does the
new model alert on more of the leads that went on to convert, and at the price of how
many alerts? The page draws the two score distributions and the weekly alert volume
with matplotlib as inline SVG (text as text, no fonts or scripts to fetch, the same
bytes on every run) and repeats the tables.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from scoring.events import format_ts
from scoring.preview import BANDS, Preview
from streams import charts

__all__ = ["Labels", "html_page", "print_report", "write_html"]

SHOWN = 20  # lead ids listed per list in the reports (all of them are in --json)
OLD_COLOUR, NEW_COLOUR = "#9aa0a6", "#1a73e8"
BAND_NAMES = [f"{10 * i}-{10 * i + 10}" for i in range(BANDS)]


@dataclass(frozen=True, slots=True)
class Labels:
    """What the reports call each side and the source: the files as the user named them."""

    old: str
    new: str
    source: str


def print_report(preview: Preview, labels: Labels, console: Console | None = None) -> None:
    """The preview as tables on the terminal, the backtest first."""
    console = console or Console()
    old, new = preview.old, preview.new
    console.print(Text.assemble(
        ("Rules preview", "bold"), f" at {format_ts(preview.at)}: ",
        (f"NEW {labels.new}", "bold"), f" ({new.name}, {new.rules_version}) against ",
        (f"OLD {labels.old}", "bold"), f" ({old.name}, {old.rules_version}); "
        f"{new.applied:,} events from {labels.source}, {new.leads:,} leads"))
    console.print(Panel(Group(Text(verdict(preview)), _table(
        "", ["", "OLD", "NEW", "change"], _backtest_rows(preview))),
        title="[bold]Backtest[/]: does NEW catch more of the leads that converted, with how "
              "many alerts?", border_style="bold cyan"))
    console.print(_table(f"Leads at {format_ts(preview.at)}", ["", "OLD", "NEW", "change"],
                         _lead_rows(preview)))
    console.print(_table("Leads by score", ["score", "OLD", "NEW", "change"],
                         [[name, *_pair(o, n)] for name, o, n
                          in zip(BAND_NAMES, old.bands, new.bands, strict=True)]))
    console.print(_table("Alerts (lead.hot) per ISO week", ["week", "OLD", "NEW", "change"],
                         [[week, *_pair(old.alerts_per_week.get(week, 0),
                                        new.alerts_per_week.get(week, 0))]
                          for week in weeks(preview)]))
    for title, ids in (("Became hot", preview.became_hot),
                       ("No longer hot", preview.no_longer_hot)):
        console.print(Text.assemble((f"{title} ({len(ids):,}): ", "bold"), _ids(ids)))
    if preview.stage_changes:
        console.print(_table(f"Stage changes ({len(preview.stage_changes):,}, first {SHOWN})",
                             ["lead", "OLD", "NEW"],
                             [[c["lead_id"], str(c["old"]), str(c["new"])]
                              for c in preview.stage_changes[:SHOWN]], left=3))
    console.print(_table("Largest score changes", ["lead", "OLD", "NEW", "change",
                                                   "OLD reasons", "NEW reasons"],
                         _change_rows(preview.largest_changes)))


def verdict(preview: Preview) -> str:
    """The backtest in a few sentences, for the top of both reports."""
    old, new, horizon = preview.old.backtest, preview.new.backtest, preview.horizon
    if not new.conversions:
        return (f"No lead converted (no `converted` event), so there is nothing to backtest "
                f"against. NEW sends {preview.new.alerts:,} alerts, OLD "
                f"{preview.old.alerts:,}.")
    return (f"Of {new.conversions:,} leads that converted, NEW alerted on {new.caught:,} "
            f"({_percent(new.recall)}) in the {horizon} before they converted, OLD on "
            f"{old.caught:,} ({_percent(old.recall)}). NEW sends {new.counted:,} alerts "
            f"(not counting those after a conversion), {new.hits:,} of them followed by a "
            f"conversion within {horizon} ({_percent(new.precision)}); OLD sends "
            f"{old.counted:,}, {old.hits:,} of them hits ({_percent(old.precision)}). Median "
            f"warning before a conversion: {_hours(new.median_lead_time_h)} under NEW, "
            f"{_hours(old.median_lead_time_h)} under OLD.")


def weeks(preview: Preview) -> list[str]:
    """Every ISO week from the first to the last with an alert on either side, so that a
    quiet week shows as 0 rather than not at all."""
    known = sorted(preview.old.alerts_per_week.keys() | preview.new.alerts_per_week.keys())
    if not known:
        return []
    first, last = (_monday(week) for week in (known[0], known[-1]))
    found = []
    while first <= last:
        year, week, _ = first.isocalendar()
        found.append(f"{year:04d}-W{week:02d}")
        first += timedelta(days=7)
    return found


def write_html(preview: Preview, labels: Labels, path: Path) -> None:
    path.write_text(html_page(preview, labels), encoding="utf-8")


def html_page(preview: Preview, labels: Labels) -> str:
    """The preview as one self-contained HTML page: inline CSS and SVG, nothing fetched."""
    old, new = preview.old, preview.new
    e = html.escape
    weekly = weeks(preview)
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Rules preview: "
        f"{e(labels.new)} against {e(labels.old)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Rules preview at {e(format_ts(preview.at))}</h1>",
        f"<p><b>NEW</b> {e(labels.new)} ({e(new.name)}, {new.rules_version}) against "
        f"<b>OLD</b> {e(labels.old)} ({e(old.name)}, {old.rules_version}): "
        f"{new.applied:,} events from {e(labels.source)}, {new.leads:,} leads, horizon "
        f"{e(preview.horizon)}.</p>",
        "<section class=backtest><h2>Backtest: does NEW catch more of the leads that "
        f"converted, with how many alerts?</h2><p>{e(verdict(preview))}</p>"
        f"{charts.html_table(['', 'OLD', 'NEW', 'change'], _backtest_rows(preview))}</section>",
        "<div class=charts><figure>"
        + charts.svg(_bands_chart(old.bands, new.bands))
        + "<figcaption>Leads by score at the preview's instant</figcaption></figure><figure>"
        + charts.svg(_weekly_chart(weekly, [old.alerts_per_week.get(w, 0) for w in weekly],
                                   [new.alerts_per_week.get(w, 0) for w in weekly]))
        + "<figcaption>Alerts (lead.hot) per ISO week: what reps would get</figcaption>"
        "</figure></div>",
        f"<h2>Leads at {e(format_ts(preview.at))}</h2>"
        + charts.html_table(["", "OLD", "NEW", "change"], _lead_rows(preview)),
        "<h2>Leads by score</h2>" + charts.html_table(
            ["score", "OLD", "NEW", "change"],
            [[name, *_pair(o, n)] for name, o, n in zip(BAND_NAMES, old.bands, new.bands,
                                                        strict=True)]),
        "<h2>Alerts per ISO week</h2>" + charts.html_table(
            ["week", "OLD", "NEW", "change"],
            [[w, *_pair(old.alerts_per_week.get(w, 0), new.alerts_per_week.get(w, 0))]
             for w in weekly]),
    ]
    for title, ids in (("Became hot", preview.became_hot),
                       ("No longer hot", preview.no_longer_hot)):
        parts.append(f"<h2>{title} ({len(ids):,})</h2><p class=ids>{e(_ids(ids))}</p>")
    parts.append(f"<h2>Stage changes ({len(preview.stage_changes):,})</h2>" + charts.html_table(
        ["lead", "OLD", "NEW"], [[c["lead_id"], str(c["old"]), str(c["new"])]
                                 for c in preview.stage_changes[:SHOWN]]))
    parts.append("<h2>Largest score changes</h2>" + charts.html_table(
        ["lead", "OLD", "NEW", "change", "OLD reasons", "NEW reasons"],
        _change_rows(preview.largest_changes)))
    parts.append("<p class=note>Every lead id, stage change and number is in "
                 "<code>leadscore rules preview --json</code>.</p></body></html>")
    return "\n".join(parts)


# --- rows shared by both reports ---------------------------------------------------------


def _backtest_rows(preview: Preview) -> list[list[str]]:
    old, new = preview.old.backtest, preview.new.backtest
    horizon = preview.horizon
    return [
        ["leads that converted", *_pair(old.conversions, new.conversions)],
        [f"  alerted in the {horizon} before converting", *_pair(old.caught, new.caught)],
        ["recall", _ratio(old.recall), _ratio(new.recall), _delta(old.recall, new.recall)],
        ["alerts counted (none after its lead converted)", *_pair(old.counted, new.counted)],
        [f"  hits: the lead converted within {horizon}", *_pair(old.hits, new.hits)],
        ["precision", _ratio(old.precision), _ratio(new.precision),
         _delta(old.precision, new.precision)],
        ["median lead time (first alert to conversion)", _hours(old.median_lead_time_h),
         _hours(new.median_lead_time_h),
         _delta(old.median_lead_time_h, new.median_lead_time_h, " h")],
    ]


def _lead_rows(preview: Preview) -> list[list[str]]:
    old, new = preview.old, preview.new
    rows = [["leads", *_pair(old.leads, new.leads)], ["hot", *_pair(old.hot, new.hot)]]
    rows += [[f"  {stage}", *_pair(old.stages[stage], new.stages[stage])]
             for stage in old.stages]
    rows += [["alerts (lead.hot)", *_pair(old.alerts, new.alerts)],
             ["leads whose score changes", "", f"{preview.changed_scores:,}", ""]]
    return rows


def _change_rows(changes: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for change in changes:
        sides = [change["old"], change["new"]]
        rows.append([change["lead_id"],
                     *[f"{s['score']:.2f}{' HOT' if s['hot'] else ''}" for s in sides],
                     f"{change['change']:+.2f}",
                     *[", ".join(f"{r['rule']} {r['points']:+g}" for r in s["reasons"][:3])
                       for s in sides]])
    return rows


def _pair(old: int, new: int) -> list[str]:
    return [f"{old:,}", f"{new:,}", f"{new - old:+,}" if new != old else ""]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _hours(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f} h"


def _delta(old: float | None, new: float | None, unit: str = "") -> str:
    if old is None or new is None or old == new:
        return ""
    return f"{new - old:+,.4g}{unit}"


def _ids(ids: Sequence[str]) -> str:
    if not ids:
        return "none"
    more = f" and {len(ids) - SHOWN:,} more" if len(ids) > SHOWN else ""
    return ", ".join(ids[:SHOWN]) + more


def _monday(week: str) -> date:
    year, number = week.split("-W")
    return date.fromisocalendar(int(year), int(number), 1)


# --- terminal ------------------------------------------------------------------------------


def _table(title: str, columns: list[str], rows: list[list[str]], left: int = 1) -> Table:
    """Numbers to the right, the first ``left`` columns and reasons to the left."""
    table = Table(title=title or None, title_justify="left", title_style="bold")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < left or "reasons" in column else "right")
    for row in rows:
        table.add_row(*row)
    return table


# --- the page's charts (streams.charts inlines them) --------------------------------------


def _bands_chart(old: list[int], new: list[int]) -> Any:
    figure, axes = charts.figure()
    positions = range(BANDS)
    axes.bar([p - 0.2 for p in positions], old, width=0.4, label="OLD", color=OLD_COLOUR)
    axes.bar([p + 0.2 for p in positions], new, width=0.4, label="NEW", color=NEW_COLOUR)
    axes.set_xticks(list(positions), BAND_NAMES, fontsize=8)
    axes.set_xlabel("score at the preview's instant")
    axes.set_ylabel("leads")
    charts.finish(axes)
    return figure


def _weekly_chart(weekly: list[str], old: list[int], new: list[int]) -> Any:
    figure, axes = charts.figure()
    positions = list(range(len(weekly)))
    axes.plot(positions, old, marker="o", label="OLD", color=OLD_COLOUR)
    axes.plot(positions, new, marker="o", label="NEW", color=NEW_COLOUR)
    step = max(1, len(weekly) // 12)  # at most about a dozen labels
    axes.set_xticks(positions[::step], weekly[::step], fontsize=8, rotation=45, ha="right")
    axes.set_ylabel("alerts")
    axes.set_ylim(bottom=0)
    charts.finish(axes)
    return figure


_CSS = charts.css(box="""\
.backtest{border:2px solid #1a73e8;border-radius:8px;padding:4px 16px 12px;background:#f4f8fe}
.backtest p{font-size:15px}
""", extra="""\
td:nth-child(5),td:nth-child(6){text-align:left;color:#5f6368}
.ids{font-family:monospace;font-size:12px;color:#3c4043}.note{color:#5f6368}
""")
