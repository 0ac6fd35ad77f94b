"""Metering: everything the gateway counts per event, in process memory, flushed in batches.

Per delivery the gateway adds to one flat dict keyed by
``(subscription id, channel template, direction, minute)`` where ``minute`` is Unix time // 60;
values are ``[events, bytes]``. Deliveries on the fan-out fast path (``gateway.wire``) are
first tallied on their ``ChannelFeed`` (two integer additions, one list increment for the
latency bucket) and moved into the meter when the minute changes, when the connection ends and
before every flush. Every ``settings.GATEWAY_FLUSH_INTERVAL`` seconds everything is swapped
for empty containers and written from a worker thread (``analytics.services``), so the event
loop never waits for the database. Per flush:

- usage rows (``UsageRecord``): delivered events and bytes; throttled events and bytes
  (stopped by the business plan's policy, ``gateway.throttling``, never billed); dropped
  (slow consumer's full outbox), rejected (client events refused for scope, direction or
  schema) and failed events (a delivery or broker publish that raised);
- latency histogram rows (``LatencyRecord``): per (subscription, channel template, direction,
  minute), how many events fell in each bucket of ``analytics.models.LATENCY_BOUNDS_SECONDS``,
  measured from the event's ``eg-published-at`` to the moment it was handed to the socket;
  events without a usable timestamp are not in the histogram; a publisher clock ahead of ours
  counts in the first bucket;
- finished connections (``ConnectionRecord``) and handshakes (``HandshakeRecord``).

Durability: a failed write is merged back and retried at the next flush (records beyond
``MAX_PENDING_RECORDS`` are dropped, oldest first, with a warning, so a long database outage
cannot exhaust memory); on a clean shutdown (SIGTERM/SIGINT: the server's lifespan shutdown and
an ``atexit`` hook) everything left is written. A crash (SIGKILL, OOM) loses at most what was
counted since the last flush: ``GATEWAY_FLUSH_INTERVAL`` seconds of counts, plus the log rows of
the connections open at that moment (they are written when a connection ends).

Process totals since start (``totals``, per API and direction) feed ``/metrics``
(``gateway.prometheus``); they advance at each flush.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
import weakref
from bisect import bisect_left
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, transaction

from analytics.models import LATENCY_BOUNDS_SECONDS, LATENCY_BOUNDS_US, ConnectionRecord, HandshakeRecord
from analytics.services import (
    CountRow,
    LatencyRow,
    connection_record_batch,
    handshake_record_batch,
    latency_record_batch,
    usage_counts_batch,
)

log = logging.getLogger(__name__)

# (subscription id, channel template, direction "out"/"in", minute = Unix seconds // 60)
MeterKey = tuple[int, str, str, int]
# (subscription id, channel template)
DropKey = tuple[int, str]
# Indices into ``Meter.errors`` values.
DROPPED, REJECTED, FAILED = 0, 1, 2
# Latency histogram buckets: len(LATENCY_BOUNDS_SECONDS) finite ones and +Inf.
LATENCY_BUCKETS = len(LATENCY_BOUNDS_US)
MAX_PENDING_RECORDS = 100_000


def latency_bucket(published_at: Any, now: float) -> int:
    """The latency histogram bucket (index into ``LATENCY_BOUNDS_US``) of an event published at
    ``published_at`` (Unix seconds: a number or its decimal string, the ``eg-published-at``
    header) and delivered at ``now``; -1 when the timestamp is missing or not a finite number.
    A timestamp in the future (publisher clock ahead) falls in bucket 0."""
    try:
        delay = now - float(published_at)
    except (TypeError, ValueError):
        return -1
    if delay != delay or delay in (float("inf"), float("-inf")):
        return -1
    return bisect_left(LATENCY_BOUNDS_SECONDS, delay)


class Meter:
    """In-memory counters of one process (see the module docstring)."""

    def __init__(self) -> None:
        self.counts: dict[MeterKey, list[int]] = {}  # [events, bytes] delivered
        # Events the throttling policy stopped, [events, bytes] per key (gateway.throttling).
        self.throttled: dict[MeterKey, list[int]] = {}
        # [dropped, rejected, failed] events per key.
        self.errors: dict[MeterKey, list[int]] = {}
        # (subscription, template, direction, minute, bucket index) → events
        self.latency: dict[tuple[int, str, str, int, int], int] = {}
        self.connections: list[ConnectionRecord] = []
        self.handshakes: list[HandshakeRecord] = []
        self.dropped: dict[DropKey, int] = {}  # events dropped since the process started
        self.throttled_total = 0  # since the process started
        # Subscription id → API slug, for ``totals`` (registered when a connection opens).
        self.api_of: dict[int, str] = {}
        # (API slug, direction) → [events, bytes, throttled events, throttled bytes, dropped,
        # rejected, failed] since the process started, advanced at each flush.
        self.totals: dict[tuple[str, str], list[int]] = {}
        self.flushes_ok = 0
        self.flushes_failed = 0
        self.last_flush_ok_at: float | None = None
        self.records_lost = 0
        self._dropped_recent: dict[DropKey, int] = {}  # since the last flush's log summary
        self._task: asyncio.Task[None] | None = None
        self._atexit_registered = False
        # Feeds that tally fast-path deliveries themselves (``gateway.delivery.ChannelFeed``).
        self._feeds: weakref.WeakSet[Any] = weakref.WeakSet()

    def feed_register(self, feed: Any) -> None:
        """Remember ``feed`` (has ``settle()``) so each flush first moves its tallies in."""
        self._feeds.add(feed)

    def add(self, key: MeterKey, size: int, events: int = 1) -> None:
        """Count ``events`` events (one by default) of ``size`` bytes in all. Hot path: one dict
        lookup, no I/O."""
        entry = self.counts.get(key)
        if entry is None:
            self.counts[key] = [events, size]
        else:
            entry[0] += events
            entry[1] += size

    def latency_add(self, key: MeterKey, bucket: int, events: int = 1) -> None:
        """Count ``events`` events of ``key`` in latency histogram ``bucket`` (``latency_bucket``;
        -1 is ignored)."""
        if bucket < 0:
            return
        full = (*key, bucket)
        self.latency[full] = self.latency.get(full, 0) + events

    def error(self, key: MeterKey, kind: int, events: int = 1) -> None:
        """Count ``events`` events of ``key`` that were not delivered: ``kind`` is ``DROPPED``,
        ``REJECTED`` or ``FAILED`` (never billed)."""
        entry = self.errors.get(key)
        if entry is None:
            entry = self.errors[key] = [0, 0, 0]
        entry[kind] += events

    def drop(self, key: MeterKey) -> None:
        """Count one event dropped for a slow consumer (not delivered, never billed)."""
        self.error(key, DROPPED)
        short = (key[0], key[1])
        self.dropped[short] = self.dropped.get(short, 0) + 1
        self._dropped_recent[short] = self._dropped_recent.get(short, 0) + 1

    def throttle(self, key: MeterKey, size: int) -> None:
        """Count one event of ``size`` bytes stopped by the throttling policy (not delivered,
        never billed; written to the usage rows' ``throttled_events`` at the next flush)."""
        entry = self.throttled.get(key)
        if entry is None:
            self.throttled[key] = [1, size]
        else:
            entry[0] += 1
            entry[1] += size
        self.throttled_total += 1

    def record(self, record: ConnectionRecord | HandshakeRecord) -> None:
        """Queue a finished connection's or a handshake's log row for the next flush."""
        target = self.connections if isinstance(record, ConnectionRecord) else self.handshakes
        target.append(record)

    def drops_log(self) -> int:
        """Log one summary line of the drops since the last call (the largest five); returns
        how many events that was."""
        recent, self._dropped_recent = self._dropped_recent, {}
        total = sum(recent.values())
        if total:
            largest = sorted(recent.items(), key=lambda item: -item[1])[:5]
            log.warning(
                "Slow consumers: %d events dropped since the last flush (%s)",
                total,
                "; ".join(f"subscription {sub} on {template}: {n}" for (sub, template), n in largest),
            )
        return total

    def pending_rows(self) -> int:
        """Usage, latency and log rows waiting for the next flush."""
        return (
            len(self.counts.keys() | self.throttled.keys() | self.errors.keys())
            + len(self.latency)
            + len(self.connections)
            + len(self.handshakes)
        )

    def take(self) -> tuple[list[CountRow], list[LatencyRow], list[ConnectionRecord], list[HandshakeRecord]]:
        """Swap every counter (after settling the feeds' tallies) for an empty one; return the
        usage rows, latency rows and log records to write."""
        for feed in list(self._feeds):
            feed.settle()
        counts, self.counts = self.counts, {}
        throttled, self.throttled = self.throttled, {}
        errors, self.errors = self.errors, {}
        latency, self.latency = self.latency, {}
        connections, self.connections = self.connections, []
        handshakes, self.handshakes = self.handshakes, []
        rows = []
        for key in counts.keys() | throttled.keys() | errors.keys():
            subscription_id, template, direction, minute = key
            values = (*counts.get(key, (0, 0)), *throttled.get(key, (0, 0)), *errors.get(key, (0, 0, 0)))
            rows.append((subscription_id, _minute(minute), template, direction, *values))
        latency_rows = [
            (subscription_id, _minute(minute), template, direction, LATENCY_BOUNDS_US[bucket], events)
            for (subscription_id, template, direction, minute, bucket), events in latency.items()
        ]
        return rows, latency_rows, connections, handshakes

    def restore(self, rows: list[CountRow], latency_rows: list[LatencyRow]) -> None:
        """Merge usage and latency rows a failed write could not store back into the counters."""
        for subscription_id, bucket, template, direction, *values in rows:
            key = (subscription_id, template, direction, int(bucket.timestamp()) // 60)
            for target, part in (
                (self.counts, values[0:2]),
                (self.throttled, values[2:4]),
                (self.errors, values[4:7]),
            ):
                if any(part):
                    entry = target.setdefault(key, [0] * len(part))
                    for index, value in enumerate(part):
                        entry[index] += value
        index_of = {bound: index for index, bound in enumerate(LATENCY_BOUNDS_US)}
        for subscription_id, bucket, template, direction, le_us, events in latency_rows:
            key = (subscription_id, template, direction, int(bucket.timestamp()) // 60, index_of[le_us])
            self.latency[key] = self.latency.get(key, 0) + events

    def restore_records(self, connections: list[ConnectionRecord], handshakes: list[HandshakeRecord]) -> None:
        """Put log records a failed write could not store back in front of the new ones, keeping
        at most ``MAX_PENDING_RECORDS`` of each (the oldest go, counted in ``records_lost``)."""
        for name, old in (("connections", connections), ("handshakes", handshakes)):
            merged = old + getattr(self, name)
            if len(merged) > MAX_PENDING_RECORDS:
                lost = len(merged) - MAX_PENDING_RECORDS
                self.records_lost += lost
                log.warning("Analytics: %d %s log rows dropped (database unreachable too long)", lost, name)
                merged = merged[lost:]
            setattr(self, name, merged)

    def _totals_add(self, rows: list[CountRow]) -> None:
        for row in rows:
            key = (self.api_of.get(row[0], "unknown"), row[3])
            entry = self.totals.get(key)
            if entry is None:
                entry = self.totals[key] = [0] * 7
            for index, value in enumerate(row[4:]):
                entry[index] += value

    async def flush(self) -> int:
        """Write everything counted since the last flush to analytics from a worker thread;
        returns the rows written. On a database error the rows are kept for the next flush
        and 0 is returned."""
        self.drops_log()
        rows, latency_rows, connections, handshakes = self.take()
        if not (rows or latency_rows or connections or handshakes):
            self.last_flush_ok_at = time.time()
            return 0
        written, error, cancelled = await _to_the_end(_usage_write, rows, latency_rows)
        if error is not None:
            log.error(
                "Usage flush of %d rows failed; keeping them for the next flush",
                len(rows),
                exc_info=error,
            )
            self.restore(rows, latency_rows)
            self.restore_records(connections, handshakes)
            self.flushes_failed += 1
            if cancelled:
                raise asyncio.CancelledError
            return 0
        # Only now: a scrape of /metrics never sees a total go down (a failed write's rows
        # are counted by the flush that stores them).
        self._totals_add(rows)
        if cancelled:  # shutting down: the logs go with the final synchronous flush
            self.restore_records(connections, handshakes)
            raise asyncio.CancelledError
        more, error, cancelled = await _to_the_end(_records_write, connections, handshakes)
        if error is not None:
            log.error(
                "Connection/handshake log flush failed; keeping the rows for the next flush", exc_info=error
            )
            self.restore_records(connections, handshakes)
            self.flushes_failed += 1
            if cancelled:
                raise asyncio.CancelledError
            return written
        written += more
        self.flushes_ok += 1
        self.last_flush_ok_at = time.time()
        if cancelled:
            raise asyncio.CancelledError
        return written

    def flush_sync(self) -> None:
        """Final synchronous flush, for ``atexit`` (the event loop has stopped by then)."""
        rows, latency_rows, connections, handshakes = self.take()
        if rows or latency_rows:
            try:
                _usage_write(rows, latency_rows)
            except Exception:
                log.exception("Final usage flush lost %d rows", len(rows) + len(latency_rows))
        if connections or handshakes:
            try:
                _records_write(connections, handshakes)
            except Exception:
                log.exception("Final log flush lost %d rows", len(connections) + len(handshakes))

    def ensure_flushing(self) -> None:
        """Start the periodic flush on the running loop unless it already runs there."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        self._task = loop.create_task(self._flush_forever(), name="eventgate-meter-flush")
        if not self._atexit_registered:
            atexit.register(self.flush_sync)
            self._atexit_registered = True

    async def stop(self) -> None:
        """Stop the periodic flush and write what is left (tests, orderly shutdown)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.flush()

    async def _flush_forever(self) -> None:
        interval = float(settings.GATEWAY_FLUSH_INTERVAL)
        while True:
            await asyncio.sleep(interval)
            await self.flush()


async def _to_the_end(call: Any, *args: Any) -> tuple[Any, BaseException | None, bool]:
    """``call(*args)`` in a worker thread, awaited to its end even when the awaiting task is
    cancelled meanwhile (a shutdown cancels the periodic flush; the thread would finish the
    write anyway, so giving up on it would lose its outcome: rows written twice or lost).
    Returns (its result or None, the exception it raised or None, whether a cancellation
    arrived: the caller re-raises it once it has dealt with the outcome)."""
    future = asyncio.ensure_future(sync_to_async(call, thread_sensitive=False)(*args))
    cancelled = False
    while True:
        try:
            return await asyncio.shield(future), None, cancelled
        except asyncio.CancelledError:
            if future.cancelled():
                raise
            cancelled = True  # and wait again: the write finishes in its thread regardless
        except Exception as exc:  # noqa: BLE001 - handed to the caller, which keeps the rows
            return None, exc, cancelled


def _minute(minute: int) -> datetime:
    return datetime.fromtimestamp(minute * 60, UTC)


def _usage_write(rows: list[CountRow], latency_rows: list[LatencyRow]) -> int:
    # Runs in a worker thread: drop the thread's connection afterwards like a request would.
    try:
        with transaction.atomic():
            return usage_counts_batch(rows=rows) + latency_record_batch(rows=latency_rows)
    finally:
        close_old_connections()


def _records_write(connections: list[ConnectionRecord], handshakes: list[HandshakeRecord]) -> int:
    """Write the log records in one transaction. When the database refuses the batch for what
    is in it (not an outage: ``OperationalError``/``InterfaceError`` propagate so the batch is
    retried), each record is tried alone and those refused are dropped with a warning: one bad
    row must not hold the log back for ever."""
    from gateway.capture import handshakes_resolve

    try:
        try:
            handshakes_resolve(handshakes)
        except (OperationalError, InterfaceError):
            raise
        except Exception:  # noqa: BLE001 - keep the log flowing without the lookups
            log.exception("Looking up refused handshakes' APIs failed; stored without them")
        try:
            with transaction.atomic():
                return connection_record_batch(records=connections) + handshake_record_batch(
                    records=handshakes
                )
        except (OperationalError, InterfaceError):
            raise
        except Exception:  # noqa: BLE001 - a row the database refuses (DataError, IntegrityError, ...)
            log.warning(
                "Log batch refused; writing its %d rows one by one", len(connections) + len(handshakes)
            )
        written = 0
        for record in [*connections, *handshakes]:
            try:
                with transaction.atomic():
                    if isinstance(record, ConnectionRecord):
                        written += connection_record_batch(records=[record])
                    else:
                        written += handshake_record_batch(records=[record])
            except (OperationalError, InterfaceError):
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("Dropped a %s log row the database refuses: %r", type(record).__name__, exc)
        return written
    finally:
        close_old_connections()


_meter = Meter()


def get_meter() -> Meter:
    """The process's meter (counters are shared by every consumer in the process)."""
    return _meter
