"""``leadscore model train`` and ``leadscore model suggest`` (SPEC 12) as a user runs them,
on a history with a planted conversion process (bench/planted.py, written by its own
command): the model file and what the summary prints of it, the HTML report (three
charts, nothing fetched, the same bytes every run, drawn in a browser), refused lines,
too few conversions, suggest and its refusal of a model of other rules, and ``--topic``
against a real broker, leaving no consumer group."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import assert_charts_drawn, report_in_browser

from scoring.errors import EventError, ModelError
from scoring.events import parse_event, parse_ts
from scoring.model import FORMAT, feature_names, load_model
from scoring.rules import load_rules, parse_rules
from streams.cli import main
from streams.model_report import TOP_WEIGHTS, largest_weights

ROOT = Path(__file__).resolve().parent.parent
LEADSCORE = Path(sys.executable).parent / "leadscore"
RULES = ROOT / "config" / "rules.yaml"  # the rules bench/planted.py plants against
START = "2026-01-01T00:00:00Z"  # 180 days: the history ends on 2026-06-30
NOW = "2026-07-02T00:00:00Z"  # after every event: none is refused as dated ahead
HORIZON = "30d"
LEADS = 1500  # about 26,000 events and 160 converted leads: every part has enough
FEW = 200  # about 18 converted leads: too few to fit on
MODEL_KEYS = {"format", "rules_version", "horizon", "horizon_ms", "features", "intercept",
              "calibration", "rules_name", "window", "metrics", "examples",
              "regularisation", "suggested_points"}
OOPS = (": not valid JSON at line 1 column 2: unexpected character, expected a string key")


def planted(path: Path, leads: int) -> None:
    """A planted history, as ``python -m bench.planted`` writes it."""
    subprocess.run([sys.executable, "-m", "bench.planted", str(path), "--leads", str(leads),
                    "--start", START, "--days", "180", "--events-per-lead", "15", "--seed",
                    "1"], cwd=ROOT, check=True, capture_output=True)


def leadscore(*args: object, cwd: Path = ROOT, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[bytes]:
    """The installed command, as a user runs it."""
    return subprocess.run([str(LEADSCORE), *map(str, args)], capture_output=True, cwd=cwd,
                          check=False, env={**os.environ, "COLUMNS": "160", **(env or {})})


def train_args(*more: str) -> list[str]:
    """The fixture's training, its files named as a user in its directory names them."""
    return ["model", "train", "--rules", "rules.yaml", "events.jsonl", "--horizon", HORIZON,
            "--now", NOW, "--report", "report.html", *more]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("model")
    shutil.copy(RULES, tmp / "rules.yaml")
    planted(tmp / "events.jsonl", LEADS)
    planted(tmp / "few.jsonl", FEW)
    return {"dir": tmp, "rules": tmp / "rules.yaml", "events": tmp / "events.jsonl",
            "few": tmp / "few.jsonl"}


@pytest.fixture(scope="module")
def trained(files: dict[str, Path]) -> dict[str, Any]:
    """One run of the installed command: its output, the model file and the page."""
    done = leadscore(*train_args(), cwd=files["dir"])
    assert done.returncode == 0, done.stderr
    model = files["dir"] / "model.json"
    return {"done": done, "stdout": done.stdout.decode(), "path": model,
            "model": orjson.loads(model.read_bytes()), "page": files["dir"] / "report.html"}


def row(text: str, *cells: str) -> bool:
    """Whether the terminal table ``text`` has a row with these cells, in this order."""
    return re.search(r"│\s*" + r"\s*│\s*".join(map(re.escape, cells)) + r"\s*│", text) is not None


def test_train_writes_the_model_of_the_rules_and_prints_its_numbers(
        trained: dict[str, Any], files: dict[str, Path]) -> None:
    done, data, out = trained["done"], trained["model"], trained["stdout"]
    assert done.stderr == b""  # not a terminal: no progress bar, and no line was refused
    rules = load_rules(files["rules"])
    assert set(data) == MODEL_KEYS
    assert (data["format"], data["rules_version"], data["rules_name"]) == (
        FORMAT, rules.version, "default")
    assert (data["horizon"], data["horizon_ms"]) == (HORIZON, 30 * 86_400_000)
    assert [f["name"] for f in data["features"]] == feature_names(rules)
    model = load_model(trained["path"], rules)  # the file is one the rules accept
    assert trained["path"].read_bytes() == orjson.dumps(model.to_json(),
                                                        option=orjson.OPT_INDENT_2) + b"\n"
    # The metrics printed are the file's, the model's beside the rules' score.
    metrics = data["metrics"]
    assert row(out, "AUC (ranking; 0.5 is chance)", f"{metrics['auc']:.4f}",
               f"{metrics['rules_auc']:.4f}")
    assert row(out, "Brier score (lower is better)", f"{metrics['brier']:.4f}", "-")
    assert row(out, "expected calibration error (10 bins)", f"{metrics['ece']:.4f}", "-")
    # The planted history misprices the rules: the model ranks better than their score.
    assert metrics["auc"] > metrics["rules_auc"] + 0.1 and metrics["ece"] < 0.05
    # The example counts and the window.
    examples, window = data["examples"], data["window"]
    assert parse_ts(window["start"]) < parse_ts(window["split"]) < parse_ts(window["end"])
    for part, (start, end) in {"fit": ("start", "split"), "calibration": ("start", "split"),
                               "test": ("split", "end")}.items():
        assert row(out, part, f"{examples[part]:,}", f"{examples['positives'][part]:,}",
                   window[start], window[end])
    assert (f"{examples['conversions']:,} leads converted in the history. "
            f"{examples['unlabelled']:,} examples are left out") in " ".join(out.split())
    assert f"learned from {examples['events']:,} events of events.jsonl" in " ".join(out.split())
    # The largest weights, signed, largest first (ties in the file's order).
    largest = sorted(data["features"], key=lambda f: -abs(f["coefficient"]))[:TOP_WEIGHTS]
    assert {f["coefficient"] < 0 for f in largest} == {True, False}
    shown = [(m.group(1), m.group(2)) for m in
             re.finditer(r"│ ((?:rule|fit|stage):\S+|engagement)\s*│\s*([+-]\d+\.\d{4}) │", out)]
    slope = data["calibration"]["slope"]  # calibrated log-odds, as p_factors has them
    assert shown == [(f["name"], f"{slope * f['coefficient']:+.4f}") for f in largest]
    assert [name for name, _ in largest_weights(model, TOP_WEIGHTS)] == [
        f["name"] for f in largest]


def test_the_report_is_a_self_contained_page_with_three_charts_the_same_every_run(
        trained: dict[str, Any], files: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    html = trained["page"].read_text()
    assert html.count("<svg") == 3 and html.count("</svg>") == 3
    for fetch in ("http://", "https://", "<script", "<link", "<img", "src=", "@import"):
        assert fetch not in html, fetch
    assert re.findall(r'url\((?!#)|href="(?!#)', html) == []  # only the page's own ids
    metrics = trained["model"]["metrics"]
    for key in ("auc", "brier", "ece", "rules_auc"):
        assert f"<td>{metrics[key]:.4f}</td>" in html
    assert trained["model"]["window"]["split"] in html
    assert "p_convert is the probability that a lead&#x27;s first converted event" in html
    # The same history, run again elsewhere: the same model and the same page, byte for byte.
    monkeypatch.chdir(tmp_path)
    for name in ("rules", "events"):
        shutil.copy(files[name], tmp_path / files[name].name)
    assert main(train_args()) == 0
    capsys.readouterr()
    assert (tmp_path / "model.json").read_bytes() == trained["path"].read_bytes()
    assert (tmp_path / "report.html").read_bytes() == trained["page"].read_bytes()


def test_refused_lines_are_reported_as_score_reports_them_and_the_model_written(
        trained: dict[str, Any], files: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ahead = orjson.dumps({"event_id": "x", "lead_id": "lead-x", "type": "page_view",
                          "ts": "2026-07-03T00:00:00Z"})
    with pytest.raises(EventError) as refused:
        parse_event(ahead, latest_ms=parse_ts(NOW) + 3_600_000)
    events = tmp_path / "events.jsonl"
    good = files["events"].read_bytes().splitlines(keepends=True)
    events.write_bytes(b"".join(good[:5]) + b"{oops\n" + b"".join(good[5:]) + ahead + b"\n")
    out = tmp_path / "model.json"
    code = main(["model", "train", "--rules", str(files["rules"]), str(events), "--horizon",
                 HORIZON, "--now", NOW, "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0  # the model is what it makes: written, so a scheduled job succeeds
    assert captured.err == (f"{events}:6{OOPS}\n"
                            f"{events}:{len(good) + 2}: {refused.value.reason}\n"
                            "leadscore: 2 event(s) refused (above), as the worker refuses them; "
                            "the model learned from the rest\n")
    assert "AUC (ranking; 0.5 is chance)" in captured.out
    assert out.read_bytes() == trained["path"].read_bytes()  # what was refused counts for nothing


def test_too_few_conversions_is_refused_saying_why(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.json"
    code = main(["model", "train", "--rules", str(files["rules"]), str(files["few"]),
                 "--horizon", HORIZON, "--now", NOW, "--out", str(out), "--report",
                 str(tmp_path / "report.html")])
    captured = capsys.readouterr()
    assert (code, captured.out) == (1, "")
    assert captured.err.startswith("leadscore: too few conversions to learn from: the fit "
                                   "part of the history (")
    assert "needs at least 30" in captured.err
    assert captured.err.endswith("Give a longer history (more `converted` events) or a longer "
                                 "--horizon\n")
    assert list(tmp_path.iterdir()) == []  # no model, no page


def test_bad_input_is_refused_naming_what_to_fix(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def train(*args: str) -> tuple[int, str, str]:
        code = main(["model", "train", "--rules", str(files["rules"]), "--now", NOW,
                     "--out", str(tmp_path / "model.json"), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    for source in ([], [str(files["events"]), "--topic"]):
        assert train(*source) == (1, "", "leadscore: model train: give an events file "
                                  "(EVENTS.jsonl) or --topic, not both and not neither\n")
    missing = tmp_path / "nowhere.jsonl"
    assert train(str(missing)) == (
        1, "", f"leadscore: {missing}: cannot read the events (No such file or directory); "
        "give a JSON-lines file of events, or --topic\n")
    assert train("--horizon", "9x", str(files["events"])) == (
        1, "", 'leadscore: --horizon: "9x" is not a duration (use 30s, 15m, 12h, 7d or 2w); '
        "the model predicts whether a lead converts within this time\n")
    assert not (tmp_path / "model.json").exists()


def test_suggest_prints_the_rules_with_the_learned_points_and_refuses_other_rules(
        trained: dict[str, Any], files: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADSCORE_RULES", str(files["rules"]))  # the default rules file
    assert main(["model", "suggest", "--model", str(trained["path"])]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    rules, suggested = load_rules(files["rules"]), parse_rules(captured.out.encode())
    points = trained["model"]["suggested_points"]
    assert [(r.id, r.points) for r in suggested.engagement] == [
        (r.id, points[r.id]) for r in rules.engagement]
    assert [(r.id, r.points) for r in suggested.fit] == [(r.id, r.points) for r in rules.fit]
    assert (suggested.threshold, suggested.half_life_ms) == (rules.threshold,
                                                            rules.half_life_ms)
    assert "# Check edits with:  leadscore rules check config/rules.yaml" in captured.out
    # A model of other rules is refused, as the worker refuses it.
    other = tmp_path / "other.yaml"
    other.write_text(files["rules"].read_text().replace("name: default", "name: other"))
    other_rules = load_rules(other)
    assert other_rules.version != rules.version
    with pytest.raises(ModelError) as refused:
        load_model(trained["path"], other_rules)
    assert main(["model", "suggest", "--model", str(trained["path"]), "--rules",
                 str(other)]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"leadscore: {refused.value}\n")
    assert f"trained for rules_version {rules.version}" in captured.err


def test_a_terminal_sees_the_progress_on_stderr(files: dict[str, Path], tmp_path: Path
                                                ) -> None:
    done = leadscore("model", "train", "--rules", files["rules"], files["events"],
                     "--horizon", HORIZON, "--now", NOW, "--out", tmp_path / "model.json",
                     env={"TTY_COMPATIBLE": "1"})
    assert done.returncode == 0, done.stderr
    events = len(files["events"].read_bytes().splitlines())
    assert "replaying into examples" in done.stderr.decode()
    assert f"{events}/{events}" in done.stderr.decode()


async def test_the_page_draws_its_charts_in_a_browser_and_fetches_nothing(
        trained: dict[str, Any], tmp_path: Path) -> None:
    """In Debian's headless Chromium: the three charts drawn, every request the page's own
    file. The screenshot is the README's: ``LEADSCORE_UPDATE_SCREENSHOTS=1`` copies it."""
    page_path: Path = trained["page"]
    async with report_in_browser(page_path, 1460, "model-report.png") as (page, requests):
        charts = await assert_charts_drawn(page, 3)
        # The weights chart names the largest weights, largest first.
        names = [name for name, _ in largest_weights(load_model(page_path.with_name(
            "model.json")), TOP_WEIGHTS)]
        labels = await charts.nth(2).locator("text").all_text_contents()
        assert [label for label in labels if label in names] == names
        assert requests == [page_path.as_uri()]


@pytest.mark.integration
async def test_topic_trains_the_file_s_model_and_leaves_no_trace(
        trained: dict[str, Any], files: dict[str, Path], bootstrap: str, broker_url: str,
        tmp_path: Path) -> None:
    """The events produced to a topic (keyed by lead, three partitions, one bad message)
    train exactly the model their file does; afterwards the broker has the same topics
    and no consumer group (none was joined, nothing committed)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.embedded import create_topics

    topic = f"model-{time.time_ns()}"
    await create_topics(bootstrap, {topic: 3})
    events = tmp_path / "events.jsonl"
    good = files["events"].read_bytes().splitlines(keepends=True)
    events.write_bytes(b"".join(good[:5]) + b"{oops\n" + b"".join(good[5:]))
    env = {"LEADSCORE_BROKER": broker_url, "LEADSCORE_TOPIC_EVENTS": topic,
           "LEADSCORE_RULES": str(files["rules"])}
    produced = leadscore("produce", events, env=env)
    assert produced.returncode == 0, produced.stderr

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        groups, topics = await admin.list_consumer_groups(), set(await admin.list_topics())
        done = leadscore("model", "train", "--topic", "--horizon", HORIZON, "--now", NOW,
                         "--out", tmp_path / "model.json", env=env)
        assert done.returncode == 0  # the bad message reported, the model written
        refused, summary = done.stderr.decode().splitlines()
        assert summary == ("leadscore: 1 event(s) refused (above), as the worker refuses them; "
                           "the model learned from the rest")
        assert re.fullmatch(rf"{topic}:[0-2]:\d+{re.escape(OOPS)}", refused)
        assert f"events of topic {topic}" in " ".join(done.stdout.decode().split())
        assert await admin.list_consumer_groups() == groups
        assert set(await admin.list_topics()) == topics
    finally:
        await admin.close()
    assert orjson.loads((tmp_path / "model.json").read_bytes()) == trained["model"]
