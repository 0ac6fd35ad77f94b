"""Gateway fixtures: a published API with a unique slug (the RabbitMQ exchange is shared with
other test runs), bob's application subscribed to it with an API key, and clean-up of the
process-wide bridge and meter after each test."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import pytest

from gateway.bridge import _bridges
from gateway.metering import get_meter
from portal.models import API, APIKey, Application, Subscription
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
    SubscriptionFactory,
)


@pytest.fixture
def stream_api(alice, transactional_db) -> API:
    """A published API (unique slug) v1.0.0: ``prices/{symbol}`` (ACME, GLOBEX; receive),
    ``orders`` (send only), plans Free and Gold (requires approval)."""
    api = APIFactory(
        provider=alice, name=f"Stream {uuid.uuid4().hex[:8]}", slug=f"stream-{uuid.uuid4().hex[:10]}"
    )
    version = APIVersionFactory(api=api, version="1.0.0")
    OperationFactory(channel=ChannelFactory(api_version=version, key="prices", address="prices/{symbol}"))
    orders = ChannelFactory(api_version=version, key="orders", address="orders", parameters={})
    OperationFactory(channel=orders, key="placeOrder", action="send")
    BusinessPlanFactory(api=api, name="Free")
    BusinessPlanFactory(api=api, name="Gold", requires_approval=True, flat_fee_minor=4900)
    return api


@dataclass
class Subscribed:
    application: Application
    subscription: Subscription
    key: APIKey
    secret: str


@pytest.fixture
def bob_subscribed(bob, stream_api) -> Subscribed:
    """Bob's application with an active Free subscription to ``stream_api`` and an API key."""
    application = ApplicationFactory(owner=bob, name="Bob's dashboard")
    subscription = SubscriptionFactory(application=application, plan=stream_api.plans.get(name="Free"))
    key, secret = APIKey.generate(application=application)
    return Subscribed(application, subscription, key, secret)


@pytest.fixture
async def gateway_cleanup():
    """Close this test loop's bridge and reset the meter afterwards (both are per process)."""
    yield
    meter = get_meter()
    if meter._task is not None:
        meter._task.cancel()
        meter._task = None
    for pending in (
        meter.counts,
        meter.throttled,
        meter.errors,
        meter.latency,
        meter.connections,
        meter.handshakes,
    ):
        pending.clear()
    bridge = _bridges.pop(asyncio.get_running_loop(), None)
    if bridge is not None:
        await bridge.close()


@pytest.fixture(autouse=True)
def _shared_credential_cache(_empty_cache, settings):
    """Gateway tests share the cache with the server processes they start (Redis, as in
    production): a key revoked in the test process must leave the servers' credential cache
    (gateway.credentials). Never cleared: entries are keyed by the SHA-256 of random secrets."""
    if settings.REDIS_URL:
        redis_cache = "django.core.cache.backends.redis.RedisCache"
        settings.CACHES = {"default": {"BACKEND": redis_cache, "LOCATION": settings.REDIS_URL}}


def oauth_token_issue(application: Application, scope: str, *, seconds: int = 3600) -> str:
    """An OAuth2 access token of ``application`` (its OAuth2 client created if needed) with
    ``scope`` (``portal.oauth`` grammar, space-separated), valid for ``seconds``; returns the
    token. Written to the database directly, as ``/o/token/`` would (client credentials)."""
    import secrets
    from datetime import timedelta

    from django.utils import timezone
    from oauth2_provider.models import AccessToken

    from portal.services.credentials import oauth_client_create

    application.refresh_from_db()
    if application.oauth_client_id is None:
        oauth_client_create(application=application)
        application.refresh_from_db()
    token = secrets.token_urlsafe(24)
    AccessToken.objects.create(
        application=application.oauth_client,
        token=token,
        scope=scope,
        expires=timezone.now() + timedelta(seconds=seconds),
    )
    return token
