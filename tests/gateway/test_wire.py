"""The fan-out fast path (``gateway.wire``): frames built once are valid WebSocket frames, a uvicorn
``websockets-sansio`` connection takes them straight to its transport, and anything that cannot
(backpressure, a queued reply, another server) goes through ``send`` in order."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from gateway.delivery import ChannelFeed, Outbox
from gateway.metering import get_meter
from gateway.wire import direct_socket, text_frame

pytestmark = pytest.mark.usefixtures("gateway_cleanup")

TEMPLATE = "ticks/{n}"


def parse(data: bytes) -> Frame:
    """Parse one server frame with the websockets library's own parser (RFC 6455 §5.2)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 70000])
def test_text_frame_is_what_the_websockets_parser_reads(length):
    payload = ("é" * (length // 2) + "x" * (length % 2)).encode()
    frame = parse(text_frame(payload))
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data == payload
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)


def test_other_servers_and_test_doubles_get_no_fast_path():
    async def send(message):  # what daphne or a test hands the application
        pass

    assert direct_socket(send) is None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def serve(app, port, *, deflate=False):
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        ws_per_message_deflate=deflate,
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task


def shared_event(n: int) -> dict:
    text = f'{{"id":"{n}","payload":{n}}}'
    return {"type": "websocket.send", "text": text, "wire": text_frame(text.encode()), "lat": -1}


@pytest.mark.parametrize("deflate", [False, True], ids=["no-extension", "permessage-deflate"])
async def test_uvicorn_connection_takes_frames_directly_in_order_with_replies_and_meters_them(deflate):
    """Events before accept queue; after it they go straight to the transport (unless the
    client negotiated compression: then every event goes through ``send``); a reply queued
    between events keeps its place; every event is metered once."""
    state: dict = {}
    minute = 29_600_001 + deflate

    async def app(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        outbox = Outbox(send=send, close=lambda code, reason: send({"type": "websocket.close", "code": code}))
        feed = ChannelFeed(outbox, subscription_id=901, channel_template=TEMPLATE)
        outbox.put(shared_event(0), 10, minute, feed)  # before accept: queued
        await send({"type": "websocket.accept"})
        outbox.start()
        state["direct"] = outbox._direct is not None
        await asyncio.sleep(0.05)  # the writer sends event 0
        outbox.put(shared_event(1), 10, minute, feed)
        outbox.enqueue({"type": "websocket.send", "text": '{"type":"ack"}'})
        outbox.put(shared_event(2), 10, minute, feed)  # behind the queued reply
        await asyncio.sleep(0.05)
        for n in range(3, 103):
            outbox.put(shared_event(n), 10, minute, feed)
        await receive()  # until the client leaves (it read all 104 messages)
        state["sent"] = outbox.sent
        outbox.stop()

    port = free_port()
    server, task = await serve(app, port, deflate=deflate)
    try:
        async with connect(f"ws://127.0.0.1:{port}/") as client:
            received = [await asyncio.wait_for(client.recv(), 5) for _ in range(104)]
    finally:
        server.should_exit = True
        await task
    assert state["direct"] is not deflate
    assert received[:4] == [
        '{"id":"0","payload":0}',
        '{"id":"1","payload":1}',
        '{"type":"ack"}',
        '{"id":"2","payload":2}',
    ]
    assert received[4:] == [f'{{"id":"{n}","payload":{n}}}' for n in range(3, 103)]
    assert state["sent"] == 103
    # Event 0 went through send (metered by the writer), the rest through the fast path
    # (tallied on the feed, settled into the meter when the outbox stopped): 103 in all.
    assert get_meter().counts.pop((901, TEMPLATE, "out", minute)) == [103, 1030]
