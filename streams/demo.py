"""Synthetic but realistic lead traffic, of two kinds.

``Traffic``, for the bundled sample, the benchmarks and the tests' histories: leads
have personas (buyers, evaluators, browsers, students) with their own mix of events;
activity across leads is Zipf-like (a few leads do most of it); a share of events
arrives late and a share twice, as they do from real trackers and retries. Its mix
(``PERSONAS``) is what bench/ measures: changing it changes every benchmark.

``LiveDemo``, for ``leadscore dev --demo``: a funnel told in real time (``FUNNEL``),
one scripted journey per lead, so that the demo shows what scoring does within its
first minutes under config/demo-rules.yaml: many anonymous visitors, warm leads, a
few hot ones that cool by decay, unsubscribes, conversions, profile updates that
change fit, scores across the whole range, and leads hot for one of the two product
lines (the default rules' score groups: a line's product page and its pricing page).
Besides the funnel, a few companies (``COMPANIES``: accounts, SPEC 11) tell their own
story once, in the first two minutes: several leads each, the company's profile and
intent-data signals; one turns hot with none of its leads hot, then cools by decay.
``demo_history`` fast-forwards it on a simulated clock: the history that
config/demo-model.json, the demo's conversion model, is trained on (bench.demo_model).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from scoring.events import ACCOUNT_UPDATE, PROFILE_UPDATE

__all__ = ["COMPANIES", "DECK", "FUNNEL", "LOOKALIKES", "NEW_LEAD_EVERY", "TICK_SECONDS",
           "Company", "LiveDemo", "Persona", "Traffic", "demo_history"]

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
    """A reproducible source of events for ``leads`` leads with Zipf-like activity.

    With ``accounts`` (SPEC 11), each lead works for one of that many companies (named in
    its profile's ``account_id``), and a share ``intent`` of the events are intent-data
    signals about a company (``intent_surge``, with ``account_id``); without, the stream
    is exactly what it always was."""

    def __init__(self, leads: int, seed: int = 1, prefix: str = "lead", accounts: int = 0,
                 intent: float = 0.02) -> None:
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
        self.account_ids = [f"{prefix}-co-{i}" for i in range(accounts)]
        self.account = {lead: self.rng.choice(self.account_ids) for lead in self.lead_ids} \
            if accounts else {}
        self.intent = intent

    def event(self, ts: int, lead_id: str | None = None) -> dict[str, Any]:
        """One event at ``ts``; the lead's first event is its profile."""
        rng = self.rng
        if self.account and lead_id is None and rng.random() < self.intent:
            self.counter += 1
            return {"event_id": f"e-{self.counter}", "account_id": rng.choice(self.account_ids),
                    "type": "intent_surge", "ts": ts,
                    "properties": {"topic": rng.choice(["lead scoring", "sales alerts"])}}
        lead = lead_id or rng.choices(self.lead_ids, cum_weights=self.activity)[0]
        persona = PERSONAS[self.persona[lead]]
        self.counter += 1
        event: dict[str, Any] = {"event_id": f"e-{self.counter}", "lead_id": lead, "ts": ts}
        if lead not in self.profiled:
            self.profiled.add(lead)
            event["type"] = "profile_update"
            event["properties"] = dict(rng.choice(persona["profile"]))
            if self.account:
                event["properties"]["account_id"] = self.account[lead]
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


# ---------------------------------------------------------------------------- live demo
# ``leadscore dev --demo``: a funnel, dealt as a deck. Every DECK (26) new leads hold
# exactly ``per_deck`` leads of each persona below, in a shuffled order, so that every 26
# seconds (a new lead a second) the demo tells the whole story whatever the seed: 12
# anonymous visitors; 8 known and engaged (readers, evaluators, a student, one that a
# profile update reveals); 4 hot by design (2 bingers, a buyer, a customer who
# converts); 2 that unsubscribe. The points in the comments are
# config/demo-rules.yaml's (the default rules, with a half-life of 2 minutes), and in
# parentheses the points of a product line's score group (hot at 25).

TICK_SECONDS = 0.5  # how often dev calls LiveDemo.tick
NEW_LEAD_EVERY = 2  # ticks: a new lead every second

Step = tuple[int, str, dict[str, Any]]  # (ticks after the previous step, type, properties)


def _do(kind: str, gap: int = 2, **properties: Any) -> Step:
    """A journey step ``gap`` to ``2 * gap`` ticks after the one before."""
    return (gap, kind, properties)


def _view(url: str, gap: int = 2) -> Step:
    return _do("page_view", gap, url=url)


@dataclass(frozen=True, slots=True)
class Persona:
    """Who a kind of lead is and what it does: its first event is a ``profile_update``
    with one of ``profiles`` (none: it stays anonymous unless a journey says who it is),
    then it follows one of ``journeys``, step by step, and goes quiet."""

    per_deck: int
    profiles: tuple[dict[str, Any], ...]
    journeys: tuple[tuple[Step, ...], ...]


MANAGER = {"job_title": "Marketing Manager", "company_size": 80, "industry": "software"}  # fit 35
ENGINEER = {"job_title": "Engineer", "company_size": 15, "industry": "manufacturing"}  # fit 0
FREE_MAIL = {"email": "someone@gmail.com"}  # fit -5

FUNNEL: dict[str, Persona] = {
    # Anonymous: a page or two (1-2 points; 17 with a product page), then gone.
    "visitor": Persona(12, (), (
        (_view("/", 0),),
        (_view("/careers", 0),),
        (_view("/blog/lead-scoring-101", 0), _view("/")),
        (_view("/docs", 0), _view("/about", 4)),
        (_view("/", 0), _view("/products/scoring")),
    )),
    # Known and reading: warm at most, then fading back to their fit.
    "reader": Persona(4, (MANAGER, ENGINEER, FREE_MAIL,
                          {"job_title": "Analyst", "company_size": 2500,
                           "industry": "retail"}), (  # fit 10
        (_view("/blog/lead-scoring-101"), _do("email_open"), _do("email_click"),
         _view("/docs/alerts/getting-started")),  # +17 (alerts 5)
        (_do("email_open"), _do("email_click"), _do("content_download", 3)),  # +35
        (_do("workshop_attended"), _do("workshop_attended", 4),
         _do("workshop_attended", 4)),  # +30, on the third
        (_view("/"), _do("review_submitted", 3, rating=2)),  # +1 -30
        (_do("email_click"), _do("email_open", 60), _do("email_click", 60),
         _view("/pricing")),  # +10, back 30-60 s later, again, then pricing: +36
    )),
    # Anonymous until a download form says who they are: the profile update changes
    # the fit, the engagement stays.
    "enriched": Persona(1, (), (
        (_view("/", 0), _view("/products/scoring"), _do("content_download"),
         _do("profile_update", 1, job_title="Director of Marketing", company_size=400,
             industry="saas")),  # +42, then fit 0 -> 45: hot for who they turn out to be
        (_view("/pricing", 0), _view("/products/alerts"),
         _do("profile_update", 1, company="HubSpot",
             job_title="Product Marketing Manager")),  # +32, then fit -40: a competitor
    )),
    # Marketing-qualified (a form: stage mql), warm, not hot.
    "evaluator": Persona(2, ({"job_title": "Team Lead", "company_size": 30,
                              "industry": "marketing"},  # fit 20
                             {"job_title": "Analyst", "company_size": 2500,
                              "industry": "fintech"},  # fit 20
                             {"job_title": "Coordinator", "company_size": 150,
                              "industry": "retail"}), (  # fit 15
        (_view("/blog/lead-scoring-101"), _do("email_click"), _do("form_submit"),
         _view("/docs/scoring/getting-started")),  # +42 (scoring 5)
        (_view("/products/scoring"), _do("form_submit", 3)),  # +41
        (_do("email_open"), _do("webinar_attended"), _do("form_submit", 3)),  # +45
    )),
    # Hot on engagement alone: a binge of content, with no fit to speak of. They cool
    # soonest, about a minute later.
    "binger": Persona(2, (FREE_MAIL, {"job_title": "Freelancer", "email": "me@hotmail.com"}), (
        (_view("/products/scoring", 1), _view("/pricing/scoring", 1),
         _do("webinar_attended", 1), _do("content_download", 1),
         _do("email_click", 1)),  # +87 (scoring 30: hot for it too)
        (_view("/products/scoring", 1), _view("/products/alerts", 1),
         _view("/pricing/alerts", 1), _do("webinar_attended", 1),
         _do("email_click", 1)),  # +78 (scoring 15, alerts 30: hot for alerts)
    )),
    # Hot (stage sql) in a few seconds on fit and intent, then silence: they cool by
    # decay in 2-4 minutes; some come back later and turn hot again.
    "buyer": Persona(1, ({"job_title": "Founder", "company_size": 60,
                          "industry": "retail"},  # fit 35
                         {"job_title": "Director of Sales", "company_size": 3000,
                          "industry": "retail"},  # fit 30
                         {"job_title": "Operations Manager", "company_size": 200,
                          "industry": "logistics"}), (  # fit 25
        (_view("/products/scoring"), _view("/pricing/scoring"),
         _do("webinar_attended")),  # +52 (scoring 30)
        (_do("email_click"), _view("/pricing"), _do("add_to_cart", 3)),  # +66
        (_view("/products/alerts"), _do("consultation_requested", 3)),  # +66
        (_view("/products/scoring"), _view("/pricing/scoring"), _do("webinar_attended"),
         _view("/pricing", 480), _do("consultation_requested", 3)),  # +52; 4-8 min: +66
    )),
    # Hot, then a customer (``converted``), then the onboarding docs: still scored.
    "customer": Persona(1, ({"job_title": "CTO", "company_size": 600,
                             "industry": "fintech"},  # fit 45
                            {"job_title": "Head of Marketing", "company_size": 120,
                             "industry": "e-commerce"},  # fit 45
                            {"job_title": "CFO", "company_size": 1500,
                             "industry": "software"}), (  # fit 40
        (_view("/products/scoring"), _view("/pricing/scoring"), _do("consultation_requested"),
         _do("converted", 6, plan="growth"),
         _view("/docs/scoring/getting-started", 4)),  # +88 (scoring 35)
        (_do("webinar_attended"), _do("form_submit"), _do("converted", 6, plan="starter"),
         _view("/docs/alerts/getting-started", 4),
         _view("/docs/alerts/api")),  # +57 (alerts 10)
    )),
    # Engaged, then unsubscribed (-50); one that had turned hot cools at once.
    "unsubscriber": Persona(2, (FREE_MAIL, ENGINEER, MANAGER), (
        (_do("email_open"), _do("email_click"), _do("email_open"),
         _do("email_unsubscribed", 3)),  # +10 -50
        (_view("/products/scoring"), _view("/pricing/scoring"), _do("form_submit"),
         _do("email_unsubscribed", 6)),  # +57 -50 (scoring 30: hot for it, even unfit)
    )),
    # Not buyers: negative fit (student -10, free mail -5), but they download.
    "student": Persona(1, ({"job_title": "Student", "email": "me@yahoo.com"},  # fit -15
                           {"job_title": "Marketing Intern", "company_size": 40,
                            "industry": "marketing"}), (  # fit 0
        (_view("/blog/lead-scoring-101"), _do("content_download")),  # +26
        (_do("content_download"), _do("webinar_attended"), _view("/careers")),  # +46
    )),
}
DECK = sum(persona.per_deck for persona in FUNNEL.values())

# The history's personas besides the funnel's (``demo_history(funnel=FUNNEL | LOOKALIKES)``,
# which bench.demo_model trains config/demo-model.json on); never in the live demo. In the
# funnel alone who converts is written in the first event: every customer, and no one
# else, has a customer's profile, so a model learns that and nothing more (a
# probability of 1 from a customer's profile on, 0 for everyone else). With these, a
# good fit converts about half the time and what a lead does tells the rest.
LOOKALIKES: dict[str, Persona] = {
    # Customers-to-be that stall: a customer's profile and journey up to the step
    # before ``converted``, then silence.
    "stalled": Persona(1, FUNNEL["customer"].profiles, tuple(
        journey[:next(i for i, step in enumerate(journey) if step[1] == "converted")]
        for journey in FUNNEL["customer"].journeys)),
    # Buyers that buy: a buyer's profile, a cart or a consultation request, ``converted``
    # and the onboarding docs.
    "closer": Persona(1, FUNNEL["buyer"].profiles, (
        (_do("email_click"), _view("/pricing"), _do("add_to_cart", 3),
         _do("converted", 6, plan="starter"), _view("/docs/scoring/getting-started", 4)),
        (_view("/products/alerts"), _do("consultation_requested", 3),
         _do("converted", 6, plan="growth"), _view("/docs/alerts/getting-started", 4)),
    )),
}


# Companies (SPEC 11: accounts), told once beside the funnel, on a script of their own:
# fixed seconds, no randomness, so that the funnel's deck and journeys are those of any
# seed with or without them. A company's people are leads ``<account_id>-1``, ``-2``,
# ...; each one's first event is its profile_update naming the company (account_id),
# and the company's first is its account_update (its profile: the accounts' fit). Their
# own profiles hold their job titles only (the company's size and industry are on the
# account), and no one of them is hot, not even for a product line, but initech's
# champion. The points in the comments are config/demo-rules.yaml's: a lead's award
# goes to its company too (lead_weight 1); hot at 80, re-armed below 60.


@dataclass(frozen=True, slots=True)
class Company:
    """An account and its story: ``profile`` is its account_update, ``members`` the
    profiles of its leads (``<account_id>-1`` first), ``timeline`` its events in order as
    (second of the demo, member: 1 for ``<account_id>-1``, 0 for the company itself,
    type, properties)."""

    account_id: str
    profile: dict[str, Any]
    members: tuple[dict[str, Any], ...]
    timeline: tuple[tuple[float, int, str, dict[str, Any]], ...]


COMPANIES: tuple[Company, ...] = (
    # A buying committee: three people on the pricing page and the docs, none of them
    # more than warm, and intent data: the company turns hot at 44 s on its second
    # intent surge and cools by decay at about 3.5 minutes.
    Company("acme", {"employees": 400, "industry": "saas"}, (  # account fit 25
        {"job_title": "Marketing Manager"},  # fit 10: 46 at most
        {"job_title": "Engineer"},  # fit 0: 12 at most
        {"job_title": "VP Finance"}), (  # fit 20: 36 at most
        (20, 1, "page_view", {"url": "/pricing"}),  # +16
        (26, 2, "page_view", {"url": "/docs/scoring/getting-started"}),  # +6 (scoring 5)
        (32, 0, "intent_surge", {"topic": "lead scoring"}),  # +15
        (36, 3, "page_view", {"url": "/pricing"}),  # +16: the company 76
        (44, 0, "intent_surge", {"topic": "lead scoring"}),  # +15: 89, hot
        (48, 1, "webinar_attended", {}),  # +20
        (52, 2, "page_view", {"url": "/docs/scoring/api"}),  # +6 (scoring 10)
    )),
    # A large company outside the sweet spot, researching: warm, never hot.
    Company("globex", {"employees": 5000, "industry": "retail"}, (  # account fit 0
        {"job_title": "Analyst"},  # fit 0: 11
        {"job_title": "IT Manager"}), (  # fit 10: 10 + 22 (alerts 20)
        (50, 1, "page_view", {"url": "/blog/lead-scoring-101"}),  # +1
        (54, 1, "email_click", {}),  # +10
        (58, 0, "intent_surge", {"topic": "sales alerts"}),  # +15
        (62, 2, "page_view", {"url": "/products/alerts"}),  # +16 (alerts 15)
        (68, 2, "page_view", {"url": "/docs/alerts/getting-started"}),  # +6 (alerts 20)
    )),
    # A champion: hot (sql) on a consultation request, and the company with them.
    Company("initech", {"employees": 150, "industry": "fintech"}, (  # account fit 25
        {"job_title": "Director of IT"},  # fit 20: 20 + 66, hot
        {"job_title": "Engineer"}), (  # fit 0: 6
        (75, 1, "page_view", {"url": "/pricing"}),  # +16
        (78, 1, "consultation_requested", {}),  # +50: 86, hot; the company 91, hot
        (82, 2, "page_view", {"url": "/docs/scoring/getting-started"}),  # +6 (scoring 5)
    )),
)


@dataclass(slots=True)
class _Plan:
    steps: list[Step]  # still to come
    due: int  # the tick of the next step
    sent: int = 0  # events sent so far: the next event id


class LiveDemo:
    """Events for ``leadscore dev --demo``, one tick at a time, stamped with real time.

    A new lead every ``new_lead_every`` ticks, its persona dealt from a shuffled deck of
    ``FUNNEL`` (every ``DECK`` leads hold each persona ``per_deck`` times); each lead
    sends its profile at once, then one of its persona's journeys, a step every few
    ticks. Reproducible: the same seed gives the same events tick for tick, whatever
    the clock. Beside the funnel, ``companies`` play their timelines once, from the
    first tick (their events after the funnel's in a tick; they draw nothing from the
    seed's generator, so the funnel is the same without them).
    """

    # The default seed deals a first deck that opens the story at once: two bingers, a
    # customer and an enriched lead turn hot in the first ten seconds; a binger cools
    # by decay in the second minute (any seed deals the same funnel, in another order).
    def __init__(self, seed: int = 14, new_lead_every: int = NEW_LEAD_EVERY,
                 funnel: dict[str, Persona] = FUNNEL,
                 companies: tuple[Company, ...] = COMPANIES) -> None:
        self.rng = random.Random(seed)
        self.funnel = funnel  # the personas a deck deals (demo_history's may hold more)
        self.every = new_lead_every
        self.ticks = 0
        self.leads = 0
        self.deck: list[str] = []
        self.personas: dict[str, str] = {}  # every lead so far -> its persona
        self.active: dict[str, _Plan] = {}  # leads with steps to come
        self.accounts: dict[str, str] = {}  # every company's lead so far -> its account
        # The companies' events to come, by tick: (id field, id, type, properties).
        self.script: dict[int, list[tuple[str, str, str, dict[str, Any]]]] = {}
        for company in companies:
            account = company.account_id
            introduced: set[int] = set()  # the company (0) and its members, profiled
            for second, member, kind, properties in company.timeline:
                due = self.script.setdefault(round(second / TICK_SECONDS), [])
                if not introduced:
                    due.append(("account_id", account, ACCOUNT_UPDATE, company.profile))
                    introduced.add(0)
                if member not in introduced:
                    introduced.add(member)
                    due.append(("lead_id", f"{account}-{member}", PROFILE_UPDATE,
                                {**company.members[member - 1], "account_id": account}))
                due.append(("lead_id", f"{account}-{member}", kind, properties) if member
                           else ("account_id", account, kind, properties))
        self.sent: dict[str, int] = {}  # a company's lead or account -> events sent

    def tick(self, now_ms: int) -> list[dict[str, Any]]:
        """The events of this tick, all at ``now_ms``, the funnel's then the companies';
        a lead's in its own order."""
        events: list[dict[str, Any]] = []
        if self.ticks % self.every == 0:
            events += self._new_lead(now_ms)
        for lead, plan in list(self.active.items()):
            while plan.due <= self.ticks:
                _gap, kind, properties = plan.steps.pop(0)
                events.append(self._event(lead, plan, kind, properties, now_ms))
                if not plan.steps:
                    del self.active[lead]
                    break
                plan.due = self.ticks + self._gap(plan.steps[0])
        for field_name, subject, kind, properties in self.script.pop(self.ticks, ()):
            n = self.sent[subject] = self.sent.get(subject, 0) + 1
            if kind == PROFILE_UPDATE:
                self.accounts[subject] = properties["account_id"]
            # A lead's event ids as the funnel's; an account's <account_id>-a1, -a2, ...
            event_id = f"{subject}-{n}" if field_name == "lead_id" else f"{subject}-a{n}"
            events.append({"event_id": event_id, field_name: subject, "type": kind,
                           "ts": now_ms, "properties": dict(properties)})
        self.ticks += 1
        return events

    def _new_lead(self, now_ms: int) -> list[dict[str, Any]]:
        rng = self.rng
        if not self.deck:
            self.deck = [name for name, persona in self.funnel.items()
                         for _ in range(persona.per_deck)]
            rng.shuffle(self.deck)
        name = self.deck.pop()
        persona = self.funnel[name]
        self.leads += 1
        lead = f"demo-{self.leads}"
        self.personas[lead] = name
        steps = list(rng.choice(persona.journeys))
        plan = _Plan(steps, self.ticks + self._gap(steps[0]))
        self.active[lead] = plan
        if not persona.profiles:
            return []
        profile = dict(rng.choice(persona.profiles))
        return [self._event(lead, plan, "profile_update", profile, now_ms)]

    def _gap(self, step: Step) -> int:
        return step[0] + self.rng.randint(0, step[0])

    @staticmethod
    def _event(lead: str, plan: _Plan, kind: str, properties: dict[str, Any],
               now_ms: int) -> dict[str, Any]:
        plan.sent += 1
        return {"event_id": f"{lead}-{plan.sent}", "lead_id": lead, "type": kind,
                "ts": now_ms, "properties": dict(properties)}


def demo_history(leads: int, seed: int = 14, start_ms: int = 0,
                 funnel: dict[str, Persona] = FUNNEL) -> list[dict[str, Any]]:
    """The events of ``LiveDemo(seed, funnel=funnel)``'s first ``leads`` leads,
    fast-forwarded: the demo ticked on a simulated clock (``start_ms``, then TICK_SECONDS
    a tick, as dev ticks it) until each of those leads has ended its journey, in the
    order they were sent.

    With the default funnel they are exactly the events the live demo sends those
    leads, tick for tick: the leads dealt after them are dealt as live (they draw from
    the same generator) and their events left out, as are the companies' (COMPANIES:
    their leads and their accounts' events). bench.demo_model trains
    config/demo-model.json on ``funnel=FUNNEL | LOOKALIKES``."""
    demo = LiveDemo(seed, funnel=funnel)
    tick_ms = round(TICK_SECONDS * 1000)
    ours = {f"demo-{n}" for n in range(1, leads + 1)}
    events: list[dict[str, Any]] = []
    tick = 0
    while demo.leads < leads or not ours.isdisjoint(demo.active):
        events += [e for e in demo.tick(start_ms + tick * tick_ms) if e.get("lead_id") in ours]
        tick += 1
    return events
