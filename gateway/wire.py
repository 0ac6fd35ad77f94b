"""The fan-out fast path: one WebSocket frame built per event, written as is to every subscriber.

A server's text frame is the same bytes for every client: servers never mask (RFC 6455 §5.1,
§5.3), and without extensions (per-message compression is off, ``manage.py serve``) a frame is
a 2-, 4- or 10-byte header and the UTF-8 payload (§5.2). So the bridge (``gateway.bridge``)
builds the frame of an event once (``text_frame``) and each connection's outbox
(``gateway.delivery.Outbox``) hands those bytes straight to the connection's transport instead
of going through ASGI ``send`` (which frames the text again for every connection).

The fast path is taken only when it is exactly equivalent to ``send``:

- the server is uvicorn's ``websockets-sansio`` protocol (``direct_socket`` recognises it from
  the ASGI ``send`` callable; under daphne or another server ``send`` is used);
- the connection negotiated no extension;
- the handshake is complete and no close frame was sent or received
  (``DirectSocket.ready``), and the transport is below its high-water mark (uvicorn's
  ``writable`` event, set by ``pause_writing``/``resume_writing``): a client that reads slowly
  falls back to the outbox queue and its ``send``, which waits, so the slow-consumer policy
  (``GATEWAY_SLOW_CONSUMER_POLICY``) applies exactly as before.
"""

from __future__ import annotations

from typing import Any

try:  # uvicorn is a dependency, but the gateway also runs under daphne
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

_FIN_TEXT = 0x81  # FIN bit + opcode 0x1 (text), RFC 6455 §5.2


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame carrying ``payload`` (UTF-8 bytes).

    RFC 6455 §5.2: payload length in 7 bits (< 126), or 126 + 16-bit, or 127 + 64-bit, network
    byte order. Raises ``ValueError`` for a payload of 2**63 bytes or more.
    """
    length = len(payload)
    if length < 126:
        header = bytes((_FIN_TEXT, length))
    elif length < 0x10000:
        header = bytes((_FIN_TEXT, 126)) + length.to_bytes(2, "big")
    elif length < 1 << 63:
        header = bytes((_FIN_TEXT, 127)) + length.to_bytes(8, "big")
    else:
        raise ValueError(f"payload of {length} bytes is too long for one frame")
    return header + payload


class DirectSocket:
    """A uvicorn ``websockets-sansio`` connection the outbox may write pre-built frames to."""

    __slots__ = ("protocol", "transport", "writable")

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.transport = protocol.transport
        self.writable = protocol.writable  # asyncio.Event: clear while the transport is paused

    def ready(self) -> bool:
        """Whether a frame written now reaches the client in order and without waiting: open
        (handshake done, no close frame sent, transport not closing: uvicorn closes it when the
        client's close frame arrives or the connection is lost) and below the high-water mark."""
        protocol = self.protocol
        return (
            self.writable.is_set()
            and protocol.handshake_complete
            and not protocol.close_sent
            and not self.transport.is_closing()
        )

    def write(self, frame: bytes) -> None:
        """Hand ``frame`` (from ``text_frame``) to the transport (never waits). Call only when
        ``ready()``."""
        self.transport.write(frame)


def direct_socket(send: Any) -> DirectSocket | None:
    """The connection behind an ASGI ``send`` callable, when the fast path applies to it (see
    the module docstring); else None (daphne, the SSE ``http`` protocol, compression on, a test
    double)."""
    protocol = getattr(send, "__self__", None)
    if WebSocketsSansIOProtocol is None or type(protocol) is not WebSocketsSansIOProtocol:
        return None
    if protocol.conn.extensions or protocol.transport is None:
        return None
    return DirectSocket(protocol)
