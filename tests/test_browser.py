"""Browser tests: a new consumer's first minutes in the portal, driven through headless Chromium.

Each step saves a full-page screenshot to var/screenshots/<step>.png, to be looked at.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import Page, expect, sync_playwright

from analytics.services import usage_record_batch
from gateway.publishing import EventPublisher
from portal.models import Subscription
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
    SubscriptionFactory,
)

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

PRICE_PAYLOAD = {
    "type": "object",
    "required": ["symbol", "price", "ts"],
    "properties": {
        "symbol": {"type": "string", "description": "Ticker symbol"},
        "price": {"type": "number", "description": "Last trade price in USD"},
        "ts": {"type": "string", "format": "date-time"},
    },
}


@pytest.fixture(scope="module", autouse=True)
def allow_orm_beside_playwright(django_db_setup):
    """Let the ORM run beside Playwright's event loop while this module's tests run.

    Playwright's sync API runs an event loop in this thread, and Django's ORM refuses to run
    inside one unless told it is safe, which it is here because nothing else uses that loop.
    Set here rather than at import so other modules keep their async-safety checks; depending
    on ``django_db_setup`` creates the test database before Playwright starts.
    """
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


# pytest-playwright keeps Playwright (and its running event loop) for the whole session, and
# pytest-django runs some tests of other modules after this one: with the loop still running,
# their asyncio.run() fails. These module-scoped overrides stop Playwright when this module ends.
@pytest.fixture(scope="module")
def playwright():
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser_type(playwright, browser_name):
    return getattr(playwright, browser_name or "chromium")


@pytest.fixture(scope="module")
def browser(browser_type, browser_type_launch_args):
    browser = browser_type.launch(**browser_type_launch_args)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": "/usr/bin/chromium", "args": CHROMIUM_ARGS}


@pytest.fixture(scope="module")
def browser_context_args():
    # Replaces pytest-playwright's session fixture, which needs the session-wide Playwright.
    return {"viewport": {"width": 1280, "height": 900}}


@pytest.fixture
def stock_api(transactional_db, ticker_api):
    """The conftest's Ticker API with documentation a consumer would expect to read."""
    # As the importer stores the demo document: Markdown, wrapped mid-sentence, and a summary
    # that is the description's first sentence (so the page must not say it twice).
    ticker_api.summary = "Real-time stock prices for every listed symbol, several ticks per second."
    ticker_api.description = (
        "Real-time stock prices for every listed symbol, several ticks per\nsecond.\n\n"
        "**Demo data.** Prices are simulated; the companies are fictional. See\n"
        "[AsyncAPI](https://www.asyncapi.com/docs) for the document format.\n\n"
        'Each WebSocket text frame is one event:\n`{"id": "...", "channel": "prices/ACME", '
        '"published_at": 1764400000.123, "payload": {...}}`.'
    )
    ticker_api.save()
    channel = ticker_api.versions.get().channels.get()
    channel.description = "Every trade of the symbol, in **publication order**."
    channel.save()
    operation = ticker_api.versions.get().channels.get().operations.get()
    operation.summary = "Every trade of the symbol, as it happens."
    operation.messages = [
        {
            "name": "price",
            "title": "Price tick",
            "summary": "One trade.",
            "content_type": "application/json",
            "payload": PRICE_PAYLOAD,
        }
    ]
    operation.save()
    ticker_api.plans.filter(name="Gold").update(included_events=1_000_000, price_per_1000_events_minor=20)
    return ticker_api


@pytest.fixture
def train_api(transactional_db):
    """A second API so the catalog is not a single card."""
    api = APIFactory(
        name="Train departures", slug="trains", summary="Departures and delays from every station."
    )
    version = APIVersionFactory(api=api, version="2.1.0", asyncapi_version="2.6.0")
    channel = ChannelFactory(
        api_version=version,
        key="departures",
        address="stations/{station}/departures",
        parameters={"station": {"schema": {"type": "string", "enum": ["AMS", "UTR", "RTD"]}}},
    )
    OperationFactory(channel=channel, key="onDeparture")
    BusinessPlanFactory(api=api, name="Starter", price_per_1000_events_minor=10, included_events=50_000)
    return api


def shoot(page: Page, step: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{step}.png"), full_page=True)


def test_new_consumer_signs_up_subscribes_and_sees_their_key(page: Page, live_server, stock_api, train_api):
    page.goto(live_server.url + "/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Live events")
    expect(page.get_by_test_id("home-example")).to_contain_text("pip install websockets")
    shoot(page, "01-home")

    page.get_by_role("link", name="Sign up", exact=True).click()
    page.get_by_label("Email").fill("dana@example.com")
    page.get_by_label("Password", exact=True).fill("a long passphrase 42")
    page.get_by_label("Password (again)").fill("a long passphrase 42")
    shoot(page, "02-signup")
    page.get_by_role("button", name="Sign up").click()
    expect(page).to_have_url(re.compile(r"/apps/$"))
    expect(page.get_by_text("No applications yet")).to_be_visible()
    shoot(page, "03-applications-empty")

    page.get_by_label("Name").fill("Trading dashboard")
    page.get_by_role("button", name="Create application").click()
    expect(page.get_by_role("heading", name="Trading dashboard")).to_be_visible()
    shoot(page, "04-application-new")

    page.get_by_role("navigation").get_by_role("link", name="Catalog", exact=True).click()
    expect(page.get_by_role("heading", name="API catalog")).to_be_visible()
    shoot(page, "05-catalog")

    page.get_by_role("link", name="Ticker").click()
    expect(page.get_by_text("You can receive")).to_be_visible()
    expect(page.locator(".eg-schema", has_text="Last trade price in USD")).to_be_visible()
    description = page.get_by_test_id("api-description")
    expect(description.locator("strong")).to_have_text("Demo data.")
    expect(description.get_by_role("link", name="AsyncAPI")).to_have_attribute("rel", "nofollow noopener")
    expect(page.get_by_test_id("api-summary")).to_have_count(0)  # the description starts with it
    shoot(page, "06-api")

    page.locator(".eg-plan-option", has_text="Free").click()
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_text("is subscribed to Ticker")).to_be_visible()
    shoot(page, "07-subscribed")

    page.get_by_role("button", name="Generate API key").click()
    secret = page.get_by_test_id("api-key-secret")
    expect(secret).to_have_text(re.compile(r"^eg_[A-Za-z0-9_-]{40}$"))
    expect(page.locator("#snippet-cli")).to_contain_text(
        "pip install websockets\npython -m websockets 'ws://"
    )
    expect(page.locator("[data-live-panel]")).to_be_visible()
    expect(page.get_by_label("API key")).to_have_value(secret.inner_text())
    expect(page.get_by_label("Address")).to_have_value("prices/ACME")
    shoot(page, "08-key")

    page.reload()
    expect(page.get_by_test_id("api-key-secret")).to_have_count(0)
    # The live panel stays, and asks for the key instead of knowing it.
    expect(page.get_by_label("API key")).to_have_value("")
    page.get_by_role("button", name="GLOBEX").click()
    expect(page.get_by_label("Address")).to_have_value("prices/GLOBEX")
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("[data-live-log]")).to_contain_text("Enter an API key of this application first")
    expect(page.get_by_label("API key")).to_be_focused()
    shoot(page, "08b-application-live-panel")
    assert Subscription.objects.get(application__owner__email="dana@example.com").status == "active"


def _publish_in_thread(*, api: str, address: str, payloads: list[dict]) -> None:
    """Publish events to RabbitMQ the way provider backends do, from a thread with its own loop
    (this thread's loop belongs to Playwright)."""

    async def publish() -> None:
        async with EventPublisher() as publisher:
            for payload in payloads:
                await publisher.publish(api=api, version="1.0.0", address=address, payload=payload)

    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run_collecting(publish(), errors))
    thread.start()
    thread.join(30)
    assert not errors, errors


def _run_collecting(coroutine, errors: list[BaseException]) -> None:
    try:
        asyncio.run(coroutine)
    except BaseException as error:  # noqa: BLE001 - reported by the caller's assert
        errors.append(error)


@pytest.mark.e2e
def test_live_events_arrive_in_the_browser(page: Page, live_server, gateway_server, settings, bob):
    """The key just generated opens a WebSocket from the page to a real gateway and shows events."""
    settings.EVENTGATE_PUBLIC_URL = gateway_server.url
    # The RabbitMQ exchange is shared with other test runs: a unique slug keeps their events out.
    slug = f"live-{uuid.uuid4().hex[:10]}"
    api = APIFactory(name="Live prices", slug=slug)
    OperationFactory(channel=ChannelFactory(api_version=APIVersionFactory(api=api), key="prices"))
    application = ApplicationFactory(owner=bob, name="Live demo")
    SubscriptionFactory(application=application, plan=BusinessPlanFactory(api=api, name="Free"))

    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Email").fill("bob@example.com")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()
    page.goto(live_server.url + application.get_absolute_url())
    page.get_by_role("button", name="Generate API key").click()
    page.get_by_role("button", name="Connect", exact=True).click()
    expect(page.locator("[data-live-status]")).to_have_text("Connected", timeout=10_000)

    _publish_in_thread(
        api=slug, address="prices/ACME", payloads=[{"symbol": "ACME", "price": 131 + n} for n in range(3)]
    )

    expect(page.locator("[data-live-status]")).to_have_text("Connected · 3 events", timeout=10_000)
    newest = page.locator("[data-live-log] li").first
    expect(newest.locator(".eg-channel")).to_have_text("prices/ACME")
    expect(newest.locator(".eg-json")).to_have_text('{"symbol": "ACME", "price": 133}')

    # Another symbol: the address field takes any allowed value, and the panel reconnects to it.
    page.get_by_role("button", name="GLOBEX").click()
    expect(page.locator("[data-live-status]")).to_have_text("Connected", timeout=10_000)
    _publish_in_thread(api=slug, address="prices/GLOBEX", payloads=[{"symbol": "GLOBEX", "price": 64.15}])
    expect(page.locator("[data-live-status]")).to_have_text("Connected · 1 event", timeout=10_000)
    expect(page.locator("[data-live-log] li").first).to_contain_text('{"symbol": "GLOBEX", "price": 64.15}')
    shoot(page, "09-live-events")

    # Disconnect closes the socket (the gateway_server fixture then checks nothing is left open).
    page.get_by_role("button", name="Disconnect").click()
    expect(page.locator("[data-live-status]")).not_to_have_text(re.compile("Connected"), timeout=10_000)


def test_consumer_sees_pending_subscription_and_usage(page: Page, live_server, stock_api, bob):
    """Not part of the journey: pages a consumer meets later, screenshotted to be looked at."""
    application = ApplicationFactory(owner=bob, name="Risk monitor")
    active = SubscriptionFactory(application=application, plan=stock_api.plans.get(name="Free"))
    other = ApplicationFactory(owner=bob, name="Back office")
    SubscriptionFactory(
        application=other, plan=stock_api.plans.get(name="Gold"), status=Subscription.Status.PENDING
    )
    now = timezone.now().replace(second=0, microsecond=0)
    usage_record_batch(
        rows=[
            (
                active.pk,
                now - timedelta(minutes=m * 7),
                "prices/{symbol}",
                "out",
                300 + m * 17,
                (300 + m * 17) * 180,
            )
            for m in range(40)
        ]
    )
    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Email").fill("bob@example.com")
    page.get_by_label("Password").fill("correct horse battery")
    shoot(page, "10-login")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Risk monitor")).to_be_visible()
    shoot(page, "11-applications")

    page.get_by_role("link", name="Back office").click()
    expect(page.get_by_text("Pending approval", exact=True)).to_be_visible()
    shoot(page, "12-application-pending")

    page.get_by_role("navigation").get_by_role("link", name="Usage").click()
    expect(page.locator("canvas").first).to_be_visible()
    shoot(page, "13-usage")

    page.goto(live_server.url + "/apps/999999/")
    expect(page.get_by_role("heading", name="This page does not exist")).to_be_visible()
    shoot(page, "14-not-found")


def test_provider_and_admin_pages(page: Page, live_server, settings, stock_api, admin_user, bob):
    """A provider's import error, API page and plans; an admin's approval queue."""
    settings.ACCOUNT_ADAPTER = "portal.adapters.AccountAdapter"  # until portal/settings.py sets it
    stock_api.provider.set_password("correct horse battery")
    stock_api.provider.save()
    SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Back office"),
        plan=stock_api.plans.get(name="Gold"),
        status=Subscription.Status.PENDING,
    )
    BusinessPlanFactory(api=stock_api, name="Platinum", is_approved=False, flat_fee_minor=19900)

    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Email").fill(stock_api.provider.email)
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/provider/apis/$"))  # providers land on their APIs
    expect(page.get_by_role("heading", name="My APIs")).to_be_visible()
    shoot(page, "20-provider-apis")

    page.get_by_role("link", name="Import AsyncAPI document").click()
    page.get_by_label("…or paste it here").fill(
        "asyncapi: 3.0.0\ninfo:\n  title: Broken\n  version: 1.0.0\n  dupa: true\nchannels: {}\n"
    )
    page.get_by_role("button", name="Import").click()
    expect(page.get_by_test_id("import-error")).to_contain_text("dupa")
    shoot(page, "21-provider-import-error")

    page.goto(live_server.url + "/provider/apis/ticker/")
    expect(page.get_by_role("heading", name="Business plans")).to_be_visible()
    platinum = page.get_by_test_id("plan").filter(has_text="Platinum")
    expect(platinum).to_contain_text("Awaiting admin approval")
    expect(platinum).to_contain_text("Hidden from consumers")
    expect(page.get_by_test_id("api-description").locator("strong")).to_have_text("Demo data.")
    shoot(page, "22-provider-api")

    page.context.clear_cookies()
    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Email").fill(admin_user.email)
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/staff/approvals/$"))  # admins land on the queue
    expect(page.get_by_text("Back office")).to_be_visible()
    shoot(page, "23-approvals")
    page.get_by_role("button", name="Approve").first.click()
    expect(page.get_by_text("Approved Back office")).to_be_visible()


def _sign_in(page: Page, live_server, email: str) -> None:
    page.context.clear_cookies()
    page.goto(live_server.url + "/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()


def test_provider_imports_admin_approves_plan_consumer_subscribes(
    page: Page, live_server, alice, admin_user, bob
):
    """Issue 3's journey: a provider uploads a real AsyncAPI document written by others, sees it
    rendered by the official AsyncAPI component, publishes it and adds a plan from a template; an
    admin approves the plan; a consumer finds the API by a channel name and subscribes."""
    from tests.conftest import SHARED_ASYNCAPI

    _sign_in(page, live_server, alice.email)
    page.get_by_role("link", name="Import AsyncAPI document").click()
    page.get_by_label("AsyncAPI document").set_input_files(
        str(SHARED_ASYNCAPI / "spec_streetlights-mqtt.yml")
    )
    page.get_by_role("button", name="Import").click()
    expect(page.get_by_role("heading", name="Streetlights MQTT API")).to_be_visible()
    expect(page.get_by_text("as a draft")).to_be_visible()
    shoot(page, "30-provider-imported")

    # The draft's documentation, rendered by @asyncapi/react-component before anyone else sees it.
    page.get_by_test_id("preview-docs").click()
    expect(page.get_by_test_id("api-preview")).to_contain_text("is a draft")
    docs = page.get_by_test_id("asyncapi-docs")
    expect(docs).to_contain_text(
        "smartylighting/streetlights/1/0/event/{streetlightId}/lighting/measured", timeout=30_000
    )
    expect(docs).to_contain_text("lumens")  # a property of the message payload schema
    expect(docs).to_contain_text("YOU RECEIVE")
    shoot(page, "31-provider-preview-docs")

    page.get_by_role("link", name="Back to the provider page").click()
    page.get_by_test_id("version").get_by_role("button", name="Publish").click()
    expect(page.get_by_text("it is in the catalog")).to_be_visible()
    page.get_by_label("Start from a template").select_option("async-silver")
    page.get_by_role("button", name="Use").click()
    plan_form = page.get_by_test_id("plan-form")
    expect(plan_form.get_by_label("Name")).to_have_value("AsyncSilver")
    plan_form.get_by_role("button", name="Add plan").click()
    silver = page.get_by_test_id("plan").filter(has_text="AsyncSilver")
    expect(silver).to_contain_text("Awaiting admin approval")
    expect(silver).to_contain_text("25,000 events per day")
    shoot(page, "32-provider-plan-added")

    _sign_in(page, live_server, admin_user.email)
    expect(page).to_have_url(re.compile(r"/staff/approvals/$"))
    row = page.get_by_role("row").filter(has_text="AsyncSilver")
    expect(row).to_contain_text("25,000 events per day")
    shoot(page, "33-admin-approval-queue")
    row.get_by_role("button", name="Approve").click()
    expect(page.get_by_text("Approved the plan AsyncSilver")).to_be_visible()
    expect(page.get_by_text("No plans are waiting.")).to_be_visible()

    _sign_in(page, live_server, bob.email)
    page.goto(live_server.url + "/apis/?q=lighting/measured")
    expect(page.get_by_role("link", name="Streetlights MQTT API")).to_be_visible()
    shoot(page, "34-consumer-catalog-search")
    page.get_by_role("link", name="Streetlights MQTT API").click()
    page.locator(".eg-plan-option", has_text="AsyncSilver").click()
    page.get_by_label("New application name").fill("Street monitor")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_text("Street monitor is subscribed to Streetlights MQTT API")).to_be_visible()
    shoot(page, "35-consumer-subscribed")
    subscription = Subscription.objects.get(application__owner=bob)
    assert (subscription.status, subscription.plan.name) == ("active", "AsyncSilver")
