"""What the benchmark measures: the ``Target`` protocol and the gateway and bare-bridge targets.

A target starts its server process(es), says which processes' CPU and memory are its cost,
how a client connects to a channel, and how the publisher reaches it. The Pushpin target
(``gateway.bench.pushpin.PushpinTarget``) implements the same protocol.

Optional attributes a target may have (read with ``getattr``): ``max_open_concurrency`` (int:
the most handshakes in flight it tolerates, e.g. Pushpin's 20–50), ``open_pause`` (seconds
between batches of that size), ``use_secrets`` (a context manager taking a list of credentials
that ``client_spec`` uses meanwhile: the storm's cold variant; only the gateway has credentials).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import quote

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class ClientSpec:
    """How one client connects: ``url`` ws://127.0.0.1:<port>/<path>, extra handshake ``headers``
    (e.g. ``[("Authorization", "Bearer eg_…")]``) and ``subprotocols`` to offer (may be empty)."""

    url: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    subprotocols: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "url": self.url,
            "headers": [list(h) for h in self.headers],
            "subprotocols": self.subprotocols,
        }


class Target(Protocol):
    """A server under test (see the module docstring for optional attributes)."""

    name: str  # "gateway" | "gateway-daphne" | "bare-bridge" | "pushpin"
    label: str  # human label for the table

    def start(self, *, channels: list[str]) -> None:
        """Start the server process(es); ``channels`` are addresses like ``"ticks/7"``."""

    def server_pids(self) -> list[int]:
        """Processes whose CPU and RSS are the target's cost (summed)."""

    def client_spec(self, channel: str, index: int) -> ClientSpec:
        """How subscriber number ``index`` connects to ``channel``."""

    def publisher_args(self) -> list[str]:
        """argv for ``python -m gateway.bench.publisher`` (mode and endpoint)."""

    def stop(self) -> None:
        """Stop what ``start`` started, by PID."""


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ProcessUsage:
    """CPU time (seconds, user + system) and resident memory (KiB) of some processes at one moment."""

    at: float
    cpu_seconds: float
    rss_kib: int


def process_usage(pids: Sequence[int]) -> ProcessUsage:
    """Sum of ``/proc/<pid>/stat`` utime + stime and RSS over ``pids`` (gone ones count 0)."""
    cpu = 0.0
    rss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # Fields after the command: state is [0], utime [11], stime [12], rss (pages) [21] (proc(5)).
        cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
        rss += int(fields[21]) * PAGE_KIB
    return ProcessUsage(time.monotonic(), cpu, rss)


def broker_pids() -> list[int]:
    """PIDs of RabbitMQ's Erlang VM (``beam.smp``) on this machine, if it runs here."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "beam.smp" and b"rabbit" in (
                    entry / "cmdline"
                ).read_bytes():
                    pids.append(int(entry.name))
    return pids


def cpu_percent(before: ProcessUsage, after: ProcessUsage) -> float:
    """CPU used between two samples, in % of one core."""
    elapsed = after.at - before.at
    return 100.0 * (after.cpu_seconds - before.cpu_seconds) / elapsed if elapsed > 0 else 0.0


class ManagedProcess:
    """A child process with its output in a log file, stopped by PID (SIGTERM, then SIGKILL).

    Every one started is also stopped at interpreter exit (``stop_all``), so an error or
    Ctrl-C in the runner leaves no process behind.
    """

    running: set[ManagedProcess] = set()

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        pipes: bool = False,
        cwd: str | Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] | None = log_path.open("ab") if log_path else None
        output = self._log if self._log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            self.argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else output,
            stderr=output,
            text=pipes,
            bufsize=1 if pipes else -1,
        )
        ManagedProcess.running.add(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def send(self, command: dict[str, object]) -> None:
        """Write one JSON command line to the process's stdin (pipes mode)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, object]:
        """Read one JSON answer line from the process's stdout (pipes mode); raises
        ``RuntimeError`` if the process ended instead."""
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(5)
            raise RuntimeError(
                f"{' '.join(self.argv[:4])} exited with {self.process.returncode}:\n{self.log_tail()}"
            )
        return json.loads(line)

    def stop(self, timeout: float = 10.0, *, grace: float = 0.0) -> None:
        """Close its stdin and give it ``grace`` seconds to exit by itself (the load generator
        and the publisher end at end of input), then SIGTERM (orderly shutdown), then SIGKILL
        after ``timeout`` seconds."""
        if self.process.poll() is None:
            with contextlib.suppress(OSError):
                if self.process.stdin is not None:
                    self.process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()
        if self._log is not None:
            self._log.close()
        ManagedProcess.running.discard(self)

    @classmethod
    def stop_all(cls) -> None:
        for process in list(cls.running):
            process.stop(timeout=5)


def wait_http(url: str, process: ManagedProcess, *, timeout: float = 60.0) -> None:
    """Wait until ``url`` answers 200; raises ``RuntimeError`` if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{' '.join(process.argv[:4])} exited:\n{process.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:g} s:\n{process.log_tail()}")


def database_url() -> str:
    """``DATABASE_URL`` of the database this process uses (so server processes share it)."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    credentials = quote(db["USER"] or "", safe="")
    if db["PASSWORD"]:
        credentials += ":" + quote(db["PASSWORD"], safe="")
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return f"postgres://{credentials}@{host}/{quote(db['NAME'], safe='')}"


def amqp_publisher_args(*, api: str, version: str) -> list[str]:
    """Arguments of ``gateway.bench.publisher`` (and the bare bridge) for publishing through
    RabbitMQ the way providers do: this process's broker and exchange, the bench API's version."""
    from django.conf import settings

    return [
        "--mode=amqp",
        f"--amqp-url={settings.AMQP_URL}",
        f"--exchange={settings.EVENTGATE_EXCHANGE}",
        f"--api={api}",
        f"--version={version}",
    ]


def server_env(**overrides: str) -> dict[str, str]:
    """Environment of a gateway process: this process's database, broker, Redis and exchanges,
    DEBUG off, logging at WARNING."""
    from django.conf import settings

    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE") or "portal.settings",
        DATABASE_URL=database_url(),
        AMQP_URL=settings.AMQP_URL,
        REDIS_URL=settings.REDIS_URL,
        EVENTGATE_EXCHANGE=settings.EVENTGATE_EXCHANGE,
        EVENTGATE_INBOUND_EXCHANGE=settings.EVENTGATE_INBOUND_EXCHANGE,
        DEBUG="False",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


# --- targets -----------------------------------------------------------------------------------


class GatewayTarget:
    """Eventgate's gateway: ``manage.py serve`` (uvicorn) or daphne, in ``processes`` processes
    on as many ports (clients are spread over them by index).

    ``secrets`` are the API keys subscribers use, ``secrets[index % len(secrets)]``, sent as
    ``Authorization: Bearer``; URL ``/ws/<api>/<version>/<channel address>``. ``throttled``
    names the target ``gateway-throttled`` (its secrets are those of the throttled plan's
    application, ``BenchObjects.throttled_secrets``).
    """

    def __init__(
        self,
        *,
        server: str,
        api: str,
        version: str,
        secrets: Sequence[str],
        log_dir: Path,
        processes: int = 1,
        throttled: bool = False,
    ) -> None:
        if server not in ("uvicorn", "daphne"):
            raise ValueError(f"server {server!r} is not uvicorn or daphne")
        self.server = server
        self.throttled = throttled
        self.name = "gateway" if server == "uvicorn" else "gateway-daphne"
        if throttled:
            self.name += "-throttled"
        count = f", {processes} processes" if processes > 1 else ""
        policy = ", throttling on" if throttled else ""
        self.label = f"Eventgate gateway ({server}{count}{policy})"
        self.api, self.version = api, version
        self.secrets = list(secrets)
        self.log_dir = log_dir
        self.processes = processes
        self.ports: list[int] = []
        self._procs: list[ManagedProcess] = []

    def _argv(self, port: int) -> list[str]:
        from django.conf import settings

        if self.server == "uvicorn":
            return [sys.executable, "manage.py", "serve", "--port", str(port)]
        module, _, attribute = settings.ASGI_APPLICATION.rpartition(".")
        daphne = str(Path(sys.executable).parent / "daphne")
        return [daphne, "-b", "127.0.0.1", "-p", str(port), "-v", "0", f"{module}:{attribute}"]

    def start(self, *, channels: list[str]) -> None:
        from django.conf import settings

        env = server_env()
        try:
            for number in range(self.processes):
                port = free_port()
                log_path = self.log_dir / f"{self.name}-{number}.log"
                process = ManagedProcess(self._argv(port), env=env, log_path=log_path, cwd=settings.BASE_DIR)
                self._procs.append(process)
                self.ports.append(port)
            for port, process in zip(self.ports, self._procs, strict=True):
                wait_http(f"http://127.0.0.1:{port}/healthz", process)
        except BaseException:
            self.stop()
            raise

    def server_pids(self) -> list[int]:
        return [process.pid for process in self._procs]

    def client_spec(self, channel: str, index: int) -> ClientSpec:
        port = self.ports[index % len(self.ports)]
        secret = self.secrets[index % len(self.secrets)]
        return ClientSpec(
            url=f"ws://127.0.0.1:{port}/ws/{self.api}/{self.version}/{channel}",
            headers=[("Authorization", f"Bearer {secret}")],
        )

    @contextlib.contextmanager
    def use_secrets(self, secrets: Sequence[str]) -> Iterator[None]:
        """Clients use ``secrets`` (by index) meanwhile: the storm's cold variant."""
        saved = self.secrets
        self.secrets = list(secrets)
        try:
            yield
        finally:
            self.secrets = saved

    def publisher_args(self) -> list[str]:
        return amqp_publisher_args(api=self.api, version=self.version)

    def stop(self) -> None:
        for process in self._procs:
            process.stop()
        self._procs.clear()
        self.ports.clear()


class BareBridgeTarget:
    """Baseline (a): ``gateway.bench.bare_bridge`` (aio-pika → ``websockets.broadcast()``, no
    management), bound to the same exchange and routing keys as the gateway."""

    name = "bare-bridge"
    label = "bare bridge (BASELINE: aio-pika → websockets.broadcast, no management)"

    def __init__(self, *, api: str, version: str, log_dir: Path) -> None:
        self.api, self.version = api, version
        self.log_dir = log_dir
        self.port = 0
        self.queue = ""
        self._process: ManagedProcess | None = None

    def start(self, *, channels: list[str]) -> None:
        from django.conf import settings

        process = ManagedProcess(
            [sys.executable, "-m", "gateway.bench.bare_bridge", *self.publisher_args()[1:], "--port=0"],
            env=server_env(),
            log_path=self.log_dir / "bare-bridge.log",
            pipes=True,
            cwd=settings.BASE_DIR,
        )
        self._process = process
        try:
            ready = process.receive()
        except BaseException:
            self.stop()
            raise
        self.port, self.queue = int(ready["port"]), str(ready["queue"])  # type: ignore[call-overload]

    def server_pids(self) -> list[int]:
        return [self._process.pid] if self._process is not None else []

    def client_spec(self, channel: str, index: int) -> ClientSpec:
        return ClientSpec(url=f"ws://127.0.0.1:{self.port}/{channel}")

    def publisher_args(self) -> list[str]:
        return amqp_publisher_args(api=self.api, version=self.version)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
