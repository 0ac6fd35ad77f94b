"""The benchmark's publisher: events at a paced rate, in its own OS process.

Run as ``python -m gateway.bench.publisher --mode amqp --amqp-url URL --exchange NAME --api SLUG
--version V`` (through RabbitMQ, the path providers use: ``gateway.publishing.routing_key`` and
``event_message``, publisher confirms off) or ``--mode pushpin --endpoint
http://127.0.0.1:<port>/publish/`` (Pushpin's HTTP publish API, GRIP ``ws-message`` items).

Every event's body is ``{"published_at":<Unix seconds>,"seq":<n>,"pad":"xxxx…"}`` (100 bytes),
so a frame that forwards the body as is carries its publish time too; in amqp mode the same time
travels in the ``eg-published-at`` header, which the gateway puts in its frame.

Pacing: every ``TICK`` seconds the events due by then (``rate × elapsed``) are published
together, in one socket write (amqp: the AMQP frames of the tick marshalled into one buffer on
aiormq's write queue) or one HTTP POST (pushpin). The events of a tick share one timestamp.

Control: one JSON command per line on stdin, one answer per line on stdout:
``{"cmd":"rate","events_per_second":R,"channels":["ticks/0",…],"seconds":S}`` publishes
``round(R × S)`` events spread round-robin over the channels → ``{"published":n,"started":t,
"seconds":s}`` (``started``: Unix seconds of the first publish; ``seconds``: until the last one,
longer than S if the publisher could not keep up); ``{"cmd":"quit"}`` (or end of stdin) ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any
from urllib.parse import urlsplit

TICK = 0.005  # seconds between publishing rounds
# Most events in one write or POST: a publisher that fell behind catches up in pieces (Pushpin
# 1.36 refuses or resets publish requests of a few MB).
MAX_BATCH = 1000
BODY_BYTES = 100


def event_body(published_at: float, seq: int) -> bytes:
    """The payload of one benchmark event, padded to ``BODY_BYTES`` bytes."""
    head = b'{"published_at":%.6f,"seq":%d,"pad":"' % (published_at, seq)
    return head + b"x" * max(0, BODY_BYTES - len(head) - 2) + b'"}'


class AmqpSink:
    """Publishes through RabbitMQ: ``event_message`` per event, one write per tick."""

    def __init__(self, *, amqp_url: str, exchange: str, api: str, version: str) -> None:
        self.amqp_url, self.exchange_name, self.api, self.version = amqp_url, exchange, api, version
        self._keys: dict[str, str] = {}

    async def connect(self) -> None:
        import aio_pika

        self.connection = await aio_pika.connect(
            self.amqp_url, client_properties={"connection_name": "bench"}
        )
        channel = await self.connection.channel(publisher_confirms=False)
        await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        self.channel = await channel.get_underlay_channel()

    async def send(self, events: list[tuple[str, bytes]], published_at: float) -> None:
        from aiormq.abc import ChannelFrame
        from pamqp import commands
        from pamqp.body import ContentBody
        from pamqp.header import ContentHeader

        from gateway.publishing import event_message, routing_key

        frames: list[Any] = []
        for address, body in events:
            key = self._keys.get(address)
            if key is None:
                key = self._keys[address] = routing_key(api=self.api, version=self.version, address=address)
            message = event_message(
                api=self.api, version=self.version, address=address, payload=body, published_at=published_at
            )
            frames.append(commands.Basic.Publish(exchange=self.exchange_name, routing_key=key))
            frames.append(ContentHeader(properties=message.properties, body_size=len(body)))
            frames.append(ContentBody(body))
        drained = asyncio.get_running_loop().create_future()
        channel = self.channel
        await channel.write_queue.put(
            ChannelFrame.marshall(channel_number=channel.number, frames=frames, drain_future=drained)
        )
        await drained  # the socket took it: back-pressure from RabbitMQ slows the publisher

    async def close(self) -> None:
        await self.connection.close()


class PushpinSink:
    """Publishes through Pushpin's HTTP publish endpoint: one POST (keep-alive) per tick."""

    def __init__(self, *, endpoint: str) -> None:
        parts = urlsplit(endpoint)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path or "/publish/"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def send(self, events: list[tuple[str, bytes]], published_at: float) -> None:
        items = [
            {"channel": address, "formats": {"ws-message": {"content": body.decode()}}}
            for address, body in events
        ]
        payload = json.dumps({"items": items}, separators=(",", ":")).encode()
        for attempt in range(2):
            try:
                await self._post(payload)
                return
            except (ConnectionError, asyncio.IncompleteReadError):
                if attempt:
                    raise
                await self.connect()

    async def _post(self, payload: bytes) -> None:
        assert self.reader is not None and self.writer is not None
        self.writer.write(
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("Pushpin closed the publish connection")
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                close = True
        body = await self.reader.readexactly(length) if length else b""
        status = int(status_line.split()[1])
        if status >= 300:
            detail = body[:200].decode(errors="replace")
            raise RuntimeError(f"Pushpin publish answered {status_line.decode().strip()}: {detail}")
        if close:
            await self.connect()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Publisher:
    def __init__(self, sink: AmqpSink | PushpinSink) -> None:
        self.sink = sink
        self.seq = 0

    async def rate(self, *, events_per_second: float, channels: list[str], seconds: float) -> dict[str, Any]:
        """Publish ``round(events_per_second × seconds)`` events round-robin over ``channels``."""
        total = max(0, round(events_per_second * seconds))
        sent = 0
        count = len(channels)
        started = time.time()
        origin = time.perf_counter()
        while sent < total:
            elapsed = time.perf_counter() - origin
            due = min(total, int(events_per_second * elapsed) + 1, sent + MAX_BATCH) - sent
            if due > 0:
                now = time.time()
                seq = self.seq
                events = [(channels[(seq + i) % count], event_body(now, seq + i)) for i in range(due)]
                await self.sink.send(events, now)
                self.seq += due
                sent += due
            elapsed = time.perf_counter() - origin
            behind = min(total, int(events_per_second * elapsed) + 1) > sent
            await asyncio.sleep(0 if behind else TICK - elapsed % TICK)
        return {"published": sent, "started": started, "seconds": time.time() - started}


async def serve_commands(publisher: Publisher) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await publisher.sink.connect()
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if command.get("cmd") == "rate":
                answer = await publisher.rate(
                    events_per_second=float(command["events_per_second"]),
                    channels=list(command["channels"]),
                    seconds=float(command["seconds"]),
                )
            elif command.get("cmd") == "quit":
                break
            else:
                answer = {"error": f"unknown command {command.get('cmd')!r}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        await publisher.sink.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("amqp", "pushpin"), required=True)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--exchange", default="eventgate.events")
    parser.add_argument("--api", default="bench")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--endpoint", "--url", dest="endpoint", default="http://127.0.0.1:5561/publish/")
    args = parser.parse_args(argv)
    sink: AmqpSink | PushpinSink
    if args.mode == "amqp":
        sink = AmqpSink(amqp_url=args.amqp_url, exchange=args.exchange, api=args.api, version=args.version)
    else:
        sink = PushpinSink(endpoint=args.endpoint)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner stops this process
    try:
        import uvloop

        uvloop.run(serve_commands(Publisher(sink)))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve_commands(Publisher(sink)))


if __name__ == "__main__":
    main()
