"""Commands that talk to a running deployment: ``leadscore produce``, ``lead``, ``forget``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from scoring.errors import LeadscoreError
from scoring.events import format_ts
from scoring.views import account_now, lead_now
from streams.erasure import forget_once
from streams.runtime import connected, now_ms, producing
from streams.served import ServedModel
from streams.settings import Settings

__all__ = ["forget_lead", "produce_file", "show_lead"]

FLUSH_EVERY = 5_000


async def produce_file(settings: Settings, path: Path) -> int:
    """Send every line, keyed by its lead_id, so that a lead's events stay in order.

    Lines are sent as they are: a bad one is the worker's to dead-letter, with its reason.
    """
    try:
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    except OSError as exc:
        raise LeadscoreError(f"{path}: cannot read ({exc.strerror})") from None
    async with producing(settings, linger_ms=5) as producer:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn()) as progress:
            task = progress.add_task(f"{path.name} -> {settings.topic_events}", total=len(lines))
            pending = []
            for line in lines:
                pending.append(await producer.send(settings.topic_events, line,
                                                   key=_lead_key(line)))
                if len(pending) >= FLUSH_EVERY:
                    await asyncio.gather(*pending)
                    progress.advance(task, len(pending))
                    pending.clear()
            await asyncio.gather(*pending)
            progress.advance(task, len(pending))
    return 0


def _lead_key(line: bytes) -> bytes | None:
    """The message key: the lead_id, or for an event about an account its account_id
    (SPEC 11), so that each one's events stay in order on one partition."""
    try:
        doc = orjson.loads(line)
        subject = doc.get("lead_id", doc.get("account_id"))
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return subject.encode() if isinstance(subject, str) else None


async def show_lead(settings: Settings, lead_id: str) -> int:
    """The lead now, as ``GET /leads/{id}`` shows it; with LEADSCORE_MODEL its
    ``p_convert`` and ``p_factors`` too, by that model, which must fit the active rules."""
    async with connected(settings, reader=True) as runtime:
        served = ServedModel.configured(settings, runtime.rules)  # (ModelError: refused)
        loaded = await runtime.store.load(lead_id)
    if loaded is None:
        raise LeadscoreError(f"no lead {lead_id!r} in Redis")
    state, updated_at = loaded
    # Cooled first if due, as the API shows it; the probability at the same instant.
    view = lead_now(state, runtime.rules, now_ms(), None if served is None else served.explain)
    print(orjson.dumps({**view, "updated_at": format_ts(updated_at)},
                       option=orjson.OPT_INDENT_2).decode())
    return 0


async def show_account(settings: Settings, account_id: str) -> int:
    """The account now, as ``GET /accounts/{id}`` shows it (SPEC 11): its score, every
    member's contribution, its reasons, its profile."""
    async with connected(settings, reader=True) as runtime:
        if runtime.accounts is None:
            raise LeadscoreError("the active rules have no accounts: section, so there are "
                                 "no accounts (README, \"Accounts\")")
        loaded = await runtime.accounts.load(account_id)
        rules = runtime.accounts.rules
    if loaded is None:
        raise LeadscoreError(f"no account {account_id!r} in Redis")
    state, updated_at = loaded
    view = account_now(state, rules, now_ms())
    print(orjson.dumps({**view, "updated_at": format_ts(updated_at)},
                       option=orjson.OPT_INDENT_2).decode())
    return 0


async def forget_lead(settings: Settings, lead_id: str) -> int:
    """Erase every key of a lead, then tombstone it on the notifications topic, as
    ``DELETE /leads/{id}`` does."""
    async with connected(settings, reader=True) as runtime:
        if not await forget_once(runtime, lead_id):
            raise LeadscoreError(f"no lead {lead_id!r} in Redis (nothing to forget)")
    print(f"forgot {lead_id}: its keys are erased and a tombstone is on {settings.topic_hot}")
    return 0
