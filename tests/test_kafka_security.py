"""Kafka security: a real ``leadscore worker`` (and ``leadscore produce``) over SASL_SSL with
SCRAM-SHA-512, SASL_PLAINTEXT with PLAIN, and SSL with a client certificate (mTLS).

The listeners are those of tests/kafka_secure.py (TLS and Kafka's SASL exchange in front of
the embedded broker; its docstring says why not Apache Kafka itself). Each test checks the
whole path: events in, the score in Redis through the API, the ``lead.hot`` notification
read back over the same secure listener, and the password in no log line.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from kafka_secure import Listener, ScramCredential, ScramServer, SecureKafka, secure_kafka
from worker import LEADSCORE, Deployment, keyed, wait_for

from streams.runtime import now_ms
from streams.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
RULES_PATH = ROOT / "config" / "rules.yaml"
USER, PASSWORD = "leadscore", "kafka-pw-3e8d1b77"
WRONG_PASSWORD = "wrong-pw-9a4c02f1"


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    listeners = [Listener("sasl_ssl", "SASL_SSL"), Listener("sasl_plaintext", "SASL_PLAINTEXT"),
                 Listener("mtls", "SSL", mtls=True)]
    with secure_kafka(tmp_path_factory.mktemp("kafka-secure"), listeners,
                      {USER: PASSWORD}) as kafka:
        yield kafka


def test_the_broker_side_scram_matches_rfc_7677() -> None:
    """The SCRAM-SHA-256 example exchange of RFC 7677, section 3, byte for byte."""
    credential = ScramCredential.create("SCRAM-SHA-256", "pencil",
                                        base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    server = ScramServer("SCRAM-SHA-256", {"user": credential},
                         server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    assert server.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO") == (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,"
        b"i=4096")
    assert server.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                       b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=") == (
        b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


CASES = {
    "SASL_SSL+SCRAM-SHA-512": ("sasl_ssl", "SCRAM-SHA-512"),
    "SASL_PLAINTEXT+PLAIN": ("sasl_plaintext", "PLAIN"),
    "SSL+client-certificate": ("mtls", None),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_worker_scores_and_notifies_over_a_secure_listener(
        case: str, kafka: SecureKafka, redis_url: str, tmp_path: Path) -> None:
    name, mechanism = CASES[case]
    listener = kafka.listeners[name]
    settings = kafka.settings(name, mechanism=mechanism, user=USER if mechanism else None)
    deployment = Deployment(listener.bootstrap, redis_url, RULES_PATH, tmp_path, 4, **settings)
    failures = len(kafka.failures)
    await deployment.create_topics()
    lead = f"secure-{name}"
    worker = deployment.worker().start()
    try:
        await worker.wait_ready()  # ready = partitions assigned: the group works over it
        now = now_ms()
        events = [{"event_id": f"{lead}-{i}", "lead_id": lead, "type": kind, "ts": now + i}
                  for i, kind in enumerate(["consultation_requested", "add_to_cart"])]
        if name == "sasl_ssl":  # the command line over SASL_SSL, with the workers' settings
            path = tmp_path / "events.jsonl"
            path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
            sent = subprocess.run([LEADSCORE, "produce", str(path)], env=worker.env,
                                  capture_output=True, check=False, timeout=60)
            assert sent.returncode == 0, sent.stderr.decode(errors="replace")
            assert PASSWORD.encode() not in sent.stdout + sent.stderr
        else:
            await deployment.produce(keyed(events))
        await wait_for(lambda: worker.metric("leadscore_events_applied_total") == 2, 60,
                       f"events not applied over {case}; log:\n{worker.log_tail()}")
        status, body = worker.get(f"/leads/{lead}")
        assert status == 200, body
        assert (orjson.loads(body)["score"], orjson.loads(body)["hot"]) == (90.0, True)

        records = await deployment.read_all(deployment.hot, lambda rs: len(rs) >= 1, 60)
        note = orjson.loads(records[0].value)
        assert (records[0].key, len(records)) == (lead.encode(), 1)
        assert {k: note[k] for k in ("type", "lead_id", "notification_id", "score",
                                     "event_id")} == {
            "type": "lead.hot", "lead_id": lead, "notification_id": f"{lead}:1",
            "score": 90.0, "event_id": f"{lead}-1"}
    finally:
        deployment.stop_all()
    log = worker.log_path.read_text(errors="replace")
    assert PASSWORD not in log, f"the Kafka password is in the worker log {worker.log_path}"
    if mechanism:  # Faust's clients and the worker's own all went through SASL
        assert f"Authenticated as {USER} via {mechanism}" in log
    assert kafka.failures[failures:] == []  # every client authenticated at the first try


async def _refused(bootstrap: str, **options: object) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000,
                                **options)
    try:
        with pytest.raises(KafkaConnectionError):
            await producer.start()
    finally:
        await producer.stop()


async def test_the_listeners_refuse_clients_without_the_credential(kafka: SecureKafka) -> None:
    """What the tests above pass through is enforced: without TLS, SASL or a client
    certificate, no client gets as far as metadata."""
    sasl_ssl, sasl_plaintext, mtls = (kafka.listeners[name].bootstrap
                                      for name in ("sasl_ssl", "sasl_plaintext", "mtls"))
    tls_only = Settings(kafka_security_protocol="SSL",  # trusts the CA; no client certificate
                        kafka_ssl_cafile=kafka.ca).kafka_options()
    before = len(kafka.failures)
    await _refused(sasl_ssl)  # plaintext to a TLS listener
    await _refused(sasl_ssl, **tls_only)  # TLS, but no SASL
    await _refused(sasl_plaintext)  # no SASL
    await _refused(mtls, **tls_only)  # TLS, but no client certificate
    refusals = kafka.failures[before:]
    del kafka.failures[before:]
    # The two SASL listeners saw a request other than ApiVersions before authentication.
    assert [f.split(" v")[0] for f in refusals] == ["request 3"] * 2, refusals


@pytest.mark.parametrize("case", ["SASL_SSL+SCRAM-SHA-512", "SASL_PLAINTEXT+PLAIN"])
async def test_a_wrong_password_stops_the_worker_at_start_and_is_never_printed(
        case: str, kafka: SecureKafka, redis_url: str, tmp_path: Path) -> None:
    """The worker exits 1 within seconds (Faust's producer cannot bootstrap), naming the
    broker's reason; the command line says the same in one line. Neither prints the
    password."""
    name, mechanism = CASES[case]
    assert mechanism is not None
    settings = kafka.settings(name, mechanism=mechanism, user=USER, password=WRONG_PASSWORD)
    deployment = Deployment(kafka.listeners[name].bootstrap, redis_url, RULES_PATH, tmp_path,
                            4, **settings)
    failures = len(kafka.failures)
    worker = deployment.worker().start()
    try:
        await wait_for(lambda: worker.process is not None and worker.process.poll() is not None,
                       30, f"the worker kept running with a wrong password; log:\n"
                       f"{worker.log_tail()}")
    finally:
        deployment.stop_all()
    assert worker.process is not None and worker.process.returncode == 1, worker.log_tail()
    reason = ("Authentication failed during authentication due to invalid credentials with "
              "SASL mechanism SCRAM-SHA-512" if mechanism.startswith("SCRAM")
              else "Authentication failed: Invalid username or password")
    log = worker.log_path.read_text(errors="replace")
    assert f"[Error 58] SaslAuthenticationFailed: {reason}" in log, worker.log_tail()
    assert WRONG_PASSWORD not in log and PASSWORD not in log
    assert kafka.failures[failures:] == [reason]  # one attempt, refused by the broker

    events = tmp_path / "events.jsonl"
    events.write_bytes(b'{"event_id": "w", "lead_id": "w", "type": "page_view", "ts": 1}\n')
    sent = subprocess.run([LEADSCORE, "produce", str(events)], env=worker.env,
                          capture_output=True, check=False, timeout=60)
    stderr = sent.stderr.decode(errors="replace")
    assert sent.returncode == 1, stderr
    assert f"SaslAuthenticationFailed: {reason}" in stderr
    assert stderr.rstrip().endswith(
        "leadscore: cannot use Kafka (KafkaConnectionError: Unable to bootstrap from "
        f"[('127.0.0.1', {kafka.listeners[name].port}, <AddressFamily.AF_INET: 2>)]); check "
        "LEADSCORE_BROKER and the LEADSCORE_KAFKA_* settings"), stderr
    assert WRONG_PASSWORD not in stderr + sent.stdout.decode(errors="replace")
    del kafka.failures[failures:]
