"""The live dashboard in a real headless Chromium (Debian's), against a real worker.

A lead made hot by produced events must appear on the page by itself (Server-Sent
Events), and its history must name the rules that fired. Then each tool of a sales
floor, with leads of known scores: search by id, the stage filter, the cooling feed
beside "turning hot now", and the leads per score band, all following the data live.

The README's screenshots come from the demo (``make screenshots``, tests/screenshots.py);
``LEADSCORE_UPDATE_SCREENSHOTS=1`` copies this test's own pictures into docs/ instead.
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


async def live_page(browser: Browser, worker: Worker) -> tuple[Page, list[str]]:
    """The dashboard open and live (its stream connected), and the page's JavaScript
    errors as they come."""
    page = await browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"http://127.0.0.1:{worker.port}/")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15_000)
    return page, errors


async def test_a_lead_turning_hot_appears_live_and_its_history_says_why(
        browser: Browser, served: tuple[Deployment, Worker], tmp_path: Path) -> None:
    deployment, worker = served
    page, errors = await live_page(browser, worker)

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


def profile(lead: str, ts: int, title: str = "CEO") -> dict[str, Any]:
    return {"event_id": f"{lead}-p", "lead_id": lead, "type": "profile_update", "ts": ts,
            "properties": {"job_title": title}}


def act(lead: str, n: int, kind: str, ts: int) -> dict[str, Any]:
    return {"event_id": f"{lead}-{n}", "lead_id": lead, "type": kind, "ts": ts}


async def band_counts(page: Page) -> list[str]:
    return await page.locator("#bands .band .count").all_inner_texts()


async def test_search_stage_filter_cooling_feed_and_score_bands_all_live(
        browser: Browser, served: tuple[Deployment, Worker]) -> None:
    """Known scores in config/rules.yaml (half-life 30 days, so a minute's decay moves
    no lead out of its band): a CEO is fit 20; form_submit +25; consultation_requested
    +50 (hot at 70); add_to_cart +40; email_unsubscribed -50."""
    deployment, worker = served
    page, errors = await live_page(browser, worker)
    await expect(page.locator("#bands .band")).to_have_count(10, timeout=15_000)
    assert await band_counts(page) == ["0"] * 10

    t = now_ms() - 120_000
    odd = "a/b %2F?&#+ é"  # an id a URL must encode, and "..", which a URL path cannot carry
    await deployment.produce(keyed([
        profile("pat@prospect.example", t),  # 20: band 2, prospect
        profile("..", t), profile(odd, t),  # 20 and 20
        profile("max@mql.example", t), act("max@mql.example", 1, "form_submit", t + 1000),
        # 20 + 25 = 45, just under after a minute's decay: band 4, mql
        profile("sue@sql.example", t), act("sue@sql.example", 1, "consultation_requested",
                                           t + 1000),
        act("sue@sql.example", 2, "add_to_cart", t + 2000),  # 110, clamped to 100: band 9
        profile("cal@cool.example", t),
        act("cal@cool.example", 1, "consultation_requested", t + 1000)]))  # hot at 70
    hot = page.locator("#feed .feed-item")
    await expect(hot).to_have_count(2, timeout=15_000)
    await expect(page.locator("#bands .band .count")).to_have_text(
        ["0", "0", "3", "0", "1", "0", "1", "0", "0", "1"], timeout=15_000)

    # Cooling: an unsubscribe takes cal from 70 to 20 minus a little (band 1), live.
    await expect(page.locator("#cooling-feed .feed-item")).to_have_count(0)
    await deployment.produce(keyed([act("cal@cool.example", 2, "email_unsubscribed",
                                        t + 2000)]))
    cooled = page.locator('#cooling-feed .feed-item[data-lead-id="cal@cool.example"]')
    await expect(cooled).to_be_visible(timeout=15_000)
    await expect(cooled).to_contain_text("Cooled")
    await expect(cooled).to_contain_text("an event lowered its score")
    await expect(cooled.locator(".score")).to_contain_text("20")
    await expect(page.locator("#cooling-feed .feed-item")).to_have_count(1)
    await expect(hot).to_have_count(2)  # the hot feed has only lead.hot: sue and cal
    assert await page.locator("#feed .feed-item.cooled").count() == 0
    await expect(page.locator("#cooled-count")).to_have_text("1")
    await expect(page.locator("#bands .band .count")).to_have_text(
        ["0", "1", "3", "0", "1", "0", "0", "0", "0", "1"], timeout=15_000)
    await expect(page.locator("#bands-meta")).to_contain_text("6 leads")

    # The stage filter: the table and the distribution show that stage's leads only.
    rows = page.locator("#leads-body tr.lead-row .lead")
    for stage, leads, bands in [
            ("sql", ["sue@sql.example", "cal@cool.example"], [0, 1, 0, 0, 0, 0, 0, 0, 0, 1]),
            ("mql", ["max@mql.example"], [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]),
            ("prospect", sorted([odd, "..", "pat@prospect.example"]),
             [0, 0, 3, 0, 0, 0, 0, 0, 0, 0]),
            ("customer", [], [0] * 10)]:
        await page.locator("#stage-filter").select_option(stage)
        await expect(rows).to_have_text(leads, timeout=15_000)
        await expect(page.locator("#bands .band .count")).to_have_text(
            [str(n) for n in bands], timeout=15_000)
    await expect(page.locator("#leads-empty")).to_contain_text("No customer leads right now")
    await page.locator("#stage-filter").select_option("sql")
    await page.locator("#hot-only").check()
    await expect(rows).to_have_text(["sue@sql.example"], timeout=15_000)
    await page.locator("#hot-only").uncheck()
    await page.locator("#stage-filter").select_option("")
    await expect(rows).to_have_count(6, timeout=15_000)

    # The distribution follows new leads without a reload.
    await deployment.produce(keyed([profile("new@mql.example", t),
                                    act("new@mql.example", 1, "form_submit", t + 1000)]))
    await expect(page.locator("#bands .band .count")).to_have_text(
        ["0", "1", "3", "0", "2", "0", "0", "0", "0", "1"], timeout=15_000)

    # Search: an unknown id says so in the page; any id opens its lead, exactly as typed.
    search = page.locator("#search-id")
    await search.fill("nobody@nowhere.example")
    await search.press("Enter")
    await expect(page.locator("#search-msg")).to_have_text(
        "No lead with the id “nobody@nowhere.example”.")
    detail = page.locator("#lead-detail")
    await expect(detail).to_be_hidden()
    for lead in ["..", odd, "max@mql.example"]:
        await search.fill(lead)
        await search.press("Enter")
        await expect(detail).to_be_visible()
        await expect(page.locator("#detail-title")).to_have_text(lead)
        await expect(page.locator("#detail-score")).to_contain_text(
            "45" if lead.startswith("max") else "20")
        await expect(page.locator("#search-msg")).to_be_hidden()
        await page.keyboard.press("Escape")
        await expect(detail).to_be_hidden()
    assert errors == []
