"""Connections open now and gateway processes alive: each gateway process's snapshot.

Every gateway process publishes, every ``GATEWAY_LIVE_INTERVAL`` seconds (and at shutdown, an
empty one), a snapshot of itself and its open connections. With ``REDIS_URL`` set it goes to
Redis — ``eventgate:live:<process>`` (JSON, expiring after ``3 ×`` the interval) and the sorted
set ``eventgate:gateways`` (process → last publish, Unix seconds) — so the portal, whichever
process serves it, sees every gateway. Without Redis (one process, ``make run`` without Redis)
snapshots stay in this module's memory, which the portal in the same process reads.

A process whose snapshot expired (killed, hung) drops out of ``processes()`` and its
connections out of ``connections()`` within ``3 ×`` the interval.

When Redis cannot be reached the readers (``snapshots``, ``processes``, ``connections``) raise
``LiveUnavailable`` rather than answer "nothing open": the dashboards and REST then say that live
data is unavailable (``LIVE_UNAVAILABLE``), which a real empty state never does.

Snapshot shape (``publish``)::

    process: {"process": "host:pid", "pid": 123, "host": "...", "started_at": 1764400000.0,
              "seen_at": 1764400100.0, "connections": 2, "events_out": 1234, "bytes_out": 56789,
              "events_in": 0, "bytes_in": 0}          # events/bytes since the process started
    connection: {"id": "host:pid:17", "process": "host:pid", "protocol": "websocket" | "sse",
                 "subscription_id": 3, "application_id": 2, "application": "Ticker board",
                 "api_id": 1, "api": "market-data", "version": "1.0.0",
                 "channels": ["prices/{symbol}"], "client_ip": "127.0.0.1",
                 "since": 1764400050.5, "events_out": 120, "bytes_out": 9000,
                 "events_in": 0, "bytes_in": 0}
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

PROCESSES_KEY = "eventgate:gateways"
SNAPSHOT_KEY = "eventgate:live:{process}"
# Snapshots older than this many intervals are ignored (and expire in Redis).
STALE_INTERVALS = 3

# What the dashboards and REST say when the readers raise LiveUnavailable.
LIVE_UNAVAILABLE = "Live data unavailable: Redis cannot be reached."


class LiveUnavailable(Exception):
    """Redis (``REDIS_URL``) could not be reached to read the gateway processes' snapshots:
    whether any connection is open now is unknown (not "none")."""


# Without Redis: process → (published at, snapshot)
_local: dict[str, tuple[float, dict[str, Any]]] = {}
_client: Any = None


def _redis() -> Any:
    global _client
    if _client is None:
        import redis

        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    return _client


def _ttl() -> float:
    return float(settings.GATEWAY_LIVE_INTERVAL) * STALE_INTERVALS


def publish(process: dict[str, Any], connections: list[dict[str, Any]]) -> None:
    """Store ``process``'s snapshot with its open ``connections`` (shapes in the module
    docstring). Blocking I/O with Redis: call it from a worker thread. Raises
    ``redis.RedisError`` when Redis cannot be reached."""
    now = time.time()
    snapshot = {"process": {**process, "seen_at": now}, "connections": connections}
    name = process["process"]
    if not settings.REDIS_URL:
        _local[name] = (now, snapshot)
        return
    ttl = _ttl()
    pipe = _redis().pipeline(transaction=False)
    pipe.set(
        SNAPSHOT_KEY.format(process=name), json.dumps(snapshot, separators=(",", ":")), px=int(ttl * 1000)
    )
    pipe.zadd(PROCESSES_KEY, {name: now})
    pipe.zremrangebyscore(PROCESSES_KEY, "-inf", now - ttl)
    pipe.execute()


def withdraw(process: str) -> None:
    """Remove ``process``'s snapshot (its orderly shutdown). Raises ``redis.RedisError``."""
    if not settings.REDIS_URL:
        _local.pop(process, None)
        return
    pipe = _redis().pipeline(transaction=False)
    pipe.delete(SNAPSHOT_KEY.format(process=process))
    pipe.zrem(PROCESSES_KEY, process)
    pipe.execute()


def snapshots() -> list[dict[str, Any]]:
    """The fresh snapshots of every gateway process (``{"process": ..., "connections": [...]}``),
    oldest process first. Raises ``LiveUnavailable`` (logged) when Redis cannot be reached."""
    cutoff = time.time() - _ttl()
    if not settings.REDIS_URL:
        return [
            snapshot for seen, snapshot in sorted(_local.values(), key=lambda item: item[0]) if seen >= cutoff
        ]
    try:
        client = _redis()
        names = [name.decode() for name in client.zrangebyscore(PROCESSES_KEY, cutoff, "+inf")]
        raw = client.mget([SNAPSHOT_KEY.format(process=name) for name in names]) if names else []
    except Exception as exc:  # noqa: BLE001 - redis errors of any kind: say "live data unavailable"
        log.warning("Live gateway snapshots unavailable: %r", exc)
        raise LiveUnavailable(LIVE_UNAVAILABLE) from exc
    return [json.loads(item) for item in raw if item]


def processes() -> list[dict[str, Any]]:
    """The gateway processes alive now (their ``process`` snapshots), oldest first. Raises
    ``LiveUnavailable``."""
    return [snapshot["process"] for snapshot in snapshots()]


def connections(
    *, subscription_ids: set[int] | None = None, api_ids: set[int] | None = None
) -> list[dict[str, Any]]:
    """The connections open now across gateway processes, newest first, optionally only those
    of ``subscription_ids`` or of ``api_ids`` (the caller's scope: a consumer's subscriptions,
    a provider's APIs). Raises ``LiveUnavailable``."""
    found = [
        connection
        for snapshot in snapshots()
        for connection in snapshot["connections"]
        if (subscription_ids is None or connection["subscription_id"] in subscription_ids)
        and (api_ids is None or connection["api_id"] in api_ids)
    ]
    return sorted(found, key=lambda connection: -connection["since"])
