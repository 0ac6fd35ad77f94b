"""The Try it page in headless Chromium against a real gateway process (``gateway_server``) and
real RabbitMQ: issue a test key, connect, watch an event a provider publishes arrive, send one on
a send channel and consume it from the inbound exchange, and see why a connection is refused.

Screenshots go to var/screenshots/try-it-*.png, to be looked at.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any

import aio_pika
import pytest
from django.conf import settings
from playwright.sync_api import Page, expect

from gateway.publishing import event_publish, routing_key
from portal.models import APIKey, Operation, Subscription
from portal.services.subscriptions import subscription_cancel
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
    SubscriptionFactory,
)

# Chromium and the module-scoped Playwright fixtures (see tests/test_browser.py for why they are
# module-scoped), the ORM beside Playwright's loop, sign-in and screenshots.
from tests.test_browser import (  # noqa: F401 - fixtures
    _run_collecting,
    _sign_in,
    allow_orm_beside_playwright,
    browser,
    browser_context_args,
    browser_type,
    browser_type_launch_args,
    playwright,
    shoot,
)

pytestmark = pytest.mark.browser

ORDER_PAYLOAD = {
    "type": "object",
    "required": ["symbol", "quantity"],
    "properties": {
        "symbol": {"type": "string", "enum": ["ACME", "GLOBEX"]},
        "quantity": {"type": "integer", "description": "Shares to buy"},
        "limit": {"type": "number", "example": 101.5},
    },
}


@pytest.fixture
def market_api(transactional_db):
    """An API (unique slug: the exchanges are shared with other test runs) with a receive channel
    ``prices/{symbol}`` and a send channel ``orders/{desk}``."""
    api = APIFactory(name="Market", slug=f"market-{uuid.uuid4().hex[:10]}")
    version = APIVersionFactory(api=api, version="1.0.0", validate_payloads=True)
    prices = ChannelFactory(
        api_version=version,
        key="prices",
        address="prices/{symbol}",
        title="Trades of one symbol",
        parameters={"symbol": {"enum": ["ACME", "GLOBEX", "INITECH"], "description": "Ticker symbol"}},
    )
    OperationFactory(channel=prices, key="receivePrice")
    orders = ChannelFactory(
        api_version=version,
        key="orders",
        address="orders/{desk}",
        title="Orders to a trading desk",
        parameters={"desk": {"schema": {"type": "string", "pattern": "^[a-z]+$", "default": "equities"}}},
    )
    OperationFactory(
        channel=orders,
        key="placeOrder",
        action=Operation.Action.SEND,
        messages=[{"name": "order", "title": "Order", "payload": ORDER_PAYLOAD}],
    )
    return api


@pytest.fixture
def market_app(market_api, bob):
    application = ApplicationFactory(owner=bob, name="Trading desk")
    SubscriptionFactory(application=application, plan=BusinessPlanFactory(api=market_api, name="Free"))
    return application


class InboundListener:
    """Consumes events clients send (``EVENTGATE_INBOUND_EXCHANGE``) with one routing key, from
    an exclusive queue in a thread with its own event loop (this thread's belongs to Playwright).

    ``messages``: ``(body, headers)`` of each message received so far.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.messages: list[tuple[bytes, dict[str, Any]]] = []
        self.errors: list[BaseException] = []
        self._bound = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: _run_collecting(self._listen(), self.errors))

    async def _listen(self) -> None:
        connection = await aio_pika.connect(settings.AMQP_URL)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                settings.EVENTGATE_INBOUND_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange, self.key)
            self._bound.set()
            while not self._stop.is_set():
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                self.messages.append((message.body, dict(message.headers or {})))

    def __enter__(self) -> InboundListener:
        self._thread.start()
        assert self._bound.wait(15) or self.errors, "the inbound queue was not bound within 15 s"
        assert not self.errors, self.errors
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def wait(self, count: int, timeout: float = 10.0) -> list[tuple[bytes, dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline and not self.errors:
            time.sleep(0.05)
        assert not self.errors, self.errors
        return self.messages


def _publish(**event: Any) -> None:
    """``event_publish(**event)`` from a thread with its own event loop."""
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run_collecting(event_publish(**event), errors))
    thread.start()
    thread.join(30)
    assert not errors, errors


def _text(value: Any) -> str:
    """JSON as the page prints it (``JSON.stringify(value, null, 2)``)."""
    return json.dumps(value, indent=2)


@pytest.mark.e2e
def test_test_key_connects_receives_and_sends_events(
    page: Page, live_server, gateway_server, settings, bob, market_api, market_app
):
    settings.EVENTGATE_PUBLIC_URL = gateway_server.url
    slug = market_api.slug
    socket_urls: list[str] = []
    page.on("websocket", lambda socket: socket_urls.append(socket.url))
    _sign_in(page, live_server, bob.email)
    # In a few clicks from anywhere: the navigation.
    page.get_by_role("navigation").get_by_role("link", name="Try it").click()
    expect(page.get_by_role("heading", name="Try it", level=1)).to_be_visible()
    expect(page.get_by_label("Application")).to_have_value(str(market_app.pk))
    expect(page.get_by_label("{symbol}")).to_have_value("ACME")

    page.get_by_role("button", name="Issue test key").click()
    expect(page.locator("[data-try-key-prefix]")).to_contain_text("eg_")
    key = APIKey.objects.get(application=market_app)
    expect(page.locator("[data-try-key-prefix]")).to_have_text(f"{key.prefix}…")
    assert key.name.startswith("try-it ") and key.expires_at is not None

    page.get_by_label("{symbol}").select_option("GLOBEX")
    expect(page.locator("[data-try-address]")).to_have_text("prices/GLOBEX")
    expect(page.locator("[data-try-url]")).to_have_text(
        f"{gateway_server.ws_url}/ws/{slug}/1.0.0/prices/GLOBEX"
    )
    expect(page.locator("[data-try-send-hint]")).to_contain_text("This channel has no send operation")
    expect(page.get_by_label("Event payload (JSON)")).to_be_hidden()
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("[data-try-status]")).to_have_text("Open", timeout=10_000)

    _publish(api=slug, version="1.0.0", address="prices/GLOBEX", payload={"symbol": "GLOBEX", "price": 64.15})
    expect(page.locator("[data-try-status]")).to_have_text("Open · 1 event", timeout=10_000)
    newest = page.locator("[data-try-log] li").first
    expect(newest.locator(".eg-channel")).to_have_text("prices/GLOBEX")
    expect(newest.locator("pre")).to_have_text(_text({"symbol": "GLOBEX", "price": 64.15}))
    shoot(page, "try-it-1-receive")

    # The send channel: picking it reconnects there, with the desk's default filled in.
    page.get_by_label("Channel", exact=True).select_option(label="orders/{desk}  (send)")
    expect(page.get_by_label("{desk}")).to_have_value("equities")
    expect(page.locator("[data-try-status]")).to_have_text("Open", timeout=10_000)
    payload = page.get_by_label("Event payload (JSON)")
    expect(payload).to_be_enabled()
    assert json.loads(payload.input_value()) == {"symbol": "ACME", "quantity": 0, "limit": 101.5}

    # Invalid JSON never leaves the page.
    payload.fill('{"symbol": "ACME",')
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.locator("[data-try-payload-error]")).to_contain_text("Not valid JSON")

    order = {"symbol": "ACME", "quantity": 10, "limit": 101.5}
    with InboundListener(routing_key(api=slug, version="1.0.0", address="orders/equities")) as inbound:
        # The version checks payloads: one that fails its schema comes back as an error frame.
        payload.fill(json.dumps({"symbol": "NOPE", "quantity": 10}))
        page.get_by_role("button", name="Send", exact=True).click()
        error = page.locator("[data-try-log] .eg-try-error").first
        expect(error.locator(".eg-try-kind")).to_have_text("error 4400", timeout=10_000)
        expect(error).to_contain_text("NOPE")
        payload.fill(json.dumps(order))
        page.get_by_role("button", name="Send", exact=True).click()
        [(body, headers)] = inbound.wait(1)
    assert json.loads(body) == order
    assert headers["eg-api"] == slug
    assert headers["eg-channel"] == "orders/equities"
    assert str(headers["eg-application"]) == str(market_app.pk)
    expect(page.locator("[data-try-log] li").first.locator(".eg-try-kind")).to_have_text("sent")
    expect(page.locator("[data-try-log] .eg-try-error")).to_have_count(1)
    shoot(page, "try-it-2-send")

    # The address bar links to this selection; neither it nor a socket's URL holds the credential.
    assert "eg_" not in page.url
    assert socket_urls == [
        f"{gateway_server.ws_url}/ws/{slug}/1.0.0/prices/GLOBEX",
        f"{gateway_server.ws_url}/ws/{slug}/1.0.0/orders/equities",
    ]
    assert "channel=orders%2Fequities" in page.url
    page.get_by_role("button", name="Disconnect").click()
    expect(page.locator("[data-try-status]")).to_have_text("Closed · 1000")
    gateway_server.stop()
    log = gateway_server.log()
    assert key.prefix not in log and "eventgate.bearer" not in log


@pytest.mark.e2e
def test_refused_connection_shows_its_reason(
    page: Page, live_server, gateway_server, settings, bob, market_app
):
    settings.EVENTGATE_PUBLIC_URL = gateway_server.url
    _sign_in(page, live_server, bob.email)
    page.goto(f"{live_server.url}/try/?application={market_app.pk}&channel=prices/INITECH")
    expect(page.get_by_label("{symbol}")).to_have_value("INITECH")
    page.get_by_label("Paste an API key or access token").check()
    page.get_by_label("API key or OAuth access token").fill("eg_" + "x" * 40)
    page.get_by_role("button", name="Connect", exact=True).click()

    expect(page.locator("[data-try-status]")).to_have_text("Refused · 4401", timeout=10_000)
    close = page.locator("[data-try-close]")
    expect(close).to_contain_text("Refused with code 4401")
    expect(close).to_contain_text("the credential is missing, unknown, invalid, expired or revoked")
    expect(page.locator("[data-try-log] li").first).to_contain_text("refused 4401")
    # A refusal is never announced as an open connection.
    expect(page.locator("[data-try-log]")).not_to_contain_text("Open.")
    shoot(page, "try-it-3-refused")

    # An open connection closed by the gateway shows the code's meaning too.
    page.get_by_label("Issue a temporary test key").check()
    page.get_by_role("button", name="Issue test key").click()
    expect(page.locator("[data-try-key-prefix]")).to_contain_text("eg_")
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("[data-try-status]")).to_have_text("Open", timeout=10_000)
    subscription_cancel(subscription=market_app.subscriptions.get(), actor=bob)
    expect(page.locator("[data-try-status]")).to_have_text("Closed · 4403", timeout=10_000)
    expect(close).to_contain_text("Closed with code 4403 — no active subscription")
    shoot(page, "try-it-4-closed")


def test_page_guides_through_credential_and_channel(page: Page, live_server, bob, market_api, market_app):
    """Without a gateway: the deep link's selection, the parameter checks, the send box's state,
    and what the page says before anything is connected."""
    _sign_in(page, live_server, bob.email)
    page.goto(f"{live_server.url}/try/?application={market_app.pk}&api={market_api.slug}&channel=orders")
    expect(page.locator("[data-try-address]")).to_have_text("orders/equities")
    expect(page.get_by_label("{desk}")).to_have_value("equities")
    expect(page.locator("[data-try-actions]")).to_have_text("you can send")
    expect(page.get_by_label("Event payload (JSON)")).to_be_enabled()
    expect(page.get_by_role("button", name="Send", exact=True)).to_be_disabled()
    expect(page.locator("[data-try-send-hint]")).to_contain_text("Connect first")

    # Connecting without a credential says what to do.
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("[data-try-log] li").first).to_contain_text("Issue a test key first")
    # A value the parameter's pattern refuses is marked before any connection.
    page.get_by_role("button", name="Issue test key").click()
    expect(page.locator("[data-try-key-prefix]")).to_contain_text("eg_")
    page.get_by_label("{desk}").fill("Equities/EU")
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("[data-try-param].is-invalid + .invalid-feedback")).to_have_text(
        "A parameter value cannot contain “/”."
    )
    page.get_by_label("{desk}").fill("Equities")
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("[data-try-param].is-invalid + .invalid-feedback")).to_have_text(
        "Does not match ^[a-z]+$."
    )
    page.get_by_label("{desk}").fill("fx")
    expect(page.locator("[data-try-address]")).to_have_text("orders/fx")
    shoot(page, "try-it-0-start")
    page.set_viewport_size({"width": 390, "height": 844})
    shoot(page, "try-it-0-phone")


def test_page_says_what_to_do_without_an_application_or_subscription(
    page: Page, live_server, carol, market_api
):
    _sign_in(page, live_server, carol.email)
    page.get_by_role("navigation").get_by_role("link", name="Try it").click()
    expect(page.get_by_text("You have no applications yet.")).to_be_visible()
    page.get_by_role("link", name="Create an application").click()
    expect(page).to_have_url(f"{live_server.url}/apps/")

    application = ApplicationFactory(owner=carol, name="Waiting room")
    gold = BusinessPlanFactory(api=market_api, name="Gold", requires_approval=True)
    SubscriptionFactory(application=application, plan=gold, status=Subscription.Status.PENDING)
    page.goto(f"{live_server.url}/try/?api={market_api.slug}")
    expect(page.get_by_text("Waiting room has no active subscription to connect with.")).to_be_visible()
    expect(page.get_by_test_id("try-problem")).to_have_text(
        "Market cannot be tried with this application now: see “Not offered here” below."
    )
    expect(page.get_by_test_id("try-unavailable")).to_contain_text(
        "the subscription (Gold plan) waits for an admin's approval"
    )
    shoot(page, "try-it-5-pending")


@pytest.mark.e2e
def test_a_throttled_channel_shows_the_notice_not_an_event(
    page: Page, live_server, gateway_server, settings, bob, market_api, market_app
):
    """A plan of 1 event per minute: the first event arrives, the second is stopped and the log
    shows the gateway's notice in words (docs/throttling.md), not as an event."""
    settings.EVENTGATE_PUBLIC_URL = gateway_server.url
    plan = market_app.subscriptions.get().plan
    plan.rate_limit_events = 1
    plan.save()
    _sign_in(page, live_server, bob.email)
    page.goto(f"{live_server.url}/try/")
    page.get_by_role("button", name="Issue test key").click()
    expect(page.locator("[data-try-key-prefix]")).to_contain_text("eg_")
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("[data-try-status]")).to_have_text("Open", timeout=10_000)

    for price in (101.0, 102.0):
        _publish(
            api=market_api.slug,
            version="1.0.0",
            address="prices/ACME",
            payload={"symbol": "ACME", "price": price},
        )
    notice = page.locator("[data-try-log] .eg-try-note").first
    expect(notice.locator(".eg-try-kind")).to_have_text("throttled · rate", timeout=10_000)
    expect(notice).to_contain_text(
        f"rate limit of plan '{plan.name}' reached (1 event per minute); resumes in"
    )
    expect(notice).to_contain_text("UTC)")
    expect(page.locator("[data-try-status]")).to_have_text("Open · 1 event")
    shoot(page, "try-it-3-throttled")
    page.get_by_role("button", name="Disconnect").click()
    expect(page.locator("[data-try-status]")).to_have_text("Closed · 1000")
