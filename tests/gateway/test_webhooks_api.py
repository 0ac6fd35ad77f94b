"""Webhooks through the REST API and the portal pages, and the services behind them, in this
process: registration checks (channel, callback URL policy, secret), access to one's own only,
the delivery log, metering, and the address check repeated at delivery time against a real
callback server on 127.0.0.1. End-to-end delivery with the worker and dispatcher processes is in
``test_webhooks.py``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from analytics.services import usage_for_subscription, usage_record_batch
from gateway.models import WebhookDelivery, WebhookSubscription
from gateway.webhooks.addresses import address_is_public
from gateway.webhooks.services import (
    EventForWebhooks,
    delivery_redeliver,
    webhook_deliver,
    webhook_deliveries_create,
    webhook_deliveries_prune,
    webhook_deliveries_sweep,
    webhook_leases_renew,
    webhook_usage_flush,
    webhook_verify,
)
from portal.celery import app as celery_app
from portal.models import Subscription
from tests.factories import (
    ApplicationFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
    SubscriptionFactory,
)
from tests.fixtures.servers import CallbackServer

SECRET = "a webhook secret of 32 chars!!!"


def basic(user) -> dict[str, str]:
    token = base64.b64encode(f"{user.email}:correct horse battery".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {token}"}


def post_json(client, url: str, body: dict, user):
    return client.post(url, json.dumps(body), content_type="application/json", **basic(user))


@pytest.fixture
def subscription(bob, ticker_api) -> Subscription:
    """Bob's active Free subscription to ``ticker`` (``prices/{symbol}``: ACME, GLOBEX) with a
    send-only channel ``orders`` added."""
    version = ticker_api.versions.get()
    OperationFactory(
        channel=ChannelFactory(api_version=version, key="orders", address="orders", parameters={}),
        key="placeOrder",
        action="send",
    )
    application = ApplicationFactory(owner=bob, name="Bob's trading bot")
    return SubscriptionFactory(application=application, plan=ticker_api.plans.get(name="Free"))


def registration(subscription: Subscription, **changes: str) -> dict:
    return {
        "subscription": subscription.pk,
        "channel": "prices/ACME",
        "callback_url": "http://93.184.216.34/hooks/eventgate",  # a public literal: no DNS needed
        "secret": SECRET,
        **changes,
    }


def webhook_for(subscription: Subscription, url: str, **fields) -> WebhookSubscription:
    version = subscription.api.versions.get()
    defaults = {
        "subscription": subscription,
        "api_version": version,
        "channel": version.channels.get(key="prices"),
        "address": "prices/ACME",
        "routing_key": "ticker.1%2E0%2E0.prices.ACME",
        "callback_url": url,
        "secret": SECRET,
        "status": WebhookSubscription.Status.ACTIVE,
        "lease_seconds": 864000,
    }
    return WebhookSubscription.objects.create(**{**defaults, **fields})


def delivery_for(webhook: WebhookSubscription, **fields) -> WebhookDelivery:
    body = '{"id":"e1","channel":"prices/ACME","published_at":1764400000.5,"payload":{"price":1}}'
    defaults = {"event_id": "e1", "body": body, "size": len(body), "max_attempts": 3}
    return WebhookDelivery.objects.create(webhook=webhook, **{**defaults, **fields})


@pytest.fixture
def celery_eager() -> Iterator[None]:
    """Run Celery tasks inline, so nothing reaches a broker queue another worker might consume."""
    conf = celery_app.conf
    saved = conf.task_always_eager, conf.task_eager_propagates
    conf.task_always_eager, conf.task_eager_propagates = True, True
    yield
    conf.task_always_eager, conf.task_eager_propagates = saved


# --- registration ---------------------------------------------------------------------------------


def test_registered_webhook_is_pending_verification_and_never_shows_its_secret(
    client, bob, subscription, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = post_json(client, "/api/v1/webhooks/", registration(subscription), bob)
    assert response.status_code == 201, response.content
    created = response.json()
    assert len(callbacks) == 1  # the verification task, queued once the row is committed
    assert response["Location"] == f"http://testserver/api/v1/webhooks/{created['id']}/"
    assert created["status"] == "pending"
    assert (created["api"], created["version"], created["channel"], created["channel_template"]) == (
        "ticker",
        "1.0.0",
        "prices/ACME",
        "prices/{symbol}",
    )
    assert created["topic"] == "http://127.0.0.1:8000/sse/ticker/1.0.0/prices/ACME"
    assert created["deliveries"] == f"http://testserver/api/v1/webhooks/{created['id']}/deliveries/"

    listed = client.get("/api/v1/webhooks/", **basic(bob))
    detail = client.get(f"/api/v1/webhooks/{created['id']}/", **basic(bob))
    for body in (response.content, listed.content, detail.content):
        assert SECRET.encode() not in body and b"secret" not in body
    assert [w["id"] for w in listed.json()] == [created["id"]]
    assert WebhookSubscription.objects.get().secret == SECRET  # kept to sign deliveries


@pytest.mark.parametrize(
    "url, address",
    [
        ("http://127.0.0.1:8080/hook", "127.0.0.1"),
        ("http://localhost/hook", "127.0.0.1|::1"),
        ("http://10.1.2.3/hook", "10.1.2.3"),
        ("http://192.168.0.10/hook", "192.168.0.10"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://100.64.0.1/hook", "100.64.0.1"),
        ("http://0.0.0.0/hook", "0.0.0.0"),
        ("http://224.0.0.1/hook", "224.0.0.1"),
        ("http://240.0.0.1/hook", "240.0.0.1"),
        ("http://2130706433/hook", "127.0.0.1"),  # 127.0.0.1 written as one number
        ("http://[::1]/hook", "::1"),
        ("http://[fe80::1]/hook", "fe80::1"),
        ("http://[fd00::1]/hook", "fd00::1"),
        ("http://[::ffff:127.0.0.1]/hook", "::ffff:127.0.0.1"),
        ("http://[2002:7f00:1::1]/hook", "2002:7f00:1::1"),  # 6to4 around 127.0.0.1
        ("https://[::]/hook", "::"),
    ],
)
def test_private_callback_addresses_are_refused_unless_allowed(
    client, bob, subscription, settings, url, address
):
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False
    response = post_json(client, "/api/v1/webhooks/", registration(subscription, callback_url=url), bob)
    assert response.status_code == 400
    (error,) = response.json()["callback_url"]
    assert any(f"resolves to {one}, a private, loopback, link-local" in error for one in address.split("|"))
    assert "WEBHOOK_ALLOW_PRIVATE_ADDRESSES" in error
    assert not WebhookSubscription.objects.exists()

    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    response = post_json(client, "/api/v1/webhooks/", registration(subscription, callback_url=url), bob)
    assert response.status_code == 201, response.content


@pytest.mark.parametrize(
    "address, public",
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("2002:5db8:d822::1", True),  # 6to4 around a public address
        ("64:ff9b::a00:1", False),  # NAT64 (of 10.0.0.1): in the reserved ::/8
        ("::ffff:93.184.216.34", True),
        ("::ffff:10.0.0.1", False),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo: a non-global prefix itself
        ("fe80::1%eth0", False),
        ("198.18.0.1", False),  # benchmarking
        ("192.0.2.1", False),  # documentation
    ],
)
def test_address_policy(address, public):
    assert address_is_public(address) is public


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://93.184.216.34/hook", "must start with https:// or http://"),
        ("93.184.216.34/hook", "must start with https:// or http://"),
        ("http:///hook", "has no host name"),
        ("https://user:pass@93.184.216.34/hook", "carries a user name or password"),
        ("https://93.184.216.34/hook#part", "#fragment"),
        ("https://93.184.216.34/hook path", "spaces or control characters"),
        ("https://93.184.216.34/caf\u00e9", "non-ASCII characters"),
        ("https://93.184.216.34:99999/hook", "is not valid"),
        ("https://no-such-host.invalid/hook", "could not be resolved"),
    ],
)
def test_malformed_callback_urls_are_refused_with_the_reason(client, bob, subscription, url, message):
    response = post_json(client, "/api/v1/webhooks/", registration(subscription, callback_url=url), bob)
    assert response.status_code == 400
    assert message in response.json()["callback_url"][0]


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"channel": "prices/NOPE"}, "channel", "'prices/NOPE' is not a channel you can receive events from"),
        ({"channel": "news/today"}, "channel", "receivable channels: prices/{symbol}"),
        ({"channel": "orders"}, "channel", "'orders' is not a channel you can receive events from"),
        ({"channel": "prices/{symbol}"}, "channel", "Fill in the channel's parameters"),
        ({"channel": "/"}, "channel", "Give a concrete channel address"),
        ({"channel": "prices/" + "A" * 300}, "channel", "too long"),
        ({"version": "9.9.9"}, "version", "has no published version '9.9.9' (published: 1.0.0)"),
        ({"secret": "short"}, "secret", "at least 16 characters"),
        ({"secret": "x" * 200}, "secret", "less than 200 bytes"),
        ({"secret": "é" * 100}, "secret", "less than 200 bytes"),
        ({"secret": "tab\there-is-a-secret"}, "secret", "control characters"),
        ({"secret": ""}, "secret", "This field may not be blank."),
    ],
)
def test_registration_is_checked_field_by_field(client, bob, subscription, changes, field, message):
    response = post_json(client, "/api/v1/webhooks/", registration(subscription, **changes), bob)
    assert response.status_code == 400
    assert message in " ".join(response.json()[field])
    assert not WebhookSubscription.objects.exists()


def test_secret_of_199_bytes_is_accepted_and_kept_as_given(client, bob, subscription):
    secret = "  spaces count " + "s" * 184
    response = post_json(client, "/api/v1/webhooks/", registration(subscription, secret=secret), bob)
    assert response.status_code == 201, response.content
    assert WebhookSubscription.objects.get().secret == secret


def test_webhooks_need_an_active_subscription(client, bob, subscription):
    for status in ("pending", "suspended", "cancelled"):
        Subscription.objects.filter(pk=subscription.pk).update(status=status)
        response = post_json(client, "/api/v1/webhooks/", registration(subscription), bob)
        assert response.status_code == 400
        assert "webhooks need an active subscription" in response.json()["subscription"][0]


def test_the_same_callback_cannot_be_registered_twice(client, bob, subscription):
    assert post_json(client, "/api/v1/webhooks/", registration(subscription), bob).status_code == 201
    response = post_json(client, "/api/v1/webhooks/", registration(subscription), bob)
    assert response.status_code == 400
    assert "already registered for prices/ACME" in response.json()["callback_url"][0]
    other = registration(subscription, channel="prices/GLOBEX")
    assert post_json(client, "/api/v1/webhooks/", other, bob).status_code == 201


def test_other_users_webhooks_are_invisible(client, bob, carol, subscription):
    webhook = webhook_for(subscription, "http://93.184.216.34/hook")
    delivery = delivery_for(webhook, status="dead")
    urls = [
        f"/api/v1/webhooks/{webhook.pk}/",
        f"/api/v1/webhooks/{webhook.pk}/deliveries/",
        f"/api/v1/webhooks/{webhook.pk}/deliveries/{delivery.pk}/",
    ]
    for url in urls:
        assert client.get(url, **basic(carol)).status_code == 404
    assert client.delete(urls[0], **basic(carol)).status_code == 404
    assert client.post(f"/api/v1/webhooks/{webhook.pk}/verify", **basic(carol)).status_code == 404
    assert client.post(urls[2] + "redeliver", **basic(carol)).status_code == 404
    assert client.get("/api/v1/webhooks/", **basic(carol)).json() == []
    response = post_json(client, "/api/v1/webhooks/", registration(subscription), carol)
    assert response.status_code == 400
    assert response.json() == {"subscription": ["No such subscription of your applications."]}
    client.force_login(carol)
    assert client.get(f"/apps/{subscription.application_id}/webhooks/{webhook.pk}/").status_code == 404
    assert client.get(f"/apps/{subscription.application_id}/webhooks/").status_code == 404
    webhook.refresh_from_db()
    assert webhook.status == "active"


# --- delivery log ------------------------------------------------------------------------------------


def test_delivery_log_pages_filters_and_shows_the_body(client, bob, subscription):
    webhook = webhook_for(subscription, "http://93.184.216.34/hook")
    now = timezone.now()
    for n in range(25):
        status = "dead" if n % 5 == 0 else "delivered"
        delivery_for(webhook, event_id=f"e{n}", status=status, created=now - timedelta(seconds=100 - n))
    response = client.get(f"/api/v1/webhooks/{webhook.pk}/deliveries/?page_size=10", **basic(bob))
    assert response.status_code == 200
    assert [d["event_id"] for d in response.json()] == [f"e{n}" for n in range(24, 14, -1)]
    assert response["X-Total-Count"] == "25"
    assert 'rel="next"' in response["Link"]
    assert "body" not in response.json()[0]
    dead = client.get(f"/api/v1/webhooks/{webhook.pk}/deliveries/?status=dead", **basic(bob)).json()
    assert [d["event_id"] for d in dead] == ["e20", "e15", "e10", "e5", "e0"]
    one = client.get(f"/api/v1/webhooks/{webhook.pk}/deliveries/{dead[0]['id']}/", **basic(bob)).json()
    assert json.loads(one["body"])["channel"] == "prices/ACME"
    wrong = client.get(f"/api/v1/webhooks/{webhook.pk}/deliveries/?status=lost", **basic(bob))
    assert wrong.status_code == 400 and "status" in wrong.json()


def test_redelivery_waits_until_a_delivery_has_finished(client, bob, subscription):
    webhook = webhook_for(subscription, "http://93.184.216.34/hook")
    retrying = delivery_for(webhook, status="retrying", attempts=1)
    response = client.post(f"/api/v1/webhooks/{webhook.pk}/deliveries/{retrying.pk}/redeliver", **basic(bob))
    assert response.status_code == 400
    assert "retry scheduled: redeliver it once it has finished" in response.json()["non_field_errors"][0]


def test_usage_is_metered_once_per_delivered_event(subscription):
    webhook = webhook_for(subscription, "http://93.184.216.34/hook")
    minute = timezone.now().replace(second=0, microsecond=0)
    delivered = [
        delivery_for(
            webhook, event_id=f"e{n}", status="delivered", delivered_at=minute + timedelta(seconds=n)
        )
        for n in range(3)
    ]
    delivery_for(webhook, event_id="dead", status="dead")
    delivery_for(webhook, event_id="retrying", status="retrying")

    assert webhook_usage_flush() == 3
    assert webhook_usage_flush() == 0  # marked metered: never counted twice
    totals = usage_for_subscription(subscription=subscription)
    assert (totals.events, totals.bytes) == (3, sum(d.size for d in delivered))
    record = subscription.usage_records.get()
    assert (record.channel, record.direction, record.bucket_start) == ("prices/{symbol}", "out", minute)


# --- delivery-time checks against a real callback server -------------------------------------------


def test_delivery_checks_the_callback_address_again(subscription, settings, callback_server: CallbackServer):
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    webhook = webhook_for(subscription, callback_server.url("/hook"))
    delivery = delivery_for(webhook)
    # The admin withdrew the permission (or DNS now answers a private address): nothing is sent.
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False
    retry_in = webhook_deliver(delivery_id=str(delivery.pk))
    delivery.refresh_from_db()
    assert callback_server.requests == []
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("retrying", 1, None)
    assert "resolves to 127.0.0.1, a private, loopback" in delivery.last_error
    assert retry_in == 30.0  # WEBHOOK_RETRY_BASE_DELAY's default

    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    assert webhook_deliver(delivery_id=str(delivery.pk)) is None
    delivery.refresh_from_db()
    (post,) = callback_server.received("/hook")
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 2, 200)
    expected = "sha256=" + hmac.new(SECRET.encode(), post.body, hashlib.sha256).hexdigest()
    assert post.headers["x-hub-signature"] == expected
    assert post.headers["x-eventgate-attempt"] == "2"
    assert webhook_deliver(delivery_id=str(delivery.pk)) is None  # a duplicate task sends nothing
    assert len(callback_server.received("/hook")) == 1


def test_verification_failure_says_why(subscription, settings, callback_server: CallbackServer):
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    callback_server.verify["/hook"] = 503
    webhook = webhook_for(subscription, callback_server.url("/hook?token=abc"), status="pending")
    webhook = webhook_verify(webhook_id=webhook.pk)
    assert webhook.status == "failed"
    assert webhook.status_reason == (
        "The callback answered HTTP 503 Service Unavailable to the verification request."
    )
    (request,) = callback_server.received("/hook", method="GET")
    assert request.query["token"] == "abc"  # the callback's own query is kept (WebSub §5.3)
    assert request.query["hub.mode"] == "subscribe"

    callback_server.verify["/hook"] = "echo"
    webhook = webhook_verify(webhook_id=webhook.pk)
    assert webhook.status == "active" and webhook.status_reason == ""
    assert webhook.lease_expires_at > timezone.now() + timedelta(days=9)


def test_sweep_requeues_a_delivery_whose_task_was_lost(
    subscription, settings, celery_eager, callback_server: CallbackServer
):
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    webhook = webhook_for(subscription, callback_server.url("/hook"))
    lost = delivery_for(webhook, next_attempt_at=timezone.now() - timedelta(minutes=10))
    recent = delivery_for(webhook, event_id="e2", next_attempt_at=timezone.now())
    assert webhook_deliveries_sweep() == 1
    lost.refresh_from_db()
    recent.refresh_from_db()
    assert (lost.status, recent.status) == ("delivered", "pending")
    assert len(callback_server.received("/hook")) == 1


def test_callback_is_verified_again_when_its_lease_ends(
    subscription, settings, celery_eager, callback_server: CallbackServer, django_capture_on_commit_callbacks
):
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    ended = webhook_for(subscription, callback_server.url("/ok"), lease_expires_at=timezone.now())
    callback_server.verify["/gone"] = 410
    gone = webhook_for(
        subscription, callback_server.url("/gone"), address="prices/GLOBEX", lease_expires_at=timezone.now()
    )
    running = webhook_for(
        subscription, callback_server.url("/later"), lease_expires_at=timezone.now() + timedelta(days=1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert webhook_leases_renew() == 2
    for webhook in (ended, gone, running):
        webhook.refresh_from_db()
    assert ended.status == "active" and ended.lease_expires_at > timezone.now() + timedelta(days=9)
    assert (gone.status, gone.status_reason) == (
        "failed",
        "The callback answered HTTP 410 Gone to the verification request.",
    )
    assert running.status == "active" and callback_server.received("/later", method="GET") == []


def test_old_deliveries_are_pruned_once_metered(subscription):
    webhook = webhook_for(subscription, "http://93.184.216.34/hook")
    old = timezone.now() - timedelta(days=31)
    gone = [
        delivery_for(webhook, event_id="metered", status="delivered", metered=True, created=old),
        delivery_for(webhook, event_id="dead", status="dead", created=old),
    ]
    kept = [
        delivery_for(webhook, event_id="unmetered", status="delivered", created=old),
        delivery_for(webhook, event_id="retrying", status="retrying", created=old),
        delivery_for(webhook, event_id="recent", status="dead"),
    ]
    assert webhook_deliveries_prune() == len(gone)
    assert set(WebhookDelivery.objects.values_list("event_id", flat=True)) == {d.event_id for d in kept}


# --- portal pages --------------------------------------------------------------------------------------


def test_application_page_links_to_its_webhooks(client, bob, subscription):
    client.force_login(bob)
    page = client.get(f"/apps/{subscription.application_id}/").content.decode()
    assert f'href="/apps/{subscription.application_id}/webhooks/"' in page


@pytest.mark.parametrize(
    ("status", "reason", "explained"),
    [
        ("suspended", "unpaid invoice", "is suspended: no events are delivered until an admin reinstates it"),
        ("cancelled", "", "is cancelled: no events are delivered"),
    ],
)
def test_webhook_of_an_inactive_subscription_shows_paused_and_why(
    client, bob, subscription, status, reason, explained
):
    webhook = webhook_for(subscription, "http://93.184.216.34/hook", verified_at=timezone.now())
    Subscription.objects.filter(pk=subscription.pk).update(
        status=status, decision_reason=reason, decided_at=timezone.now()
    )
    client.force_login(bob)
    detail = client.get(f"/apps/{subscription.application_id}/webhooks/{webhook.pk}/").content.decode()
    badge = detail.split('data-testid="webhook-status"', 1)[1].split("<", 1)[0]
    assert badge.endswith(">Paused")
    assert "Deliveries are paused." in detail and explained in detail
    assert reason in detail
    assert "Active since" not in detail
    listing = client.get(f"/apps/{subscription.application_id}/webhooks/").content.decode()
    assert ">Paused</span>" in listing and ">Active</span>" not in listing
    assert f"Deliveries paused: the subscription is {status}." in listing


def test_webhook_over_the_plan_quota_shows_paused_and_why(client, bob, subscription):
    webhook = webhook_for(subscription, "http://93.184.216.34/hook", verified_at=timezone.now())
    client.force_login(bob)
    url = f"/apps/{subscription.application_id}/webhooks/{webhook.pk}/"
    assert "Active since" in client.get(url).content.decode()
    quota_used_up(subscription)
    detail = client.get(url).content.decode()
    assert (
        "Deliveries are paused:</strong> the events quota of plan 'Free' is used up this month (3 events)"
        in (detail.replace("&#x27;", "'"))
    )
    assert "Active since" not in detail


def test_webhook_page_registers_and_explains_refusals(
    client, bob, subscription, settings, django_capture_on_commit_callbacks
):
    client.force_login(bob)
    url = f"/apps/{subscription.application_id}/webhooks/"
    page = client.get(url).content.decode()
    assert "No webhooks yet." in page
    assert 'Ticker 1.0.0:</span> <span class="font-monospace">prices/{symbol}</span>' in page
    assert "orders" not in page  # send-only: not offered

    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = False
    form = {"target": f"{subscription.pk}:1.0.0", "channel": "prices/ACME", "secret": SECRET}
    response = client.post(url, {**form, "callback_url": "http://127.0.0.1:9/hook"})
    page = response.content.decode()
    assert response.status_code == 200
    assert "resolves to 127.0.0.1, a private, loopback, link-local" in page
    assert SECRET not in page  # the secret field is never filled in again

    response = client.post(url, {**form, "channel": "prices/NOPE", "callback_url": "http://93.184.216.34/h"})
    assert "&#x27;prices/NOPE&#x27; is not a channel you can receive events from" in response.content.decode()

    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(url, {**form, "callback_url": "http://93.184.216.34/h"})
    webhook = WebhookSubscription.objects.get()
    assert response.status_code == 302 and response["Location"] == webhook.get_absolute_url()
    assert len(callbacks) == 1
    page = client.get(webhook.get_absolute_url()).content.decode()
    assert "Verifying your callback." in page
    assert '<meta http-equiv="refresh" content="3">' in page
    assert SECRET not in page
    assert "prices/ACME" in client.get(url).content.decode()


def test_deleting_from_the_page_keeps_the_log(client, bob, subscription):
    webhook = webhook_for(subscription, "http://93.184.216.34/hook")
    delivery_for(webhook, status="delivered")
    queued = delivery_for(webhook, event_id="e2")
    client.force_login(bob)
    response = client.post(f"/apps/{subscription.application_id}/webhooks/{webhook.pk}/delete/")
    assert response.status_code == 302
    webhook.refresh_from_db()
    queued.refresh_from_db()
    assert (webhook.status, webhook.secret) == ("deleted", "")
    assert (queued.status, queued.last_error) == ("cancelled", "the webhook was deleted")
    page = client.get(webhook.get_absolute_url()).content.decode()
    assert "Deleted" in page and "e2" in page and "Verify again" not in page


# --- the delivery timeout is one deadline for the whole exchange ------------------------------------


class TricklingCallback:
    """A callback on 127.0.0.1 that reads the request, then sends its response a few bytes at a
    time, ``pause`` seconds apart: the status line byte by byte (``"status"``), or the status
    line and then one header at a time (``"headers"``), or the headers and then the body in small
    pieces (``"body"``). Sent to the end, the answer is a valid ``200 OK``, after ``pieces *
    pause`` seconds."""

    def __init__(self, part: str, *, pause: float = 0.25, pieces: int = 40) -> None:
        import socket
        import threading

        self.part, self.pause, self.pieces = part, pause, pieces
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _pieces(self) -> list[bytes]:
        status = b"HTTP/1.1 200 OK\r\n"
        if self.part == "status":
            return [bytes([b]) for b in status] + [b"Content-Length: 0\r\n\r\n"]
        if self.part == "headers":
            headers = [f"X-Slow-{n}: {n}\r\n".encode() for n in range(self.pieces)]
            return [status, *headers, b"Content-Length: 0\r\n\r\n"]
        body = [b"x" * 10] * self.pieces
        return [status + f"Content-Length: {10 * self.pieces}\r\n\r\n".encode(), *body]

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)  # the request (small: headers and a short body)
                try:
                    for piece in self._pieces():
                        if self.stopped.wait(self.pause):
                            return
                        connection.sendall(piece)
                except OSError:  # the client gave up: the point of the test
                    pass

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.listener.close()


@pytest.mark.parametrize("part", ["status", "headers", "body"])
def test_a_callback_trickling_its_answer_fails_the_attempt_at_the_timeout(subscription, settings, part):
    """WEBHOOK_TIMEOUT bounds connect, request, status line, headers and body together: a
    callback sending a byte or a header now and then is a failed (retried) attempt once the time
    is up, never "delivered" after minutes."""
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    settings.WEBHOOK_TIMEOUT = 1.5
    callback = TricklingCallback(part)  # would answer 200 after 40 * 0.25 = 10 s
    try:
        webhook = webhook_for(subscription, callback.url("/slow"))
        delivery = delivery_for(webhook)
        started = time.monotonic()
        retry_in = webhook_deliver(delivery_id=str(delivery.pk))
        elapsed = time.monotonic() - started
    finally:
        callback.close()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("retrying", 1, None)
    assert delivery.last_error == "timed out after 1.5 s"
    assert retry_in is not None
    assert elapsed < 5, f"the attempt took {elapsed:.1f} s with WEBHOOK_TIMEOUT=1.5"


def delivery_redeliver_refusal(delivery: WebhookDelivery) -> str:
    with pytest.raises(ValidationError) as refused:
        delivery_redeliver(delivery=delivery)
    return refused.value.messages[0]


# --- the plan's quota -------------------------------------------------------------------------------


def quota_used_up(subscription: Subscription, events: int = 3) -> None:
    """Give ``subscription``'s plan an events quota of ``events`` and meter that many events."""
    plan = subscription.plan
    plan.quota_events = events
    plan.save()
    minute = timezone.now().replace(second=0, microsecond=0)
    usage_record_batch(rows=[(subscription.pk, minute, "prices/{symbol}", "out", events, 100)])


def test_no_delivery_once_the_plan_quota_is_used_up(
    subscription, settings, celery_eager, callback_server: CallbackServer, django_capture_on_commit_callbacks
):
    """As WebSocket handshakes get 4429: a delivery over the plan's events quota is not sent,
    ends "Not sent" with the reason (no retry) and is not metered."""
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    webhook = webhook_for(subscription, callback_server.url("/hook"))
    under = delivery_for(webhook, event_id="under")
    assert webhook_deliver(delivery_id=str(under.pk)) is None, WebhookDelivery.objects.get(
        pk=under.pk
    ).last_error
    assert webhook_usage_flush() == 1

    quota_used_up(subscription)
    queued = delivery_for(webhook, event_id="queued")  # stored before the quota ran out
    assert webhook_deliver(delivery_id=str(queued.pk)) is None
    queued.refresh_from_db()
    assert (queued.status, queued.attempts, queued.next_attempt_at) == ("cancelled", 0, None)
    assert queued.last_error == "the events quota of plan 'Free' is used up this month (3 events)"
    # The dispatcher stores new events as not sent, and queues no task for them.
    events = [
        EventForWebhooks(event_id=f"new{n}", frame='{"id":"x"}', webhook_ids=(webhook.pk,)) for n in range(2)
    ]
    with django_capture_on_commit_callbacks(execute=True):
        assert webhook_deliveries_create(events=events) == 2
    new = list(WebhookDelivery.objects.filter(event_id__startswith="new"))
    assert {(d.status, d.last_error) for d in new} == {("cancelled", queued.last_error)}
    assert [r.body for r in callback_server.received("/hook")] == [under.body.encode()]
    assert webhook_usage_flush() == 0
    assert usage_for_subscription(subscription=subscription).events == 4  # 1 delivered + 3 metered
    # Redelivery is refused the same way.
    assert delivery_redeliver_refusal(queued) == "Cannot redeliver: " + queued.last_error + "."


def test_deliveries_of_other_subscriptions_go_on_when_one_quota_is_used_up(
    subscription, settings, celery_eager, callback_server: CallbackServer, django_capture_on_commit_callbacks
):
    settings.WEBHOOK_ALLOW_PRIVATE_ADDRESSES = True
    other_subscription = SubscriptionFactory(
        application=ApplicationFactory(owner=subscription.application.owner, name="Second app"),
        plan=BusinessPlanFactory(api=subscription.api, name="Unlimited"),
    )
    quota_used_up(subscription)
    over = webhook_for(subscription, callback_server.url("/over"))
    fine = webhook_for(other_subscription, callback_server.url("/fine"))
    event = EventForWebhooks(event_id="e9", frame='{"id":"e9"}', webhook_ids=(over.pk, fine.pk))
    with django_capture_on_commit_callbacks(execute=True) as queued:
        assert webhook_deliveries_create(events=[event]) == 2
    assert len(queued) == 1  # one task, for the delivery under quota
    statuses = dict(WebhookDelivery.objects.values_list("webhook_id", "status"))
    assert statuses == {over.pk: "cancelled", fine.pk: "delivered"}  # eager Celery sent it
    assert callback_server.received("/over") == [] and len(callback_server.received("/fine")) == 1
