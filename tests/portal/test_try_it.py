"""The Try it page's server side, by its public URLs: who may see which application, what the
page offers its script (channels, parameters, directions), deep links, and test keys."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from portal.models import API, APIKey, Operation, Subscription
from portal.views.try_it import TEST_KEYS_PER_HOUR, payload_example
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
    SubscriptionFactory,
)


@pytest.fixture
def bob_app(bob, ticker_api):
    application = ApplicationFactory(owner=bob, name="Bob's dashboard")
    SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))
    return application


@pytest.fixture
def orders_api(db):
    """An API with a send-only channel whose message has a payload schema."""
    api = APIFactory(name="Orders", slug="orders")
    version = APIVersionFactory(api=api, version="2.0.0")
    channel = ChannelFactory(api_version=version, key="orders", address="orders", parameters={})
    OperationFactory(
        channel=channel,
        key="placeOrder",
        action=Operation.Action.SEND,
        messages=[
            {
                "name": "order",
                "payload": {
                    "type": "object",
                    "properties": {
                        "symbol": {"type": "string", "enum": ["ACME", "GLOBEX"]},
                        "quantity": {"type": "integer"},
                        "limit": {"type": "number", "example": 101.5},
                    },
                },
            }
        ],
    )
    return api


def _page_data(response) -> dict:
    """The JSON the page hands its script (``json_script`` ``try-it-data``)."""
    html = response.content.decode()
    start = html.index('<script id="try-it-data" type="application/json">') + len(
        '<script id="try-it-data" type="application/json">'
    )
    return json.loads(html[start : html.index("</script>", start)])


def test_anonymous_visitors_are_sent_to_sign_in(client: Client):
    response = client.get("/try/?application=1&api=ticker")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/try/")


def test_page_offers_the_subscribed_apis_channels_with_parameters_and_directions(client, bob, bob_app):
    client.force_login(bob)
    response = client.get("/try/")
    assert response.status_code == 200
    data = _page_data(response)
    assert data["application"] == {"id": bob_app.pk, "name": "Bob's dashboard"}
    assert data["key_url"] == f"/try/{bob_app.pk}/keys/"
    [api] = data["apis"]
    assert (api["slug"], api["plan"]) == ("ticker", "Free")
    [version] = api["versions"]
    assert version["base_url"] == "ws://127.0.0.1:8000/ws/ticker/1.0.0/"
    [channel] = version["channels"]
    assert channel["address"] == "prices/{symbol}"
    assert (channel["receive"], channel["send"]) == (True, False)
    assert channel["parameters"] == [
        {"name": "symbol", "enum": ["ACME", "GLOBEX"], "default": "", "pattern": "", "description": ""}
    ]
    assert channel["example"] == ""  # nothing to send on a receive-only channel
    # The navigation links the page for signed-in users.
    assert b'href="/try/">Try it</a>' in response.content


def test_send_channel_comes_with_an_example_payload(client, bob, bob_app, orders_api):
    SubscriptionFactory(application=bob_app, plan=BusinessPlanFactory(api=orders_api))
    client.force_login(bob)
    data = _page_data(client.get(f"/try/?application={bob_app.pk}&api=orders"))
    assert data["selected"] == {"api": "orders", "version": "2.0.0", "channel": "", "values": {}}
    orders = next(api for api in data["apis"] if api["slug"] == "orders")
    [channel] = orders["versions"][0]["channels"]
    assert (channel["receive"], channel["send"]) == (False, True)
    assert json.loads(channel["example"]) == {"symbol": "ACME", "quantity": 0, "limit": 101.5}


def test_another_users_application_is_not_found(client, carol, bob_app):
    client.force_login(carol)
    assert client.get(f"/try/?application={bob_app.pk}").status_code == 404
    assert client.post(f"/try/{bob_app.pk}/keys/").status_code == 404
    assert not APIKey.objects.filter(application=bob_app).exists()


def test_page_without_parameters_shows_an_application_with_an_active_subscription(client, bob, bob_app):
    ApplicationFactory(owner=bob, name="Aardvark (no subscriptions)")  # first by name
    client.force_login(bob)
    response = client.get("/try/")
    assert _page_data(response)["application"]["id"] == bob_app.pk
    assert b"Aardvark (no subscriptions)" in response.content  # still offered in the picker


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("application=abc", "“application” must be the number of one of your applications, not “abc”."),
        ("application=99999999999999999999", "“application” must be the number of one of your applications"),
        ("api=weather", "This application has no active subscription to “weather”"),
        ("api=ticker&version=9.9", "Ticker has no published version “9.9”; showing 1.0.0."),
        ("api=ticker&channel=trades/{symbol}", "Ticker 1.0.0 has no channel “trades/{symbol}”"),
        (
            "api=ticker&channel=prices/NOPE",
            "“NOPE” is not an allowed value of {symbol}: one of ACME, GLOBEX.",
        ),
        ("channel=" + "x" * 1001, "“channel” is longer than 1000 characters; it was ignored."),
    ],
)
def test_bad_parameters_are_explained_on_the_page(client, bob, bob_app, query, message):
    client.force_login(bob)
    response = client.get(f"/try/?{query}")
    assert response.status_code == 200
    problems = [p.strip() for p in response.content.decode().split('data-testid="try-problem">')[1:]]
    assert any(p.startswith(message) for p in problems), problems
    # The page still works with what it can offer.
    assert _page_data(response)["apis"][0]["slug"] == "ticker"


def test_nul_characters_in_parameters_do_not_break_the_page(client, bob, bob_app):
    client.force_login(bob)
    assert client.get("/try/?api=tick%00er&channel=%00").status_code == 200


@pytest.mark.parametrize(
    ("channel", "selected", "values"),
    [
        ("prices", "prices", {}),  # the channel's key
        ("prices/{symbol}", "prices", {}),  # its address template
        ("prices/GLOBEX", "prices", {"symbol": "GLOBEX"}),  # a concrete address fills the parameters
    ],
)
def test_deep_link_selects_a_channel(client, bob, bob_app, channel, selected, values):
    client.force_login(bob)
    response = client.get(f"/try/?application={bob_app.pk}&api=ticker&version=1.0.0&channel={channel}")
    assert response.status_code == 200
    assert not [line for line in response.content.decode().splitlines() if "try-problem" in line]
    assert _page_data(response)["selected"] == {
        "api": "ticker",
        "version": "1.0.0",
        "channel": selected,
        "values": values,
    }


def test_deep_link_to_an_api_picks_the_application_subscribed_to_it(client, bob, bob_app, orders_api):
    other = ApplicationFactory(owner=bob, name="A trading bot")  # first by name
    SubscriptionFactory(application=other, plan=BusinessPlanFactory(api=orders_api))
    client.force_login(bob)
    assert _page_data(client.get("/try/?api=ticker"))["application"]["id"] == bob_app.pk
    assert _page_data(client.get("/try/?api=orders"))["application"]["id"] == other.pk


def test_subscriptions_the_gateway_would_refuse_are_listed_with_the_reason(client, bob, bob_app, alice):
    pending_api = APIFactory(provider=alice, name="Weather")
    APIVersionFactory(api=pending_api)
    SubscriptionFactory(
        application=bob_app, plan=BusinessPlanFactory(api=pending_api), status=Subscription.Status.PENDING
    )
    blocked_api = APIFactory(provider=alice, name="Blocked feed", status=API.Status.BLOCKED)
    APIVersionFactory(api=blocked_api)
    SubscriptionFactory(application=bob_app, plan=BusinessPlanFactory(api=blocked_api))
    client.force_login(bob)
    response = client.get("/try/")
    assert [api["slug"] for api in _page_data(response)["apis"]] == ["ticker"]
    text = " ".join(response.content.decode().split())
    assert "waits for an admin's approval; the gateway refuses connections until then." in text
    assert "the API is blocked; the gateway refuses connections to it for now." in text
    # A deep link to one of them says where to look.
    response = client.get(f"/try/?application={bob_app.pk}&api={pending_api.slug}")
    assert "Weather cannot be tried with this application now: see “Not offered here” below." in (
        response.content.decode()
    )
    assert _page_data(response)["selected"]["api"] == "ticker"


def test_application_without_active_subscriptions_says_what_to_do(client, bob):
    application = ApplicationFactory(owner=bob, name="Empty app")
    client.force_login(bob)
    response = client.get(f"/try/?application={application.pk}")
    assert response.status_code == 200
    assert b"Empty app has no active subscription to connect with." in response.content
    assert b"try-it-data" not in response.content


def test_user_without_applications_is_asked_to_create_one(client, carol):
    client.force_login(carol)
    response = client.get("/try/?api=ticker")
    assert response.status_code == 200
    assert b"You have no applications yet." in response.content


def test_test_key_is_issued_for_an_hour_and_shown_only_in_the_response(client, bob, bob_app, caplog):
    client.force_login(bob)
    before = timezone.now()
    with caplog.at_level(logging.DEBUG):
        response = client.post(f"/try/{bob_app.pk}/keys/")
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    key = APIKey.objects.get(application=bob_app)
    assert key.key_hash == APIKey.hash_secret(body["secret"])
    assert body["prefix"] == key.prefix == body["secret"][:11]
    assert key.name.startswith("try-it ") and key.name == body["name"]
    assert before + timedelta(minutes=59) < key.expires_at <= timezone.now() + timedelta(hours=1)
    assert key.is_usable
    assert body["secret"] not in caplog.text
    assert body["secret"] not in json.dumps(dict(client.session))


def test_test_key_needs_post_and_csrf(bob, bob_app):
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    assert client.get(f"/try/{bob_app.pk}/keys/").status_code == 405
    assert client.post(f"/try/{bob_app.pk}/keys/").status_code == 403
    assert not APIKey.objects.exists()
    token = client.get("/try/").cookies["csrftoken"].value
    assert client.post(f"/try/{bob_app.pk}/keys/", headers={"X-CSRFToken": token}).status_code == 200


def test_anonymous_cannot_issue_test_keys(client, bob_app):
    assert client.post(f"/try/{bob_app.pk}/keys/").status_code == 302
    assert not APIKey.objects.exists()


def test_test_keys_per_application_are_limited(client, bob, bob_app):
    client.force_login(bob)
    for _ in range(TEST_KEYS_PER_HOUR):
        assert client.post(f"/try/{bob_app.pk}/keys/").status_code == 200
    response = client.post(f"/try/{bob_app.pk}/keys/")
    assert response.status_code == 429
    assert "test keys in the last hour" in response.json()["error"]
    assert APIKey.objects.filter(application=bob_app).count() == TEST_KEYS_PER_HOUR
    # Ordinary keys do not count.
    other = ApplicationFactory(owner=bob)
    APIKey.generate(application=other)
    assert client.post(f"/try/{other.pk}/keys/").status_code == 200


@pytest.mark.parametrize(
    ("schema", "example"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "boolean"}}},
            {"a": "", "b": False},
        ),
        ({"type": "array", "items": {"type": "integer"}}, [0]),
        ({"examples": [{"x": 1}], "type": "object"}, {"x": 1}),
        ({"oneOf": [{"type": "number"}, {"type": "string"}]}, 0),
        (
            {"allOf": [{"properties": {"a": {"const": 1}}}, {"properties": {"b": {"default": "z"}}}]},
            {"a": 1, "b": "z"},
        ),
        ({"type": ["null", "string"]}, ""),
        ({"$ref": "#/components/schemas/Missing"}, None),
    ],
)
def test_payload_example_fits_the_schema(schema, example):
    assert payload_example(schema) == example
