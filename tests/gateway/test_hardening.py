"""What an adversarial tester found (issue 4, round F1), each against a real server process:

- payload validation with a backtracking provider pattern must not hold the event loop;
- the end of a rotated key's grace period closes its live connections at once (4401), not at
  the next audit;
- malformed client frames (huge integers, lone surrogates, numbers out of range) get an error
  frame 4400 and the connection stays usable;
- with the channel layer's Redis down, handshakes are refused with 1013 / 503, live connections
  keep streaming and their clean-up still runs;
- ``/sse/`` paths that are not routes answer 404 with the refusal contract's JSON.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.publishing import event_publish
from portal.models import Operation
from portal.services.credentials import api_key_rotate
from tests.fixtures.servers import free_port, gateway_start, gateway_status, sse_open

# A provider pattern that backtracks exponentially on "aaa…ab": each check uses its whole budget.
REDOS_SCHEMA = {
    "type": "object",
    "required": ["symbol", "quantity"],
    "properties": {"symbol": {"type": "string", "pattern": "^(a+)+$"}, "quantity": {"type": "integer"}},
}


async def _errors(client, count: int, timeout: float = 30.0) -> list[dict]:
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        frames.append(json.loads(await asyncio.wait_for(client.recv(), deadline - time.monotonic())))
    return frames


def test_payload_validation_with_a_backtracking_pattern_leaves_the_event_loop_free(
    gateway_server, stream_api, bob_subscribed
):
    Operation.objects.filter(channel__api_version__api=stream_api, action="send").update(
        messages=[{"name": "order", "payload": REDOS_SCHEMA}]
    )
    stream_api.versions.update(validate_payloads=True)
    url = f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/orders?access_token={bob_subscribed.secret}"
    frame = json.dumps({"symbol": "a" * 3000 + "b", "quantity": 1})

    async def scenario() -> tuple[float, list[dict]]:
        async with connect(url) as watcher:
            senders = [await connect(url) for _ in range(20)]
            try:
                for sender in senders:
                    for _ in range(10):
                        await sender.send(frame)
                latencies = []
                replies = asyncio.gather(*(_errors(sender, 10, timeout=60) for sender in senders))
                while not replies.done():
                    started = time.monotonic()
                    await asyncio.wait_for(await watcher.ping(), 30)
                    latencies.append(time.monotonic() - started)
                    await asyncio.sleep(0.05)
                return max(latencies), [error for errors in await replies for error in errors]
            finally:
                for sender in senders:
                    await sender.close()

    worst, errors = asyncio.run(scenario())
    assert len(errors) == 200
    # Over the budget ("took too long to validate") or, on a fast machine, a mismatch: refused.
    assert {error["code"] for error in errors} == {4400}
    # Inline on the loop: 2.4 s (20 connections' checks of 0.1 s each queued before the pong).
    assert worst < 1.0, f"a ping waited {worst:.3f} s while payloads were validated"


def test_the_end_of_a_rotation_grace_period_closes_the_old_keys_idle_connection(
    transactional_db, tmp_path: Path, stream_api, bob_subscribed
):
    # The audit (every 60 s here) cannot be what closes it.
    server = gateway_start(tmp_path / "gateway.log", GATEWAY_AUDIT_INTERVAL="60")
    url = f"{server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"

    async def scenario() -> tuple[int, str, float]:
        async with connect(url) as client:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(api_key_rotate, key=bob_subscribed.key, grace_seconds=2)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(client.recv(), 10)
            closed_at = time.time()
            return closed.value.rcvd.code, closed.value.rcvd.reason, closed_at

    try:
        code, reason, closed_at = asyncio.run(scenario())
    finally:
        server.stop()
    assert (code, reason) == (4401, "Credential expired."), server.log()[-2000:]
    bob_subscribed.key.refresh_from_db()
    late = closed_at - bob_subscribed.key.expires_at.timestamp()
    assert -0.1 < late < 1.0, f"closed {late:.2f} s after the grace period ended"


def test_malformed_frames_get_an_error_frame_and_the_connection_stays_usable(
    gateway_server, stream_api, bob_subscribed
):
    slug, secret = stream_api.slug, bob_subscribed.secret
    huge = "1" * 5000

    async def scenario() -> tuple[list[dict], list[dict], dict]:
        async with connect(f"{gateway_server.ws_url}/ws/{slug}/1.0.0/orders?access_token={secret}") as single:
            single_replies = []
            for text in ('{"n": ' + huge + "}", '{"v": "\\ud800"}', '{"v": 1e999}'):
                await single.send(text)
                single_replies.append(json.loads(await asyncio.wait_for(single.recv(), 5)))
        async with connect(f"{gateway_server.ws_url}/ws/{slug}/1.0.0?access_token={secret}") as multi:
            frames = [
                '{"type": "publish", "channel": "orders", "payload": {"n": ' + huge + '}, "id": 1}',
                '{"type": "publish", "channel": "orders", "payload": {"v": "\\ud800"}, "id": 2}',
                '{"type": "publish", "channel": "orders", "payload": {"v": 1e999}, "id": 3}',
                '{"type": "subscribe", "channel": "prices/\\ud800", "id": 4}',
                json.dumps({"type": "subscribe", "channel": "prices/\u00e9\ud800"}, ensure_ascii=True),
            ]
            multi_replies = []
            for text in frames:
                await multi.send(text)
                multi_replies.append(json.loads(await asyncio.wait_for(multi.recv(), 5)))
            # The writer is alive and the connection usable: a subscribe still gets its ack.
            await multi.send(json.dumps({"type": "subscribe", "channel": "prices/ACME", "id": "ok"}))
            ack = json.loads(await asyncio.wait_for(multi.recv(), 5))
        return single_replies, multi_replies, ack

    single, multi, ack = asyncio.run(scenario())
    expected = ["integer of 5000 digits is too long", "lone UTF-16 surrogate", "1e999 is out of range"]
    for reply, fragment in zip(single, expected, strict=True):
        assert reply["type"] == "error" and reply["code"] == 4400 and fragment in reply["reason"], reply
    for reply, fragment in zip(
        multi, [*expected, "lone UTF-16 surrogate", "lone UTF-16 surrogate"], strict=True
    ):
        assert reply["type"] == "error" and reply["code"] == 4400 and fragment in reply["reason"], reply
        assert "too long: its routing key" not in reply["reason"]
    assert ack == {"type": "ack", "id": "ok", "channel": "prices/ACME"}
    log = gateway_server.log()
    assert "Traceback" not in log and "Client frame failed" not in log


def test_sse_paths_that_are_not_routes_answer_404_with_the_contract_json(gateway_server):
    for path in ("/sse/stock-prices/1.0.0/", "/sse/a/b/", "/sse//x/y", "/sse/a"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(gateway_server.url + path, timeout=5)
        assert refused.value.code == 404, path
        assert refused.value.headers["content-type"] == "application/json"
        body = json.loads(refused.value.read())
        assert body["error"] == "not_found" and body["close_code"] == 4404 and "/sse/<api>" in body["detail"]


@pytest.fixture
def own_redis(tmp_path: Path):
    """A redis-server of this test on a free port (never the machine's Redis): ``(url, process)``."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout != b"PONG\n":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(5)


def test_with_redis_down_handshakes_are_refused_with_1013_and_live_connections_clean_up(
    transactional_db, tmp_path: Path, stream_api, bob_subscribed, own_redis
):
    redis_url, redis_process = own_redis
    server = gateway_start(tmp_path / "gateway.log", REDIS_URL=redis_url)
    slug, secret = stream_api.slug, bob_subscribed.secret
    path = f"/ws/{slug}/1.0.0/prices/ACME?access_token={secret}"

    async def scenario() -> dict:
        seen: dict = {}
        async with connect(server.ws_url + path) as live:
            await asyncio.sleep(0.3)
            redis_process.kill()  # by PID: this test's own redis-server
            redis_process.wait(5)
            await asyncio.sleep(1.5)
            # The live connection stays up and keeps receiving events.
            await event_publish(api=slug, version="1.0.0", address="prices/ACME", payload={"n": 1})
            seen["event"] = json.loads(await asyncio.wait_for(live.recv(), 10))["payload"]
            # A new handshake: refused with 1013 (WebSocket) and 503 (SSE).
            async with connect(server.ws_url + path) as refused:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(refused.recv(), 15)
                seen["refused"] = (closed.value.rcvd.code, closed.value.rcvd.reason)
            stream = await sse_open(server.url, f"/sse/{slug}/1.0.0/prices/ACME?access_token={secret}")
            seen["sse"] = (stream.status, json.loads(await stream.body()))
            await stream.close()
        # Clean-up ran for the live connection: nothing left counted or bound.
        deadline = time.monotonic() + 10
        while True:
            status = gateway_status(server)
            bridge = status["bridge"] or {}
            seen["status"] = status
            if status["connections"]["total"] == 0 and bridge.get("binding_demand", 0) == 0:
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        server.stop()
    log = server.log()
    assert seen["event"] == {"n": 1}
    assert seen["refused"][0] == 1013 and "try again later" in seen["refused"][1], seen["refused"]
    status, body = seen["sse"]
    assert status == 503 and body["close_code"] == 1013 and body["error"] == "unavailable", body
    assert "try again later" in body["detail"]
    assert seen["status"]["connections"]["total"] == 0, seen["status"]
    assert seen["status"]["bridge"]["binding_demand"] == 0 and seen["status"]["bridge"]["bindings"] == 0
    assert "Exception in ASGI application" not in log, log[-3000:]
