"""Webhook settings with their defaults (README lists them; ``docs/webhooks.md`` explains them).

Each value comes from ``django.conf.settings`` when the project defines it, else from the
environment variable of the same name, else the default below, so a Celery worker or the
dispatcher started with e.g. ``WEBHOOK_MAX_ATTEMPTS=3`` in its environment uses it.
"""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings

# name → (type, default)
DEFAULTS: dict[str, tuple[type, Any]] = {
    # Attempts per delivery (the first one included) before it becomes a dead letter.
    "WEBHOOK_MAX_ATTEMPTS": (int, 6),
    # Seconds before the first retry; each later retry waits twice as long as the one before.
    "WEBHOOK_RETRY_BASE_DELAY": (float, 30.0),
    # Seconds to connect to a callback and get its response (verification and deliveries).
    "WEBHOOK_TIMEOUT": (float, 10.0),
    # hub.lease_seconds: Eventgate verifies an active callback again when its lease ends.
    "WEBHOOK_LEASE_SECONDS": (int, 10 * 24 * 3600),
    # The dispatcher's durable RabbitMQ queue (shared by all dispatcher processes).
    "WEBHOOK_DISPATCH_QUEUE": (str, "eventgate.webhooks"),
    # Seconds between the dispatcher's looks at the database (bindings, renewals, metering).
    "WEBHOOK_DISPATCH_POLL_INTERVAL": (float, 2.0),
    # Days a delivery log entry is kept.
    "WEBHOOK_DELIVERY_RETENTION_DAYS": (int, 30),
}

_TRUE = {"1", "true", "yes", "on"}


def webhook_setting(name: str) -> Any:
    """The value of webhook setting ``name`` (a key of ``DEFAULTS``), typed.

    Raises ``KeyError`` for an unknown name, ``ValueError`` for an environment value of the
    wrong type (e.g. ``WEBHOOK_MAX_ATTEMPTS=many``).
    """
    kind, default = DEFAULTS[name]
    if hasattr(settings, name):
        return kind(getattr(settings, name))
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return kind(raw)


def allow_private_addresses() -> bool:
    """``WEBHOOK_ALLOW_PRIVATE_ADDRESSES``: callbacks may resolve to private, loopback or
    link-local addresses (an admin's decision; the tests serve callbacks on 127.0.0.1)."""
    value = getattr(settings, "WEBHOOK_ALLOW_PRIVATE_ADDRESSES", None)
    if value is None:
        value = os.environ.get("WEBHOOK_ALLOW_PRIVATE_ADDRESSES", "").lower() in _TRUE
    return bool(value)
