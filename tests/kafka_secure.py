"""A Kafka broker whose listeners demand what production listeners demand: TLS (optionally
with a client certificate), SASL PLAIN and SASL SCRAM-SHA-256/512.

Why not Apache Kafka itself: its jars come from Maven Central (or an Apache download), and
this project's machines reach PyPI, Debian and npm only, where we found no package that
ships a Kafka broker. Tansu, the embedded broker, has ``--authentication`` and ``--cert``,
but its 0.6.0 build neither completed a TLS handshake nor let a SCRAM user be created
(``tansu user create`` is itself refused as unauthenticated). So each listener here is a
front that does what a Kafka listener does before it serves a client:

* the TLS handshake, with a certificate of this module's CA (``make_pki``); with ``mtls``
  a client certificate signed by the CA is required;
* on SASL listeners, Kafka's SASL exchange as Apache Kafka answers it: ``ApiVersions`` is
  served before authentication, then ``SaslHandshake`` v0/v1 (the enabled mechanisms) and
  ``SaslAuthenticate`` v0/v1 with PLAIN (RFC 4616) or SCRAM (RFC 5802/7677; the server side
  keeps only salt, StoredKey and ServerKey, as Kafka does). A failure is answered with error
  58, SASL_AUTHENTICATION_FAILED, and Kafka's own message, then the connection is closed;
  any other request before authentication closes it too;

then splices the connection byte for byte to a Tansu broker of its own, which advertises the
front's address: every client connection (metadata, produce, fetch, the group coordinator)
goes through the front. The clients (aiokafka under the worker, Faust, the command line, the
tests) run their real TLS and SASL code against it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import ssl
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from streams.embedded import HOST, EmbeddedBroker, free_port

SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18
SASL_AUTHENTICATION_FAILED, UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE = 58, 33, 34
SCRAM_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_ITERATIONS = 4096  # Kafka's minimum for SCRAM credentials


# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, PEM."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout",
            "ca.key", "-out", "ca.pem", "-subj", "/CN=leadscore-test-ca")
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                             "extendedKeyUsage=serverAuth\n"),
                            ("client", "extendedKeyUsage=clientAuth\n")):
        (directory / f"{name}.ext").write_text(extension)
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN=leadscore-test-{name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem")
    return Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key",
               directory / "client.pem", directory / "client.key")


# --- SASL, server side --------------------------------------------------------------------


@dataclass(frozen=True)
class ScramCredential:
    """What a Kafka broker keeps of a SCRAM password: never the password itself."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def create(cls, mechanism: str, password: str, salt: bytes | None = None
               ) -> ScramCredential:
        digest = SCRAM_HASHES[mechanism]
        salt = salt if salt is not None else secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac(digest().name, password.encode(), salt, SCRAM_ITERATIONS)
        client_key = hmac.digest(salted, b"Client Key", digest)
        return cls(salt, SCRAM_ITERATIONS, digest(client_key).digest(),
                   hmac.digest(salted, b"Server Key", digest))


class AuthenticationFailed(Exception):
    """Answered with SASL_AUTHENTICATION_FAILED and this message, as Kafka does."""


class PlainServer:
    def __init__(self, passwords: dict[str, str]) -> None:
        self.passwords = passwords
        self.done = False

    def step(self, message: bytes) -> bytes:
        try:
            _authzid, user, password = message.decode().split("\0")
        except ValueError:
            raise AuthenticationFailed("Authentication failed: Invalid SASL/PLAIN response: "
                                       "expected 3 tokens") from None
        expected = self.passwords.get(user)
        if expected is None or not hmac.compare_digest(expected.encode(), password.encode()):
            raise AuthenticationFailed("Authentication failed: Invalid username or password")
        self.done = True
        return b""


class ScramServer:
    def __init__(self, mechanism: str, credentials: dict[str, ScramCredential],
                 server_nonce: str | None = None) -> None:
        self.mechanism, self.credentials = mechanism, credentials
        self.server_nonce = server_nonce or secrets.token_urlsafe(18)
        self.digest = SCRAM_HASHES[mechanism]
        self.credential: ScramCredential | None = None
        self.auth_message, self.nonce = "", ""
        self.done = False

    def failed(self) -> AuthenticationFailed:
        return AuthenticationFailed("Authentication failed during authentication due to "
                                    f"invalid credentials with SASL mechanism {self.mechanism}")

    def step(self, message: bytes) -> bytes:
        text = message.decode()
        if self.credential is None:  # client-first: "n,,n=user,r=nonce"
            gs2, _, bare = text.partition(",,")
            if gs2 != "n":
                raise AuthenticationFailed("Authentication failed: channel binding unsupported")
            fields = dict(part.split("=", 1) for part in bare.split(","))
            user = fields["n"].replace("=2C", ",").replace("=3D", "=")
            credential = self.credentials.get(user)
            if credential is None:
                raise self.failed()
            self.credential = credential
            self.nonce = fields["r"] + self.server_nonce
            server_first = (f"r={self.nonce},s={base64.b64encode(credential.salt).decode()},"
                            f"i={credential.iterations}")
            self.auth_message = f"{bare},{server_first}"
            return server_first.encode()
        # client-final: "c=biws,r=nonce,p=proof"
        without_proof, _, proof = text.rpartition(",p=")
        fields = dict(part.split("=", 1) for part in without_proof.split(","))
        if fields.get("c") != "biws" or fields.get("r") != self.nonce:
            raise self.failed()
        auth_message = f"{self.auth_message},{without_proof}".encode()
        credential = self.credential
        signature = hmac.digest(credential.stored_key, auth_message, self.digest)
        client_key = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature,
                                                 strict=True))
        if not hmac.compare_digest(self.digest(client_key).digest(), credential.stored_key):
            raise self.failed()
        self.done = True
        server_signature = hmac.digest(credential.server_key, auth_message, self.digest)
        return b"v=" + base64.b64encode(server_signature)


# --- the Kafka wire, as little of it as the SASL exchange needs ---------------------------


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def request_body(request: bytes) -> tuple[int, int, int, bytes]:
    """(api_key, api_version, correlation_id, body) of a request with a v1 header."""
    api_key, version, correlation_id, client_id_size = struct.unpack(">hhih", request[:10])
    return api_key, version, correlation_id, request[10 + max(client_id_size, 0):]


# --- listeners ----------------------------------------------------------------------------


@dataclass
class Listener:
    name: str
    protocol: str  # Kafka's security.protocol of this listener
    mtls: bool = False
    port: int = field(default_factory=free_port)
    broker: EmbeddedBroker | None = None
    ssl_context: ssl.SSLContext | None = None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"


class _AdvertisedBroker(EmbeddedBroker):
    """Tansu advertising another address (its front's) than the one it listens on."""

    def __init__(self, advertised: str) -> None:
        super().__init__(cluster_id="leadscore-secure")
        self.advertised = advertised

    def _command(self, binary: Path, workdir: Path) -> list[str]:
        command = super()._command(binary, workdir)
        command[command.index("--advertised-listener-url") + 1] = f"tcp://{self.advertised}"
        return command


class SecureKafka:
    """Listeners by name (``listeners[name].bootstrap``), the CA, a client certificate and
    the SASL users; the fronts run in a thread of their own so that a test blocking its own
    event loop (``subprocess.run`` of the CLI) cannot stall them."""

    def __init__(self, workdir: Path, listeners: list[Listener],
                 users: dict[str, str]) -> None:
        self.workdir, self.users = workdir, users
        self.listeners = {listener.name: listener for listener in listeners}
        self.pki = make_pki(workdir / "pki")
        self.scram = {mechanism: {user: ScramCredential.create(mechanism, password)
                                  for user, password in users.items()}
                      for mechanism in SCRAM_HASHES}
        # Refused authentications (as a broker logs them), and anything unexpected here.
        self.failures: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="kafka-secure-fronts")
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def ca(self) -> Path:
        return self.pki.ca

    def start(self) -> None:
        for listener in self.listeners.values():
            listener.broker = _AdvertisedBroker(listener.bootstrap)
            listener.broker.start()
            if listener.protocol.endswith("SSL"):
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
                if listener.mtls:
                    context.verify_mode = ssl.CERT_REQUIRED
                    context.load_verify_locations(self.pki.ca)
                listener.ssl_context = context
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=30)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
        for listener in self.listeners.values():
            if listener.broker is not None:
                listener.broker.stop()

    async def _listen(self) -> None:
        for listener in self.listeners.values():
            def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        listener: Listener = listener) -> None:
                task = asyncio.ensure_future(self._serve(listener, reader, writer))
                self._connections.add(task)
                task.add_done_callback(self._connections.discard)
            self._servers.append(await asyncio.start_server(
                handler, HOST, listener.port, ssl=listener.ssl_context))

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)

    async def _serve(self, listener: Listener, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        assert listener.broker is not None
        writers = [writer]
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                HOST, listener.broker.port)
            writers.append(upstream_writer)
            if listener.protocol.startswith("SASL") and not await self._authenticate(
                    reader, writer, upstream_reader, upstream_writer):
                return
            pipes = [asyncio.ensure_future(_pipe(reader, upstream_writer)),
                     asyncio.ensure_future(_pipe(upstream_reader, writer))]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
        except (OSError, asyncio.IncompleteReadError):
            pass  # a side went away (or the client failed its TLS handshake)
        except Exception as exc:  # a malformed SASL message, or a bug here: tests see it
            self.failures.append(f"{listener.name}: {type(exc).__name__}: {exc}")
        finally:
            for w in writers:
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            upstream_reader: asyncio.StreamReader,
                            upstream_writer: asyncio.StreamWriter) -> bool:
        """Kafka's SASL exchange on one connection; True once the client is authenticated."""
        server: PlainServer | ScramServer | None = None
        while True:
            request = await read_frame(reader)
            api_key, version, correlation_id, body = request_body(request)
            header = struct.pack(">i", correlation_id)
            if api_key == API_VERSIONS:  # served before authentication, as Kafka does
                upstream_writer.write(frame(request))
                await upstream_writer.drain()
                writer.write(frame(await read_frame(upstream_reader)))
            elif api_key == SASL_HANDSHAKE and server is None and version <= 1:
                (size,) = struct.unpack(">h", body[:2])
                mechanism = body[2:2 + size].decode()
                error = 0 if mechanism in MECHANISMS else UNSUPPORTED_SASL_MECHANISM
                writer.write(frame(header + struct.pack(">hi", error, len(MECHANISMS))
                                   + b"".join(string(m) for m in MECHANISMS)))
                if error:
                    await writer.drain()
                    return False
                server = (PlainServer(self.users) if mechanism == "PLAIN"
                          else ScramServer(mechanism, self.scram[mechanism]))
            elif api_key == SASL_AUTHENTICATE and server is not None and version <= 1:
                (size,) = struct.unpack(">i", body[:4])
                lifetime = struct.pack(">q", 0) if version >= 1 else b""
                try:
                    reply = server.step(body[4:4 + size])
                except AuthenticationFailed as failure:
                    self.failures.append(str(failure))
                    writer.write(frame(header + struct.pack(">h", SASL_AUTHENTICATION_FAILED)
                                       + string(str(failure)) + struct.pack(">i", 0)
                                       + lifetime))
                    await writer.drain()
                    return False
                writer.write(frame(header + struct.pack(">h", 0) + string(None)
                                   + struct.pack(">i", len(reply)) + reply + lifetime))
                if server.done:
                    await writer.drain()
                    return True
            else:  # anything else before authentication: Kafka drops the connection
                self.failures.append(f"request {api_key} v{version} before authentication")
                return False
            await writer.drain()

    # --- client settings ------------------------------------------------------------------

    def settings(self, listener: str, *, mechanism: str | None = None, user: str | None = None,
                 password: str | None = None) -> dict[str, str]:
        """``Deployment`` keyword arguments (LEADSCORE_KAFKA_*) for one listener."""
        chosen = self.listeners[listener]
        options = {"kafka_security_protocol": chosen.protocol}
        if chosen.protocol.endswith("SSL"):
            options["kafka_ssl_cafile"] = str(self.pki.ca)
            if chosen.mtls:
                options["kafka_ssl_certfile"] = str(self.pki.client_cert)
                options["kafka_ssl_keyfile"] = str(self.pki.client_key)
        if chosen.protocol.startswith("SASL"):
            assert mechanism is not None and user is not None
            options["kafka_sasl_mechanism"] = mechanism
            options["kafka_sasl_username"] = user
            options["kafka_sasl_password"] = password if password is not None \
                else self.users[user]
        return options


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(256 * 1024):
        writer.write(data)
        await writer.drain()


@contextlib.contextmanager
def secure_kafka(workdir: Path, listeners: list[Listener],
                 users: dict[str, str]) -> Iterator[SecureKafka]:
    kafka = SecureKafka(workdir, listeners, users)
    try:
        kafka.start()
        yield kafka
    finally:
        kafka.stop()

