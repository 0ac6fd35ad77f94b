"""Analytics capture at the edges of a connection's life: handshakes, finished connections and
each process's live snapshot (docs/analytics.md).

- Every WebSocket or SSE handshake becomes one ``analytics.HandshakeRecord``: outcome
  ``accepted`` or the refusal's name (``REFUSALS``: ``invalid_token``, ``forbidden``,
  ``quota_exhausted``, ``connection_limit``, ...), application, subscription, API, version,
  channel *template* (looked up from the URL for refusals; empty when no channel matched, never
  the raw path), client
  IP and user agent. Counted per (protocol, outcome) in ``handshake_outcomes`` for ``/metrics``.
- Every accepted connection becomes one ``analytics.ConnectionRecord`` when it ends: opened,
  closed, duration (seconds), close code and reason (the server's, or the client's close frame;
  none when an SSE client simply went away), events and bytes each way, throttled and dropped.
- Every ``GATEWAY_LIVE_INTERVAL`` seconds the process publishes its open connections
  (``analytics.live.publish``), for the dashboards' "active connections now"; at exit it
  withdraws them.

Records are queued on the process's meter (``gateway.metering.Meter.record``) and written with
its next flush: no database write per handshake on the event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import socket
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from analytics import live
from analytics.models import ConnectionRecord, HandshakeRecord
from gateway.metering import get_meter

log = logging.getLogger(__name__)

# WebSocket close code → (HTTP status, "error" name) of the same refusal (the contract's table,
# docs/gateway.md; SSE answers with the status and the name).
REFUSALS: dict[int, tuple[int, str]] = {
    4400: (400, "invalid_request"),
    4401: (401, "invalid_token"),
    4403: (403, "forbidden"),
    4404: (404, "not_found"),
    4405: (403, "insufficient_scope"),
    4410: (410, "gone"),
    4429: (429, "quota_exhausted"),
    1009: (413, "too_large"),
    1011: (500, "internal_error"),
    1013: (503, "unavailable"),
}
CLOSED_BY_CLIENT = "closed by the client"
# Close codes that arrive as the client's but say something else happened (RFC 6455 §7.4.1).
CLOSED_OTHERWISE = {
    1006: "connection lost (no close frame)",
    1009: "message too big",  # the server refused a client frame over GATEWAY_MAX_MESSAGE_BYTES
    1012: "gateway restarting",
}
# (protocol, outcome) → handshakes since the process started (gateway.prometheus).
handshake_outcomes: Counter[tuple[str, str]] = Counter()
PROCESS = f"{socket.gethostname()}:{os.getpid()}"
STARTED_AT = time.time()


def close_by_client_reason(code: int | None) -> str:
    """The close reason to record for a ``websocket.disconnect`` with ``code``: the client
    closed, unless the code says the connection was lost or the server was restarting."""
    return CLOSED_OTHERWISE.get(code or 0, CLOSED_BY_CLIENT)


def _clean(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, without NUL (PostgreSQL text cannot hold one)."""
    return text.replace("\x00", "")[:limit]


def refusal_outcome(code: int, error: str | None = None) -> str:
    """The outcome name of a refusal with WebSocket close ``code`` (``error`` overrides it, as
    it overrides SSE's error name)."""
    return error or REFUSALS.get(code, (403, "forbidden"))[1]


def _client(scope: dict[str, Any]) -> tuple[str | None, str]:
    """(client IP or None, user agent cut to 512 characters) of an ASGI scope."""
    client = scope.get("client")
    agent = ""
    for name, value in scope.get("headers", ()):
        if name == b"user-agent":
            agent = _clean(value.decode("latin1"), 512)
            break
    return (client[0] if client else None), agent


def handshake_capture(
    connection: Any,
    *,
    protocol: str,
    refusal: Any = None,
    status: int | None = None,
) -> None:
    """Queue the ``HandshakeRecord`` of ``connection`` (a ``LiveConnection``): accepted, or
    refused with ``refusal`` (a ``gateway.auth.HandshakeRefused``; ``status`` the HTTP status
    an SSE refusal was answered with, when not the contract's)."""
    grant = connection.grant
    scope = connection.scope
    ip, agent = _client(scope)
    if refusal is None:
        outcome, code, detail = HandshakeRecord.ACCEPTED, None, ""
    else:
        outcome = refusal_outcome(refusal.code, refusal.error)
        code = refusal.code if protocol == "websocket" else (status or REFUSALS.get(refusal.code, (403,))[0])
        detail = _clean(refusal.reason, 300)
    credential = refusal.credential if refusal is not None and refusal.credential is not None else None
    channel = ""
    if grant is not None and grant.channel is not None:
        channel = grant.channel.channel_template
    route = scope.get("url_route", {}).get("kwargs", {})
    handshake_outcomes[(protocol, outcome)] += 1
    if grant is not None:
        application_id = grant.application_id
    else:
        application_id = credential.application_id if credential is not None else None
    record = HandshakeRecord(
        at=datetime.now(UTC),
        outcome=outcome,
        code=code,
        detail=detail,
        protocol=protocol,
        application_id=application_id,
        subscription_id=grant.subscription_id if grant else None,
        api_id=grant.api_id if grant else None,
        version=_clean(grant.version if grant else str(route.get("version", "")), 64),
        channel=channel,
        client_ip=ip,
        user_agent=agent,
        process=PROCESS,
    )
    if grant is None:
        # Refused before a grant: the API, subscription and channel template are looked up
        # from the URL in the flush's worker thread (``handshakes_resolve``), not on the loop.
        address = route.get("address")
        record.route = (
            _clean(str(route.get("api", "")), 100),
            _clean(str(route.get("version", "")), 64),
            _clean(str(address), 1000) if address else None,
        )
    meter = get_meter()
    meter.record(record)
    meter.ensure_flushing()  # a process that only refuses still writes its log


def connection_opened(connection: Any) -> None:
    """Note when ``connection`` went live and which API its subscription belongs to (for the
    meter's per-API totals)."""
    connection.opened_at = time.time()
    grant = connection.grant
    if grant is not None:
        get_meter().api_of[grant.subscription_id] = grant.api_slug
    _publisher_ensure()


def connection_capture(connection: Any, *, protocol: str) -> None:
    """Queue the ``ConnectionRecord`` of ``connection``, which has ended (once; only for a
    connection that went live)."""
    if connection.opened_at is None or connection.captured or connection.grant is None:
        return
    connection.captured = True
    grant = connection.grant
    ip, agent = _client(connection.scope)
    outbox = connection.outbox
    closed = time.time()
    get_meter().record(
        ConnectionRecord(
            subscription_id=grant.subscription_id,
            application_id=grant.application_id,
            api_id=grant.api_id,
            version=grant.version[:64],
            protocol=protocol,
            channels=_clean(",".join(sorted(connection.templates)), 1000),
            client_ip=ip,
            user_agent=agent,
            opened_at=datetime.fromtimestamp(connection.opened_at, UTC),
            closed_at=datetime.fromtimestamp(closed, UTC),
            duration_seconds=round(closed - connection.opened_at, 3),
            close_code=connection.close_code,
            close_reason=_clean(connection.close_reason or "", 200),
            events_out=outbox.sent if outbox is not None else 0,
            bytes_out=outbox.sent_bytes if outbox is not None else 0,
            events_in=connection.events_in,
            bytes_in=connection.bytes_in,
            throttled_events=outbox.throttled if outbox is not None else 0,
            dropped_events=outbox.dropped if outbox is not None else 0,
            process=PROCESS,
        )
    )


def handshakes_resolve(records: list[HandshakeRecord]) -> None:
    """Fill in the API, subscription and channel template of handshakes refused before a grant
    (a bad or revoked credential, an unknown channel, no subscription), from the URL each such
    record keeps in ``route`` (API slug, version, address), so a provider sees the refusals of
    their own API. Runs in the flush's worker thread: three queries per batch at most, plus the
    channels of each version (``gateway.auth.version_channels``, cached). An address that matches
    no channel leaves the template empty (never the raw path)."""
    from gateway.auth import channel_match, version_channels
    from portal.models import API, APIVersion, Subscription

    pending = [record for record in records if getattr(record, "route", None)]
    if not pending:
        return
    slugs = {record.route[0] for record in pending}
    apis = dict(API.objects.filter(slug__in=slugs).values_list("slug", "pk"))
    versions = {
        (slug, version): pk
        for pk, slug, version in APIVersion.objects.filter(api__slug__in=slugs).values_list(
            "pk", "api__slug", "version"
        )
    }
    for record in pending:
        slug, version, address = record.route
        record.api_id = record.api_id or apis.get(slug)
        version_id = versions.get((slug, version))
        if version_id is not None and address and not record.channel:
            try:
                channel = channel_match(version_channels(version_id), str(address))
            except TimeoutError:
                channel = None
            record.channel = channel.address if channel is not None else ""
    wanted = [
        record
        for record in pending
        if record.subscription_id is None and record.application_id and record.api_id
    ]
    if wanted:
        latest = {
            (application, api): pk
            for pk, application, api in Subscription.objects.filter(
                application_id__in={record.application_id for record in wanted},
                api_id__in={record.api_id for record in wanted},
            )
            .order_by("created", "pk")
            .values_list("pk", "application_id", "api_id")
        }
        for record in wanted:
            record.subscription_id = latest.get((record.application_id, record.api_id))


# --- live snapshot (analytics.live) ------------------------------------------------------------

_publishers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
_application_names: dict[int, str] = {}
_names_cleared = [time.monotonic()]
NAMES_TTL_SECONDS = 60.0
_withdraw_registered = False


def _publisher_ensure() -> None:
    global _withdraw_registered
    loop = asyncio.get_running_loop()
    task = _publishers.get(loop)
    if task is None or task.done():
        _publishers[loop] = loop.create_task(_publish_forever(), name="eventgate-live-snapshot")
    if not _withdraw_registered:
        atexit.register(_withdraw)
        _withdraw_registered = True


def _withdraw() -> None:
    try:
        live.withdraw(PROCESS)
    except Exception as exc:  # noqa: BLE001 - Redis gone at exit: the snapshot expires by itself
        log.info("Live snapshot not withdrawn at exit: %r", exc)


def snapshot(connections: list[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """This process's ``analytics.live`` snapshot (shapes there) from its open ``connections``
    (``LiveConnection``s with a grant); application names are filled in by ``_publish``."""
    process = {
        "process": PROCESS,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": STARTED_AT,
        "connections": len(connections),
        "events_out": 0,
        "bytes_out": 0,
        "events_in": 0,
        "bytes_in": 0,
    }
    # totals are per (API, direction); the snapshot adds both directions' sums.
    for (_, direction), values in get_meter().totals.items():
        process[f"events_{direction}"] += values[0]
        process[f"bytes_{direction}"] += values[1]
    items = []
    for connection in connections:
        grant, outbox = connection.grant, connection.outbox
        items.append(
            {
                "id": f"{PROCESS}:{id(connection)}",
                "process": PROCESS,
                "protocol": connection.protocol,
                "subscription_id": grant.subscription_id,
                "application_id": grant.application_id,
                "application": "",
                "api_id": grant.api_id,
                "api": grant.api_slug,
                "version": grant.version,
                "channels": sorted(connection.live_templates()),
                "client_ip": _client(connection.scope)[0],
                "since": connection.opened_at,
                "events_out": outbox.sent if outbox is not None else 0,
                "bytes_out": outbox.sent_bytes if outbox is not None else 0,
                "events_in": connection.events_in,
                "bytes_in": connection.bytes_in,
            }
        )
    return process, items


def _publish(process: dict[str, Any], items: list[dict[str, Any]]) -> None:
    """Fill in application names (cached; one query for new ones) and publish. Worker thread."""
    from django.db import close_old_connections

    from portal.models import Application

    missing = {item["application_id"] for item in items} - _application_names.keys()
    if missing:
        try:
            _application_names.update(Application.objects.filter(pk__in=missing).values_list("pk", "name"))
        finally:
            close_old_connections()
    for item in items:
        item["application"] = _application_names.get(item["application_id"], "")
    live.publish(process, items)


async def publish_now() -> None:
    """Publish this process's snapshot once (the periodic task; tests)."""
    from gateway.connections import live_connections

    process, items = snapshot([c for c in live_connections() if c.grant is not None and c.opened_at])
    await sync_to_async(_publish, thread_sensitive=False)(process, items)


async def _publish_forever() -> None:
    while True:
        try:
            await publish_now()
        except Exception as exc:  # noqa: BLE001 - Redis or the database down: try again next time
            log.warning("Live snapshot not published: %r", exc)
        if len(_application_names) > 10_000 or time.monotonic() - _names_cleared[0] > NAMES_TTL_SECONDS:
            _application_names.clear()  # renamed applications show their new name within a minute
            _names_cleared[0] = time.monotonic()
        await asyncio.sleep(float(settings.GATEWAY_LIVE_INTERVAL))
