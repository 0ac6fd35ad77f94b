"""REST API v1, consumers and admins, through literal URLs: applications, subscriptions and API
keys of one's own only; the admins' approval queue; whole flows from import to a revoked key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from portal.models import APIKey, BusinessPlan, Subscription
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory
from tests.portal.test_api_rest import SMALL, basic


def post_json(client, url, body, user):
    return client.post(url, json.dumps(body), content_type="application/json", **basic(user))


# --- applications, subscriptions, keys -------------------------------------------------------------


def test_consumer_renames_and_deletes_an_application(client, bob):
    app = ApplicationFactory(owner=bob, name="Old name", description="kept")
    ApplicationFactory(owner=bob, name="Taken")
    url = f"/api/v1/applications/{app.pk}/"
    response = client.patch(url, {"name": "New name"}, content_type="application/json", **basic(bob))
    assert response.status_code == 200
    assert (response.json()["name"], response.json()["description"]) == ("New name", "kept")
    response = client.patch(url, {"name": "Taken"}, content_type="application/json", **basic(bob))
    assert response.status_code == 400
    assert response.json() == {"name": ["You already have an application called “Taken”."]}
    assert client.delete(url, **basic(bob)).status_code == 204
    assert client.get(url, **basic(bob)).status_code == 404


def test_application_with_a_live_subscription_is_not_deleted_until_cancelled(client, bob, ticker_api):
    app = ApplicationFactory(owner=bob, name="Screen")
    subscription = SubscriptionFactory(application=app, plan=ticker_api.plans.get(name="Free"))
    response = client.delete(f"/api/v1/applications/{app.pk}/", **basic(bob))
    assert response.status_code == 400
    assert "cancel them first" in response.json()["non_field_errors"][0]

    response = client.post(f"/api/v1/subscriptions/{subscription.pk}/cancel", **basic(bob))
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    response = client.post(f"/api/v1/subscriptions/{subscription.pk}/cancel", **basic(bob))
    assert response.status_code == 400
    assert "already cancelled" in response.json()["non_field_errors"][0]
    assert client.delete(f"/api/v1/applications/{app.pk}/", **basic(bob)).status_code == 204


def test_subscription_can_be_cancelled_with_delete(client, bob, ticker_api):
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob), plan=ticker_api.plans.get(name="Free")
    )
    response = client.delete(f"/api/v1/subscriptions/{subscription.pk}/", **basic(bob))
    assert response.status_code == 200
    subscription.refresh_from_db()
    assert subscription.status == Subscription.Status.CANCELLED


def test_carol_sees_and_touches_nothing_of_bobs(client, bob, carol, ticker_api):
    app = ApplicationFactory(owner=bob, name="Bob's app")
    subscription = SubscriptionFactory(application=app, plan=ticker_api.plans.get(name="Free"))
    key, _ = APIKey.generate(application=app)
    for method, url in [
        ("get", f"/api/v1/applications/{app.pk}/"),
        ("patch", f"/api/v1/applications/{app.pk}/"),
        ("delete", f"/api/v1/applications/{app.pk}/"),
        ("get", f"/api/v1/applications/{app.pk}/subscriptions/"),
        ("get", f"/api/v1/applications/{app.pk}/keys/"),
        ("post", f"/api/v1/applications/{app.pk}/keys/{key.pk}/revoke"),
        ("get", f"/api/v1/subscriptions/{subscription.pk}/"),
        ("delete", f"/api/v1/subscriptions/{subscription.pk}/"),
        ("post", f"/api/v1/subscriptions/{subscription.pk}/cancel"),
    ]:
        response = getattr(client, method)(
            url, {"name": "Mine"}, content_type="application/json", **basic(carol)
        )
        assert response.status_code == 404, (method, url)
    assert client.get("/api/v1/subscriptions/", **basic(carol)).json() == []
    app.refresh_from_db()
    key.refresh_from_db()
    subscription.refresh_from_db()
    assert (app.name, key.revoked_at, subscription.status) == ("Bob's app", None, Subscription.Status.ACTIVE)


def test_a_key_of_another_application_is_404_even_for_the_same_owner_path(client, bob, carol):
    bobs, carols = ApplicationFactory(owner=bob), ApplicationFactory(owner=carol)
    carols_key, _ = APIKey.generate(application=carols)
    response = client.post(f"/api/v1/applications/{bobs.pk}/keys/{carols_key.pk}/revoke", **basic(bob))
    assert response.status_code == 404
    carols_key.refresh_from_db()
    assert carols_key.revoked_at is None


def test_key_list_shows_prefixes_never_secrets_and_revoke_is_kept(client, bob):
    app = ApplicationFactory(owner=bob)
    created = client.post(f"/api/v1/applications/{app.pk}/keys/", {"name": "ci"}, **basic(bob)).json()
    listed = client.get(f"/api/v1/applications/{app.pk}/keys/", **basic(bob))
    assert [(key["name"], key["prefix"], key["revoked_at"]) for key in listed.json()] == [
        ("ci", created["prefix"], None)
    ]
    assert created["key"] not in listed.content.decode()
    assert "key_hash" not in listed.content.decode()

    response = client.post(f"/api/v1/applications/{app.pk}/keys/{created['id']}/revoke", **basic(bob))
    assert response.status_code == 200
    revoked_at = response.json()["revoked_at"]
    assert revoked_at
    again = client.post(f"/api/v1/applications/{app.pk}/keys/{created['id']}/revoke", **basic(bob))
    assert again.json()["revoked_at"] == revoked_at
    assert APIKey.objects.for_secret(created["key"]) is None


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/applications/99999999999999999999/",
        "/api/v1/subscriptions/99999999999999999999/",
        "/api/v1/applications/1/keys/99999999999999999999/revoke",
    ],
)
def test_ids_beyond_the_database_range_are_404_not_500(client, bob, url):
    ApplicationFactory(owner=bob)
    method = client.post if url.endswith("revoke") else client.get
    assert method(url, **basic(bob)).status_code == 404


@pytest.mark.parametrize(
    "body", [{"name": "a\x00b"}, {"name": ["x"]}, {"name": "x" * 101}, {"description": 5 * "\ud800"}]
)
def test_application_update_with_bad_input_is_400(client, bob, body):
    app = ApplicationFactory(owner=bob)
    response = client.patch(
        f"/api/v1/applications/{app.pk}/", json.dumps(body), content_type="application/json", **basic(bob)
    )
    assert response.status_code == 400


# --- approvals -------------------------------------------------------------------------------------


def test_approval_queue_is_for_admins_only(client, alice, bob, admin_user, ticker_api):
    plan = BusinessPlanFactory(api=ticker_api, name="Pending", is_approved=False)
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob, name="Screen"),
        plan=ticker_api.plans.get(name="Gold"),
        status=Subscription.Status.PENDING,
    )
    assert client.get("/api/v1/approvals/").status_code == 401
    for user in (alice, bob):
        assert client.get("/api/v1/approvals/", **basic(user)).status_code == 403
        for url in (
            f"/api/v1/plans/{plan.pk}/approve",
            f"/api/v1/plans/{plan.pk}/reject",
            f"/api/v1/subscriptions/{subscription.pk}/approve",
            f"/api/v1/subscriptions/{subscription.pk}/reject",
        ):
            response = post_json(client, url, {"reason": "because"}, user)
            assert response.status_code == 403, url
            assert "admins" in response.json()["detail"]
    plan.refresh_from_db()
    subscription.refresh_from_db()
    assert plan.approval_status == "pending" and subscription.status == Subscription.Status.PENDING

    queue = client.get("/api/v1/approvals/", **basic(admin_user)).json()
    assert [(p["name"], p["api"], p["provider"]) for p in queue["plans"]] == [
        ("Pending", "ticker", "alice@example.com")
    ]
    assert [(s["application_name"], s["consumer"], s["api"]) for s in queue["subscriptions"]] == [
        ("Screen", "bob@example.com", "ticker")
    ]


def test_rejections_need_a_reason_that_the_requester_sees(client, alice, bob, admin_user, ticker_api):
    plan = BusinessPlanFactory(api=ticker_api, name="Pending", is_approved=False)
    subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=bob),
        plan=ticker_api.plans.get(name="Gold"),
        status=Subscription.Status.PENDING,
    )
    for url in (f"/api/v1/plans/{plan.pk}/reject", f"/api/v1/subscriptions/{subscription.pk}/reject"):
        for body in ({}, {"reason": "   "}):
            response = post_json(client, url, body, admin_user)
            assert response.status_code == 400, (url, body)
            assert "reason" in response.json()

    response = post_json(client, f"/api/v1/plans/{plan.pk}/reject", {"reason": "Prices missing"}, admin_user)
    assert response.status_code == 200
    [rejected] = [
        p for p in client.get("/api/v1/apis/ticker/plans/", **basic(alice)).json() if p["id"] == plan.pk
    ]
    assert (rejected["approval_status"], rejected["decision_reason"]) == ("rejected", "Prices missing")

    response = post_json(
        client, f"/api/v1/subscriptions/{subscription.pk}/reject", {"reason": "Use the free plan"}, admin_user
    )
    assert response.status_code == 200
    mine = client.get(f"/api/v1/subscriptions/{subscription.pk}/", **basic(bob)).json()
    assert (mine["status"], mine["decision_reason"]) == ("rejected", "Use the free plan")

    # Decided once: a second decision is refused with a readable message.
    response = post_json(client, f"/api/v1/subscriptions/{subscription.pk}/approve", {}, admin_user)
    assert response.status_code == 400
    assert "no longer pending" in response.json()["non_field_errors"][0]


# --- whole flows -----------------------------------------------------------------------------------


def test_import_publish_plan_approve_subscribe_key_revoke(client, alice, bob, admin_user):
    response = client.post(
        "/api/v1/apis/import",
        json.dumps({"filename": "trains.yaml", "content": SMALL}),
        content_type="application/json",
        **basic(alice),
    )
    assert response.status_code == 201, response.content
    slug = response.json()["api"]
    assert client.post(f"/api/v1/apis/{slug}/versions/1.0.0/publish", **basic(alice)).status_code == 200
    history = client.get(f"/api/v1/apis/{slug}/lifecycle", **basic(alice)).json()
    assert {event["to_status"] for event in history} == {"published"}

    response = post_json(
        client,
        f"/api/v1/apis/{slug}/plans/",
        {
            "name": "Pro",
            "price_model": "flat_and_per_event",
            "flat_fee_minor": 4900,
            "included_events": 100_000,
            "price_per_1000_events_minor": 25,
            "rate_limit_events": 100,
            "rate_limit_unit": "second",
            "burst_events": 50,
            "quota_bytes": 10**9,
            "requires_approval": True,
        },
        alice,
    )
    assert response.status_code == 201, response.content
    plan_id = response.json()["id"]
    assert plan_id not in [p["id"] for p in client.get(f"/api/v1/apis/{slug}/").json()["plans"]]

    assert [p["id"] for p in client.get("/api/v1/approvals/", **basic(admin_user)).json()["plans"]] == [
        plan_id
    ]
    response = post_json(client, f"/api/v1/plans/{plan_id}/approve", {"reason": "Fine"}, admin_user)
    assert response.json()["approval_status"] == "approved"
    [offered] = client.get(f"/api/v1/apis/{slug}/").json()["plans"]
    assert (offered["name"], offered["rate_limit_events"], offered["burst_events"]) == ("Pro", 100, 50)

    app = client.post("/api/v1/applications/", {"name": "Board"}, **basic(bob)).json()
    response = post_json(client, f"/api/v1/applications/{app['id']}/subscriptions/", {"plan": plan_id}, bob)
    assert response.status_code == 201
    subscription_id = response.json()["id"]
    assert response.json()["status"] == "pending"
    queue = client.get("/api/v1/approvals/", **basic(admin_user)).json()
    assert [s["id"] for s in queue["subscriptions"]] == [subscription_id]
    response = post_json(client, f"/api/v1/subscriptions/{subscription_id}/approve", {}, admin_user)
    assert response.json()["status"] == "active"
    assert [s["status"] for s in client.get("/api/v1/subscriptions/", **basic(bob)).json()] == ["active"]

    key = post_json(client, f"/api/v1/applications/{app['id']}/keys/", {"name": "laptop"}, bob).json()
    assert APIKey.objects.for_secret(key["key"]) is not None
    response = client.post(f"/api/v1/applications/{app['id']}/keys/{key['id']}/revoke", **basic(bob))
    assert response.status_code == 200
    assert APIKey.objects.for_secret(key["key"]) is None
    assert BusinessPlan.objects.get(pk=plan_id).subscriptions.get().status == Subscription.Status.ACTIVE


# --- OpenAPI ---------------------------------------------------------------------------------------


def test_openapi_schema_builds_without_warnings_and_docs_render(client, tmp_path: Path):
    # The management command in a child process: its warnings are collected per process, and a
    # warning means a view or serializer the schema describes wrongly.
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "spectacular",
            "--validate",
            "--fail-on-warn",
            "--file",
            str(tmp_path / "schema.yaml"),
        ],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    schema = (tmp_path / "schema.yaml").read_text()
    for path in (
        "/api/v1/apis/{slug}/lifecycle:",
        "/api/v1/apis/{slug}/versions/{version}/asyncapi:",
        "/api/v1/approvals/:",
        "/api/v1/applications/{id}/keys/{key_id}/revoke:",
        "/api/v1/subscriptions/{id}/cancel:",
    ):
        assert path in schema
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger-ui" in response.content
