"""``leadscore dev --demo``: the embedded default a new user runs first (make run)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from worker import LEADSCORE, wait_for

from scoring.preview import band
from streams.embedded import free_port

pytestmark = pytest.mark.integration

# The environment of the tests, without a web host, rules, sweep interval or model of
# their own: dev's defaults apply.
ENV = {name: value for name, value in os.environ.items()
       if name not in ("LEADSCORE_WEB_HOST", "LEADSCORE_RULES", "LEADSCORE_SWEEP_INTERVAL",
                       "LEADSCORE_MODEL")}
ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "config" / "demo-model.json"  # the bundled one: no config/ in tmp_path
DEMO_VERSION = orjson.loads(DEMO_MODEL.read_bytes())["rules_version"]
# dev's line for a notification of the lead's own score, which names the lead's stage
# (a score group's names its group instead: "(group scoring)").
OWN = r"(demo-\d+)\s+score\s+-?[\d.]+ \((?:prospect|mql|sql|customer)\)"
OWN_HOT = re.compile(rf"^HOT\s+{OWN}", re.MULTILINE)
OWN_COOLED_BY_DECAY = re.compile(rf"^cooled {OWN} .*\(decay\)$", re.MULTILINE)


def start_dev(tmp_path: Path, options: list[str], **env: str
              ) -> tuple[subprocess.Popen[bytes], Path]:
    """``leadscore dev OPTIONS`` in ``tmp_path`` with ``env`` added, and the file its
    output goes to."""
    out = tmp_path / "dev.out"
    with out.open("wb") as sink:
        dev = subprocess.Popen([LEADSCORE, "dev", *options], stdout=sink,
                               stderr=subprocess.STDOUT, cwd=tmp_path, env={**ENV, **env})
    return dev, out


def listening_on(pid: int, port: int) -> set[str]:
    """The addresses the process listens on at ``port``."""
    return {c.laddr.ip for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def banner_address(text: str, port: int) -> str | None:
    """The address dev's banner says it listens on at ``port``."""
    found = re.search(rf"^  listening  (\S+):{port}\b", text, re.MULTILINE)
    return found.group(1) if found else None


async def test_dev_demo_turns_leads_hot_and_ctrl_c_leaves_nothing_running(
        tmp_path: Path) -> None:
    port = free_port()
    dev, out = start_dev(tmp_path, ["--demo"], LEADSCORE_WEB_PORT=str(port))
    try:
        await wait_for(lambda: OWN_HOT.search(out.read_text()) is not None, 90,
                       "no demo lead turned hot")
        text = out.read_text()
        lead = OWN_HOT.search(text)
        assert lead is not None
        shown = get(port, f"/leads/{lead.group(1)}")
        assert shown["hot"] is True
        # The demo's model (README, "The demo"): every lead carries its conversion
        # probability and factors, and the leads most likely to buy rank first (a
        # customer-to-be within seconds, a buyer by 20 s: tests/test_demo.py).
        assert f"  model      {DEMO_MODEL}: p_convert served" in text
        assert 0 <= shown["p_convert"] <= 1 and shown["p_factors"], shown
        top: list[Any] = []

        def likely_buyer() -> bool:
            top[:] = get(port, "/leads?order=p_convert&limit=1")["leads"]
            return bool(top) and top[0]["p_convert"] > 0.3

        await wait_for(likely_buyer, 60, f"no lead likely to buy: {top}")
        assert get(port, f"/leads/{top[0]['lead_id']}")["p_factors"]
        # A laptop's API is its own: loopback only, as the banner says.
        assert listening_on(dev.pid, port) == {"127.0.0.1"}
        assert banner_address(text, port) == "127.0.0.1"
        # No LEADSCORE_RULES: the demo scores with its own rules (the bundled file, as
        # there is no config/ in the working directory).
        assert f"  rules      {ROOT / 'config' / 'demo-rules.yaml'}: save" in text
        children = psutil.Process(dev.pid).children(recursive=True)
        assert {c.name() for c in children} >= {"tansu", "valkey-server"}
    finally:
        dev.send_signal(signal.SIGINT)
        code = dev.wait(30)
    assert code == 0
    deadline = time.monotonic() + 10
    while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
        assert time.monotonic() < deadline, "children still running after Ctrl-C"
        time.sleep(0.1)  # polling the children's exit


async def test_dev_listens_where_leadscore_web_host_says_and_its_banner_tells(
        tmp_path: Path) -> None:
    port = free_port()
    dev, out = start_dev(tmp_path, [], LEADSCORE_WEB_PORT=str(port),
                         LEADSCORE_WEB_HOST="0.0.0.0")
    try:
        await wait_for(lambda: bool(listening_on(dev.pid, port)), 90,
                       f"dev is not listening on {port}")
        assert listening_on(dev.pid, port) == {"0.0.0.0"}
        assert banner_address(out.read_text(), port) == "0.0.0.0"
    finally:
        dev.send_signal(signal.SIGINT)
        assert dev.wait(30) == 0


async def test_saving_a_changed_rules_file_in_dev_rebuilds_and_cuts_over(
        tmp_path: Path) -> None:
    """Publishing rules in dev is saving the file: a bad one is refused with its problems
    and the worker goes on; a good one restarts the worker with it, which rebuilds its
    generation on the same broker and Redis and cuts over, as the output shows."""
    rules = tmp_path / "rules.yaml"
    original = (ROOT / "config" / "rules.yaml").read_text()
    rules.write_text(original)
    port = free_port()
    dev, out = start_dev(tmp_path, ["--demo"], LEADSCORE_WEB_PORT=str(port),
                         LEADSCORE_RULES=str(rules))
    try:
        await wait_for(lambda: b"HOT " in out.read_bytes(), 90, "no demo lead turned hot")
        # Rules other than the demo's: no p_convert (config/demo-model.json is theirs), said
        # in the banner, and dev goes on.
        first = re.search(r"^HOT\s+(demo-\d+)", out.read_text(), re.MULTILINE)
        assert first is not None
        lead = get(port, f"/leads/{first.group(1)}")
        assert "p_convert" not in lead and "p_factors" not in lead, lead
        off = (f"  model      {DEMO_MODEL} is for rules_version {DEMO_VERSION}, not {{}}: "
               "p_convert is off; name a model of these rules in LEADSCORE_MODEL "
               "(`leadscore model train`)\n")
        assert off.format(hashlib.sha256(original.encode()).hexdigest()[:12]) \
            in out.read_text()
        rules.write_text(original.replace("hot: {threshold: 70, rearm_below: 50}",
                                          "hot: {threshold: 70, rearm_below: 90}"))
        await wait_for(lambda: b"rules not published" in out.read_bytes(), 30,
                       "a bad rules file was not refused")
        assert "hot.rearm_below: 90 is above hot.threshold (70)" in out.read_text()
        rules.write_text(original.replace("hot: {threshold: 70, rearm_below: 50}",
                                          "hot: {threshold: 60, rearm_below: 45}"))
        await wait_for(lambda: b"leadscore: cutover: rules" in out.read_bytes(), 90,
                       f"no cutover:\n{out.read_text()[-3000:]}")
        text = out.read_text()
        changed = re.search(r"rules changed: .* is now rules_version ([0-9a-f]{12}); the "
                            r"worker restarts with it", text)
        assert changed is not None
        assert off.format(changed.group(1)) in text[changed.end():]  # said again
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as r:
            assert r.status == 200
    finally:
        dev.send_signal(signal.SIGINT)
        assert dev.wait(30) == 0


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as response:
        return orjson.loads(response.read())


async def test_dev_demo_tells_the_funnel_story_leads_spread_cool_and_convert(
        tmp_path: Path) -> None:
    """The demo as README's "Make it faster" says: config/demo-rules.yaml copied with a
    half-life of 15 seconds and named by LEADSCORE_RULES (a user's rules win). Within
    seconds the leads spread over at least five score bands (SPEC 9's), most of them in
    the lowest, one has converted (stage customer, SPEC 3) and one has cooled by decay
    (its lead.cooled printed, as the sweep sent it)."""
    shipped = (ROOT / "config" / "demo-rules.yaml").read_text()
    assert "\nhalf_life: 2m " in shipped
    rules = tmp_path / "fast-demo.yaml"
    rules.write_text(shipped.replace("\nhalf_life: 2m ", "\nhalf_life: 15s"))
    port = free_port()
    dev, out = start_dev(tmp_path, ["--demo"], LEADSCORE_WEB_PORT=str(port),
                         LEADSCORE_RULES=str(rules))
    seen: dict[str, Any] = {}

    def story() -> bool:
        try:
            leads = get(port, "/leads?limit=1000")["leads"]
        except (urllib.error.URLError, ConnectionError):  # (not listening yet)
            return False
        bands = Counter(band(lead["score"]) for lead in leads)
        seen["bands"] = [bands[b] for b in range(10)]  # leads per band
        seen["customers"] = [lead["lead_id"] for lead in leads if lead["stage"] == "customer"]
        seen["cooled"] = OWN_COOLED_BY_DECAY.findall(out.read_text())
        # A funnel: leads in five bands or more, the most of them in the lowest (the long
        # tail of anonymous visitors), a conversion, a cooling.
        return (len(bands) >= 5 and bands.most_common(1)[0][0] == 0
                and bool(seen["customers"]) and bool(seen["cooled"]))

    try:
        try:
            await wait_for(story, 45, "")
        except AssertionError:
            raise AssertionError(f"no story within 45 s: {seen}\n{out.read_text()[-3000:]}"
                                 ) from None
        assert f"  rules      {rules}: save" in out.read_text()
        assert get(port, f"/leads/{seen['cooled'][0]}")["hot"] is False
    finally:
        dev.send_signal(signal.SIGINT)
        assert dev.wait(30) == 0


def test_dev_prints_a_tombstone_as_a_forgotten_lead_not_a_crash() -> None:
    """``leadscore forget`` while dev runs puts a tombstone (no value) on the
    notifications topic; dev's console shows it instead of failing on it."""
    from streams.dev import _record_line

    assert _record_line(b"lead-9", None) == (
        "[bold]forgot[/] lead-9     erased: downstream systems should forget it too")
    note = {"type": "lead.hot", "lead_id": "lead-9", "score": 72.5, "stage": "sql",
            "reasons": [{"rule": "demo", "points": 52.5}], "cause": "event", "group": None}
    assert _record_line(b"lead-9", orjson.dumps(note)).startswith(
        "[bold red]HOT   [/] lead-9     score  72.50 (sql)")


def test_dev_prints_an_account_notification_with_its_leads() -> None:
    """The demo's companies (SPEC 11) send account.hot and account.cooled on the same
    topic: dev prints them with the account in place of the lead and its leads' shares
    in place of the stage (tests/test_demo.py plays acme's)."""
    from streams.dev import _record_line

    note = {"type": "account.hot", "notification_id": "acme:1", "account_id": "acme",
            "score": 88.61, "fit": 25.0, "engagement": 63.61, "threshold": 80,
            "cause": "event", "leads": [{"lead_id": "acme-3", "points": 15.28},
                                        {"lead_id": "acme-1", "points": 13.93}],
            "reasons": [{"rule": "intent-surge", "points": 28.99},
                        {"rule": "pricing-page", "points": 27.38}]}
    assert _record_line(b"acme", orjson.dumps(note)) == (
        "[bold red]HOT   [/] acme       score  88.61 (account)  intent-surge +28.99, "
        "pricing-page +27.38; leads acme-3 +15.28, acme-1 +13.93")
    cooled = {**note, "type": "account.cooled", "cause": "decay", "score": 60.0}
    assert _record_line(b"acme", orjson.dumps(cooled)).startswith(
        "[bold blue]cooled[/] acme       score  60.00 (account)")
    assert _record_line(b"acme", orjson.dumps(cooled)).endswith("  [italic](decay)[/]")


def test_dev_serves_the_demo_model_only_for_the_rules_it_was_trained_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dev --demo's model (streams.dev._demo_model, no servers): config/demo-model.json
    for the demo rules; for an edit of them (saved while dev runs, or a copy in the
    working directory) none, and the line says to retrain it; a damaged file, none."""
    from scoring.rules import load_rules, parse_rules
    from streams.dev import _demo_model

    monkeypatch.chdir(tmp_path)  # no config/ here: the bundled files
    demo = load_rules(ROOT / "config" / "demo-rules.yaml")
    served, line = _demo_model(demo, demo_rules=True)
    assert served is not None and served.model is not None
    assert served.model.rules_version == demo.version
    assert line.startswith(f"{DEMO_MODEL}: p_convert served")
    edited = (ROOT / "config" / "demo-rules.yaml").read_bytes().replace(
        b"half_life: 2m ", b"half_life: 15s")
    faster = parse_rules(edited, "config/demo-rules.yaml")
    served, line = _demo_model(faster, demo_rules=True)
    assert served is None
    assert line == (f"{DEMO_MODEL} is for rules_version {demo.version}, not {faster.version}: "
                    "p_convert is off; retrain it with `python -m bench.demo_model`")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "demo-model.json").write_text("{")  # here: it wins, damaged
    served, line = _demo_model(demo, demo_rules=True)
    assert served is None
    assert line.startswith("p_convert is off: config/demo-model.json: not JSON")
