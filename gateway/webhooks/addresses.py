"""Callback URL policy and the HTTP requests to callbacks (verification GET, delivery POST).

A callback URL is accepted when (checked at registration and again before every request):

- its scheme is ``http`` or ``https``, it has a host, no user name or password (the secret
  authenticates Eventgate; credentials in a URL would show in logs and pages) and no fragment,
  and it is at most ``MAX_CALLBACK_URL_LENGTH`` ASCII characters (RFC 3986 §2.1: others are
  percent-encoded);
- every address its host resolves to is public: not private, loopback, link-local, multicast,
  reserved or unspecified, IPv4 or IPv6, IPv4-mapped IPv6 checked as IPv4 (the rule of
  ``portal.asyncapi.remote``), nor a 6to4 or Teredo address that embeds such an IPv4 address.
  ``WEBHOOK_ALLOW_PRIVATE_ADDRESSES`` lifts this rule (an administrator's decision).

Requests connect to the address that was checked, with the host name kept for ``Host`` and for
TLS (SNI and certificate check), so a second DNS answer cannot swap in an internal address
(DNS rebinding). Redirects are never followed.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

from django.conf import settings

from portal.asyncapi.remote import PinnedHTTPConnection, PinnedHTTPSConnection, is_public_address

MAX_CALLBACK_URL_LENGTH = 2000
# Bytes of a callback's response body read at most (the challenge echo is short; a delivery's
# response body is ignored).
MAX_RESPONSE_BYTES = 64 * 1024
_CHUNK = 16 * 1024


class CallbackRefused(ValueError):
    """The callback URL breaks the policy (module docstring); ``str(exc)`` says why, safe to show."""


@dataclass(frozen=True, slots=True)
class CallbackTarget:
    """Where to send a request: the URL's parts and the checked IP address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # path and query, e.g. "/hooks?x=1"
    address: str  # the resolved IP address that passed the check


@dataclass(frozen=True, slots=True)
class CallbackResponse:
    """A callback's answer: HTTP status, reason phrase, the first bytes of the body, latency."""

    status: int
    reason: str
    body: bytes
    latency_ms: int


def address_is_public(address: str) -> bool:
    """Whether IP ``address`` may receive webhooks without ``WEBHOOK_ALLOW_PRIVATE_ADDRESSES``.

    ``portal.asyncapi.remote``'s rule (``ipaddress`` ``is_global`` and not multicast, reserved
    or unspecified; IPv4-mapped IPv6 as IPv4), and for 6to4 (RFC 3056) and Teredo (RFC 4380)
    addresses the same rule for the IPv4 addresses they embed: a relay would carry the request
    on to that address. (NAT64 ``64:ff9b::/96``, RFC 6052, lies in the reserved ``::/8``.)
    """
    if not is_public_address(address):
        return False
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.sixtofour, *(ip.teredo or ())]
        return all(is_public_address(str(inner)) for inner in embedded if inner is not None)
    return True


def callback_url_parse(url: str) -> SplitResult:
    """``url`` split, if its form is allowed (scheme, host, no credentials or fragment, length).

    Raises ``CallbackRefused`` naming the problem.
    """
    if len(url) > MAX_CALLBACK_URL_LENGTH:
        raise CallbackRefused(f"The callback URL is longer than {MAX_CALLBACK_URL_LENGTH} characters.")
    if any(ord(char) < 33 or ord(char) == 127 for char in url):
        raise CallbackRefused("The callback URL contains spaces or control characters.")
    if not url.isascii():
        raise CallbackRefused(
            "The callback URL contains non-ASCII characters: percent-encode them, and write an "
            "international domain name in its xn-- form."
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused(f"The callback URL is not valid: {exc}.") from None
    if parts.scheme not in ("http", "https"):
        raise CallbackRefused("The callback URL must start with https:// or http://.")
    if not parts.hostname:
        raise CallbackRefused("The callback URL has no host name.")
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused(
            "The callback URL carries a user name or password; remove it: deliveries are "
            "authenticated by their X-Hub-Signature."
        )
    if parts.fragment or url.endswith("#"):
        raise CallbackRefused("The callback URL has a #fragment, which is never sent to a server.")
    if port == 0:
        raise CallbackRefused("The callback URL has port 0.")
    return parts


def callback_resolve(url: str) -> CallbackTarget:
    """Check ``url`` under the policy and resolve its host; return where to connect.

    Every address the host resolves to must be public (unless allowed), and the first one is
    used. Raises ``CallbackRefused`` naming the rule, or that the host could not be resolved.
    """
    parts = callback_url_parse(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise CallbackRefused(f"The callback host {host!r} could not be resolved ({exc}).") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise CallbackRefused(f"The callback host {host!r} resolves to no address.")
    if not settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES:
        for address in addresses:
            if not address_is_public(address):
                raise CallbackRefused(
                    f"The callback host {host!r} resolves to {address}, a private, loopback, link-local, "
                    "multicast, reserved or unspecified address. Webhooks are delivered to public "
                    "addresses only (an administrator can allow others with "
                    "WEBHOOK_ALLOW_PRIVATE_ADDRESSES)."
                )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return CallbackTarget(url=url, scheme=parts.scheme, host=host, port=port, path=path, address=addresses[0])


class _DeadlineReader(io.RawIOBase):
    """The raw reads of a response: each may wait only until ``deadline`` (``time.monotonic()``
    seconds), so a callback trickling bytes cannot stretch the exchange. Reads through the
    socket's own ``SocketIO`` (``makefile``), which keeps the socket open until the response is
    closed even after the connection lets go of it (``Connection: close`` answers)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the callback's response did not arrive in time")
        self._sock.settimeout(remaining)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineSocket:
    """What ``http.client.HTTPResponse`` needs of a socket (``makefile("rb")``), reading
    through ``_DeadlineReader``."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _DeadlineMixin:
    """Connect, send and read of one HTTP exchange under one deadline (``time.monotonic()``
    seconds): each socket operation may wait only for the time left, never a fresh timeout."""

    deadline: float
    sock: socket.socket | None

    def _time_left(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the callback did not answer in time")
        return remaining

    def send(self, data: bytes) -> None:  # type: ignore[override]
        # sendall's timeout bounds the whole call (Python 3.5+), not each chunk.
        if self.sock is not None:
            self.sock.settimeout(self._time_left())
        super().send(data)  # type: ignore[misc]

    def getresponse(self) -> http.client.HTTPResponse:
        self._time_left()
        return super().getresponse()  # type: ignore[misc, no-any-return]

    def response_class(self, sock: socket.socket, *args: Any, **kwargs: Any) -> http.client.HTTPResponse:
        # http.client calls self.response_class(self.sock, method=...): reads go through
        # _DeadlineReader instead of the socket's own file.
        return http.client.HTTPResponse(_DeadlineSocket(sock, self.deadline), *args, **kwargs)  # type: ignore[arg-type]


class _DeadlineHTTPConnection(_DeadlineMixin, PinnedHTTPConnection):
    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self._time_left())


class _DeadlineHTTPSConnection(_DeadlineMixin, PinnedHTTPSConnection):
    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self._time_left())
        try:
            # The TLS handshake gets the time left, not a new timeout.
            sock.settimeout(self._time_left())
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def callback_request(
    target: CallbackTarget,
    *,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    timeout: float,
) -> CallbackResponse:
    """Send one request to ``target.address`` (not a new DNS answer) and read the response.

    ``path`` is the request target (path and query). ``timeout`` seconds is a hard deadline for
    the whole exchange: connect, TLS handshake, sending the request, the status line, the
    headers and up to ``MAX_RESPONSE_BYTES`` of body. Every socket operation waits only for the
    time left (``_DeadlineMixin``), so a callback that trickles its status line, headers or body
    byte by byte cannot hold a worker past the deadline. Raises ``TimeoutError`` past the
    deadline, ``OSError`` or ``http.client.HTTPException`` for network and protocol errors.
    """
    connection_class = _DeadlineHTTPSConnection if target.scheme == "https" else _DeadlineHTTPConnection
    connection = connection_class(target.host, target.port, address=target.address, timeout=timeout)
    started = time.monotonic()
    connection.deadline = started + timeout
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        latency_ms = int((time.monotonic() - started) * 1000)
        content = bytearray()
        # read1 makes at most one socket read, each bounded by the deadline.
        while len(content) < MAX_RESPONSE_BYTES and (
            chunk := response.read1(min(_CHUNK, MAX_RESPONSE_BYTES - len(content)))
        ):
            content += chunk
        return CallbackResponse(
            status=response.status, reason=response.reason, body=bytes(content), latency_ms=latency_ms
        )
    finally:
        connection.close()
