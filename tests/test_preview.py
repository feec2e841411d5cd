"""``leadscore rules preview`` (SPEC 9): the report's numbers, computed here again from
``leadscore score`` and plain offline replays, on a generated history with conversions;
the command as a user runs it; the terminal report and the HTML page; ``--topic``
against a real broker, leaving no consumer group and writing nothing."""

from __future__ import annotations

import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import assert_charts_drawn, report_in_browser

from scoring.engine import LeadState, apply, cool, score_at
from scoring.errors import EventError
from scoring.events import format_ts, parse_event, parse_ts
from scoring.offline import replay, replay_many
from scoring.rules import Ruleset, load_rules
from scoring.views import describe
from streams.cli import main

ROOT = Path(__file__).resolve().parent.parent
LEADSCORE = Path(sys.executable).parent / "leadscore"
START = parse_ts("2026-09-07T00:00:00Z")  # a Monday: ISO week 2026-W37
WEEK = 7 * 86_400_000
SPAN = 10 * WEEK
NOW = "2026-11-20T00:00:00Z"  # after every event: none is refused as dated ahead
HORIZON = "14d"
HORIZON_MS = 14 * 86_400_000

OLD = """name: old
half_life: 7d
hot: {threshold: 60, rearm_below: 40}
mql_events: [form_submit]
fit:
  - {id: exec, if: {job_title: CEO}, points: 20}
engagement:
  - {id: pricing, event: page_view, if: {url: /pricing}, points: 15}
  - {id: form, event: form_submit, points: 25}
  - {id: demo, event: demo_request, points: 40}
"""
# NEW: a lower threshold, pricing pages worth more, webinars worth something.
NEW = (OLD.replace("name: old", "name: new")
       .replace("threshold: 60, rearm_below: 40", "threshold: 50, rearm_below: 35")
       .replace("points: 15}", "points: 20}")
       + "  - {id: webinar, event: webinar_attended, points: 15}\n")
KINDS = {"page_view": 50, "email_open": 20, "form_submit": 8, "webinar_attended": 6,
         "demo_request": 3}


def history(leads: int = 40, seed: int = 7) -> list[dict[str, Any]]:
    """Leads with a profile, a few to a few dozen events each over ten weeks, four in
    ten converting at some point; in time order but for a few late arrivals."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for n in range(leads):
        lead = f"lead-{n:03d}"
        first = START + rng.randrange(SPAN // 2)
        events.append({"event_id": f"{lead}-p", "lead_id": lead, "type": "profile_update",
                       "ts": first, "properties": {"job_title": rng.choice(["CEO", "Engineer"])}})
        for i in range(rng.randint(2, 30)):
            kind = rng.choices(list(KINDS), list(KINDS.values()))[0]
            props = {"url": rng.choice(["/pricing", "/blog", "/docs"])} \
                if kind == "page_view" else {}
            events.append({"event_id": f"{lead}-{i}", "lead_id": lead, "type": kind,
                           "ts": rng.randrange(first, START + SPAN), "properties": props})
        if rng.random() < 0.4:
            events.append({"event_id": f"{lead}-c", "lead_id": lead, "type": "converted",
                           "ts": rng.randrange(first, START + SPAN), "properties": {}})
    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    for _ in range(len(events) // 20):  # late arrivals: a few events move down the file
        i = rng.randrange(len(events))
        events.insert(min(len(events), i + rng.randint(1, 40)), events.pop(i))
    for event in events:
        event["ts"] = format_ts(event["ts"])
    return events


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("preview")
    (tmp / "old.yaml").write_text(OLD)
    (tmp / "new.yaml").write_text(NEW)
    (tmp / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in history()))
    return {"old": tmp / "old.yaml", "new": tmp / "new.yaml", "events": tmp / "events.jsonl"}


def leadscore(*args: object, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[bytes]:
    """The installed command, as a user runs it."""
    return subprocess.run([str(LEADSCORE), *map(str, args)], capture_output=True, cwd=ROOT,
                          check=False, env={**os.environ, **(env or {})})


def scored(rules: Path, events: Path, *args: str) -> list[dict[str, Any]]:
    done = leadscore("score", "--rules", rules, "--now", NOW, *args, events)
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines()]


def expected_side(rules_path: Path, events: Path, at: int, conversions: dict[str, int]
                  ) -> dict[str, Any]:
    """SPEC 9's S for one ruleset, from ``leadscore score`` and its notifications."""
    rules = load_rules(rules_path)
    leads = scored(rules_path, events, "--at", format_ts(at))
    notes = scored(rules_path, events, "--at", format_ts(at), "--notifications")
    with events.open("rb") as lines:
        states = replay(lines, rules, at).states
    bands = [0] * 10
    for state in states.values():  # by the unrounded score, as SPEC 3 compares
        bands[min(9, max(0, int(score_at(state, at, rules) // 10)))] += 1
    alerts = [(n["lead_id"], parse_ts(n["event_ts"])) for n in notes
              if n["type"] == "lead.hot" and n.get("group") is None]
    weeks = Counter("{}-W{:02d}".format(*datetime.fromisoformat(n["event_ts"]).isocalendar()[:2])
                    for n in notes if n["type"] == "lead.hot")
    counted = [(lead, ts) for lead, ts in alerts
               if lead not in conversions or ts < conversions[lead]]
    hits = [(lead, ts) for lead, ts in counted
            if lead in conversions and conversions[lead] - ts <= HORIZON_MS]
    warned = {lead: conversions[lead] - min(t for other, t in hits if other == lead)
              for lead, _ in hits}
    return {
        "rules_version": rules.version, "leads": len(leads),
        "hot": sum(lead["hot"] for lead in leads),
        "stages": {stage: sum(lead["stage"] == stage for lead in leads)
                   for stage in ("prospect", "mql", "sql", "customer")},
        "bands": bands, "alerts": len(alerts), "alerts_per_week": dict(sorted(weeks.items())),
        "backtest": {
            "conversions": len(conversions),
            "precision": round(len(hits) / len(counted), 4),
            "recall": round(len(warned) / len(conversions), 4),
            "median_lead_time_h": round(statistics.median(warned.values()) / 3_600_000, 2)}}


@pytest.fixture(scope="module")
def expected(files: dict[str, Path]) -> dict[str, Any]:
    """The whole --json object, computed without scoring.preview."""
    events = [orjson.loads(line) for line in files["events"].read_bytes().splitlines()]
    at = max(parse_ts(e["ts"]) for e in events)
    conversions: dict[str, int] = {}
    for e in events:
        if e["type"] == "converted":
            conversions[e["lead_id"]] = min(parse_ts(e["ts"]),
                                            conversions.get(e["lead_id"], parse_ts(e["ts"])))
    old, new = ({lead["lead_id"]: lead for lead in scored(files[side], files["events"])}
                for side in ("old", "new"))
    states = {}
    for side in ("old", "new"):
        rules = load_rules(files[side])
        with files["events"].open("rb") as lines:
            states[side] = (rules, replay(lines, rules).states)
    moved = []
    for lead in sorted(old):
        views = {side: describe(states[side][1][lead], states[side][0], at)
                 for side in ("old", "new")}
        change = (score_at(states["new"][1][lead], at, states["new"][0])
                  - score_at(states["old"][1][lead], at, states["old"][0]))
        if round(change, 2) != 0:
            moved.append((-abs(change), lead, {
                "lead_id": lead, "change": round(change, 2),
                **{side: {k: views[side][k] for k in ("score", "fit", "engagement", "stage",
                                                      "hot", "reasons")}
                   for side in ("old", "new")}}))
    moved.sort(key=lambda m: (m[0], m[1]))
    return {
        "at": format_ts(at), "horizon": HORIZON,
        "old": expected_side(files["old"], files["events"], at, conversions),
        "new": expected_side(files["new"], files["events"], at, conversions),
        "became_hot": sorted(lead for lead in new if new[lead]["hot"] and not old[lead]["hot"]),
        "no_longer_hot": sorted(lead for lead in old
                                if old[lead]["hot"] and not new[lead]["hot"]),
        "stage_changes": [{"lead_id": lead, "old": old[lead]["stage"], "new": new[lead]["stage"]}
                          for lead in sorted(old) if old[lead]["stage"] != new[lead]["stage"]],
        "largest_changes": [view for _, _, view in moved[:20]]}


def preview(capsys: pytest.CaptureFixture[str], files: dict[str, Path], *args: str
            ) -> tuple[int, str, str]:
    code = main(["rules", "preview", str(files["new"]), "--against", str(files["old"]),
                 "--horizon", HORIZON, "--now", NOW, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_json_is_what_score_and_its_notifications_say(
        files: dict[str, Path], expected: dict[str, Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = preview(capsys, files, "--json", str(files["events"]))
    assert (code, err) == (0, "")
    assert orjson.loads(out) == expected
    # The history is one where every part of the backtest has something to do.
    old, new = expected["old"], expected["new"]
    assert old["backtest"]["conversions"] >= 10
    assert old["backtest"] != new["backtest"] and None not in old["backtest"].values()
    assert old["alerts"] < new["alerts"] and len(old["alerts_per_week"]) >= 8
    assert expected["became_hot"] and expected["stage_changes"]
    assert len(expected["largest_changes"]) == 20


def test_the_installed_command_compares_with_leadscore_rules_by_default(
        files: dict[str, Path], expected: dict[str, Any]) -> None:
    done = leadscore("rules", "preview", files["new"], files["events"], "--json",
                     "--horizon", HORIZON, "--now", NOW, env={"LEADSCORE_RULES": str(files["old"])})
    assert (done.returncode, done.stderr) == (0, b"")
    assert orjson.loads(done.stdout) == expected


def plain_replay(path: Path, rules: Ruleset, at: int | None
                 ) -> tuple[dict[str, LeadState], list[dict[str, Any]], list[tuple[int, str]]]:
    """What ``leadscore score`` does, written out with the engine alone: each good line
    applied in file order, then the sweep at ``at`` (default: the last event applied)."""
    states: dict[str, LeadState] = {}
    notes: list[dict[str, Any]] = []
    bad, times = [], []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            event = parse_event(line)
            if at is not None and event.ts > at:
                continue
            state = states.get(event.lead_id, LeadState(event.lead_id))
            notes += apply(state, event, rules).notifications
        except EventError as exc:  # refused before it changed anything
            bad.append((number, exc.reason))
            continue
        states[event.lead_id] = state
        times.append(event.ts)
    at = at if at is not None else max(times)
    cooled = [n for state in states.values() for n in cool(state, at, rules)]
    notes += sorted(cooled, key=lambda n: (n["event_ts"], n["lead_id"]))
    for n in notes:
        n["emitted_at"] = n["event_ts"]
    return states, notes, bad


def test_replay_many_is_each_ruleset_replayed_alone(files: dict[str, Path], tmp_path: Path
                                                    ) -> None:
    """One pass for several rulesets gives each what the engine alone gives it, refusals
    included (a bad line, a profile grown too large, dated last so that the instant
    reported at must not count it); ``replay`` is the same for one."""
    events = tmp_path / "events.jsonl"
    events.write_bytes(files["events"].read_bytes() + b"{oops\n" + orjson.dumps(
        {"event_id": "big", "lead_id": "lead-001", "type": "profile_update",
         "ts": "2026-11-19T00:00:00Z", "properties": {f"k{i}": i for i in range(300)}}) + b"\n")
    lines = len(events.read_bytes().splitlines())
    conversions: dict[str, int] = {}
    for doc in map(orjson.loads, files["events"].read_bytes().splitlines()):
        if doc["type"] == "converted":
            conversions[doc["lead_id"]] = parse_ts(doc["ts"])  # one per lead here
    rulesets = [load_rules(files["old"]), load_rules(files["new"])]
    for at in (None, parse_ts("2026-10-15T00:00:00Z")):
        with events.open("rb") as source:
            together = replay_many(source, rulesets, at)
        for rules, one in zip(rulesets, together, strict=True):
            states, notes, bad = plain_replay(events, rules, at)
            assert [number for number, _ in bad] == ([lines - 1, lines] if at is None
                                                     else [lines - 1])
            assert (one.states, one.notifications, one.bad_lines) == (states, notes, bad)
            assert one.applied + one.after_at + len(one.bad_lines) == lines
            assert one.at == (at or max(s.t_ref or 0 for s in states.values()))
            assert one.conversions == {lead: ts for lead, ts in conversions.items()
                                       if at is None or ts <= at}
            with events.open("rb") as source:
                alone = replay(source, rules, at)
            assert (alone.states, alone.notifications, alone.bad_lines, alone.applied,
                    alone.at) == (one.states, one.notifications, one.bad_lines, one.applied,
                                  one.at)


def test_the_terminal_report_leads_with_the_backtest(
        files: dict[str, Path], expected: dict[str, Any], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    code, out, err = preview(capsys, files, str(files["events"]))
    assert (code, err) == (0, "")
    text = " ".join(out.split())
    backtest = expected["new"]["backtest"]
    assert text.index("Backtest: does NEW catch more of the leads that converted, with how "
                      "many alerts?") < text.index("Leads by score")
    assert f"Of {backtest['conversions']} leads that converted, NEW alerted on" in text
    for side in ("old", "new"):
        for key in ("precision", "recall"):
            assert f"{expected[side]['backtest'][key]:.4f}" in text
        assert f"{expected[side]['backtest']['median_lead_time_h']:,.2f} h" in text
    assert expected["became_hot"][0] in text and expected["largest_changes"][0]["lead_id"] in text


def test_the_html_page_is_self_contained_with_both_charts(
        files: dict[str, Path], expected: dict[str, Any], capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    pages = [tmp_path / "a.html", tmp_path / "b.html"]
    for page in pages:
        code, out, _ = preview(capsys, files, "--json", "--html", str(page),
                               str(files["events"]))
        assert code == 0 and orjson.loads(out) == expected
    html = pages[0].read_text()
    assert html.count("<svg") == 2 and html.count("</svg>") == 2
    for fetch in ("http://", "https://", "<script", "<link", "<img", "src=", "@import"):
        assert fetch not in html, fetch
    # What the charts refer to is in the page: clip paths, markers.
    assert re.findall(r'url\((?!#)|href="(?!#)', html) == []
    assert f"{expected['new']['backtest']['precision']:.4f}" in html
    assert expected["largest_changes"][0]["lead_id"] in html
    assert pages[1].read_bytes() == pages[0].read_bytes()  # the same preview, the same page


def test_bad_input_is_refused_naming_what_to_fix(
        files: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.jsonl"
    assert preview(capsys, files, str(missing)) == (
        1, "", f"leadscore: {missing}: cannot read the events (No such file or directory); "
        "give a JSON-lines file of events, or --topic\n")
    assert preview(capsys, files, "--horizon", "9x", str(files["events"])) == (
        1, "", 'leadscore: --horizon: "9x" is not a duration (use 30s, 15m, 12h, 7d or 2w); '
        "the backtest counts an alert as a hit when its lead converted within this time "
        "after it\n")
    for source in ([], [str(files["events"]), "--topic"]):
        code, _, err = preview(capsys, files, *source)
        assert (code, err) == (1, "leadscore: rules preview: give an events file "
                               "(EVENTS.jsonl) or --topic, not both and not neither\n")


def test_bad_lines_are_reported_as_score_reports_them(
        files: dict[str, Path], expected: dict[str, Any], capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    good = files["events"].read_bytes().splitlines(keepends=True)
    events.write_bytes(b"".join(good[:5]) + b"{oops\n" + b"".join(good[5:]))
    code, out, err = preview(capsys, files, "--json", str(events))
    assert code == 1
    assert err == (f"{events}:6: not valid JSON at line 1 column 2: unexpected character, "
                   "expected a string key\n")
    assert orjson.loads(out) == expected


async def test_the_page_draws_its_charts_in_a_browser_and_fetches_nothing(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In Debian's headless Chromium: both charts drawn, every request the page's own
    file. The screenshot is the README's: ``LEADSCORE_UPDATE_SCREENSHOTS=1`` copies it."""
    monkeypatch.chdir(tmp_path)  # the page shows the files as given: short, relative
    shutil.copy(files["old"], "current.yaml")
    shutil.copy(files["new"], "candidate.yaml")
    Path("events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n"
                                              for e in history(600, seed=11)))
    page_path = tmp_path / "preview.html"
    assert main(["rules", "preview", "candidate.yaml", "--against", "current.yaml", "--horizon",
                 HORIZON, "--now", NOW, "--html", "preview.html", "events.jsonl"]) == 0
    async with report_in_browser(page_path, 1000, "preview.png") as (page, requests):
        await assert_charts_drawn(page, 2)
        assert requests == [page_path.as_uri()]


@pytest.mark.integration
async def test_topic_gives_the_file_s_preview_and_leaves_no_trace(
        files: dict[str, Path], expected: dict[str, Any], bootstrap: str, broker_url: str,
        tmp_path: Path) -> None:
    """The events produced to a topic (keyed by lead, three partitions, one bad message)
    preview exactly as their file does; afterwards the broker has the same topics, the
    same messages and no consumer group (none was joined, nothing committed)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.embedded import create_topics
    from streams.settings import Settings
    from streams.snapshot import read_topic

    topic = f"preview-{time.time_ns()}"
    await create_topics(bootstrap, {topic: 3})
    events = tmp_path / "events.jsonl"
    good = files["events"].read_bytes().splitlines(keepends=True)
    events.write_bytes(b"".join(good[:5]) + b"{oops\n" + b"".join(good[5:]))
    env = {"LEADSCORE_BROKER": broker_url, "LEADSCORE_TOPIC_EVENTS": topic,
           "LEADSCORE_RULES": str(files["old"])}
    produced = leadscore("produce", events, env=env)
    assert produced.returncode == 0, produced.stderr

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        groups, topics = await admin.list_consumer_groups(), set(await admin.list_topics())
        done = leadscore("rules", "preview", files["new"], "--topic", "--json", "--horizon",
                         HORIZON, "--now", NOW, env=env)
        assert done.returncode == 1  # the bad message, reported as score reports a bad line
        assert orjson.loads(done.stdout) == expected
        (refused,) = done.stderr.decode().splitlines()
        assert refused.startswith(f"{topic}:") and refused.endswith(
            ": not valid JSON at line 1 column 2: unexpected character, expected a string key")
        assert await admin.list_consumer_groups() == groups
        assert set(await admin.list_topics()) == topics
    finally:
        await admin.close()
    snapshot = await read_topic(Settings(broker=broker_url, topic_events=topic))
    assert sorted(value or b"" for value in snapshot.values) == sorted(
        line.rstrip(b"\n") for line in events.read_bytes().splitlines(keepends=True))
    partition, offset = refused.split(":")[1:3]
    number = snapshot.values.index(b"{oops") + 1
    assert snapshot.where(number) == f"{topic}:{partition}:{offset}"
