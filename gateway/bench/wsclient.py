"""The benchmark's load generator: thousands of WebSocket client connections in one process.

Run as ``python -m gateway.bench.wsclient`` (one OS process per client group; ``runner`` starts
several). A minimal asyncio (uvloop) client of RFC 6455: the HTTP/1.1 Upgrade handshake (§4.1,
``Sec-WebSocket-Accept`` checked), masked client frames (§5.3), pongs for pings (§5.5.2), close
frames echoed and their codes recorded (§5.5.1, §7.4). It holds up to about 9,000 connections per
process (the open-file limit is raised to its hard limit at start).

Per received frame the work is small: the frame header, the FIRST ``"published_at":`` number in
the frame (no ``json.loads``), ``latency = time.time() at receipt - published_at`` (one clock read
per ``data_received`` call) and one increment in a latency histogram of log-spaced buckets 1%
wide (``bucket_of``), which merges across processes by adding counts (``hist_merge``).

Control: one JSON command per line on stdin, one JSON answer per line on stdout:

- ``{"cmd":"open","specs":[{"url":"ws://127.0.0.1:P/path","headers":[["Authorization","Bearer …"]],
  "subprotocols":[]}, …],"concurrency":C,"batch":B,"pause":s,"timeout":s}`` opens the connections,
  at most C handshakes in flight, B at a time with ``pause`` seconds between batches (B = 0: all
  at once) → ``{"opened":n,"refused":{"http 403":n},"failed":{"ConnectionRefusedError":n},
  "started":t,"finished":t,"seconds":s,"open":n}`` (``started``/``finished``: Unix seconds);
- ``{"cmd":"count"}`` → ``{"received":n,"open":n,"closed":{code:n}}`` since the last report, no reset;
- ``{"cmd":"report"}`` → ``{"received":n,"timed":n,"hist":{"<bucket>":n},"first_at":t,"last_at":t,
  "per_connection":{"min":n,"max":n},"open":n,"closed":{code:n}}`` since the last report, then
  resets (``received``: data messages; ``timed``: those with a ``published_at``; ``closed``: close
  codes of connections the server closed, "1006" for a connection lost without a close frame);
- ``{"cmd":"close","timeout":s}`` closes every connection (close code 1000) → ``{"closed":n,
  "aborted":n,"seconds":s}``;
- ``{"cmd":"quit"}`` (or end of stdin) ends the process.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import math
import os
import re
import resource
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
# Latency histogram: bucket i holds latencies in [1.01**i, 1.01**(i+1)) microseconds (1% wide);
# 2,048 buckets reach 1.01**2048 µs ≈ 12 hours, bucket 0 holds everything under 1 µs.
BUCKET_RATIO = 1.01
BUCKETS = 2048
_INV_LOG_RATIO = 1.0 / math.log(BUCKET_RATIO)
_PUBLISHED_AT = re.compile(rb'"published_at":\s*(-?[0-9][0-9.eE+-]*)')
# Most connections one process holds; the runner spreads larger counts over more processes.
MAX_CONNECTIONS_PER_PROCESS = 9000

HANDSHAKE, OPEN, CLOSING, CLOSED = range(4)


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a latency of ``seconds`` (see ``BUCKET_RATIO``)."""
    micros = seconds * 1e6
    if micros < 1.0:
        return 0
    return min(int(math.log(micros) * _INV_LOG_RATIO), BUCKETS - 1)


def bucket_ms(index: int) -> float:
    """The representative latency of bucket ``index`` in milliseconds (its geometric middle)."""
    return BUCKET_RATIO ** (index + 0.5) / 1000.0


def hist_merge(histograms: Iterable[Mapping[str, int] | Mapping[int, int]]) -> dict[int, int]:
    """Sum histograms (``{bucket: count}``, keys as str from JSON or int) into one."""
    merged: dict[int, int] = {}
    for histogram in histograms:
        for index, count in histogram.items():
            key = int(index)
            merged[key] = merged.get(key, 0) + count
    return merged


def hist_percentile(histogram: Mapping[int, int], fraction: float) -> float | None:
    """The latency in milliseconds below which ``fraction`` (0..1) of the samples lie, to 1%;
    None for an empty histogram."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bucket_ms(index)
    return bucket_ms(max(histogram))


def _mask(payload: bytes) -> tuple[bytes, bytes]:
    """(masking key, masked payload) of a client frame (RFC 6455 §5.3)."""
    key = os.urandom(4)
    return key, bytes(byte ^ key[i & 3] for i, byte in enumerate(payload))


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final, masked client frame; control frames only (payload ≤ 125 bytes)."""
    key, masked = _mask(payload[:125])
    return bytes((0x80 | opcode, 0x80 | len(masked))) + key + masked


class Connection(asyncio.Protocol):
    """One WebSocket client connection; ``done`` gets ``(outcome, detail)`` once the handshake
    ends: ``("opened", "")``, ``("refused", "http <status>")`` or ``("failed", <reason>)``."""

    __slots__ = (
        "client",
        "request",
        "accept",
        "done",
        "transport",
        "state",
        "buf",
        "fragments",
        "received",
        "closing_by_us",
    )

    def __init__(self, client: Client, request: bytes, accept: bytes, done: asyncio.Future[tuple[str, str]]):
        self.client = client
        self.request = request
        self.accept = accept
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.state = HANDSHAKE
        self.buf = b""
        self.fragments: list[bytes] = []
        self.received = 0
        self.closing_by_us = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.state == HANDSHAKE:
            self._handshake(data)
        else:
            self._frames(data)

    def _handshake(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 65536:
                self._fail("failed", "oversized handshake response")
            return
        head, rest, self.buf = self.buf[:end], self.buf[end + 4 :], b""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status != 101:
            self._fail("refused", f"http {status}")
            return
        accept = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-accept":
                accept = value.strip()
        if accept != self.accept:
            self._fail("failed", "bad Sec-WebSocket-Accept")
            return
        self.state = OPEN
        self.client.connections.add(self)
        self.done.set_result(("opened", ""))
        if rest:
            self._frames(rest)

    def _fail(self, outcome: str, detail: str) -> None:
        if not self.done.done():
            self.done.set_result((outcome, detail))
        self.state = CLOSED
        if self.transport is not None:
            self.transport.close()

    def _frames(self, data: bytes) -> None:
        # The hot path: keep it to local variables and C calls.
        if self.buf:
            data = self.buf + data
            self.buf = b""
        size = len(data)
        pos = 0
        count = 0
        client = self.client
        hist = client.hist
        now = time.time()
        search = _PUBLISHED_AT.search
        log = math.log
        while size - pos >= 2:
            length = data[pos + 1] & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if size - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            else:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            first = data[pos]
            opcode = first & 0x0F
            if opcode < 3:  # continuation, text, binary
                if first & 0x80 and opcode:  # a whole message in one frame: the usual case
                    count += 1
                    match = search(data, start, end)
                else:  # a fragment (RFC 6455 §5.4): search the message once it is whole
                    self.fragments.append(data[start:end])
                    if not first & 0x80:
                        pos = end
                        continue
                    count += 1
                    message = b"".join(self.fragments)
                    self.fragments = []
                    match = search(message)
                if match is not None:
                    micros = (now - float(match.group(1))) * 1e6
                    index = int(log(micros) * _INV_LOG_RATIO) if micros >= 1.0 else 0
                    hist[index if index < BUCKETS else BUCKETS - 1] += 1
            else:
                self._control(opcode, data[start:end])
            pos = end
        if pos < size:
            self.buf = data[pos:]
        if count:
            self.received += count
            client.received += count
            client.last_at = now
            if client.first_at is None:
                client.first_at = now

    def _control(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if opcode == 9:  # ping → pong with the same payload (RFC 6455 §5.5.3)
            transport.write(client_frame(0xA, payload))
        elif opcode == 8:  # close
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if not self.closing_by_us:
                self.client.closed[str(code)] += 1
                transport.write(client_frame(0x8, payload[:2]))
            self.state = CLOSED
            transport.close()

    def close(self) -> None:
        """Start the closing handshake with 1000 (normal closure)."""
        if self.state == OPEN and self.transport is not None and not self.transport.is_closing():
            self.closing_by_us = True
            self.state = CLOSING
            self.transport.write(client_frame(0x8, struct.pack("!H", 1000)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            reason = type(exc).__name__ if exc is not None else "closed during handshake"
            self.done.set_result(("failed", reason))
        client = self.client
        if self in client.connections:
            client.connections.discard(self)
            if self.state == OPEN and not self.closing_by_us:
                client.closed["1006"] += 1  # lost without a close frame (RFC 6455 §7.1.5)
        self.state = CLOSED
        if client.all_closed is not None and not client.connections:
            client.all_closed.set()


class Client:
    """The connections of this process and what they received since the last report."""

    def __init__(self) -> None:
        self.connections: set[Connection] = set()
        self.hist = [0] * BUCKETS
        self.received = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.closed: Counter[str] = Counter()
        self.all_closed: asyncio.Event | None = None
        self._addresses: dict[str, tuple[str, int, bytes]] = {}

    def _address(self, url: str) -> tuple[str, int, bytes]:
        known = self._addresses.get(url)
        if known is None:
            parts = urlsplit(url)
            host = parts.hostname or "127.0.0.1"
            port = parts.port or (443 if parts.scheme == "wss" else 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            known = self._addresses[url] = (
                host,
                port,
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n".encode(),
            )
        return known

    async def open_one(self, spec: Mapping[str, Any], timeout: float) -> tuple[str, str]:
        """Open one connection of ``spec``; returns its outcome (see ``Connection``)."""
        host, port, request_line = self._address(spec["url"])
        key = base64.b64encode(os.urandom(16))
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        head = [
            request_line,
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
            key,
            b"\r\n",
        ]
        if spec.get("subprotocols"):
            head.append(f"Sec-WebSocket-Protocol: {', '.join(spec['subprotocols'])}\r\n".encode())
        for name, value in spec.get("headers") or ():
            head.append(f"{name}: {value}\r\n".encode("latin1"))
        head.append(b"\r\n")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[str, str]] = loop.create_future()
        transport = None
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(
                    lambda: Connection(self, b"".join(head), accept, done), host, port
                )
                return await done
        except TimeoutError:
            if transport is not None:
                transport.abort()
            return ("failed", "timeout")
        except OSError as exc:
            name = type(exc).__name__
            if exc.errno and type(exc) is OSError:
                name = f"OSError {os.strerror(exc.errno)}"
            return ("failed", name)

    async def open_many(
        self, specs: list[dict[str, Any]], *, concurrency: int, batch: int, pause: float, timeout: float
    ) -> dict[str, Any]:
        started = time.time()
        refused: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        opened = 0
        batch = batch or len(specs) or 1
        for offset in range(0, len(specs), batch):
            pending = iter(specs[offset : offset + batch])

            async def worker(pending: Iterator[dict[str, Any]] = pending) -> None:
                nonlocal opened
                for spec in pending:
                    outcome, detail = await self.open_one(spec, timeout)
                    if outcome == "opened":
                        opened += 1
                    elif outcome == "refused":
                        refused[detail] += 1
                    else:
                        failed[detail] += 1

            await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, batch)))))
            if pause and offset + batch < len(specs):
                await asyncio.sleep(pause)
        finished = time.time()
        gc.collect()
        gc.freeze()  # long-lived connections: keep them out of later collections
        return {
            "opened": opened,
            "refused": dict(refused),
            "failed": dict(failed),
            "started": started,
            "finished": finished,
            "seconds": finished - started,
            "open": len(self.connections),
        }

    def count(self) -> dict[str, Any]:
        return {"received": self.received, "open": len(self.connections), "closed": dict(self.closed)}

    def report(self) -> dict[str, Any]:
        hist = self.hist
        per_connection = [c.received for c in self.connections]
        answer = {
            "received": self.received,
            "timed": sum(hist),
            "hist": {str(i): n for i, n in enumerate(hist) if n},
            "first_at": self.first_at,
            "last_at": self.last_at,
            "per_connection": {
                "min": min(per_connection, default=0),
                "max": max(per_connection, default=0),
            },
            "open": len(self.connections),
            "closed": dict(self.closed),
        }
        self.hist = [0] * BUCKETS
        self.received = 0
        self.first_at = self.last_at = None
        self.closed = Counter()
        for connection in self.connections:
            connection.received = 0
        return answer

    async def close_all(self, timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        connections = list(self.connections)
        self.all_closed = asyncio.Event()
        for connection in connections:
            connection.close()
        if self.connections:
            try:
                await asyncio.wait_for(self.all_closed.wait(), timeout)
            except TimeoutError:
                pass
        aborted = 0
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
            self.connections.discard(connection)
            aborted += 1
        self.all_closed = None
        gc.unfreeze()
        gc.collect()
        return {
            "closed": len(connections) - aborted,
            "aborted": aborted,
            "seconds": time.monotonic() - started,
        }


async def serve_commands(client: Client) -> None:
    """Read commands from stdin and answer on stdout until ``quit`` or end of input."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 28)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        name = command.get("cmd")
        if name == "open":
            answer = await client.open_many(
                command["specs"],
                concurrency=int(command.get("concurrency", 100)),
                batch=int(command.get("batch", 0)),
                pause=float(command.get("pause", 0.0)),
                timeout=float(command.get("timeout", 10.0)),
            )
        elif name == "count":
            answer = client.count()
        elif name == "report":
            answer = client.report()
        elif name == "close":
            answer = await client.close_all(float(command.get("timeout", 5.0)))
        elif name == "quit":
            break
        else:
            answer = {"error": f"unknown command {name!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    await client.close_all(2.0)


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The runner stops this process (quit, or end of stdin); Ctrl-C is the runner's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.set_threshold(100_000, 50, 100)
    try:
        import uvloop

        uvloop.run(serve_commands(Client()))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve_commands(Client()))


if __name__ == "__main__":
    main()
