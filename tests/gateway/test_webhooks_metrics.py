"""Webhook delivery metrics in analytics: attempts, answers by status class, retries, dead
letters (also as failed events) and the publish → delivered latency, per webhook, counted once
per attempt. A real Celery worker, the real dispatcher process, RabbitMQ, Redis and HTTP
callback servers on 127.0.0.1, as in ``test_webhooks.py``."""

from __future__ import annotations

import json
import uuid
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from analytics.models import LATENCY_BOUNDS_SECONDS, LATENCY_BOUNDS_US, LatencyRecord, WebhookRecord
from analytics.queries import latency_histogram, usage_totals
from analytics.webhooks import webhook_series, webhook_summary
from gateway.models import WebhookDelivery
from gateway.webhooks.services import webhook_deliver, webhook_usage_flush
from portal.celery import app as celery_app
from tests.fixtures.servers import (
    CallbackServer,
    amqp_queues_delete,
    celery_worker_start,
    webhook_dispatcher_start,
)
from tests.gateway.test_webhooks import (
    WebhookProcesses,
    active_and_bound,
    consumer_subscribed,
    publish,
    register,
    wait_for,
)

pytestmark = pytest.mark.e2e

MAX_ATTEMPTS = 3
SECRET = "webhook metrics secret, 32 chars"
EVENTS = 4


@pytest.fixture(scope="module")
def webhook_processes(django_db_setup, tmp_path_factory) -> Iterator[WebhookProcesses]:
    """A Celery worker and a dispatcher on queues of their own for this module; tasks this
    process queues (verification) go to the same Celery queue."""
    tag = uuid.uuid4().hex[:8]
    celery_queue, dispatch_queue = f"eventgate-hooks-mt-{tag}", f"eventgate-hooks-mw-{tag}"
    logs = tmp_path_factory.mktemp("webhook-metrics")
    env = {
        "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        "WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "WEBHOOK_RETRY_BASE_DELAY": "0.2",
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


def snapshot(subscription_id: int) -> dict:
    """Everything analytics holds about the subscription's webhooks, to compare before/after."""
    return {
        "webhooks": sorted(
            WebhookRecord.objects.filter(subscription_id=subscription_id).values_list(
                "webhook_id", "bucket_start", "channel", *WebhookRecord.COUNT_FIELDS
            )
        ),
        "latency": sorted(
            LatencyRecord.objects.filter(subscription_id=subscription_id).values_list(
                "bucket_start", "channel", "direction", "le_us", "count"
            )
        ),
        "usage": usage_totals(subscriptions=[subscription_id]).as_dict(),
    }


def expected_histogram(deliveries: list[WebhookDelivery]) -> dict[int, int]:
    """The latency histogram the delivered ``deliveries`` must have made: publish timestamp
    (the frame's ``published_at``) to ``delivered_at``, in ``LATENCY_BOUNDS_US`` buckets."""
    buckets: Counter[int] = Counter()
    for delivery in deliveries:
        delay = delivery.delivered_at.timestamp() - json.loads(delivery.body)["published_at"]
        buckets[LATENCY_BOUNDS_US[bisect_left(LATENCY_BOUNDS_SECONDS, delay)]] += 1
    return dict(buckets)


def test_attempts_answers_retries_dead_letters_and_latency_are_counted_per_webhook(
    stack, client, bob, stream_api, bob_subscribed, callback_server: CallbackServer
):
    subscription = bob_subscribed.subscription
    # ok answers 200; flaky fails its first two POSTs (503, 500: at most two failures per event,
    # so every event is delivered by its third attempt); down answers 500 until each event is a
    # dead letter; gone stops listening after verification (connection refused: errors).
    callback_server.statuses["/hooks/flaky"] = [503, 500]
    callback_server.statuses["/hooks/down"] = [500] * (EVENTS * MAX_ATTEMPTS)
    gone_server = CallbackServer()
    hooks = {}
    try:
        for name, url in [
            ("ok", callback_server.url("/hooks/ok")),
            ("flaky", callback_server.url("/hooks/flaky")),
            ("down", callback_server.url("/hooks/down")),
            ("gone", gone_server.url("/hooks/gone")),
        ]:
            hooks[name] = register(client, bob, subscription, url, SECRET)["id"]
        for webhook_id in hooks.values():
            active_and_bound(stack, webhook_id)
    finally:
        gone_server.close()

    publish(stream_api, *({"symbol": "ACME", "price": n} for n in range(EVENTS)))

    def finished() -> bool:
        deliveries = WebhookDelivery.objects.filter(webhook_id__in=hooks.values())
        done = deliveries.filter(status__in=["delivered", "dead"]).count() == EVENTS * len(hooks)
        return done and not deliveries.filter(status="delivered", metered=False).exists()

    wait_for(finished, "every delivery to be delivered (and metered) or dead", timeout=40)

    summary = webhook_summary(subscriptions=[subscription.pk])
    by_webhook = {row["webhook_id"]: row for row in summary["webhooks"]}
    assert set(by_webhook) == set(hooks.values())
    fields = ("attempts", "delivered", "retries", "dead", "status_2xx", "status_4xx", "status_5xx", "errors")
    counts = {name: tuple(by_webhook[hooks[name]][field] for field in fields) for name in hooks}
    assert counts == {
        "ok": (EVENTS, EVENTS, 0, 0, EVENTS, 0, 0, 0),
        "flaky": (EVENTS + 2, EVENTS, 2, 0, EVENTS, 0, 2, 0),
        "down": (3 * EVENTS, 0, 2 * EVENTS, EVENTS, 0, 0, 3 * EVENTS, 0),
        "gone": (3 * EVENTS, 0, 2 * EVENTS, EVENTS, 0, 0, 0, 3 * EVENTS),
    }
    assert {row["channel"] for row in summary["webhooks"]} == {"prices/{symbol}"}
    totals = summary["totals"]
    assert (totals["attempts"], totals["delivered"], totals["dead"]) == (
        8 * EVENTS + 2,
        2 * EVENTS,
        2 * EVENTS,
    )
    assert totals["responses"] == 5 * EVENTS + 2  # all but gone's connection errors
    assert totals["success_rate"] == pytest.approx(2 * EVENTS / (8 * EVENTS + 2))

    # One attempt per delivery for ok: its round trips are exactly the deliveries' latencies.
    ok_deliveries = list(WebhookDelivery.objects.filter(webhook_id=hooks["ok"]))
    ok = by_webhook[hooks["ok"]]
    assert ok["attempt_ms_total"] == sum(d.last_latency_ms for d in ok_deliveries)
    assert ok["attempt_ms_mean"] == pytest.approx(ok["attempt_ms_total"] / EVENTS)
    assert by_webhook[hooks["gone"]]["attempt_ms_total"] == 0  # no answer, no round trip

    # Dead letters are failed events; delivered events are the usage billed, as before.
    delivered = list(WebhookDelivery.objects.filter(webhook_id__in=hooks.values(), status="delivered"))
    usage = usage_totals(subscriptions=[subscription.pk], direction="out")
    assert (usage.events, usage.bytes, usage.failed_events) == (
        2 * EVENTS,
        sum(d.size for d in delivered),
        2 * EVENTS,
    )

    # Each delivered event is in the publish → delivered latency histogram, in its bucket.
    histogram = latency_histogram(subscriptions=[subscription.pk], channel="prices/{symbol}")[None]
    assert sum(histogram.values()) == 2 * EVENTS
    assert histogram == expected_histogram(delivered)
    assert set(LatencyRecord.objects.filter(subscription=subscription).values_list("direction")) == {("out",)}

    # The series over the same minutes adds up to the summary.
    now = timezone.now()
    series = webhook_series(
        subscriptions=[subscription.pk],
        start=now - timedelta(minutes=5),
        end=now + timedelta(minutes=1),
        step="minute",
    )
    assert len(series) == 7
    assert sum(point["attempts"] for point in series) == totals["attempts"]
    assert sum(point["dead"] for point in series) == totals["dead"]
    hourly = webhook_series(
        subscriptions=[subscription.pk],
        start=now - timedelta(hours=1),
        end=now + timedelta(minutes=1),
        step="hour",
    )
    assert sum(point["delivered"] for point in hourly) == totals["delivered"]

    # Only the subscriptions asked for: another consumer's subscription has none of these.
    other = consumer_subscribed(stream_api, "carol-metrics@example.com")
    empty = webhook_summary(subscriptions=[other.pk])
    assert empty["webhooks"] == [] and empty["totals"]["attempts"] == 0
    assert empty["totals"]["attempt_ms_mean"] is None and empty["totals"]["success_rate"] is None


def test_a_repeated_delivery_step_counts_once(
    stack, client, bob, stream_api, bob_subscribed, callback_server: CallbackServer
):
    subscription = bob_subscribed.subscription
    callback_server.statuses["/hooks/down"] = [500] * MAX_ATTEMPTS
    ok = register(client, bob, subscription, callback_server.url("/hooks/ok"), SECRET)["id"]
    down = register(client, bob, subscription, callback_server.url("/hooks/down"), SECRET)["id"]
    active_and_bound(stack, ok)
    active_and_bound(stack, down)
    (event_id,) = publish(stream_api, {"symbol": "ACME", "price": 1})
    wait_for(
        lambda: (
            WebhookDelivery.objects.filter(event_id=event_id, status="delivered", metered=True).count() == 1
            and WebhookDelivery.objects.filter(event_id=event_id, status="dead").count() == 1
        ),
        "the delivery and the dead letter",
    )
    before = snapshot(subscription.pk)
    assert before["usage"]["events"] == 1 and before["usage"]["failed_events"] == 1
    posts = len(callback_server.requests)

    # Celery runs a task again (a redelivered message, a duplicate from the sweep): nothing to
    # claim, nothing sent, nothing counted; the dispatcher's flush finds nothing to meter.
    for delivery in WebhookDelivery.objects.filter(event_id=event_id):
        assert webhook_deliver(delivery_id=str(delivery.pk)) is None
    assert webhook_usage_flush() == 0
    assert len(callback_server.requests) == posts
    assert snapshot(subscription.pk) == before

    # A worker whose claim was taken over while its POST was in flight (another worker
    # re-claimed the delivery) stores nothing and counts nothing: the other worker does.
    late = WebhookDelivery.objects.create(
        webhook_id=ok,
        event_id="late-event",
        body=WebhookDelivery.objects.get(event_id=event_id, webhook_id=ok).body,
        size=10,
        max_attempts=MAX_ATTEMPTS,
    )
    handler = callback_server.httpd.RequestHandlerClass

    class TakenOverMidAttempt(handler):  # type: ignore[misc, valid-type]
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            try:
                WebhookDelivery.objects.filter(pk=late.pk).update(claimed_at=timezone.now())
            finally:
                connection.close()
            super().do_POST()

    callback_server.httpd.RequestHandlerClass = TakenOverMidAttempt
    try:
        assert webhook_deliver(delivery_id=str(late.pk)) is None
    finally:
        callback_server.httpd.RequestHandlerClass = handler
    assert len(callback_server.requests) == posts + 1  # it was sent...
    late.refresh_from_db()
    assert (late.status, late.attempts) == ("sending", 0)  # ...but not recorded by this worker
    assert snapshot(subscription.pk) == before
