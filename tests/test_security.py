"""Credentials, API tokens, rate limits and erasing a lead (GDPR), on a real worker
whose Redis needs an ACL user and a password."""

from __future__ import annotations

import http.client
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis
from worker import LEADSCORE, Deployment, Worker, keyed, wait_for

from streams.embedded import EmbeddedRedis, free_port
from streams.runtime import now_ms

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
RULES_PATH = ROOT / "config" / "rules.yaml"
REDIS_PASSWORD = "redis-pw-7f3a9c"
READ_TOKEN = "read-token-5b21e0"
ADMIN_TOKEN = "admin-token-c94d17"
SECRETS = (REDIS_PASSWORD, READ_TOKEN, ADMIN_TOKEN)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis that admits only the ACL user ``leadscore`` with a password."""
    redis = EmbeddedRedis(port=free_port(), data_dir=tmp_path / "redis", extra_args=[
        "--user", "default", "off",
        "--user", "leadscore", "on", f">{REDIS_PASSWORD}", "~*", "&*", "+@all"])
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
async def guarded(bootstrap: str, redis_url: str, tmp_path: Path) -> AsyncIterator[Worker]:
    """A ready worker whose API needs the read token, and erasing the admin token."""
    deployment = Deployment(bootstrap, redis_url, RULES_PATH, tmp_path,
                            api_token=READ_TOKEN, admin_token=ADMIN_TOKEN)
    await deployment.create_topics()
    worker = deployment.worker().start()
    await worker.wait_ready()
    yield worker
    deployment.stop_all()


def call(worker: Worker, path: str, method: str = "GET", token: str | None = None
         ) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{worker.port}{path}", method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_tokens_erasure_and_no_credential_anywhere(
        bootstrap: str, acl_redis: EmbeddedRedis, tmp_path: Path) -> None:
    redis_url = acl_redis.url.replace("redis://", f"redis://leadscore:{REDIS_PASSWORD}@")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "leadscore_admin_token").write_text(ADMIN_TOKEN)  # a mounted secret file
    deployment = Deployment(bootstrap, redis_url, RULES_PATH, tmp_path,
                            api_token=READ_TOKEN, secrets_dir=str(secrets),
                            api_rate_limit="20")
    await deployment.create_topics()
    worker = deployment.worker().start()
    responses: list[bytes] = []
    try:
        await worker.wait_ready()
        now = now_ms()
        await deployment.produce(keyed([
            {"event_id": f"{lead}-{i}", "lead_id": lead, "type": kind, "ts": now + i}
            for lead in ("ann", "ben")
            for i, kind in enumerate(["consultation_requested", "add_to_cart"])]))
        await wait_for(lambda: worker.metric("leadscore_events_applied_total") == 4, 60,
                       f"events not applied; log:\n{worker.log_tail()}")

        # Reading needs the read (or the admin) token; erasing needs the admin token.
        assert call(worker, "/leads/ann")[0] == 401
        assert call(worker, "/leads/ann", token="wrong")[0] == 401
        for token in (READ_TOKEN, ADMIN_TOKEN):
            status, body = call(worker, "/leads/ann", token=token)
            assert (status, orjson.loads(body)["hot"]) == (200, True)
            responses.append(body)
        assert call(worker, f"/leads?hot=true&access_token={READ_TOKEN}")[0] == 200
        assert call(worker, "/leads/ann", "DELETE", token=READ_TOKEN)[0] == 401
        assert call(worker, "/healthz")[0] == 200  # probes stay open
        assert call(worker, "/")[0] == 200

        # DELETE erases every key of the lead and tombstones it downstream.
        assert call(worker, "/leads/ann", "DELETE", token=ADMIN_TOKEN) == (
            200, b'{"forgotten":"ann"}')
        assert call(worker, "/leads/ann", "DELETE", token=ADMIN_TOKEN)[0] == 404
        assert call(worker, "/leads/ann", token=READ_TOKEN)[0] == 404
        status, body = call(worker, "/leads?limit=10", token=READ_TOKEN)
        assert [lead["lead_id"] for lead in orjson.loads(body)["leads"]] == ["ben"]
        async with Redis.from_url(redis_url) as redis:
            keys = [key async for key in redis.scan_iter(f"{deployment.prefix}:*")]
            assert not [key for key in keys if key.endswith(b":ann")]
            for key in keys:
                kind = await redis.type(key)
                if kind == b"zset":
                    assert await redis.zscore(key, "ann") is None, key
        # `leadscore forget` does the same from the command line.
        forgot = subprocess.run([LEADSCORE, "forget", "ben"], env=worker.env,
                                capture_output=True, check=False)
        assert forgot.returncode == 0, forgot.stderr
        again = subprocess.run([LEADSCORE, "forget", "ben"], env=worker.env,
                               capture_output=True, check=False)
        assert (again.returncode, again.stderr) == (
            1, b"leadscore: no lead 'ben' in Redis (nothing to forget)\n")
        records = await deployment.read_all(
            deployment.hot, lambda rs: sum(r.value is None for r in rs) == 2)
        assert sorted(r.key for r in records if r.value is None) == [b"ann", b"ben"]

        # A client that floods the API is slowed down, with a JSON reason.
        statuses = [call(worker, "/leads?limit=1", token=READ_TOKEN) for _ in range(60)]
        limited = [body for status, body in statuses if status == 429]
        assert limited and orjson.loads(limited[0]) == {
            "error": "too many requests: slow down (LEADSCORE_API_RATE_LIMIT)"}

        # A wrong Redis password fails with a message that does not echo the URL.
        wrong = subprocess.run([LEADSCORE, "lead", "ann"], capture_output=True, check=False,
                               env={**worker.env, "LEADSCORE_REDIS_URL": redis_url.replace(
                                   REDIS_PASSWORD, REDIS_PASSWORD + "x")})
        assert wrong.returncode == 1
        assert wrong.stderr.startswith(b"leadscore: cannot use Redis (AuthenticationError")
        responses += [wrong.stdout, wrong.stderr, forgot.stdout, forgot.stderr,
                      call(worker, "/metrics")[1]]
    finally:
        worker.terminate()
    log = worker.log_path.read_text()
    assert "redis_url = **********" in log  # the start-up log shows settings, masked
    text = b"\n".join(responses).decode() + log
    for secret in SECRETS:
        assert secret not in text


def raw_call(worker: Worker, path: str, authorization: bytes, method: str = "GET"
             ) -> tuple[int, bytes]:
    """A request whose Authorization header is these very bytes (urllib would refuse
    anything but latin-1 text)."""
    connection = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=5)
    try:
        connection.putrequest(method, path)
        connection.putheader("Authorization", authorization)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


async def test_any_wrong_token_is_a_401(guarded: Worker) -> None:
    """Non-ASCII tokens were 500s: hmac.compare_digest refuses non-ASCII str."""
    read = {"error": "a bearer token is needed (LEADSCORE_API_TOKEN)"}
    admin = {"error": "an admin bearer token is needed"}
    for header in ("Bearer tökén".encode(), b"Bearer t\xf6k\xe9n",  # UTF-8, then latin-1
                   "Bearer токен".encode(), f"Bearer {READ_TOKEN}".encode() + b"\xff",
                   "Bearer 🔑".encode()):
        for path in ("/leads/ann", "/leads", "/leads/ann/history", "/stream"):
            status, body = raw_call(guarded, path, header)
            assert (status, orjson.loads(body)) == (401, read), (header, path)
        status, body = raw_call(guarded, "/leads/ann", header, "DELETE")
        assert (status, orjson.loads(body)) == (401, admin), header
    for token in ("%C3%BC", "%FF", "%ED%A0%80", "read-token-5b21e%C3%B0"):
        status, body = call(guarded, f"/leads?access_token={token}")
        assert (status, orjson.loads(body)) == (401, read), token
    # The right tokens still work.
    assert call(guarded, "/leads", token=READ_TOKEN)[0] == 200
    assert call(guarded, "/leads/ann", "DELETE", token=ADMIN_TOKEN)[0] == 404


async def test_faust_own_views_are_not_served(guarded: Worker) -> None:
    """Faust's /router/ and /table/ (cluster layout, table contents) answered anyone."""
    for path in ("/router/", "/router/topics", "/table/", "/assignment/", "/graph/",
                 "/performance/"):
        for token in (None, READ_TOKEN, ADMIN_TOKEN):
            assert call(guarded, path, token=token)[0] == 404, (path, token)
    assert call(guarded, "/")[0] == 200  # our dashboard, not Faust's index
    assert b"<html" in call(guarded, "/")[1].lower()
