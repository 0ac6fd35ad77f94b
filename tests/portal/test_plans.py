"""Business plans: limits and price models entered on the provider page, validated coherently
(field errors, nothing stored), templates that prefill the form, and limits shown in words."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from portal.models import API, BusinessPlan
from portal.plans import PLAN_TEMPLATES, plan_template
from portal.services.subscriptions import plan_create
from tests.factories import BusinessPlanFactory

BASE = {
    "name": "Platinum",
    "description": "For trading desks",
    "price_model": "free",
    "flat_fee": "0",
    "included_events": "0",
    "price_per_1000_events": "0",
    "rate_limit_unit": "minute",
    "bandwidth_unit": "GB",
}


def _content(response) -> str:
    return response.content.decode()


def test_provider_adds_a_plan_with_limits(client, alice, ticker_api):
    client.force_login(alice)
    data = {
        **BASE,
        "price_model": "flat_and_per_event",
        "flat_fee": "99.50",
        "included_events": "1000000",
        "price_per_1000_events": "0.25",
        "rate_limit_events": "100",
        "rate_limit_unit": "second",
        "burst_events": "50",
        "quota_events": "2000000",
        "bandwidth_quota": "1.5",
        "bandwidth_unit": "GB",
        "max_connections": "10",
    }
    assert client.post("/provider/apis/ticker/", data).status_code == 302
    plan = BusinessPlan.objects.get(name="Platinum")
    assert (plan.rate_limit_events, plan.rate_limit_unit, plan.burst_events) == (100, "second", 50)
    assert (plan.quota_events, plan.quota_bytes, plan.max_connections) == (2_000_000, 1_500_000_000, 10)
    assert (plan.flat_fee_minor, plan.price_per_1000_events_minor, plan.price_model) == (
        9950,
        25,
        "flat_and_per_event",
    )
    page = _content(client.get("/provider/apis/ticker/"))
    assert "100 events per second (+50 burst)" in page
    assert "2,000,000 events and 1.5 GB per month" in page and "max 10 per subscription" in page


def test_empty_limits_mean_unlimited(client, alice, ticker_api):
    client.force_login(alice)
    client.post("/provider/apis/ticker/", BASE)
    plan = BusinessPlan.objects.get(name="Platinum")
    assert (plan.rate_limit_events, plan.quota_events, plan.quota_bytes, plan.max_connections) == (
        None,
        None,
        None,
        None,
    )
    assert plan.price_model == "free"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"price_model": "free", "flat_fee": "10"}, "“Free” has no flat fee"),
        ({"price_model": "flat", "flat_fee": "0"}, "“Flat fee per month” needs a flat fee above 0."),
        ({"price_model": "flat", "flat_fee": "5", "price_per_1000_events": "1"}, "does not charge per event"),
        ({"price_model": "per_event"}, "needs a price per 1,000 events above 0."),
        ({"price_model": "free", "included_events": "1000"}, "Included events only matter"),
        ({"burst_events": "10"}, "A burst is extra room above a rate limit"),
        ({"rate_limit_events": "0"}, "Ensure this value is greater than or equal to 1."),
        ({"bandwidth_quota": "-1"}, "Ensure this value is greater than or equal to 0.001."),
        ({"max_connections": "many"}, "Enter a whole number."),
        ({"rate_limit_unit": "fortnight"}, "Select a valid choice."),
    ],
)
def test_incoherent_plans_are_field_errors_and_nothing_is_stored(client, alice, ticker_api, changes, message):
    client.force_login(alice)
    response = client.post("/provider/apis/ticker/", {**BASE, **changes})
    assert response.status_code == 200
    page = _content(response)
    assert message in page
    assert "invalid-feedback" in page  # on the field, not only at the top
    assert not BusinessPlan.objects.filter(name="Platinum").exists()


def test_the_service_refuses_incoherent_plans_too(ticker_api):
    with pytest.raises(ValidationError) as refused:
        plan_create(api=ticker_api, name="Odd", price_model="free", flat_fee_minor=100, burst_events=5)
    assert set(refused.value.message_dict) == {"flat_fee_minor", "burst_events"}
    with pytest.raises(ValidationError) as refused:
        plan_create(api=ticker_api, name="Odd", is_approved=True)
    assert set(refused.value.message_dict) == {"is_approved"}
    assert not BusinessPlan.objects.filter(name="Odd").exists()


def test_shipped_templates_are_wso2s_async_tiers():
    per_day = {t.name: t.fields.get("rate_limit_events") for t in PLAN_TEMPLATES}
    assert per_day == {"AsyncBronze": 5000, "AsyncSilver": 25000, "AsyncGold": 50000, "AsyncUnlimited": None}
    assert all(t.fields["rate_limit_unit"] == "day" for t in PLAN_TEMPLATES)
    assert plan_template("async-gold").name == "AsyncGold"
    assert plan_template("nope") is None


def test_a_template_prefills_the_plan_form(client, alice, ticker_api):
    client.force_login(alice)
    page = _content(client.get("/provider/apis/ticker/?template=async-silver"))
    assert 'value="AsyncSilver"' in page
    assert 'name="rate_limit_events" value="25000"' in page
    assert '<option value="day" selected>' in page
    assert '<option value="async-silver" selected>' in page
    # An unknown template is a blank form, not an error.
    assert client.get("/provider/apis/ticker/?template=%00nope").status_code == 200


def test_a_plan_from_a_template_is_stored_with_its_limits(client, alice, ticker_api):
    client.force_login(alice)
    data = {**BASE, "name": "AsyncBronze", "rate_limit_events": "5000", "rate_limit_unit": "day"}
    client.post("/provider/apis/ticker/?template=async-bronze", data)
    plan = BusinessPlan.objects.get(name="AsyncBronze")
    assert (plan.rate_limit_events, plan.rate_limit_unit, plan.is_approved) == (5000, "day", False)


def test_consumers_see_a_plans_limits_in_words(client, ticker_api):
    BusinessPlanFactory(
        api=ticker_api,
        name="Metered",
        rate_limit_events=5000,
        rate_limit_unit="day",
        quota_bytes=2 * 10**9,
        max_connections=3,
    )
    page = _content(client.get("/apis/ticker/"))
    assert "5,000 events per day" in page
    assert "2.0 GB per month" in page and "max 3 per subscription" in page
    assert "Unlimited" in page  # the Free plan and Metered's event quota


def test_a_retired_api_takes_no_new_plan_and_offers_no_plan_form(alice, client, ticker_api):
    ticker_api.status = API.Status.RETIRED
    ticker_api.save()
    with pytest.raises(ValidationError) as refused:
        plan_create(api=ticker_api, name="Late")
    assert "retired" in refused.value.message_dict["name"][0]
    assert not ticker_api.plans.filter(name="Late").exists()
    client.force_login(alice)
    assert 'id="add-plan"' not in client.get("/provider/apis/ticker/").content.decode()
