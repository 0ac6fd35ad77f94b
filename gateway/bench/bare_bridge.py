"""BASELINE (a) of the benchmark, not part of the product: a bare bridge with no management.

A minimal aio-pika consumer that forwards events to ``websockets`` clients, to show what the
same machine does without Eventgate's work (no authentication, plans, metering, throttling,
control messages or slow-consumer policy). Run as ``python -m gateway.bench.bare_bridge --port P
--amqp-url URL --exchange NAME --api SLUG --version V``:

- one AMQP connection, one exclusive auto-delete server-named queue bound to ``--exchange`` with
  ``<api>.<version>.#`` (the bench API's routing keys, ``gateway.publishing.routing_key``),
  consumed with ``no_ack``; RabbitMQ deletes the queue when the connection goes;
- a ``websockets`` server (new asyncio API, ``compression=None``, uvloop, default 20 s pings,
  listen backlog 2,048 as uvicorn's)
  on 127.0.0.1:P; a client connecting to ``ws://127.0.0.1:P/<channel address>`` (e.g.
  ``/ticks/7``) receives the events of that channel;
- per event: one dict lookup by routing key and ``websockets.broadcast()`` of the body as
  received (a text frame), to every client of the channel.

Prints ``{"ready": true, "port": P}`` on stdout once both sides are up; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import aio_pika
from websockets.asyncio.server import ServerConnection, broadcast, serve

from gateway.publishing import routing_key


class BareBridge:
    """Routing key → the set of connected clients of that channel."""

    def __init__(self, *, api: str, version: str) -> None:
        self.api, self.version = api, version
        self.clients: dict[str, set[ServerConnection]] = {}

    async def handler(self, connection: ServerConnection) -> None:
        address = (connection.request.path if connection.request else "/").split("?", 1)[0].strip("/")
        key = routing_key(api=self.api, version=self.version, address=address)
        clients = self.clients.setdefault(key, set())
        clients.add(connection)
        try:
            await connection.wait_closed()
        finally:
            clients.discard(connection)
            if not clients:
                self.clients.pop(key, None)

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        clients = self.clients.get(message.routing_key or "")
        if clients:
            broadcast(clients, message.body.decode())


async def run(args: argparse.Namespace) -> None:
    bridge = BareBridge(api=args.api, version=args.version)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    connection = await aio_pika.connect(
        args.amqp_url, client_properties={"connection_name": "bench-bare-bridge"}
    )
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(args.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        prefix = routing_key(api=args.api, version=args.version, address="x").rsplit(".", 1)[0]
        await queue.bind(exchange, f"{prefix}.#")
        await queue.consume(bridge.on_message, no_ack=True)
        # backlog: uvicorn's default, so both servers queue the same number of pending accepts.
        async with serve(bridge.handler, "127.0.0.1", args.port, compression=None, backlog=2048) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            sys.stdout.write(json.dumps({"ready": True, "port": port, "queue": queue.name}) + "\n")
            sys.stdout.flush()
            await stop.wait()
    finally:
        await connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark baseline: aio-pika → websockets.broadcast().")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--exchange", default="eventgate.events")
    parser.add_argument("--api", required=True)
    parser.add_argument("--version", required=True)
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(run(args))


if __name__ == "__main__":
    main()
