"""A business plan is its subscriptions' throttling policy: providers set it (plan form, REST),
incoherent policies are refused with errors on the fields at fault, consumers read it in plain
words on the catalog, and admins edit every field in the Django admin under the same rules."""

from __future__ import annotations

import json
import re

import pytest
from django.core.exceptions import ValidationError

from portal.models import BusinessPlan
from portal.plans import plan_fields_validate
from tests.factories import BusinessPlanFactory
from tests.portal.test_api_rest import basic

FORM = {
    "name": "Metered",
    "description": "",
    "price_model": "free",
    "flat_fee": "0",
    "included_events": "0",
    "price_per_1000_events": "0",
    "rate_limit_unit": "minute",
    "bandwidth_unit": "GB",
}

# Every policy field, as a client sends it and reads it back.
EVERY_FIELD = {
    "rate_limit_events": 100,
    "rate_limit_unit": "minute",
    "burst_events": 20,
    "quota_events": 10_000,
    "quota_bytes": 10**9,
    "counted_directions": "out",
    "max_connections": 5,
    "max_connections_per_application": 10,
    "max_webhook_subscriptions": 3,
    "max_connection_seconds": 3600,
    "quota_action": "overage",
    "limit_notice": "close",
    "overage_price_per_1000_events_minor": 50,
    "overage_price_per_gb_minor": 200,
}


def text_of(response) -> str:
    """The page's words as a reader sees them: every tag a gap (a list's terms and their
    definitions are cells of their own)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode())).replace(" ,", ",")


def post_plan(client, user, body):
    return client.post(
        "/api/v1/apis/ticker/plans/", json.dumps(body), content_type="application/json", **basic(user)
    )


# --- the rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "at_fault", "words"),
    [
        ({"quota_action": "overage"}, "quota_action", "needs a quota to go over"),
        (
            {"quota_action": "overage", "quota_events": 1000},
            "overage_price_per_1000_events_minor",
            "needs an overage price per 1,000 events above 0",
        ),
        (
            {"quota_action": "overage", "quota_bytes": 10**9},
            "overage_price_per_gb_minor",
            "needs an overage price per GB above 0",
        ),
        (
            {"quota_events": 1000, "overage_price_per_1000_events_minor": 50},
            "overage_price_per_1000_events_minor",
            "charged only when the quota action is “overage”",
        ),
        (
            {
                "quota_action": "overage",
                "quota_events": 1000,
                "overage_price_per_1000_events_minor": 5,
                "overage_price_per_gb_minor": 9,
            },
            "overage_price_per_gb_minor",
            "There is no bytes quota (quota_bytes) to go over",
        ),
        ({"overage_price_per_gb_minor": -1}, "overage_price_per_gb_minor", "0 or more"),
        ({"max_connection_seconds": 0}, "max_connection_seconds", "at least 1"),
        ({"max_connections_per_application": 0}, "max_connections_per_application", "at least 1"),
        ({"max_webhook_subscriptions": -3}, "max_webhook_subscriptions", "at least 1"),
        ({"counted_directions": "sideways"}, "counted_directions", "Choose one of: both, out, in."),
        ({"quota_action": "shrug"}, "quota_action", "Choose one of: stop, overage."),
        ({"limit_notice": "shout"}, "limit_notice", "Choose one of: notify, close."),
    ],
)
def test_incoherent_policies_name_the_field_at_fault(fields, at_fault, words):
    with pytest.raises(ValidationError) as refused:
        plan_fields_validate(fields)
    assert list(refused.value.message_dict) == [at_fault]
    assert words in refused.value.message_dict[at_fault][0]


def test_a_coherent_policy_passes():
    plan_fields_validate(EVERY_FIELD)
    plan_fields_validate({"quota_events": 10, "quota_action": "stop", "limit_notice": "close"})


# --- the provider's plan form ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "at_fault", "words"),
    [
        ({"quota_action": "overage"}, "quota_action", "needs a quota to go over"),
        (
            {"quota_action": "overage", "bandwidth_quota": "2"},
            "overage_price_per_gb",
            "needs an overage price per GB above 0",
        ),
        (
            {"quota_events": "500", "overage_price_per_1000_events": "0.50"},
            "overage_price_per_1000_events",
            "charged only when",
        ),
        ({"max_connection_duration": "0"}, "max_connection_duration", "greater than or equal to 1"),
        ({"counted_directions": "sideways"}, "counted_directions", "Select a valid choice."),
    ],
)
def test_the_plan_form_puts_policy_errors_on_their_fields(
    client, alice, ticker_api, changes, at_fault, words
):
    client.force_login(alice)
    response = client.post("/provider/apis/ticker/", {**FORM, **changes})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert list(errors) == [at_fault]
    assert words in errors[at_fault][0]
    assert words in response.content.decode()
    assert not BusinessPlan.objects.filter(name="Metered").exists()


def test_the_plan_form_stores_every_policy_field(client, alice, ticker_api):
    client.force_login(alice)
    data = {
        **FORM,
        "rate_limit_events": "100",
        "burst_events": "20",
        "quota_events": "10000",
        "bandwidth_quota": "1",
        "counted_directions": "out",
        "max_connections": "5",
        "max_connections_per_application": "10",
        "max_webhook_subscriptions": "3",
        "max_connection_duration": "90",
        "max_connection_duration_unit": "minutes",
        "quota_action": "overage",
        "limit_notice": "close",
        "overage_price_per_1000_events": "0.50",
        "overage_price_per_gb": "2",
    }
    assert client.post("/provider/apis/ticker/", data).status_code == 302
    plan = BusinessPlan.objects.get(name="Metered")
    stored = {name: getattr(plan, name) for name in EVERY_FIELD}
    assert stored == {**EVERY_FIELD, "max_connection_seconds": 5400}
    page = text_of(client.get("/provider/apis/ticker/"))
    assert "Connections max 5 per subscription, 10 per application" in page
    assert "Duration connections last at most 90 min" in page


# --- REST --------------------------------------------------------------------------------------


def test_every_policy_field_round_trips_through_rest(client, alice, bob, admin_user, ticker_api):
    response = post_plan(client, alice, {"name": "Metered", **EVERY_FIELD})
    assert response.status_code == 201, response.content
    created = response.json()
    assert {name: created[name] for name in EVERY_FIELD} == EVERY_FIELD
    plan = BusinessPlan.objects.get(name="Metered")
    assert {name: getattr(plan, name) for name in EVERY_FIELD} == EVERY_FIELD

    listed = client.get("/api/v1/apis/ticker/plans/", **basic(alice)).json()
    mine = next(p for p in listed if p["name"] == "Metered")
    assert {name: mine[name] for name in EVERY_FIELD} == EVERY_FIELD

    # Consumers read the same policy once an admin approved the plan.
    client.post(f"/api/v1/plans/{plan.pk}/approve", **basic(admin_user))
    offered = client.get("/api/v1/apis/ticker/", **basic(bob)).json()["plans"]
    seen = next(p for p in offered if p["name"] == "Metered")
    assert {name: seen[name] for name in EVERY_FIELD} == EVERY_FIELD


def test_the_defaults_of_an_omitted_policy(client, alice, ticker_api):
    created = post_plan(client, alice, {"name": "Plain"}).json()
    assert (created["counted_directions"], created["quota_action"], created["limit_notice"]) == (
        "both",
        "stop",
        "notify",
    )
    assert (created["max_connection_seconds"], created["overage_price_per_gb_minor"]) == (None, 0)


@pytest.mark.parametrize(
    ("body", "at_fault"),
    [
        ({"quota_action": "overage"}, "quota_action"),
        ({"quota_action": "overage", "quota_events": 1000}, "overage_price_per_1000_events_minor"),
        ({"quota_bytes": 1000, "overage_price_per_gb_minor": 100}, "overage_price_per_gb_minor"),
        ({"counted_directions": "sideways"}, "counted_directions"),
        ({"limit_notice": "shout"}, "limit_notice"),
        ({"max_connection_seconds": 0}, "max_connection_seconds"),
        ({"max_webhook_subscriptions": 0}, "max_webhook_subscriptions"),
        ({"overage_price_per_1000_events_minor": -5}, "overage_price_per_1000_events_minor"),
    ],
)
def test_rest_refuses_incoherent_policies_naming_the_field(client, alice, ticker_api, body, at_fault):
    response = post_plan(client, alice, {"name": "Odd", **body})
    assert response.status_code == 400
    assert list(response.json()) == [at_fault]
    assert not BusinessPlan.objects.filter(name="Odd").exists()


# --- what consumers read -------------------------------------------------------------------------


def test_consumers_read_the_policy_in_plain_words(client, ticker_api):
    BusinessPlanFactory(api=ticker_api, **{"name": "Metered", **EVERY_FIELD, "counted_directions": "both"})
    BusinessPlanFactory(
        api=ticker_api,
        name="Capped",
        rate_limit_events=1,
        rate_limit_unit="second",
        quota_events=5_000,
        max_connections=2,
    )
    page = text_of(client.get("/apis/ticker/"))
    # Plans are listed by fee, then name: Capped, Free, Metered, Gold.
    metered = page[page.index("Metered") : page.index("Gold")]
    assert "Rate 100 events per minute (+20 burst)" in metered
    assert "Quota 10,000 events and 1.0 GB per month" in metered
    assert "Counted both directions" in metered
    assert (
        "At the quota keeps delivering; overage billed at $0.50 per 1,000 events and $2.00 per GB" in metered
    )
    assert "Over the rate stops (connections closed with 4429)" in metered
    assert "Connections max 5 per subscription, 10 per application" in metered
    assert "Duration connections last at most 1 h" in metered
    assert "Webhooks max 3 webhook subscriptions" in metered
    capped = page[page.index("Capped") : page.index("Free")]
    assert "Rate 1 event per second" in capped
    assert "Quota 5,000 events per month" in capped
    assert "At a limit stops (clients are notified)" in capped
    assert "Connections max 2 per subscription" in capped


def test_the_admins_approval_queue_shows_the_policy(client, admin_user, ticker_api):
    BusinessPlanFactory(
        api=ticker_api,
        is_approved=False,
        **{"name": "Metered", **EVERY_FIELD},
    )
    client.force_login(admin_user)
    page = text_of(client.get("/staff/approvals/"))
    assert (
        "100 events/minute (+20 burst) · 10,000 events/month · 1.0 GB/month (out only) · overage $0.50/1k "
        "events $2.00/GB · closes with 4429 · 5 connections · 10 connections/app · connections ≤ 1 h · "
        "3 webhooks"
    ) in page


# --- Django admin ------------------------------------------------------------------------------


def admin_form(plan: BusinessPlan, **changes) -> dict[str, str]:
    """The admin change form of ``plan`` as a browser posts it (empty for None)."""
    fields = [
        "api",
        "name",
        "description",
        "decision_reason",
        "currency",
        "flat_fee_minor",
        "included_events",
        "price_per_1000_events_minor",
        "billing_period",
        "included_bytes",
        "price_per_gb_minor",
        "rate_limit_events",
        "rate_limit_unit",
        "burst_events",
        "quota_events",
        "quota_bytes",
        "counted_directions",
        "max_connections",
        "max_connections_per_application",
        "max_connection_seconds",
        "max_webhook_subscriptions",
        "quota_action",
        "limit_notice",
        "overage_price_per_1000_events_minor",
        "overage_price_per_gb_minor",
    ]
    data = {
        name: ""
        if getattr(plan, name if name != "api" else "api_id") is None
        else str(getattr(plan, name if name != "api" else "api_id"))
        for name in fields
    }
    data["price_tiers"] = json.dumps(plan.price_tiers)
    if plan.is_approved:
        data["is_approved"] = "on"
    data.update({name: str(value) for name, value in changes.items()})
    return data


def test_admins_edit_every_policy_field_in_the_django_admin(client, admin_user, ticker_api):
    plan = ticker_api.plans.get(name="Free")
    client.force_login(admin_user)
    url = f"/admin/portal/businessplan/{plan.pk}/change/"
    page = client.get(url).content.decode()
    for name in EVERY_FIELD:
        assert f'name="{name}"' in page

    response = client.post(url, admin_form(plan, **EVERY_FIELD))
    assert response.status_code == 302, response.context["adminform"].form.errors
    plan.refresh_from_db()
    assert {name: getattr(plan, name) for name in EVERY_FIELD} == EVERY_FIELD


def test_the_django_admin_refuses_incoherent_policies_on_the_field(client, admin_user, ticker_api):
    plan = ticker_api.plans.get(name="Free")
    client.force_login(admin_user)
    response = client.post(
        f"/admin/portal/businessplan/{plan.pk}/change/", admin_form(plan, quota_action="overage")
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["quota_action"] and "needs a quota to go over" in errors["quota_action"][0]
    plan.refresh_from_db()
    assert plan.quota_action == "stop"


def test_admins_approve_plans_with_the_admin_action(client, admin_user, ticker_api):
    plan = BusinessPlanFactory(api=ticker_api, name="Waiting", is_approved=False)
    client.force_login(admin_user)
    client.post(
        "/admin/portal/businessplan/",
        {"action": "plans_approve", "_selected_action": [plan.pk]},
    )
    plan.refresh_from_db()
    assert (plan.is_approved, plan.decided_by) == (True, admin_user)
