"""Handshake authorization and delivery of the WebSocket gateway, through the project's ASGI
application (origin validation included) with Channels' ``WebsocketCommunicator``.

Refused handshakes must not connect (daphne turns a close before accept into HTTP 403);
accepted ones receive events published to the real RabbitMQ through ``gateway.publishing``.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator

from gateway.consumers import EventStreamConsumer
from gateway.metering import get_meter
from gateway.publishing import event_publish
from gateway.routing import websocket_urlpatterns
from gateway.security import GatewayOriginValidator
from portal.asgi import application
from portal.models import APIKey
from portal.services.subscriptions import api_key_revoke
from tests.factories import ApplicationFactory, SubscriptionFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("gateway_cleanup")]

ORIGIN = (b"origin", b"http://testserver")


def communicator(path: str, *, secret: str | None = None, header: bool = False) -> WebsocketCommunicator:
    headers = [ORIGIN]
    if secret and header:
        headers.append((b"authorization", f"Bearer {secret}".encode()))
    elif secret:
        path += f"?access_token={secret}"
    return WebsocketCommunicator(application, path, headers=headers)


async def handshake(path: str, **kwargs: object) -> bool:
    client = communicator(path, **kwargs)  # type: ignore[arg-type]
    connected, _ = await client.connect()
    await client.disconnect()
    return connected


def prices(api, symbol: str = "ACME") -> str:
    return f"/ws/{api.slug}/1.0.0/prices/{symbol}"


async def test_handshake_without_credential_is_refused(stream_api, bob_subscribed):
    assert await handshake(prices(stream_api)) is False


async def test_handshake_with_unknown_key_is_refused(stream_api, bob_subscribed):
    assert await handshake(prices(stream_api), secret="eg_" + "x" * 40) is False


async def test_handshake_with_revoked_key_is_refused(stream_api, bob_subscribed):
    await sync_to_async(api_key_revoke)(key=bob_subscribed.key)
    assert await handshake(prices(stream_api), secret=bob_subscribed.secret) is False


async def test_handshake_of_unsubscribed_application_is_refused(stream_api, carol):
    application = await sync_to_async(ApplicationFactory)(owner=carol)
    _, secret = await sync_to_async(APIKey.generate)(application=application)
    assert await handshake(prices(stream_api), secret=secret) is False


async def test_handshake_with_pending_subscription_is_refused(stream_api, carol):
    def pending_key() -> str:
        application = ApplicationFactory(owner=carol)
        SubscriptionFactory(application=application, plan=stream_api.plans.get(name="Gold"), status="pending")
        return APIKey.generate(application=application)[1]

    assert await handshake(prices(stream_api), secret=await sync_to_async(pending_key)()) is False


@pytest.mark.parametrize(
    "path",
    [
        "/ws/{slug}/1.0.0/quotes/ACME",  # no such channel
        "/ws/{slug}/1.0.0/prices/NOPE",  # symbol outside the parameter's enum
        "/ws/{slug}/1.0.0/prices/ACME/extra",  # deeper than the template
        "/ws/{slug}/1.0.0/orders",  # channel consumers may only send to
        "/ws/{slug}/9.9.9/prices/ACME",  # unknown version
        "/ws/no-such-api/1.0.0/prices/ACME",  # unknown API
        "/ws/{slug}",  # not a gateway route
    ],
)
async def test_handshake_for_unknown_channel_version_or_parameter_is_refused(
    stream_api, bob_subscribed, path
):
    assert await handshake(path.format(slug=stream_api.slug), secret=bob_subscribed.secret) is False


@pytest.mark.parametrize("header", [False, True], ids=["query-parameter", "bearer-header"])
async def test_subscribed_client_receives_published_events_of_its_channel(stream_api, bob_subscribed, header):
    client = communicator(prices(stream_api), secret=bob_subscribed.secret, header=header)
    connected, _ = await client.connect()
    assert connected
    try:
        for symbol in ("GLOBEX", "ACME"):
            await event_publish(
                api=stream_api.slug, version="1.0.0", address=f"prices/{symbol}", payload={"symbol": symbol}
            )
        frame = await client.receive_from(timeout=5)
        event = json.loads(frame)
        assert event["channel"] == "prices/ACME"
        assert event["payload"] == {"symbol": "ACME"}
        assert isinstance(event["published_at"], float) and event["id"]
        assert await client.receive_nothing(timeout=0.3)
    finally:
        await client.disconnect()
    key = (bob_subscribed.subscription.pk, "prices/{symbol}", "out")
    counted = [value for meter_key, value in get_meter().counts.items() if meter_key[:3] == key]
    assert counted == [[1, len(frame.encode())]]


async def test_client_frame_closes_with_policy_violation(stream_api, bob_subscribed):
    client = communicator(prices(stream_api), secret=bob_subscribed.secret)
    connected, _ = await client.connect()
    assert connected
    await client.send_to(text_data="hello")
    assert await client.receive_output(timeout=2) == {
        "type": "websocket.close",
        "code": 4008,
        "reason": "This channel does not accept events from clients.",
    }
    await client.disconnect()


async def test_gateway_origin_validator_allows_clients_without_origin_but_checks_present_ones(
    stream_api, bob_subscribed
):
    app = GatewayOriginValidator(URLRouter(websocket_urlpatterns))
    path = prices(stream_api) + f"?access_token={bob_subscribed.secret}"
    for headers, expected in [([], True), ([ORIGIN], True), ([(b"origin", b"http://evil.example")], False)]:
        client = WebsocketCommunicator(app, path, headers=headers)
        connected, _ = await client.connect()
        await client.disconnect()
        assert connected is expected, headers


async def test_revocation_landing_mid_handshake_is_not_missed(stream_api, bob_subscribed, monkeypatch):
    """The key is revoked after the credential check but before the connection joins its
    control groups (so the 4401 message would reach nobody): the second check refuses it."""
    original = EventStreamConsumer._groups_join

    async def revoke_then_join(self, grant):
        await sync_to_async(api_key_revoke)(key=bob_subscribed.key)
        await original(self, grant)

    monkeypatch.setattr(EventStreamConsumer, "_groups_join", revoke_then_join)
    assert await handshake(prices(stream_api), secret=bob_subscribed.secret) is False


async def test_nul_in_the_path_is_refused_not_a_server_error(stream_api, bob_subscribed):
    assert (
        await handshake(f"/ws/{stream_api.slug}\x00/1.0.0/prices/ACME", secret=bob_subscribed.secret) is False
    )
    assert await handshake(prices(stream_api, "AC\x00ME"), secret=bob_subscribed.secret) is False
