"""Prometheus metrics of one gateway process at ``GET /metrics`` (names and meanings:
docs/metrics.md).

Nothing here runs per event: ``GatewayCollector.collect`` reads, at scrape time, the counters the
gateway keeps anyway — the open connections (``gateway.connections``), the meter's process
totals (``gateway.metering.Meter.totals``, advanced at each flush), the handshake outcomes
(``gateway.capture``), the broker bridge (``gateway.bridge``) and the grant cache. The registry
is this module's own (``registry``), never prometheus_client's global one, and also holds the
standard process collector (``process_*``: CPU, memory, open files, start time).

Every process answers for itself: scrape each gateway process on its own address, not through
a load balancer (which would hand each scrape to a different process).

Who may scrape (``metrics_refusal``): a client whose address is in ``METRICS_ALLOWED_IPS``
(addresses or networks; loopback by default) and that came without a proxy in between, or any
request with ``Authorization: Bearer <METRICS_TOKEN>`` when that setting is set. Anyone else
gets 403 with a plain-text message naming the settings. "Without a proxy" is judged by the
proxy headers only: a proxy on the same host that adds none of them is not detected (bind
scraping to loopback, or use ``METRICS_TOKEN`` behind a proxy; docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from analytics.models import HandshakeRecord
from gateway import bridge as bridge_module
from gateway import connections as connections_module
from gateway.capture import STARTED_AT, handshake_outcomes
from gateway.metering import get_meter

PREFIX = "eventgate_gateway_"

# ``Meter.totals`` values, in order: (metric name without the prefix and "_total", help).
TOTALS_FIELDS: tuple[tuple[str, str], ...] = (
    ("events", "Events delivered (out) or accepted from clients (in), since the process started."),
    ("bytes", "Bytes of those events (each frame as sent or received), since the process started."),
    ("throttled_events", "Events stopped by the business plan's throttling policy (never billed)."),
    ("throttled_bytes", "Bytes of the events stopped by the throttling policy."),
    ("dropped_events", "Events dropped for a slow consumer whose outbox was full (never billed)."),
    ("rejected_events", "Client events refused for scope, direction or schema."),
    ("failed_events", "Events whose delivery or broker publish raised an error."),
)
# Request headers a reverse proxy adds: with one of them the peer address is the proxy's.
PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _snapshot(items: Any) -> list[Any]:
    """``list(items.items())`` (or ``list(items)`` for a set), retried if another thread changes
    the container meanwhile (the view runs on the event loop, which owns them; this is only
    a safety net)."""
    for _ in range(5):
        try:
            return list(items.items()) if hasattr(items, "items") else list(items)
        except RuntimeError:  # "changed size during iteration"
            continue
    return []


class GatewayCollector(Collector):
    """Reads this process's gateway counters at each scrape (``collect``); holds no state."""

    def collect(self) -> Iterator[Metric]:
        """Every metric family of docs/metrics.md except ``process_*`` (``ProcessCollector``)."""
        yield from self._connections()
        yield from self._traffic()
        yield from self._handshakes()
        yield from self._broker()
        yield from self._flushes()

    def _connections(self) -> Iterator[Metric]:
        """Open connections per (API, protocol), with a 0 for every API this process has served
        (``Meter.api_of``) on every protocol it has accepted a handshake on, so a series does not
        vanish (and a dashboard show "no data") when its last connection closes."""
        gauge = GaugeMetricFamily(
            PREFIX + "connections",
            "Open (accepted) WebSocket connections and SSE streams of this process, by API; 0 for "
            "an API it has served since it started.",
            labels=["api", "protocol"],
        )
        counts: Counter[tuple[str, str]] = Counter()
        for connection in connections_module.live_connections():
            grant = connection.grant
            if grant is None:
                continue
            counts[(grant.api_slug, connection.protocol)] += 1
        served = set(_snapshot(get_meter().api_of.values()))
        accepted = HandshakeRecord.ACCEPTED
        protocols = {
            protocol for (protocol, outcome), _ in _snapshot(handshake_outcomes) if outcome == accepted
        }
        for api in served:
            for protocol in protocols:
                counts.setdefault((api, protocol), 0)
        for (api, protocol), count in sorted(counts.items()):
            gauge.add_metric([api, protocol], count)
        yield gauge

    def _traffic(self) -> Iterator[Metric]:
        """``Meter.totals``: (API slug, direction) → the seven counts of ``TOTALS_FIELDS``."""
        totals = _snapshot(get_meter().totals)
        for index, (name, documentation) in enumerate(TOTALS_FIELDS):
            family = CounterMetricFamily(PREFIX + name, documentation, labels=["api", "direction"])
            for (api, direction), values in sorted(totals):
                if index < len(values):
                    family.add_metric([api, direction], values[index])
            yield family

    def _handshakes(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            PREFIX + "handshakes",
            "WebSocket and SSE handshakes of this process by outcome: accepted, or the refusal's name.",
            labels=["protocol", "outcome"],
        )
        for (protocol, outcome), count in sorted(_snapshot(handshake_outcomes)):
            family.add_metric([protocol, outcome], count)
        yield family
        status = connections_module.handshake_status()
        grants = CounterMetricFamily(
            PREFIX + "grant_lookups",
            "Handshake grants: reused from this process's grant cache (hit: no query, no Redis "
            "command) or checked against the database (miss).",
            labels=["result"],
        )
        grants.add_metric(["hit"], status.get("cached", 0))
        grants.add_metric(["miss"], status.get("checked", 0))
        yield grants
        yield CounterMetricFamily(
            PREFIX + "database_queries",
            "Database queries of the gateway's worker threads (handshakes, multiplexed frames, audits).",
            value=status.get("database_queries", 0),
        )

    def _broker(self) -> Iterator[Metric]:
        bridge = _bridge()
        status = bridge.status() if bridge is not None else {}
        yield GaugeMetricFamily(
            PREFIX + "broker_connected",
            "1 while this process's RabbitMQ connection is up, else 0 (also 0 before the first subscriber).",
            value=1 if status.get("connected") else 0,
        )
        yield CounterMetricFamily(
            PREFIX + "broker_reconnects",
            "Times this process's RabbitMQ connection came back after being lost.",
            value=status.get("reconnects", 0),
        )
        dropped = CounterMetricFamily(
            PREFIX + "broker_dropped_events",
            "Events from the broker dropped before fan-out, for every subscriber of this process: "
            "oversize, invalid (not one JSON value) or failed.",
            labels=["reason"],
        )
        for reason in ("oversize", "invalid", "failed"):
            dropped.add_metric([reason], status.get("dropped", {}).get(reason, 0))
        yield dropped

    def _flushes(self) -> Iterator[Metric]:
        meter = get_meter()
        flushes = CounterMetricFamily(
            PREFIX + "flushes",
            "Flushes of the in-memory counters to analytics, by result (ok, failed).",
            labels=["result"],
        )
        flushes.add_metric(["ok"], meter.flushes_ok)
        flushes.add_metric(["failed"], meter.flushes_failed)
        yield flushes
        yield GaugeMetricFamily(
            PREFIX + "flush_lag_seconds",
            "Seconds since the counters were last flushed with success (what a crash now would "
            "lose); 0 before the first flush unless a flush failed.",
            value=flush_lag(meter.last_flush_ok_at, meter.flushes_failed),
        )
        yield GaugeMetricFamily(
            PREFIX + "flush_pending_rows",
            "Usage, latency and log rows waiting for the next flush.",
            value=meter.pending_rows(),
        )


def flush_lag(last_ok_at: float | None, failed: int, now: float | None = None) -> float:
    """Seconds from ``last_ok_at`` (Unix seconds) to ``now`` (default: the time). Without a
    successful flush yet: 0 when none failed either (nothing was due yet), else seconds since
    the process started (``gateway.capture.STARTED_AT``)."""
    now = time.time() if now is None else now
    if last_ok_at is not None:
        return max(0.0, now - last_ok_at)
    return max(0.0, now - STARTED_AT) if failed else 0.0


def _bridge() -> Any:
    """This process's broker bridge (``gateway.bridge.get_bridge``'s, for the running loop), or
    None before the first subscriber asked for one."""
    bridges = bridge_module._bridges
    try:
        bridge = bridges.get(asyncio.get_running_loop())
    except RuntimeError:
        bridge = None
    if bridge is None:
        live = [bridge for loop, bridge in _snapshot(bridges) if not loop.is_closed()]
        bridge = live[0] if len(live) == 1 else None
    return bridge


def registry_build() -> CollectorRegistry:
    """A registry with the gateway collector and the process collector (``process_*``)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(GatewayCollector())
    return registry


registry = registry_build()


@functools.cache
def _allowed_networks(values: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """``METRICS_ALLOWED_IPS`` parsed; raises ``ImproperlyConfigured`` naming a bad entry."""
    networks = []
    for value in values:
        if not value.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ImproperlyConfigured(
                f"METRICS_ALLOWED_IPS: {value!r} is not an IP address or network (e.g. 10.0.0.0/8)"
            ) from None
    return tuple(networks)


def _peer_allowed(address: str | None, networks: Iterable[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
    return any(ip in network for network in networks)


def metrics_refusal(request: HttpRequest) -> str | None:
    """Why ``request`` may not read ``/metrics`` (a message for the 403), or None when it may.

    Allowed: ``Authorization: Bearer <METRICS_TOKEN>`` (when set; compared in constant time),
    or a peer address in ``METRICS_ALLOWED_IPS`` with no proxy header (``PROXY_HEADERS``):
    behind a proxy on the same machine every request would otherwise look local.
    Raises ``ImproperlyConfigured`` for a bad ``METRICS_ALLOWED_IPS`` entry.
    """
    token = str(getattr(settings, "METRICS_TOKEN", "") or "")
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and offered.strip():
        if token and hmac.compare_digest(offered.strip().encode(), token.encode()):
            return None
        if not token:
            return "Forbidden: bearer tokens are not accepted here (METRICS_TOKEN is not set)."
        return "Forbidden: the bearer token does not match METRICS_TOKEN."
    allowed = getattr(settings, "METRICS_ALLOWED_IPS", ("127.0.0.1", "::1"))
    networks = _allowed_networks(tuple(allowed))
    peer = request.META.get("REMOTE_ADDR")
    if any(header in request.META for header in PROXY_HEADERS):
        return (
            "Forbidden: /metrics came through a proxy (X-Forwarded-For, Forwarded or X-Real-IP); "
            "scrape the process directly from an address in METRICS_ALLOWED_IPS, or send "
            "Authorization: Bearer <METRICS_TOKEN>."
        )
    if _peer_allowed(peer, networks):
        return None
    return (
        f"Forbidden: /metrics answers clients in METRICS_ALLOWED_IPS (not {peer}) or requests "
        "with Authorization: Bearer <METRICS_TOKEN>."
    )


@csrf_exempt
@require_safe
async def metrics(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: this process's metrics in the Prometheus text format (0.0.4), or
    OpenMetrics 1.0 when the ``Accept`` header asks for ``application/openmetrics-text``.
    403 (plain text, ``metrics_refusal``) for a client that may not scrape; 405 for any method
    but GET and HEAD.

    Async, so the collector reads the gateway's counters on the event loop that changes them.
    CSRF-exempt: it changes nothing, and a POST must get 405 rather than the CSRF check's 403.
    """
    refusal = metrics_refusal(request)
    if refusal is not None:
        return HttpResponse(refusal + "\n", status=403, content_type="text/plain; charset=utf-8")
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = HttpResponse(encoder(registry), content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response
