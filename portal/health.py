"""Liveness and readiness probes.

``/healthz`` answers 200 whenever the process serves HTTP. ``/readyz`` answers 200 only when the
database, RabbitMQ and (if configured) Redis answer, else 503 with a JSON body naming what is down.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    """200 ``{"status": "ok"}`` whenever the process serves HTTP (liveness; touches nothing)."""
    return JsonResponse({"status": "ok"})


def _check_database() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any driver error means "down"
        return False


def readyz(request: HttpRequest) -> JsonResponse:
    """200 ``{"status": "ready", "checks": {...}}`` or 503 ``{"status": "unavailable", "down": [...]}``."""
    checks = {"database": _check_database(), "rabbitmq": _amqp_ok()}
    if settings.REDIS_URL:
        checks["redis"] = _redis_ok()
    down = [name for name, ok in checks.items() if not ok]
    if down:
        return JsonResponse({"status": "unavailable", "down": down, "checks": checks}, status=503)
    return JsonResponse({"status": "ready", "checks": checks})


def _amqp_ok() -> bool:
    """Open and close a real AMQP connection (kombu, which Celery already uses), 2 s timeout."""
    from kombu import Connection

    try:
        with Connection(settings.AMQP_URL, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return True
    except Exception:  # noqa: BLE001
        return False


def _redis_ok() -> bool:
    import redis

    try:
        return bool(
            redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()
        )
    except Exception:  # noqa: BLE001
        return False
