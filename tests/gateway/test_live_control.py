"""Live control: suspending a subscription closes its open connections with 4403 ("Subscription
suspended."), changing its business plan closes them with 4409, within one second of the commit,
including idle connections that send nothing. Also the services' rules and the Django admin.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets
from django.core.exceptions import PermissionDenied, ValidationError
from websockets.asyncio.client import connect

from portal.models import Subscription
from portal.services.subscriptions import (
    subscription_plan_change,
    subscription_reinstate,
    subscription_suspend,
)
from tests.factories import BusinessPlanFactory

# The deadline: a change takes effect on open connections within one second.
DEADLINE = 1.0


async def _closed_within_deadline(client, change) -> tuple[int | None, str, float]:
    """Run the blocking ``change`` (it commits before returning), then wait at most ``DEADLINE``
    seconds from the commit for the close frame. Returns (code, reason, seconds after commit)."""
    await asyncio.to_thread(change)
    committed = time.monotonic()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(client.recv(), timeout=DEADLINE)
    received = closed.value.rcvd
    return (
        (received.code if received else None),
        (received.reason if received else ""),
        time.monotonic() - committed,
    )


def test_suspending_closes_idle_connections_with_4403_within_a_second_and_refuses_new_ones(
    gateway_server, stream_api, bob_subscribed, admin_user
):
    base = f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0"
    secret = bob_subscribed.secret

    def suspend() -> None:
        subscription_suspend(subscription=bob_subscribed.subscription, by=admin_user, reason="Unpaid invoice")

    async def scenario():
        async with (
            connect(f"{base}/prices/ACME?access_token={secret}") as single,
            connect(f"{base}?access_token={secret}") as multiplexed,
        ):
            await asyncio.sleep(0.3)  # both idle, sending nothing
            first = await _closed_within_deadline(single, suspend)
            with pytest.raises(websockets.ConnectionClosed) as other:
                await asyncio.wait_for(multiplexed.recv(), timeout=DEADLINE)
        async with connect(f"{base}/prices/ACME?access_token={secret}") as again:
            with pytest.raises(websockets.ConnectionClosed) as refused:
                await asyncio.wait_for(again.recv(), timeout=5)
        return first, other.value.rcvd, refused.value.rcvd

    (code, reason, _after), other, refused = asyncio.run(scenario())
    assert (code, reason) == (4403, "Subscription suspended."), gateway_server.log()
    assert (other.code, other.reason) == (4403, "Subscription suspended.")
    assert (refused.code, refused.reason) == (4403, f"subscription to {stream_api.slug} is suspended")

    subscription_reinstate(subscription=bob_subscribed.subscription, by=admin_user)

    async def reconnect() -> bool:
        async with connect(f"{base}/prices/ACME?access_token={secret}") as client:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.recv(), timeout=0.5)
            return True

    assert asyncio.run(reconnect())


def test_changing_the_plan_closes_idle_connections_with_4409_within_a_second(
    gateway_server, stream_api, bob_subscribed, bob
):
    silver = BusinessPlanFactory(api=stream_api, name="Silver")
    url = (
        f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
    )

    def change() -> None:
        subscription_plan_change(subscription=bob_subscribed.subscription, plan=silver, by=bob)

    async def scenario():
        async with connect(url) as client:
            await asyncio.sleep(0.3)
            closed = await _closed_within_deadline(client, change)
        # Reconnecting continues under the new plan.
        async with connect(url) as client:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.recv(), timeout=0.5)
        return closed

    code, reason, _after = asyncio.run(scenario())
    assert (code, reason) == (4409, "Business plan changed; reconnect to continue under the new plan.")
    assert Subscription.objects.get(pk=bob_subscribed.subscription.pk).plan == silver


def test_editing_a_plans_throttling_policy_closes_its_connections_with_4409(
    gateway_server, stream_api, bob_subscribed
):
    """An admin's edit of the policy (Django admin saves the plan): live connections reconnect
    under the new limits; an edit of another field (the description) closes nothing."""
    url = (
        f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
    )
    plan = bob_subscribed.subscription.plan

    def describe() -> None:
        plan.description = "Same limits, new words."
        plan.save()

    def limit() -> None:
        plan.rate_limit_events = 100
        plan.save()

    async def scenario():
        async with connect(url) as client:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(describe)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.recv(), timeout=DEADLINE)
            return await _closed_within_deadline(client, limit)

    code, reason, _after = asyncio.run(scenario())
    assert (code, reason) == (4409, "Business plan changed; reconnect to continue under the new plan.")


def test_a_plan_change_without_a_signal_is_caught_by_the_audit(gateway_server, stream_api, bob_subscribed):
    """A raw UPDATE sends no control message; the audit (0.5 s in this server) notices the grant's
    plan is no longer the subscription's."""
    silver = BusinessPlanFactory(api=stream_api, name="Silver")
    url = (
        f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
    )

    async def scenario():
        async with connect(url) as client:
            await asyncio.to_thread(
                lambda: Subscription.objects.filter(pk=bob_subscribed.subscription.pk).update(plan=silver)
            )
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(client.recv(), timeout=5)
        return closed.value.rcvd

    assert asyncio.run(scenario()).code == 4409, gateway_server.log()


# --- The services' rules ----------------------------------------------------------------------


@pytest.mark.django_db
def test_only_admins_suspend_with_a_reason_and_only_active_subscriptions(bob_subscribed, bob, admin_user):
    subscription = bob_subscribed.subscription
    with pytest.raises(PermissionDenied):
        subscription_suspend(subscription=subscription, by=bob, reason="mine")
    with pytest.raises(ValidationError, match="Say why"):
        subscription_suspend(subscription=subscription, by=admin_user, reason=" ")
    subscription_suspend(subscription=subscription, by=None, reason="Payment failed")  # the system (dunning)
    assert (subscription.status, subscription.decision_reason) == ("suspended", "Payment failed")
    with pytest.raises(ValidationError, match="Only active subscriptions"):
        subscription_suspend(subscription=subscription, by=admin_user, reason="again")
    subscription_reinstate(subscription=subscription, by=admin_user)
    assert subscription.status == "active"
    with pytest.raises(ValidationError, match="not suspended"):
        subscription_reinstate(subscription=subscription, by=admin_user)


@pytest.mark.django_db
def test_plan_changes_stay_within_the_api_and_its_offered_plans(
    stream_api, bob_subscribed, bob, carol, admin_user
):
    subscription = bob_subscribed.subscription
    other_api_plan = BusinessPlanFactory(name="Elsewhere")
    unapproved = BusinessPlanFactory(api=stream_api, name="Draft plan", is_approved=False)
    gold = stream_api.plans.get(name="Gold")  # requires approval
    for plan, by, error in [
        (other_api_plan, bob, "plan of another API"),
        (unapproved, bob, "not available"),
        (subscription.plan, bob, "already on the plan Free"),
        (gold, bob, "requires an admin's approval"),
    ]:
        with pytest.raises(ValidationError, match=error):
            subscription_plan_change(subscription=subscription, plan=plan, by=by)
    with pytest.raises(PermissionDenied):
        subscription_plan_change(subscription=subscription, plan=gold, by=carol)
    subscription_plan_change(subscription=subscription, plan=gold, by=admin_user)
    assert subscription.plan == gold
    subscription.status = "cancelled"
    subscription.save()
    with pytest.raises(ValidationError, match="cancelled subscription's plan cannot be changed"):
        subscription_plan_change(
            subscription=subscription, plan=stream_api.plans.get(name="Free"), by=admin_user
        )


@pytest.mark.django_db
def test_admin_suspends_and_reinstates_through_the_changelist_actions(client, bob_subscribed, admin_user):
    client.force_login(admin_user)
    changelist = "/admin/portal/subscription/"
    subscription = bob_subscribed.subscription
    page = client.post(changelist, {"action": "suspend", "_selected_action": [subscription.pk]}, follow=True)
    assert "is suspended" in page.content.decode()
    subscription.refresh_from_db()
    assert (subscription.status, subscription.decided_by) == ("suspended", admin_user)
    client.post(changelist, {"action": "reinstate", "_selected_action": [subscription.pk]}, follow=True)
    subscription.refresh_from_db()
    assert subscription.status == "active"


@pytest.mark.django_db
def test_admin_plan_change_goes_through_the_service(client, stream_api, bob_subscribed, admin_user):
    client.force_login(admin_user)
    subscription = bob_subscribed.subscription
    elsewhere = BusinessPlanFactory(name="Elsewhere")
    url = f"/admin/portal/subscription/{subscription.pk}/change/"
    form = {
        "application": subscription.application_id,
        "api": subscription.api_id,
        "status": "active",
        "created_0": "2026-01-01",
        "created_1": "00:00:00",
        "decision_reason": "",
    }
    page = client.post(url, {**form, "plan": elsewhere.pk}, follow=True).content.decode()
    # A field error on the form, and no "changed successfully" message beside it.
    assert "plan of another API" in page and "changed successfully" not in page
    subscription.refresh_from_db()
    assert subscription.plan.name == "Free"
    gold = stream_api.plans.get(name="Gold")
    client.post(url, {**form, "plan": gold.pk}, follow=True)
    subscription.refresh_from_db()
    assert subscription.plan == gold
