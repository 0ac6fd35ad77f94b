"""Fetching remote (http/https) ``$ref`` targets, for administrators who enable it.

Off by default. When ``ASYNCAPI_REMOTE_REFS_ENABLED`` is set, a reference is fetched only when:

- its scheme is http or https, with no user name or password in the URL;
- its host name is in ``ASYNCAPI_REMOTE_REF_HOSTS`` (exact, case-insensitive match);
- every address the name resolves to is public: not private, loopback, link-local, multicast,
  reserved or unspecified (``ipaddress``'s ``is_global``, IPv4-mapped IPv6 checked as IPv4).
  The connection then goes to the address that was checked, with the host name kept for the
  ``Host`` header and TLS (SNI and certificate check), so a second DNS answer cannot swap in
  another address (DNS rebinding);
- it answers 200 within ``ASYNCAPI_REMOTE_REF_TIMEOUT`` seconds (connect and whole body), with
  at most ``ASYNCAPI_REMOTE_REF_MAX_BYTES`` bytes. Redirects are refused, not followed.

``ASYNCAPI_REMOTE_REFS_ALLOW_PRIVATE`` lifts the address check; it exists for tests that serve
references from 127.0.0.1 and must stay off in production.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from urllib.parse import urlsplit

from django.conf import settings

from portal.asyncapi.errors import AsyncAPIError

_CHUNK = 64 * 1024


class PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to ``address`` (already checked) while ``host`` stays the name in ``Host``."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As ``PinnedHTTPConnection``, with TLS verified against the host name (SNI)."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


def fetch_remote(url: str) -> bytes:
    """The body of ``url`` (no fragment), fetched under the rules of the module docstring.

    Raises ``AsyncAPIError`` (without pointer; the caller adds where the reference is) naming
    the setting or the rule that refused it, or what went wrong while fetching.
    """
    if not settings.ASYNCAPI_REMOTE_REFS_ENABLED:
        raise AsyncAPIError(
            f'the reference to "{url}" is remote, and remote references are off on this server; an '
            "administrator can enable them with ASYNCAPI_REMOTE_REFS_ENABLED and allow hosts in "
            "ASYNCAPI_REMOTE_REF_HOSTS, or upload a .zip holding the referenced files"
        )
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise AsyncAPIError(f'the reference "{url}" is not an http or https URL')
    if parts.username or parts.password:
        raise AsyncAPIError(
            f'the reference "{url}" carries a user name or password; Eventgate does not send them'
        )
    allowed = {name.lower() for name in settings.ASYNCAPI_REMOTE_REF_HOSTS}
    if host not in allowed:
        raise AsyncAPIError(
            f'the reference "{url}" is on host "{host}", which is not in ASYNCAPI_REMOTE_REF_HOSTS '
            f"({', '.join(sorted(allowed)) or 'empty'})"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise AsyncAPIError(f'the reference "{url}" has an invalid port') from None
    address = _checked_address(host, port, url)
    timeout = float(settings.ASYNCAPI_REMOTE_REF_TIMEOUT)
    connection_class = PinnedHTTPSConnection if parts.scheme == "https" else PinnedHTTPConnection
    connection = connection_class(host, port, address=address, timeout=timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        return _get(connection, path, url, timeout)
    except TimeoutError:
        raise AsyncAPIError(
            f'fetching "{url}" took longer than {timeout:g} seconds (ASYNCAPI_REMOTE_REF_TIMEOUT)'
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise AsyncAPIError(f'"{url}" could not be fetched: {exc}') from None
    finally:
        connection.close()


def _checked_address(host: str, port: int, url: str) -> str:
    """The first address ``host`` resolves to, after checking that every one of them is public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise AsyncAPIError(f'the host of "{url}" could not be resolved: {exc}') from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not settings.ASYNCAPI_REMOTE_REFS_ALLOW_PRIVATE:
        for address in addresses:
            if not is_public_address(address):
                raise AsyncAPIError(
                    f'the host of "{url}" resolves to {address}, a private, loopback, link-local, multicast '
                    "or reserved address; Eventgate fetches references only from public addresses"
                )
    if not addresses:
        raise AsyncAPIError(f'the host of "{url}" resolves to no address')
    return addresses[0]


def is_public_address(address: str) -> bool:
    """Whether the IP ``address`` (text, IPv4 or IPv6, an IPv6 zone allowed) is a public unicast
    address: not private, loopback, link-local, multicast, reserved or unspecified (IANA special
    registries via ``ipaddress.is_global``); an IPv4-mapped IPv6 address is judged as IPv4."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def _get(connection: http.client.HTTPConnection, path: str, url: str, timeout: float) -> bytes:
    limit = int(settings.ASYNCAPI_REMOTE_REF_MAX_BYTES)
    deadline = time.monotonic() + timeout
    connection.request(
        "GET",
        path,
        headers={"Accept": "application/yaml, application/json, text/plain, */*", "User-Agent": "Eventgate"},
    )
    response = connection.getresponse()
    if 300 <= response.status < 400:
        raise AsyncAPIError(
            f'"{url}" answered a redirect (HTTP {response.status}) to '
            f'"{response.getheader("Location", "")}"; '
            "Eventgate does not follow redirects for references: refer to the final URL"
        )
    if response.status != 200:
        raise AsyncAPIError(f'"{url}" answered HTTP {response.status} {response.reason}')
    too_large = AsyncAPIError(f'"{url}" is larger than {limit:,} bytes (ASYNCAPI_REMOTE_REF_MAX_BYTES)')
    length = response.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    body = bytearray()
    # read1 returns after one socket read, so the deadline is checked between every two reads: a
    # server trickling a byte at a time cannot stretch the fetch past the timeout.
    while chunk := response.read1(min(_CHUNK, limit + 1 - len(body))):
        body += chunk
        if len(body) > limit:
            raise too_large
        if time.monotonic() > deadline:
            raise TimeoutError
    return bytes(body)
