"""Baseline (b) of the gateway benchmark: Pushpin, the realtime proxy (Debian package ``pushpin``).

Clients open ``ws://127.0.0.1:<http port>/<channel>``. Pushpin (condure → pushpin-proxy → zurl)
passes each handshake to a tiny backend over WebSocket-over-HTTP
(https://pushpin.org/docs/protocols/websocket-over-http/); the backend answers the ``OPEN`` event
with a GRIP control message subscribing the connection to the channel named by the request path.
Events are then published through Pushpin's own HTTP publish API, ``POST
http://127.0.0.1:<publish port>/publish/`` with ``{"items": [{"channel": "<ch>", "formats":
{"ws-message": {"content": "<payload text>"}}}, ...]}`` (https://pushpin.org/docs/api/), and
pushpin-handler fans each item out to the channel's connections. Pushpin does no API management:
no credentials, no metering, no throttling per subscriber.

The Debian package's ``/etc/pushpin/pushpin.conf`` does not work as installed here (it expects a
system-wide zurl: every WebSocket gets 502, see ``shared/bench/README.md``), and its fixed ports
(7999 for clients, 5560–5563 for publishing and control) would collide with another run. Each
:class:`PushpinTarget` therefore writes its own copy into a temporary folder with:

- ``rundir``/``logdir``/``routesfile`` inside the folder; every ZeroMQ spec an IPC socket in that
  ``rundir`` (none left on TCP: :func:`pushpin_config` refuses a config that still has one);
- ``services=condure,zurl,pushpin-proxy,pushpin-handler`` (zurl started by the runner, the proxy
  pointed at it);
- the client listener (``http_port``) and the HTTP publish listener (``push_in_http_port``) on
  127.0.0.1 at ports that were free a moment before start;
- ``message_rate`` (messages/s the handler sends to connections) lifted from the package default
  2,500 to 0, no limit, and ``message_hwm`` (messages queued per rate-limiter bucket before
  dropping) raised from 25,000 to 1,000,000. The default rate caps fan-out at about 2,000
  deliveries/s. Any positive rate, even 1,000,000, goes through pushpin-handler's RateLimiter,
  which re-arms its 25 ms batch timer on every publish request: while publish requests arrive
  more often than every 25 ms (40 POSTs/s) nothing is delivered until they pause, and latency
  grows by seconds (measured with 1.36: one client, one event per POST, p50 1.7 ms at 30
  POSTs/s, 1,000 ms at 45/s, 2,500 ms at 60/s; 1.1 ms at 100/s with ``message_rate=0``);
- ``push_in_http_max_body_size`` raised from 1,000,000 to 10,000,000 bytes, so one publish POST
  can carry a whole tick of items at high rates.

Quirks a load generator must allow for (Pushpin 1.36 here):

- a burst of a few hundred simultaneous handshakes gets immediate 502s that never reach zurl or
  the backend (pushpin-proxy's ZeroMQ queue to zurl is small and does not wait); open
  connections in batches of 20–50;
- when a connection's send buffer fills, condure splits messages into continuation frames
  (RFC 6455 §5.4): clients must reassemble fragments.

Run ``python -m gateway.bench.pushpin backend`` to start the backend alone (it prints its port).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote

from gateway.bench.targets import ClientSpec, free_port

PACKAGE_CONFIG = Path("/etc/pushpin/pushpin.conf")
INSTALL_HINT = "apt-get install -y pushpin"
# Binaries the runner starts for the services this target uses (Debian puts them all on PATH).
BINARIES = ("pushpin", "condure", "zurl", "pushpin-proxy", "pushpin-handler")
PROBE_CHANNEL = "eventgate-bench-probe"
REPO_ROOT = Path(__file__).resolve().parents[2]


def pushpin_available() -> str | None:
    """None when Pushpin can run here, else a short reason naming the fix."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return f"pushpin not installed ({', '.join(missing)} missing): {INSTALL_HINT}"
    if not PACKAGE_CONFIG.is_file():
        return f"pushpin config {PACKAGE_CONFIG} missing: apt-get install --reinstall pushpin"
    return None


def pushpin_version() -> str:
    """``"1.36.0"`` as ``pushpin --version`` prints it, or ``""`` when it cannot be run."""
    try:
        out = subprocess.run(["pushpin", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"\d+(\.\d+)+", out)
    return match.group(0) if match else ""


def pushpin_config(
    package_config: str,
    *,
    folder: Path,
    http_port: int,
    publish_port: int,
    message_rate: int = 0,
    message_hwm: int = 1_000_000,
    log_level: int = 1,
) -> str:
    """The package's ``pushpin.conf`` text rewritten for one private run in ``folder``.

    Keys are replaced in place within their ``[section]`` and added to it when absent; the other
    settings (buffer sizes, connection limit 50,000) keep the package's values. Raises ValueError
    when the result still holds a ``tcp://`` spec (a newer package with a port this does not move).
    """
    ipc = "ipc://{rundir}/{ipc_prefix}"
    overrides: dict[str, dict[str, str]] = {
        "global": {"rundir": str(folder / "run"), "ipc_prefix": "pushpin-", "port_offset": "0"},
        "runner": {
            "services": "condure,zurl,pushpin-proxy,pushpin-handler",
            "http_port": f"127.0.0.1:{http_port}",
            "logdir": str(folder / "log"),
            "log_level": str(log_level),
        },
        "proxy": {
            "routesfile": str(folder / "routes"),
            # internal.conf points these at a system-wide zurl (/var/run/zurl); ours runs in rundir.
            "zurl_out_specs": ipc + "zurl-in",
            "zurl_out_stream_specs": ipc + "zurl-in-stream",
            "zurl_in_specs": ipc + "zurl-out",
            "updates_check": "off",
        },
        "handler": {
            "push_in_spec": ipc + "push-in",
            "push_in_sub_specs": ipc + "push-in-sub",
            "push_in_sub_connect": "false",
            "push_in_http_addr": "127.0.0.1",
            "push_in_http_port": str(publish_port),
            "push_in_http_max_body_size": "10000000",
            "command_spec": ipc + "handler-command",
            "stats_spec": ipc + "stats",
            "message_rate": str(message_rate),
            "message_hwm": str(message_hwm),
        },
    }
    text = _rewrite_ini(package_config, overrides)
    leftover = [line for line in text.splitlines() if "tcp://" in line and not line.lstrip().startswith("#")]
    if leftover:
        raise ValueError(f"pushpin config still has TCP specs another run could collide with: {leftover}")
    return text


def _rewrite_ini(text: str, overrides: dict[str, dict[str, str]]) -> str:
    """``text`` (INI) with ``overrides[section][key]`` set: replaced where present, else appended."""
    pending = {section: dict(keys) for section, keys in overrides.items()}
    out: list[str] = []
    section = ""

    def flush(name: str) -> None:
        out.extend(f"{key}={value}" for key, value in pending.pop(name, {}).items())

    for line in text.splitlines():
        header = re.fullmatch(r"\s*\[([^\]]+)\]\s*", line)
        if header:
            flush(section)
            section = header.group(1)
        else:
            key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else ""
            if key and key in pending.get(section, {}):
                line = f"{key}={pending[section].pop(key)}"
        out.append(line)
    flush(section)
    for name in list(pending):
        out.append(f"[{name}]")
        flush(name)
    return "\n".join(out) + "\n"


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) of a process from ``/proc``, None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (children of children too), from ``/proc``."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) and stat[0] != "Z":
            parents.setdefault(stat[1], []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _snapshot(pids: Iterable[int]) -> list[tuple[int, int]]:
    """(pid, start time) of each of ``pids`` still running, to tell them from a later reuse of the PID."""
    return [(pid, stat[2]) for pid in pids if (stat := _proc_stat(pid))]


def alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` runs (zombies count as gone), and is the process that started at ``started``."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z" and (started is None or stat[2] == started)


class PushpinTarget:
    """Pushpin with a GRIP backend, as a benchmark target (Target protocol of ``gateway.bench.targets``).

    ``start(channels=[...])`` needs ``pushpin`` installed (see :func:`pushpin_available`) and raises
    RuntimeError with the log's tail when Pushpin does not deliver a probe event within
    ``start_timeout`` seconds. ``message_rate`` defaults to 0 (no limit) and ``message_hwm`` to
    1,000,000 (see the module docstring); pass 2500/25000 to measure the package's defaults.
    Pushpin's output goes to ``pushpin.log`` and the backend's to ``pushpin-backend.log``, in
    ``log_dir`` (appended, kept) or else in the temporary folder (removed by ``stop``).
    """

    name = "pushpin"
    max_open_concurrency = 25  # handshakes in flight: bursts of a few hundred get 502s
    open_pause = 0.0

    def __init__(
        self,
        *,
        message_rate: int = 0,
        message_hwm: int = 1_000_000,
        log_level: int = 1,
        start_timeout: float = 20.0,
        log_dir: Path | None = None,
    ) -> None:
        self.message_rate, self.message_hwm = message_rate, message_hwm
        self.log_dir = log_dir
        self.log_level, self.start_timeout = log_level, start_timeout
        version = pushpin_version()
        self.label = (
            f"Pushpin {version or '?'} (baseline: realtime proxy, GRIP WebSocket-over-HTTP; "
            "no API management: no credential check, metering or throttling)"
        )
        self.folder: Path | None = None
        self.http_port = self.publish_port = 0
        self._runner: subprocess.Popen[bytes] | None = None
        self._backend: subprocess.Popen[bytes] | None = None
        self._children: list[tuple[int, int]] = []  # (pid, start time) of the runner's services

    @property
    def publish_url(self) -> str:
        return f"http://127.0.0.1:{self.publish_port}/publish/"

    def start(self, *, channels: list[str]) -> None:
        """Write the config, start the backend and ``pushpin``, wait until a probe event gets through."""
        if reason := pushpin_available():
            raise RuntimeError(reason)
        self.folder = Path(tempfile.mkdtemp(prefix="eventgate-pushpin-"))
        try:
            self._start(self.folder)
        except BaseException:
            self.stop()
            raise

    def _start(self, folder: Path) -> None:
        (folder / "run").mkdir()
        (folder / "log").mkdir()
        log_dir = self.log_dir or folder
        log_dir.mkdir(parents=True, exist_ok=True)
        self._backend, backend_port = start_backend(log_dir / "pushpin-backend.log")
        # over_http: the route speaks WebSocket-over-HTTP to the backend instead of WebSocket.
        (folder / "routes").write_text(f"* 127.0.0.1:{backend_port},over_http\n")
        self.http_port, self.publish_port = free_port(), free_port()
        config = pushpin_config(
            PACKAGE_CONFIG.read_text(),
            folder=folder,
            http_port=self.http_port,
            publish_port=self.publish_port,
            message_rate=self.message_rate,
            message_hwm=self.message_hwm,
            log_level=self.log_level,
        )
        (folder / "pushpin.conf").write_text(config)
        with open(log_dir / "pushpin.log", "ab") as log:
            self._runner = subprocess.Popen(
                ["pushpin", f"--config={folder / 'pushpin.conf'}", "--merge-output"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group, stopped as one
            )
        self._wait_until_ready()
        self._children = _snapshot(descendants(self._runner.pid))

    def _wait_until_ready(self) -> None:
        """Open a WebSocket through Pushpin and publish a probe until it arrives (all four services up)."""
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        assert self._runner is not None
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._runner.poll() is not None:
                raise RuntimeError(f"pushpin exited ({self._runner.returncode}):\n{self._log_tail()}")
            try:
                url = f"ws://127.0.0.1:{self.http_port}/{PROBE_CHANNEL}"
                with connect(url, open_timeout=2, compression=None) as ws:
                    for _ in range(10):
                        publish(self.publish_url, [(PROBE_CHANNEL, "probe")], timeout=2)
                        try:
                            if ws.recv(timeout=0.2) == "probe":
                                return
                        except TimeoutError:
                            continue
            except (OSError, WebSocketException, TimeoutError) as error:
                last_error = error
            time.sleep(0.2)
        raise RuntimeError(
            f"pushpin did not deliver a probe within {self.start_timeout} s ({last_error!r}):\n"
            + self._log_tail()
        )

    def _log_tail(self, lines: int = 30) -> str:
        log_dir = self.log_dir or self.folder
        if log_dir is None:
            return ""
        tails = []
        for name in ("pushpin.log", "pushpin-backend.log"):
            path = log_dir / name
            if path.exists():
                tails.append(
                    f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
                )
        return "\n".join(tails)

    def server_pids(self) -> list[int]:
        """The runner and its services (condure, zurl, pushpin-proxy, pushpin-handler).

        The backend is left out: it only answers each connection's OPEN and is idle afterwards.
        """
        if self._runner is None:
            return []
        return [self._runner.pid] + [pid for pid, started in self._children if alive(pid, started)]

    def backend_pids(self) -> list[int]:
        """The GRIP backend: one HTTP request per handshake (and per close), idle in between; left
        out of :meth:`server_pids`, but a handshake storm's full cost includes it."""
        return [self._backend.pid] if self._backend is not None else []

    def client_spec(self, channel: str, index: int) -> ClientSpec:
        """``ws://127.0.0.1:<port>/<channel>``, no credential (Pushpin has none to check)."""
        return ClientSpec(url=f"ws://127.0.0.1:{self.http_port}/{channel}", headers=[], subprotocols=[])

    def publisher_args(self) -> list[str]:
        """Arguments for ``python -m gateway.bench.publisher``: Pushpin mode and the publish URL."""
        return ["--mode", "pushpin", "--url", self.publish_url]

    def stop(self) -> None:
        """Stop the runner's process group (SIGTERM, SIGKILL after 10 s), then any of its services
        left over (the runner puts each in a process group of its own; on SIGTERM it stops them
        itself), then the backend, all by PID; remove the folder. Safe to call twice."""
        children = list(self._children)
        if self._runner is not None:
            children += _snapshot(descendants(self._runner.pid))
            _terminate(self._runner, group=True)
            self._runner = None
        _kill_leftovers(children)
        self._children = []
        if self._backend is not None:
            _terminate(self._backend, group=False)
            self._backend = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def _terminate(process: subprocess.Popen[bytes], *, group: bool, grace: float = 10.0) -> None:
    """SIGTERM ``process`` (its process group when ``group``), SIGKILL after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


def _kill_leftovers(processes: Iterable[tuple[int, int]], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, the (pid, start time) pairs still running as that same process."""
    left = [(pid, started) for pid, started in set(processes) if alive(pid, started)]
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (left := [(p, s) for p, s in left if alive(p, s)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def publish(url: str, items: list[tuple[str, str]], *, timeout: float = 5.0) -> None:
    """POST ``[(channel, text), ...]`` to Pushpin's publish endpoint as ``ws-message`` items.

    Raises urllib.error.HTTPError on a refusal (Pushpin answers 200 "Published" when accepted).
    """
    body = {"items": [{"channel": ch, "formats": {"ws-message": {"content": text}}} for ch, text in items]}
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


# --- the GRIP backend (its own process) -------------------------------------------------------------


def start_backend(log_path: Path, timeout: float = 10.0) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``python -m gateway.bench.pushpin backend``; returns the process and the port it bound."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.bench.pushpin", "backend"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    os.set_blocking(process.stdout.fileno(), False)
    line = b""
    while not line.endswith(b"\n") and time.monotonic() < deadline and process.poll() is None:
        line += process.stdout.read() or b""
        time.sleep(0.02)
    process.stdout.close()  # nothing else is written there
    match = re.fullmatch(rb"port (\d+)\n", line)
    if not match:
        _terminate(process, group=False)
        raise RuntimeError(f"GRIP backend did not start: {line!r}; see {log_path}")
    return process, int(match.group(1))


def grip_open_reply(channel: str) -> bytes:
    """Body accepting an OPEN and subscribing the connection to ``channel``.

    WebSocket-over-HTTP events are ``NAME <content length in hex>\\r\\n<content>\\r\\n``; a GRIP
    control message is a TEXT event whose content is ``c:`` + JSON
    (https://pushpin.org/docs/protocols/grip/, "WebSocket").
    """
    control = b"c:" + json.dumps({"type": "subscribe", "channel": channel}, separators=(",", ":")).encode()
    return b"OPEN\r\nTEXT %x\r\n%s\r\n" % (len(control), control)


def _events(body: bytes) -> list[tuple[bytes, bytes]]:
    """``[(name, content), ...]`` of a WebSocket-over-HTTP body."""
    found, at = [], 0
    while at < len(body):
        end = body.index(b"\r\n", at)
        name, _, size = body[at:end].partition(b" ")
        length = int(size, 16) if size else 0
        found.append((name, body[end + 2 : end + 2 + length]))
        at = end + 2 + length
        if size and body[at : at + 2] == b"\r\n":  # content is followed by CRLF, as in chunked encoding
            at += 2
    return found


def backend_reply(path: str, body: bytes) -> tuple[dict[str, str], bytes]:
    """Headers and body answering one WebSocket-over-HTTP request to ``path`` (``/<channel>``).

    OPEN → subscribe to the channel named by the path; CLOSE → CLOSE with the same code (the
    protocol's acknowledgement); anything else (TEXT from the client, PING, DISCONNECT) → empty.
    """
    headers = {"Content-Type": "application/websocket-events"}
    reply = b""
    for name, content in _events(body):
        if name == b"OPEN":
            headers["Sec-WebSocket-Extensions"] = "grip"
            reply += grip_open_reply(unquote(path.split("?", 1)[0].lstrip("/")))
        elif name == b"CLOSE":
            reply += b"CLOSE %x\r\n%s\r\n" % (len(content), content) if content else b"CLOSE\r\n"
    return headers, reply


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One keep-alive HTTP/1.1 connection from zurl (Content-Length or chunked request bodies)."""
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            path = request_line.split(" ")[1]
            fields = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)
            }
            if fields.get("transfer-encoding", "").lower() == "chunked":
                body = b""
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    body += (await reader.readexactly(size + 2))[:-2]
                await reader.readuntil(b"\r\n")
            else:
                body = await reader.readexactly(int(fields.get("content-length", "0")))
            headers, reply = backend_reply(path, body)
            headers["Content-Length"] = str(len(reply))
            writer.write(
                b"HTTP/1.1 200 OK\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
                + b"\r\n"
                + reply
            )
            await writer.drain()
            if fields.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve_backend() -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", 0, backlog=4096)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def serve_backend() -> None:
    """Run the GRIP backend on a free 127.0.0.1 port (printed as ``port N``) until killed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve_backend())
    else:
        uvloop.run(_serve_backend())


if __name__ == "__main__":
    if sys.argv[1:] != ["backend"]:
        sys.exit("usage: python -m gateway.bench.pushpin backend")
    serve_backend()
