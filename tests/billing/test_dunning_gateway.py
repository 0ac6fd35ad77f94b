"""Dunning against a real gateway process: a payment failure that outlasts the grace period closes
the consumer's live connections and refuses new ones; paying the invoice lets them back in."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import websockets
from django.core import mail
from django.db import connection
from websockets.asyncio.client import connect

from billing.dunning import dunning_advance
from billing.models import DunningCase, Invoice
from billing.services import invoice_period_close
from gateway.publishing import EventPublisher
from portal.models import APIKey, Subscription
from tests.billing.conftest import OCTOBER
from tests.billing.test_webhooks import SECRET, invoice_event, post_webhook, sign
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
    SubscriptionFactory,
)
from tests.fixtures.servers import ServerProcess, gateway_assert_idle, gateway_start

pytestmark = pytest.mark.e2e
T = TypeVar("T")


@pytest.fixture
def billing_gateway(transactional_db, tmp_path: Path) -> Iterator[ServerProcess]:
    """A real gateway process (portal included) that verifies webhooks with the test secret and
    processes them inline (Celery eager); on exit it must hold no connection."""
    server = gateway_start(
        tmp_path / "gateway.log",
        STRIPE_WEBHOOK_SECRET=SECRET,
        CELERY_TASK_ALWAYS_EAGER="true",
        EVENTGATE_PUBLIC_URL="https://eventgate.example.com",
    )
    try:
        yield server
        gateway_assert_idle(server)
    finally:
        server.stop()


async def off_loop(function: Callable[[], T]) -> T:
    """Run blocking ORM work in a thread (never on the event loop), closing its connection after."""

    def call() -> T:
        try:
            return function()
        finally:
            connection.close()

    return await asyncio.to_thread(call)


async def deliver(server: ServerProcess, event: dict[str, Any]) -> None:
    body = json.dumps(event).encode()
    status, answer = await asyncio.to_thread(post_webhook, server.url, body, sign(body))
    assert (status, answer) == (200, {"received": True, "duplicate": False})


async def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := await off_loop(predicate)):
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)
    return value


def test_payment_failure_suspends_and_payment_reinstates_with_live_connections_closed_on_suspension(
    billing_gateway, alice, bob, settings
):
    settings.EVENTGATE_PUBLIC_URL = "https://eventgate.example.com"
    api = APIFactory(
        provider=alice, name=f"Quotes {uuid.uuid4().hex[:8]}", slug=f"quotes-{uuid.uuid4().hex[:10]}"
    )
    OperationFactory(
        channel=ChannelFactory(
            api_version=APIVersionFactory(api=api), key="prices", address="prices/{symbol}"
        )
    )
    pro = BusinessPlanFactory(api=api, name="Pro", flat_fee_minor=4900)
    application = ApplicationFactory(owner=bob, name="Trading desk")
    subscription = SubscriptionFactory(
        application=application, plan=pro, created=OCTOBER[0] - timedelta(days=1)
    )
    _key, secret = APIKey.generate(application=application)
    [invoice] = invoice_period_close(period_start=OCTOBER[0], period_end=OCTOBER[1])
    # Found through the invoice's metadata: the sync has not stored Stripe's id yet.
    about = {"id": "in_gateway", "metadata": {"eventgate_invoice_id": str(invoice.pk)}}
    url = f"{billing_gateway.ws_url}/ws/{api.slug}/1.0.0/prices/ACME?access_token={secret}"

    async def scenario() -> tuple[Any, Any, dict[str, Any]]:
        async with EventPublisher() as publisher:

            async def publish(n: int) -> str:
                return await publisher.publish(
                    api=api.slug, version="1.0.0", address="prices/ACME", payload={"n": n}
                )

            async with connect(url) as live:
                sent = await publish(1)
                assert json.loads(await asyncio.wait_for(live.recv(), 10))["id"] == sent  # bob is live

                await deliver(billing_gateway, invoice_event("invoice.payment_failed", **about))
                case = await wait_until(
                    lambda: DunningCase.objects.filter(invoice=invoice).first(), "the dunning case"
                )
                # Beat's run once the grace period is over.
                await off_loop(lambda: dunning_advance(now=case.suspend_at + timedelta(seconds=1)))
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(live.recv(), 10)

            async with connect(url) as again:
                with pytest.raises(websockets.ConnectionClosed) as refused:
                    await asyncio.wait_for(again.recv(), 10)

            await deliver(billing_gateway, invoice_event("invoice.paid", status="paid", **about))
            await wait_until(
                lambda: Subscription.objects.filter(pk=subscription.pk, status="active").exists(),
                "the reinstatement",
            )
            async with connect(url) as back:
                sent = await publish(2)
                received = json.loads(await asyncio.wait_for(back.recv(), 10))
                assert received["id"] == sent
        return closed.value.rcvd, refused.value.rcvd, received

    closed, refused, received = asyncio.run(scenario())

    assert (closed.code, closed.reason) == (4403, "Subscription suspended."), billing_gateway.log()
    assert (refused.code, refused.reason) == (4403, f"subscription to {api.slug} is suspended")
    assert received["payload"] == {"n": 2}
    assert Invoice.objects.get(pk=invoice.pk).status == "paid"
    assert DunningCase.objects.get(invoice=invoice).state == "resolved"
    assert [email.subject for email in mail.outbox] == [
        "Subscriptions suspended: Eventgate invoice for October 2026 ($49.00) is unpaid"
    ]
    log = billing_gateway.log()
    assert "Subject: Payment failed: Eventgate invoice for October 2026 ($49.00)" in log
    assert "Subject: Payment received: Eventgate invoice for October 2026 ($49.00)" in log
