"""Webhooks end to end: a real Celery worker process, the real dispatcher process
(``manage.py webhook_dispatcher``), real RabbitMQ and a real HTTP callback server on 127.0.0.1.

Consumers register through the REST API in this process; events are published to RabbitMQ the
way providers do (``gateway.publishing``). The worker and dispatcher run for the whole module
(each test's API has a unique slug, so its routing keys are its own) with small retry delays.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import connect

from analytics.services import usage_for_subscription
from gateway.models import WebhookDelivery, WebhookSubscription
from gateway.publishing import EventPublisher, amqp_connect, exchange_declare, routing_key
from portal.celery import app as celery_app
from portal.models import API, APIKey, Subscription
from portal.services.lifecycle import api_transition
from portal.services.subscriptions import subscription_cancel
from tests.factories import ApplicationFactory, SubscriptionFactory, UserFactory
from tests.fixtures.servers import (
    CallbackServer,
    ServerProcess,
    amqp_queues_delete,
    celery_worker_start,
    rabbitmq_bindings,
    webhook_dispatcher_start,
)

pytestmark = pytest.mark.e2e

MAX_ATTEMPTS = 3
RETRY_BASE_DELAY = 0.4  # seconds: retries after 0.4 s and 0.8 s
T = TypeVar("T")


@dataclass
class WebhookProcesses:
    worker: ServerProcess
    dispatcher: ServerProcess
    celery_queue: str
    dispatch_queue: str


@pytest.fixture(scope="module")
def webhook_processes(django_db_setup, tmp_path_factory) -> Iterator[WebhookProcesses]:
    """A Celery worker and a dispatcher on queues of their own, for this module's tests; tasks
    this process queues (verification, redelivery) go to the same Celery queue."""
    tag = uuid.uuid4().hex[:8]
    celery_queue, dispatch_queue = f"eventgate-h-tasks-{tag}", f"eventgate-h-webhooks-{tag}"
    logs = tmp_path_factory.mktemp("webhook-processes")
    env = {
        "WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        "WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "WEBHOOK_RETRY_BASE_DELAY": str(RETRY_BASE_DELAY),
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
    # Callbacks are on 127.0.0.1: registration in this process must allow it, as the worker does.
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    return webhook_processes


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 20.0) -> T:
    """``predicate()``'s first truthy value within ``timeout`` seconds, else fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def register(client, user, subscription: Subscription, url: str, secret: str, channel: str = "prices/ACME"):
    """Register through the REST API as ``user``; ``client`` stays signed in as ``user``."""
    client.force_login(user)
    response = client.post(
        "/api/v1/webhooks/",
        {"subscription": subscription.pk, "channel": channel, "callback_url": url, "secret": secret},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    return response.json()


def active_and_bound(stack: WebhookProcesses, webhook_id: int) -> WebhookSubscription:
    """Wait until the webhook passed verification and the dispatcher bound its routing key."""
    webhook = wait_for(
        lambda: WebhookSubscription.objects.filter(pk=webhook_id, status="active").first(),
        f"webhook {webhook_id} to pass verification",
    )
    # Logged once the routing key is bound and the webhook is in the dispatcher's routes.
    line = f"Webhook dispatcher delivers to webhook {webhook.pk} ({webhook.routing_key})"
    wait_for(lambda: line in stack.dispatcher.log(), f"the dispatcher to route to webhook {webhook.pk}")
    return webhook


def publish(api: API, *payloads: Any, address: str = "prices/ACME") -> list[str]:
    async def run() -> list[str]:
        async with EventPublisher() as publisher:
            return [
                await publisher.publish(api=api.slug, version="1.0.0", address=address, payload=payload)
                for payload in payloads
            ]

    return asyncio.run(run())


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery(webhook_id: int, event_id: str, **filters: Any) -> WebhookDelivery | None:
    return WebhookDelivery.objects.filter(webhook_id=webhook_id, event_id=event_id, **filters).first()


def consumer_subscribed(api: API, email: str) -> Subscription:
    application = ApplicationFactory(owner=UserFactory(email=email), name=f"{email}'s app")
    return SubscriptionFactory(application=application, plan=api.plans.get(name="Free"))


# --- verification --------------------------------------------------------------------------------


def test_verified_webhook_receives_signed_events_and_they_are_metered(
    stack, client, bob, stream_api, bob_subscribed, callback_server: CallbackServer
):
    secret = "bob's webhook secret, 32 chars!"
    created = register(client, bob, bob_subscribed.subscription, callback_server.url("/hooks/bob"), secret)
    assert created["status"] == "pending"
    assert "secret" not in created

    webhook = active_and_bound(stack, created["id"])
    (verification,) = callback_server.received("/hooks/bob", method="GET")
    assert verification.query["hub.mode"] == "subscribe"
    assert verification.query["hub.topic"].endswith(f"/sse/{stream_api.slug}/1.0.0/prices/ACME")
    assert len(verification.query["hub.challenge"]) >= 32
    assert verification.query["hub.lease_seconds"] == str(webhook.lease_seconds)

    started = time.time()
    (event_id,) = publish(stream_api, {"symbol": "ACME", "price": 187.42})
    (post,) = wait_for(lambda: callback_server.received("/hooks/bob"), "the delivery POST")

    frame = json.loads(post.body)
    assert frame["id"] == event_id
    assert frame["channel"] == "prices/ACME"
    assert frame["payload"] == {"symbol": "ACME", "price": 187.42}
    assert started <= frame["published_at"] <= time.time()
    assert post.headers["content-type"] == "application/json"
    assert post.headers["x-hub-signature"] == signature(secret, post.body)
    assert post.headers["x-eventgate-event-id"] == event_id
    assert post.headers["x-eventgate-attempt"] == "1"
    assert 'rel="hub"' in post.headers["link"] and 'rel="self"' in post.headers["link"]
    assert f'/sse/{stream_api.slug}/1.0.0/prices/ACME>; rel="self"' in post.headers["link"]

    row = wait_for(lambda: delivery(webhook.pk, event_id, status="delivered"), "the delivery to be logged")
    assert str(row.pk) == post.headers["x-eventgate-delivery-id"]
    assert (row.attempts, row.last_status_code, row.body.encode()) == (1, 200, post.body)
    assert row.last_latency_ms is not None

    log = client.get(f"/api/v1/webhooks/{webhook.pk}/deliveries/").json()
    assert [(d["event_id"], d["status"], d["last_status_code"]) for d in log] == [
        (event_id, "delivered", 200)
    ]

    # Metered like a WebSocket delivery: 1 event and the body's bytes, on the channel template.
    subscription = bob_subscribed.subscription
    totals = wait_for(
        lambda: (t := usage_for_subscription(subscription=subscription)).events and t,
        "the delivery to be metered",
    )
    assert (totals.events, totals.bytes) == (1, len(post.body))
    assert subscription.usage_records.get().channel == "prices/{symbol}"


def test_verification_fails_with_the_reason_shown_then_passes_after_a_fix(
    stack, client, bob, bob_subscribed, callback_server: CallbackServer
):
    callback_server.verify["/hooks/wrong"] = "wrong"
    callback_server.verify["/hooks/missing"] = 404
    wrong = register(client, bob, bob_subscribed.subscription, callback_server.url("/hooks/wrong"), "s" * 20)
    missing = register(
        client, bob, bob_subscribed.subscription, callback_server.url("/hooks/missing"), "s" * 20
    )

    for created, expected in [
        (wrong, "but its body was 'OK' instead of the hub.challenge value"),
        (missing, "answered HTTP 404 Not Found to the verification request"),
    ]:
        failed = wait_for(
            lambda created=created: WebhookSubscription.objects.filter(
                pk=created["id"], status="failed"
            ).first(),
            "verification to fail",
        )
        assert expected in failed.status_reason
        detail = client.get(f"/api/v1/webhooks/{created['id']}/").json()
        assert (detail["status"], detail["status_reason"]) == ("failed", failed.status_reason)
        page = client.get(f"/apps/{bob_subscribed.application.pk}/webhooks/{created['id']}/")
        assert "Verification failed." in page.content.decode()
        assert expected.replace("'", "&#x27;") in page.content.decode()

    callback_server.verify["/hooks/wrong"] = "echo"
    response = client.post(f"/api/v1/webhooks/{wrong['id']}/verify")
    assert response.status_code == 202
    wait_for(
        lambda: WebhookSubscription.objects.filter(pk=wrong["id"], status="active").exists(),
        "verification to pass after the fix",
    )
    assert len(callback_server.received("/hooks/wrong", method="GET")) == 2


# --- delivery --------------------------------------------------------------------------------------


def test_each_subscriber_gets_the_event_signed_with_its_own_secret(
    stack, client, bob, stream_api, bob_subscribed, callback_server: CallbackServer
):
    carol_subscription = consumer_subscribed(stream_api, "carol-hooks@example.com")
    secrets = {"/hooks/bob": "bob-secret-" + "b" * 20, "/hooks/carol": "carol-secret-" + "c" * 20}
    bob_hook = register(
        client, bob, bob_subscribed.subscription, callback_server.url("/hooks/bob"), secrets["/hooks/bob"]
    )
    carol_hook = register(
        client,
        carol_subscription.application.owner,
        carol_subscription,
        callback_server.url("/hooks/carol"),
        secrets["/hooks/carol"],
    )
    active_and_bound(stack, bob_hook["id"])
    active_and_bound(stack, carol_hook["id"])

    (event_id,) = publish(stream_api, {"symbol": "ACME", "price": 1})
    (to_bob,) = wait_for(lambda: callback_server.received("/hooks/bob"), "bob's delivery")
    (to_carol,) = wait_for(lambda: callback_server.received("/hooks/carol"), "carol's delivery")

    assert to_bob.body == to_carol.body  # one event, one frame
    assert json.loads(to_bob.body)["id"] == event_id
    assert to_bob.headers["x-eventgate-delivery-id"] != to_carol.headers["x-eventgate-delivery-id"]
    for post, own, other in [
        (to_bob, secrets["/hooks/bob"], secrets["/hooks/carol"]),
        (to_carol, secrets["/hooks/carol"], secrets["/hooks/bob"]),
    ]:
        assert hmac.compare_digest(post.headers["x-hub-signature"], signature(own, post.body))
        assert not hmac.compare_digest(post.headers["x-hub-signature"], signature(other, post.body))


def test_failing_callback_is_retried_with_backoff_then_dead_lettered_and_can_be_redelivered(
    stack, client, bob, stream_api, bob_subscribed, callback_server: CallbackServer
):
    callback_server.statuses["/hooks/down"] = [500] * MAX_ATTEMPTS
    callback_server.statuses["/hooks/flaky"] = [500, 503]
    secret = "retry-secret-" + "r" * 20
    down = register(client, bob, bob_subscribed.subscription, callback_server.url("/hooks/down"), secret)
    flaky = register(client, bob, bob_subscribed.subscription, callback_server.url("/hooks/flaky"), secret)
    active_and_bound(stack, down["id"])
    active_and_bound(stack, flaky["id"])

    (event_id,) = publish(stream_api, {"symbol": "ACME", "price": 2})

    dead = wait_for(lambda: delivery(down["id"], event_id, status="dead"), "the dead letter")
    assert (dead.attempts, dead.max_attempts, dead.last_status_code) == (MAX_ATTEMPTS, MAX_ATTEMPTS, 500)
    posts = callback_server.received("/hooks/down")
    assert [p.headers["x-eventgate-attempt"] for p in posts] == ["1", "2", "3"]
    assert {p.headers["x-eventgate-delivery-id"] for p in posts} == {str(dead.pk)}
    assert len({p.body for p in posts}) == 1
    # Exponential backoff: the second wait is twice the first (lower bounds; no upper bound).
    assert posts[1].at - posts[0].at >= RETRY_BASE_DELAY
    assert posts[2].at - posts[1].at >= 2 * RETRY_BASE_DELAY

    recovered = wait_for(lambda: delivery(flaky["id"], event_id, status="delivered"), "the retried delivery")
    assert (recovered.attempts, recovered.last_status_code) == (3, 200)

    dead_letters = client.get(f"/api/v1/webhooks/{down['id']}/deliveries/?status=dead").json()
    assert [(d["id"], d["attempts"], d["last_status_code"]) for d in dead_letters] == [(str(dead.pk), 3, 500)]
    page = client.get(
        f"/apps/{bob_subscribed.application.pk}/webhooks/{down['id']}/?status=dead"
    ).content.decode()
    assert event_id in page and "Dead letter" in page and "HTTP 500" in page

    # The receiver is back: redeliver the dead letter from its stored body.
    response = client.post(f"/api/v1/webhooks/{down['id']}/deliveries/{dead.pk}/redeliver")
    assert response.status_code == 202, response.content
    again = response.json()
    assert again["id"] != str(dead.pk) and again["event_id"] == event_id and again["max_attempts"] == 1
    redelivered = wait_for(lambda: delivery(down["id"], event_id, status="delivered"), "the redelivery")
    assert str(redelivered.redelivery_of_id) == str(dead.pk)
    last = callback_server.received("/hooks/down")[-1]
    assert last.headers["x-eventgate-delivery-id"] == again["id"]
    assert last.body == posts[0].body
    assert last.headers["x-hub-signature"] == signature(secret, last.body)
    dead.refresh_from_db()
    assert dead.status == "dead"  # the dead letter itself stays in the log


def test_deliveries_stop_once_the_subscription_is_cancelled(
    stack, client, bob, stream_api, bob_subscribed, callback_server: CallbackServer
):
    carol_subscription = consumer_subscribed(stream_api, "carol-stop@example.com")
    bob_hook = register(client, bob, bob_subscribed.subscription, callback_server.url("/hooks/bob"), "b" * 20)
    carol_hook = register(
        client,
        carol_subscription.application.owner,
        carol_subscription,
        callback_server.url("/hooks/carol"),
        "c" * 20,
    )
    client.force_login(bob)
    active_and_bound(stack, bob_hook["id"])
    active_and_bound(stack, carol_hook["id"])
    (first,) = publish(stream_api, {"n": 1})
    wait_for(lambda: delivery(bob_hook["id"], first, status="delivered"), "the first delivery")

    # Bob's receiver fails now, so his next delivery waits for a retry when the cancellation lands.
    callback_server.statuses["/hooks/bob"] = [500] * 10
    (second,) = publish(stream_api, {"n": 2})
    wait_for(lambda: delivery(bob_hook["id"], second, status="retrying"), "a retry to be scheduled")
    subscription_cancel(subscription=bob_subscribed.subscription, actor=bob)

    cancelled = wait_for(
        lambda: delivery(bob_hook["id"], second, status="cancelled"), "the retry to be dropped"
    )
    assert cancelled.last_error == "the subscription is cancelled"
    assert cancelled.attempts == 1

    # Carol still receives the channel, so its events keep reaching the dispatcher; none for bob.
    (third,) = publish(stream_api, {"n": 3})
    wait_for(lambda: delivery(carol_hook["id"], third, status="delivered"), "carol's delivery")
    wait_for(
        lambda: (
            not WebhookDelivery.objects.filter(webhook_id=bob_hook["id"])
            .exclude(status__in=WebhookDelivery.FINAL)
            .exists()
        ),
        "bob's deliveries to finish",
    )
    bob_events = [json.loads(p.body)["id"] for p in callback_server.received("/hooks/bob")]
    assert bob_events == [first, second]  # the second's failed first attempt, nothing after
    assert not WebhookDelivery.objects.filter(
        webhook_id=bob_hook["id"], event_id=third, status="delivered"
    ).exists()
    page = client.get(f"/apps/{bob_subscribed.application.pk}/webhooks/{bob_hook['id']}/").content.decode()
    assert "is cancelled: no events are delivered" in page


def test_blocking_the_api_stops_deliveries_and_removes_the_binding(
    stack, client, bob, admin_user, stream_api, bob_subscribed, callback_server: CallbackServer
):
    hook = register(client, bob, bob_subscribed.subscription, callback_server.url("/hooks/bob"), "b" * 20)
    webhook = active_and_bound(stack, hook["id"])
    assert webhook.routing_key in rabbitmq_bindings(queue=stack.dispatch_queue)

    api_transition(api=stream_api, to_status=API.Status.BLOCKED, actor=admin_user, reason="abuse")
    wait_for(
        lambda: f"Webhook dispatcher unbound {webhook.routing_key}" in stack.dispatcher.log(),
        "the dispatcher to unbind the blocked API's channel",
    )
    assert webhook.routing_key not in rabbitmq_bindings(queue=stack.dispatch_queue)
    # No binding, so RabbitMQ drops the event before any dispatcher sees it.
    publish(stream_api, {"n": 1})
    assert callback_server.received("/hooks/bob") == []
    assert not WebhookDelivery.objects.filter(webhook_id=hook["id"]).exists()
    page = client.get(f"/apps/{bob_subscribed.application.pk}/webhooks/{hook['id']}/").content.decode()
    assert "is blocked: no events are delivered" in page


def test_deleted_webhook_gets_nothing_more_and_loses_its_secret(
    stack, client, bob, stream_api, bob_subscribed, callback_server: CallbackServer
):
    hook = register(client, bob, bob_subscribed.subscription, callback_server.url("/hooks/bob"), "b" * 20)
    webhook = active_and_bound(stack, hook["id"])
    assert client.delete(f"/api/v1/webhooks/{hook['id']}/").status_code == 204
    webhook.refresh_from_db()
    assert (webhook.status, webhook.secret) == ("deleted", "")
    wait_for(
        lambda: f"Webhook dispatcher unbound {webhook.routing_key}" in stack.dispatcher.log(),
        "the dispatcher to unbind the deleted webhook's channel",
    )
    assert client.get("/api/v1/webhooks/").json() == []
    assert client.get(f"/api/v1/webhooks/{hook['id']}/").json()["status"] == "deleted"


def test_webhook_body_is_the_frame_websocket_clients_get(
    stack, gateway_server, client, bob, stream_api, bob_subscribed, callback_server: CallbackServer
):
    hook = register(client, bob, bob_subscribed.subscription, callback_server.url("/hooks/bob"), "b" * 20)
    active_and_bound(stack, hook["id"])
    url = (
        f"{gateway_server.ws_url}/ws/{stream_api.slug}/1.0.0/prices/ACME?access_token={bob_subscribed.secret}"
    )

    async def receive_one() -> str:
        async with connect(url) as client_socket, EventPublisher() as publisher:
            await publisher.publish(
                api=stream_api.slug, version="1.0.0", address="prices/ACME", payload={"π": [1, 2.5, None]}
            )
            return await asyncio.wait_for(client_socket.recv(), timeout=10)

    frame = asyncio.run(receive_one())
    (post,) = wait_for(lambda: callback_server.received("/hooks/bob"), "the webhook delivery")
    assert post.body == frame.encode()
    assert APIKey.objects.filter(pk=bob_subscribed.key.pk, revoked_at__isnull=True).exists()


def test_binding_left_from_an_earlier_run_is_removed_by_its_first_event(stack, stream_api):
    """The durable queue outlives dispatcher processes, and with it bindings nobody needs."""
    stale = routing_key(api=stream_api.slug, version="1.0.0", address="prices/STALE")

    async def bind_stale() -> None:
        connection = await amqp_connect(name="eventgate-test-stale-binding")
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(stack.dispatch_queue, durable=True)
            await queue.bind(await exchange_declare(channel), stale)

    asyncio.run(bind_stale())
    assert stale in rabbitmq_bindings(queue=stack.dispatch_queue)
    publish(stream_api, {"n": 1}, address="prices/STALE")
    wait_for(
        lambda: f"Webhook dispatcher unbound {stale}" in stack.dispatcher.log(), "the stale binding to go"
    )
    assert stale not in rabbitmq_bindings(queue=stack.dispatch_queue)
    assert not WebhookDelivery.objects.exists()
