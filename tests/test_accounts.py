"""Accounts (SPEC 11): company scores rolled up from their leads' awards and their own
events, by the lead's engine; offline first (``leadscore score --accounts``)."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from typing import Any

import orjson
import pytest
from helpers import DAY, T0, fresh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rules import GOOD_HEADER
from test_rules import problems as refused

from scoring.accounts import NO_ACCOUNTS, account_of, awards_message, from_message, message
from scoring.errors import EventError
from scoring.events import format_ts, parse_event
from scoring.offline import replay
from scoring.rules import parse_rules

RULES_TEXT = """
name: accounts-test
half_life: 1d
hot: {threshold: 70, rearm_below: 50}
fit:
  - {id: vp, if: {job_title: VP}, points: 5}
engagement:
  - {id: pricing, event: page_view, if: {url: {matches: "^/pricing"}}, points: 40}
  - {id: webinar, event: webinar_attended, points: 10, limit: {points: 10, per: 7d}}
accounts:
  key: company_id
  lead_weight: 1.0
  hot: {threshold: 80, rearm_below: 60}
  fit:
    - {id: enterprise, if: {employees: {gte: 1000}}, points: 10}
  engagement:
    - {id: intent-surge, event: intent_surge, points: 20}
"""
RULES = parse_rules(RULES_TEXT.encode(), "accounts.yaml")
ACCOUNTS = RULES.accounts.rules if RULES.accounts else None


def lead(event_id: str, lead_id: str, type_: str, ts: int, **props: Any) -> bytes:
    return orjson.dumps({"event_id": event_id, "lead_id": lead_id, "type": type_, "ts": ts,
                         "properties": props})


def account(event_id: str, account_id: str, type_: str, ts: int, **props: Any) -> bytes:
    return orjson.dumps({"event_id": event_id, "account_id": account_id, "type": type_,
                         "ts": ts, "properties": props})


# The worked example: three leads of acme, an intent event, acme hot at day 2 while no
# lead is, a late award, a lead moving to beta, acme cooling by decay.
WORKED = [
    lead("p1", "a1", "profile_update", T0, company_id="acme"),
    lead("p2", "a2", "profile_update", T0, company_id="acme", job_title="VP"),
    lead("p3", "a3", "profile_update", T0, company_id="acme"),
    account("u1", "acme", "account_update", T0, employees=2000),
    lead("e1", "a1", "page_view", T0 + DAY, url="/pricing"),  # acme 40 @1d
    account("i1", "acme", "intent_surge", T0 + DAY),  # acme 60 @1d: S = 70
    lead("e2", "a2", "page_view", T0 + 2 * DAY, url="/pricing"),  # 30 + 40 = 70: S = 80, hot
    lead("e3", "a3", "page_view", T0 + DAY, url="/pricing"),  # late: 40 * 2^-1 = 20 @2d
    lead("p4", "a1", "profile_update", T0 + 2 * DAY, company_id="beta"),
    lead("e4", "a1", "page_view", T0 + 3 * DAY, url="/pricing"),  # to beta, not acme
]


def test_the_worked_example_turns_acme_hot_with_no_hot_lead_then_cools_on_time() -> None:
    at = T0 + 5 * DAY
    result = replay(WORKED, RULES, at=at)
    assert result.bad_lines == []
    assert not any(state.hot for state in result.states.values())
    assert result.notifications == []  # no lead turned hot: a1 peaks at 40/4 + 40 = 50
    acme, beta = result.accounts["acme"], result.accounts["beta"]
    assert ACCOUNTS is not None
    # acme as of T = day 2: a1 40/2, intent 20/2, a2 40, a3's late 40/2; fit 10.
    assert acme.t_ref == T0 + 2 * DAY and acme.fit == 10.0
    assert acme.engagement == pytest.approx(90.0, abs=1e-9)
    assert acme.members == pytest.approx({"a1": 20.0, "a2": 40.0, "a3": 20.0}, abs=1e-9)
    assert beta.engagement == 40.0 and beta.members == {"a1": 40.0}
    hot, cooled = result.account_notifications
    assert hot == {
        "type": "account.hot", "notification_id": "acme:1", "account_id": "acme",
        "score": 80.0, "fit": 10.0, "engagement": 70.0, "threshold": 80, "cause": "event",
        "event_ts": format_ts(T0 + 2 * DAY), "emitted_at": format_ts(T0 + 2 * DAY),
        "rules_version": RULES.version,
        "leads": [{"lead_id": "a2", "points": 40.0}, {"lead_id": "a1", "points": 20.0}],
        "reasons": [{"rule": "pricing", "points": 60.0}, {"rule": "enterprise", "points": 10.0},
                    {"rule": "intent-surge", "points": 10.0}]}
    # S(t) = 10 + 90 * 2^-((t - T)/H) = 60  <=>  t = T + H log2(90 / 50)
    crossing = T0 + 2 * DAY + DAY * math.log2(90 / 50)
    f = 50 / 90
    assert cooled == {
        "type": "account.cooled", "notification_id": "acme:2", "account_id": "acme",
        "score": 60.0, "fit": 10.0, "engagement": 50.0, "threshold": 80, "cause": "decay",
        "event_ts": format_ts(round(crossing)), "emitted_at": format_ts(round(crossing)),
        "rules_version": RULES.version,
        "leads": [{"lead_id": "a2", "points": round(40 * f, 2)},
                  {"lead_id": "a1", "points": round(20 * f, 2)},
                  {"lead_id": "a3", "points": round(20 * f, 2)}],
        "reasons": [{"rule": "pricing", "points": round(80 * f, 2)},
                    {"rule": "enterprise", "points": 10.0},
                    {"rule": "intent-surge", "points": round(10 * f, 2)}]}


def test_score_accounts_prints_one_line_per_account(tmp_path: Any) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(WORKED) + b"\n")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES_TEXT)
    at = T0 + 2 * DAY
    out = subprocess.run([sys.executable, "-m", "streams.cli", "score", "--rules", str(rules),
                          "--accounts", "--at", str(at), str(events)],
                         capture_output=True, check=True, text=True).stdout
    assert [orjson.loads(line) for line in out.splitlines()] == [
        {"account_id": "acme", "score": 100.0, "fit": 10.0, "engagement": 90.0, "hot": True}]
    # (beta's first award, a1's at day 3, comes after --at)


def test_an_account_event_needs_exactly_one_id_and_an_accounts_section() -> None:
    both = b'{"event_id": "x", "lead_id": "l", "account_id": "a", "type": "t", "ts": 0}'
    with pytest.raises(EventError) as caught:
        parse_event(both)
    assert caught.value.reason == ("event has both lead_id and account_id; an event is about "
                                   "a lead or about an account (SPEC 11), not both")
    with pytest.raises(EventError) as caught:
        parse_event(b'{"event_id": "x", "type": "t", "ts": 0}')
    assert caught.value.reason == "missing field lead_id"
    for kind in ("profile_update", "member_award"):
        with pytest.raises(EventError, match="reserved"):
            parse_event(account("x", "acme", kind, 0))
    with pytest.raises(EventError, match="send it with account_id"):
        parse_event(lead("x", "l", "account_update", 0))
    plain = parse_rules((GOOD_HEADER + "engagement: [{id: v, event: page_view, points: 1}]\n")
                        .encode())
    result = replay([account("i1", "acme", "intent_surge", T0),
                     lead("e1", "a1", "page_view", T0, company_id="acme")], plain)
    assert result.bad_lines == [(1, NO_ACCOUNTS)]
    assert list(result.states) == ["a1"] and result.accounts == {}


def test_a_file_without_accounts_scores_as_before() -> None:
    plain = parse_rules(RULES_TEXT.split("accounts:")[0].encode(), "plain.yaml")
    leads_only = [line for line in WORKED if b'"account_id"' not in line]
    with_accounts, without = replay(leads_only, RULES), replay(leads_only, plain)
    def lead_part(state: Any) -> dict[str, Any]:  # (its award numbers are the accounts')
        shown = state.to_dict()
        shown.pop("awarded", None)
        return shown  # type: ignore[no-any-return]

    assert {k: lead_part(s) for k, s in with_accounts.states.items()} == \
        {k: s.to_dict() for k, s in without.states.items()}
    assert with_accounts.states["a1"].awarded == {"acme": 1, "beta": 1}
    assert without.accounts == {} and without.account_notifications == []


def test_the_accounts_section_is_validated_with_locations() -> None:
    text = GOOD_HEADER + """
engagement: [{id: pricing, event: page_view, points: 1}]
accounts:
  lead_wieght: 2
  lead_weight: -1
  hot: {threshold: 50, rearm_below: 70}
  fit:
    - {id: big, if: {employees: {matches: "("}}, points: 5, group: g}
  engagement:
    - {id: pricing, event: intent, points: 1}
    - {id: surge, event: intent, points: 1, limit: {points: 5, per: 7x}}
"""
    assert sorted(refused(text)) == sorted([
        'accounts.lead_wieght: unknown key (did you mean "lead_weight"?)',
        'accounts.engagement[0].id: duplicate rule id "pricing" (first used at '
        "engagement[0].id); ids must be unique",
        'accounts.engagement[1].limit.per: "7x" is not a duration (use 30s, 15m, 12h, 7d or '
        "2w)",
        'accounts.fit[0].if.employees.matches: "(" is not a valid regular expression '
        '(missing ) at "(")',
        "accounts.hot.rearm_below: 70 is above accounts.hot.threshold (50); a hot account "
        "must fall below the threshold to re-arm",
        "accounts.lead_weight: -1 is negative; it is the share of each member award the "
        "account receives (1.0: all of it, 0: none)",
        "accounts.fit[0].group: an account has no score groups (drop group:)"])


def test_a_lead_names_its_account_by_string_or_whole_number() -> None:
    assert account_of({"account_id": "acme"}, "account_id") == "acme"
    assert account_of({"account_id": 42}, "account_id") == "42"
    for bad in ("", "x" * 201, True, 4.5, None, ["acme"]):
        assert account_of({"account_id": bad}, "account_id") is None


def test_internal_messages_round_trip_and_refuse_foreign_ones() -> None:
    result = replay(WORKED[:5], RULES)
    assert result.accounts["acme"].members == {"a1": 40.0}
    from scoring.events import Event

    award = Event("2:a1:e1", "acme", "member_award", T0, {"lead": "a1", "n": 1,
                                                          "awards": [["pricing", 40.0]]}, True)
    other = Event("2:a2:e7", "initech", "member_award", T0 + 1, {"lead": "a2", "n": 4,
                                                                "awards": [["demo", 5]]}, True)
    grouped = awards_message([award, other], "v1", 2)
    assert orjson.loads(grouped)["p"] == 2 and orjson.loads(grouped)["o"] == "a1"
    assert from_message(grouped) == ("v1", [(award, None), (other, None)])
    intent = Event("i1", "acme", "intent_surge", T0, {}, True)
    assert from_message(message(intent, "v1", (3, 41))) == ("v1", [(intent, (3, 41))])
    for foreign in (b'{"event_id": "x"}', message(award, "v1"),  # (a lone award: not ours)
                    b'{"g": "v1", "type": "member_awards", "awards": [["x", "a", 0, {}]]}'):
        with pytest.raises(EventError):
            from_message(foreign)


def test_a_resent_award_counts_once_however_late_and_early_ones_fold_in() -> None:
    from scoring.engine import LeadState, apply
    from scoring.events import Event

    assert ACCOUNTS is not None
    state = LeadState("acme")

    def award(n: int, ts: int) -> Event:
        return Event(f"2:a{n}:e", "acme", "member_award", ts,
                     {"lead": "a1", "n": n, "awards": [["pricing", 10.0]]}, True)

    assert not apply(state, award(2, T0), ACCOUNTS).duplicate  # (1 is still on its way)
    assert state.awards_seen == {"a1": [0, 2]}
    assert not apply(state, award(1, T0), ACCOUNTS).duplicate
    assert state.awards_seen == {"a1": [2]} and state.engagement == 20.0
    # A re-send a year of event time later is still recognised; the dedupe window is 7d.
    assert apply(state, award(2, T0 + 365 * DAY), ACCOUNTS).duplicate
    assert state.engagement == 20.0 and state.seen == {}


# ------------------------------------------------------------------ the closed form


MEMBERS = ["m1", "m2", "m3", "m4"]
event_st = st.tuples(st.sampled_from(["page_view", "webinar_attended", "intent_surge",
                                      "email_open"]),
                     st.sampled_from([*MEMBERS, "acct"]),
                     st.integers(min_value=0, max_value=20 * DAY))

CLOSED = """
name: closed
half_life: 3d
hot: {threshold: 100, rearm_below: 90}
engagement:
  - {id: pricing, event: page_view, points: 7}
  - {id: webinar, event: webinar_attended, points: -3}
accounts:
  lead_weight: 0.5
  hot: {threshold: 30, rearm_below: 20}
  engagement:
    - {id: surge, event: intent_surge, points: 11}
"""
CLOSED_RULES = parse_rules(CLOSED.encode())


def _closed_lines(draws: list[tuple[str, str, int]]) -> list[bytes]:
    lines = [lead(f"p-{m}", m, "profile_update", 0, account_id="acct") for m in MEMBERS]
    for i, (kind, who, ts) in enumerate(draws):
        if who == "acct":
            if kind == "intent_surge":
                lines.append(account(f"e{i}", "acct", kind, ts))
        elif kind != "intent_surge":
            lines.append(lead(f"e{i}", who, kind, ts))
    return lines


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event_st, min_size=1, max_size=25), st.randoms(use_true_random=False))
def test_account_engagement_is_the_weighted_closed_form_in_any_order(
        draws: list[tuple[str, str, int]], shuffle: random.Random) -> None:
    lines = _closed_lines(draws)
    result = replay(lines, CLOSED_RULES)
    state = result.accounts.get("acct")
    points = {"page_view": 7 * 0.5, "webinar_attended": -3 * 0.5, "intent_surge": 11}
    counted = [(kind, ts) for kind, who, ts in draws
               if (who == "acct") == (kind == "intent_surge") and kind in points]
    if not counted:
        assert state is None or state.engagement == 0.0
        return
    assert state is not None and state.t_ref == max(ts for _, ts in counted)
    expected = math.fsum(points[kind] * 2.0 ** (-(state.t_ref - ts) / (3 * DAY))
                         for kind, ts in counted)
    assert state.engagement == pytest.approx(expected, rel=1e-9, abs=1e-9)
    members = {}
    for kind, who, ts in draws:
        if who != "acct" and kind in ("page_view", "webinar_attended"):
            members[who] = members.get(who, 0.0) + points[kind] * 2.0 ** (
                -(state.t_ref - ts) / (3 * DAY))
    assert state.members == pytest.approx(members, rel=1e-9, abs=1e-9)
    # Without limit or after, the order of the events does not matter.
    head, tail = lines[:len(MEMBERS)], lines[len(MEMBERS):]
    shuffle.shuffle(tail)
    again = replay(head + tail, CLOSED_RULES).accounts["acct"]
    assert again.engagement == pytest.approx(state.engagement, rel=1e-9, abs=1e-9)
    assert again.members == pytest.approx(state.members, rel=1e-9, abs=1e-9)
    assert again.contributions == pytest.approx(state.contributions, rel=1e-9, abs=1e-9)


async def test_erasing_a_lead_removes_it_from_its_accounts_and_its_unsent_awards(
        redis_url: str) -> None:
    """SPEC 11 erasure: the lead leaves every account's member list (and its award
    numbers); the account's numbers keep its points; its member awards not yet sent
    leave the outbox, the other leads' awards that travelled with them stay."""
    from redis.asyncio import Redis

    from scoring.events import event_from_dict
    from scoring.store import RedisStore
    from streams.erasure import forget

    assert RULES.accounts is not None
    events = [event_from_dict(orjson.loads(line)) for line in WORKED[:3] + WORKED[4:8]
              if b'"lead_id"' in line]
    prefix = fresh("erase-accounts")
    async with Redis.from_url(redis_url) as redis:
        leads = RedisStore(redis, RULES, prefix=prefix, shards=1)
        accounts = RedisStore(redis, RULES.accounts.rules, prefix=prefix, shards=1,
                              generation=RULES.version, part="accounts")
        outcome = await leads.apply(events, now_ms=T0)
        assert [len(orjson.loads(m)["awards"]) for m in outcome.award_entries] == [3]
        awards = [a for _, a in outcome.forwards]
        await accounts.apply(awards, now_ms=T0)
        before = (await accounts.load("acme"))
        assert before is not None and set(before[0].members) == {"a1", "a2", "a3"}
        told: list[str] = []

        async def tombstone(lead_id: str) -> None:
            told.append(lead_id)

        assert await forget(leads, tombstone, accounts, "a2")
        after = await accounts.load("acme")
        assert after is not None
        assert set(after[0].members) == {"a1", "a3"} and "a2" not in after[0].awards_seen
        assert after[0].engagement == before[0].engagement  # (its points stay, unnamed)
        pending = [orjson.loads(m) for m in await leads.pending()]
        assert [[a[3]["lead"] for a in m["awards"]] for m in pending] == [["a1", "a3"]]
        assert told == ["a2"]
