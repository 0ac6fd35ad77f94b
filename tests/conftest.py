"""Shared fixtures: personas (alice the provider, bob a consumer, carol who sees none of their
data, admin the platform admin) and a published API with one receive channel."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings

from tests.factories import (
    APIFactory,
    APIVersionFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
    UserFactory,
)

pytest_plugins = ["tests.fixtures.servers", "tests.fixtures.stripe"]

# Real AsyncAPI documents written by others, read in place (never copied into the repository):
# the team's `shared/` folder lies beside the repository; EVENTGATE_SHARED_DIR overrides it.
SHARED_ASYNCAPI = (
    Path(os.environ.get("EVENTGATE_SHARED_DIR", Path(settings.BASE_DIR).parent / "shared")) / "asyncapi"
)


def pytest_configure(config: pytest.Config) -> None:
    if not SHARED_ASYNCAPI.is_dir():
        raise pytest.UsageError(
            f"The shared AsyncAPI documents are not at {SHARED_ASYNCAPI}: clone the repository next to "
            "the team's shared/ folder, or set EVENTGATE_SHARED_DIR to that folder."
        )


@pytest.fixture
def alice(db):
    return UserFactory(email="alice@example.com", is_provider=True)


@pytest.fixture
def bob(db):
    return UserFactory(email="bob@example.com")


@pytest.fixture
def carol(db):
    return UserFactory(email="carol@example.com")


@pytest.fixture
def admin_user(db):
    return UserFactory(email="admin@example.com", is_staff=True, is_superuser=True)


@pytest.fixture
def ticker_api(alice):
    """A published API ``ticker`` v1.0.0 with channel ``prices/{symbol}`` (receive) and two plans."""
    api = APIFactory(provider=alice, name="Ticker", slug="ticker")
    version = APIVersionFactory(api=api)
    channel = ChannelFactory(api_version=version, key="prices", address="prices/{symbol}")
    OperationFactory(channel=channel)
    BusinessPlanFactory(api=api, name="Free")
    BusinessPlanFactory(api=api, name="Gold", requires_approval=True, flat_fee_minor=4900)
    return api


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Every HTTP Basic request hashes the password; PBKDF2 would make the REST tests crawl.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _payment_method_not_required(settings, monkeypatch):
    # Many tests subscribe to paid plans without a card on file; the payment-method tests turn
    # BILLING_REQUIRE_PAYMENT_METHOD back on (tests/billing/test_payment_method*.py). The
    # environment variable reaches server processes started with server_env().
    settings.BILLING_REQUIRE_PAYMENT_METHOD = False
    monkeypatch.setenv("BILLING_REQUIRE_PAYMENT_METHOD", "false")


@pytest.fixture(autouse=True)
def _empty_cache(settings):
    # Rate-limit counters (allauth) live in the cache: one test's failed sign-ins must not lock
    # out the next test's user. A fresh in-process cache per test, so clearing it never flushes
    # the Redis database that channel layers of running servers share.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _fresh_throttling_counters(settings):
    """Throttling counters (gateway.throttling) are keyed by subscription id, and ids repeat
    from one test database to the next: delete this Redis database's counters and connection
    slots before each test (only those keys: running servers share the database)."""
    if not settings.REDIS_URL:
        yield
        return
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        for pattern in ("LIMITS:eventgate/*", "eventgate:conns:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
    except redis.RedisError:
        pass  # a test that stopped Redis on purpose: nothing to clean
    finally:
        client.close()
    yield
