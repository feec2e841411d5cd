"""``leadscore rules check`` and ``leadscore score`` as a user runs them (SPEC 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.cli import main

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RULES = ROOT / "config" / "rules.yaml"


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
    assert out.endswith("8 fit and 12 engagement rules, half-life 30d, hot at 70, "
                        "re-armed below 50\n")


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
         "hot": False},
        {"lead_id": "lead-b", "score": 45.0, "fit": 20.0, "engagement": 25.0, "stage": "sql",
         "hot": False}]


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
         "hot": False}]
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
                                    "engagement": 25.0, "stage": "mql", "hot": False}]
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
    assert len(leads) == len({orjson.loads(line)["lead_id"] for line in
                              (ROOT / "config" / "sample-events.jsonl").read_bytes().splitlines()})


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
