"""Remote (http/https) $refs: off by default; when enabled, only allow-listed hosts at public
addresses, with a timeout, a size cap and no redirects. A local HTTP server on 127.0.0.1 serves
the references (ASYNCAPI_REMOTE_REFS_ALLOW_PRIVATE, for tests only, lifts the address check)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from portal.asyncapi import AsyncAPIError
from portal.asyncapi.remote import is_public_address
from portal.models import API, APIVersion, Channel, Operation
from portal.services.apis import api_import

PRICE = b"""Price:
  type: object
  properties:
    amount: {type: number}
    currency: {$ref: 'common.yaml#/Currency'}
"""
COMMON = b"""Currency: {type: string, enum: [USD, EUR]}
"""
RELEASE = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow.yaml":
            RELEASE.wait(10)
            return
        if self.path == "/moved.yaml":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data")
            self.end_headers()
            return
        body = {
            "/schemas/price.yaml": PRICE,
            "/schemas/common.yaml": COMMON,
            "/big.yaml": b"x: 1\n" * 1000,
        }.get(self.path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/yaml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ref_server() -> Iterator[str]:
    """Base URL of a local HTTP server serving the referenced files."""
    RELEASE.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    RELEASE.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def remote_enabled(settings):
    settings.ASYNCAPI_REMOTE_REFS_ENABLED = True
    settings.ASYNCAPI_REMOTE_REF_HOSTS = ["127.0.0.1"]
    settings.ASYNCAPI_REMOTE_REFS_ALLOW_PRIVATE = True
    settings.ASYNCAPI_REMOTE_REF_TIMEOUT = 5
    settings.ASYNCAPI_REMOTE_REF_MAX_BYTES = 1024 * 1024
    return settings


def document(ref: str) -> str:
    return f"""asyncapi: 2.6.0
info: {{title: Prices, version: 1.0.0}}
channels:
  prices:
    subscribe:
      message:
        payload: {{$ref: '{ref}'}}
"""


def row_counts() -> tuple[int, ...]:
    return tuple(model.objects.count() for model in (API, APIVersion, Channel, Operation))


def refused(alice, ref: str) -> AsyncAPIError:
    before = row_counts()
    with pytest.raises(AsyncAPIError) as error:
        api_import(provider=alice, content=document(ref), filename="prices.yaml")
    assert row_counts() == before
    return error.value


def test_remote_refs_are_off_by_default_naming_the_setting(alice, ref_server):
    error = refused(alice, f"{ref_server}/schemas/price.yaml#/Price")
    assert "remote references are off" in error.message
    assert "ASYNCAPI_REMOTE_REFS_ENABLED" in error.message
    assert (error.filename, error.line, error.pointer) == (
        "prices.yaml",
        7,
        "/channels/prices/subscribe/message/payload/$ref",
    )


def test_remote_ref_to_loopback_is_refused_even_when_allow_listed(alice, ref_server, remote_enabled):
    remote_enabled.ASYNCAPI_REMOTE_REFS_ALLOW_PRIVATE = False
    error = refused(alice, f"{ref_server}/schemas/price.yaml#/Price")
    assert "resolves to 127.0.0.1, a private, loopback" in error.message
    assert error.line == 7


def test_a_name_resolving_to_loopback_is_refused(alice, ref_server, remote_enabled):
    remote_enabled.ASYNCAPI_REMOTE_REFS_ALLOW_PRIVATE = False
    remote_enabled.ASYNCAPI_REMOTE_REF_HOSTS = ["localhost"]
    port = ref_server.rsplit(":", 1)[1]
    error = refused(alice, f"http://localhost:{port}/schemas/price.yaml#/Price")
    assert "a private, loopback" in error.message


def test_remote_ref_to_a_host_not_allow_listed_is_refused(alice, ref_server, remote_enabled):
    remote_enabled.ASYNCAPI_REMOTE_REF_HOSTS = ["schemas.example.com"]
    error = refused(alice, f"{ref_server}/schemas/price.yaml#/Price")
    assert (
        'host "127.0.0.1", which is not in ASYNCAPI_REMOTE_REF_HOSTS (schemas.example.com)' in error.message
    )


def test_remote_ref_larger_than_the_cap_is_refused(alice, ref_server, remote_enabled):
    remote_enabled.ASYNCAPI_REMOTE_REF_MAX_BYTES = 1000
    error = refused(alice, f"{ref_server}/big.yaml")
    assert "larger than 1,000 bytes (ASYNCAPI_REMOTE_REF_MAX_BYTES)" in error.message


def test_remote_ref_that_does_not_answer_in_time_is_refused(alice, ref_server, remote_enabled):
    remote_enabled.ASYNCAPI_REMOTE_REF_TIMEOUT = 0.2
    error = refused(alice, f"{ref_server}/slow.yaml")
    assert "took longer than 0.2 seconds (ASYNCAPI_REMOTE_REF_TIMEOUT)" in error.message


def test_remote_redirects_are_not_followed(alice, ref_server, remote_enabled):
    error = refused(alice, f"{ref_server}/moved.yaml")
    assert "does not follow redirects" in error.message
    assert "169.254.169.254" in error.message


def test_remote_ref_answering_404_is_refused(alice, ref_server, remote_enabled):
    error = refused(alice, f"{ref_server}/nothing.yaml")
    assert "answered HTTP 404" in error.message


def test_allowed_remote_refs_are_fetched_and_bundled_into_the_document(alice, ref_server, remote_enabled):
    url = f"{ref_server}/schemas/price.yaml"
    version = api_import(provider=alice, content=document(f"{url}#/Price"), filename="prices.yaml")
    payload = version.channels.get().operations.get().messages[0]["payload"]
    # common.yaml is resolved relative to the URL of price.yaml.
    assert payload["properties"]["currency"] == {"type": "string", "enum": ["USD", "EUR"]}
    stored = version.document["channels"]["prices"]["subscribe"]["message"]["payload"]
    assert stored["properties"]["currency"] == {"type": "string", "enum": ["USD", "EUR"]}
    assert set(version.source_files) == {url, f"{ref_server}/schemas/common.yaml"}


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("224.0.0.1", False),
        ("0.0.0.0", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("ff02::1", False),
    ],
)
def test_only_public_addresses_count_as_public(address, public):
    assert is_public_address(address) is public
