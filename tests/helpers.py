"""Small builders shared by the tests: events, rules from YAML text, replay of a list,
equality but for summation order."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from scoring.engine import LeadState, Notification, apply
from scoring.events import Event
from scoring.rules import Ruleset, parse_rules

DAY = 86_400_000
HOUR = 3_600_000
# Per test process: xdist's workers (make test runs two), or a rerun, against servers
# named in the environment never share a topic, a group or a key prefix.
RUN = os.urandom(3).hex()
_names = itertools.count()


def fresh(name: str) -> str:
    """A name (key prefix, topic) no other test, test process or earlier run uses."""
    return f"{name}-{RUN}-{next(_names)}"


T0 = 1_793_923_200_000  # 2026-11-06T00:00:00Z, a Friday; 7d windows start on Thursdays

BASE_RULES = """
name: test
half_life: {half_life}
hot: {{threshold: 70, rearm_below: 50}}
mql_events: [form_submit]
"""


def rules(body: str = "", half_life: str = "30d") -> Ruleset:
    """A ruleset from YAML text appended to a minimal header."""
    return parse_rules((BASE_RULES.format(half_life=half_life) + body).encode(), "test.yaml")


def ev(event_id: str, type_: str, ts: int, lead: str = "lead-1", **props: Any) -> Event:
    return Event(event_id, lead, type_, ts, props)


def run(events: list[Event], ruleset: Ruleset, lead: str = "lead-1"
        ) -> tuple[LeadState, list[Notification]]:
    """Apply events in order to one fresh lead; return its state and all notifications."""
    state = LeadState(lead)
    notes: list[Notification] = []
    for event in events:
        notes.extend(apply(state, event, ruleset).notifications)
    return state, notes


def live(state: LeadState, ruleset: Ruleset) -> LeadState:
    """The state with only the event ids that still count as duplicates: what the Redis
    store keeps, where the offline engine may keep expired ones a little longer."""
    horizon = (state.t_ref or 0) - ruleset.dedupe_window_ms
    return dataclasses.replace(state, seen={i: t for i, t in state.seen.items()
                                            if t >= horizon})


def same(found: Any, want: Any) -> bool:
    """Equal to the last bits but for the order in which floats were summed (awards
    from different partitions, events in another order): floats within 1e-9, at any
    depth of dicts (rounding both to 9 places instead would fail the rare value that
    straddles a rounding boundary). Whole numbers (times, counts) stay exact."""
    numbers = (found, want)
    if any(type(n) is float for n in numbers) and all(type(n) in (float, int) for n in numbers):
        return math.isclose(found, want, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(want, dict) and isinstance(found, dict):
        return found.keys() == want.keys() and all(same(found[k], want[k]) for k in want)
    return bool(found == want)


CHROMIUM = os.environ.get("LEADSCORE_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent


@contextlib.asynccontextmanager
async def report_in_browser(path: Path, height: int, screenshot: str
                            ) -> AsyncIterator[tuple[Any, list[str]]]:
    """A self-contained page (a report of ``rules preview`` or ``model train``) open in
    Debian's headless Chromium, with every URL it requested; on leaving, a screenshot,
    copied to docs/``screenshot`` with LEADSCORE_UPDATE_SCREENSHOTS=1 (the README's)."""
    from playwright.async_api import async_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium "
                    "package (apt-get install chromium), or set LEADSCORE_CHROMIUM")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, chromium_sandbox=False,
            args=["--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        page = await browser.new_page(viewport={"width": 1320, "height": height})
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        await page.goto(path.as_uri())
        yield page, requests
        shot = path.with_name(screenshot)
        await page.screenshot(path=str(shot), animations="disabled")
        await browser.close()
    if os.environ.get("LEADSCORE_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(shot, ROOT / "docs" / screenshot)


async def assert_charts_drawn(page: Any, count: int) -> Any:
    """The page's ``count`` charts, each drawn large and with its text; returns them."""
    charts = page.locator("figure svg")
    assert await charts.count() == count
    for i in range(count):
        box = await charts.nth(i).bounding_box()
        assert box is not None and box["width"] > 500 and box["height"] > 250
        assert await charts.nth(i).locator("text").count() > 10  # axes, ticks, labels
    return charts
