"""Handshake authorization and delivery of the WebSocket gateway, through the project's ASGI
application (origin validation included) with Channels' ``WebsocketCommunicator``.

Refused handshakes are accepted and closed at once with the refusal contract's code and reason
(docs/gateway.md, "Refusals and close codes"); accepted ones receive events published to the real
RabbitMQ through ``gateway.publishing``. The same refusals against a real server process and real
``websockets`` clients are in ``test_refusals.py``.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from analytics.models import UsageRecord
from gateway.auth import month_start
from gateway.connections import live_connections_audit
from gateway.consumers import GatewayConsumer
from gateway.metering import get_meter
from gateway.publishing import event_publish
from gateway.routing import websocket_urlpatterns
from gateway.security import GatewayOriginValidator
from portal.asgi import application
from portal.models import API, APIKey, APIVersion, BusinessPlan
from portal.services.credentials import api_key_revoke
from tests.factories import ApplicationFactory, ChannelFactory, SubscriptionFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("gateway_cleanup")]

ORIGIN = (b"origin", b"http://testserver")


def communicator(
    path: str, *, secret: str | None = None, header: bool = False, subprotocols: list[str] | None = None
) -> WebsocketCommunicator:
    headers = [ORIGIN]
    if secret and header:
        headers.append((b"authorization", f"Bearer {secret}".encode()))
    elif secret:
        path += f"?access_token={secret}"
    return WebsocketCommunicator(application, path, headers=headers, subprotocols=subprotocols)


async def refusal(path: str, **kwargs) -> tuple[int, str]:
    """(close code, reason) of a refused handshake: accepted, then closed at once."""
    client = communicator(path, **kwargs)
    connected, _ = await client.connect()
    assert connected, "a refused handshake is accepted, then closed with a code"
    closed = await client.receive_output(timeout=5)
    await client.disconnect()
    assert closed["type"] == "websocket.close", closed
    return closed["code"], closed["reason"]


def prices(api, symbol: str = "ACME") -> str:
    return f"/ws/{api.slug}/1.0.0/prices/{symbol}"


# Each case: a setup (sync, gets the fixtures; returns (path, secret)) and the expected code and a
# fragment of the reason (which names the case).
def _no_credential(api, subscribed):
    return prices(api), None


def _unknown_key(api, subscribed):
    return prices(api), "eg_" + "x" * 40


def _revoked_key(api, subscribed):
    api_key_revoke(key=subscribed.key)
    return prices(api), subscribed.secret


def _expired_key(api, subscribed):
    APIKey.objects.filter(pk=subscribed.key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    return prices(api), subscribed.secret


def _not_subscribed(api, subscribed):
    return prices(api), APIKey.generate(application=ApplicationFactory())[1]


def _subscription_in(status: str):
    def setup(api, subscribed):
        subscribed.subscription.status = status
        subscribed.subscription.save()
        return prices(api), subscribed.secret

    return setup


def _pending(api, subscribed):
    application = ApplicationFactory()
    SubscriptionFactory(application=application, plan=api.plans.get(name="Gold"), status="pending")
    return prices(api), APIKey.generate(application=application)[1]


def _api_in(status: str):
    def setup(api, subscribed):
        API.objects.filter(pk=api.pk).update(status=status)
        return prices(api), subscribed.secret

    return setup


def _version_in(status: str):
    def setup(api, subscribed):
        APIVersion.objects.filter(api=api).update(status=status)
        return prices(api), subscribed.secret

    return setup


def _path(template: str):
    def setup(api, subscribed):
        return template.format(slug=api.slug), subscribed.secret

    return setup


def _channel_without_operations(api, subscribed):
    ChannelFactory(api_version=api.versions.get(), key="status", address="status", parameters={})
    return f"/ws/{api.slug}/1.0.0/status", subscribed.secret


def _quota_used_up(api, subscribed):
    plan = subscribed.subscription.plan
    plan.quota_events = 10
    plan.save()
    UsageRecord.objects.create(
        subscription=subscribed.subscription, bucket_start=month_start(), channel="prices/{symbol}", events=10
    )
    return prices(api), subscribed.secret


REFUSALS = {
    "no-credential": (_no_credential, 4401, "no credential"),
    "unknown-key": (_unknown_key, 4401, "unknown, invalid, revoked or expired credential"),
    "revoked-key": (_revoked_key, 4401, "revoked"),
    "expired-key": (_expired_key, 4401, "expired"),
    "not-subscribed": (_not_subscribed, 4403, "is not subscribed to"),
    "pending": (_pending, 4403, "is pending approval"),
    "suspended": (_subscription_in("suspended"), 4403, "is suspended"),
    "cancelled": (_subscription_in("cancelled"), 4403, "was cancelled"),
    "unknown-api": (_path("/ws/no-such-api/1.0.0/prices/ACME"), 4404, "unknown API 'no-such-api'"),
    "draft-api": (_api_in("draft"), 4404, "unknown API"),
    "unknown-version": (_path("/ws/{slug}/9.9.9/prices/ACME"), 4404, "unpublished version '9.9.9'"),
    "draft-version": (_version_in("draft"), 4404, "unknown or unpublished version '1.0.0'"),
    "unknown-channel": (_path("/ws/{slug}/1.0.0/quotes/ACME"), 4404, "no channel 'quotes/ACME'"),
    "deeper-than-template": (_path("/ws/{slug}/1.0.0/prices/ACME/extra"), 4404, "no channel"),
    "not-a-gateway-route": (_path("/ws/{slug}"), 4404, "Not a gateway route"),
    "parameter-outside-enum": (_path("/ws/{slug}/1.0.0/prices/NOPE"), 4400, "bad parameter 'symbol': 'NOPE'"),
    "address-too-long": (_path("/ws/{slug}/1.0.0/prices/" + "A" * 300), 4400, "exceeds 255 bytes"),
    "nul-in-path": (_path("/ws/{slug}/1.0.0/prices/AC\x00ME"), 4400, "NUL character"),
    "no-operation-for-clients": (_channel_without_operations, 4405, "'status' has no operation for clients"),
    "api-blocked": (_api_in("blocked"), 4410, "is blocked"),
    "api-retired": (_api_in("retired"), 4410, "is retired"),
    "version-retired": (_version_in("retired"), 4410, "it is retired"),
    "quota-used-up": (_quota_used_up, 4429, "events quota of plan 'Free' used up this month"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
async def test_refused_handshake_is_accepted_then_closed_with_its_code_and_reason(
    stream_api, bob_subscribed, case
):
    setup, code, fragment = REFUSALS[case]
    path, secret = await sync_to_async(setup)(stream_api, bob_subscribed)
    closed = await refusal(path, secret=secret)
    assert closed[0] == code and fragment in closed[1], closed
    assert len(closed[1].encode()) <= 123
    assert bob_subscribed.secret not in closed[1]
    assert not get_meter().counts


async def test_refusal_echoes_only_the_real_subprotocol_never_the_credential_entry(
    stream_api, bob_subscribed
):
    offered = ["eventgate.v1", f"eventgate.bearer.{bob_subscribed.secret}"]
    # Refused (unknown channel) and accepted handshakes alike.
    for path, expect_open in [(f"/ws/{stream_api.slug}/1.0.0/quotes/X", False), (prices(stream_api), True)]:
        client = communicator(path, subprotocols=offered)
        connected, subprotocol = await client.connect()
        assert connected and subprotocol == "eventgate.v1"
        if expect_open:
            assert await client.receive_nothing(timeout=0.3)
        else:
            assert (await client.receive_output(timeout=5))["code"] == 4404
        await client.disconnect()
    # The bearer entry alone authenticates, and nothing is echoed.
    client = communicator(prices(stream_api), subprotocols=offered[1:])
    assert await client.connect() == (True, None)
    assert await client.receive_nothing(timeout=0.3)
    await client.disconnect()


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


async def test_event_frame_on_a_receive_only_channel_gets_an_error_frame_and_stays_open(
    stream_api, bob_subscribed
):
    client = communicator(prices(stream_api), secret=bob_subscribed.secret)
    assert (await client.connect())[0]
    await client.send_to(text_data='{"buy": 1}')
    error = json.loads(await client.receive_from(timeout=5))
    assert error == {
        "type": "error",
        "code": 4405,
        "reason": "channel 'prices/{symbol}' has no send operation: clients cannot send to it",
        "channel": "prices/ACME",
    }
    await event_publish(api=stream_api.slug, version="1.0.0", address="prices/ACME", payload={"open": 1})
    assert json.loads(await client.receive_from(timeout=5))["payload"] == {"open": 1}
    await client.disconnect()
    assert not [key for key in get_meter().counts if key[2] == "in"]


async def test_binary_frame_closes_with_1008(stream_api, bob_subscribed):
    client = communicator(prices(stream_api), secret=bob_subscribed.secret)
    assert (await client.connect())[0]
    await client.send_to(bytes_data=b"\x00\x01")
    closed = await client.receive_output(timeout=2)
    assert (closed["type"], closed["code"]) == ("websocket.close", 1008)
    assert "Binary frames are not accepted" in closed["reason"]
    await client.disconnect()


async def test_gateway_origin_validator_allows_clients_without_origin_but_checks_present_ones(
    stream_api, bob_subscribed
):
    app = GatewayOriginValidator(URLRouter(websocket_urlpatterns))
    path = prices(stream_api) + f"?access_token={bob_subscribed.secret}"
    for headers, expected in [([], True), ([ORIGIN], True), ([(b"origin", b"http://evil.example")], False)]:
        client = WebsocketCommunicator(app, path, headers=headers)
        connected, _ = await client.connect()
        if connected:
            assert await client.receive_nothing(timeout=0.2), "accepted and left open"
        await client.disconnect()
        assert connected is expected, headers


async def test_revocation_landing_mid_handshake_is_not_missed(stream_api, bob_subscribed, monkeypatch):
    """The key is revoked after the credential check but before the connection joins its
    control groups (so the 4401 message would reach nobody): the second look refuses it."""
    original = GatewayConsumer._groups_join

    async def revoke_then_join(self, grant):
        await sync_to_async(api_key_revoke)(key=bob_subscribed.key)
        await original(self, grant)

    monkeypatch.setattr(GatewayConsumer, "_groups_join", revoke_then_join)
    code, reason = await refusal(prices(stream_api), secret=bob_subscribed.secret)
    assert (code, reason) == (4401, "credential revoked or expired")


async def test_the_audit_closes_a_connection_once_its_monthly_quota_is_used_up(stream_api, bob_subscribed):
    subscription = bob_subscribed.subscription

    def limit_and_use_last_month() -> None:
        subscription.plan.quota_events = 100
        subscription.plan.limit_notice = BusinessPlan.LimitNotice.CLOSE  # "notify" keeps it open
        subscription.plan.save()
        # The whole quota used, but last month.
        previous = month_start() - timedelta(days=1)
        UsageRecord.objects.create(subscription=subscription, bucket_start=previous, channel="c", events=100)

    await sync_to_async(limit_and_use_last_month)()
    client = communicator(prices(stream_api), secret=bob_subscribed.secret)
    assert (await client.connect())[0]
    try:
        assert await live_connections_audit() == 0, "last month's usage does not count"
        await sync_to_async(UsageRecord.objects.create)(
            subscription=subscription, bucket_start=month_start(), channel="prices/{symbol}", events=100
        )
        assert await live_connections_audit() == 1
        closed = await client.receive_output(timeout=2)
        assert (closed["code"], closed["reason"]) == (
            4429,
            "events quota of plan 'Free' used up this month (100 events)",
        )
    finally:
        await client.disconnect()


async def test_the_audit_keeps_a_stopped_connection_open_when_the_plan_only_notifies(
    stream_api, bob_subscribed
):
    subscription = bob_subscribed.subscription

    def limit() -> None:
        subscription.plan.quota_events = 100
        subscription.plan.save()

    await sync_to_async(limit)()
    client = communicator(prices(stream_api), secret=bob_subscribed.secret)
    assert (await client.connect())[0]
    try:
        await sync_to_async(UsageRecord.objects.create)(
            subscription=subscription, bucket_start=month_start(), channel="prices/{symbol}", events=100
        )
        assert await live_connections_audit() == 0
        assert await client.receive_nothing(timeout=0.2)
    finally:
        await client.disconnect()
