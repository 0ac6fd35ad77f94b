"""REST API v1, provider side and catalog, through literal URLs: search and pagination, versions
and documents, lifecycle, sources, business plans; what anonymous users and other providers see."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext

from portal.models import API, APIVersion, BusinessPlan
from portal.services.apis import api_import
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
)
from tests.portal.test_api_rest import SMALL, basic


@pytest.fixture
def carol_provider(carol):
    """Carol as a provider of her own: she must still see nothing of alice's that is not listed."""
    carol.is_provider = True
    carol.save()
    return carol


@pytest.fixture
def trains(alice):
    """Alice's draft API ``train-departures`` v1.0.0, imported from SMALL."""
    return api_import(provider=alice, content=SMALL, filename="trains.yaml").api


# --- catalog ------------------------------------------------------------------------------------


def test_catalog_search_filters_and_paginates_with_link_headers(client, alice, ticker_api):
    for n in range(3):
        api = APIFactory(provider=alice, name=f"Weather {n}", slug=f"weather-{n}", tags=["weather"])
        ChannelFactory(api_version=APIVersionFactory(api=api), address=f"stations/{n}/readings")
    APIFactory(provider=alice, name="Weather draft", status=API.Status.DRAFT, tags=["weather"])

    response = client.get("/api/v1/apis/?q=readings&page_size=2")
    assert response.status_code == 200
    assert [api["slug"] for api in response.json()] == ["weather-0", "weather-1"]
    assert response["X-Total-Count"] == "3"
    assert 'rel="next"' in response["Link"] and "page=2" in response["Link"]
    response = client.get("/api/v1/apis/?q=readings&page_size=2&page=2")
    assert [api["slug"] for api in response.json()] == ["weather-2"]
    assert 'rel="prev"' in response["Link"] and 'rel="next"' not in response["Link"]

    assert [api["slug"] for api in client.get("/api/v1/apis/?tag=weather").json()] == [
        "weather-0",
        "weather-1",
        "weather-2",
    ]
    assert [api["slug"] for api in client.get("/api/v1/apis/?provider=example.com&q=ticker").json()] == [
        "ticker"
    ]
    assert client.get("/api/v1/apis/?provider=carol@example.com").json() == []
    assert client.get("/api/v1/apis/?status=deprecated").json() == []


@pytest.mark.parametrize(
    ("query", "field"), [("status=draft", "status"), ("q=a%00b", "q"), ("tag=" + "x" * 101, "tag")]
)
def test_catalog_refuses_bad_query_parameters_with_400_naming_them(client, ticker_api, query, field):
    response = client.get(f"/api/v1/apis/?{query}")
    assert response.status_code == 400
    assert field in response.json()


def test_catalog_page_past_the_last_is_404(client, ticker_api):
    assert client.get("/api/v1/apis/?page=9").status_code == 404


def test_anonymous_users_see_only_listed_apis(client, alice, trains, ticker_api):
    retired = APIFactory(provider=alice, name="Old", slug="old", status=API.Status.RETIRED)
    APIVersionFactory(api=retired)
    assert [api["slug"] for api in client.get("/api/v1/apis/").json()] == ["ticker"]
    for slug in (trains.slug, "old"):
        for suffix in ("", "versions/", "versions/1.0.0/", "versions/1.0.0/asyncapi", "plans/"):
            assert client.get(f"/api/v1/apis/{slug}/{suffix}").status_code == 404, (slug, suffix)
    assert client.get("/api/v1/apis/ticker/versions/1.0.0/").status_code == 200


def test_anonymous_users_cannot_write(client, trains, ticker_api):
    for url, body in [
        (f"/api/v1/apis/{trains.slug}/lifecycle", {"status": "published"}),
        ("/api/v1/apis/ticker/plans/", {"name": "Sneaky"}),
        ("/api/v1/apis/ticker/versions/1.0.0/lifecycle", {"status": "retired"}),
        ("/api/v1/plans/1/approve", {}),
    ]:
        response = client.post(url, body, content_type="application/json")
        assert response.status_code == 401, url
    assert client.get(f"/api/v1/apis/{trains.slug}/versions/1.0.0/source").status_code == 401
    assert not ticker_api.plans.filter(name="Sneaky").exists()


def test_api_detail_shows_lifecycle_tags_versions_and_plan_limits(client, ticker_api):
    ticker_api.tags, ticker_api.protocols = ["finance"], ["ws"]
    ticker_api.save()
    gold = ticker_api.plans.get(name="Gold")
    gold.rate_limit_events, gold.rate_limit_unit = 50_000, BusinessPlan.RateUnit.DAY
    gold.save()
    APIVersionFactory(api=ticker_api, version="2.0.0-beta", status=APIVersion.Status.DRAFT)

    body = client.get("/api/v1/apis/ticker/").json()

    assert (body["status"], body["tags"], body["protocols"]) == ("published", ["finance"], ["ws"])
    assert [version["version"] for version in body["versions"]] == ["1.0.0"]  # the draft is the owner's
    assert body["version"]["version"] == "1.0.0"
    plan = next(plan for plan in body["plans"] if plan["name"] == "Gold")
    assert (plan["rate_limit_events"], plan["rate_limit_unit"], plan["flat_fee_minor"]) == (
        50_000,
        "day",
        4900,
    )
    assert "decision_reason" not in plan


def test_consumer_document_replaces_servers_with_the_gateway_in_json_and_yaml(client, alice):
    version = api_import(provider=alice, content=SMALL, filename="trains.yaml")
    assert (
        client.post(f"/api/v1/apis/{version.api.slug}/versions/1.0.0/publish", **basic(alice)).status_code
        == 200
    )
    url = f"/api/v1/apis/{version.api.slug}/versions/1.0.0/asyncapi"

    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    document = response.json()
    assert document["asyncapi"] == "3.0.0"
    assert "departures" in document["channels"]
    [server] = document["servers"].values()
    assert "testserver" in server["host"] and server["protocol"].startswith("ws")

    response = client.get(url + "?format=yaml")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/yaml")
    assert yaml.safe_load(response.content) == document
    assert 'filename="train-departures-1.0.0.asyncapi.yaml"' in response["Content-Disposition"]

    response = client.get(url + "?format=xml")
    assert response.status_code == 400
    assert response.json() == {"format": ["Choose one of: json, yaml."]}


# --- provider: own APIs, lifecycle, sources --------------------------------------------------------


def test_provider_lists_own_apis_in_any_state_and_nobody_elses(
    client, alice, bob, carol_provider, trains, ticker_api
):
    body = client.get("/api/v1/provider/apis/", **basic(alice)).json()
    assert sorted((api["slug"], api["status"]) for api in body) == [
        ("ticker", "published"),
        ("train-departures", "draft"),
    ]
    assert client.get("/api/v1/provider/apis/", **basic(carol_provider)).json() == []
    assert client.get("/api/v1/provider/apis/", **basic(bob)).status_code == 403


def test_provider_sees_own_draft_but_another_provider_gets_404_everywhere(
    client, alice, carol_provider, trains
):
    assert client.get(f"/api/v1/apis/{trains.slug}/", **basic(alice)).json()["status"] == "draft"
    assert client.get(f"/api/v1/apis/{trains.slug}/versions/1.0.0/source", **basic(alice)).status_code == 200
    base = f"/api/v1/apis/{trains.slug}"
    for url in (
        f"{base}/",
        f"{base}/versions/",
        f"{base}/lifecycle",
        f"{base}/plans/",
        f"{base}/versions/1.0.0/source",
    ):
        assert client.get(url, **basic(carol_provider)).status_code == 404, url
    for url, body in [
        (f"{base}/lifecycle", {"status": "retired"}),
        (f"{base}/versions/1.0.0/lifecycle", {"status": "retired"}),
        (f"{base}/versions/1.0.0/publish", {}),
        (f"{base}/plans/", {"name": "Mine now"}),
    ]:
        response = client.post(url, body, content_type="application/json", **basic(carol_provider))
        assert response.status_code == 404, url
    trains.refresh_from_db()
    assert trains.status == API.Status.DRAFT and not trains.plans.exists()
    assert not trains.lifecycle_events.exists()


def test_another_provider_cannot_manage_a_listed_api_either(client, carol_provider, ticker_api):
    assert client.get("/api/v1/apis/ticker/", **basic(carol_provider)).status_code == 200
    response = client.post(
        "/api/v1/apis/ticker/lifecycle",
        {"status": "retired"},
        content_type="application/json",
        **basic(carol_provider),
    )
    assert response.status_code == 404
    assert client.get("/api/v1/apis/ticker/lifecycle", **basic(carol_provider)).status_code == 404
    assert client.get("/api/v1/apis/ticker/versions/1.0.0/source", **basic(carol_provider)).status_code == 404
    ticker_api.refresh_from_db()
    assert ticker_api.status == API.Status.PUBLISHED


def test_lifecycle_moves_are_recorded_and_refused_moves_name_the_allowed_ones(client, alice, bob, ticker_api):
    response = client.post(
        "/api/v1/apis/ticker/lifecycle",
        {"status": "deprecated", "reason": "v2 is coming"},
        content_type="application/json",
        **basic(alice),
    )
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "deprecated"

    response = client.post(
        "/api/v1/apis/ticker/lifecycle", {"status": "draft"}, content_type="application/json", **basic(alice)
    )
    assert response.status_code == 400
    message = " ".join(response.json()["status"])
    assert "published" in message.lower() and "retired" in message.lower()

    [event] = client.get("/api/v1/apis/ticker/lifecycle", **basic(alice)).json()
    assert (event["from_status"], event["to_status"], event["actor"], event["reason"], event["version"]) == (
        "published",
        "deprecated",
        "alice@example.com",
        "v2 is coming",
        None,
    )

    # Deprecated: listed, but no new subscriptions, with a readable reason.
    assert client.get("/api/v1/apis/ticker/").json()["status"] == "deprecated"
    app = ApplicationFactory(owner=bob)
    free = ticker_api.plans.get(name="Free")
    response = client.post(f"/api/v1/applications/{app.pk}/subscriptions/", {"plan": free.pk}, **basic(bob))
    assert response.status_code == 400
    assert response.json()["plan"]
    assert not app.subscriptions.exists()


@pytest.mark.parametrize("body", [{}, {"status": "a\x00b"}, {"status": ["published"]}, {"status": "x" * 500}])
def test_lifecycle_move_with_bad_input_is_400(client, alice, ticker_api, body):
    response = client.post(
        "/api/v1/apis/ticker/lifecycle", json.dumps(body), content_type="application/json", **basic(alice)
    )
    assert response.status_code == 400
    assert "status" in response.json()


def test_retired_version_leaves_the_catalog_version_list(client, alice, ticker_api):
    APIVersionFactory(api=ticker_api, version="2.0.0")
    response = client.post(
        "/api/v1/apis/ticker/versions/1.0.0/lifecycle",
        {"status": "retired", "reason": "use 2.0.0"},
        content_type="application/json",
        **basic(alice),
    )
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "retired"
    assert [v["version"] for v in client.get("/api/v1/apis/ticker/versions/").json()] == ["2.0.0"]
    assert client.get("/api/v1/apis/ticker/versions/1.0.0/").status_code == 404
    assert client.get("/api/v1/apis/ticker/versions/1.0.0/", **basic(alice)).json()["status"] == "retired"
    [event] = client.get("/api/v1/apis/ticker/lifecycle", **basic(alice)).json()
    assert (event["version"], event["to_status"]) == ("1.0.0", "retired")


def test_provider_downloads_the_source_byte_for_byte(client, alice, trains):
    response = client.get(f"/api/v1/apis/{trains.slug}/versions/1.0.0/source", **basic(alice))
    assert response.status_code == 200
    assert response.content.decode() == SMALL
    assert response["Content-Type"] == "application/yaml; charset=utf-8"
    response = client.get(f"/api/v1/apis/{trains.slug}/versions/1.0.0/source?file=other.yaml", **basic(alice))
    assert response.status_code == 404


# --- business plans ------------------------------------------------------------------------------


def test_plan_templates_are_listed(client):
    templates = {template["key"]: template for template in client.get("/api/v1/plan-templates/").json()}
    assert templates["async-bronze"]["fields"]["rate_limit_events"] == 5_000
    assert templates["async-gold"]["fields"]["rate_limit_unit"] == "day"


def test_provider_creates_a_plan_from_a_template_and_it_awaits_approval(client, alice, bob, ticker_api):
    response = client.post(
        "/api/v1/apis/ticker/plans/",
        {"template": "async-gold", "flat_fee_minor": 2500, "max_connections": 10},
        content_type="application/json",
        **basic(alice),
    )
    assert response.status_code == 201, response.content
    plan = response.json()
    assert (plan["name"], plan["rate_limit_events"], plan["rate_limit_unit"]) == ("AsyncGold", 50_000, "day")
    assert (plan["flat_fee_minor"], plan["max_connections"], plan["price_model"]) == (2500, 10, "flat")
    assert plan["approval_status"] == "pending"
    # The owner sees it with its approval; consumers do not see it until an admin approves.
    owner_view = client.get("/api/v1/apis/ticker/plans/", **basic(alice)).json()
    assert "AsyncGold" in [p["name"] for p in owner_view]
    assert "AsyncGold" not in [
        p["name"] for p in client.get("/api/v1/apis/ticker/plans/", **basic(bob)).json()
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Big", "flat_fee_minor": 10**30}, "flat_fee_minor"),
        ({"name": "Big", "quota_bytes": 2**63}, "quota_bytes"),
        ({"name": "Neg", "included_events": -1}, "included_events"),
        ({"name": "Str", "rate_limit_events": "lots"}, "rate_limit_events"),
        ({"name": "Zero", "rate_limit_events": 0}, "rate_limit_events"),
        ({"name": "Unit", "rate_limit_unit": "fortnight"}, "rate_limit_unit"),
        ({"name": "N\x00UL"}, "name"),
        ({"name": "Burst", "burst_events": 10}, "burst_events"),
        ({"name": "Flat", "price_model": "flat"}, "flat_fee_minor"),
        ({"template": "async-platinum"}, "template"),
        ({}, "name"),
        ({"name": "Free"}, "name"),
    ],
)
def test_refused_plans_answer_400_naming_the_field(client, alice, ticker_api, body, field):
    response = client.post(
        "/api/v1/apis/ticker/plans/", json.dumps(body), content_type="application/json", **basic(alice)
    )
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert ticker_api.plans.count() == 2


def test_only_the_owner_adds_plans(client, bob, carol_provider, ticker_api):
    for user in (bob, carol_provider):
        response = client.post(
            "/api/v1/apis/ticker/plans/", {"name": "Mine"}, content_type="application/json", **basic(user)
        )
        assert response.status_code == 404
    assert not ticker_api.plans.filter(name="Mine").exists()


def test_draft_versions_of_a_listed_api_stay_hidden(client, alice, ticker_api):
    draft = APIVersionFactory(api=ticker_api, version="2.0.0", status=APIVersion.Status.DRAFT)
    OperationFactory(channel=ChannelFactory(api_version=draft, address="secret/{symbol}"))
    assert client.get("/api/v1/apis/ticker/versions/2.0.0/").status_code == 404
    assert client.get("/api/v1/apis/ticker/versions/2.0.0/asyncapi").status_code == 404
    assert client.get("/api/v1/apis/?q=secret").json() == []
    assert client.get("/api/v1/apis/ticker/versions/2.0.0/", **basic(alice)).status_code == 200


def test_zip_upload_imports_and_the_provider_reads_every_source_file(client, alice):
    root = SMALL.replace(
        "payload: {type: object, properties: {train: {type: string}}}",
        "payload: {$ref: 'schemas/departure.yaml'}",
    )
    schema = "type: object\nproperties:\n  train: {type: string}\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("asyncapi.yaml", root)
        archive.writestr("schemas/departure.yaml", schema)
    upload = SimpleUploadedFile("trains.zip", buffer.getvalue(), content_type="application/zip")

    response = client.post("/api/v1/apis/import", {"file": upload}, **basic(alice))

    assert response.status_code == 201, response.content
    slug = response.json()["api"]
    [channel] = response.json()["channels"]
    [message] = channel["operations"][0]["messages"]
    assert message["payload"]["properties"]["train"] == {"type": "string"}
    source = client.get(f"/api/v1/apis/{slug}/versions/1.0.0/source", **basic(alice))
    assert source.content.decode() == root
    assert source["X-Source-Files"] == "schemas/departure.yaml"
    member = client.get(
        f"/api/v1/apis/{slug}/versions/1.0.0/source?file=schemas/departure.yaml", **basic(alice)
    )
    assert (member.status_code, member.content.decode()) == (200, schema)
    assert member["Content-Type"] == "application/yaml; charset=utf-8"


def test_an_admin_blocks_an_api_and_only_an_admin_lifts_the_block(client, alice, admin_user, ticker_api):
    response = client.post(
        "/api/v1/apis/ticker/lifecycle",
        {"status": "blocked", "reason": "Abuse report"},
        content_type="application/json",
        **basic(admin_user),
    )
    assert response.status_code == 200, response.content
    assert client.get("/api/v1/apis/ticker/").json()["status"] == "blocked"  # listed, so subscribers see why

    response = client.post(
        "/api/v1/apis/ticker/lifecycle",
        {"status": "published"},
        content_type="application/json",
        **basic(alice),
    )
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]
    ticker_api.refresh_from_db()
    assert ticker_api.status == API.Status.BLOCKED


def test_catalog_page_costs_the_same_queries_for_5_or_20_apis(client, alice):
    def queries_for_page() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/api/v1/apis/?page_size=20").status_code == 200
        return len(queries)

    for _ in range(5):
        BusinessPlanFactory(api=APIVersionFactory(api=APIFactory(provider=alice)).api)
    few = queries_for_page()
    for _ in range(15):
        BusinessPlanFactory(api=APIVersionFactory(api=APIFactory(provider=alice)).api)
    assert queries_for_page() == few


# --- duplicates, retired APIs, unblocking --------------------------------------------------------


def _import(client, user, content: str, api: str | None = None):
    body = {"filename": "trains.yaml", "content": content} | ({"api": api} if api else {})
    return client.post(
        "/api/v1/apis/import", json.dumps(body), content_type="application/json", **basic(user)
    )


def test_importing_a_title_you_already_have_answers_400_at_info_title(client, alice, trains):
    response = _import(client, alice, SMALL.replace("title: Train departures", "title: TRAIN Departures"))
    assert response.status_code == 400, response.content
    error = response.json()
    assert (error["pointer"], error["line"], error["file"]) == ("/info/title", 3, "trains.yaml")
    assert "“Train departures” (slug train-departures)" in error["error"]
    assert API.objects.filter(provider=alice).count() == 1
    # As a new version of it, the same document imports.
    response = _import(
        client, alice, SMALL.replace("version: 1.0.0", "version: 1.1.0"), api="train-departures"
    )
    assert response.status_code == 201, response.content


def test_a_retired_api_takes_no_new_version_over_rest(client, alice, trains):
    trains.status = API.Status.RETIRED
    trains.save()
    response = _import(
        client, alice, SMALL.replace("version: 1.0.0", "version: 2.0.0"), api="train-departures"
    )
    assert response.status_code == 400, response.content
    assert "Train departures is retired and takes no new versions" in response.json()["error"]
    assert trains.versions.count() == 1


def _move(client, user, status: str):
    return client.post(
        "/api/v1/apis/ticker/lifecycle", {"status": status}, content_type="application/json", **basic(user)
    )


def test_unblock_over_rest_may_pick_either_state_the_table_allows(client, alice, ticker_api):
    assert _move(client, alice, "deprecated").status_code == 200
    assert _move(client, alice, "blocked").status_code == 200
    # The pages offer "Unblock" back to deprecated; REST also takes published, by name.
    response = _move(client, alice, "published")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "published"


def test_plan_names_are_unique_whatever_their_letter_case(client, alice, ticker_api):
    response = client.post(
        "/api/v1/apis/ticker/plans/", {"name": "FREE"}, content_type="application/json", **basic(alice)
    )
    assert response.status_code == 400
    assert response.json()["name"] == ["Ticker already has a plan called “Free”."]
    assert list(ticker_api.plans.order_by("name").values_list("name", flat=True)) == ["Free", "Gold"]


def test_the_catalog_names_providers_by_organization_never_by_email(client, ticker_api, alice):
    alice.organization = "Ticker Data Ltd"
    alice.save()
    listing = client.get("/api/v1/apis/").json()
    detail = client.get("/api/v1/apis/ticker/")
    assert [api["provider"] for api in listing] == ["Ticker Data Ltd"]
    assert detail.json()["provider"] == "Ticker Data Ltd"
    assert "alice@example.com" not in detail.content.decode()
