"""Gateway credentials (``gateway.credentials``): where the secret is found in a handshake, how it
resolves through the shared Redis cache, and how revocation, rotation and expiry reach that cache
and live connections.

Unit tests first (the cache is the real Redis of ``REDIS_URL``, shared with other processes);
end-to-end tests against real gateway processes (``gateway_server``) and ``websockets`` clients
at the end of the module.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta

import pytest
import websockets
from django.conf import global_settings, settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from websockets.asyncio.client import connect

from gateway.credentials import (
    API_KEY,
    CACHE_PREFIX,
    OAUTH_TOKEN,
    SUBPROTOCOL,
    Credential,
    CredentialRedactor,
    credential_from_scope,
    credential_group,
    credential_resolve,
    credentials_usable,
    secret_digest,
)
from gateway.publishing import EventPublisher
from portal.models import APIKey
from portal.services.credentials import api_key_revoke, api_key_rotate, oauth_client_create
from tests.factories import ApplicationFactory, ChannelFactory, OperationFactory
from tests.fixtures.servers import gateway_start, server_env

needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="the credential cache tests need REDIS_URL")


def _ws_scope(*, headers=(), subprotocols=(), query=b"") -> dict:
    return {
        "type": "websocket",
        "headers": list(headers),
        "subprotocols": list(subprotocols),
        "query_string": query,
    }


# --- credential_from_scope -----------------------------------------------------------------------


def test_bearer_header_comes_first_and_the_real_subprotocol_is_echoed():
    scope = _ws_scope(
        headers=[(b"authorization", b"Bearer eg_header")],
        subprotocols=["eventgate.bearer.eg_protocol", SUBPROTOCOL],
        query=b"access_token=eg_query",
    )
    assert credential_from_scope(scope) == ("eg_header", "eventgate.v1")


def test_subprotocol_entry_carries_the_token_but_is_never_echoed():
    scope = _ws_scope(subprotocols=[SUBPROTOCOL, "eventgate.bearer.eg_protocol"], query=b"access_token=eg_q")
    secret, echo = credential_from_scope(scope)
    assert secret == "eg_protocol"
    assert echo == "eventgate.v1"


def test_bearer_subprotocol_alone_echoes_nothing():
    assert credential_from_scope(_ws_scope(subprotocols=["eventgate.bearer.abc"])) == ("abc", None)


def test_access_token_query_parameter_is_the_last_source():
    assert credential_from_scope(_ws_scope(query=b"x=1&access_token=eg_q%2Bx")) == ("eg_q+x", None)


def test_no_credential_and_other_schemes_are_none():
    scope = _ws_scope(headers=[(b"authorization", b"Basic Ym9iOnB3")], subprotocols=["eventgate.bearer."])
    assert credential_from_scope(scope) == (None, None)


def test_sse_http_scope_uses_the_same_sources():
    scope = {"type": "http", "headers": [(b"authorization", b"bearer  tok ")], "query_string": b""}
    assert credential_from_scope(scope) == ("tok", None)


# --- Credential.allows, credential_group ----------------------------------------------------------


def test_api_key_allows_whatever_its_subscriptions_allow():
    key = Credential(API_KEY, 1, 1, None, None)
    assert key.allows(api_slug="stock", channel="prices/{symbol}", direction="send")


def test_token_scope_allows_its_api_direction_or_channel_only():
    token = Credential(OAUTH_TOKEN, 2, 1, frozenset({"stock:receive", "fx:send:rates/{pair}"}), None)
    assert token.allows(api_slug="stock", channel="prices/{symbol}", direction="receive")
    assert token.allows(api_slug="stock", channel="/news", direction="receive")
    assert not token.allows(api_slug="stock", channel="prices/{symbol}", direction="send")
    assert token.allows(api_slug="fx", channel="/rates/{pair}", direction="send")
    assert token.allows(api_slug="fx", channel="rates/{pair}", direction="send")
    assert not token.allows(api_slug="fx", channel="rates/{pair}", direction="receive")
    assert not token.allows(api_slug="fx", channel="orders", direction="send")
    assert not token.allows(api_slug="fxx", channel="rates/{pair}", direction="send")


def test_credential_groups_are_per_kind_and_id():
    assert credential_group(Credential(API_KEY, 7, 1, None, None)) == "gateway.apikey.7"
    assert credential_group(Credential(OAUTH_TOKEN, 7, 1, frozenset(), None)) == "gateway.oauthtoken.7"


# --- CredentialRedactor ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "args", "expected"),
    [
        (
            "< authorization: Bearer %s",
            ("eg_abcdefghijklmnopqrstuvwxyz",),
            "< authorization: Bearer [redacted]",
        ),
        ("< Authorization: Basic Y2xpZW50OnNlY3JldA==", None, "< Authorization: Basic [redacted]"),
        (
            "< sec-websocket-protocol: eventgate.v1, eventgate.bearer.Zx81kLm",
            None,
            "< sec-websocket-protocol: eventgate.v1, eventgate.bearer.[redacted]",
        ),
        (
            "< GET /ws/a/1/p?x=1&access_token=Zx81kLm HTTP/1.1",
            None,
            "< GET /ws/a/1/p?x=1&access_token=[redacted] HTTP/1.1",
        ),
        (
            "body grant_type=client_credentials&client_secret=s3cr3t",
            None,
            "body grant_type=client_credentials&client_secret=[redacted]",
        ),
        (
            '{"access_token": "Zx81kLm", "expires_in": 3600}',
            None,
            '{"access_token": "[redacted]", "expires_in": 3600}',
        ),
        (
            # oauthlib at DEBUG: the token response as a Python dict's repr
            "Issuing token to client id %r (%r), %r.",
            (
                "cid",
                "<Application: x>",
                {"access_token": "Zx81kLm", "refresh_token": "Rf9", "scope": "a:receive"},
            ),
            "Issuing token to client id 'cid' ('<Application: x>'), "
            "{'access_token': '[redacted]', 'refresh_token': '[redacted]', 'scope': 'a:receive'}.",
        ),
        (
            "form %r",
            ({"client_id": "cid", "client_secret": "s3cr3t", "token": b"Tk1"},),
            "form {'client_id': 'cid', 'client_secret': '[redacted]', 'token': b'[redacted]'}",
        ),
        (
            "Request(token='Tk1', token_type_hint='access_token')",
            None,
            "Request(token='[redacted]', token_type_hint='access_token')",
        ),
        (
            "headers %r",
            ({"HTTP_AUTHORIZATION": "Basic Y2xpZW50OnNlY3JldA=="},),
            "headers {'HTTP_AUTHORIZATION': 'Basic [redacted]'}",
        ),
        ("refresh_token=Rf9&password=hunter2", None, "refresh_token=[redacted]&password=[redacted]"),
        ("invalid Bearer 0KW9aBcDeFgHiJkLmNoPqRsTuV here", None, "invalid Bearer [redacted] here"),
        ("key %s leaked", ("eg_abcdefghijklmnopqrstuvwxyz",), "key eg_[redacted] leaked"),
        (
            "token_type_hint=access_token&close code=4401",
            None,
            "token_type_hint=access_token&close code=4401",
        ),
        ("nothing to hide in %s", ("prices/ACME",), "nothing to hide in prices/ACME"),
    ],
)
def test_credential_redactor_masks_credentials_in_log_records(message, args, expected):
    record = logging.LogRecord("uvicorn.error", logging.DEBUG, __file__, 1, message, args, None)
    assert CredentialRedactor().filter(record) is True
    assert record.getMessage() == expected


# --- credential_resolve and the cache -------------------------------------------------------------


@pytest.fixture
def app_key(bob):
    application = ApplicationFactory(owner=bob)
    key, secret = APIKey.generate(application=application)
    return key, secret


@needs_redis
def test_resolve_caches_so_a_second_resolve_makes_no_query(app_key):
    key, secret = app_key
    with CaptureQueriesContext(connection) as first:
        credential = credential_resolve(secret)
    assert credential == Credential(API_KEY, key.pk, key.application_id, None, None)
    assert len(first.captured_queries) == 1
    with CaptureQueriesContext(connection) as second:
        assert credential_resolve(secret) == credential
    assert second.captured_queries == []
    # The cache is Redis and holds the digest, never the secret.
    assert isinstance(caches["default"], RedisCache)
    assert cache.get(CACHE_PREFIX + secret_digest(secret)) is not None
    assert cache.get(CACHE_PREFIX + secret) is None


@needs_redis
def test_unknown_nul_and_oversize_secrets_resolve_to_none(db):
    assert credential_resolve("eg_" + "x" * 40) is None
    with CaptureQueriesContext(connection) as queries:
        assert credential_resolve("eg_" + "x" * 40) is None  # the miss is cached briefly
        assert credential_resolve("eg_a\x00b") is None
        assert credential_resolve("a" * 600) is None
        assert credential_resolve("") is None
        assert credential_resolve(None) is None
    assert queries.captured_queries == []


@needs_redis
def test_revoking_rewrites_the_cache_entry_at_commit(app_key, django_capture_on_commit_callbacks):
    key, secret = app_key
    assert credential_resolve(secret) is not None
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(key=key)
    with CaptureQueriesContext(connection) as queries:
        assert credential_resolve(secret) is None
    assert queries.captured_queries == []  # refused from the cache, which now says "revoked"


@needs_redis
def test_cache_lifetime_never_passes_the_expiry(app_key):
    key, secret = app_key
    key.expires_at = timezone.now() + timedelta(seconds=20)
    key.save()
    credential = credential_resolve(secret)
    assert credential is not None and credential.expires_at == pytest.approx(key.expires_at.timestamp())
    ttl = cache._cache.get_client().ttl(cache.make_and_validate_key(CACHE_PREFIX + secret_digest(secret)))
    assert 0 < ttl <= 20


@needs_redis
def test_expired_key_is_not_served_from_the_cache(app_key):
    key, secret = app_key
    past = time.time() - 1
    # An entry written while the key was valid, whose expiry has passed since.
    cache.set(CACHE_PREFIX + secret_digest(secret), (API_KEY, key.pk, key.application_id, None, past), 300)
    assert credential_resolve(secret) is None


@needs_redis
def test_deactivating_the_owner_refuses_the_cached_key(app_key, bob, django_capture_on_commit_callbacks):
    key, secret = app_key
    assert credential_resolve(secret) is not None
    with django_capture_on_commit_callbacks(execute=True):
        bob.is_active = False
        bob.save()
    assert credential_resolve(secret) is None
    with django_capture_on_commit_callbacks(execute=True):
        bob.is_active = True
        bob.save()
    assert credential_resolve(secret) is not None


def test_credentials_usable_checks_any_number_in_two_queries(app_key, django_assert_max_num_queries):
    key, _ = app_key
    other, _ = APIKey.generate(application=key.application)
    api_key_revoke(key=other)
    credentials = [
        Credential(API_KEY, key.pk, key.application_id, None, None),
        Credential(API_KEY, other.pk, key.application_id, None, None),
        Credential(OAUTH_TOKEN, 10**9, key.application_id, frozenset(), None),
    ]
    with django_assert_max_num_queries(2):
        usable = credentials_usable(credentials)
    assert usable == {(API_KEY, key.pk)}


def _resolve_in_another_process(secret: str) -> str:
    """``credential_resolve(secret)`` in a separate Python process (its own cache client):
    ``"<kind> <id>"`` or ``"None"``."""
    code = (
        "import django, os; django.setup(); from gateway.credentials import credential_resolve; "
        "c = credential_resolve(os.environ['EG_TEST_SECRET']); print(c and f'{c.kind} {c.id}')"
    )
    env = server_env(EG_TEST_SECRET=secret)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@needs_redis
def test_revocation_reaches_the_cache_of_every_process(transactional_db, app_key):
    key, secret = app_key
    assert _resolve_in_another_process(secret) == f"api_key {key.pk}"
    # The other process filled the shared cache: this process resolves without a query.
    with CaptureQueriesContext(connection) as queries:
        assert credential_resolve(secret) is not None
    assert queries.captured_queries == []
    api_key_revoke(key=key)  # autocommit: the cache is rewritten at once
    assert _resolve_in_another_process(secret) == "None"


# --- end to end: real gateway processes, real websockets clients ----------------------------------


def _http(server, path: str, *, data: dict | None = None, auth: tuple[str, str] | None = None):
    """``(status, body text)`` of a GET (or a form POST with ``data``) to ``server``."""
    request = urllib.request.Request(
        server.url + path, data=urllib.parse.urlencode(data).encode() if data is not None else None
    )
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _access_token(server, client_id: str, client_secret: str, scope: str | None = None) -> str:
    data = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
    status, body = _http(server, "/o/token/", data=data, auth=(client_id, client_secret))
    assert status == 200, body
    return json.loads(body)["access_token"]


async def _streams(client, slug: str, address: str, *others) -> bool:
    """Publish one event on ``address`` and receive it on ``client`` (and each of ``others``, on
    the same channel): the connections are accepted and bound to the channel."""
    async with EventPublisher() as publisher:
        event_id = await publisher.publish(api=slug, version="1.0.0", address=address, payload={"n": 1})
    for receiver in (client, *others):
        frame = json.loads(await asyncio.wait_for(receiver.recv(), timeout=10))
        if frame["id"] != event_id:
            return False
    return True


async def _close_code(client, timeout: float = 10) -> int | None:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(client.recv(), timeout=timeout)
    return closed.value.rcvd.code if closed.value.rcvd else None


async def _handshake_close(url: str, **options) -> tuple[int | None, str]:
    """Connect and return the close code and reason the gateway sends at once (a refusal)."""
    async with connect(url, **options) as client:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), timeout=10)
    rcvd = closed.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd else (None, "")


@pytest.fixture
def news_channel(stream_api):
    """A second receivable channel, ``news``, on ``stream_api`` 1.0.0."""
    version = stream_api.versions.get(version="1.0.0")
    OperationFactory(channel=ChannelFactory(api_version=version, key="news", address="news", parameters={}))


@pytest.fixture
def bob_oauth(bob_subscribed, settings):
    """Bob's application's OAuth2 client: ``(client_id, client_secret)``, its secret hashed as
    the server processes expect (not with the tests' fast MD5 hasher)."""
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    client, secret = oauth_client_create(application=bob_subscribed.application)
    return client.client_id, secret


@pytest.mark.e2e
def test_each_credential_source_connects_and_only_the_real_subprotocol_is_echoed(
    gateway_server, stream_api, bob_subscribed
):
    secret = bob_subscribed.secret
    url = f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME"

    async def scenario():
        async with (
            connect(url, additional_headers={"Authorization": f"Bearer {secret}"}) as by_header,
            connect(f"{url}?access_token={secret}") as by_query,
            connect(url, subprotocols=[SUBPROTOCOL, f"eventgate.bearer.{secret}"]) as by_protocol,
        ):
            streamed = await _streams(by_header, stream_api.slug, "prices/ACME", by_query, by_protocol)
            echoed = by_protocol.response.headers.get_all("Sec-WebSocket-Protocol")
            return streamed, by_protocol.subprotocol, echoed, by_header.subprotocol

    streamed, subprotocol, echoed, plain = asyncio.run(scenario())
    assert streamed
    assert (subprotocol, echoed, plain) == ("eventgate.v1", ["eventgate.v1"], None)


@pytest.mark.e2e
def test_oauth_token_scoped_to_one_channel_gets_4405_on_another(
    gateway_server, stream_api, news_channel, bob_subscribed, bob_oauth
):
    base = f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0"
    token = _access_token(gateway_server, *bob_oauth, scope=f"{stream_api.slug}:receive:prices/{{symbol}}")

    async def scenario():
        async with connect(
            f"{base}/prices/ACME", additional_headers={"Authorization": f"Bearer {token}"}
        ) as ok:
            allowed = await _streams(ok, stream_api.slug, "prices/ACME")
        refused = await _handshake_close(
            f"{base}/news", additional_headers={"Authorization": f"Bearer {token}"}
        )
        # The application may receive news (its API key can); only the token's scope lacks it.
        async with connect(f"{base}/news?access_token={bob_subscribed.secret}") as key_client:
            key_allowed = await _streams(key_client, stream_api.slug, "news")
        return allowed, refused, key_allowed

    allowed, (code, reason), key_allowed = asyncio.run(scenario())
    assert allowed and key_allowed
    assert code == 4405, reason
    assert token not in reason


@pytest.mark.e2e
def test_revoked_token_closes_an_idle_connection_within_one_second(
    gateway_server, stream_api, bob_subscribed, bob_oauth
):
    token = _access_token(gateway_server, *bob_oauth)
    url = f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME"
    headers = {"Authorization": f"Bearer {token}"}

    async def scenario():
        async with connect(url, additional_headers=headers) as client:
            assert await _streams(client, stream_api.slug, "prices/ACME")
            status, _ = await asyncio.to_thread(
                _http, gateway_server, "/o/revoke_token/", data={"token": token}, auth=bob_oauth
            )
            revoked_at = time.monotonic()
            code = await _close_code(client)
            elapsed = time.monotonic() - revoked_at
        refused = await _handshake_close(url, additional_headers=headers)
        return status, code, elapsed, refused

    status, code, elapsed, (refused_code, _) = asyncio.run(scenario())
    assert status == 200
    assert code == 4401, gateway_server.log()
    assert elapsed < 1.0  # the issue: revocation reaches idle connections within one second
    assert refused_code == 4401


@pytest.mark.e2e
def test_rotated_key_works_during_the_grace_and_is_refused_after(gateway_server, stream_api, bob_subscribed):
    old_secret = bob_subscribed.secret
    url = f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME"
    _, new_secret = api_key_rotate(key=bob_subscribed.key, grace_seconds=3)
    old = APIKey.objects.get(pk=bob_subscribed.key.pk)

    async def scenario():
        async with (
            connect(f"{url}?access_token={old_secret}") as old_client,
            connect(f"{url}?access_token={new_secret}") as new_client,
        ):
            both = await _streams(old_client, stream_api.slug, "prices/ACME", new_client)
            # The audit closes the old key's connection once the grace ends.
            old_code = await _close_code(old_client, timeout=15)
            after = time.time()
            refused = await _handshake_close(f"{url}?access_token={old_secret}")
            still = await _streams(new_client, stream_api.slug, "prices/ACME")
        return both, old_code, after, refused, still

    both, old_code, after, (refused_code, _), still = asyncio.run(scenario())
    assert both
    assert old_code == 4401
    assert after >= old.expires_at.timestamp()
    assert refused_code == 4401
    assert still


@pytest.mark.e2e
def test_one_revocation_reaches_the_cache_of_every_gateway_process(
    gateway_server, stream_api, bob_subscribed, tmp_path
):
    second = gateway_start(tmp_path / "second.log")
    secret = bob_subscribed.secret
    urls = [
        f"{s.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={secret}"
        for s in (gateway_server, second)
    ]
    try:

        async def scenario():
            async with connect(urls[0]) as one, connect(urls[1]) as two:
                assert await _streams(one, stream_api.slug, "prices/ACME", two)
                # Both processes resolved the key through the shared cache.
                assert cache.get(CACHE_PREFIX + secret_digest(secret)) is not None
                await asyncio.to_thread(api_key_revoke, key=bob_subscribed.key)
                codes = [await _close_code(one), await _close_code(two)]
            refusals = [await _handshake_close(url) for url in urls]
            return codes, refusals

        codes, refusals = asyncio.run(scenario())
    finally:
        second.stop()
    assert codes == [4401, 4401]
    assert [code for code, _ in refusals] == [4401, 4401]


@pytest.mark.e2e
def test_credentials_never_reach_logs_or_error_pages(gateway_server, stream_api, bob_subscribed, bob_oauth):
    key_secret = bob_subscribed.secret
    client_id, client_secret = bob_oauth
    token = _access_token(gateway_server, client_id, client_secret)
    base = f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0"
    unknown = "eg_" + "u" * 40
    secrets_used = [key_secret, token, client_secret, unknown]

    async def handshakes():
        closes = []
        for secret in (key_secret, token, unknown):
            for where in ("prices/ACME", "nowhere/at/all"):  # accepted, then a 4404 (or 4401)
                for options in (
                    {"additional_headers": {"Authorization": f"Bearer {secret}"}},
                    {"subprotocols": [SUBPROTOCOL, f"eventgate.bearer.{secret}"]},
                ):
                    async with connect(f"{base}/{where}", **options) as client:
                        try:
                            await asyncio.wait_for(client.recv(), timeout=0.3)
                        except TimeoutError:
                            pass
                        except websockets.ConnectionClosed as closed:
                            closes.append(closed.rcvd.reason if closed.rcvd else "")
                closes.append((await _handshake_close(f"{base}/nowhere?access_token={secret}"))[1])
        return closes

    reasons = asyncio.run(handshakes())
    pages = [
        _http(gateway_server, f"/apis/no-such-api/?access_token={key_secret}"),
        _http(gateway_server, f"/api/v1/nothing-here?access_token={token}"),
        _http(
            gateway_server,
            "/o/token/",
            data={"grant_type": "client_credentials"},
            auth=(client_id, client_secret + "x"),
        ),
        _http(
            gateway_server,
            "/o/token/",
            data={"grant_type": "client_credentials", "scope": f"x:receive {token}"},
            auth=(client_id, client_secret),
        ),
        _http(gateway_server, f"/sse/{stream_api.slug}/1.0.0/nowhere?access_token={key_secret}"),
        _http(gateway_server, f"/sse/{stream_api.slug}/1.0.0/prices/ACME?access_token={unknown}"),
    ]
    assert [status for status, _ in pages][:4] == [404, 404, 401, 400]
    log = gateway_server.log()
    # The handshakes were logged, each with its credential's kind and id only.
    assert log.count("Refused handshake") >= 9 and "(oauth_token " in log and "(api_key " in log
    for secret in secrets_used:
        assert secret not in log
        assert secret[:20] not in log
        for reason in reasons:
            assert secret not in reason
        for _, body in pages:
            assert secret not in body


@pytest.mark.e2e
def test_credentials_never_reach_a_debug_log(
    transactional_db, stream_api, bob_subscribed, bob_oauth, tmp_path
):
    # At DEBUG, uvicorn's WebSocket protocol logs every request header and oauthlib logs the
    # tokens it issues (as Python dict reprs) and the requests it validates.
    server = gateway_start(tmp_path / "debug.log", LOG_LEVEL="DEBUG")
    secret = bob_subscribed.secret
    client_id, client_secret = bob_oauth
    url = f"{server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME"
    try:
        token = _access_token(server, client_id, client_secret)
        scoped = _access_token(server, client_id, client_secret, scope=f"{stream_api.slug}:receive")
        revoked = _access_token(server, client_id, client_secret)

        async def scenario():
            for credential in (secret, token):
                for options in (
                    {"additional_headers": {"Authorization": f"Bearer {credential}"}},
                    {"subprotocols": [SUBPROTOCOL, f"eventgate.bearer.{credential}"]},
                ):
                    async with connect(url, **options) as client:
                        assert await _streams(client, stream_api.slug, "prices/ACME")
                async with connect(f"{url}?access_token={credential}") as client:
                    assert await _streams(client, stream_api.slug, "prices/ACME")
            async with connect(url, subprotocols=[SUBPROTOCOL, f"eventgate.bearer.{scoped}"]) as client:
                assert await _streams(client, stream_api.slug, "prices/ACME")

        asyncio.run(scenario())
        status, body = _http(
            server,
            "/o/revoke_token/",
            data={"token": revoked, "token_type_hint": "access_token"},
            auth=(client_id, client_secret),
        )
        assert status == 200, body
        status, body = _http(
            server,
            "/o/revoke_token/",
            data={"token": token, "client_id": client_id, "client_secret": client_secret},
        )
        assert status == 200, body
    finally:
        server.stop()
    log = server.log()
    assert "DEBUG" in log and "[redacted]" in log
    assert "Issuing token" in log or "access_token" in log  # oauthlib's lines are there, masked
    for credential in (secret, token, scoped, revoked, client_secret):
        assert credential not in log, f"a credential ({credential[:4]}…) is in the DEBUG log"
        assert credential[3:20] not in log
