"""Business plan pricing: graduated price tiers, bandwidth and yearly billing periods, entered on
the provider's plan form, over REST and in the Django admin, refused field by field when they
make no sense (``portal.plans.plan_fields_validate``), shown to consumers and admins in plain
words, and billed as shown (``billing.services.events_charge``, docs/billing.md › Pricing)."""

from __future__ import annotations

import json

import pytest

from billing.services import bandwidth_charge, events_charge
from portal.models import BusinessPlan
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory
from tests.portal.test_plan_policy import admin_form, post_plan, text_of
from tests.portal.test_plans import BASE

TIERS = [
    {"up_to": 100_000, "price_per_1000_events_minor": 150},
    {"up_to": None, "price_per_1000_events_minor": 100},
]
# A plan of the brief: $49.00 a month, 10,000 events included, then $1.50 per 1,000 for the next
# 100,000 and $1.00 per 1,000 beyond, bandwidth $0.20 per GB over 5 GB.
TIERED = {
    "flat_fee_minor": 4900,
    "included_events": 10_000,
    "price_tiers": TIERS,
    "included_bytes": 5 * 10**9,
    "price_per_gb_minor": 20,
}
SUMMARY = (
    "$49.00/month · 10,000 events included · then $1.50 per 1,000 events for the next 100,000, "
    "$1.00 per 1,000 beyond · bandwidth $0.20 per GB over 5 GB"
)


def form_post(client, **changes):
    return client.post("/provider/apis/ticker/", {**BASE, **changes})


# --- the provider's plan form ------------------------------------------------------------------


def test_provider_adds_a_yearly_tiered_plan_with_bandwidth_on_the_form(client, alice, ticker_api):
    client.force_login(alice)
    response = form_post(
        client,
        price_model="flat_and_per_event",
        billing_period="year",
        flat_fee="490",
        included_events="10000",
        price_tiers="up to 100,000: $1.50\n\nabove 1.00\n",
        included_bandwidth="5",
        included_bandwidth_unit="GB",
        price_per_gb="0.20",
    )
    assert response.status_code == 302, text_of(response)[:3000]
    plan = BusinessPlan.objects.get(name="Platinum")
    assert (plan.billing_period, plan.flat_fee_minor, plan.price_per_1000_events_minor) == ("year", 49000, 0)
    assert plan.price_tiers == TIERS
    assert (plan.included_bytes, plan.price_per_gb_minor, plan.price_model) == (
        5 * 10**9,
        20,
        "flat_and_per_event",
    )
    page = text_of(client.get("/provider/apis/ticker/"))
    assert (
        "$490.00 / year 10,000 events included Then, per 1,000 events: $1.50 next 100,000 $1.00 beyond"
        in page
    )
    assert "Bandwidth $0.20 per GB over 5 GB" in page


def test_the_plan_form_explains_tiers_and_bandwidth(client, alice, ticker_api):
    client.force_login(alice)
    page = text_of(client.get("/provider/apis/ticker/"))
    assert "…or graduated prices per 1,000 events ($)" in page
    assert "“100000 1.50” then “above 1.00” charges $1.50 per 1,000 for the first 100,000 events" in page
    assert "Yearly (calendar year, UTC)" in page
    assert "Bandwidth price per GB ($)" in page


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"price_tiers": "100000 1.50\n100000 1.00\nabove 0.50"},
            "Line 2: the number of events must be greater than line 1&#x27;s: each line gives",
        ),
        (
            {"price_tiers": "100000 1.50\n\n50000 1.00\nabove 0.50"},  # blank lines still count
            "Line 3: the number of events must be greater than line 1&#x27;s: each line gives",
        ),
        (
            {"price_tiers": "1500 1.50\nabove 1.00"},
            "Line 1: the number of events must be a multiple of 1,000",
        ),
        ({"price_tiers": "100000 1.50"}, "Line 1: the last line must start with “above”"),
        ({"price_tiers": "above 1.50\nabove 1.00"}, "Line 1: only the last line may start with “above”"),
        ({"price_tiers": "100000 cheap\nabove 1"}, "Line 1: “cheap” is not a price in dollars, e.g. 1.50."),
        ({"price_tiers": "10k 1.50\nabove 1"}, "Line 1: “10k” is not a number of events"),
        ({"price_tiers": "100000 1.505\nabove 1"}, "Line 1: prices are in whole cents (at most 2 decimals)"),
        ({"price_tiers": "100000 100001\nabove 1"}, "Line 1: at most $100,000.00 per 1,000 events."),
        ({"price_tiers": "100000\nabove 1"}, "Line 1: write the events the tier runs up to and its price"),
        ({"price_tiers": "\n".join(f"{n * 1000} 1" for n in range(1, 11)) + "\nabove 1"}, "at most 10 lines"),
        ({"price_tiers": json.dumps(TIERS)}, "not JSON; the REST API takes JSON tiers in cents."),
        (
            {"price_per_1000_events": "0.50", "price_tiers": "100000 1.50\nabove 1.00"},
            "Graduated prices replace the single price per 1,000 events: set this to 0, or clear the "
            "graduated prices.",
        ),
        (
            {"price_tiers": "100000 1.50\nabove 1.00"},
            "“Free” does not charge per event: clear the graduated prices",
        ),
        ({"price_per_gb": "0.20"}, "“Free” charges nothing: set the bandwidth price per GB to 0"),
        (
            {"price_model": "flat_and_per_event", "flat_fee": "10", "price_per_gb": "0.20"},
            "needs a price per 1,000 events above 0. Set one or graduated price tiers",
        ),
        (
            {"price_model": "per_event", "included_bandwidth": "1"},
            "Included bytes only matter when bandwidth is charged: set a price per GB above 0 or "
            "0 included bytes",
        ),
        ({"price_per_gb": "-1"}, "Ensure this value is greater than or equal to 0."),
        ({"billing_period": "decade"}, "Select a valid choice."),
    ],
)
def test_incoherent_prices_are_field_errors_naming_the_line(client, alice, ticker_api, changes, message):
    client.force_login(alice)
    response = form_post(client, **changes)
    assert response.status_code == 200
    page = response.content.decode()
    assert message in page
    assert "invalid-feedback" in page  # on the field, not only at the top
    assert "(price_tiers)" not in page and "(price_per_gb_minor)" not in page  # no internal names
    assert not BusinessPlan.objects.filter(name="Platinum").exists()


def test_a_tiered_usage_plan_with_free_first_tier_is_accepted(client, alice, ticker_api):
    client.force_login(alice)
    response = form_post(client, price_model="per_event", price_tiers="50000 0\nabove 0.80")
    assert response.status_code == 302
    plan = BusinessPlan.objects.get(name="Platinum")
    assert plan.price_tiers == [
        {"up_to": 50_000, "price_per_1000_events_minor": 0},
        {"up_to": None, "price_per_1000_events_minor": 80},
    ]
    page = text_of(client.get("/provider/apis/ticker/"))
    assert "Pay per use" in page
    assert "Pay per use Per 1,000 events: Free first 50,000 per month $0.80 beyond" in page


# --- REST ------------------------------------------------------------------------------------------


def test_rest_creates_a_tiered_plan_and_shows_its_price(client, alice, ticker_api):
    response = post_plan(client, alice, {"name": "Tiered", "price_model": "flat_and_per_event", **TIERED})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["price_tiers"] == TIERS and body["billing_period"] == "month"
    assert (body["included_bytes"], body["price_per_gb_minor"]) == (5 * 10**9, 20)
    assert body["price_summary"] == SUMMARY
    yearly = post_plan(client, alice, {"name": "Yearly", "flat_fee_minor": 49000, "billing_period": "year"})
    assert yearly.status_code == 201, yearly.json()
    assert yearly.json()["price_summary"] == "$490.00/year"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"price_tiers": "cheap"}, "price_tiers", "price_tiers: must be a list of 1 to 10 tiers"),
        ({"price_tiers": {"up_to": None}}, "price_tiers", "price_tiers: must be a list of 1 to 10 tiers"),
        (
            {"price_tiers": [TIERS[0], {"up_to": 100_000, "price_per_1000_events_minor": 120}, TIERS[1]]},
            "price_tiers",
            "price_tiers/1/up_to: must be greater than the previous tier's up_to (100000).",
        ),
        (
            {"price_tiers": [{"up_to": 1500, "price_per_1000_events_minor": 150}, TIERS[1]]},
            "price_tiers",
            "price_tiers/0/up_to: must be a multiple of 1,000",
        ),
        (
            {"price_tiers": [{"up_to": -1000, "price_per_1000_events_minor": 150}, TIERS[1]]},
            "price_tiers",
            "price_tiers/0/up_to: must be a positive whole number of billable events",
        ),
        (
            {"price_tiers": [{"up_to": "100000", "price_per_1000_events_minor": 150}, TIERS[1]]},
            "price_tiers",
            "price_tiers/0/up_to: must be a positive whole number",
        ),
        (
            {"price_tiers": [TIERS[0]]},
            "price_tiers",
            "price_tiers/0/up_to: the last tier must be null (no upper bound), so every event has a price.",
        ),
        (
            {"price_tiers": [TIERS[1], TIERS[1]]},
            "price_tiers",
            "price_tiers/0/up_to: only the last tier may be null",
        ),
        (
            {"price_tiers": [{"up_to": None}]},
            "price_tiers",
            "price_tiers/0/price_per_1000_events_minor: missing.",
        ),
        (
            {"price_tiers": [{**TIERS[1], "currency": "eur"}]},
            "price_tiers",
            "price_tiers/0: unknown key “currency”",
        ),
        ({"price_tiers": [TIERS[0], 7]}, "price_tiers", "price_tiers/1: must be an object"),
        (
            {"price_tiers": [{"up_to": None, "price_per_1000_events_minor": -5}]},
            "price_tiers",
            "price_tiers/0/price_per_1000_events_minor: must be a whole number of minor units (cents) from 0",
        ),
        (
            {"price_tiers": [{"up_to": None, "price_per_1000_events_minor": 10_000_001}]},
            "price_tiers",
            "from 0 to 10,000,000.",
        ),
        (
            {
                "price_tiers": [{"up_to": n * 1000, "price_per_1000_events_minor": 1} for n in range(1, 11)]
                + [TIERS[1]]
            },
            "price_tiers",
            "price_tiers: at most 10 tiers; this has 11.",
        ),
        (
            {"price_tiers": TIERS, "price_per_1000_events_minor": 50},
            "price_per_1000_events_minor",
            "replace the single price per 1,000 events: set this to 0, or clear the graduated prices.",
        ),
        ({"price_model": "free", "price_tiers": TIERS}, "price_tiers", "“Free” does not charge per event"),
        ({"price_model": "free", "price_per_gb_minor": 20}, "price_per_gb_minor", "“Free” charges nothing"),
        ({"included_bytes": 10**9}, "included_bytes", "Included bytes only matter when bandwidth is charged"),
        ({"included_bytes": -1}, "included_bytes", "greater than or equal to 0"),
        ({"included_bytes": 10**18 + 1}, "included_bytes", "less than or equal to"),
        ({"price_per_gb_minor": 10_000_001}, "price_per_gb_minor", "less than or equal to"),
        ({"billing_period": "decade"}, "billing_period", "is not a valid choice"),
        (
            {"price_model": "flat", "flat_fee_minor": 100, "billing_period": "year", "price_tiers": TIERS},
            "price_tiers",
            "“Flat fee per year” does not charge per event",
        ),
    ],
)
def test_rest_refuses_incoherent_prices_naming_the_field(client, alice, ticker_api, body, field, message):
    response = post_plan(client, alice, {"name": "Odd", **body})
    assert response.status_code == 400
    errors = response.json()
    assert field in errors, errors
    assert any(message in text for text in errors[field]), errors[field]
    assert not BusinessPlan.objects.filter(name="Odd").exists()


def test_rest_reads_null_tiers_as_none(client, alice, ticker_api):
    response = post_plan(
        client, alice, {"name": "Single", "price_per_1000_events_minor": 50, "price_tiers": None}
    )
    assert response.status_code == 201, response.json()
    assert BusinessPlan.objects.get(name="Single").price_tiers == []


def test_rest_prices_a_plan_in_the_currency_given_and_refuses_unknown_ones(client, alice, ticker_api):
    euro = post_plan(client, alice, {"name": "Euro", "flat_fee_minor": 900, "currency": "eur"})
    assert euro.status_code == 201, euro.json()
    assert BusinessPlan.objects.get(name="Euro").currency == "eur"
    assert euro.json()["price_summary"].startswith("€9.00")

    refused = post_plan(client, alice, {"name": "Made up", "flat_fee_minor": 900, "currency": "xyz"})
    assert refused.status_code == 400
    assert refused.json()["currency"] == ['"xyz" is not a valid choice.']
    assert not BusinessPlan.objects.filter(name="Made up").exists()


# --- Django admin ------------------------------------------------------------------------------


def _admin_form(plan: BusinessPlan, **changes) -> dict[str, str]:
    """The admin change form with the pricing fields too, as a browser posts it."""
    pricing = {
        "billing_period": plan.billing_period,
        "included_bytes": str(plan.included_bytes),
        "price_per_gb_minor": str(plan.price_per_gb_minor),
        "price_tiers": json.dumps(plan.price_tiers),
    }
    return {**admin_form(plan), **pricing, **{name: str(value) for name, value in changes.items()}}


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"price_tiers": "[{"}, "price_tiers", "Enter a valid JSON."),
        (
            {"price_tiers": json.dumps([TIERS[0]]), "price_per_1000_events_minor": 0},
            "price_tiers",
            "price_tiers/0/up_to: the last tier must be null",
        ),
        (
            {"price_tiers": json.dumps(TIERS), "price_per_1000_events_minor": 10},
            "price_per_1000_events_minor",
            "replace the single price per 1,000 events",
        ),
        ({"billing_period": "decade"}, "billing_period", "Select a valid choice."),
    ],
)
def test_the_django_admin_refuses_malformed_tiers_on_the_field(
    client, admin_user, ticker_api, changes, field, message
):
    plan = ticker_api.plans.get(name="Free")
    client.force_login(admin_user)
    response = client.post(f"/admin/portal/businessplan/{plan.pk}/change/", _admin_form(plan, **changes))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors and message in " ".join(errors[field]), errors
    plan.refresh_from_db()
    assert plan.price_tiers == []


def test_admins_set_tiers_bandwidth_and_a_yearly_period(client, admin_user, ticker_api):
    plan = ticker_api.plans.get(name="Free")
    client.force_login(admin_user)
    url = f"/admin/portal/businessplan/{plan.pk}/change/"
    page = client.get(url).content.decode()
    for name in ("price_tiers", "included_bytes", "price_per_gb_minor", "billing_period"):
        assert f'name="{name}"' in page
    changes = {**TIERED, "price_tiers": json.dumps(TIERS), "billing_period": "year"}
    response = client.post(url, _admin_form(plan, **changes))
    assert response.status_code == 302, response.context["adminform"].form.errors
    plan.refresh_from_db()
    assert (plan.price_tiers, plan.billing_period, plan.price_per_gb_minor) == (TIERS, "year", 20)
    # An emptied box clears the tiers (never NULL).
    response = client.post(url, _admin_form(plan, price_tiers="", included_events=0))
    assert response.status_code == 302, response.context["adminform"].form.errors
    plan.refresh_from_db()
    assert plan.price_tiers == []


# --- what consumers and admins read ------------------------------------------------------------


def test_catalog_cards_say_the_price_in_plain_words(client, ticker_api):
    BusinessPlanFactory(api=ticker_api, name="Tiered", **TIERED)
    BusinessPlanFactory(
        api=ticker_api, name="Annual", flat_fee_minor=49000, billing_period="year", quota_events=1_000_000
    )
    page = text_of(client.get("/apis/ticker/"))
    tiered = page[page.index("Tiered") :]
    assert (
        "$49.00 / month 10,000 events included Then, per 1,000 events: $1.50 next 100,000 $1.00 beyond "
        "Bandwidth $0.20 per GB over 5 GB"
    ) in tiered
    annual = page[page.index("Annual") :]
    assert "$490.00 / year" in annual and "Quota 1,000,000 events per year" in annual
    listing = text_of(client.get("/apis/"))
    assert "$49.00/month + usage" in listing and "$490.00/year" in listing


def test_the_approvals_page_says_the_price_in_plain_words(client, admin_user, bob, ticker_api):
    plan = BusinessPlanFactory(api=ticker_api, name="Tiered", is_approved=False, **TIERED)
    yearly = BusinessPlanFactory(
        api=ticker_api, name="Annual", flat_fee_minor=49000, billing_period="year", requires_approval=True
    )
    SubscriptionFactory(application=ApplicationFactory(owner=bob), plan=yearly, status="pending")
    client.force_login(admin_user)
    page = text_of(client.get("/staff/approvals/"))
    assert plan.name in page
    assert SUMMARY in page
    assert "$490.00/year" in page


# --- billing prices what the page says ---------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "amount"),
    [
        (0, 0),
        (10_000, 0),  # all included
        (10_001, 150),  # one event over: a started block of the first tier
        (110_000, 100 * 150),  # exactly at the tier boundary: 100,000 billable events
        (110_001, 100 * 150 + 100),  # one over the boundary: a started block of the next tier
        (1_110_000, 100 * 150 + 1000 * 100),
    ],
)
def test_billing_prices_a_tiered_plan_as_its_page_says(db, events, amount):
    plan = BusinessPlan(**TIERED)
    assert events_charge(plan=plan, events=events).amount_minor == amount


def test_billing_prices_bandwidth_over_the_included_bytes_pro_rata(db):
    plan = BusinessPlan(**TIERED)
    assert bandwidth_charge(plan=plan, size=5 * 10**9).amount_minor == 0
    assert bandwidth_charge(plan=plan, size=5 * 10**9 + 1).amount_minor == 1  # rounded up to a cent
    assert bandwidth_charge(plan=plan, size=7_500_000_000).amount_minor == 50  # 2.5 GB × $0.20
