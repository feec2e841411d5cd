"""``leadscore rules check`` and ``leadscore score`` as a user runs them (SPEC 5)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from scoring.events import parse_ts
from streams.cli import main

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RULES = ROOT / "config" / "rules.yaml"
# The default rules' score groups (SPEC 10), for a lead none of whose events fed them.
NO_GROUPS = {"scoring": {"score": 0.0, "hot": False}, "alerts": {"score": 0.0, "hot": False}}


def write_events(path: Path, *lines: object) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n"
                              for line in lines))
    return path


def e(event_id: str, lead: str, kind: str, ts: str, **props: object) -> dict[str, object]:
    return {"event_id": event_id, "lead_id": lead, "type": kind, "ts": ts, "properties": props}


def lines(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines()]


def test_rules_check_accepts_a_good_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(DEFAULT_RULES)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{DEFAULT_RULES}: ok: default (rules_version ")
    assert out.endswith("8 fit and 17 engagement rules, half-life 30d, hot at 70, "
                        "re-armed below 50\n"
                        "  score group scoring: 3 engagement rules, hot at 25, re-armed below 15\n"
                        "  score group alerts: 3 engagement rules, hot at 25, re-armed below 15\n"
                        "  accounts by profile field account_id (lead_weight 1): 2 fit and 1 "
                        "engagement rules, hot at 80, re-armed below 60\n")


def test_rules_check_shows_the_half_life_as_a_rules_file_writes_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for written, shown in (("2m", "2m"), ("90s", "90s"), ("36h", "36h"), ("14d", "2w")):
        path = tmp_path / "r.yaml"
        path.write_text(f"name: x\nhalf_life: {written}\n"
                        "hot: {threshold: 70, rearm_below: 50}\n")
        assert main(["rules", "check", str(path)]) == 0
        assert f", half-life {shown}, " in capsys.readouterr().out


def test_rules_check_lists_every_problem_and_exits_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nhalf_life: 30x\nhot: {threshold: 70, rearm_below: 80}\n")
    assert main(["rules", "check", str(bad)]) == 1
    assert capsys.readouterr().err == (
        f"leadscore: {bad}: 2 problems\n"
        '  half_life: "30x" is not a duration (use 30s, 15m, 12h, 7d or 2w)\n'
        "  hot.rearm_below: 80 is above hot.threshold (70); a hot lead must fall below the "
        "threshold to re-arm\n")


def test_score_prints_one_line_per_lead_sorted_by_lead_id(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(
        tmp_path / "events.jsonl",
        e("1", "lead-b", "profile_update", "2026-11-01T00:00:00Z", job_title="CEO"),
        e("2", "lead-b", "demo_request", "2026-11-01T00:00:00Z"),
        e("3", "lead-a", "form_submit", "2026-11-01T00:00:00Z"),
        e("4", "lead-a", "page_view", "2026-12-01T00:00:00Z", url="/blog"))
    assert main(["score", "--rules", str(DEFAULT_RULES), str(events)]) == 0
    assert lines(capsys.readouterr().out) == [
        {"lead_id": "lead-a", "score": 13.5, "fit": 0.0, "engagement": 13.5, "stage": "mql",
         "hot": False, "groups": NO_GROUPS},
        {"lead_id": "lead-b", "score": 45.0, "fit": 20.0, "engagement": 25.0, "stage": "sql",
         "hot": False, "groups": NO_GROUPS}]


def test_score_at_reports_the_decayed_score_and_the_cooling(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path / "events.jsonl",
                          e("d", "lead-1", "demo_request", "2026-11-01T00:00:00Z"),
                          e("a", "lead-1", "add_to_cart", "2026-11-01T00:00:00Z"))
    args = ["score", "--rules", str(DEFAULT_RULES), str(events)]
    assert main([*args, "--at", "2026-11-01T00:00:00Z"]) == 0
    assert lines(capsys.readouterr().out)[0]["hot"] is True
    assert main([*args, "--at", "2026-12-01T00:00:00Z"]) == 0
    assert lines(capsys.readouterr().out) == [
        {"lead_id": "lead-1", "score": 45.0, "fit": 0.0, "engagement": 45.0, "stage": "sql",
         "hot": False, "groups": NO_GROUPS}]
    assert main([*args, "--at", "2026-12-01T00:00:00Z", "--notifications"]) == 0
    hot, cooled = lines(capsys.readouterr().out)
    assert (hot["type"], hot["score"], hot["emitted_at"]) == ("lead.hot", 90.0,
                                                              "2026-11-01T00:00:00Z")
    # 90 * 2^(-d/30) = 50  =>  d = 30 * log2(1.8) days = 25.44 days after Nov 1st.
    assert {k: cooled[k] for k in ("type", "notification_id", "score", "event_id",
                                   "event_ts")} == {
        "type": "lead.cooled", "notification_id": "lead-1:2", "score": 50.0,
        "event_id": None, "event_ts": "2026-11-26T10:33:27.982Z"}


def test_score_at_leaves_out_events_that_have_not_happened_yet(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path / "events.jsonl",
                          e("1", "lead-1", "form_submit", "2026-11-01T00:00:00Z"),
                          e("2", "lead-1", "add_to_cart", "2026-11-02T00:00:00Z"),
                          e("3", "lead-2", "form_submit", "2026-11-03T00:00:00Z"))
    assert main(["score", "--rules", str(DEFAULT_RULES), str(events),
                 "--at", "2026-11-01T00:00:00Z"]) == 0
    captured = capsys.readouterr()
    assert lines(captured.out) == [{"lead_id": "lead-1", "score": 25.0, "fit": 0.0,
                                    "engagement": 25.0, "stage": "mql", "hot": False,
                                    "groups": NO_GROUPS}]
    assert captured.err == "leadscore: 2 events after --at were not applied\n"


def test_bad_lines_are_reported_with_their_number_and_do_not_stop_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = write_events(tmp_path / "events.jsonl",
                          e("1", "lead-1", "form_submit", "2026-11-01T00:00:00Z"),
                          b"{oops",
                          e("2", "lead-1", "page_view", "yesterday"),
                          b"",
                          e("3", "lead-1", "add_to_cart", "2026-11-01T00:00:00Z"))
    assert main(["score", "--rules", str(DEFAULT_RULES), str(events)]) == 1
    captured = capsys.readouterr()
    assert lines(captured.out)[0]["score"] == 65.0
    assert captured.err.splitlines() == [
        f"{events}:2: not valid JSON at line 1 column 2: unexpected character, "
        "expected a string key",
        f'{events}:3: ts "yesterday" is not an RFC 3339 time (e.g. 2026-11-22T14:00:00Z)']


def test_a_bad_at_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["score", str(tmp_path / "x.jsonl"), "--at", "noon"])
    assert exit_.value.code == 2
    assert "argument --at: \"noon\" is not an RFC 3339 time" in capsys.readouterr().err


def test_the_installed_command_scores_the_bundled_sample() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "leadscore"), "score",
         str(ROOT / "config" / "sample-events.jsonl")],
        capture_output=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    leads = lines(done.stdout.decode())
    assert [lead["lead_id"] for lead in leads] == sorted(lead["lead_id"] for lead in leads)
    assert len(leads) == len({orjson.loads(line).get("lead_id") for line in
                              (ROOT / "config" / "sample-events.jsonl").read_bytes().splitlines()}
                             - {None})  # (an event about an account has account_id instead)
    # The sample exercises the default rules' score groups: leads hot for each line.
    hot_for = {group for line in done.stdout.splitlines()
               for group, scored in orjson.loads(line)["groups"].items() if scored["hot"]}
    assert hot_for == {"scoring", "alerts"}

    # --table shows a column per group, with the scores the JSON lines give.
    table = subprocess.run(
        [str(Path(sys.executable).parent / "leadscore"), "score", "--table",
         str(ROOT / "config" / "sample-events.jsonl")],
        capture_output=True, cwd=ROOT, check=False, env={**os.environ, "COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.decode().splitlines() if "lead" in line
                  and "score" in line)
    assert header.split("┃")[1:-1] == [" lead    ", "  score ", "    fit ", " engagement ",
                                        " stage    ", " hot ", " scoring ", " alerts "]
    rows = {cells[0].strip(): [cell.strip() for cell in cells[1:]]
            for line in table.stdout.decode().splitlines() if line.startswith("│")
            for cells in [line.split("│")[1:-1]]}
    for lead in leads:
        assert rows[lead["lead_id"]][-2:] == [f"{lead['groups'][g]['score']:.2f}"
                                             for g in ("scoring", "alerts")]


def test_the_bundled_sample_has_companies_and_one_turns_hot_with_no_hot_lead() -> None:
    """The sample's companies (SPEC 11, the default rules' accounts: section), as
    ``leadscore score --accounts`` prints them: northwind's three people on the pricing
    page and the docs in a week, and two intent surges, make it hot while none of them
    is; contoso (5,000 employees in retail: no fit) stays warm; fabrikam, a hot lead's
    company with no profile, too. Each score is the closed form: fit plus every award
    (times lead_weight 1) decayed 2^(-dt/H) from its own time to --at (the last event)."""
    sample = ROOT / "config" / "sample-events.jsonl"
    leadscore = str(Path(sys.executable).parent / "leadscore")
    done = subprocess.run([leadscore, "score", "--accounts", str(sample)],
                          capture_output=True, cwd=ROOT, check=True)
    events = {doc["event_id"]: doc for doc in map(orjson.loads, sample.read_bytes().splitlines())}
    at = max(doc["ts"] for doc in events.values())
    half_life = 30 * 86_400_000
    # The awards by event id, from the default rules: a page view is site-visit 1 plus
    # its page's rule (pricing-page 15, scoring-docs 5, alerts-product-page 15,
    # alerts-docs 5), an email click 10, a consultation request 50, an intent surge 15.
    awards = {"northwind": {"e-399": 16, "e-404": 6, "e-405": 15, "e-408": 16, "e-415": 15,
                            "e-416": 6},
              "contoso": {"e-402": 1, "e-406": 10, "e-412": 16},
              "fabrikam": {"e-410": 50, "e-414": 6}}
    fit = {"northwind": 25.0, "contoso": 0.0, "fabrikam": 0.0}  # 300 employees, software

    def engagement(account: str) -> float:
        return math.fsum(points * 2.0 ** (-(at - events[event_id]["ts"]) / half_life)
                         for event_id, points in awards[account].items())

    assert lines(done.stdout.decode()) == [
        {"account_id": account, "score": round(min(100.0, fit[account] + engagement(account)), 2),
         "fit": fit[account], "engagement": round(engagement(account), 2),
         "hot": account == "northwind"} for account in sorted(awards)]
    # It turned hot on its second intent surge; none of its leads is hot, or ever was.
    notes = subprocess.run([leadscore, "score", "--accounts", "--notifications", str(sample)],
                           capture_output=True, cwd=ROOT, check=True)
    assert [(n["type"], n["account_id"], n["event_ts"], [m["lead_id"] for m in n["leads"]])
            for n in lines(notes.stdout.decode())] == [
        ("account.hot", "northwind", "2026-10-13T08:00:00Z", ["lead-27", "lead-25", "lead-26"])]
    leads = {lead["lead_id"]: lead for lead in lines(subprocess.run(
        [leadscore, "score", str(sample)], capture_output=True, cwd=ROOT, check=True
    ).stdout.decode())}
    members = {doc["lead_id"] for doc in events.values()
               if doc["type"] == "profile_update"
               and doc["properties"].get("account_id") == "northwind"}
    assert members == {"lead-25", "lead-26", "lead-27"}
    assert not any(leads[lead]["hot"] for lead in members)
    lead_notes = lines(subprocess.run([leadscore, "score", "--notifications", str(sample)],
                                      capture_output=True, cwd=ROOT, check=True).stdout.decode())
    assert not any(n["lead_id"] in members for n in lead_notes)


def test_the_worker_refuses_a_bad_rules_file_at_start_with_every_problem(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nhalf_life: 30x\nhot: {threshold: 70, rearm_below: 80}\n")
    monkeypatch.setenv("LEADSCORE_RULES", str(bad))
    assert main(["worker"]) == 1
    assert capsys.readouterr().err.startswith(f"leadscore: {bad}: 2 problems\n")


def test_bad_settings_are_refused_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LEADSCORE_WEB_PORT", "sixty")
    monkeypatch.setenv("LEADSCORE_BATCH_SIZE", "0")
    assert main(["worker"]) == 1
    assert capsys.readouterr().err == (
        "leadscore: bad LEADSCORE_* settings:\n"
        "  LEADSCORE_WEB_PORT: Input should be a valid integer, unable to parse string as an "
        "integer\n"
        "  LEADSCORE_BATCH_SIZE: Input should be greater than or equal to 1\n")


LEADSCORE = Path(sys.executable).parent / "leadscore"
T = "2026-11-01T00:00:00Z"
SCORED = [  # what the good lines of the files below score, exactly
    {"lead_id": "lead-a", "score": 25.0, "fit": 0.0, "engagement": 25.0, "stage": "mql",
     "hot": False, "groups": NO_GROUPS},
    {"lead_id": "lead-b", "score": 70.0, "fit": 20.0, "engagement": 50.0, "stage": "sql",
     "hot": True, "groups": NO_GROUPS}]


def leadscore(*args: object) -> subprocess.CompletedProcess[str]:
    """The installed command, as a user runs it."""
    return subprocess.run([str(LEADSCORE), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, check=False)


def test_score_reports_every_line_the_worker_would_dead_letter_and_scores_the_rest(
        tmp_path: Path) -> None:
    deep = (b'{"event_id": "x", "lead_id": "lead-c", "type": "profile_update", "ts": "' + T.encode()
            + b'", "properties": ' + b'{"a": ' * 499 + b'{"a": 1}' + b"}" * 499 + b"}")
    events = write_events(
        tmp_path / "events.jsonl",
        e("1", "lead-a", "form_submit", T),
        deep,
        e("2", "lead-b", "profile_update", T, job_title="CEO"),
        e("3", "lead-a", "form_submit", "9999-12-31T23:59:59-01:00"),
        {**e("4", "lead-a", "form_submit", T), "ts": 10**15},
        e("5", "lead-b", "demo_request", T),
        e("6", "lead-a", "add_to_cart", "2026-11-01T01:00:00.001Z"),
        e("7", "lead-b", "profile_update", T, job_title="Student",
          **{f"k{i}": i for i in range(256)}),
        e("8", "lead-d", "profile_update", T, **{f"k{i}": i for i in range(257)}))
    done = leadscore("score", "--rules", DEFAULT_RULES, events, "--now", T)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    range_ = "1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"
    grown = ("profile_update would grow the lead's profile to 257 keys, more than "
             "MAX_PROFILE_KEYS (256); a key set to null is removed")
    assert done.stderr.splitlines() == [
        f"{events}:2: properties are nested 500 levels deep, more than 32",
        f'{events}:4: ts "9999-12-31T23:59:59-01:00" is outside the accepted range, {range_} '
        "(compared in UTC)",
        f"{events}:5: ts 1000000000000000 is outside the accepted range, 0 to 253402300799999 "
        f"epoch milliseconds ({range_})",
        f"{events}:7: ts 2026-11-01T01:00:00.001Z is 1 ms ahead of the latest event time "
        "accepted, 2026-11-01T01:00:00Z (the clock plus the allowed clock skew)",
        f"{events}:8: {grown}",
        f"{events}:9: {grown}"]
    # lead-c and lead-d sent nothing acceptable; lead-b's refused update changed nothing.
    assert lines(done.stdout) == SCORED


def test_max_clock_skew_sets_how_far_ahead_of_now_an_event_may_be(tmp_path: Path) -> None:
    events = write_events(tmp_path / "events.jsonl",
                          e("1", "lead-a", "form_submit", "2026-11-01T02:00:00Z"),
                          e("2", "lead-b", "form_submit", "2026-11-01T01:00:00Z"))
    done = leadscore("score", "--rules", DEFAULT_RULES, events, "--now", T)
    assert done.returncode == 1
    assert done.stderr == (f"{events}:1: ts 2026-11-01T02:00:00Z is 1.0 h ahead of the latest "
                           "event time accepted, 2026-11-01T01:00:00Z (the clock plus the "
                           "allowed clock skew)\n")
    assert lines(done.stdout) == [{**SCORED[0], "lead_id": "lead-b"}]  # exactly 1h ahead: ok
    done = leadscore("score", "--rules", DEFAULT_RULES, events, "--now", T,
                     "--max-clock-skew", "2h")
    assert (done.returncode, done.stderr) == (0, "")
    assert lines(done.stdout) == [  # scored at 02:00: lead-b's 25 points are an hour old
        SCORED[0], {**SCORED[0], "lead_id": "lead-b", "score": 24.98, "engagement": 24.98}]


def test_without_now_events_may_not_be_ahead_of_the_wall_clock(tmp_path: Path) -> None:
    soon = time.time_ns() // 1_000_000 + 30 * 60_000  # within the default hour of skew
    events = write_events(tmp_path / "events.jsonl",
                          {**e("1", "lead-a", "form_submit", T), "ts": soon},
                          e("2", "lead-b", "demo_request", "2200-01-01T00:00:00Z"))
    before = time.time_ns() // 1_000_000
    done = leadscore("score", "--rules", DEFAULT_RULES, events)
    after = time.time_ns() // 1_000_000
    assert done.returncode == 1
    assert [lead["lead_id"] for lead in lines(done.stdout)] == ["lead-a"]
    shown = re.fullmatch(
        rf"{re.escape(str(events))}:2: ts 2200-01-01T00:00:00Z is (\d+\.\d) years ahead of the "
        r"latest event time accepted, (\S+) \(the clock plus the allowed clock skew\)\n",
        done.stderr)
    assert shown is not None, done.stderr
    latest = parse_ts(shown[2])
    assert before + 3_600_000 <= latest <= after + 3_600_000  # the wall clock + 1h
    assert shown[1] == f"{(parse_ts('2200-01-01T00:00:00Z') - latest) / 31_557_600_000:.1f}"


def test_a_bad_max_clock_skew_is_refused(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["score", str(tmp_path / "x.jsonl"), "--max-clock-skew", "1x"])
    assert exit_.value.code == 2
    assert ('argument --max-clock-skew: "1x" is not a duration (use 30s, 15m, 12h, 7d or 2w)'
            in capsys.readouterr().err)


@pytest.mark.integration
async def test_leadscore_lead_shows_a_due_cooling_as_the_api_does(redis_url: str,
                                                               tmp_path: Path) -> None:
    """A hot lead whose cooling by decay is due but not yet swept: the API showed it
    cooled, ``leadscore lead`` still said hot. Both now show the lead as of now."""
    from redis.asyncio import Redis
    from worker import LEADSCORE

    from scoring.events import Event
    from scoring.rules import load_rules
    from scoring.store import RedisStore
    from scoring.views import lead_now
    from streams.runtime import now_ms

    rules_path = tmp_path / "hourly.yaml"
    rules_path.write_text("name: hourly\nhalf_life: 1h\nhot: {threshold: 70, rearm_below: 50}\n"
                          "engagement:\n  - {id: demo, event: demo_request, points: 80}\n")
    rules, prefix = load_rules(rules_path), f"cli-{time.time_ns()}"
    async with Redis.from_url(redis_url) as redis:
        store = RedisStore(redis, rules, prefix, shards=4)
        a_day_ago = now_ms() - 86_400_000
        await store.apply([Event("d", "lead-c", "demo_request", a_day_ago, {})], a_day_ago)
        loaded = await store.load("lead-c")
    assert loaded is not None and loaded[0].hot  # as stored: nothing swept it
    shown = subprocess.run([LEADSCORE, "lead", "lead-c"], capture_output=True, check=False,
                           env={"PATH": "/usr/bin:/bin", "LEADSCORE_REDIS_URL": redis_url,
                                "LEADSCORE_KEY_PREFIX": prefix,
                                "LEADSCORE_RULES": str(rules_path)})
    assert shown.returncode == 0, shown.stderr
    lead = orjson.loads(shown.stdout)
    expected = lead_now(loaded[0], rules, now_ms())
    assert (lead["hot"], lead["score"], lead["stage"]) == (False, expected["score"], "sql")
