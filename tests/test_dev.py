"""``leadscore dev --demo``: the embedded default a new user runs first (make run)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from worker import LEADSCORE, wait_for

from streams.embedded import free_port

pytestmark = pytest.mark.integration


async def test_dev_demo_turns_leads_hot_and_ctrl_c_leaves_nothing_running(
        tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "dev.out"
    with out.open("wb") as sink:
        dev = subprocess.Popen([LEADSCORE, "dev", "--demo"], stdout=sink,
                               stderr=subprocess.STDOUT, cwd=tmp_path,
                               env={**os.environ, "LEADSCORE_WEB_PORT": str(port)})
    try:
        await wait_for(lambda: b"HOT " in out.read_bytes(), 90,
                       "no demo lead turned hot")
        text = out.read_text()
        lead = re.search(r"HOT\s+(demo-\d+)", text)
        assert lead is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/leads/{lead.group(1)}") as r:
            assert b'"hot":true' in r.read()
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
