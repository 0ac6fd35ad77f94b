"""Clean-up always runs (issue 4, "Live connections"): a client that vanishes without a close frame
(its process frozen: the ping timeout; killed: the kernel closes its socket; its TCP connection
reset), a send on a socket that closed meanwhile, and frames the protocol refuses. After each, the
server's open-connection count is back to zero and its queue has no binding left; the one consumer
on it is the bridge's own (docs/delivery.md)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.publishing import EventPublisher
from tests.fixtures.servers import gateway_start, gateway_status, rabbitmq_bindings, rabbitmq_consumers

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not shutil.which("rabbitmqctl"), reason="needs rabbitmqctl to list bindings"),
]

# A client in its own process: connects (multiplexed when channels are given, subscribing to
# each), says "open" once the gateway acknowledged everything, then idles.
CLIENT = """
import json, sys, time
from websockets.sync.client import connect
url, channels = sys.argv[1], sys.argv[2:]
ws = connect(url)
for n, channel in enumerate(channels):
    ws.send(json.dumps({"type": "subscribe", "channel": channel, "id": n}))
    assert json.loads(ws.recv(timeout=10))["type"] == "ack"
print("open", flush=True)
time.sleep(600)
"""


@pytest.fixture
def server(transactional_db, tmp_path: Path):
    """A gateway that pings every 0.5 s and gives up on a client after 0.5 s more."""
    server = gateway_start(tmp_path / "gateway.log", GATEWAY_PING_INTERVAL="0.5", GATEWAY_PING_TIMEOUT="0.5")
    try:
        yield server
    finally:
        server.stop()


def client_start(url: str, *channels: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", CLIENT, url, *channels],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if line.strip() != "open":
        process.kill()
        pytest.fail(f"client did not connect: {line!r} {process.stderr.read() if process.stderr else ''}")
    return process


def wait_until(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def assert_clean(server, *, queue: str) -> None:
    """Zero open connections, no binding on the process's queue, only the bridge's consumer."""
    assert wait_until(lambda: gateway_status(server)["connections"]["total"] == 0), gateway_status(server)
    status = gateway_status(server)
    assert status["bridge"]["bindings"] == 0 and status["bridge"]["binding_demand"] == 0, status
    assert status["bridge"]["websocket_subscribers"] == 0 and status["bridge"]["routes"] == 0, status
    assert rabbitmq_bindings(queue=queue) == []
    assert rabbitmq_consumers(queue=queue) == 1, "the bridge's own consumer, nothing else"
    assert "Exception in ASGI application" not in server.log()


def open_queue(server) -> str:
    status = wait_until(lambda: (s := gateway_status(server))["bridge"] and s["bridge"]["bindings"] and s)
    assert status, gateway_status(server)
    return status["bridge"]["queue"]


def test_frozen_client_is_closed_by_the_ping_timeout_and_cleaned_up(server, stream_api, bob_subscribed):
    url = f"{server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
    client = client_start(url)
    try:
        queue = open_queue(server)
        assert len(rabbitmq_bindings(queue=queue)) == 1
        os.kill(client.pid, signal.SIGSTOP)  # TCP stays up; nothing answers the pings any more
        started = time.monotonic()
        # Ping every 0.5 s, no pong within 0.5 s: the protocol fails the connection, sends a
        # close frame and half-closes TCP, then waits up to its close timeout (websockets'
        # default, 10 s) for the peer's FIN before it drops the socket and tells the app.
        assert wait_until(lambda: gateway_status(server)["connections"]["total"] == 0, timeout=20)
        took = time.monotonic() - started
        assert took < 15, f"closed {took:.1f} s after the client froze"
        assert_clean(server, queue=queue)
    finally:
        client.kill()
        client.wait(5)


def test_killed_multiplexed_client_leaves_no_binding(server, stream_api, bob_subscribed):
    url = f"{server.ws_url}/ws/{stream_api.slug}/1.0.0?access_token={bob_subscribed.secret}"
    client = client_start(url, "prices/ACME", "prices/GLOBEX")
    try:
        queue = open_queue(server)
        assert wait_until(lambda: len(rabbitmq_bindings(queue=queue)) == 2)
    finally:
        client.send_signal(signal.SIGKILL)  # no close frame: the kernel closes the socket
        client.wait(5)
    assert_clean(server, queue=queue)


def raw_handshake(server_ws_url: str, path: str) -> socket.socket:
    """A WebSocket handshake (RFC 6455 §4.1) on a plain socket, for frames no client library
    would send and for resets; returns the socket once the server answered 101."""
    host, port = server_ws_url.removeprefix("ws://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return header + mask + bytes(byte ^ mask[n % 4] for n, byte in enumerate(payload))


def close_code_of(sock: socket.socket) -> int | None:
    """Read frames until the server's close frame; its code (None if the socket just closed)."""
    data = b""
    sock.settimeout(10)
    while True:
        while len(data) >= 2:
            opcode, length = data[0] & 0x0F, data[1] & 0x7F
            offset = 2
            if length == 126:
                if len(data) < 4:
                    break
                length, offset = struct.unpack("!H", data[2:4])[0], 4
            elif length == 127:
                if len(data) < 10:
                    break
                length, offset = struct.unpack("!Q", data[2:10])[0], 10
            if len(data) < offset + length:
                break
            if opcode == 0x8:
                return struct.unpack("!H", data[offset : offset + 2])[0] if length >= 2 else None
            data = data[offset + length :]
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk


@pytest.mark.parametrize(
    "frame, code",
    [
        (client_frame(0x1, b"\xff\xfe not UTF-8"), 1007),  # RFC 6455 §8.1: invalid UTF-8 text
        (client_frame(0x2, b"\x00\x01"), 1008),  # binary frames are not offered
        # Over GATEWAY_MAX_MESSAGE_BYTES: refused on its header, before any payload is read (the
        # payload is not sent: unread bytes would make the server's close a TCP reset).
        (struct.pack("!BBQ", 0x81, 0x80 | 127, 1024 * 1024 + 1) + os.urandom(4), 1009),
        (bytes([0x83, 0x80]) + os.urandom(4), 1002),  # reserved opcode: protocol error
    ],
    ids=["invalid-utf8", "binary", "oversize", "reserved-opcode"],
)
def test_refused_frames_close_the_connection_and_clean_up(server, stream_api, bob_subscribed, frame, code):
    path = f"/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
    sock = raw_handshake(server.ws_url, path)
    try:
        queue = open_queue(server)
        try:
            sock.sendall(frame)
        except ConnectionError:
            pass  # the server may close while a large frame is still being sent
        assert close_code_of(sock) == code
    finally:
        sock.close()
    assert_clean(server, queue=queue)


def test_reset_while_events_flow_cleans_up_after_the_failed_send(server, stream_api, bob_subscribed):
    """The client's TCP connection is reset while the gateway is sending to it: the outbox's
    send fails on the closed socket, and the connection is still cleaned up."""
    path = f"/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"

    async def scenario() -> str:
        sock = raw_handshake(server.ws_url, path)
        queue = open_queue(server)
        async with EventPublisher(confirm=False) as publisher:
            for seq in range(300):
                await publisher.publish(
                    api=stream_api.slug,
                    version="1.0.0",
                    address="prices/ACME",
                    payload={"seq": seq, "pad": "x" * 2000},
                )
                if seq == 100:  # mid-stream: RST, unread data discarded (SO_LINGER 0)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                if seq % 20 == 19:
                    await asyncio.sleep(0.01)
        return queue

    queue = asyncio.run(scenario())
    assert_clean(server, queue=queue)
    assert "Traceback" not in server.log()


def test_status_is_not_served_through_a_proxy(server):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        server.url + "/gateway/status", headers={"X-Forwarded-For": "203.0.113.9"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 404
    assert json.loads(urllib.request.urlopen(server.url + "/gateway/status", timeout=5).read())["connections"]
