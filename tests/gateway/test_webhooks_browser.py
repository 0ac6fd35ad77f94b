"""The webhook pages in headless Chromium: register a callback from the application page, see it
verified, read a delivery log with retries, dead letters and a redelivery. Screenshots go to
var/screenshots/webhooks-*.png, to be looked at."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from gateway.models import WebhookDelivery, WebhookSubscription
from portal.celery import app as celery_app
from tests.factories import ApplicationFactory, SubscriptionFactory
from tests.fixtures.servers import CallbackServer
from tests.test_browser import (  # noqa: F401 - Playwright fixtures scoped to this module
    allow_orm_beside_playwright,
    browser,
    browser_context_args,
    browser_type,
    browser_type_launch_args,
    playwright,
    shoot,
)

pytestmark = pytest.mark.browser


@pytest.fixture
def verification_inline(settings) -> Iterator[None]:
    """Celery tasks run inline in the server thread (no worker here), callbacks on 127.0.0.1."""
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    conf = celery_app.conf
    saved = conf.task_always_eager, conf.task_eager_propagates
    conf.task_always_eager, conf.task_eager_propagates = True, True
    yield
    conf.task_always_eager, conf.task_eager_propagates = saved


def sign_in(page: Page, base: str, email: str) -> None:
    page.goto(base + "/accounts/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/apps/$"))


def test_consumer_registers_a_webhook_and_reads_its_delivery_log(
    page: Page, live_server, ticker_api, bob, verification_inline, callback_server: CallbackServer
):
    application = ApplicationFactory(owner=bob, name="Trading bot")
    subscription = SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))
    callback_server.verify["/broken"] = 404
    sign_in(page, live_server.url, bob.email)

    page.goto(live_server.url + application.get_absolute_url())
    shoot(page, "webhooks-00-application")
    page.get_by_role("link", name="Webhooks").click()
    expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()
    expect(page.get_by_text("No webhooks yet.")).to_be_visible()
    shoot(page, "webhooks-01-empty")

    # A callback the verification cannot pass: the reason is on the page.
    page.get_by_label("Channel address").fill("prices/GLOBEX")
    page.get_by_label("Callback URL").fill(callback_server.url("/broken"))
    page.get_by_label("Secret").fill("globex-secret-0123456789")
    page.get_by_role("button", name="Register and verify").click()
    expect(page.get_by_test_id("webhook-status")).to_have_text("Verification failed")
    expect(page.get_by_test_id("webhook-state")).to_contain_text("answered HTTP 404 Not Found")
    shoot(page, "webhooks-02-failed")

    page.get_by_role("link", name="Webhooks").click()
    page.get_by_label("Channel address").fill("prices/NOPE")
    page.get_by_label("Callback URL").fill(callback_server.url("/hooks"))
    page.get_by_label("Secret").fill("short")
    page.get_by_role("button", name="Register and verify").click()
    expect(page.get_by_text("is not a channel you can receive events from")).to_be_visible()
    expect(page.get_by_text("The secret must be at least 16 characters long.")).to_be_visible()
    expect(page.get_by_label("Secret")).to_have_value("")
    shoot(page, "webhooks-03-errors")

    page.get_by_label("Channel address").fill("prices/ACME")
    page.get_by_label("Secret").fill("acme-secret-0123456789")
    page.get_by_role("button", name="Register and verify").click()
    expect(page.get_by_test_id("webhook-status")).to_have_text("Active")
    expect(page.get_by_test_id("callback-url")).to_have_text(callback_server.url("/hooks"))
    expect(page.get_by_text("No deliveries yet.")).to_be_visible()

    # A delivery log as the dispatcher and worker leave it.
    webhook = WebhookSubscription.objects.get(address="prices/ACME")
    now = timezone.now()
    body = '{"id":"%s","channel":"prices/ACME","published_at":1764400000.1,"payload":{"price":187.42}}'
    rows = [
        ("9ff01bd0-94c7-46a7-991f-93f79974331e", "delivered", 1, 200, "", 84),
        ("0b1c5e0e-3f5a-4b8e-9d43-1f3c0e6b2a11", "delivered", 2, 200, "", 131),
        ("5a2d9e7c-1b8f-4c3e-a6d0-7e9f2b4c8d55", "dead", 6, 500, "", 47),
        ("c3e8a1f4-6d2b-4e9a-8f1c-2b7d5e3a9c66", "dead", 6, None, "timed out after 10 s", None),
        ("e7f9b2c1-4a6d-4e8b-9c3f-5d1a7b2e8f77", "retrying", 2, 503, "", 12),
    ]
    for n, (event_id, status, attempts, code, error, latency) in enumerate(rows):
        WebhookDelivery.objects.create(
            webhook=webhook,
            event_id=event_id,
            body=body % event_id,
            size=len(body % event_id),
            status=status,
            attempts=attempts,
            max_attempts=6,
            last_status_code=code,
            last_error=error,
            last_latency_ms=latency,
            created=now - timedelta(minutes=5 - n),
            next_attempt_at=now + timedelta(seconds=40) if status == "retrying" else None,
        )
    page.reload()
    log = page.get_by_test_id("delivery-log")
    expect(log.locator("tbody tr")).to_have_count(5)
    expect(page.get_by_test_id("dead-letters-tab")).to_contain_text("2")
    shoot(page, "webhooks-04-log")

    page.get_by_test_id("dead-letters-tab").click()
    expect(log.locator("tbody tr")).to_have_count(2)
    dead_event = "5a2d9e7c-1b8f-4c3e-a6d0-7e9f2b4c8d55"
    log.locator("tbody tr", has_text=dead_event).get_by_role("button", name="Redeliver").click()
    expect(page.get_by_text(f"Redelivery of event {dead_event} queued")).to_be_visible()
    # The worker ran inline: the callback got the stored body, signed, and the log says so.
    (post,) = callback_server.received("/hooks")
    assert post.body.decode() == body % dead_event
    page.get_by_role("link", name="All").click()
    redelivered = log.locator("tbody tr").first
    expect(redelivered).to_contain_text("redelivery")
    expect(redelivered).to_contain_text("Delivered")
    expect(redelivered).to_contain_text("1/1")
    shoot(page, "webhooks-05-redelivered")

    page.get_by_role("link", name="Webhooks", exact=True).click()
    expect(page.get_by_test_id("webhook-list").locator("a")).to_have_count(2)
    shoot(page, "webhooks-06-list")
    assert subscription.webhooks.count() == 2


def test_webhook_of_a_suspended_subscription_shows_paused(page: Page, live_server, ticker_api, bob):
    application = ApplicationFactory(owner=bob, name="Trading bot")
    subscription = SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))
    version = ticker_api.versions.get()
    webhook = WebhookSubscription.objects.create(
        subscription=subscription,
        api_version=version,
        channel=version.channels.get(key="prices"),
        address="prices/ACME",
        routing_key="ticker.1%2E0%2E0.prices.ACME",
        callback_url="https://hooks.example.com/eventgate",
        secret="s" * 20,
        status=WebhookSubscription.Status.ACTIVE,
        lease_seconds=864000,
        verified_at=timezone.now(),
    )
    subscription.status = subscription.Status.SUSPENDED
    subscription.decision_reason = "unpaid invoice INV-0042"
    subscription.decided_at = timezone.now()
    subscription.save()
    sign_in(page, live_server.url, bob.email)

    page.goto(f"{live_server.url}/apps/{application.pk}/webhooks/")
    expect(page.get_by_test_id("webhook-list")).to_contain_text("Paused")
    expect(page.get_by_test_id("webhook-paused")).to_contain_text("the subscription is suspended")
    shoot(page, "webhooks-10-paused-list")
    page.goto(live_server.url + webhook.get_absolute_url())
    expect(page.get_by_test_id("webhook-status")).to_have_text("Paused")
    expect(page.get_by_test_id("webhook-state")).to_contain_text("Deliveries are paused.")
    expect(page.get_by_test_id("webhook-state")).to_contain_text("unpaid invoice INV-0042")
    shoot(page, "webhooks-11-paused-detail")
