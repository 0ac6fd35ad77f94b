"""Billing from real traffic: events through a gateway process → analytics → the ledger → an
invoice whose amounts are the plan's prices applied to analytics' numbers."""

from __future__ import annotations

import asyncio

from django.utils import timezone

from analytics.services import usage_for_subscription
from billing.models import Invoice
from billing.services import billing_period_containing, invoice_period_close
from portal.models import BusinessPlan
from tests.gateway.test_throttling_processes import Collector, connect, publish, quiet, wait_usage, ws_url


def test_invoice_equals_analytics_usage_times_price_for_a_known_traffic_run(
    gateway_server, stream_api, bob_subscribed
):
    """12 events of known sizes through a real gateway process to bob's WebSocket client; the
    gateway flushes them to analytics; the ledger closes the current hour and the month is
    invoiced early: the invoice's events and bytes are analytics' and its amounts are the plan's
    prices applied to them."""
    subscription = bob_subscribed.subscription
    BusinessPlan.objects.filter(pk=subscription.plan_id).update(
        flat_fee_minor=999,
        included_events=2,
        price_per_1000_events_minor=0,
        price_tiers=[
            {"up_to": 1_000, "price_per_1000_events_minor": 300},
            {"up_to": None, "price_per_1000_events_minor": 100},
        ],
        price_per_gb_minor=10**9,  # $10,000,000.00 per GB: one cent per byte, so bytes show in the amount
    )

    async def scenario() -> Collector:
        client = Collector(
            await connect(ws_url(gateway_server, stream_api.slug, bob_subscribed.secret))
        ).start()
        await publish(stream_api.slug, range(12))
        await quiet([client])
        await client.stop()
        return client

    client = asyncio.run(scenario())
    assert client.numbers() == list(range(12))
    assert wait_usage(subscription, {"events": 12, "throttled": 0}) == {"events": 12, "throttled": 0}

    start, end = billing_period_containing(timezone.now())
    [invoice] = invoice_period_close(period_start=start, period_end=end, allow_open=True)
    usage = usage_for_subscription(subscription=subscription, start=start, end=end)
    lines = {line.kind: line for line in invoice.lines.all()}
    assert (usage.events, lines["events"].events, lines["bandwidth"].bytes) == (12, 12, usage.bytes)
    assert usage.bytes > 0
    assert lines["base_fee"].amount_minor == 999
    assert lines["events"].amount_minor == 300  # 10 billable events: one started block in the first tier
    assert lines["bandwidth"].amount_minor == usage.bytes  # one cent per byte
    assert invoice.total_minor == 999 + 300 + usage.bytes
    assert Invoice.objects.count() == 1
