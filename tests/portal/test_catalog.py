"""The catalog (/apis/): search, filters, pagination, lifecycle badges, and the API page's versions,
lifecycle banners, downloads and rendered AsyncAPI documentation."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders

from portal.models import API, APIVersion
from portal.services.catalog import api_search
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
)


def _content(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


def _names(page: str) -> list[str]:
    """API names on catalog cards, in order."""
    return re.findall(r'class="stretched-link[^"]*" href="[^"]+">([^<]+)</a>', page)


def _api(
    name: str, *, status=API.Status.PUBLISHED, tags=(), protocols=(), address="a", provider=None, **fields
):
    extra = {"provider": provider} if provider else {}
    api = APIFactory(name=name, status=status, tags=list(tags), protocols=list(protocols), **extra, **fields)
    channel = ChannelFactory(api_version=APIVersionFactory(api=api), address=address)
    OperationFactory(channel=channel)
    return api


@pytest.fixture
def catalog(db, alice):
    """Weather (mqtt, tags iot/weather; alice's, as "Alice Weather Co"), Trains (kafka, tag
    transport, deprecated), Alarms (blocked), plus a draft and a retired API that must never show."""
    alice.organization = "Alice Weather Co"
    alice.save()
    return {
        "weather": _api(
            "Weather",
            tags=["iot", "weather"],
            protocols=["mqtt"],
            address="stations/{id}/readings",
            description="Readings of **barometers**.",
            provider=alice,
        ),
        "trains": _api(
            "Trains",
            status=API.Status.DEPRECATED,
            tags=["transport"],
            protocols=["kafka"],
            address="departures",
        ),
        "alarms": _api("Alarms", status=API.Status.BLOCKED, protocols=["ws"], address="alarms/{zone}"),
        "draft": _api("Secret draft", status=API.Status.DRAFT, tags=["iot"], address="stations/hidden"),
        "retired": _api("Old retired", status=API.Status.RETIRED, tags=["iot"], address="stations/retired"),
    }


def test_anonymous_catalog_lists_published_deprecated_and_blocked_apis_only(client, catalog):
    assert _names(_content(client.get("/apis/"))) == ["Alarms", "Trains", "Weather"]


def test_catalog_cards_show_lifecycle_badges_protocols_and_tags(client, catalog):
    page = _content(client.get("/apis/"))
    assert ">Deprecated</span>" in page and ">Blocked</span>" in page
    assert ">source: MQTT</span>" in page and ">source: Kafka</span>" in page
    assert 'href="/apis/?tag=iot">#iot</a>' in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("weather", ["Weather"]),  # name
        ("barometers", ["Weather"]),  # description
        ("readings", ["Weather"]),  # channel address
        ("transport", ["Trains"]),  # tag
        ("STATIONS", ["Weather"]),  # case-insensitive; the draft's and retired API's channels never match
    ],
)
def test_search_covers_name_description_tags_and_channels(client, catalog, query, expected):
    assert _names(_content(client.get(f"/apis/?q={query}"))) == expected


def test_drafts_and_retired_apis_never_match_even_by_their_own_name_or_tag(client, catalog):
    assert "No APIs match" in _content(client.get("/apis/?q=Secret"))
    assert "No APIs match" in _content(client.get("/apis/?q=retired"))
    assert _names(_content(client.get("/apis/?tag=iot"))) == ["Weather"]


def test_channels_of_draft_versions_of_a_listed_api_are_not_searched(client, catalog):
    draft = APIVersionFactory(api=catalog["weather"], version="2.0.0", status=APIVersion.Status.DRAFT)
    ChannelFactory(api_version=draft, address="launch/secret")
    assert "No APIs match" in _content(client.get("/apis/?q=launch"))


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ("protocol=mqtt", ["Weather"]),
        ("protocol=KAFKA", ["Trains"]),
        ("tag=weather", ["Weather"]),
        ("status=deprecated", ["Trains"]),
        ("status=blocked", ["Alarms"]),
        ("status=published&q=weather", ["Weather"]),
        ("provider=alice weather co", ["Weather"]),
        ("tag=iot&protocol=kafka", []),
    ],
)
def test_filters_narrow_the_catalog(client, catalog, params, expected):
    assert _names(_content(client.get(f"/apis/?{params}"))) == expected


def test_provider_filter_takes_the_providers_id(client, catalog, alice):
    page = _content(client.get(f"/apis/?provider={alice.pk}"))
    assert _names(page) == ["Weather"]
    assert f'<option value="{alice.pk}" selected>Alice Weather Co (1)</option>' in page
    assert "alice@example.com" not in page  # a provider's email address is never public


def test_providers_without_an_organization_show_as_their_email_domain(client, catalog, alice):
    alice.organization = ""
    alice.save()
    page = _content(client.get("/apis/?provider=example.com"))
    assert "Weather" in _names(page)
    assert "alice@example.com" not in page


def test_filter_choices_show_how_many_apis_each_has(client, catalog):
    page = _content(client.get("/apis/"))
    assert '<option value="mqtt">MQTT (1)</option>' in page
    assert '<option value="iot">iot (1)</option>' in page  # the draft and retired APIs do not count
    assert '<option value="deprecated">Deprecated (1)</option>' in page


@pytest.mark.parametrize(
    "params",
    [
        "status=retired",
        "status=draft",
        "q=%00",
        "tag=%00iot",
        "provider=99999999999999999999999",
        "page=abc",
        "page=-1",
        "q=" + "x" * 5000,
    ],
)
def test_odd_input_is_never_a_500(client, catalog, params):
    response = client.get(f"/apis/?{params}")
    assert response.status_code == 200
    if params.startswith("status="):
        assert "No APIs match" in response.content.decode()


def test_nul_characters_are_dropped_from_filters(client, catalog):
    assert _names(_content(client.get("/apis/?tag=i%00ot"))) == ["Weather"]


def test_catalog_is_paginated_20_a_page_and_page_links_keep_the_search(client, db):
    for n in range(45):
        _api(f"Feed {n:02d}", tags=["bulk"])
    first = _content(client.get("/apis/?tag=bulk"))
    assert len(_names(first)) == 20 and _names(first)[0] == "Feed 00"
    assert "45 APIs match" in first and "page 1 of 3" in first
    assert 'href="?tag=bulk&amp;page=2" rel="next"' in first
    third = _content(client.get("/apis/?tag=bulk&page=3"))
    assert _names(third) == [f"Feed {n}" for n in range(40, 45)]
    assert 'href="?tag=bulk&amp;page=2" rel="prev"' in third
    # A page past the end shows the last one instead of an error.
    assert _names(_content(client.get("/apis/?tag=bulk&page=99"))) == _names(third)


def test_api_search_service_reuses_the_same_rules(catalog):
    assert [api.name for api in api_search(text="stations")] == ["Weather"]
    assert [api.name for api in api_search(protocol="ws")] == ["Alarms"]
    assert list(api_search(status="retired")) == []


# The API page ---------------------------------------------------------------------------------


@pytest.fixture
def versioned(ticker_api):
    """Ticker with v1.0.0 (deprecated), v2.0.0 (published, newest live) and v3.0.0 (draft)."""
    v1 = ticker_api.versions.get()
    v1.status = APIVersion.Status.DEPRECATED
    v1.save()
    v2 = APIVersionFactory(api=ticker_api, version="2.0.0")
    ChannelFactory(api_version=v2, address="quotes/{symbol}")
    APIVersionFactory(api=ticker_api, version="3.0.0", status=APIVersion.Status.DRAFT)
    return ticker_api


def test_api_page_shows_the_newest_published_version_and_links_the_others(client, versioned):
    page = _content(client.get("/apis/ticker/"))
    assert 'data-testid="shown-version">v2.0.0<' in page
    assert "quotes/{symbol}" in page and "prices/{symbol}" not in page
    assert 'href="?version=1.0.0">v1.0.0 <span class="badge text-bg-warning ms-1">deprecated</span>' in page
    assert "?version=3.0.0" not in page and "v3.0.0" not in page  # drafts are not offered


def test_deprecated_version_is_shown_with_a_banner_pointing_to_the_latest(client, versioned):
    page = _content(client.get("/apis/ticker/?version=1.0.0"))
    assert "prices/{symbol}" in page
    assert "Version 1.0.0 is deprecated." in page and 'href="?version=2.0.0">v2.0.0</a>' in page


def test_draft_version_is_not_found_on_the_api_page(client, versioned):
    assert client.get("/apis/ticker/?version=3.0.0").status_code == 404
    assert client.get("/apis/ticker/?version=%00").status_code == 200


def test_api_page_links_both_downloads_of_the_shown_version(client, versioned):
    page = _content(client.get("/apis/ticker/?version=1.0.0"))
    assert 'href="/apis/ticker/versions/1.0.0/asyncapi.yaml"' in page
    assert 'href="/apis/ticker/versions/1.0.0/asyncapi.json"' in page


def test_blocked_api_says_connections_are_refused_and_offers_no_subscription(client, bob, ticker_api):
    ticker_api.status = API.Status.BLOCKED
    ticker_api.save()
    client.force_login(bob)
    page = _content(client.get("/apis/ticker/"))
    assert "The gateway refuses connections to Ticker" in page
    assert "Blocked APIs accept no new subscriptions." in page
    assert 'name="plan"' not in page


def test_deprecated_api_says_it_takes_no_new_subscriptions_and_refuses_a_posted_one(client, bob, ticker_api):
    ticker_api.status = API.Status.DEPRECATED
    ticker_api.save()
    client.force_login(bob)
    page = _content(client.get("/apis/ticker/"))
    assert "accepts no new subscriptions" in page and 'name="plan"' not in page
    plan = ticker_api.plans.first()
    response = client.post(
        "/apis/ticker/", {"application": "new", "new_application_name": "x", "plan": plan.pk}, follow=True
    )
    assert "Ticker is deprecated: it accepts no new subscriptions." in _content(response)
    assert not bob.applications.exists()


def test_retired_api_page_is_not_found(client, ticker_api):
    ticker_api.status = API.Status.RETIRED
    ticker_api.save()
    assert client.get("/apis/ticker/").status_code == 404
    assert client.get("/apis/ticker/versions/1.0.0/asyncapi.yaml").status_code == 404


def test_api_page_loads_the_asyncapi_web_component_from_this_server(client, ticker_api):
    page = _content(client.get("/apis/ticker/"))
    bundle = re.search(r'data-bundle="/static/([^"]+)"', page).group(1)
    styles = re.search(r'href="/static/(vendor/asyncapi-react/[^"]+\.css)"', page).group(1)
    assert bundle == "vendor/asyncapi-react/standalone/index.js"
    for path in (bundle, styles, "js/asyncapi-docs.js"):
        assert finders.find(path), f"{path} is not served"
    assert "AsyncApiStandalone" in open(finders.find(bundle), encoding="utf-8").read(2000)
    assert 'data-document-url="/apis/ticker/versions/1.0.0/asyncapi.json"' in page
    assert "cdn." not in page and "unpkg" not in page


def test_large_documents_render_only_on_request(client, ticker_api):
    version = ticker_api.versions.get()
    version.source = "x" * 300_000
    version.save()
    page = _content(client.get("/apis/ticker/"))
    assert "Render the documentation" in page
    assert len(page) < 100_000  # the document is fetched on demand, not carried in the page
    small = ticker_api.versions.get()
    small.source = "asyncapi: 3.0.0"
    small.save()
    assert "Render the documentation" not in _content(client.get("/apis/ticker/"))


def test_approved_plans_only_on_cards(client, ticker_api):
    BusinessPlanFactory(api=ticker_api, name="Pending plan", is_approved=False)
    page = _content(client.get("/apis/"))
    assert "Free" in page and "Gold" in page and "Pending plan" not in page
