"""Redis over TLS (``rediss://``): a worker and the command line against a real
TLS-only Redis (Debian's redis-server; the embedded valkey is built without TLS)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
from worker import LEADSCORE, Deployment, keyed, wait_for

from streams.embedded import free_port
from streams.runtime import now_ms

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server that speaks only TLS, with a self-signed certificate; yields the
    ``rediss://`` URL that trusts it."""
    if not Path(REDIS_SERVER).exists():
        pytest.fail("no redis-server: `make test` installs Debian's redis-server package "
                    "(apt-get install redis-server)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    port = free_port()
    server = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url).ping())
        except redis.ConnectionError:
            return False
    try:
        for _ in range(100):
            if answers():
                break
            time.sleep(0.1)  # polling interval while the server starts
        else:
            raise AssertionError("the TLS redis-server did not answer in 10 s")
        yield url
    finally:
        server.kill()
        server.wait()


async def test_a_worker_and_the_cli_work_over_tls(bootstrap: str, tls_redis: str,
                                                 tmp_path: Path) -> None:
    deployment = Deployment(bootstrap, tls_redis, ROOT / "config" / "rules.yaml", tmp_path)
    await deployment.create_topics()
    worker = deployment.worker().start()
    try:
        await worker.wait_ready()  # /readyz pings Redis: over TLS
        now = now_ms()
        await deployment.produce(keyed([
            {"event_id": f"t{i}", "lead_id": "tls-lead", "type": kind, "ts": now + i}
            for i, kind in enumerate(["consultation_requested", "add_to_cart"])]))
        await wait_for(lambda: worker.metric("leadscore_events_applied_total") == 2, 60,
                       f"events not applied; log:\n{worker.log_tail()}")
        status, body = worker.get("/leads/tls-lead")
        assert (status, orjson.loads(body)["score"]) == (200, 90.0)
        shown = subprocess.run([LEADSCORE, "lead", "tls-lead"], env=worker.env,
                               capture_output=True, check=False)
        assert shown.returncode == 0, shown.stderr
        assert orjson.loads(shown.stdout)["hot"] is True
    finally:
        deployment.stop_all()
    # Plain TCP to the TLS port is refused: the data never crossed in clear.
    plain = tls_redis.replace("rediss://", "redis://").split("?")[0]
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(plain, socket_timeout=2).ping()
