"""The whole journey on real services, as one test.

A provider imports the demo stock-price AsyncAPI document and publishes it; an admin approves the
provider's paid plan; a consumer subscribes an application to it (pending until approved), gets an
API key, and is refused at the gateway until an admin approves the subscription. Then the demo
provider backend (``manage.py demo_backend``, a real process) publishes to RabbitMQ, a real
``websockets`` client receives the events from a real daphne process, the gateway's usage shows on
the consumer's usage page, and a real Celery worker turns the period into an invoice pushed to
localstripe, which the consumer sees in the portal.

Everything goes over HTTP to the daphne process (REST API with HTTP Basic, HTML forms with a
session and CSRF token), as a user's scripts and browser would.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import requests
import websockets
from django.conf import global_settings
from websockets.asyncio.client import connect

from billing.models import Invoice
from billing.tasks import invoice_period_task
from portal.demo import STOCK_PRICES
from portal.models import BusinessPlan, Subscription
from tests.factories import UserFactory
from tests.fixtures.servers import BIN, ServerProcess, amqp_queues_delete, server_env

pytestmark = pytest.mark.e2e

PASSWORD = "journey-password-1"


def wait_for(predicate: Callable[[], Any], *, timeout: float = 20.0, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def browser_session(base: str, email: str) -> requests.Session:
    """A signed-in session, as a browser gets it: the allauth login form with its CSRF token."""
    session = requests.Session()
    session.get(f"{base}/accounts/login/").raise_for_status()
    response = session.post(
        f"{base}/accounts/login/",
        data={"login": email, "password": PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text[:2000]
    return session


def post_form(session: requests.Session, url: str, data: dict[str, Any] | None = None) -> requests.Response:
    response = session.post(
        url, data={**(data or {}), "csrfmiddlewaretoken": session.cookies["csrftoken"]}, allow_redirects=False
    )
    assert response.status_code in (200, 302), response.text[:2000]
    return response


@pytest.fixture
def journey_exchange(settings) -> Iterator[str]:
    """A RabbitMQ exchange of this test alone, so a `make run` demo on the same broker can't
    interleave its events; deleted afterwards."""
    settings.EVENTGATE_EXCHANGE = f"journey-{uuid.uuid4().hex[:12]}"
    yield settings.EVENTGATE_EXCHANGE

    async def delete() -> None:
        connection = await aio_pika.connect(settings.AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.exchange_delete(settings.EVENTGATE_EXCHANGE)

    asyncio.run(delete())


def start_process(argv: list[str], log_path: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=server_env(**env), stdout=log_path.open("wb"), stderr=subprocess.STDOUT)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def refusal_code(url: str) -> int | None:
    """The close code of a refused handshake (the gateway accepts, then closes at once with a
    4xxx code), or None when the connection stays open."""
    async with connect(url, open_timeout=10) as client:
        try:
            await asyncio.wait_for(client.recv(), timeout=2)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            return None
    return None


async def receive_events(url: str, count: int) -> list[str]:
    async with connect(url, open_timeout=10) as client:
        return [await asyncio.wait_for(client.recv(), timeout=15) for _ in range(count)]


def test_provider_to_consumer_to_invoice(
    journey_exchange, gateway_server: ServerProcess, stripe_settings, stripe_client, tmp_path
):
    base = gateway_server.url
    # The daphne process checks passwords with the default hashers, not the tests' fast one.
    stripe_settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    provider = UserFactory(email="provider@journey.test", is_provider=True, password=PASSWORD)
    consumer = UserFactory(email="consumer@journey.test", password=PASSWORD)
    UserFactory(email="admin@journey.test", is_staff=True, password=PASSWORD)

    # 1. The provider imports the demo document through the REST API and publishes it.
    provider_auth = (provider.email, PASSWORD)
    response = requests.post(
        f"{base}/api/v1/apis/import",
        auth=provider_auth,
        files={"file": (STOCK_PRICES.filename, STOCK_PRICES.content(), "application/yaml")},
    )
    assert response.status_code == 201, response.text
    assert [channel["address"] for channel in response.json()["channels"]] == ["prices/{symbol}"]
    response = requests.post(f"{base}/api/v1/apis/stock-prices/versions/1.0.0/publish", auth=provider_auth)
    assert response.status_code == 200, response.text
    assert "stock-prices" in [api["slug"] for api in requests.get(f"{base}/api/v1/apis/").json()]

    # 2. The provider offers a paid plan (portal form); an admin approves it on the staff page.
    provider_session = browser_session(base, provider.email)
    post_form(
        provider_session,
        f"{base}/provider/apis/stock-prices/",
        {
            "name": "Pro",
            "flat_fee": "49.00",
            "included_events": "0",
            "price_per_1000_events": "1.50",
            "requires_approval": "on",
        },
    )
    plan = BusinessPlan.objects.get(api__slug="stock-prices", name="Pro")
    assert (plan.flat_fee_minor, plan.price_per_1000_events_minor, plan.is_approved) == (4900, 150, False)
    admin_session = browser_session(base, "admin@journey.test")
    post_form(admin_session, f"{base}/staff/plans/{plan.pk}/approve/")
    assert "Pro" in requests.get(f"{base}/apis/stock-prices/").text

    # 3. The consumer creates an application, subscribes (pending) and generates an API key.
    consumer_auth = (consumer.email, PASSWORD)
    application = requests.post(
        f"{base}/api/v1/applications/", auth=consumer_auth, json={"name": "Trading screen"}
    ).json()
    response = requests.post(
        f"{base}/api/v1/applications/{application['id']}/subscriptions/",
        auth=consumer_auth,
        json={"plan": plan.pk},
    )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "pending"
    response = requests.post(
        f"{base}/api/v1/applications/{application['id']}/keys/", auth=consumer_auth, json={}
    )
    assert response.status_code == 201, response.text
    secret = response.json()["key"]
    url = f"{gateway_server.ws_url}/ws/stock-prices/1.0.0/prices/ACME?access_token={secret}"

    # 4. Pending subscription: refused before any event flows. Approved: accepted.
    assert asyncio.run(refusal_code(url)) == 4403
    subscription = Subscription.objects.get(application_id=application["id"])
    approvals_page = admin_session.get(f"{base}/staff/approvals/").text
    assert "Trading screen" in approvals_page and consumer.email in approvals_page
    post_form(admin_session, f"{base}/staff/subscriptions/{subscription.pk}/approve/")
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE

    # 5. The demo provider backend publishes; the client receives live ACME ticks.
    demo = start_process(
        [
            str(BIN / "python"),
            "manage.py",
            "demo_backend",
            "--stock-rate",
            "40",
            "--departure-rate",
            "0",
            "--seconds",
            "60",
        ],
        tmp_path / "demo.log",
    )
    try:
        frames = asyncio.run(receive_events(url, 5))
    finally:
        stop_process(demo)
    events = [json.loads(frame) for frame in frames]
    assert {event["channel"] for event in events} == {"prices/ACME"}
    assert all(event["payload"]["symbol"] == "ACME" and event["payload"]["price"] > 0 for event in events)
    assert len({event["id"] for event in events}) == 5

    # 6. Usage reaches analytics in the gateway's next flush and shows on the consumer's page.
    delivered_bytes = sum(len(frame.encode()) for frame in frames)
    from analytics.services import usage_for_subscription

    usage = wait_for(
        lambda: (totals := usage_for_subscription(subscription=subscription)).events >= 5 and totals,
        what="the gateway's usage flush",
    )
    assert usage.bytes >= delivered_bytes
    consumer_session = browser_session(base, consumer.email)
    usage_page = consumer_session.get(f"{base}/usage/").text
    assert "Trading screen" in usage_page
    assert re.search(rf">\s*{usage.events:,}\s*<", usage_page), "the usage page shows the event count"

    # 7. A real Celery worker closes this month into an invoice and pushes it to localstripe.
    queue = f"journey-{uuid.uuid4().hex[:8]}"
    worker = start_process(
        [
            str(BIN / "celery"),
            "-A",
            "portal",
            "worker",
            "--pool=solo",
            "--loglevel=INFO",
            "-Q",
            queue,
            "--hostname",
            f"{queue}@%h",
            "--without-mingle",
            "--without-gossip",
        ],
        tmp_path / "worker.log",
        CELERY_TASK_DEFAULT_QUEUE=queue,
        STRIPE_API_KEY=stripe_settings.STRIPE_API_KEY,
        STRIPE_API_BASE=stripe_settings.STRIPE_API_BASE,
    )
    try:
        now = datetime.now(UTC)
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
        # This month is still open: close it early on purpose (allow_open), as an operator could.
        invoice_period_task.apply_async(args=[start.isoformat(), end.isoformat(), True], queue=queue)
        invoice = wait_for(
            lambda: Invoice.objects.filter(account__owner=consumer).exclude(stripe_invoice_id="").first(),
            timeout=60,
            what=f"the invoice to reach Stripe (worker log: {tmp_path / 'worker.log'})",
        )
    finally:
        stop_process(worker)
        amqp_queues_delete(queue)
    blocks = -(-usage.events // 1000)
    assert invoice.total_minor == 4900 + 150 * blocks
    stripe_invoice = stripe_client.v1.invoices.retrieve(invoice.stripe_invoice_id)
    assert stripe_invoice.customer == invoice.account.stripe_customer_id
    assert stripe_invoice.subtotal == invoice.total_minor

    # 8. The consumer sees the invoice, its amount and status in the portal.
    invoices_page = consumer_session.get(f"{base}/billing/invoices/").text
    assert f"${invoice.total_minor / 100:,.2f}" in invoices_page
    detail = consumer_session.get(f"{base}/billing/invoices/{invoice.pk}/").text
    assert invoice.stripe_invoice_id in detail and invoice.get_status_display() in detail
