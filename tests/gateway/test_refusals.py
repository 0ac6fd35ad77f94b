"""The refusal contract (docs/gateway.md, "Refusals and close codes"): each case closes with its
own code and a reason naming it; channel parameters are checked against their schema.

Parameter checks run ``handshake_authorize`` directly (fast, one case per test); the contract as a
client sees it runs against a real server process (``manage.py serve``) with real ``websockets``
clients, and checks that refused handshakes leave nothing on the broker.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from analytics.models import UsageRecord
from gateway.auth import HandshakeRefused, handshake_authorize, month_start
from portal.models import API, APIKey
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
    SubscriptionFactory,
)
from tests.gateway.conftest import oauth_token_issue

# Parameter Objects as documents write them: 2.x under ``schema`` (AsyncAPI 2.6 §Parameter
# Object), 3.0 with ``enum`` on the parameter itself (3.0 §Parameter Object).
PARAMETERS = {
    "items/{id}": {"id": {"schema": {"type": "integer", "minimum": 1, "maximum": 1000}}},
    "codes/{code}": {
        "code": {"schema": {"type": "string", "minLength": 3, "maxLength": 5, "pattern": "^[A-Z]+$"}}
    },
    "flags/{flag}": {"flag": {"schema": {"type": "boolean"}}},
    "rates/{pair}": {"pair": {"enum": ["EURUSD", "GBPUSD"], "description": "3.0 style"}},
    "levels/{value}": {"value": {"schema": {"type": "number", "exclusiveMinimum": 0}}},
    "any/{thing}": {"thing": {"description": "no schema: any value"}},
}


@pytest.fixture
def parameters_api(alice, db) -> API:
    api = APIFactory(provider=alice, slug=f"params-{uuid.uuid4().hex[:8]}")
    version = APIVersionFactory(api=api, version="1.0.0")
    for address, parameters in PARAMETERS.items():
        OperationFactory(channel=ChannelFactory(api_version=version, address=address, parameters=parameters))
    BusinessPlanFactory(api=api, name="Free")
    return api


@pytest.fixture
def parameters_secret(bob, parameters_api) -> str:
    application = ApplicationFactory(owner=bob)
    SubscriptionFactory(application=application, plan=parameters_api.plans.get())
    return APIKey.generate(application=application)[1]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("items/42", None),
        ("items/0", "bad parameter 'id': 0 is less than the minimum 1"),
        ("items/1001", "bad parameter 'id': 1001 is greater than the maximum 1000"),
        ("items/4x", "bad parameter 'id': '4x' is not of type integer"),
        ("codes/ACME", None),
        ("codes/AB", "bad parameter 'code': 'AB' is shorter than 3 characters"),
        ("codes/ABCDEF", "bad parameter 'code': 'ABCDEF' is longer than 5 characters"),
        ("codes/acme", "bad parameter 'code': 'acme' does not match the pattern '^[A-Z]+$'"),
        ("flags/true", None),
        ("flags/yes", "bad parameter 'flag': 'yes' is not of type boolean"),
        ("rates/GBPUSD", None),
        ("rates/EURJPY", "bad parameter 'pair': 'EURJPY' is not one of 'EURUSD', 'GBPUSD'"),
        ("levels/0.5", None),
        ("levels/0", "bad parameter 'value': 0 is not greater than 0"),
        ("levels/-1e3", "bad parameter 'value': -1000.0 is not greater than 0"),
        ("any/whatever.you-like", None),
    ],
)
def test_channel_parameters_are_checked_against_their_schema(
    parameters_api, parameters_secret, address, reason
):
    def authorize():
        return handshake_authorize(
            secret=parameters_secret, api_slug=parameters_api.slug, version="1.0.0", address=address
        )

    if reason is None:
        assert authorize().channel.address == address
        return
    with pytest.raises(HandshakeRefused) as refused:
        authorize()
    assert (refused.value.code, refused.value.reason) == (4400, reason)


# --- The contract against a real server -----------------------------------------------------


def _refusal_world(stream_api, bob_subscribed, carol):
    """Applications and APIs in every refused state at once (one server start for all cases).
    Returns ``{case: (path, secret, code, reason fragment)}``."""
    slug = stream_api.slug
    path = f"/ws/{slug}/1.0.0/prices/ACME"

    def subscribed(status: str, plan_name: str = "Free") -> str:
        application = ApplicationFactory(owner=carol)
        SubscriptionFactory(application=application, plan=stream_api.plans.get(name=plan_name), status=status)
        return APIKey.generate(application=application)[1]

    metered = BusinessPlanFactory(api=stream_api, name="Metered", quota_events=5)
    over_quota = ApplicationFactory(owner=carol)
    subscription = SubscriptionFactory(application=over_quota, plan=metered)
    UsageRecord.objects.create(
        subscription=subscription,
        bucket_start=month_start(),
        channel="prices/{symbol}",
        direction="in",
        events=5,
    )
    blocked = APIFactory(
        provider=stream_api.provider, slug=f"blocked-{uuid.uuid4().hex[:8]}", status="blocked"
    )
    blocked_version = APIVersionFactory(api=blocked)
    OperationFactory(channel=ChannelFactory(api_version=blocked_version))
    SubscriptionFactory(application=bob_subscribed.application, plan=BusinessPlanFactory(api=blocked))
    retired_version = APIVersionFactory(api=stream_api, version="0.9.0", status="retired")
    OperationFactory(channel=ChannelFactory(api_version=retired_version))
    secret = bob_subscribed.secret
    send_only = oauth_token_issue(bob_subscribed.application, f"{slug}:send")
    return {
        "no credential": (path, None, 4401, "no credential"),
        "unknown key": (path, "eg_" + "x" * 40, 4401, "unknown, invalid, revoked or expired credential"),
        "not subscribed": (
            path,
            APIKey.generate(application=ApplicationFactory(owner=carol))[1],
            4403,
            "not subscribed",
        ),
        "pending": (path, subscribed("pending", "Gold"), 4403, "pending approval"),
        "suspended": (path, subscribed("suspended"), 4403, "suspended"),
        "unknown API": (f"/ws/nope-{slug}/1.0.0/prices/ACME", secret, 4404, "unknown API"),
        "unknown version": (f"/ws/{slug}/7.0.0/prices/ACME", secret, 4404, "unpublished version '7.0.0'"),
        "unknown channel": (f"/ws/{slug}/1.0.0/quotes/ACME", secret, 4404, "no channel 'quotes/ACME'"),
        "bad parameter": (f"/ws/{slug}/1.0.0/prices/NOPE", secret, 4400, "bad parameter 'symbol'"),
        "scope lacks receive": (path, send_only, 4405, "scope does not allow receive on 'prices/{symbol}'"),
        "API blocked": (f"/ws/{blocked.slug}/1.0.0/prices/ACME", secret, 4410, "is blocked"),
        "version retired": (f"/ws/{slug}/0.9.0/prices/ACME", secret, 4410, "retired"),
        "quota used up": (
            path,
            APIKey.generate(application=over_quota)[1],
            4429,
            "events quota of plan 'Metered'",
        ),
    }


async def _close_of(url: str, secret: str | None) -> tuple[int | None, str, str | None]:
    """(close code, reason, accepted subprotocol) as a browser would connect: the credential in a
    ``Sec-WebSocket-Protocol`` entry beside ``eventgate.v1``."""
    subprotocols = ["eventgate.v1"] + ([f"eventgate.bearer.{secret}"] if secret else [])
    async with connect(url, subprotocols=subprotocols) as client:  # type: ignore[arg-type]
        subprotocol = client.subprotocol
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), timeout=5)
    received = closed.value.rcvd
    return (received.code if received else None), (received.reason if received else ""), subprotocol


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def test_every_refusal_reaches_a_real_client_with_its_code_and_leaves_nothing_on_the_broker(
    gateway_server, stream_api, bob_subscribed, carol
):
    cases = _refusal_world(stream_api, bob_subscribed, carol)

    async def scenario() -> dict[str, tuple[int | None, str, str | None]]:
        return {
            case: await _close_of(gateway_server.ws_url + path, secret)
            for case, (path, secret, _code, _fragment) in cases.items()
        }

    seen = asyncio.run(scenario())
    wrong = {
        case: seen[case]
        for case, (_path, _secret, code, fragment) in cases.items()
        if seen[case][:1] != (code,) or fragment not in seen[case][1] or seen[case][2] != "eventgate.v1"
    }
    assert not wrong, (wrong, gateway_server.log()[-3000:])

    # No broker resources for refused handshakes: the process never even opened its bridge
    # connection (so no queue), and no binding names any of these APIs.
    connections = _rabbitmqctl("list_connections", "client_properties")
    assert f"eventgate-gateway pid={gateway_server.process.pid}" not in connections
    assert f"eventgate-gateway-inbound pid={gateway_server.process.pid}" not in connections
    bindings = _rabbitmqctl("list_bindings", "source_name", "routing_key")
    assert stream_api.slug not in bindings
    log = gateway_server.log()
    assert not [secret for _path, secret, _code, _fragment in cases.values() if secret and secret in log]
    assert "Traceback" not in log
