"""Retake the README's dashboard screenshots from ``leadscore dev --demo``, in Debian's
Chromium: ``make screenshots`` (docs/dashboard.png, docs/dashboard-lead.png).

Starts the demo on a free port, opens the dashboard as it starts, waits until the page
shows what the demo is for (leads turning hot, several cooling, scores in at least
nine bands: about two minutes in), shoots it, then opens the hottest lead and shoots
its drawer. It waits on what the page shows, never for a fixed time, and gives up
after ``--timeout`` seconds.

(The browser test takes the same two pictures of its own few leads;
``LEADSCORE_UPDATE_SCREENSHOTS=1`` copies those into docs/ instead.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from playwright.async_api import async_playwright, expect
from test_dashboard import CHROMIUM, CHROMIUM_ARGS, ROOT

from streams.embedded import free_port

LEADSCORE = str(Path(sys.executable).parent / "leadscore")
# The page is ready to be shot: what the demo's first minutes are meant to show.
# About two minutes in: scores in most bands, and coolings by decay as well as by events.
READY = """() => document.querySelectorAll("#feed .feed-item").length >= 3
  && document.querySelectorAll("#cooling-feed .feed-item").length >= 3
  && [...document.querySelectorAll("#bands .count")].filter((c) => c.textContent !== "0")
       .length >= 9
  && document.querySelectorAll("#leads-body tr.lead-row").length >= 10"""


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


async def shoot(port: int, out: Path, timeout: float) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                   chromium_sandbox=False, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1440, "height": 900})
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for_function(READY, timeout=timeout * 1000, polling=1000)
        await page.locator("#search-id").blur()
        await page.screenshot(path=str(out / "dashboard.png"), animations="disabled")
        hottest = page.locator("#leads-body tr.lead-row").filter(has=page.locator(".hotflag"))
        await hottest.first.click()
        await expect(page.locator("#lead-history tr.history-row").first).to_be_visible()
        await expect(page.locator("#lead-detail .why")).to_be_visible()
        await page.screenshot(path=str(out / "dashboard-lead.png"), animations="disabled")
        await browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where to write them")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for the demo to show hot, cooling and spread")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"no Chromium at {CHROMIUM}: apt-get install chromium, or set "
              "LEADSCORE_CHROMIUM", file=sys.stderr)
        return 1
    port = free_port()
    log = Path(tempfile.gettempdir()) / "leadscore-screenshots-demo.log"
    with log.open("wb") as output:
        demo = subprocess.Popen([LEADSCORE, "dev", "--demo"], cwd=ROOT, stdout=output,
                                stderr=output, env={**os.environ,
                                                    "LEADSCORE_WEB_PORT": str(port)})
    try:
        deadline = time.monotonic() + 120
        while not ready(port):
            if demo.poll() is not None or time.monotonic() > deadline:
                print(f"the demo did not start; see {log}", file=sys.stderr)
                return 1
            time.sleep(0.2)  # polling /readyz, the condition itself
        asyncio.run(shoot(port, args.out, args.timeout))
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C: the worker, then the broker and Redis
        try:
            demo.wait(30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
    print(f"wrote {args.out / 'dashboard.png'} and {args.out / 'dashboard-lead.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
