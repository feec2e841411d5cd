"""Synthetic but realistic lead traffic: the bundled sample, benchmarks and ``dev --demo``.

Leads have personas (buyers, evaluators, browsers, students) with their own mix of
events; activity across leads is Zipf-like (a few leads do most of it); a share of
events arrives late and a share twice, as they do from real trackers and retries.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

__all__ = ["LiveDemo", "Traffic"]

PERSONAS: dict[str, dict[str, Any]] = {
    "buyer": {
        "share": 0.15,
        "profile": [{"job_title": "VP Sales", "company_size": 240, "industry": "saas"},
                    {"job_title": "CTO", "company_size": 600, "industry": "fintech"},
                    {"job_title": "Head of Marketing", "company_size": 120,
                     "industry": "e-commerce"}],
        "events": {"page_view": 50, "email_click": 10, "form_submit": 4, "add_to_cart": 3,
                   "content_download": 4, "webinar_attended": 3, "workshop_attended": 3,
                   "consultation_requested": 1},
    },
    "evaluator": {
        "share": 0.35,
        "profile": [{"job_title": "Marketing Manager", "company_size": 80, "industry": "software"},
                    {"job_title": "Analyst", "company_size": 2500, "industry": "retail"}],
        "events": {"page_view": 60, "email_open": 20, "email_click": 6, "content_download": 3,
                   "webinar_attended": 2, "form_submit": 1, "email_unsubscribed": 0.3},
    },
    "browser": {
        "share": 0.40,
        "profile": [{"job_title": "Engineer", "company_size": 15, "industry": "manufacturing"},
                    {"email": "someone@gmail.com"}],
        "events": {"page_view": 80, "email_open": 15, "email_click": 2,
                   "email_unsubscribed": 0.5, "review_submitted": 0.2},
    },
    "student": {
        "share": 0.10,
        "profile": [{"job_title": "Student", "email": "me@yahoo.com"}],
        "events": {"page_view": 70, "content_download": 10, "webinar_attended": 2},
    },
}
URLS = ["/", "/blog/lead-scoring-101", "/products/scoring", "/products/alerts", "/pricing",
        "/pricing#enterprise", "/docs", "/careers", "/about"]
URL_WEIGHTS = [20, 25, 8, 6, 6, 2, 15, 5, 5]


class Traffic:
    """A reproducible source of events for ``leads`` leads with Zipf-like activity."""

    def __init__(self, leads: int, seed: int = 1, prefix: str = "lead") -> None:
        self.rng = random.Random(seed)
        self.lead_ids = [f"{prefix}-{i}" for i in range(leads)]
        names = list(PERSONAS)
        shares = [PERSONAS[n]["share"] for n in names]
        self.persona = {lead: self.rng.choices(names, shares)[0] for lead in self.lead_ids}
        # Cumulative weights, computed once: random.choices would redo it on every call.
        self.activity = list(itertools.accumulate(1.0 / (rank + 1) ** 1.1
                                                  for rank in range(leads)))
        self.profiled: set[str] = set()
        self.counter = 0

    def event(self, ts: int, lead_id: str | None = None) -> dict[str, Any]:
        """One event at ``ts``; the lead's first event is its profile."""
        rng = self.rng
        lead = lead_id or rng.choices(self.lead_ids, cum_weights=self.activity)[0]
        persona = PERSONAS[self.persona[lead]]
        self.counter += 1
        event: dict[str, Any] = {"event_id": f"e-{self.counter}", "lead_id": lead, "ts": ts}
        if lead not in self.profiled:
            self.profiled.add(lead)
            event["type"] = "profile_update"
            event["properties"] = dict(rng.choice(persona["profile"]))
            return event
        kinds = persona["events"]
        kind = rng.choices(list(kinds), list(kinds.values()))[0]
        event["type"] = kind
        if kind == "page_view":
            event["properties"] = {"url": rng.choices(URLS, URL_WEIGHTS)[0]}
        elif kind == "review_submitted":
            event["properties"] = {"rating": rng.randint(1, 5)}
        return event

    def history(self, events: int, start_ms: int, span_ms: int, late: float = 0.05,
                duplicates: float = 0.01, late_ms: int = 2 * 86_400_000
                ) -> Iterator[dict[str, Any]]:
        """``events`` events over ``span_ms`` from ``start_ms``, in arrival order: a share
        ``late`` carries a time up to ``late_ms`` in the past, a share ``duplicates`` is a
        re-delivery of an earlier event."""
        rng = self.rng
        step = span_ms / max(events, 1)
        recent: list[dict[str, Any]] = []
        for i in range(events):
            now = start_ms + int(i * step)
            if recent and rng.random() < duplicates:
                yield rng.choice(recent)
                continue
            ts = now - rng.randint(1, late_ms) if rng.random() < late else now
            event = self.event(max(ts, start_ms))
            if len(recent) < 1000:
                recent.append(event)
            else:
                recent[rng.randrange(1000)] = event
            yield event


# Live demo: a new lead starts a journey every few ticks; buyers reach the hot
# threshold within seconds, others browse and drift away.
JOURNEYS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "buyer": [("page_view", {"url": "/"}), ("page_view", {"url": "/products/scoring"}),
              ("page_view", {"url": "/pricing"}), ("content_download", {}),
              ("webinar_attended", {}), ("add_to_cart", {}), ("consultation_requested", {})],
    "evaluator": [("page_view", {"url": "/blog/lead-scoring-101"}), ("email_open", {}),
                  ("email_click", {}), ("page_view", {"url": "/pricing"}),
                  ("form_submit", {}), ("page_view", {"url": "/docs"})],
    "browser": [("page_view", {"url": "/"}), ("page_view", {"url": "/careers"}),
                ("email_unsubscribed", {})],
    "student": [("page_view", {"url": "/blog/lead-scoring-101"}), ("content_download", {})],
}


class LiveDemo:
    """Events for ``leadscore dev --demo``, one tick at a time, stamped with real time."""

    def __init__(self, seed: int = 7, new_lead_every: int = 3) -> None:
        self.rng = random.Random(seed)
        self.every = new_lead_every
        self.ticks = 0
        self.leads = 0
        self.active: dict[str, tuple[str, int]] = {}  # lead -> (persona, next step)

    def tick(self, now_ms: int) -> list[dict[str, Any]]:
        rng = self.rng
        events: list[dict[str, Any]] = []
        self.ticks += 1
        if self.ticks % self.every == 1:
            self.leads += 1
            lead = f"demo-{self.leads}"
            names = list(PERSONAS)
            persona = rng.choices(names, [PERSONAS[n]["share"] for n in names])[0]
            self.active[lead] = (persona, 0)
            events.append({"event_id": f"{lead}-profile", "lead_id": lead,
                           "type": "profile_update", "ts": now_ms,
                           "properties": dict(rng.choice(PERSONAS[persona]["profile"]))})
        for lead, (persona, step) in list(self.active.items()):
            if rng.random() < 0.5:
                continue
            journey = JOURNEYS[persona]
            kind, props = journey[step]
            events.append({"event_id": f"{lead}-{step}", "lead_id": lead, "type": kind,
                           "ts": now_ms, "properties": props})
            if step + 1 == len(journey):
                del self.active[lead]
            else:
                self.active[lead] = (persona, step + 1)
        return events
