"""Portal pages through the test client, by their public URLs: catalog, applications, keys,
provider import and publishing, and the admins' approval queue."""

from __future__ import annotations

import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, RequestFactory
from django.views.defaults import permission_denied, server_error

from portal.asyncapi import MAX_DOCUMENT_BYTES
from portal.models import API, APIKey, APIVersion, Application, BusinessPlan, Operation, Subscription
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
    SubscriptionFactory,
    UserFactory,
)

SECRET = re.compile(r"eg_[A-Za-z0-9_-]{40}")

TRAINS_YAML = b"""asyncapi: 3.0.0
info:
  title: Train departures
  version: 2.1.0
  description: Live departures from every station.
channels:
  departures:
    address: stations/{station}/departures
    parameters:
      station:
        enum: [AMS, UTR]
    messages:
      departure:
        payload:
          type: object
          properties:
            platform: {type: string}
operations:
  announceDeparture:
    action: send
    channel: {$ref: '#/channels/departures'}
"""

# Line 5 holds the key the AsyncAPI 3.0.0 schema does not allow.
BROKEN_YAML = b"""asyncapi: 3.0.0
info:
  title: Broken
  version: 1.0.0
  dupa: true
channels: {}
"""


@pytest.fixture
def gold(ticker_api):
    return ticker_api.plans.get(name="Gold")


@pytest.fixture
def free(ticker_api):
    return ticker_api.plans.get(name="Free")


@pytest.fixture
def bob_app(bob):
    return ApplicationFactory(owner=bob, name="Bob's dashboard")


@pytest.fixture
def account_adapter(settings):
    """The portal's allauth adapter, until ``ACCOUNT_ADAPTER`` is set in portal/settings.py."""
    settings.ACCOUNT_ADAPTER = "portal.adapters.AccountAdapter"


def _content(response) -> str:
    return response.content.decode()


def _live_key_field(page: str) -> str:
    """The live-events panel's key <input> tag."""
    return re.search(r'<input[^>]*id="live-key"[^>]*>', page).group(0)


# Home


def test_home_example_connects_to_the_demo_api_and_shows_the_gateways_frame(client, db):
    page = _content(client.get("/"))
    assert "$ pip install websockets\n$ python -m websockets " in page
    assert "'ws://127.0.0.1:8000/ws/stock-prices/1.0.0/prices/ACME?access_token=eg_…'" in page
    # The frame as gateway/bridge.py builds it (compact JSON), wrappable after each comma.
    frame = '{"id":"…","channel":"prices/ACME","published_at":1764400000.123,"payload":{"symbol":"ACME",'
    assert frame in page.replace("<wbr>", "")
    assert "/ws/ticker/" not in page and '"ts"' not in page


def test_footer_has_no_link_to_the_raw_health_endpoint(client, db):
    assert 'href="/healthz"' not in _content(client.get("/"))


# Catalog


def test_catalog_lists_only_published_apis(client, ticker_api):
    APIFactory(name="Secret draft", status=API.Status.DRAFT)
    unpublished_version = APIFactory(name="Version still draft")
    APIVersionFactory(api=unpublished_version, status=APIVersion.Status.DRAFT)

    page = _content(client.get("/apis/"))

    assert "Ticker" in page
    assert "Secret draft" not in page
    assert "Version still draft" not in page


def test_catalog_cards_show_channel_count_and_plan_prices(client, ticker_api):
    page = _content(client.get("/apis/"))
    assert "1 channel" in page
    assert "$49.00/month" in page


def test_catalog_search_finds_apis_by_channel(client, ticker_api):
    assert "Ticker" in _content(client.get("/apis/?q=prices"))
    assert "No APIs match" in _content(client.get("/apis/?q=weather"))


def test_catalog_search_skips_channels_of_unpublished_versions(client, ticker_api):
    draft = APIVersionFactory(api=ticker_api, version="2.0.0", status=APIVersion.Status.DRAFT)
    ChannelFactory(api_version=draft, key="launch", address="secret-launch/{day}")
    assert "No APIs match" in _content(client.get("/apis/?q=secret-launch"))
    assert "Ticker" in _content(client.get("/apis/?q=prices"))


def test_catalog_search_with_nul_bytes_is_not_a_500(client, ticker_api):
    # PostgreSQL text cannot hold NUL; the search drops it (a DataError, a 500, before).
    response = client.get("/apis/?q=%00")
    assert response.status_code == 200
    assert "Ticker" in _content(response)
    assert "Ticker" in _content(client.get("/apis/?q=pri%00ces"))


def test_draft_api_page_is_not_found(client, db):
    APIFactory(slug="hidden", status=API.Status.DRAFT)
    assert client.get("/apis/hidden/").status_code == 404


def test_api_page_shows_channels_operations_payloads_and_plans(client, ticker_api):
    operation = ticker_api.versions.get().channels.get().operations.get()
    operation.messages = [
        {
            "name": "price",
            "title": "Price tick",
            "summary": "",
            "content_type": "application/json",
            "payload": {"type": "object", "properties": {"bid_price": {"type": "number"}}},
        }
    ]
    operation.save()
    BusinessPlanFactory(
        api=ticker_api, name="Metered", price_per_1000_events_minor=50, included_events=100_000
    )
    BusinessPlanFactory(api=ticker_api, name="Unapproved", is_approved=False)

    page = _content(client.get("/apis/ticker/"))

    assert "prices/{symbol}" in page
    assert "ACME" in page and "GLOBEX" in page  # parameter enum
    assert "You can receive" in page
    assert "Price tick" in page
    assert "&quot;bid_price&quot;: {" in page  # pretty-printed, escaped payload schema
    assert "ws://127.0.0.1:8000/ws/ticker/1.0.0/prices/ACME" in page
    assert "Free" in page and "Gold" in page
    assert "$49.00" in page
    assert "$0.50 per 1,000 events beyond that" in page
    assert "100,000 events included" in page
    assert "requires approval" in page
    assert "Unapproved" not in page


def test_api_description_is_escaped(client, ticker_api):
    ticker_api.description = "Prices <script>alert(1)</script>\n\nSecond paragraph."
    ticker_api.save()
    page = _content(client.get("/apis/ticker/"))
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page
    assert "<p>Second paragraph.</p>" in page


def test_code_blocks_in_the_description_are_preformatted_and_escaped(client, ticker_api):
    ticker_api.description = "Try it:\n\n```bash\nwebsocat 'ws://x/<b>'\n```\n\nThen enjoy."
    ticker_api.save()
    page = _content(client.get("/apis/ticker/"))
    assert "<pre><code>websocat 'ws://x/&lt;b&gt;'\n</code></pre>" in page
    assert "```" not in page
    assert "<p>Then enjoy.</p>" in page


def test_api_description_is_rendered_as_markdown(client, ticker_api):
    ticker_api.description = (
        "**Demo data.** Prices are\nsimulated; see [the docs](https://example.com/docs).\n\n"
        "Connect to `prices/{symbol}`.\n\n# Frames"
    )
    ticker_api.save()
    page = _content(client.get("/apis/ticker/"))
    assert "<strong>Demo data.</strong> Prices are\nsimulated" in page  # a soft break, not a <br>
    assert '<a href="https://example.com/docs" rel="nofollow noopener">the docs</a>' in page
    assert "<code>prices/{symbol}</code>" in page
    assert "<h3>Frames</h3>" in page  # below the page's own <h1> and <h2>
    assert "**" not in page and "`" not in page


def test_channel_operation_and_field_descriptions_are_rendered_as_markdown(client, ticker_api):
    channel = ticker_api.versions.get().channels.get()
    channel.description = "Every trade of **one** symbol."
    channel.save()
    operation = channel.operations.get()
    operation.summary = "Ticks in `publication` order."
    operation.messages = [
        {
            "name": "tick",
            "title": "Tick",
            "summary": "One *trade*.",
            "content_type": "application/json",
            "payload": {
                "type": "object",
                "properties": {"price": {"type": "number", "description": "In `currency`."}},
            },
        }
    ]
    operation.save()
    page = _content(client.get("/apis/ticker/"))
    assert "<p>Every trade of <strong>one</strong> symbol.</p>" in page
    assert "Ticks in <code>publication</code> order." in page
    assert "One <em>trade</em>." in page
    assert "In <code>currency</code>." in page


def test_markup_in_descriptions_never_reaches_the_api_page(client, ticker_api):
    attack = (
        "<script>alert(1)</script> [click](javascript:alert(2)) <img src=x onerror=alert(3)>\n\n"
        "<javascript:alert(4)> [again](JaVaScRiPt:alert(5))"
    )
    ticker_api.description = attack
    ticker_api.save()
    channel = ticker_api.versions.get().channels.get()
    channel.description = attack
    channel.save()
    channel.operations.update(summary=attack)

    page = _content(client.get("/apis/ticker/"))

    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # shown as the text it is
    assert not re.search(r'href="\s*javascript:', page, re.IGNORECASE)
    assert not re.search(r"<[a-z][^>]*\son[a-z]+=", page, re.IGNORECASE)  # no event handler on any tag


def test_images_in_descriptions_are_links_not_tracking_pixels(client, ticker_api):
    ticker_api.description = "Status: ![i](http://host/x.png)"
    ticker_api.save()
    channel = ticker_api.versions.get().channels.get()
    channel.description = "![pixel](https://tracker.example/p.gif)"
    channel.save()

    page = _content(client.get("/apis/ticker/"))

    assert "<img" not in page.split("<main", 1)[1]  # the site's own logo sits in the header
    assert '<a href="http://host/x.png" rel="nofollow noopener">i</a>' in page
    assert '<a href="https://tracker.example/p.gif" rel="nofollow noopener">pixel</a>' in page


def test_summary_is_not_repeated_when_the_description_starts_with_it(client, ticker_api):
    # As the importer makes it: the first sentence, with the description's line break collapsed.
    ticker_api.summary = "Live price ticks for eight fictional equities, several per second."
    ticker_api.description = "Live price ticks for eight fictional\nequities, several per second. More."
    ticker_api.save()
    assert 'data-testid="api-summary"' not in _content(client.get("/apis/ticker/"))

    ticker_api.summary = "Stock prices, live."
    ticker_api.save()
    page = _content(client.get("/apis/ticker/"))
    assert (
        '<p class="lead text-body-secondary mb-3" data-testid="api-summary">Stock prices, live.</p>' in page
    )


def test_anonymous_visitor_is_asked_to_sign_up_to_subscribe(client, ticker_api):
    page = _content(client.get("/apis/ticker/"))
    assert "Sign up to subscribe" in page
    assert "/accounts/signup/?next=/apis/ticker/" in page


def test_anonymous_subscribe_goes_to_sign_in(client, free):
    response = client.post(
        "/apis/ticker/", {"application": "new", "new_application_name": "x", "plan": free.pk}
    )
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not Subscription.objects.exists()


# Applications


def test_applications_page_invites_to_create_the_first_one(client, bob):
    client.force_login(bob)
    assert "No applications yet" in _content(client.get("/apps/"))


def test_empty_applications_page_offers_one_way_to_the_catalog(client, bob):
    client.force_login(bob)
    assert _content(client.get("/apps/")).count(">Browse APIs</a>") == 1


def test_create_application(client, bob):
    client.force_login(bob)
    response = client.post("/apps/", {"name": "Trading dashboard", "description": "Shows prices"})
    application = Application.objects.get(owner=bob)
    assert response["Location"] == f"/apps/{application.pk}/"
    assert "Trading dashboard" in _content(client.get("/apps/"))


def test_duplicate_application_name_is_a_form_error(client, bob, bob_app):
    client.force_login(bob)
    response = client.post("/apps/", {"name": bob_app.name})
    assert response.status_code == 200
    assert "You already have an application called" in _content(response)
    assert Application.objects.filter(owner=bob).count() == 1


def test_subscribe_to_free_plan_is_active_at_once(client, bob, bob_app, free):
    client.force_login(bob)
    response = client.post("/apis/ticker/", {"application": bob_app.pk, "plan": free.pk})
    assert response["Location"] == f"/apps/{bob_app.pk}/"
    assert Subscription.objects.get(application=bob_app).status == Subscription.Status.ACTIVE
    page = _content(client.get(response["Location"]))
    assert "is subscribed to Ticker. Generate an API key to connect." in page
    assert ">Active<" in page


def test_subscribing_an_application_with_a_key_says_the_key_works_now(client, bob, bob_app, free):
    APIKey.generate(application=bob_app)
    client.force_login(bob)
    response = client.post("/apis/ticker/", {"application": bob_app.pk, "plan": free.pk}, follow=True)
    page = _content(response)
    assert "is subscribed to Ticker. Its API keys and OAuth client work for it now." in page
    assert "Generate an API key to connect" not in page


def test_subscribe_to_plan_requiring_approval_stays_pending_and_says_so(client, bob, bob_app, gold):
    client.force_login(bob)
    response = client.post("/apis/ticker/", {"application": bob_app.pk, "plan": gold.pk})
    assert Subscription.objects.get(application=bob_app).status == Subscription.Status.PENDING
    page = _content(client.get(response["Location"]))
    assert "Pending approval" in page
    assert "An admin reviews subscriptions to the Gold plan" in page


def test_subscribe_creates_the_application_inline(client, bob, free):
    client.force_login(bob)
    response = client.post(
        "/apis/ticker/", {"application": "new", "new_application_name": "Quick start", "plan": free.pk}
    )
    application = Application.objects.get(owner=bob, name="Quick start")
    assert response["Location"] == f"/apps/{application.pk}/"
    assert application.subscriptions.get().plan == free


def test_subscribing_twice_is_a_form_error_not_a_crash(client, bob, bob_app, free, gold):
    client.force_login(bob)
    client.post("/apis/ticker/", {"application": bob_app.pk, "plan": free.pk})
    response = client.post("/apis/ticker/", {"application": bob_app.pk, "plan": gold.pk})
    assert response.status_code == 200
    assert "already has a subscription to Ticker" in _content(response)
    assert Subscription.objects.filter(application=bob_app).count() == 1


def test_failed_subscription_does_not_leave_a_new_application_behind(client, bob, bob_app, free):
    client.force_login(bob)
    # The new application's name is taken: nothing at all is created.
    response = client.post(
        "/apis/ticker/", {"application": "new", "new_application_name": bob_app.name, "plan": free.pk}
    )
    assert response.status_code == 200
    assert "You already have an application called" in _content(response)
    assert not Subscription.objects.exists()


def test_new_application_name_taken_by_a_concurrent_request_is_a_form_error(client, bob, free, rival_creates):
    client.force_login(bob)
    rival_creates(ApplicationFactory, owner=bob, name="R1")
    response = client.post(
        "/apis/ticker/", {"application": "new", "new_application_name": "R1", "plan": free.pk}
    )
    assert response.status_code == 200
    assert "You already have an application called “R1”." in _content(response)
    assert not Subscription.objects.exists()


def test_generated_key_is_shown_once_with_ready_to_run_snippets(client, bob, bob_app, free):
    SubscriptionFactory(application=bob_app, plan=free)
    client.force_login(bob)

    response = client.post(f"/apps/{bob_app.pk}/keys/", follow=True)

    page = _content(response)
    secret = SECRET.search(page).group(0)
    assert APIKey.objects.for_secret(secret).application == bob_app
    url = f"ws://127.0.0.1:8000/ws/ticker/1.0.0/prices/ACME?access_token={secret}"
    # A new user has no websockets package: the copied snippet installs it first.
    assert f"pip install websockets\npython -m websockets '{url}'" in page
    assert f'const key = "{secret}";' in page
    assert (
        'new WebSocket("ws://127.0.0.1:8000/ws/ticker/1.0.0/prices/ACME", '
        '["eventgate.v1", "eventgate.bearer." + key]);' in page
    )
    assert "data-live-panel" in page
    again = _content(client.get(f"/apps/{bob_app.pk}/"))
    assert secret not in again
    assert secret[:11] in again  # the key is still listed by its prefix


def test_live_panel_is_on_the_application_page_without_a_new_key(client, bob, bob_app, free):
    SubscriptionFactory(application=bob_app, plan=free)
    version = free.api.versions.get()
    send_only = ChannelFactory(api_version=version, key="orders", address="orders/new", parameters={})
    OperationFactory(channel=send_only, action=Operation.Action.SEND)
    client.force_login(bob)

    page = _content(client.get(f"/apps/{bob_app.pk}/"))

    assert "data-live-panel" in page
    assert 'value=""' in _live_key_field(page)  # the user pastes their key; the server has none
    assert "access_token=" not in page
    assert 'data-base-url="ws://127.0.0.1:8000/ws/ticker/1.0.0/"' in page
    assert re.search(r'<input[^>]*id="live-address"[^>]*value="prices/ACME"', page)
    assert 'data-live-hint="prices/GLOBEX"' in page  # the parameter's other allowed values
    assert "Ticker · prices/{symbol}</option>" in page
    assert "orders/new</option>" not in page  # nothing to receive there


def test_live_panel_carries_the_key_just_generated(client, bob, bob_app, free):
    SubscriptionFactory(application=bob_app, plan=free)
    client.force_login(bob)
    page = _content(client.post(f"/apps/{bob_app.pk}/keys/", follow=True))
    secret = SECRET.search(page).group(0)
    assert f'value="{secret}"' in _live_key_field(page)
    again = _content(client.get(f"/apps/{bob_app.pk}/"))
    assert 'value=""' in _live_key_field(again)


@pytest.mark.parametrize("status", [None, Subscription.Status.PENDING, Subscription.Status.REJECTED])
def test_live_panel_needs_an_active_subscription(client, bob, bob_app, gold, status):
    if status:
        SubscriptionFactory(application=bob_app, plan=gold, status=status)
    client.force_login(bob)
    assert "data-live-panel" not in _content(client.get(f"/apps/{bob_app.pk}/"))


def test_snippet_uses_the_public_url_from_settings(client, settings, bob, bob_app, free):
    settings.EVENTGATE_PUBLIC_URL = "https://events.example.com"
    SubscriptionFactory(application=bob_app, plan=free)
    client.force_login(bob)
    page = _content(client.post(f"/apps/{bob_app.pk}/keys/", follow=True))
    assert "wss://events.example.com/ws/ticker/1.0.0/prices/ACME?access_token=eg_" in page


def test_key_without_subscription_points_to_the_catalog(client, bob, bob_app):
    client.force_login(bob)
    page = _content(client.post(f"/apps/{bob_app.pk}/keys/", follow=True))
    assert SECRET.search(page)
    assert "to get a ready-to-run command" in page


def test_bob_revokes_his_key(client, bob, bob_app):
    key, _ = APIKey.generate(application=bob_app)
    client.force_login(bob)
    response = client.post(f"/apps/{bob_app.pk}/keys/{key.pk}/revoke/", follow=True)
    key.refresh_from_db()
    assert not key.is_usable
    assert "Revoked key" in _content(response)


def test_carol_gets_404_on_bobs_application(client, carol, bob_app):
    client.force_login(carol)
    assert client.get(f"/apps/{bob_app.pk}/").status_code == 404
    assert client.post(f"/apps/{bob_app.pk}/keys/").status_code == 404
    assert not bob_app.api_keys.exists()
    assert "Bob&#x27;s dashboard" not in _content(client.get("/apps/"))


def test_carol_cannot_revoke_bobs_key(client, carol, bob_app):
    key, _ = APIKey.generate(application=bob_app)
    carol_app = ApplicationFactory(owner=carol)
    client.force_login(carol)
    assert client.post(f"/apps/{bob_app.pk}/keys/{key.pk}/revoke/").status_code == 404
    assert client.post(f"/apps/{carol_app.pk}/keys/{key.pk}/revoke/").status_code == 404
    key.refresh_from_db()
    assert key.is_usable


def test_carol_cannot_subscribe_bobs_application(client, carol, bob_app, free):
    client.force_login(carol)
    response = client.post("/apis/ticker/", {"application": bob_app.pk, "plan": free.pk})
    assert response.status_code == 200
    assert "Select a valid choice" in _content(response)
    assert not Subscription.objects.exists()


def test_applications_need_sign_in(client, bob_app):
    assert client.get("/apps/")["Location"].startswith("/accounts/login/")
    assert client.get(f"/apps/{bob_app.pk}/")["Location"].startswith("/accounts/login/")


# Provider pages


def test_provider_imports_a_document_sees_its_channels_and_publishes(client, alice):
    client.force_login(alice)

    upload = SimpleUploadedFile("trains.yaml", TRAINS_YAML, content_type="application/yaml")
    response = client.post("/provider/apis/import/", {"file": upload})

    api = API.objects.get(name="Train departures")
    assert response["Location"] == f"/provider/apis/{api.slug}/"
    page = _content(client.get(response["Location"]))
    assert "stations/{station}/departures" in page
    assert "You can receive" in page
    assert "Publish" in page
    assert client.get(f"/apis/{api.slug}/").status_code == 200  # the provider previews the draft
    assert Client().get(f"/apis/{api.slug}/").status_code == 404  # nobody else sees it yet

    version = api.versions.get()
    client.post(f"/provider/apis/{api.slug}/versions/{version.pk}/publish/")

    assert "Train departures" in _content(client.get("/apis/"))
    assert "stations/{station}/departures" in _content(client.get(f"/apis/{api.slug}/"))


def test_provider_is_told_that_plans_need_approval_whether_or_not_the_api_is_published(client, alice):
    client.force_login(alice)
    page = _content(client.post("/provider/apis/import/", {"content": TRAINS_YAML.decode()}, follow=True))
    assert "add a plan, then publish" not in page
    assert "Consumers can subscribe once an admin has approved one of your plans" in page
    assert "Not in the catalog yet" in page and "No plan to subscribe to yet" in page

    api = API.objects.get(provider=alice)
    response = client.post(
        f"/provider/apis/{api.slug}/versions/{api.versions.get().pk}/publish/", follow=True
    )
    page = _content(response)
    assert (
        "it is in the catalog. Consumers can subscribe once an admin has approved one of its plans." in page
    )
    assert "Listed in the catalog" in page and "No plan to subscribe to yet" in page


def test_provider_page_shows_each_plans_approval_state(client, alice, ticker_api):
    BusinessPlanFactory(api=ticker_api, name="Platinum", is_approved=False)
    client.force_login(alice)
    page = _content(client.get("/provider/apis/ticker/"))
    plans = dict(
        re.findall(r'<span class="fw-semibold">(\w+)</span>\s*<span class="badge [^"]*">([^<]+)<', page)
    )
    assert plans == {"Free": "Approved", "Gold": "Approved", "Platinum": "Awaiting admin approval"}
    assert "Hidden from consumers until an admin approves it." in page
    assert "Open for subscriptions" in page
    assert "1 awaiting admin approval" in _content(client.get("/provider/apis/"))


def test_provider_page_renders_the_description_as_markdown(client, alice, ticker_api):
    ticker_api.description = "**Demo data.** <script>alert(1)</script>"
    ticker_api.save()
    client.force_login(alice)
    page = _content(client.get("/provider/apis/ticker/"))
    assert "<strong>Demo data.</strong>" in page
    assert "<script>alert" not in page


def test_provider_imports_a_pasted_document(client, alice):
    client.force_login(alice)
    response = client.post("/provider/apis/import/", {"content": TRAINS_YAML.decode()})
    assert response.status_code == 302
    assert API.objects.get(provider=alice).versions.get().source_filename == "pasted document"


def test_invalid_document_shows_file_line_and_pointer_and_stores_nothing(client, alice):
    client.force_login(alice)
    upload = SimpleUploadedFile("broken.yaml", BROKEN_YAML, content_type="application/yaml")

    response = client.post("/provider/apis/import/", {"file": upload})

    assert response.status_code == 200
    page = _content(response)
    assert "The document was not imported" in page
    assert "unknown key &quot;dupa&quot;" in page
    assert "broken.yaml" in page
    assert ">5<" in page  # the line
    assert ">/info<" in page  # the JSON pointer
    assert not API.objects.exists()
    assert not APIVersion.objects.exists()


def test_import_without_a_document_asks_for_one(client, alice):
    client.force_login(alice)
    response = client.post("/provider/apis/import/", {})
    assert "Choose a file to upload or paste a document" in _content(response)


def test_import_refuses_other_file_types(client, alice):
    client.force_login(alice)
    upload = SimpleUploadedFile("notes.txt", TRAINS_YAML)
    response = client.post("/provider/apis/import/", {"file": upload})
    assert "Upload a .yaml, .yml or .json file" in _content(response)
    assert not API.objects.exists()


def test_pasting_more_than_the_request_limit_is_a_form_error_naming_5_mb(alice, settings):
    # As in a browser: the CSRF check is on, and it reads the form before the view does.
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get("/provider/apis/import/")
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    pasted = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)

    response = client.post("/provider/apis/import/", {"csrfmiddlewaretoken": token, "content": pasted})

    assert response.status_code == 200
    page = _content(response)
    assert "The document was not imported" in page
    assert f"larger than the {MAX_DOCUMENT_BYTES // (1024 * 1024)} MB Eventgate accepts" in page
    assert 'name="content"' in page  # the form, to try again
    assert not API.objects.exists()


def test_import_still_checks_the_csrf_token(alice, settings):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get("/provider/apis/import/")
    token = client.cookies[settings.CSRF_COOKIE_NAME].value
    assert client.post("/provider/apis/import/", {"content": TRAINS_YAML.decode()}).status_code == 403
    assert not API.objects.exists()
    response = client.post(
        "/provider/apis/import/", {"csrfmiddlewaretoken": token, "content": TRAINS_YAML.decode()}
    )
    assert response.status_code == 302
    assert API.objects.get().name == "Train departures"


def test_import_page_for_an_api_query_that_is_no_slug_is_404(client, alice, ticker_api):
    client.force_login(alice)
    assert client.get("/provider/apis/import/?api=ticker").status_code == 200
    assert client.get("/provider/apis/import/?api=%00").status_code == 404
    assert client.get("/provider/apis/import/?api=tick%00er").status_code == 404


@pytest.mark.parametrize("url", ["/provider/apis/", "/provider/apis/import/", "/provider/apis/ticker/"])
def test_non_provider_gets_403_on_provider_pages(client, bob, ticker_api, url):
    client.force_login(bob)
    response = client.get(url)
    assert response.status_code == 403
    assert "provider account" in _content(response)


def test_anonymous_visitor_is_sent_to_sign_in_from_provider_pages(client):
    assert client.get("/provider/apis/")["Location"].startswith("/accounts/login/?next=/provider/apis/")


def test_provider_cannot_see_or_publish_another_providers_api(client, ticker_api):
    other = UserFactory(is_provider=True)
    draft = APIVersionFactory(api=ticker_api, version="2.0.0", status=APIVersion.Status.DRAFT)
    client.force_login(other)
    assert "Ticker" not in _content(client.get("/provider/apis/"))
    assert client.get("/provider/apis/ticker/").status_code == 404
    assert client.post(f"/provider/apis/ticker/versions/{draft.pk}/publish/").status_code == 404
    assert client.get("/provider/apis/import/?api=ticker").status_code == 404
    draft.refresh_from_db()
    assert draft.status == APIVersion.Status.DRAFT


def test_provider_adds_a_plan_that_waits_for_approval(client, alice, ticker_api):
    client.force_login(alice)
    response = client.post(
        "/provider/apis/ticker/",
        {
            "name": "Platinum",
            "description": "For trading desks",
            "flat_fee": "99.50",
            "included_events": "1000000",
            "price_per_1000_events": "0.25",
            "requires_approval": "on",
        },
    )
    assert response.status_code == 302
    plan = BusinessPlan.objects.get(name="Platinum")
    assert (plan.flat_fee_minor, plan.included_events, plan.price_per_1000_events_minor) == (
        9950,
        1_000_000,
        25,
    )
    assert plan.requires_approval and not plan.is_approved
    assert "Awaiting admin approval" in _content(client.get("/provider/apis/ticker/"))
    assert "Platinum" not in _content(client.get("/apis/ticker/"))


def test_duplicate_plan_name_is_a_form_error(client, alice, ticker_api):
    client.force_login(alice)
    response = client.post(
        "/provider/apis/ticker/",
        {"name": "Free", "flat_fee": "0", "included_events": "0", "price_per_1000_events": "0"},
    )
    assert response.status_code == 200
    assert "already has a plan called" in _content(response)


def test_plan_name_taken_by_a_concurrent_request_is_a_form_error(client, alice, ticker_api, rival_creates):
    client.force_login(alice)
    # The rival's name differs in case only: the database's constraint is case-insensitive too.
    rival_creates(BusinessPlanFactory, api=ticker_api, name="PLATINUM", is_approved=False)
    response = client.post(
        "/provider/apis/ticker/",
        {"name": "Platinum", "flat_fee": "1", "included_events": "0", "price_per_1000_events": "0"},
    )
    assert response.status_code == 200
    assert "Ticker already has a plan called “PLATINUM”." in _content(response)
    assert BusinessPlan.objects.filter(name__iexact="Platinum").count() == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("flat_fee", "99999999.99"), ("included_events", "9" * 30), ("price_per_1000_events", "-1")],
)
def test_out_of_range_plan_prices_are_form_errors_not_500s(client, alice, ticker_api, field, value):
    client.force_login(alice)
    data = {
        "name": "Huge",
        "flat_fee": "1",
        "included_events": "0",
        "price_per_1000_events": "0",
        field: value,
    }
    response = client.post("/provider/apis/ticker/", data)
    assert response.status_code == 200
    assert not BusinessPlan.objects.filter(name="Huge").exists()
    assert "Ensure this value is" in _content(response)


# Approvals


def test_admin_approves_a_pending_subscription(client, admin_user, bob_app, gold):
    subscription = SubscriptionFactory(application=bob_app, plan=gold, status=Subscription.Status.PENDING)
    client.force_login(admin_user)

    page = _content(client.get("/staff/approvals/"))
    assert "Bob&#x27;s dashboard" in page and "bob@example.com" in page and "Gold" in page

    client.post(f"/staff/subscriptions/{subscription.pk}/approve/")
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE
    assert subscription.decided_by == admin_user
    assert "No subscriptions are waiting" in _content(client.get("/staff/approvals/"))


def test_admin_rejects_a_pending_subscription(client, admin_user, bob_app, gold):
    subscription = SubscriptionFactory(application=bob_app, plan=gold, status=Subscription.Status.PENDING)
    client.force_login(admin_user)
    client.post(f"/staff/subscriptions/{subscription.pk}/reject/", {"reason": "Trading desks only"})
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.REJECTED
    assert subscription.decision_reason == "Trading desks only"


def test_deciding_twice_is_a_message_not_a_crash(client, admin_user, bob_app, gold):
    subscription = SubscriptionFactory(application=bob_app, plan=gold, status=Subscription.Status.PENDING)
    client.force_login(admin_user)
    client.post(f"/staff/subscriptions/{subscription.pk}/approve/")
    response = client.post(f"/staff/subscriptions/{subscription.pk}/reject/", {"reason": "Late"}, follow=True)
    assert "no longer pending" in _content(response)
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.ACTIVE


def test_admin_approves_a_plan_and_consumers_can_pick_it(client, admin_user, ticker_api):
    plan = BusinessPlanFactory(api=ticker_api, name="Platinum", is_approved=False)
    client.force_login(admin_user)
    assert "Platinum" in _content(client.get("/staff/approvals/"))
    client.post(f"/staff/plans/{plan.pk}/approve/")
    plan.refresh_from_db()
    assert plan.is_approved
    assert "Platinum" in _content(client.get("/apis/ticker/"))


def test_non_staff_cannot_see_or_use_approvals(client, bob, alice, bob_app, gold):
    subscription = SubscriptionFactory(application=bob_app, plan=gold, status=Subscription.Status.PENDING)
    plan = BusinessPlanFactory(api=gold.api, name="Platinum", is_approved=False)
    for user in (bob, alice):
        client.force_login(user)
        assert client.get("/staff/approvals/").status_code == 403
        assert client.post(f"/staff/subscriptions/{subscription.pk}/approve/").status_code == 403
        assert client.post(f"/staff/plans/{plan.pk}/approve/").status_code == 403
    subscription.refresh_from_db()
    plan.refresh_from_db()
    assert subscription.status == Subscription.Status.PENDING
    assert not plan.is_approved


def test_navigation_shows_links_by_role(client, bob, alice, admin_user):
    assert "Sign up" in _content(client.get("/"))
    client.force_login(bob)
    page = _content(client.get("/"))
    assert 'href="/apps/"' in page and 'href="/billing/invoices/"' in page
    assert 'href="/provider/apis/"' not in page and 'href="/staff/approvals/"' not in page
    client.force_login(alice)
    assert 'href="/provider/apis/"' in _content(client.get("/"))
    client.force_login(admin_user)
    assert 'href="/staff/approvals/"' in _content(client.get("/"))


def test_sign_up_lands_on_applications(client, db):
    response = client.post(
        "/accounts/signup/",
        {
            "email": "dana@example.com",
            "password1": "a long passphrase 42",
            "password2": "a long passphrase 42",
        },
    )
    assert response.status_code == 302
    assert response["Location"] == "/apps/"


def test_sign_up_and_sign_in_pages_render_in_the_portal_layout(client, db):
    for url in ("/accounts/signup/", "/accounts/login/"):
        page = _content(client.get(url))
        assert "eg-navbar" in page
        assert 'class="form-control' in page


def test_other_account_pages_render_in_the_portal_layout(client, bob):
    assert "eg-navbar" in _content(client.get("/accounts/password/reset/"))
    client.force_login(bob)
    for url in ("/accounts/email/", "/accounts/password/change/", "/accounts/logout/"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "eg-navbar" in _content(response), url


@pytest.mark.parametrize(
    ("persona", "landing"),
    [("bob", "/apps/"), ("alice", "/provider/apis/"), ("admin_user", "/staff/approvals/")],
)
def test_sign_in_lands_on_the_page_for_the_users_role(client, account_adapter, request, persona, landing):
    user = request.getfixturevalue(persona)
    response = client.post("/accounts/login/", {"login": user.email, "password": "correct horse battery"})
    assert response.status_code == 302
    assert response["Location"] == landing


@pytest.mark.parametrize("persona", ["bob", "alice", "admin_user"])
def test_sign_in_returns_to_the_page_it_started_from(client, account_adapter, request, persona, ticker_api):
    user = request.getfixturevalue(persona)
    response = client.post(
        "/accounts/login/",
        {"login": user.email, "password": "correct horse battery", "next": "/apis/ticker/"},
    )
    assert response["Location"] == "/apis/ticker/"


# Error pages


def test_unknown_page_is_a_404_in_the_portal_layout(client, bob):
    client.force_login(bob)
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    page = _content(response)
    assert "This page does not exist" in page
    assert "eg-navbar" in page and "bob@example.com" in page


def test_403_page_is_in_the_portal_layout(rf: RequestFactory, bob):
    request = rf.get("/somewhere/")
    request.user = bob
    response = permission_denied(request, PermissionError("no"))
    assert response.status_code == 403
    page = _content(response)
    assert "You cannot open this page" in page and "eg-navbar" in page


def test_500_page_renders_without_a_request_context(rf: RequestFactory, db):
    response = server_error(rf.get("/"))
    assert response.status_code == 500
    page = _content(response)
    assert "Something went wrong on our side" in page and "eg-navbar" in page


def test_provider_sets_the_name_consumers_see_and_the_email_stays_private(client, alice, ticker_api):
    client.force_login(alice)
    refused = client.post("/provider/apis/", {"organization": "Ticker\x00"})
    assert "Null characters are not allowed" in refused.content.decode()
    response = client.post("/provider/apis/", {"organization": "  Ticker Data\u200b Ltd "})
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.organization == "Ticker Data Ltd"
    client.logout()
    for url in ("/apis/", "/apis/ticker/"):
        page = client.get(url).content.decode()
        assert "Ticker Data Ltd" in page
        assert "alice@example.com" not in page


def test_a_provider_name_taken_by_another_provider_or_shaped_like_an_email_is_refused(client, alice, carol):
    carol.organization = "Weather Works"
    carol.save()
    client.force_login(alice)
    for name, error in (
        ("weather WORKS", "Another provider is already called"),
        ("carol@example.com", "not an email address"),
    ):
        page = client.post("/provider/apis/", {"organization": name}).content.decode()
        assert error in page
    alice.refresh_from_db()
    assert alice.organization == ""


def test_a_provider_name_taken_by_a_concurrent_request_is_a_form_error(client, alice, rival_creates):
    client.force_login(alice)
    rival_creates(UserFactory, organization="WEATHER works")
    page = client.post("/provider/apis/", {"organization": "Weather Works"}).content.decode()
    assert "Another provider is already called “Weather Works”." in page
    alice.refresh_from_db()
    assert alice.organization == ""
