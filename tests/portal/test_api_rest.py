"""REST API v1 through its literal URLs: catalog, import and publish, applications,
subscriptions and keys, with HTTP Basic (email + password) as curl would send it."""

from __future__ import annotations

import base64
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from portal.asyncapi import MAX_DOCUMENT_BYTES
from portal.models import API, APIKey, APIVersion, Application, Subscription
from portal.services.apis import api_import
from tests.conftest import SHARED_ASYNCAPI
from tests.factories import APIFactory, APIVersionFactory, ApplicationFactory, BusinessPlanFactory

PASSWORD = "correct horse battery"  # tests/factories.py UserFactory

SMALL = """asyncapi: 3.0.0
info:
  title: Train departures
  version: 1.0.0
  description: Departures as they happen. Platform changes included.
channels:
  departures:
    address: departures/{station}
    parameters:
      station:
        enum: [AMS, UTR]
    messages:
      departure:
        payload: {type: object, properties: {train: {type: string}}}
operations:
  publishDeparture:
    action: send
    channel: {$ref: '#/channels/departures'}
"""


def basic(user) -> dict[str, str]:
    token = base64.b64encode(f"{user.email}:{PASSWORD}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


def test_catalog_lists_published_apis_to_anyone(client, alice, ticker_api):
    api_import(provider=alice, content=SMALL, filename="trains.yaml")  # a draft: not listed
    response = client.get("/api/v1/apis/")
    assert response.status_code == 200
    [listed] = response.json()
    assert (listed["slug"], listed["name"], listed["status"], listed["latest_version"]) == (
        "ticker",
        "Ticker",
        "published",
        "1.0.0",
    )
    assert [(plan["name"], plan["price_model"]) for plan in listed["plans"]] == [
        ("Free", "free"),
        ("Gold", "flat"),
    ]
    assert response["X-Total-Count"] == "1"


def test_api_detail_shows_channels_operations_and_approved_plans(client, ticker_api):
    BusinessPlanFactory(api=ticker_api, name="Secret", is_approved=False)
    response = client.get("/api/v1/apis/ticker/")
    assert response.status_code == 200
    body = response.json()
    [channel] = body["version"]["channels"]
    assert channel["address"] == "prices/{symbol}"
    assert channel["parameters"]["symbol"]["enum"] == ["ACME", "GLOBEX"]
    assert [op["action"] for op in channel["operations"]] == ["receive"]
    assert [plan["name"] for plan in body["plans"]] == ["Free", "Gold"]
    assert body["plans"][1]["requires_approval"] is True


def test_draft_api_detail_is_not_found(client, alice):
    version = api_import(provider=alice, content=SMALL, filename="trains.yaml")
    assert client.get(f"/api/v1/apis/{version.api.slug}/").status_code == 404


def test_provider_uploads_a_document_then_publishes_it(client, alice):
    path = SHARED_ASYNCAPI / "spec_websocket-gemini-asyncapi.yml"
    with path.open("rb") as upload:
        response = client.post("/api/v1/apis/import", {"file": upload}, **basic(alice))
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["api"], body["version"], body["status"]) == (
        "gemini-market-data-websocket-api",
        "1.0.0",
        "draft",
    )
    [channel] = body["channels"]
    assert channel["address"] == "/v1/marketdata/{symbol}"
    assert channel["operations"][0]["action"] == "receive"
    assert channel["operations"][0]["messages"][0]["payload"]["oneOf"]

    response = client.post(
        "/api/v1/apis/gemini-market-data-websocket-api/versions/1.0.0/publish", **basic(alice)
    )
    assert response.status_code == 200
    assert response.json()["status"] == "published"
    assert [api["slug"] for api in client.get("/api/v1/apis/").json()] == ["gemini-market-data-websocket-api"]


def test_provider_imports_json_body_and_adds_a_version(client, alice):
    response = client.post(
        "/api/v1/apis/import",
        json.dumps({"filename": "trains.yaml", "content": SMALL}),
        content_type="application/json",
        **basic(alice),
    )
    assert response.status_code == 201, response.content
    assert response.json()["channels"][0]["operations"][0]["action"] == "receive"
    api = API.objects.get(slug="train-departures")
    assert api.summary == "Departures as they happen."

    newer = SMALL.replace("version: 1.0.0", "version: 1.1.0")
    response = client.post(
        "/api/v1/apis/import",
        json.dumps({"filename": "trains-1.1.yaml", "content": newer, "api": "train-departures"}),
        content_type="application/json",
        **basic(alice),
    )
    assert response.status_code == 201
    assert sorted(api.versions.values_list("version", flat=True)) == ["1.0.0", "1.1.0"]


def test_refused_document_answers_400_with_pointer_line_and_file(client, alice):
    name = "spec-json-schemas_asyncapi.yml"
    with (SHARED_ASYNCAPI / name).open("rb") as upload:
        response = client.post("/api/v1/apis/import", {"file": upload}, **basic(alice))
    assert response.status_code == 400
    problem = {
        "error": 'unknown key "dupa" (not allowed by the AsyncAPI 3.0.0 schema)',
        "pointer": "/info",
        "line": 6,
        "file": name,
    }
    assert response.json() == {**problem, "errors": [problem]}
    assert not APIVersion.objects.exists()


def import_json(client, user, content: str, filename: str = "api.json"):
    body = json.dumps({"filename": filename, "content": content})
    return client.post("/api/v1/apis/import", body, content_type="application/json", **basic(user))


@pytest.mark.parametrize(
    ("content", "pointer", "line"),
    [
        # Duplicate keys in JSON, as YAML already refused them (the last "title" used to win).
        ('{"asyncapi": "3.0.0",\n "info": {"title": "a",\n "title": "b", "version": "1"}}', "/info/title", 3),
        ('{"asyncapi": "3.0.0", "info": {"title": "T", "version": "1", "x-big": 1e999}}', "/info/x-big", 1),
        # A message that is a $ref to a string used to be an AttributeError (500).
        (
            "asyncapi: 2.6.0\ninfo: {title: T, version: '1'}\nchannels:\n  c:\n"
            "    subscribe: {message: {$ref: '#/info/title'}}\n",
            "/channels/c/subscribe/message/$ref",
            5,
        ),
        ("asyncapi: 3.0.0\ninfo: {title: T, version: 1.0/../../x}\n", "/info/version", 2),
    ],
)
def test_documents_that_once_broke_import_answer_400_with_where(client, alice, content, pointer, line):
    response = import_json(client, alice, content)
    assert response.status_code == 400, response.content
    body = response.json()
    assert (body["pointer"], body["line"], body["file"]) == (pointer, line, "api.json")
    assert body["error"]
    assert not APIVersion.objects.exists()


def test_upload_over_the_size_limit_answers_413_json(client, alice):
    upload = SimpleUploadedFile("huge.yaml", b"#" * (MAX_DOCUMENT_BYTES + 1))
    response = client.post("/api/v1/apis/import", {"file": upload}, **basic(alice))
    assert response.status_code == 413
    body = response.json()
    assert set(body) == {"error", "pointer", "line", "file"}
    assert body["file"] == "huge.yaml"
    assert f"{MAX_DOCUMENT_BYTES // (1024 * 1024)} MB" in body["error"]
    assert not APIVersion.objects.exists()


@pytest.mark.parametrize("size", [6 * 1024 * 1024, 9 * 1024 * 1024])
def test_json_body_over_the_size_limits_answers_413_json_not_an_html_page(client, alice, size):
    # Over Django's DATA_UPLOAD_MAX_MEMORY_SIZE the body is never read (Django's bare HTML 400
    # page before); over MAX_DOCUMENT_BYTES the service refuses it. Either way: JSON, 413.
    response = import_json(client, alice, "#" * size, filename="big.yaml")
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert set(response.json()) == {"error", "pointer", "line", "file"}
    assert "MB" in response.json()["error"]
    assert not APIVersion.objects.exists()


def test_nested_shared_schemas_keep_the_public_api_small(client, alice):
    schemas = ["components:", "  schemas:"]
    for level in range(1, 9):
        inner = "{type: string}" if level == 8 else f"{{$ref: '#/components/schemas/S{level + 1}'}}"
        schemas += [f"    S{level}:", "      type: object", "      properties:"]
        schemas += [f"        p{name}: {inner}" for name in range(10)]
    channels = [
        f"  c{n}:\n    subscribe:\n      message:\n        payload: {{$ref: '#/components/schemas/S1'}}"
        for n in range(20)
    ]
    document = (
        "asyncapi: 2.6.0\ninfo: {title: Nested, version: '1'}\nchannels:\n"
        + "\n".join(channels + schemas)
        + "\n"
    )
    response = import_json(client, alice, document, filename="nested.yaml")
    assert response.status_code == 201
    slug = response.json()["api"]
    assert client.post(f"/api/v1/apis/{slug}/versions/1/publish", **basic(alice)).status_code == 200
    response = client.get(f"/api/v1/apis/{slug}/")
    assert response.status_code == 200
    assert len(response.content) < 2_000_000  # was 22 MB


def test_import_without_a_document_answers_400(client, alice):
    response = client.post("/api/v1/apis/import", {}, **basic(alice))
    assert response.status_code == 400
    assert "file" in response.json()


def test_only_providers_import(client, bob):
    payload = json.dumps({"content": SMALL})
    response = client.post("/api/v1/apis/import", payload, content_type="application/json", **basic(bob))
    assert response.status_code == 403
    response = client.post("/api/v1/apis/import", payload, content_type="application/json")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic")


def test_only_the_owner_publishes(client, alice, bob):
    version = api_import(provider=alice, content=SMALL, filename="trains.yaml")
    bob.is_provider = True
    bob.save()
    url = f"/api/v1/apis/{version.api.slug}/versions/1.0.0/publish"
    assert client.post(url, **basic(bob)).status_code == 404
    version.refresh_from_db()
    assert version.status == APIVersion.Status.DRAFT
    assert (
        client.post(f"/api/v1/apis/{version.api.slug}/versions/9.9.9/publish", **basic(alice)).status_code
        == 404
    )


def test_applications_are_created_listed_and_names_checked(client, bob):
    response = client.post(
        "/api/v1/applications/", {"name": "Dashboard", "description": "Prices"}, **basic(bob)
    )
    assert response.status_code == 201
    assert response.json()["name"] == "Dashboard"
    response = client.post("/api/v1/applications/", {"name": "Dashboard"}, **basic(bob))
    assert response.status_code == 400
    assert response.json() == {"name": ["You already have an application called “Dashboard”."]}
    response = client.post("/api/v1/applications/", {"name": ""}, **basic(bob))
    assert response.status_code == 400
    assert response.json()["name"]
    assert [app["name"] for app in client.get("/api/v1/applications/", **basic(bob)).json()] == ["Dashboard"]


def test_carol_cannot_see_or_use_bobs_application(client, bob, carol, ticker_api):
    app = ApplicationFactory(owner=bob, name="Bob's app")
    free = ticker_api.plans.get(name="Free")
    assert client.get(f"/api/v1/applications/{app.pk}/", **basic(carol)).status_code == 404
    response = client.post(f"/api/v1/applications/{app.pk}/subscriptions/", {"plan": free.pk}, **basic(carol))
    assert response.status_code == 404
    assert client.post(f"/api/v1/applications/{app.pk}/keys/", **basic(carol)).status_code == 404
    assert client.get("/api/v1/applications/", **basic(carol)).json() == []
    assert client.get("/api/v1/subscriptions/", **basic(carol)).json() == []
    assert not app.subscriptions.exists() and not app.api_keys.exists()
    assert client.get(f"/api/v1/applications/{app.pk}/", **basic(bob)).status_code == 200


def test_subscribe_then_get_a_key_shown_once(client, bob, ticker_api):
    app = ApplicationFactory(owner=bob)
    free, gold = ticker_api.plans.get(name="Free"), ticker_api.plans.get(name="Gold")
    response = client.post(f"/api/v1/applications/{app.pk}/subscriptions/", {"plan": free.pk}, **basic(bob))
    assert response.status_code == 201
    assert (response.json()["status"], response.json()["api"]) == ("active", "ticker")

    response = client.post(f"/api/v1/applications/{app.pk}/subscriptions/", {"plan": gold.pk}, **basic(bob))
    assert response.status_code == 400
    assert "already has a subscription to Ticker" in response.json()["plan"][0]

    other = ApplicationFactory(owner=bob)
    response = client.post(f"/api/v1/applications/{other.pk}/subscriptions/", {"plan": gold.pk}, **basic(bob))
    assert response.json()["status"] == "pending"
    listed = client.get("/api/v1/subscriptions/", **basic(bob)).json()
    assert sorted(sub["status"] for sub in listed) == ["active", "pending"]

    response = client.post(f"/api/v1/applications/{app.pk}/keys/", {"name": "laptop"}, **basic(bob))
    assert response.status_code == 201
    body = response.json()
    assert body["key"].startswith("eg_") and body["prefix"] == body["key"][:11]
    assert APIKey.objects.for_secret(body["key"]).application == app
    detail = client.get(f"/api/v1/applications/{app.pk}/", **basic(bob)).json()
    assert [(key["name"], key["prefix"]) for key in detail["api_keys"]] == [("laptop", body["prefix"])]
    assert body["key"] not in json.dumps(detail)
    assert Subscription.objects.filter(application__owner=bob).count() == 2


@pytest.mark.parametrize("plan", [999999, "cheap"])
def test_subscribing_to_an_unknown_plan_answers_400(client, bob, plan):
    app = ApplicationFactory(owner=bob)
    response = client.post(f"/api/v1/applications/{app.pk}/subscriptions/", {"plan": plan}, **basic(bob))
    assert response.status_code == 400
    assert response.json()["plan"]


@pytest.mark.parametrize("unreleased", ["plan awaiting approval", "draft API", "no published version"])
def test_plans_not_on_offer_answer_one_400_that_names_nothing(client, alice, bob, unreleased):
    api = APIFactory(
        provider=alice,
        name="Project Nightjar",
        status=API.Status.DRAFT if unreleased == "draft API" else API.Status.PUBLISHED,
    )
    version_status = (
        APIVersion.Status.DRAFT if unreleased == "no published version" else APIVersion.Status.PUBLISHED
    )
    APIVersionFactory(api=api, status=version_status)
    plan = BusinessPlanFactory(
        api=api, name="Early access", is_approved=unreleased != "plan awaiting approval"
    )
    app = ApplicationFactory(owner=bob)

    response = client.post(f"/api/v1/applications/{app.pk}/subscriptions/", {"plan": plan.pk}, **basic(bob))

    assert response.status_code == 400
    assert response.json() == {"plan": ["This plan is not available."]}
    assert not Subscription.objects.exists()


def test_application_name_taken_by_a_concurrent_request_answers_400(client, bob, rival_creates):
    rival_creates(ApplicationFactory, owner=bob, name="R1")
    response = client.post("/api/v1/applications/", {"name": "R1"}, **basic(bob))
    assert response.status_code == 400
    assert response.json() == {"name": ["You already have an application called “R1”."]}
    assert Application.objects.filter(owner=bob, name="R1").count() == 1


def test_publishing_a_version_named_with_nul_is_404_not_500(client, alice, ticker_api):
    assert client.post("/api/v1/apis/ticker/versions/1.0%000/publish", **basic(alice)).status_code == 404
    assert client.post("/api/v1/apis/ticker/versions/%00/publish", **basic(alice)).status_code == 404


def test_session_login_works_as_in_the_browser(client, bob):
    ApplicationFactory(owner=bob, name="Web")
    client.force_login(bob)
    assert [app["name"] for app in client.get("/api/v1/applications/").json()] == ["Web"]


def test_wrong_password_is_refused(client, bob):
    token = base64.b64encode(f"{bob.email}:wrong".encode()).decode()
    response = client.get("/api/v1/applications/", HTTP_AUTHORIZATION=f"Basic {token}")
    assert response.status_code == 401


def test_openapi_schema_documents_the_v1_endpoints(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/v1/apis/import" in paths
    assert "/api/v1/applications/{id}/keys/" in paths
    assert set(paths["/api/v1/apis/import"]["post"]["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/json",
    }


def test_api_root_links_every_resource_and_the_schema(client):
    response = client.get("/api/v1/")
    assert response.status_code == 200
    links = response.json()
    assert links["apis"] == "http://testserver/api/v1/apis/"
    assert links["invoices"] == "http://testserver/api/v1/billing/invoices/"
    assert links["schema"] == "http://testserver/api/schema/"
    assert client.get("/api/schema/").status_code == 200


def test_api_docs_load_swagger_ui_from_this_server_not_a_cdn(client):
    page = client.get("/api/docs/").content.decode()
    assert "cdn." not in page and "jsdelivr" not in page
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page


def test_unknown_endpoints_answer_json_404_and_a_missing_slash_redirects(client):
    response = client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert "GET /api/v1/ lists them" in response.json()["detail"]
    redirect = client.get("/api/v1/apis?q=x")
    assert (redirect.status_code, redirect["Location"]) == (301, "/api/v1/apis/?q=x")
    assert client.post("/api/v1/apis").status_code == 404
