"""The live dashboard in a real headless Chromium (Debian's), against a real worker.

A lead made hot by produced events must appear on the page by itself (Server-Sent
Events), and its history must name the rules that fired. Then each tool of a sales
floor, with leads of known scores: search by id, the stage filter, the cooling feed
beside "turning hot now", and the leads per score band, all following the data live.
With score groups (SPEC 10): the table by a group's score, group notifications tagged
in the feed, and a lead's group scores in its drawer. With accounts (SPEC 11): the hot
accounts and their buying committees, following account.hot and account.cooled live,
while the lead feeds ignore them; no accounts panel for rules without accounts.

The README's screenshots come from the demo (``make screenshots``, tests/screenshots.py);
``LEADSCORE_UPDATE_SCREENSHOTS=1`` copies this test's own pictures into docs/ instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from prometheus_client.parser import text_string_to_metric_families
from worker import Deployment, Worker, keyed, wait_for

from scoring import history
from scoring.engine import LeadState, apply
from scoring.events import event_from_dict
from scoring.model import Model, feature_names
from scoring.offline import Replay, replay
from scoring.rules import Ruleset, load_rules
from scoring.views import account_now
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


@contextlib.asynccontextmanager
async def deployed(bootstrap: str, redis_url: str, rules: Path, tmp_path: Path,
                   **settings: str) -> AsyncIterator[tuple[Deployment, Worker]]:
    """A deployment of ``rules`` (and ``settings``, as Deployment takes them) with its
    topics and one ready worker, stopped after."""
    deployment = Deployment(bootstrap, redis_url, rules, tmp_path, **settings)
    try:
        await deployment.create_topics()
        worker = deployment.worker().start()
        await worker.wait_ready()
        yield deployment, worker
    finally:
        deployment.stop_all()


@pytest.fixture
async def served(bootstrap: str, redis_url: str, tmp_path: Path
                 ) -> AsyncIterator[tuple[Deployment, Worker]]:
    async with deployed(bootstrap, redis_url, RULES_PATH, tmp_path) as served:
        yield served


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


async def live_page(browser: Browser, worker: Worker, paused: bool = False
                    ) -> tuple[Page, list[str]]:
    """The dashboard open and live (its stream connected), and the page's JavaScript
    errors as they come. ``paused``: the page's clock stands still from the start (its
    timers fire only as the test runs the clock: ``page.clock.run_for``)."""
    page = await browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    if paused:
        start = datetime.now(UTC)
        await page.clock.install(time=start)
        await page.clock.pause_at(start + timedelta(seconds=5))
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
    await expect(page.locator("#detail-probability")).to_have_count(0)  # (no model served)
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
    # The table ranks by the lead's own score, its columns as they always were; the group
    # selector lists the rules' score groups, and is hidden when they declare none.
    await expect(page.locator("#leads-head th")).to_have_text(LEAD_COLUMNS)
    if RULES.groups:
        await expect(page.locator("#group-filter option")).to_have_text(
            ["Lead score", *(group.id for group in RULES.groups)])
    else:
        await expect(page.locator("#group-filter")).to_be_hidden()
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


# --- score groups (SPEC 10) -----------------------------------------------------------------

LEAD_COLUMNS = ["#", "Lead", "Score", "Fit", "Engagement", "Stage", "Hot", "Top reason"]
# Two groups, one with its own alerts; a half-life of 30 days, so that a minute's decay
# moves no score shown (to one decimal) off its points.
GROUP_RULES = """\
name: dashboard-groups
half_life: 30d
hot: {threshold: 70, rearm_below: 50}
groups:
  - id: product-a
    hot: {threshold: 40, rearm_below: 25}
  - id: product-b
engagement:
  - {id: a-pages, event: page_view, if: {url: {matches: "^/a"}}, points: 15, group: product-a}
  - {id: b-pages, event: page_view, if: {url: {matches: "^/b"}}, points: 10, group: product-b}
  - {id: demo, event: demo_request, points: 60}
"""


@pytest.fixture
async def served_with_groups(bootstrap: str, redis_url: str, tmp_path: Path
                             ) -> AsyncIterator[tuple[Deployment, Worker]]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(GROUP_RULES)
    async with deployed(bootstrap, redis_url, rules, tmp_path) as served:
        yield served


def visit(lead: str, n: int, url: str, ts: int) -> dict[str, Any]:
    return {"event_id": f"{lead}-{n}", "lead_id": lead, "type": "page_view", "ts": ts,
            "properties": {"url": url}}


def shown(score: float) -> str:
    """A score as the page shows it (one decimal, none when whole)."""
    return f"{round(score, 1):g}"


def notifications_sent(worker: Worker) -> dict[tuple[str, str], float]:
    """leadscore_notifications_total by (type, group), from the worker's /metrics."""
    _, body = worker.get("/metrics")
    return {(sample.labels["type"], sample.labels["group"]): sample.value
            for family in text_string_to_metric_families(body.decode())
            if family.name == "leadscore_notifications" for sample in family.samples
            if sample.name == "leadscore_notifications_total"}


def get_json(worker: Worker, path: str) -> Any:
    status, body = worker.get(path)
    assert status == 200, (path, status, body)
    return json.loads(body)


async def test_score_groups_rank_the_table_tag_the_feed_and_show_in_the_drawer(
        browser: Browser, served_with_groups: tuple[Deployment, Worker]) -> None:
    """ann: three /a pages (product-a 45, hot for it at 40; lead 45, not hot at 70);
    ben: one /a, two /b (a 15, b 20; lead 35); dan: a demo and two /a (a 30; lead 90,
    hot); cat: three /b (b 30; lead 30). product-a's order is not the leads' own."""
    deployment, worker = served_with_groups
    page, errors = await live_page(browser, worker)
    t = now_ms() - 60_000
    await deployment.produce(keyed(
        [visit("ann", i, "/a", t + i * 1000) for i in range(3)]
        + [visit("ben", 0, "/a", t), visit("ben", 1, "/b", t + 1000),
           visit("ben", 2, "/b", t + 2000)]
        + [act("dan", 0, "demo_request", t), visit("dan", 1, "/a", t + 1000),
           visit("dan", 2, "/a", t + 2000)]
        + [visit("cat", i, "/b", t + i * 1000) for i in range(3)]))
    rows = page.locator("#leads-body tr.lead-row")
    # Every event applied: the leads' own scores, in the lead list's order.
    await expect(rows.locator(".scorecell b")).to_have_text(["90", "45", "35", "30"],
                                                            timeout=15_000)
    await expect(rows.locator(".lead")).to_have_text(["dan", "ann", "ben", "cat"])
    # These rules have no accounts: section: /accounts is a 404, and no accounts panel.
    assert worker.get("/accounts?hot=true")[0] == 404
    await expect(page.locator("#accounts-panel")).to_have_attribute("data-state", "absent")
    await expect(page.locator("#accounts-panel")).to_be_hidden()

    # The selector: the lead score, then each group in the rules file's order.
    selector = page.locator("#group-filter")
    await expect(selector).to_be_visible()
    await expect(selector.locator("option")).to_have_text(["Lead score", "product-a",
                                                           "product-b"])
    assert get_json(worker, "/leads")["groups"] == [
        {"id": "product-a", "threshold": 40, "rearm_below": 25},
        {"id": "product-b", "threshold": None, "rearm_below": None}]

    # A group's table: its leads in the API's order, by the group's score, the group's hot.
    for group, expected in [("product-a", [("ann", 45.0, 45.0, True), ("dan", 30.0, 90.0, False),
                                           ("ben", 15.0, 35.0, False)]),
                            ("product-b", [("cat", 30.0, 30.0, False),
                                           ("ben", 20.0, 35.0, False)])]:
        answer = get_json(worker, f"/leads?group={group}")
        listed = [(lead["lead_id"], lead["groups"][group]["score"], lead["score"],
                   lead["groups"][group]["hot"]) for lead in answer["leads"]]
        assert listed == expected, group
        await selector.select_option(group)
        await expect(page.locator("#leads-head th")).to_have_text(
            ["#", "Lead", f"{group} score", "Lead score", "Stage", "Hot"], timeout=15_000)
        await expect(rows.locator(".lead")).to_have_text([lead for lead, *_ in listed])
        await expect(rows.locator(".scorecell b")).to_have_text(
            [shown(score) for _, score, _, _ in listed])
        await expect(rows.locator(".lead-score")).to_have_text(
            [shown(score) for _, _, score, _ in listed])
        await expect(rows.locator("td:nth-child(6)")).to_have_text(
            ["● Hot" if hot else "—" for *_, hot in listed])
    await expect(page.locator("#leads-meta")).to_contain_text("no hot alerts")
    await page.locator("#hot-only").check()  # product-b has no alerts: never hot
    await expect(page.locator("#leads-empty")).to_contain_text(
        "product-b has no hot threshold", timeout=15_000)
    await selector.select_option("product-a")
    await expect(rows.locator(".lead")).to_have_text(["ann"], timeout=15_000)
    await expect(page.locator("#leads-meta")).to_contain_text("hot ≥ 40")
    await page.locator("#hot-only").uncheck()
    await selector.select_option("")
    await expect(page.locator("#leads-head th")).to_have_text(LEAD_COLUMNS, timeout=15_000)
    await expect(rows.locator(".lead")).to_have_text(["dan", "ann", "ben", "cat"])

    # The feed: dan's own lead.hot untagged, ann's product-a lead.hot tagged, its score.
    await expect(page.locator("#feed .feed-item")).to_have_count(2, timeout=15_000)
    dan = page.locator('#feed .feed-item[data-lead-id="dan"]')
    ann = page.locator('#feed .feed-item[data-lead-id="ann"]')
    await expect(dan.locator(".badge.group")).to_have_count(0)
    await expect(dan.locator(".score")).to_contain_text("75")  # hot at its second event
    await expect(ann.locator(".badge.group")).to_have_text("product-a")
    await expect(ann.locator(".score")).to_contain_text("45")
    await expect(ann).to_contain_text("a-pages")

    # The drawer: each group's score and hot, as /lead?id= gives them.
    assert get_json(worker, "/lead?id=ann")["groups"] == {
        "product-a": {"score": 45.0, "hot": True}, "product-b": {"score": 0.0, "hot": False}}
    await ann.click()
    cards = page.locator("#detail-groups .group-card")
    await expect(cards.locator(".gname")).to_have_text(["product-a", "product-b"])
    await expect(cards.locator(".gscore")).to_have_text(["45", "0"])
    await expect(cards.nth(0).locator(".badge.hot")).to_have_text("Hot")
    await expect(cards.nth(0).locator(".gmeta")).to_have_text("hot ≥ 40")
    await expect(cards.nth(1).locator(".badge.hot")).to_have_count(0)
    await expect(cards.nth(1).locator(".gmeta")).to_have_text("no alerts")
    # Its history: the third visit made it hot for product-a, not as a lead.
    history_rows = page.locator("#lead-history tr.history-row")
    await expect(history_rows).to_have_count(3)
    await expect(page.locator("#lead-history .notif")).to_have_count(1)
    await expect(history_rows.nth(0).locator(".gnote .notif")).to_have_text("lead.hot")
    await expect(history_rows.nth(0).locator(".gnote .badge.group")).to_have_text("product-a")
    await expect(page.locator("#detail-badges")).to_have_text("prospect")  # not hot
    await expect(page.locator("#detail-body .why")).to_have_text(
        "Not hot: 25 points below the threshold of 70.")

    # Metrics: notifications by type and group ("" for the lead's own score).
    await wait_for(lambda: notifications_sent(worker) == {
        ("lead.hot", ""): 1, ("lead.hot", "product-a"): 1}, 15,
        f"notifications by group: {notifications_sent(worker)}")
    assert errors == []


async def test_the_drawer_shows_the_conversion_probability_of_a_served_model(
        browser: Browser, bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    """With LEADSCORE_MODEL (SPEC 12) the drawer shows p_convert as a percent and its
    factors, signed, as /lead?id= gives them (a profile alone: nothing decays)."""
    names = feature_names(RULES)
    model = Model(RULES.version, "90d", 90 * 86_400_000, tuple(names), (0.5,) * len(names),
                  (1.0,) * len(names), tuple(0.9 if name.startswith("fit:") else 0.05
                                             for name in names), -2.0, 1.0, 0.0, {})
    path = tmp_path / "model.json"
    path.write_text(json.dumps(model.to_json()))
    async with deployed(bootstrap, redis_url, RULES_PATH, tmp_path, model=str(path)) as (
            deployment, worker):
        await deployment.produce(keyed([profile("pia", now_ms() - 60_000, "VP Marketing")]))
        await wait_for(lambda: worker.get("/lead?id=pia")[0] == 200, 15, "pia never scored")
        lead = get_json(worker, "/lead?id=pia")
        page, errors = await live_page(browser, worker)
        await page.locator("#search-id").fill("pia")
        await page.locator("#search-id").press("Enter")
        shown = page.locator("#detail-probability")
        await expect(shown.locator(".pconvert")).to_have_text(
            f"{math.floor(lead['p_convert'] * 1000 + 0.5) / 10:g}%", timeout=15_000)
        factors = lead["p_factors"]
        assert factors and any(f["effect"] < 0 for f in factors)
        await expect(shown.locator(".chip")).to_have_text(
            [f"{f['feature']}{'+' if f['effect'] >= 0 else ''}{f['effect']:g}" for f in factors])
        assert errors == []


# --- accounts (SPEC 11) ---------------------------------------------------------------------

# Leads hot at 70, accounts at 80: a company's leads together can light it up while none of
# them is hot. A half-life of 30 days: a minute's decay moves no number shown off its points.
ACCOUNT_RULES = """\
name: dashboard-accounts
half_life: 30d
hot: {threshold: 70, rearm_below: 50}
engagement:
  - {id: pricing-page, event: page_view, points: 15}
  - {id: unsubscribe, event: email_unsubscribed, points: -40}
accounts:
  key: account_id
  hot: {threshold: 80, rearm_below: 60}
  engagement:
    - {id: intent-surge, event: intent_surge, points: 15}
"""


@pytest.fixture
async def served_with_accounts(bootstrap: str, redis_url: str, tmp_path: Path
                               ) -> AsyncIterator[tuple[Deployment, Worker, Ruleset]]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(ACCOUNT_RULES)
    async with deployed(bootstrap, redis_url, rules, tmp_path) as (deployment, worker):
        yield deployment, worker, load_rules(rules)


def member(lead: str, account: str, ts: int) -> dict[str, Any]:
    """The lead's profile names its company."""
    return {"event_id": f"{lead}-p", "lead_id": lead, "type": "profile_update", "ts": ts,
            "properties": {"account_id": account}}


def surge(account: str, n: int, ts: int) -> dict[str, Any]:
    """An event about the company itself (keyed by account_id, as ``keyed`` does)."""
    return {"event_id": f"{account}-s{n}", "account_id": account, "type": "intent_surge",
            "ts": ts, "properties": {}}


def expected_accounts(events: list[dict[str, Any]], rules: Ruleset
                      ) -> tuple[list[dict[str, Any]], Replay]:
    """The hot accounts after ``events`` as the panel lists them, highest score first
    (offline, now), and the replay (its notifications)."""
    at = now_ms()
    replayed = replay([json.dumps(e).encode() for e in events], rules, at=at)
    assert not replayed.bad_lines and rules.accounts is not None
    views = [account_now(state, rules.accounts.rules, at)
             for state in replayed.accounts.values()]
    return sorted((v for v in views if v["hot"]), key=lambda v: -v["score"]), replayed


def points(p: float) -> str:
    """A member's points as the page shows them (signed, as chips are)."""
    return ("-" if p < 0 else "+") + shown(abs(p))


async def expect_hot_accounts(page: Page, hot: list[dict[str, Any]]) -> None:
    """The panel lists exactly ``hot``: each account's score, fit and engagement, and its
    committee, the members' lead ids and points in the API's order."""
    items = page.locator("#accounts .account-item")
    await expect(items.locator(".account")).to_have_text([v["account_id"] for v in hot],
                                                         timeout=15_000)
    await expect(items.locator(".score .value")).to_have_text([shown(v["score"]) for v in hot])
    await expect(items.locator(".parts")).to_have_text(
        [f"fit {shown(v['fit'])} + engagement {shown(v['engagement'])}" for v in hot])
    for i, view in enumerate(hot):
        committee = items.nth(i).locator(".member")
        await expect(committee.locator(".lead-id")).to_have_text(
            [m["lead_id"] for m in view["leads"]])
        await expect(committee.locator(".pts")).to_have_text(
            [points(m["points"]) for m in view["leads"]])
    await expect(page.locator("#accounts-empty")).to_be_visible(visible=not hot)


async def handled(page: Page, notification_ids: list[str]) -> bool:
    """Whether the page has handled these account notifications (its own record of the
    notifications it has seen, as onAccountNotification keeps it)."""
    return bool(await page.evaluate(
        "(ids) => ids.every((id) => state.seen.has('account ' + id))", notification_ids))


def listed(worker: Worker) -> list[tuple[str, str]]:
    return [(a["account_id"], shown(a["score"]))
            for a in get_json(worker, "/accounts?hot=true")["accounts"]]


async def refreshed_by(page: Page, worker: Worker, replayed: Replay,
                       hot: list[dict[str, Any]]) -> None:
    """The page's clock is paused, so its periodic refresh (every 5 s) never runs: the
    panel can only follow the account notifications. Once the page has handled them all
    and the API lists ``hot``, run the clock past the refresh they scheduled (300 ms);
    then the panel must show ``hot``, exactly."""
    ids = [note["notification_id"] for note in replayed.account_notifications]
    await wait_for(lambda: handled(page, ids), 15, f"the page never handled {ids}")
    expected = [(v["account_id"], shown(v["score"])) for v in hot]
    await wait_for(lambda: listed(worker) == expected, 15,
                   f"/accounts?hot=true lists {listed(worker)}, not {expected}")
    await page.clock.run_for(400)
    await expect_hot_accounts(page, hot)


async def test_hot_accounts_show_their_buying_committee_live(
        browser: Browser, served_with_accounts: tuple[Deployment, Worker, Ruleset]) -> None:
    """acme: ann and ben two pricing pages each (30, 30), cat one (15), an intent surge
    (15): 90, hot at 80 while no lead is (all under 70). globex: gus four pages (60) and a
    surge: 75, not hot; two more surges: 105, shown 100, hot. Then ann unsubscribes (-40):
    acme falls to 50, under its re-arm line of 60 (account.cooled), and leaves the panel.
    The page's clock is paused: each change must come from an account notification."""
    deployment, worker, rules = served_with_accounts
    page, errors = await live_page(browser, worker, paused=True)
    await expect(page.locator("#accounts-panel")).to_have_attribute("data-state", "shown",
                                                                    timeout=15_000)
    await expect(page.locator("#accounts-meta")).to_contain_text("hot ≥ 80")
    await expect(page.locator("#accounts-empty")).to_contain_text("No hot accounts right now")

    t = now_ms() - 60_000
    events = [member("ann", "acme", t), member("ben", "acme", t), member("cat", "acme", t),
              member("gus", "globex", t),
              *(visit("ann", i, "/pricing", t + i * 1000) for i in (1, 2)),
              *(visit("ben", i, "/pricing", t + i * 1000) for i in (1, 2)),
              visit("cat", 1, "/pricing", t + 1000), surge("acme", 1, t + 3000),
              *(visit("gus", i, "/pricing", t + i * 1000) for i in (1, 2, 3, 4)),
              surge("globex", 1, t + 5000)]
    await deployment.produce(keyed(events))
    hot, replayed = expected_accounts(events, rules)
    assert replayed.notifications == []  # no lead is hot
    assert [(v["account_id"], v["score"], v["leads"]) for v in hot] == [
        ("acme", 90.0, [{"lead_id": "ann", "points": 30.0}, {"lead_id": "ben", "points": 30.0},
                        {"lead_id": "cat", "points": 15.0}])]
    await refreshed_by(page, worker, replayed, hot)
    assert get_json(worker, "/leads?hot=true")["leads"] == []

    # A member opens that lead's drawer.
    await page.locator('#accounts .member[data-lead-id="ben"]').click()
    await expect(page.locator("#lead-detail")).to_be_visible()
    await expect(page.locator("#detail-title")).to_have_text("ben")
    await expect(page.locator("#detail-score span")).to_have_text("30")
    await page.keyboard.press("Escape")
    await expect(page.locator("#lead-detail")).to_be_hidden()

    # globex joins, above acme (account.hot); then acme cools (account.cooled) and leaves.
    events += [surge("globex", 2, t + 6000), surge("globex", 3, t + 7000)]
    await deployment.produce(keyed(events[-2:]))
    hot, replayed = expected_accounts(events, rules)
    assert [(v["account_id"], v["score"], v["engagement"]) for v in hot] == [
        ("globex", 100.0, 105.0), ("acme", 90.0, 90.0)]
    await refreshed_by(page, worker, replayed, hot)
    events.append(act("ann", 3, "email_unsubscribed", t + 8000))
    await deployment.produce(keyed(events[-1:]))
    hot, replayed = expected_accounts(events, rules)
    assert [v["account_id"] for v in hot] == ["globex"]
    assert [(n["type"], n["account_id"]) for n in replayed.account_notifications] == [
        ("account.hot", "acme"), ("account.hot", "globex"), ("account.cooled", "acme")]
    assert replayed.notifications == []
    await refreshed_by(page, worker, replayed, hot)

    # The lead panels ignored every account notification the page handled.
    await expect(page.locator("#feed .feed-item")).to_have_count(0)
    await expect(page.locator("#cooling-feed .feed-item")).to_have_count(0)
    await expect(page.locator("#hot-count")).to_have_text("0")
    await expect(page.locator("#cooled-count")).to_have_text("0")
    assert errors == []
