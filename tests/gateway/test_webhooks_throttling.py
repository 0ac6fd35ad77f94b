"""Webhooks under the subscription's throttling policy (the business plan): the number of
webhooks per subscription (``max_webhook_subscriptions``), and deliveries counted in the same
Redis counters as WebSocket and SSE events (rate limit, quotas), throttled deliveries stored as
``throttled``, counted as throttled usage, and reported by the next POST's ``Eventgate-Throttled``
header. A real Celery worker, the real dispatcher process, RabbitMQ, Redis and an HTTP callback
server on 127.0.0.1, as in ``test_webhooks.py``."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction

from analytics.models import UsageRecord
from gateway.models import WebhookDelivery, WebhookSubscription
from gateway.throttling import Policy, policy_limits, subscription_limits_usage, sync_limiter
from gateway.webhooks.services import webhook_register
from portal.celery import app as celery_app
from portal.models import BusinessPlan, Subscription
from tests.fixtures.servers import (
    CallbackServer,
    amqp_queues_delete,
    celery_worker_start,
    webhook_dispatcher_start,
)
from tests.gateway.test_webhooks import WebhookProcesses, active_and_bound, publish, register, wait_for

pytestmark = pytest.mark.e2e

SECRET = "throttled webhook secret, 32 ch"


@pytest.fixture(scope="module")
def webhook_processes(django_db_setup, tmp_path_factory) -> Iterator[WebhookProcesses]:
    """A Celery worker and a dispatcher on queues of their own for this module; tasks this
    process queues (verification) go to the same Celery queue."""
    tag = uuid.uuid4().hex[:8]
    celery_queue, dispatch_queue = f"eventgate-hooks-t-{tag}", f"eventgate-hooks-w-{tag}"
    logs = tmp_path_factory.mktemp("webhook-throttling")
    env = {
        "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        "WEBHOOK_MAX_ATTEMPTS": "3",
        "WEBHOOK_RETRY_BASE_DELAY": "0.4",
        "WEBHOOK_TIMEOUT": "5",
        "WEBHOOK_DISPATCH_POLL_INTERVAL": "0.2",
        "GATEWAY_FLUSH_INTERVAL": "0.5",
    }
    worker = celery_worker_start(logs / "worker.log", queue=celery_queue, **env)
    dispatcher = webhook_dispatcher_start(
        logs / "dispatcher.log", queue=dispatch_queue, celery_queue=celery_queue, **env
    )
    saved_queue = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = celery_queue
    try:
        yield WebhookProcesses(worker, dispatcher, celery_queue, dispatch_queue)
    finally:
        celery_app.conf.task_default_queue = saved_queue
        dispatcher.stop()
        worker.stop()
        amqp_queues_delete(celery_queue, dispatch_queue)


@pytest.fixture
def stack(webhook_processes, transactional_db, settings) -> WebhookProcesses:
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    return webhook_processes


def plan_set(subscription: Subscription, **fields: object) -> BusinessPlan:
    plan = subscription.plan
    for name, value in fields.items():
        setattr(plan, name, value)
    plan.save()
    return plan


def deliveries_final(webhook_id: int, count: int) -> list[WebhookDelivery] | None:
    """The webhook's deliveries once ``count`` of them exist and all are final."""
    rows = list(WebhookDelivery.objects.filter(webhook_id=webhook_id))
    if len(rows) == count and all(row.status in WebhookDelivery.FINAL for row in rows):
        return rows
    return None


def minute_start_soon() -> None:
    """Return early in a clock minute (waiting for the next one in the last 15 s), so a few
    seconds of deliveries fall into one per-minute usage row."""
    wait_for(lambda: datetime.now(UTC).second < 45, "a clock minute with 15 s left", timeout=20)


def usage_rows(subscription: Subscription) -> list[tuple[int, int, int, int]]:
    """(events, bytes, throttled_events, throttled_bytes) of the subscription's "out" rows."""
    return list(
        UsageRecord.objects.filter(subscription=subscription, direction="out")
        .order_by("bucket_start")
        .values_list("events", "bytes", "throttled_events", "throttled_bytes")
    )


# --- max webhook subscriptions --------------------------------------------------------------------


def test_plan_limits_webhooks_per_subscription_over_rest_and_the_portal(
    stack, client, bob, stream_api, bob_subscribed, callback_server: CallbackServer
):
    subscription = bob_subscribed.subscription
    plan_set(subscription, max_webhook_subscriptions=2)
    first = register(client, bob, subscription, callback_server.url("/hooks/one"), SECRET)
    second = register(client, bob, subscription, callback_server.url("/hooks/two"), SECRET)

    refused = client.post(
        "/api/v1/webhooks/",
        {
            "subscription": subscription.pk,
            "channel": "prices/ACME",
            "callback_url": callback_server.url("/hooks/three"),
            "secret": SECRET,
        },
        content_type="application/json",
    )
    message = (
        f"Plan 'Free' allows 2 webhooks per subscription, and the subscription to {stream_api.name} "
        "has 2 already: delete one to register another."
    )
    assert refused.status_code == 400
    assert refused.json() == {"subscription": [message]}

    # The portal's form says the same, on the API field.
    url = f"/apps/{bob_subscribed.application.pk}/webhooks/"
    page = client.post(
        url,
        {
            "target": f"{subscription.pk}:1.0.0",
            "channel": "prices/ACME",
            "callback_url": callback_server.url("/hooks/three"),
            "secret": SECRET,
        },
    )
    assert page.status_code == 200
    assert message.replace("'", "&#x27;") in page.content.decode()
    assert "2 of 2 webhooks (plan Free)" in page.content.decode()

    # The two registered are kept and verified; nothing else was stored.
    for created in (first, second):
        active_and_bound(stack, created["id"])
    listed = client.get(f"/api/v1/webhooks/?subscription={subscription.pk}").json()
    assert sorted(w["id"] for w in listed) == sorted([first["id"], second["id"]])
    assert WebhookSubscription.objects.filter(subscription=subscription).count() == 2

    # Deleting one makes room for one more; a failed or pending webhook counts as well.
    assert client.delete(f"/api/v1/webhooks/{first['id']}/").status_code == 204
    callback_server.verify["/hooks/three"] = 404
    third = register(client, bob, subscription, callback_server.url("/hooks/three"), SECRET)
    wait_for(
        lambda: WebhookSubscription.objects.filter(pk=third["id"], status="failed").exists(),
        "the third webhook to fail verification",
    )
    again = client.post(
        "/api/v1/webhooks/",
        {
            "subscription": subscription.pk,
            "channel": "prices/GLOBEX",
            "callback_url": callback_server.url("/hooks/four"),
            "secret": SECRET,
        },
        content_type="application/json",
    )
    assert (again.status_code, again.json()) == (400, {"subscription": [message]})


def test_concurrent_registration_waits_for_the_subscription_lock_and_counts_the_other(
    stack, bob, stream_api, bob_subscribed, callback_server: CallbackServer
):
    """Another transaction holds the subscription's row and adds the last webhook the plan
    allows: a registration meanwhile waits for it, then is refused."""
    subscription = bob_subscribed.subscription
    plan_set(subscription, max_webhook_subscriptions=1)
    outcome: dict[str, object] = {}

    def register_in_thread() -> None:
        try:
            outcome["webhook"] = webhook_register(
                subscription=Subscription.objects.select_related("api", "plan").get(pk=subscription.pk),
                address="prices/GLOBEX",
                callback_url=callback_server.url("/hooks/late"),
                secret=SECRET,
            )
        except ValidationError as error:
            outcome["error"] = error.message_dict
        finally:
            connection.close()

    thread = threading.Thread(target=register_in_thread)
    with transaction.atomic():
        Subscription.objects.select_for_update().get(pk=subscription.pk)
        thread.start()

        def waiting_for_lock() -> bool:
            with connection.cursor() as cursor:
                # Within a transaction, PostgreSQL keeps one snapshot of the activity statistics.
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE 'SELECT \"portal_subscription\".%'"
                )
                return cursor.fetchone()[0] == 1

        wait_for(waiting_for_lock, "the registration to wait for the subscription's row lock")
        webhook_register(
            subscription=subscription,
            address="prices/ACME",
            callback_url=callback_server.url("/hooks/first"),
            secret=SECRET,
        )
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert outcome == {
        "error": {
            "subscription": [
                f"Plan 'Free' allows 1 webhook per subscription, and the subscription to {stream_api.name} "
                "has 1 already: delete one to register another."
            ]
        }
    }
    assert list(
        WebhookSubscription.objects.filter(subscription=subscription).values_list("address", flat=True)
    ) == ["prices/ACME"]


# --- deliveries in the subscription's counters -------------------------------------------------------


def test_rate_limit_throttles_deliveries_counts_them_and_tells_the_next_post(
    stack, client, bob, stream_api, bob_subscribed, callback_server: CallbackServer
):
    subscription = bob_subscribed.subscription
    plan = plan_set(subscription, rate_limit_events=3, rate_limit_unit="minute")
    created = register(client, bob, subscription, callback_server.url("/hooks/bob"), SECRET)
    webhook = active_and_bound(stack, created["id"])

    minute_start_soon()
    publish(stream_api, *({"n": n} for n in range(5)))
    rows = wait_for(lambda: deliveries_final(webhook.pk, 5), "5 deliveries to finish")
    delivered = [row for row in rows if row.status == "delivered"]
    throttled = [row for row in rows if row.status == "throttled"]
    assert (len(delivered), len(throttled)) == (3, 2)
    posts = callback_server.received("/hooks/bob")
    assert len(posts) == 3
    assert all("eventgate-throttled" not in post.headers for post in posts)
    assert {(row.attempts, row.last_error, row.next_attempt_at) for row in throttled} == {
        (0, "rate limit of plan 'Free' reached (3 events per minute)", None)
    }

    # Throttled, never delivered: one usage row for the minute, billed events 3.
    sizes = sum(row.size for row in delivered), sum(row.size for row in throttled)
    expected = [(3, sizes[0], 2, sizes[1])]
    wait_for(
        lambda: usage_rows(subscription) == expected, f"usage {expected}, have {usage_rows(subscription)}"
    )
    webhook.refresh_from_db()
    assert (webhook.throttled_count, webhook.throttled_limit) == (2, "rate")
    detail = client.get(f"/api/v1/webhooks/{webhook.pk}/").json()
    assert (detail["throttled_count"], detail["throttled_limit"]) == (2, "rate")
    logged = client.get(f"/api/v1/webhooks/{webhook.pk}/deliveries/?status=throttled").json()
    assert sorted(d["id"] for d in logged) == sorted(str(row.pk) for row in throttled)
    page = client.get(f"/apps/{bob_subscribed.application.pk}/webhooks/{webhook.pk}/").content.decode()
    assert "2 events not sent (rate limit of plan Free) since the last successful delivery" in page

    # No retry of a throttled delivery: they stay as they are while the worker keeps working.
    time.sleep(1.0)  # longer than the first retry delay (0.4 s): a retry would have happened
    assert (
        WebhookDelivery.objects.filter(pk__in=[row.pk for row in throttled], status="throttled").count() == 2
    )
    assert len(callback_server.received("/hooks/bob")) == 3

    # The window (one minute from the first event) ends; the next event is sent, with the news.
    def window_reset() -> bool:
        usage = subscription_limits_usage(Policy.from_plan(plan), subscription.pk)
        return usage is not None and [(u.kind, u.used) for u in usage] == [("rate", 0)]

    wait_for(window_reset, "the rate window to end", timeout=75)
    (after,) = publish(stream_api, {"n": 5})
    post = wait_for(lambda: callback_server.received("/hooks/bob")[3:], "the POST after the window")[0]
    assert post.headers["x-eventgate-event-id"] == after
    assert (post.headers["eventgate-throttled"], post.headers["eventgate-throttled-limit"]) == ("2", "rate")
    wait_for(
        lambda: WebhookSubscription.objects.get(pk=webhook.pk).throttled_count == 0,
        "the reported count to be cleared",
    )
    publish(stream_api, {"n": 6})
    post = wait_for(lambda: callback_server.received("/hooks/bob")[4:], "the next POST")[0]
    assert "eventgate-throttled" not in post.headers


def test_overage_plan_delivers_past_its_quota(
    stack, client, bob, stream_api, bob_subscribed, callback_server: CallbackServer
):
    subscription = bob_subscribed.subscription
    plan_set(subscription, quota_events=2, quota_action="overage")
    created = register(client, bob, subscription, callback_server.url("/hooks/bob"), SECRET)
    webhook = active_and_bound(stack, created["id"])

    minute_start_soon()
    publish(stream_api, *({"n": n} for n in range(4)))
    rows = wait_for(lambda: deliveries_final(webhook.pk, 4), "4 deliveries to finish")
    assert [row.status for row in rows] == ["delivered"] * 4
    assert len(callback_server.received("/hooks/bob")) == 4
    size = sum(row.size for row in rows)
    wait_for(lambda: usage_rows(subscription) == [(4, size, 0, 0)], "4 events metered, none throttled")


def test_webhook_deliveries_share_the_bucket_of_websocket_events(
    stack, client, bob, stream_api, bob_subscribed, callback_server: CallbackServer
):
    subscription = bob_subscribed.subscription
    plan = plan_set(subscription, rate_limit_events=3, rate_limit_unit="minute")
    created = register(client, bob, subscription, callback_server.url("/hooks/bob"), SECRET)
    webhook = active_and_bound(stack, created["id"])
    # Two events taken from the subscription's rate window, as a WebSocket connection's lease would.
    (rate,) = policy_limits(Policy.from_plan(plan), subscription.pk)
    assert sync_limiter().hit(rate.item, *rate.identifiers, cost=2)

    publish(stream_api, *({"n": n} for n in range(3)))
    rows = wait_for(lambda: deliveries_final(webhook.pk, 3), "3 deliveries to finish")
    assert sorted(row.status for row in rows) == ["delivered", "throttled", "throttled"]
    assert len(callback_server.received("/hooks/bob")) == 1
    usage = subscription_limits_usage(Policy.from_plan(plan), subscription.pk)
    assert [(u.kind, u.limit, u.used, u.remaining) for u in usage] == [("rate", 3, 3, 0)]
