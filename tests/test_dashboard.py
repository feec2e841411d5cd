"""The live dashboard in a real headless Chromium (Debian's), against a real worker.

A lead made hot by produced events must appear on the page by itself (Server-Sent
Events), and its history must name the rules that fired. The screenshots it takes
are the README's: ``LEADSCORE_UPDATE_SCREENSHOTS=1`` copies them into docs/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from worker import Deployment, Worker, keyed

from scoring import history
from scoring.engine import LeadState, apply
from scoring.events import event_from_dict
from scoring.rules import load_rules
from streams.runtime import now_ms

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
RULES_PATH = ROOT / "config" / "rules.yaml"
RULES = load_rules(RULES_PATH)
CHROMIUM = os.environ.get("LEADSCORE_CHROMIUM", "/usr/bin/chromium")
# A closed network: no background fetches, no sandbox (tests may run as root).
CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium "
                    "package (apt-get install chromium), or set LEADSCORE_CHROMIUM")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                   chromium_sandbox=False, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture
async def served(bootstrap: str, redis_url: str, tmp_path: Path
                 ) -> AsyncIterator[tuple[Deployment, Worker]]:
    deployment = Deployment(bootstrap, redis_url, RULES_PATH, tmp_path)
    await deployment.create_topics()
    worker = deployment.worker().start()
    await worker.wait_ready()
    yield deployment, worker
    deployment.stop_all()


def journey(lead: str, start: int, title: str, steps: list[str]) -> list[dict[str, Any]]:
    """A profile, then one event per step, a second apart."""
    events: list[dict[str, Any]] = [
        {"event_id": f"{lead}-p", "lead_id": lead, "type": "profile_update", "ts": start,
         "properties": {"job_title": title, "company_size": 400, "industry": "software"}}]
    for i, kind in enumerate(steps, start=1):
        props = {"url": "/pricing"} if kind == "page_view" else {}
        events.append({"event_id": f"{lead}-{i}", "lead_id": lead, "type": kind,
                       "ts": start + i * 1000, "properties": props})
    return events


async def screenshot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    await page.screenshot(path=str(path), animations="disabled")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("LEADSCORE_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(path, ROOT / "docs" / name)


async def test_a_lead_turning_hot_appears_live_and_its_history_says_why(
        browser: Browser, served: tuple[Deployment, Worker], tmp_path: Path) -> None:
    deployment, worker = served
    page = await browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"http://127.0.0.1:{worker.port}/")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15_000)

    # Some leads already known, then one that turns hot while the page is open.
    start = now_ms() - 3_600_000
    await deployment.produce(keyed(
        journey("ada@acme.example", start, "VP Marketing",
                ["page_view", "content_download", "webinar_attended", "form_submit"])
        + journey("bo@initech.example", start + 60_000, "Engineer",
                  ["page_view", "email_click"])
        + journey("cy@globex.example", start + 120_000, "Head of Sales",
                  ["page_view", "add_to_cart", "email_click"])))
    await expect(page.locator("tr.lead-row")).to_have_count(3, timeout=15_000)
    dee = journey("dee@hooli.example", now_ms() - 10_000, "CEO",
                  ["page_view", "email_click", "consultation_requested", "add_to_cart"])
    await deployment.produce(keyed(dee))
    state, changes, notes = LeadState("dee@hooli.example"), [], []
    for doc in dee:
        event, stage, fit = event_from_dict(doc), state.stage, state.fit
        applied = apply(state, event, RULES)
        notes.extend(applied.notifications)
        changes.extend(history.entries(state, event, applied, stage, fit, RULES))
    changes.reverse()  # the page shows the newest first
    (turned_hot,) = notes

    hot = page.locator('.feed-item[data-lead-id="dee@hooli.example"]')
    await expect(hot).to_be_visible(timeout=15_000)
    await expect(hot).to_contain_text(f"{turned_hot['score']:.0f}")
    for reason in turned_hot["reasons"][:3]:  # the feed shows the top three
        await expect(hot).to_contain_text(reason["rule"])
    await screenshot(page, tmp_path, "dashboard.png")

    await hot.click()
    detail = page.locator("#lead-detail")
    await expect(detail).to_be_visible()
    await expect(detail).to_contain_text("dee@hooli.example")
    rows = page.locator("#lead-history tr.history-row")
    await expect(rows).to_have_count(len(changes))
    for i, change in enumerate(changes):
        shown = [text.split()[0] for text in await rows.nth(i).locator(".award").all_inner_texts()]
        assert shown == [rule for rule, _ in change[4]], i
        if change[8] == "lead.hot":  # the change that made it hot says so
            await expect(rows.nth(i).locator(".notif")).to_have_text("lead.hot")
    assert any(change[8] == "lead.hot" for change in changes)
    await screenshot(page, tmp_path, "dashboard-lead.png")
    assert errors == []
