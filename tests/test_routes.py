"""The HTTP endpoints one by one, called as functions (no server): what each answers
before it needs Redis. The API over real servers is tests/test_web.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import make_mocked_request
from pydantic import SecretStr

from scoring.rules import load_rules
from streams import web
from streams.feed import Feed
from streams.settings import Settings

RULES = load_rules(Path(__file__).resolve().parent.parent / "config" / "rules.yaml")


class Unreachable:
    """A Redis client (and store) whose every call fails, as with Redis down."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("Redis is down")
        return fail


def api(**settings: Any) -> web.Api:
    redis: Any = Unreachable()

    async def forget(lead_id: str) -> bool:
        raise AssertionError("an endpoint erased before checking the request")

    return web.Api(Settings(**settings), RULES, redis, redis, lambda: ["no partitions yet"],
                   forget, Feed(redis, "ls:notifications"))


def answer(response: Any) -> tuple[int, Any]:
    return response.status, orjson.loads(response.body)


async def test_healthz_and_readyz_say_what_is_wrong() -> None:
    assert answer(await web.healthz(api(), make_mocked_request("GET", "/healthz"))) == (
        200, {"status": "ok"})
    assert answer(await web.readyz(api(), make_mocked_request("GET", "/readyz"))) == (
        503, {"ready": False, "problems": ["redis: ConnectionError", "no partitions yet"]})


async def test_bad_queries_and_paths_are_refused_before_redis_is_asked() -> None:
    served = api()
    assert answer(await web.leads(served, make_mocked_request("GET", "/leads?limit=0"))) == (
        400, {"error": "limit must be a whole number from 1 to 1000, got '0'"})
    assert answer(await web.lead_path(served, make_mocked_request("GET", "/leads/a/b"))) == (
        404, {"error": "no such endpoint: GET /leads/a/b (a lead id is one path segment, "
                       "percent-encoded: / as %2F)"})
    assert answer(await web.lead_path(served, make_mocked_request("GET", "/leads/%FF"))) == (
        400, {"error": "a lead id in the path must be UTF-8, percent-encoded"})


async def test_erasing_needs_the_admin_token() -> None:
    request = make_mocked_request("DELETE", "/leads/a")
    assert answer(await web.lead_path(api(), request)) == (
        403, {"error": "erasing leads is disabled: set LEADSCORE_ADMIN_TOKEN"})
    response = await web.lead_path(api(admin_token=SecretStr("s3cret")), request)
    assert answer(response) == (401, {"error": "an admin bearer token is needed"})
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="leadscore"'


async def test_bands_and_the_query_form_of_a_lead_refuse_bad_queries_before_redis() -> None:
    served = api()
    assert answer(await web.bands(served, make_mocked_request("GET", "/bands?stage=lost"))) == (
        400, {"error": "stage must be one of prospect, mql, sql, customer, got 'lost'"})
    assert answer(await web.bands(served, make_mocked_request("GET", "/bands?stage=SQL"))) == (
        400, {"error": "stage must be one of prospect, mql, sql, customer, got 'SQL'"})
    once = {"error": "give the lead id once, percent-encoded: ?id=<lead_id>"}
    for path in ("/lead", "/lead?id=", "/lead?id=a&id=b", "/lead?ids=a", "/lead/history",
                 "/lead/history?id=a&id=a"):
        assert answer(await web.lead_query(served, make_mocked_request("GET", path))) == (
            400, once), path
    for path in ("/lead?id=%FF", "/lead/history?id=a%E9"):
        assert answer(await web.lead_query(served, make_mocked_request("GET", path))) == (
            400, {"error": "the query must be UTF-8, percent-encoded"}), path
    too_long = "/lead?id=" + "%C3%A9" * 201
    assert answer(await web.lead_query(served, make_mocked_request("GET", too_long))) == (
        400, {"error": "lead_id is 201 characters, more than 200"})


async def test_bands_and_the_query_form_of_a_lead_need_the_token() -> None:
    guarded = api(api_token=SecretStr("read-token"))
    for handler, path in [(web.bands, "/bands"), (web.lead_query, "/lead?id=a"),
                          (web.lead_query, "/lead/history?id=a")]:
        response = await handler(guarded, make_mocked_request("GET", path))
        assert answer(response) == (401, {"error": "a bearer token is needed "
                                                   "(LEADSCORE_API_TOKEN)"}), path
