"""``manage.py serve``: run the portal, REST API and gateway in one uvicorn process.

Why uvicorn with its ``websockets-sansio`` protocol rather than daphne (docs/gateway.md,
"Server"; figures in docs/performance.md):

- the gateway must send registered close codes (1008, 1009, 1011, 1013; RFC 6455 §7.4.1);
  daphne's WebSocket stack (autobahn) only sends 1000 and 3000–4999;
- a send to a client that stops reading waits once the socket's write buffer is full
  (backpressure), so the gateway can bound each connection's outbound queue; daphne buffers
  without limit inside Twisted and never tells the application;
- incoming messages over ``GATEWAY_MAX_MESSAGE_BYTES`` are refused by the protocol itself with
  1009 before they are read into memory, and unanswered pings close dead connections
  (``GATEWAY_PING_INTERVAL`` / ``GATEWAY_PING_TIMEOUT``);
- per-message compression is off: it costs several times the memory per connection;
- ``websockets-sansio`` (rather than uvicorn's older ``websockets`` protocol) keeps no task per
  connection (keep-alive pings run on timers), and exposes the transport the fan-out fast path
  writes pre-built frames to (``gateway.wire``).

The access log is on, with query strings cut from every logged path: a browser's credential may
travel as ``?access_token=``, and credentials never reach a log.

SIGTERM and SIGINT end the process through ``SystemExit`` once uvicorn's graceful shutdown is
done (uvicorn re-raises the signal it caught; with the default handler the process would die
of it and skip its ``atexit`` hooks, among them the metering's final flush of usage counts).
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class QueryStringRedactor(logging.Filter):
    """Cuts the query string from the paths in uvicorn's log records: its access log
    (``args[2]``) and its WebSocket lines (``'%s - "WebSocket %s" 403'``, ``args[1]``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                arg.split("?", 1)[0] if isinstance(arg, str) and arg.startswith("/") else arg
                for arg in record.args
            )
        return True


def server_config(*, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of a gateway process: ``portal.asgi:application`` with the
    gateway's WebSocket limits from settings (bytes, seconds)."""
    options: dict[str, Any] = dict(
        app=settings.ASGI_APPLICATION.replace(".application", ":application"),
        host=host,
        port=port,
        ws="websockets-sansio",
        ws_max_size=settings.GATEWAY_MAX_MESSAGE_BYTES,
        ws_ping_interval=settings.GATEWAY_PING_INTERVAL,
        ws_ping_timeout=settings.GATEWAY_PING_TIMEOUT,
        ws_per_message_deflate=False,
        lifespan="off",  # Channels' router has no lifespan handler
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
        log_config=None,  # Django's LOGGING configures the root logger
    )
    options.update(overrides)
    return uvicorn.Config(**options)


def _exit(signum: int, frame: FrameType | None) -> None:
    """Signal handler: leave through ``SystemExit`` (status 128 + signal number, as a shell
    reports a process killed by it), so ``atexit`` hooks run."""
    raise SystemExit(128 + signum)


class Command(BaseCommand):
    help = "Serve the portal, REST API and gateway (uvicorn, websockets-sansio protocol)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)

    def handle(self, *args: Any, host: str, port: int, **options: Any) -> None:
        for name in ("uvicorn.access", "uvicorn.error"):
            logging.getLogger(name).addFilter(QueryStringRedactor())
        # uvicorn swaps in its own handlers while serving and, once shut down, restores these
        # and raises the signal again: these then exit cleanly.
        signal.signal(signal.SIGTERM, _exit)
        signal.signal(signal.SIGINT, _exit)
        uvicorn.Server(server_config(host=host, port=port)).run()
