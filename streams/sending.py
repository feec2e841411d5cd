"""One destination of ``leadscore notify``: its lane (a queue, ``concurrency`` senders,
its own HTTP connections) and what one try of a request means.

- A 2xx answer is a delivery, recorded in the ledger before the record counts as done
  for this destination.
- 408, 429, 5xx, a timeout or a broken connection: tried again after the back-off
  (``Retry.wait``: exponential, with jitter, and never sooner than a Retry-After in
  seconds or as an HTTP date asks), up to ``retry.attempts`` tries in all. Any other
  answer (a 3xx too: redirects are not followed), or a TLS failure, is final at once.
  A final failure, or the last try failed: the notification is dead-lettered.
- A notification the ledger says the destination had is a repeat, dropped; a repeat
  read while the first is still on its way shares its outcome. Dead letters are not
  in the ledger: produced back onto the topic, they reach the destinations that did
  not have them, and only those.
- Nothing here logs or exports a URL, a secret or a signature: a failure is told by
  the destination's id, the status and a reason in our own words (aiohttp's exception
  messages may hold the URL).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from scoring.errors import EventError
from scoring.events import parse_ts
from streams import metrics, payloads
from streams.destinations import Destination
from streams.runtime import now_ms

if TYPE_CHECKING:
    from streams.notify import Item, Sink

__all__ = ["Abandoned", "Attempt", "Lane", "retry_after"]

log = logging.getLogger("leadscore.notify")
READ_BYTES = 64 * 1024  # of an answer's body: read so that the connection is reused


class Abandoned(Exception):
    """The record's partition moved to another sink, or this one stops: the record is
    left to whoever reads it next."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one try of a request ended."""

    status: int | None  # the HTTP status; None when there was no answer
    reason: str  # a metric label: delivered, http_5xx, http_429, timeout, connection, ...
    retry_after: float | None = None  # seconds the endpoint asked us to wait

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        if self.status is None:
            return self.reason in ("timeout", "connection")
        return self.status in (408, 429) or self.status >= 500

    def explain(self, timeout: float) -> str:
        if self.status is not None:
            return f"answered {self.status}"
        return {"timeout": f"no answer within {timeout:g} s",
                "connection": "could not connect, or the connection broke",
                "tls": "the TLS handshake failed (is the certificate valid for the host, or "
                       "does tls.ca_file name its CA?)"}[self.reason]


def _reason(status: int) -> str:
    if 200 <= status < 300:
        return "delivered"
    return f"http_{status}" if status in (408, 429) else f"http_{status // 100}xx"


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is in GMT
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


class Lane:
    """One destination's queue, its ``concurrency`` senders and its connections: what
    it waits for holds back no other destination."""

    def __init__(self, sink: Sink, destination: Destination) -> None:
        self.sink, self.destination = sink, destination
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.busy = 0
        # (ledger key, notification id) on its way -> its repeats read since
        self.on_the_way: dict[tuple[str, str], list[Item]] = {}
        self.session: aiohttp.ClientSession | None = None
        self.senders: list[asyncio.Task[None]] = []

    @property
    def backlog(self) -> int:
        return self.queue.qsize() + self.busy

    def put(self, item: Item) -> None:
        self.queue.put_nowait(item)

    async def start(self) -> None:
        d = self.destination
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=d.concurrency, ssl=d.tls),
            timeout=aiohttp.ClientTimeout(total=d.timeout), trust_env=True)  # HTTPS_PROXY
        self.senders = [asyncio.create_task(self._send_forever()) for _ in range(d.concurrency)]

    async def stop(self) -> None:
        for sender in self.senders:
            sender.cancel()
        await asyncio.gather(*self.senders, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _send_forever(self) -> None:
        while True:
            item = await self.queue.get()
            self.busy += 1
            try:
                await self._deliver(item)
            except Exception as exc:  # a bug: the record stays not done, so never committed
                self.sink.faults += 1
                log.error("delivering %s to %s failed unexpectedly (%s); it is delivered "
                          "again after a restart", item.id, self.destination.id,
                          type(exc).__name__,  # no traceback of aiohttp's: it may hold the URL
                          exc_info=not isinstance(exc, aiohttp.ClientError))
            finally:
                self.busy -= 1

    async def _deliver(self, item: Item) -> None:
        if item.part.revoked.is_set():
            return  # another sink's now (or none, stopping)
        assert item.note is not None
        way = (self.sink.ledger.key(self.destination.id, item.note), item.id)
        repeats = self.on_the_way.get(way)
        if repeats is not None:  # a repeat of one on its way: it shares that one's outcome
            repeats.append(item)
            return
        self.on_the_way[way] = []
        done = False
        try:
            await self._once(item, *way)
            done = True
        except Abandoned:
            pass
        finally:
            for repeat in self.on_the_way.pop(way):
                if done:
                    metrics.NOTIFY_DUPLICATES.labels(self.destination.id).inc()
                    repeat.done()
                else:
                    self.put(repeat)  # dropped at once if its partition is gone too
        if done:
            item.done()

    async def _once(self, item: Item, key: str, note_id: str) -> None:
        """Deliver or dead-letter ``item`` to this destination, unless the ledger has it
        already (at ``key``); ``Abandoned`` when its partition is revoked first."""
        assert item.note is not None and item.record.value is not None
        sink, d, part = self.sink, self.destination, item.part
        if await sink.persist(lambda: sink.ledger.had(key, note_id), "reading the ledger", part):
            metrics.NOTIFY_DUPLICATES.labels(d.id).inc()
            return
        body, headers = payloads.request(d, item.record.value, item.note,
                                         sink.settings.dashboard_url)
        failed = 0
        while True:
            part.check()
            with part.sending():  # a revocation waits for this block to end
                result = await self._attempt(body, headers)
                if result.delivered:
                    await sink.persist(lambda: sink.ledger.record(key, note_id),
                                       "recording a delivery")
                    self._delivered(item.note)
                    return
                failed += 1
                metrics.NOTIFY_FAILURES.labels(d.id, result.reason).inc()
                if not result.retryable or failed >= d.retry.attempts:
                    kind, why = ("retries_exhausted", f"{failed} tries failed, the last: ") \
                        if result.retryable else ("rejected", "not retried: ")
                    # Not recorded in the ledger: the destination has not had it, so a
                    # dead letter produced back onto the topic is delivered to it then.
                    await sink.dead_letter(item, d.id, result.status, kind,
                                           why + result.explain(d.timeout), failed)
                    return
            await part.sleep(d.retry.wait(failed, random.random(), result.retry_after))

    async def _attempt(self, body: bytes, headers: dict[str, str]) -> Attempt:
        assert self.session is not None
        try:
            async with self.session.post(self.destination.url.get_secret_value(), data=body,
                                         headers=headers, allow_redirects=False) as answer:
                await answer.content.read(READ_BYTES)
                return Attempt(answer.status, _reason(answer.status),
                               retry_after(answer.headers.get("Retry-After")))
        except TimeoutError:
            return Attempt(None, "timeout")
        except aiohttp.ClientSSLError:
            return Attempt(None, "tls")
        except (aiohttp.ClientError, OSError):
            return Attempt(None, "connection")

    def _delivered(self, note: dict[str, object]) -> None:
        metrics.NOTIFY_DELIVERED.labels(self.destination.id).inc()
        emitted = note.get("emitted_at")
        try:
            seconds = (now_ms() - parse_ts(emitted)) / 1000 if emitted is not None else None
        except EventError:
            seconds = None
        if seconds is not None:
            metrics.NOTIFY_LATENCY.labels(self.destination.id).observe(max(seconds, 0.0))
