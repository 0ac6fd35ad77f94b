"""The application page's credentials in headless Chromium: an API key with an expiry, a rotation
from the Rotate menu, the OAuth2 consumer key and secret, and a token revoked from the page.

Screenshots go to var/screenshots/credentials-<step>.png, to be looked at.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from oauth2_provider.models import AccessToken
from playwright.sync_api import Page, expect

from tests.factories import ApplicationFactory, ChannelFactory, OperationFactory, SubscriptionFactory

# Chromium and the module-scoped Playwright fixtures (see tests/test_browser.py for why they are
# module-scoped) and the ORM beside Playwright's loop.
from tests.test_browser import (  # noqa: F401 - fixtures
    allow_orm_beside_playwright,
    browser,
    browser_context_args,
    browser_type,
    browser_type_launch_args,
    playwright,
)

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"


def shoot(page: Page, step: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"credentials-{step}.png"), full_page=True)


def test_consumer_manages_keys_and_oauth_client_from_the_application_page(
    page: Page, live_server, transactional_db, bob, ticker_api
):
    version = ticker_api.versions.get()
    orders = ChannelFactory(api_version=version, key="orders", address="orders", parameters={})
    OperationFactory(channel=orders, key="placeOrder", action="send")
    application = ApplicationFactory(owner=bob, name="Trading dashboard")
    SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))

    page.goto(f"{live_server.url}/accounts/login/?next=/apps/{application.pk}/")
    page.get_by_label("Email").fill("bob@example.com")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Trading dashboard")).to_be_visible()

    # A key valid until a date: the date field appears only for that choice.
    date_field = page.get_by_label("Last day it works")
    expect(date_field).to_be_hidden()
    page.get_by_label("Expiry").select_option("date")
    expect(date_field).to_be_visible()
    last_day = (timezone.now() + timedelta(days=60)).date()
    date_field.fill(last_day.isoformat())
    page.locator("#key-name").fill("production")
    page.get_by_role("button", name="Generate API key").click()
    secret = page.get_by_test_id("api-key-secret").inner_text()
    assert secret.startswith("eg_")
    key_list = page.get_by_test_id("key-list")
    expect(key_list).to_contain_text(f"expires {last_day + timedelta(days=1):%d %b %Y}")
    expect(key_list).to_contain_text("production")

    # Rotate with the default grace: both keys listed, the old one "ending".
    page.get_by_role("button", name="Rotate").click()
    page.get_by_role("button", name="Old key works 24 more hours").click()
    expect(page.get_by_text("Rotated")).to_be_visible()
    new_secret = page.get_by_test_id("api-key-secret").inner_text()
    assert new_secret.startswith("eg_") and new_secret != secret
    expect(key_list.locator(".badge", has_text="ending")).to_have_count(1)
    expect(key_list.locator(".badge", has_text="active")).to_have_count(1)

    # The OAuth2 client: the secret shows once, and works at the token endpoint.
    page.get_by_role("button", name="Create consumer key and secret").click()
    client_secret = page.get_by_test_id("client-secret").inner_text()
    client_id = page.get_by_test_id("client-id").inner_text()
    page.locator("#oauth").scroll_into_view_if_needed()
    shoot(page, "client-created")
    expect(page.get_by_test_id("scope-list")).to_contain_text("ticker:receive:prices/{symbol}")
    expect(page.get_by_test_id("scope-list")).to_contain_text("ticker:send:orders")
    basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
    response = Client().post(
        "/o/token/",
        {"grant_type": "client_credentials", "scope": "ticker:receive:prices/{symbol}"},
        HTTP_AUTHORIZATION=f"Basic {basic}",
    )
    assert response.status_code == 200, response.content
    page.reload()
    expect(page.get_by_test_id("client-secret")).to_have_count(0)
    expect(page.get_by_test_id("token-count")).to_have_text("1")
    expect(page.get_by_test_id("token-table")).to_contain_text("ticker:receive:prices/{symbol}")
    page.locator("#oauth").scroll_into_view_if_needed()
    shoot(page, "application")

    page.get_by_test_id("token-table").get_by_role("button", name="Revoke").click()
    expect(page.get_by_text("Revoked access token")).to_be_visible()
    assert not AccessToken.objects.exists()
    shoot(page, "token-revoked")


def test_application_page_snippets_agree_and_unnamed_keys_read_default(
    page: Page, live_server, transactional_db, bob, alice, ticker_api
):
    from tests.factories import APIFactory, APIVersionFactory, BusinessPlanFactory

    application = ApplicationFactory(owner=bob, name="Two APIs")
    SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))
    weather = APIFactory(provider=alice, name="Weather", slug="weather")
    version = APIVersionFactory(api=weather, version="2.0.0")
    OperationFactory(channel=ChannelFactory(api_version=version, key="alerts", address="alerts/{region}"))
    SubscriptionFactory(application=application, plan=BusinessPlanFactory(api=weather, name="Free"))

    page.goto(f"{live_server.url}/accounts/login/?next=/apps/{application.pk}/")
    page.get_by_label("Email").fill("bob@example.com")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Generate API key").click()  # no name: "default"
    secret = page.get_by_test_id("api-key-secret").inner_text()
    expect(page.get_by_test_id("key-name")).to_have_text("default")
    snippet = page.locator("#snippet-js").inner_text()
    assert f'const key = "{secret}";' in snippet and '"eventgate.bearer." + key' in snippet
    assert "access_token" not in snippet
    shoot(page, "new-key-snippets")

    page.get_by_role("button", name="Create consumer key and secret").click()
    token_snippet = page.locator("#snippet-token").inner_text()
    connect_snippet = page.locator("#snippet-oauth-js").inner_text()
    scope = token_snippet.split("scope=", 1)[1].split('"', 1)[0]
    api_slug = scope.split(":", 1)[0]
    assert f"/ws/{api_slug}/" in connect_snippet, (scope, connect_snippet)
    page.locator("#oauth").scroll_into_view_if_needed()
    shoot(page, "oauth-snippets-agree")
