"""Approvals with reasons the requester sees; cancelling subscriptions; editing and deleting
applications."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from portal.models import API, Application, Subscription
from portal.services.lifecycle import api_transition
from portal.services.subscriptions import (
    application_delete,
    application_update,
    plan_approve,
    plan_reject,
    subscription_approve,
    subscription_cancel,
    subscription_reject,
)
from tests.factories import ApplicationFactory, BusinessPlanFactory, SubscriptionFactory


def _content(response) -> str:
    return response.content.decode()


@pytest.fixture
def platinum(ticker_api):
    return BusinessPlanFactory(
        api=ticker_api, name="Platinum", is_approved=False, flat_fee_minor=19900, rate_limit_events=5000
    )


@pytest.fixture
def pending(bob, ticker_api):
    application = ApplicationFactory(owner=bob, name="Bob's desk")
    return SubscriptionFactory(
        application=application, plan=ticker_api.plans.get(name="Gold"), status=Subscription.Status.PENDING
    )


def test_queue_lists_pending_plans_with_limits_and_prices(client, admin_user, platinum, pending):
    client.force_login(admin_user)
    page = _content(client.get("/staff/approvals/"))
    assert "Platinum" in page and "$199.00/month" in page and "5,000 events/minute" in page
    assert "Bob&#x27;s desk" in page


def test_rejecting_a_plan_needs_a_reason_and_changes_nothing_without_one(client, admin_user, platinum):
    client.force_login(admin_user)
    response = client.post(f"/staff/plans/{platinum.pk}/reject/", {"reason": "  "})
    assert response.status_code == 400
    assert "Give a reason: the requester sees it." in _content(response)
    platinum.refresh_from_db()
    assert platinum.approval_status == "pending"


def test_provider_sees_the_reason_a_plan_was_rejected(client, admin_user, alice, platinum):
    client.force_login(admin_user)
    client.post(f"/staff/plans/{platinum.pk}/reject/", {"reason": "Price above the platform cap"})
    platinum.refresh_from_db()
    assert (platinum.approval_status, platinum.decided_by) == ("rejected", admin_user)
    page = _content(client.get("/staff/approvals/"))
    assert "Rejected the plan Platinum of Ticker; the requester sees your reason." in page
    assert "No plans are waiting." in page

    client.force_login(alice)
    page = _content(client.get("/provider/apis/ticker/"))
    assert "Rejected" in page and "Price above the platform cap" in page
    assert "Platinum" not in _content(client.get("/apis/ticker/"))


def test_admin_approves_a_plan_with_a_note(client, admin_user, alice, platinum):
    client.force_login(admin_user)
    client.post(f"/staff/plans/{platinum.pk}/approve/", {"reason": "Welcome"})
    platinum.refresh_from_db()
    assert platinum.is_approved and platinum.decision_reason == "Welcome"
    assert "Platinum" in _content(client.get("/apis/ticker/"))


def test_a_decided_plan_cannot_be_decided_again(admin_user, platinum):
    plan_reject(plan=platinum, approver=admin_user, reason="No")
    with pytest.raises(ValidationError, match="no longer awaiting approval"):
        plan_approve(plan=platinum, approver=admin_user)


def test_only_staff_decide(alice, platinum, pending):
    with pytest.raises(PermissionDenied):
        plan_approve(plan=platinum, approver=alice)
    with pytest.raises(PermissionDenied):
        subscription_reject(subscription=pending, approver=alice, reason="x")


def test_consumer_sees_why_their_subscription_was_rejected(client, admin_user, bob, pending):
    client.force_login(admin_user)
    response = client.post(f"/staff/subscriptions/{pending.pk}/reject/", {"reason": ""})
    assert response.status_code == 400
    pending.refresh_from_db()
    assert pending.status == "pending"

    client.post(f"/staff/subscriptions/{pending.pk}/reject/", {"reason": "Professional traders only"})
    client.force_login(bob)
    page = _content(client.get(f"/apps/{pending.application.pk}/"))
    assert "Rejected" in page and "Professional traders only" in page


def test_a_consumer_never_sees_another_consumers_reasons(client, admin_user, carol, pending):
    subscription_reject(subscription=pending, approver=admin_user, reason="Secret reason for Bob")
    ApplicationFactory(owner=carol, name="Carol's")
    client.force_login(carol)
    assert client.get(f"/apps/{pending.application.pk}/").status_code == 404
    assert "Secret reason for Bob" not in _content(client.get("/apps/"))


def test_consumer_cancels_a_subscription_and_may_subscribe_again(client, bob, ticker_api):
    application = ApplicationFactory(owner=bob)
    free = ticker_api.plans.get(name="Free")
    subscription = SubscriptionFactory(application=application, plan=free)
    client.force_login(bob)
    response = client.post(f"/apps/{application.pk}/subscriptions/{subscription.pk}/cancel/", follow=True)
    assert "Cancelled the subscription to Ticker" in _content(response)
    subscription.refresh_from_db()
    assert subscription.status == "cancelled"
    again = client.post(f"/apps/{application.pk}/subscriptions/{subscription.pk}/cancel/", follow=True)
    assert "already cancelled" in _content(again)
    client.post("/apis/ticker/", {"application": str(application.pk), "plan": str(free.pk)})
    assert application.subscriptions.filter(status="active").count() == 1


def test_carol_cannot_cancel_bobs_subscription(client, bob, carol, ticker_api):
    application = ApplicationFactory(owner=bob)
    subscription = SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))
    carols = ApplicationFactory(owner=carol)
    client.force_login(carol)
    assert client.post(f"/apps/{application.pk}/subscriptions/{subscription.pk}/cancel/").status_code == 404
    assert client.post(f"/apps/{carols.pk}/subscriptions/{subscription.pk}/cancel/").status_code == 404
    with pytest.raises(PermissionDenied):
        subscription_cancel(subscription=subscription, actor=carol)
    subscription.refresh_from_db()
    assert subscription.status == "active"


def test_edit_an_application(client, bob):
    application = ApplicationFactory(owner=bob, name="Old")
    ApplicationFactory(owner=bob, name="Taken")
    client.force_login(bob)
    response = client.post(f"/apps/{application.pk}/edit/", {"name": "Taken", "description": ""})
    assert "You already have an application called “Taken”." in _content(response)
    client.post(f"/apps/{application.pk}/edit/", {"name": "New", "description": "Desk board"})
    application.refresh_from_db()
    assert (application.name, application.description) == ("New", "Desk board")
    with pytest.raises(ValidationError):
        application_update(application=application, name=" ", description="")


def test_delete_an_application_only_without_live_subscriptions(client, bob, ticker_api):
    application = ApplicationFactory(owner=bob, name="Board")
    subscription = SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))
    client.force_login(bob)
    assert "Delete Board?" in _content(client.get(f"/apps/{application.pk}/delete/"))
    response = client.post(f"/apps/{application.pk}/delete/", follow=True)
    assert "cancel them first" in _content(response)
    subscription_cancel(subscription=subscription, actor=bob)
    client.post(f"/apps/{application.pk}/delete/")
    assert not Application.objects.filter(pk=application.pk).exists()


def test_carol_cannot_edit_or_delete_bobs_application(client, bob, carol):
    application = ApplicationFactory(owner=bob, name="Board")
    client.force_login(carol)
    assert client.get(f"/apps/{application.pk}/edit/").status_code == 404
    assert client.post(f"/apps/{application.pk}/delete/").status_code == 404
    assert Application.objects.filter(pk=application.pk).exists()


def test_service_deletes_an_application_without_subscriptions(bob):
    application = ApplicationFactory(owner=bob, name="Spare")
    application_delete(application=application)
    assert not Application.objects.filter(pk=application.pk).exists()


# Approvals and the API's lifecycle


@pytest.mark.parametrize(
    ("state", "says"),
    [
        ("deprecated", "Ticker is deprecated and accepts no new subscriptions."),
        ("blocked", "Ticker is blocked and accepts no new subscriptions."),
    ],
)
def test_a_subscription_is_approved_only_while_its_api_is_published(admin_user, alice, pending, state, says):
    api_transition(api=pending.api, to_status=state, actor=alice)
    with pytest.raises(ValidationError) as refused:
        subscription_approve(subscription=pending, approver=admin_user)
    assert says in refused.value.messages[0]
    pending.refresh_from_db()
    assert pending.status == "pending"


def test_admin_page_says_why_a_deprecated_apis_subscription_cannot_be_approved(
    client, admin_user, alice, pending
):
    api_transition(api=pending.api, to_status="deprecated", actor=alice)
    client.force_login(admin_user)
    page = _content(client.post(f"/staff/subscriptions/{pending.pk}/approve/", {}, follow=True))
    assert "Ticker is deprecated and accepts no new subscriptions." in page
    pending.refresh_from_db()
    assert pending.status == "pending"
    # Rejecting it stays possible.
    client.post(f"/staff/subscriptions/{pending.pk}/reject/", {"reason": "Ticker is deprecated"})
    pending.refresh_from_db()
    assert pending.status == "rejected"


def test_a_retired_apis_subscription_cannot_be_approved(admin_user, pending):
    # A pending subscription of a retired API is rejected on retirement; one left pending by
    # hand (a raw UPDATE) is still refused.
    API.objects.filter(pk=pending.api_id).update(status=API.Status.RETIRED)
    with pytest.raises(
        ValidationError, match="Ticker is retired; its subscriptions can no longer be approved."
    ):
        subscription_approve(subscription=pending, approver=admin_user)


def test_a_retired_apis_plan_cannot_be_approved_and_leaves_the_queue(client, admin_user, alice, platinum):
    api_transition(api=platinum.api, to_status="retired", actor=alice)
    with pytest.raises(ValidationError, match="Ticker is retired; its plans can no longer be offered."):
        plan_approve(plan=platinum, approver=admin_user)
    platinum.refresh_from_db()
    # Retiring rejected it, so the provider does not see it waiting for good.
    assert (platinum.approval_status, platinum.decision_reason) == ("rejected", "The API was retired.")

    client.force_login(admin_user)
    assert "Platinum" not in _content(client.get("/staff/approvals/"))
    assert client.get("/api/v1/approvals/").json()["plans"] == []
    response = client.post(f"/api/v1/plans/{platinum.pk}/approve", {}, content_type="application/json")
    assert response.status_code == 400
    assert "retired" in response.json()["non_field_errors"][0]


def test_plans_of_deprecated_and_blocked_apis_stay_approvable(admin_user, alice, platinum):
    api_transition(api=platinum.api, to_status="blocked", actor=alice)
    plan_approve(plan=platinum, approver=admin_user)
    assert platinum.approval_status == "approved"
