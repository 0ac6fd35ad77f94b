"""Lifecycle changes reach live connections: a real server process (uvicorn), real ``websockets`` clients.

Blocking or retiring an API closes its connections with 4410; retiring one version closes only
that version's connections; a change that sends no control message (a raw ``UPDATE``) is caught
by the periodic audit (``GATEWAY_AUDIT_INTERVAL`` is 0.5 s in ``gateway_server``).
"""

from __future__ import annotations

import asyncio

import pytest
import websockets
from websockets.asyncio.client import connect

from portal.models import API, APILifecycleEvent
from portal.services.lifecycle import api_transition, api_version_transition
from tests.factories import APIVersionFactory, ChannelFactory, OperationFactory

pytestmark = pytest.mark.e2e


def _url(server, api: API, secret: str, version: str = "1.0.0") -> str:
    return f"{server.ws_url}/ws/{api.slug}/{version}/prices/ACME?access_token={secret}"


async def _closed_code(client) -> int | None:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(client.recv(), timeout=5)
    return closed.value.rcvd.code if closed.value.rcvd else None


def test_blocking_an_api_closes_its_live_connections_with_4410_and_refuses_new_ones(
    gateway_server, stream_api, bob_subscribed, admin_user
):
    url = _url(gateway_server, stream_api, bob_subscribed.secret)

    async def scenario() -> int | None:
        async with connect(url) as client:
            await asyncio.to_thread(
                api_transition, api=stream_api, to_status="blocked", actor=admin_user, reason="Abuse report"
            )
            return await _closed_code(client)

    assert asyncio.run(scenario()) == 4410, gateway_server.log()

    async def reconnect() -> tuple[int | None, str]:
        async with connect(url) as client:
            code = await _closed_code(client)
        return code, client.close_reason

    assert asyncio.run(reconnect()) == (4410, f"API {stream_api.slug} is blocked")
    event = APILifecycleEvent.objects.get(api=stream_api)
    assert (event.from_status, event.to_status, event.actor, event.reason) == (
        "published",
        "blocked",
        admin_user,
        "Abuse report",
    )


def test_retiring_a_version_closes_only_that_versions_connections(
    gateway_server, stream_api, bob_subscribed, alice
):
    newer = APIVersionFactory(api=stream_api, version="2.0.0")
    OperationFactory(channel=ChannelFactory(api_version=newer, key="prices", address="prices/{symbol}"))
    old = stream_api.versions.get(version="1.0.0")

    async def scenario() -> tuple[int | None, bool]:
        async with (
            connect(_url(gateway_server, stream_api, bob_subscribed.secret, "1.0.0")) as on_old,
            connect(_url(gateway_server, stream_api, bob_subscribed.secret, "2.0.0")) as on_new,
        ):
            await asyncio.to_thread(api_version_transition, api_version=old, to_status="retired", actor=alice)
            code = await _closed_code(on_old)
            # The other version's connection is still open: a frame can still be awaited on it.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(on_new.recv(), timeout=1.5)
            return code, on_new.protocol.state.name == "OPEN"

    code, newer_open = asyncio.run(scenario())
    assert code == 4410, gateway_server.log()
    assert newer_open


def test_the_audit_closes_connections_of_an_api_blocked_without_a_control_message(
    gateway_server, stream_api, bob_subscribed
):
    url = _url(gateway_server, stream_api, bob_subscribed.secret)

    async def scenario() -> int | None:
        async with connect(url) as client:
            # A raw UPDATE sends no signal; only the audit can notice.
            await asyncio.to_thread(
                lambda: API.objects.filter(pk=stream_api.pk).update(status=API.Status.RETIRED)
            )
            return await _closed_code(client)

    assert asyncio.run(scenario()) == 4410, gateway_server.log()
