"""Accounts (SPEC 11): how a lead's awards become its company's, and how they travel.

An account is scored by the same engine as a lead (``scoring.engine.apply`` on a
``LeadState`` whose id is the account's, under the ``accounts:`` section's own
``Ruleset``): the decay algebra, the hysteresis and the cooling time are the lead's.
Two kinds of event reach an account:

- its own, from the events topic (``account_id`` instead of ``lead_id``):
  ``account_update`` merges into its profile, the others meet its engagement rules;
- a *member award*: every engagement award a lead event makes (after ``limit`` and
  ``after``, at the event's own time) becomes one event of type ``member_award`` for
  the account the lead's profile names after the event, worth ``lead_weight`` times the
  points, attributed to the lead (``rolled_up``).

Events are partitioned by lead, so the worker carries both to the account side through
an internal topic keyed by account id (``message`` and ``from_message``; docs/accounts.md).
Each lead numbers the awards it makes to each account (in its state, committed with the
award in one step), so the account recognises a re-sent or replayed award exactly, by
its number, however much event time has passed (``scoring.engine``).
"""

from __future__ import annotations

from typing import Any

import orjson

from scoring.engine import Applied, LeadState
from scoring.errors import EventError
from scoring.events import MAX_ID_LENGTH, MEMBER_AWARD, Event, check_depth, parse_ts
from scoring.rules import Ruleset

__all__ = ["AWARDS", "account_of", "award_id", "awards_message", "from_message", "message",
           "rolled_up"]

AWARDS = "member_awards"  # the type of a message of member awards (``awards_message``)


def account_of(profile: dict[str, Any], key: str) -> str | None:
    """The account a lead's profile names under ``key``: a non-empty string of at most
    200 characters, or a whole number (a CRM's numeric id, as its decimal digits);
    anything else names none."""
    value = profile.get(key)
    if type(value) is str:
        return value if 0 < len(value) <= MAX_ID_LENGTH else None
    if type(value) is int:
        return str(value)
    return None


def award_id(lead_id: str, event_id: str) -> str:
    """The id of the award a lead's event makes to its account: unique per account, and
    the same each time it is made again (a replay, a re-send), so that it is a repeat."""
    return f"{len(lead_id)}:{lead_id}:{event_id}"


def rolled_up(state: LeadState, event: Event, applied: Applied, rules: Ruleset
              ) -> Event | None:
    """The member award of one applied lead event (``rules.accounts`` set), or None when
    the event awarded no engagement points or the lead names no account."""
    accounts = rules.accounts
    assert accounts is not None
    engagement = rules.engagement_ids
    awards = [[rule_id, accounts.lead_weight * points] for rule_id, points in applied.awards
              if rule_id in engagement]  # (a fit rule turning on or off is not an award)
    if not awards:
        return None
    account_id = account_of(state.profile, accounts.key)
    if account_id is None:
        return None
    # Numbered per (lead, account), in the lead's state, committed with it: the account
    # recognises a re-sent award by its number, exactly (scoring.engine, _award_applied).
    number = state.awarded[account_id] = state.awarded.get(account_id, 0) + 1
    return Event(award_id(state.lead_id, event.event_id), account_id, MEMBER_AWARD, event.ts,
                 {"lead": state.lead_id, "n": number, "awards": awards}, True)


def message(event: Event, generation: str, source: tuple[int, int] | None = None) -> bytes:
    """An account event or member award as the internal topic carries it, tagged with the
    generation (rules version) whose lead side sent it: each generation's account side
    applies its own only (docs/generations.md). An account event also carries its
    ``source``, its (partition, offset) in the events topic."""
    doc = {"g": generation, "event_id": event.event_id, "account_id": event.lead_id,
           "type": event.type, "ts": event.ts, "properties": event.properties}
    if source is not None:
        doc["src"] = source
    return orjson.dumps(doc)


def awards_message(awards: list[Event], generation: str, partition: int | None) -> bytes:
    """Member awards of one commit bound for one partition of the account topic, as one
    message: a batch's awards travel as a few messages, not one each (each message costs
    the producer, the broker and the outbox more than the award itself). ``o``: a lead of
    the commit's shard, whose outbox holds the message."""
    return orjson.dumps({"g": generation, "type": AWARDS, "p": partition,
                         "o": awards[0].properties["lead"],
                         "awards": [[a.event_id, a.lead_id, a.ts, a.properties]
                                    for a in awards]})


def from_message(raw: bytes) -> tuple[str, list[tuple[Event, tuple[int, int] | None]]]:
    """(generation, [(event, source), ...]) of an internal topic's message: one account
    event with its events-topic position, or a commit's member awards (no position: an
    award is recognised by its number). ``EventError`` if it is not one (only a foreign
    producer can write such a message)."""
    try:
        doc = orjson.loads(raw)
        generation, kind = doc["g"], doc["type"]
        if type(generation) is str and generation and kind == AWARDS:
            return generation, [(_award(*award), None) for award in doc["awards"]]
        event_id, account_id = doc["event_id"], doc["account_id"]
        ts, properties = doc["ts"], doc["properties"]
        source = doc.get("src")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise EventError(f"not a message of Leadscore's account topic ({exc})",
                         "not_an_account_message") from None
    if not all(type(v) is str and v for v in (generation, event_id, account_id, kind)) \
            or kind == MEMBER_AWARD or type(properties) is not dict or not (source is None or (
                type(source) is list and len(source) == 2
                and all(type(n) is int and n >= 0 for n in source))):
        raise EventError("not a message of Leadscore's account topic (a field of the wrong "
                         "type)", "not_an_account_message")
    check_depth(properties)
    return generation, [(Event(event_id, account_id, kind, parse_ts(ts), properties, True),
                         None if source is None else (source[0], source[1]))]


def _award(event_id: object, account_id: object, ts: object, properties: object) -> Event:
    if not (type(event_id) is str and type(account_id) is str and account_id
            and type(properties) is dict):
        raise ValueError("a member award of the wrong shape")
    _check_award(properties)
    return Event(event_id, account_id, MEMBER_AWARD, parse_ts(ts), properties, True)


def position(source: tuple[int, int] | None) -> tuple[int, int] | None:
    """Where the account store counts a message as applied, to recognise a replay: an
    account event at its events-topic position, as partition ``-1 - p`` (its replays,
    forwarded again after a crash or rebalance of the lead side, or read again from the
    account topic, carry the same one; an account's events come from one events
    partition, keyed by account id); a member award nowhere (its number says it)."""
    return None if source is None else (-1 - source[0], source[1])


def _check_award(properties: dict[str, Any]) -> None:
    """Raises ``EventError`` for an award whose lead, number or points are not ones."""
    lead, number, awards = properties.get("lead"), properties.get("n"), properties.get("awards")
    if type(lead) is not str or type(number) is not int or number < 1 \
            or type(awards) is not list or not all(
            type(a) is list and len(a) == 2 and type(a[0]) is str
            and type(a[1]) in (int, float) and -1e300 < a[1] < 1e300 for a in awards):
        raise EventError("a member award whose lead or awards are malformed",
                         "not_an_account_message")


# Why an account event is refused under rules without an accounts: section.
NO_ACCOUNTS = ("event about an account (account_id), but the rules have no accounts: "
               "section; add one (README, \"Accounts\") or send it with lead_id")
