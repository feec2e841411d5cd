"""Histories with a planted answer: conversion depends on behaviour in a known way.

``python -m bench.planted OUT.jsonl [--leads N] [--days D] [--start TS] [--seed S]
[--events-per-lead M] [--leak]`` writes JSON-lines events (SPEC 1) against the
default rules, config/rules.yaml; ``history(...)`` returns the same events as dicts,
for tests. The same arguments give the same bytes. Defaults: 4,000 leads over a year
(365 days) from 2025-06-01 (about 68,000 events, some 400 converted leads); ``--leads
60000`` is the benchmark size (about 1,000,000 events, some 6,000 converted leads).
A year, not half of one: with SPEC 12's default horizon (90 days) a training example
must end its horizon before the test period (the last 20% of the span), which leaves
a 180-day history little to fit on.

What is planted (every number below is a constant of this module, for tests):

- ``STRONG`` rules cause conversion, time-locally: each event that triggers one
  (``consultation_requested`` or ``demo_request``; a view of ``/pricing/scoring...``;
  a view of ``/docs/scoring/...``) schedules, with probability ``P_CONVERT[rule]``
  (0.25, 0.05 and 0.10) times the lead's fit multiplier, a ``converted`` event at a
  uniformly random instant 1 to 20 days later (``CONVERT_AFTER_DAYS``). The earliest
  scheduled instant is the lead's conversion: one ``converted`` event per lead, never
  past the end of the history.
- ``NOISE`` rules carry points (media-download 25, webinar 20, email-click 10) and
  have no effect at all; nor has any other rule but the STRONG ones (site-visit, the
  product and alerts pages, the plain /pricing page, forms, carts, workshops,
  unsubscribes, reviews): those events are everyday behaviour, drawn from one mix
  that is the same for every lead and independent of its intent.
- ``MISPRICED``: the starkest misfits of points to effects. scoring-docs is worth 5
  points and converts twice as often per event as scoring-pricing-page (15);
  media-download is worth 25 and does nothing.
- Fit matters a little, through ``FIT_EFFECT``, a multiplier on the STRONG
  probabilities: decision-makers 1.5, students 0.5, competitors 0 (they never convert
  but by the base rate). The other fit rules (manager, mid-market, enterprise,
  target-industry, free-mail) have no effect.
- The base rate: a lead converts, whatever it does, with probability ``BASE_RATE``
  (0.01), at a uniformly random instant of its life.
- After converting, a lead stops everything it planned; it reads 0 to 4
  (``POST_DOCS``) docs pages of either line in the next 30 days (onboarding). With
  ``leak``, it also gets 1 to 3 ``LEAK_EVENT`` (``onboarding_call``) events 1 hour to
  14 days after converting: an event type seen only after conversion, which a model
  must not learn from. ``leak`` only adds those events: the rest is byte for byte
  the same.

Leads. A lead's first event is a ``profile_update``: a job title (90%; ``TITLES``,
each with the fit rule it triggers), a company size (85%, log-uniform 1 to 20,000),
an industry (80%), a company (60%, 3% of them competitors: Marketo, Pardot, HubSpot,
Mautic), a country, an email (75%, a third of them free mail). Independently of the
profile, a share ``INTENT_SHARE`` (0.4) of leads has intent: their count of STRONG
events is geometric with mean ``INTENT_MEAN`` (3; a Poisson count whose mean is
exponential), so a quarter of them has none; other leads never send one. Everyday
behaviour is ``1 + floor(Exp)`` events with mean ``--events-per-lead`` (15), from
``EVERYDAY``: the page views of streams.demo's ``URLS`` (the benchmark mix's pages)
and the Alerts line's pricing and docs, email opens and clicks, downloads, webinars,
forms, workshops, carts, unsubscribes, reviews. A lead lives ``LIFE_DAYS`` (14 to 90
days, uniform, at most the history): its profile comes at the start, every planned
event at a uniformly random instant of its life (a Poisson process: STRONG and
everyday events are independent processes), and the life lies uniformly inside the
history.

Arrival. Events arrive in event-time order across leads, but a share ``LATE`` (5%)
arrives 1 minute plus an exponential delay (mean 1 day) late, behind events with
later times, and a share ``DUPLICATES`` (1%) is delivered again (same event, same
``event_id``) up to a day later, as trackers and retries do; a profile (and a leak
event) is never late nor repeated. Times are integer epoch milliseconds, ids
``lead-<i>`` and ``lead-<i>-<n>``.

What a model should find: the STRONG rules among the largest weights, the NOISE rules
near zero, competitors the most negative fit, a rule on ``LEAK_EVENT`` at exactly 0
(tests/test_training.py checks each). Single weights need about 15,000 leads to be
steady; the ranking holds from the default 4,000. One correlation is real but not
planted: a bounded life with STRONG events spread over it means that a lead deep into
its life has fewer of them ahead, and a high contribution of the frequent site-visit
says just that, so its weight is negative; the rarer NOISE rules carry little of it,
which is why they are NOISE and site-visit is not. docs/performance.md has the sizes
and times (``make bench`` trains on ``--leads 60000``).
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
import time
from collections.abc import Iterator
from itertools import accumulate
from operator import itemgetter
from typing import Any

import orjson

from scoring.events import parse_ts
from streams.demo import URL_WEIGHTS, URLS

__all__ = ["BASE_RATE", "CONVERT_AFTER_DAYS", "DAYS", "DUPLICATES", "EVENTS_PER_LEAD", "EVERYDAY",
           "FIT_EFFECT", "INTENT_MEAN", "INTENT_SHARE", "LATE", "LEAK_EVENT", "LIFE_DAYS",
           "MISPRICED", "NOISE", "POST_DOCS", "P_CONVERT", "START", "STRONG", "TITLES",
           "events", "history", "main"]

DAY_MS = 86_400_000
START = "2025-06-01T00:00:00Z"  # the default start: the default year ends in the past
DAYS = 365.0

STRONG = ("consultation-request", "scoring-pricing-page", "scoring-docs")
NOISE = ("media-download", "email-click", "webinar")
MISPRICED = ("scoring-docs", "media-download")
LEAK_EVENT = "onboarding_call"

P_CONVERT = {"consultation-request": 0.25, "scoring-pricing-page": 0.05, "scoring-docs": 0.10}
CONVERT_AFTER_DAYS = (1, 20)
FIT_EFFECT = {"decision-maker": 1.5, "student": 0.5, "competitor": 0.0}
BASE_RATE = 0.01
INTENT_SHARE = 0.4
INTENT_MEAN = 3.0
EVENTS_PER_LEAD = 15.0
LIFE_DAYS = (14, 90)
POST_DOCS = (0, 4)
LATE = 0.05
LATE_MIN_MS = 60_000
LATE_MEAN_MS = DAY_MS
DUPLICATES = 0.01

# A planned event: (type, properties, the STRONG rule it triggers or None).
Kind = tuple[str, dict[str, Any], str | None]

_STRONG_KINDS: list[tuple[float, Kind]] = [
    (0.10, ("consultation_requested", {}, "consultation-request")),
    (0.05, ("demo_request", {}, "consultation-request")),
    (0.35, ("page_view", {"url": "/pricing/scoring"}, "scoring-pricing-page")),
    (0.10, ("page_view", {"url": "/pricing/scoring?plan=team"}, "scoring-pricing-page")),
    (0.15, ("page_view", {"url": "/docs/scoring/getting-started"}, "scoring-docs")),
    (0.10, ("page_view", {"url": "/docs/scoring/rules"}, "scoring-docs")),
    (0.08, ("page_view", {"url": "/docs/scoring/api"}, "scoring-docs")),
    (0.07, ("page_view", {"url": "/docs/scoring/decay"}, "scoring-docs")),
]
# Everyday behaviour: 55 parts page views (streams.demo's pages and weights, then the
# Alerts line's pricing and docs), 45 parts everything else. NOISE is 16 of the 100.
_PAGES = [*zip(URLS, URL_WEIGHTS, strict=True), ("/pricing/alerts", 5),
          ("/docs/alerts/getting-started", 5), ("/docs/alerts/api", 3)]
_PAGE_PARTS = 55 / sum(weight for _, weight in _PAGES)
EVERYDAY: list[tuple[float, Kind]] = [
    *((weight * _PAGE_PARTS, ("page_view", {"url": url}, None)) for url, weight in _PAGES),
    (18, ("email_open", {"campaign": "newsletter"}, None)),
    (8, ("email_click", {"campaign": "newsletter"}, None)),  # email-click: NOISE
    (4, ("content_download", {"asset": "lead-scoring-guide.pdf"}, None)),  # media-download
    (1, ("media_download", {"asset": "webinar-recording.mp4"}, None)),  # media-download
    (3, ("webinar_attended", {"webinar": "scoring-101"}, None)),  # webinar: NOISE
    (5, ("form_submit", {"form": "newsletter"}, None)),
    (2.5, ("workshop_attended", {}, None)),
    (1.5, ("add_to_cart", {"plan": "starter"}, None)),
    (1, ("email_unsubscribed", {}, None)),
    (1, ("review_submitted", {}, None)),  # a rating of 1 to 5 (bad-review: 1 or 2)
]
_POST_URLS = ["/docs/scoring/getting-started", "/docs/scoring/api", "/docs/alerts/getting-started",
              "/docs/alerts/api"]

# Job titles, each with the fit rule of config/rules.yaml it triggers (tests check it).
TITLES: list[tuple[str, str | None, float]] = [
    ("CEO", "decision-maker", 2), ("CTO", "decision-maker", 2),
    ("VP Sales", "decision-maker", 3), ("Head of Marketing", "decision-maker", 3),
    ("Director of Marketing", "decision-maker", 3), ("Founder", "decision-maker", 1),
    ("Marketing Manager", "manager", 8), ("Sales Manager", "manager", 5),
    ("Team Lead", "manager", 4), ("Operations Manager", "manager", 3),
    ("Analyst", None, 8), ("Engineer", None, 10), ("Coordinator", None, 5),
    ("Consultant", None, 4), ("Freelancer", None, 3),
    ("Student", "student", 5), ("Marketing Intern", "student", 2),
]
_INDUSTRIES = ["software", "saas", "fintech", "e-commerce", "marketing", "retail",
               "manufacturing", "logistics", "education", "healthcare"]
_COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Soylent",
              "Wonka", "Tyrell", "Cyberdyne"]
_COMPETITORS = ["Marketo", "Pardot", "HubSpot", "Mautic"]
_FREE_MAIL = ["gmail.com", "yahoo.com", "hotmail.com", "outlook.com"]
_COUNTRIES = ["US", "GB", "DE", "FR", "NL", "ES", "CA", "AU"]
_PLANS = ["starter", "growth", "enterprise"]


def _table(weighted: list[tuple[float, Kind]]) -> tuple[list[Kind], list[float]]:
    return [kind for _, kind in weighted], list(accumulate(weight for weight, _ in weighted))


_STRONG_TABLE = _table(_STRONG_KINDS)
_EVERYDAY_TABLE = _table(EVERYDAY)
_TITLE_CUM = list(accumulate(weight for _, _, weight in TITLES))


def _profile(rng: random.Random, lead: str) -> tuple[dict[str, Any], float]:
    """A random profile and its fit multiplier (``FIT_EFFECT``)."""
    profile: dict[str, Any] = {}
    effect = 1.0
    if rng.random() < 0.9:
        title, fit, _ = rng.choices(TITLES, cum_weights=_TITLE_CUM)[0]
        profile["job_title"] = title
        effect *= FIT_EFFECT.get(fit or "", 1.0)
    if rng.random() < 0.85:
        profile["company_size"] = int(math.exp(rng.uniform(0.0, math.log(20_000))))
    if rng.random() < 0.8:
        profile["industry"] = rng.choice(_INDUSTRIES)
    company = None
    if rng.random() < 0.6:
        if rng.random() < 0.03:
            company = rng.choice(_COMPETITORS)
            effect *= FIT_EFFECT["competitor"]
        else:
            company = rng.choice(_COMPANIES)
        profile["company"] = company
    profile["country"] = rng.choice(_COUNTRIES)
    if rng.random() < 0.75:
        free = rng.random() < 1 / 3
        domain = rng.choice(_FREE_MAIL) if free or company is None else f"{company.lower()}.com"
        profile["email"] = f"{lead}@{domain}"
    return profile, effect


def _geometric(rng: random.Random, mean: float) -> int:
    """0, 1, 2, ... with P(k) proportional to (mean / (1 + mean))^k."""
    return int(math.log(1.0 - rng.random()) / math.log(mean / (1.0 + mean)))


def _lead(index: int, first: int, life: int, lead_seed: int, end: int, everyday: float,
          base_rate: float, leak: bool) -> list[tuple[int, dict[str, Any]]]:
    """One lead's events as (arrival, event), in the order they were made."""
    rng = random.Random(lead_seed)
    lead = f"lead-{index}"
    out: list[tuple[int, dict[str, Any]]] = []
    sent = 1

    def arrive(event: dict[str, Any]) -> None:
        ts: int = event["ts"]
        arrival = ts
        if rng.random() < LATE:
            arrival += LATE_MIN_MS + int(rng.expovariate(1.0 / LATE_MEAN_MS))
        out.append((arrival, event))
        if rng.random() < DUPLICATES:
            again = {**event, "properties": dict(event["properties"])}
            out.append((arrival + rng.randint(1000, DAY_MS), again))

    profile, effect = _profile(rng, lead)
    out.append((first, {"event_id": f"{lead}-1", "lead_id": lead, "type": "profile_update",
                        "ts": first, "properties": profile}))
    count = 1 + int(rng.expovariate(1.0 / (everyday - 0.5))) if everyday > 0.5 else 1
    kinds = rng.choices(_EVERYDAY_TABLE[0], cum_weights=_EVERYDAY_TABLE[1], k=count)
    if rng.random() < INTENT_SHARE:
        strong = _geometric(rng, INTENT_MEAN)
        kinds += rng.choices(_STRONG_TABLE[0], cum_weights=_STRONG_TABLE[1], k=strong)
    planned = sorted(((first + 1 + int(rng.random() * life), kind) for kind in kinds),
                     key=itemgetter(0))
    by_itself, when = rng.random(), rng.random()
    converts = first + 1 + int(when * life) if by_itself < base_rate else math.inf
    low, high = CONVERT_AFTER_DAYS[0] * DAY_MS, CONVERT_AFTER_DAYS[1] * DAY_MS
    for ts, (kind, properties, rule) in planned:
        if ts >= converts:
            break  # converted: what it planned to do next does not happen
        sent += 1
        if kind == "review_submitted":
            properties = {"rating": rng.randint(1, 5)}
        arrive({"event_id": f"{lead}-{sent}", "lead_id": lead, "type": kind, "ts": ts,
                "properties": dict(properties)})
        if rule is not None and rng.random() < P_CONVERT[rule] * effect:
            converts = min(converts, ts + rng.randint(low, high))
    if converts > end:
        return out
    at = int(converts)
    sent += 1
    arrive({"event_id": f"{lead}-{sent}", "lead_id": lead, "type": "converted", "ts": at,
            "properties": {"plan": rng.choice(_PLANS)}})
    for ts in sorted(at + 1 + rng.randrange(30 * DAY_MS) for _ in range(rng.randint(*POST_DOCS))):
        if ts <= end:
            sent += 1
            arrive({"event_id": f"{lead}-{sent}", "lead_id": lead, "type": "page_view",
                    "ts": ts, "properties": {"url": rng.choice(_POST_URLS)}})
    if leak:  # drawn last, so that the rest does not depend on it
        for ts in sorted(at + rng.randint(3_600_000, 14 * DAY_MS)
                         for _ in range(rng.randint(1, 3))):
            if ts <= end:
                sent += 1
                out.append((ts, {"event_id": f"{lead}-{sent}", "lead_id": lead,
                                 "type": LEAK_EVENT, "ts": ts, "properties": {}}))
    return out


def events(leads: int = 4000, days: float = DAYS, seed: int = 1,
           start_ms: int = parse_ts(START), leak: bool = False, *,
           events_per_lead: float = EVENTS_PER_LEAD,
           base_rate: float = BASE_RATE) -> Iterator[dict[str, Any]]:
    """The planted history, in arrival order, one event at a time (see the module).

    Memory holds only the leads alive at the moment: a lead is made whole when its
    life begins, and its events wait in a heap until they arrive."""
    span = int(days * DAY_MS)
    end = start_ms + span
    master = random.Random(seed)
    lives = []
    for index in range(leads):
        life = min(int(master.uniform(*LIFE_DAYS) * DAY_MS), span)
        first = start_ms + int(master.random() * (span - life))
        lives.append((first, index, life, master.getrandbits(64)))
    lives.sort()
    waiting: list[tuple[int, int, dict[str, Any]]] = []
    seq = 0
    for first, index, life, lead_seed in lives:
        while waiting and waiting[0][0] <= first:
            yield heapq.heappop(waiting)[2]
        for arrival, event in _lead(index, first, life, lead_seed, end, events_per_lead,
                                    base_rate, leak):
            heapq.heappush(waiting, (arrival, seq, event))
            seq += 1
    while waiting:
        yield heapq.heappop(waiting)[2]


def history(leads: int = 4000, days: float = DAYS, seed: int = 1,
            start_ms: int = parse_ts(START), leak: bool = False, *,
            events_per_lead: float = EVENTS_PER_LEAD,
            base_rate: float = BASE_RATE) -> list[dict[str, Any]]:
    """``events(...)`` as a list, in arrival order."""
    return list(events(leads, days, seed, start_ms, leak, events_per_lead=events_per_lead,
                       base_rate=base_rate))


def _start(value: str) -> int:
    return parse_ts(int(value) if value.isdigit() else value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.planted",
        description="Write a history whose conversions follow planted rules "
                    "(see bench/planted.py).")
    parser.add_argument("out", help="the JSON-lines file to write ('-': standard output)")
    parser.add_argument("--leads", type=int, default=4000)
    parser.add_argument("--days", type=float, default=DAYS)
    parser.add_argument("--start", type=_start, default=parse_ts(START),
                        help=f"RFC 3339 or epoch milliseconds (default {START})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--events-per-lead", type=float, default=EVENTS_PER_LEAD,
                        help="mean everyday events a lead plans (default %(default)s)")
    parser.add_argument("--leak", action="store_true",
                        help=f"add {LEAK_EVENT} events after each conversion")
    args = parser.parse_args(argv)
    if args.leads < 0 or args.days <= 0 or args.events_per_lead < 1:
        parser.error("--leads must be >= 0, --days > 0 and --events-per-lead >= 1")
    began = time.perf_counter()
    written = 0
    converted: set[str] = set()
    out = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
    try:
        for event in events(args.leads, args.days, args.seed, args.start, args.leak,
                            events_per_lead=args.events_per_lead):
            out.write(orjson.dumps(event) + b"\n")
            written += 1
            if event["type"] == "converted":
                converted.add(event["lead_id"])
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    share = len(converted) / args.leads if args.leads else 0.0
    print(f"{written} events, {args.leads} leads, {len(converted)} converted ({share:.1%}) "
          f"in {time.perf_counter() - began:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
