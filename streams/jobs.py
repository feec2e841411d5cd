"""The worker's periodic jobs, each on a Faust timer, each run ``Health.safely``.

    cooling sweep   every LEADSCORE_SWEEP_INTERVAL: the disarmed leads whose score has
                    decayed below ``rearm_below`` get their ``lead.cooled``
    outbox re-send  every LEADSCORE_OUTBOX_INTERVAL: notifications recorded but not
                    acknowledged (a failed send, a crashed run) are sent again
    generations     every second: the rebuild's progress and the cutover; every minute:
                    the clean-up of generations kept past LEADSCORE_GENERATION_KEEP
                    (streams.generations)
"""

from __future__ import annotations

import faust

from scoring.store import RedisStore
from streams.delivery import Delivery
from streams.generations import Rebuild
from streams.health import Health
from streams.runtime import now_ms
from streams.settings import Settings

__all__ = ["schedule", "schedule_accounts", "sweep_cooling"]


async def sweep_cooling(store: RedisStore, delivery: Delivery, health: Health) -> None:
    """Cool the disarmed leads whose crossing time has passed, by the wall clock
    (docs/semantics.md, "Hot, cooled, and the crossing time"), and send their
    ``lead.cooled``. Nothing before the worker has started, or once it has stopped
    scoring."""
    if health.lost is not None or delivery.producer is None:
        return
    while entries := await store.sweep(now_ms()):
        await delivery.deliver(entries)


def schedule(app: faust.App, settings: Settings, store: RedisStore, delivery: Delivery,
             health: Health, rebuild: Rebuild) -> None:
    """Put the jobs on the app's timers."""

    @app.timer(interval=1.0)
    async def generations() -> None:
        await health.safely("generation check", rebuild.tick)

    @app.timer(interval=60.0)
    async def generations_clean_up() -> None:
        await health.safely("generation clean-up", rebuild.clean)

    @app.timer(interval=settings.sweep_interval)
    async def cooling_sweep() -> None:
        await health.safely("cooling sweep", lambda: sweep_cooling(store, delivery, health))

    @app.timer(interval=settings.outbox_interval)
    async def outbox_resend() -> None:
        await health.safely("outbox re-send", delivery.resend_pending)


def schedule_accounts(app: faust.App, settings: Settings, accounts: RedisStore,
                      delivery: Delivery, health: Health) -> None:
    """The account side's jobs (SPEC 11): its cooling sweep (account.cooled on time) and
    the re-send of its outbox, on the leads' intervals."""

    @app.timer(interval=settings.sweep_interval)
    async def account_cooling_sweep() -> None:
        await health.safely("account cooling sweep",
                            lambda: sweep_cooling(accounts, delivery, health))

    @app.timer(interval=settings.outbox_interval)
    async def account_outbox_resend() -> None:
        await health.safely("account outbox re-send", delivery.resend_pending)
