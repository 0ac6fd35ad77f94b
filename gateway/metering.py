"""Usage metering: events and bytes delivered, counted in process memory, flushed in batches.

Per delivery the gateway adds to one flat dict keyed by
``(subscription id, channel template, direction, minute)`` where ``minute`` is Unix time // 60;
values are ``[events, bytes]``. Deliveries on the fan-out fast path (``gateway.wire``) are
first tallied on their ``ChannelFeed`` (two integer additions) and moved into that dict when the
minute changes, when the connection ends and before every flush. Every
``settings.GATEWAY_FLUSH_INTERVAL`` seconds the dict is swapped for an empty one and written
through ``analytics.services.usage_record_batch`` in a worker thread, so the event loop never
waits for the database.

Durability: a failed write is merged back and retried at the next flush; on a clean shutdown
(SIGTERM/SIGINT, the process exits normally) an ``atexit`` hook writes what is left. A crash
(SIGKILL, OOM) loses at most the counts of the last flush interval.

Throttled events (stopped by the business plan's throttling policy, ``gateway.throttling``) are
counted per (subscription, channel template, direction, minute) in ``Meter.throttled`` and
written in the same flush to ``UsageRecord.throttled_events``/``throttled_bytes``: never to
``events``, so they are never billed.

Dropped events (a slow consumer's full outbox, ``gateway.delivery``) are never metered as
delivered. They are counted per (subscription id, channel template) in process memory only:
analytics has no row for them (``UsageRecord`` is what billing reads). Totals since the process
started are in ``Meter.dropped`` (shown by ``/gateway/status``), and each flush that saw new
drops logs one WARNING summary line (logger ``gateway.metering``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import weakref
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, transaction

from analytics.services import UsageRow, throttled_record_batch, usage_record_batch

log = logging.getLogger(__name__)

# (subscription id, channel template, direction "out"/"in", minute = Unix seconds // 60)
MeterKey = tuple[int, str, str, int]
# (subscription id, channel template)
DropKey = tuple[int, str]


class Meter:
    """In-memory usage counters of one process (see the module docstring)."""

    def __init__(self) -> None:
        self.counts: dict[MeterKey, list[int]] = {}
        self.dropped: dict[DropKey, int] = {}  # events dropped since the process started
        # Events the throttling policy stopped, [events, bytes] per key (gateway.throttling).
        self.throttled: dict[MeterKey, list[int]] = {}
        self.throttled_total = 0  # since the process started
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

    def drop(self, subscription_id: int, channel_template: str) -> None:
        """Count one event dropped for a slow consumer (not delivered, never billed)."""
        key = (subscription_id, channel_template)
        self.dropped[key] = self.dropped.get(key, 0) + 1
        self._dropped_recent[key] = self._dropped_recent.get(key, 0) + 1

    def throttle(self, key: MeterKey, size: int) -> None:
        """Count one event of ``size`` bytes stopped by the throttling policy (not delivered,
        never billed; written to ``UsageRecord.throttled_events`` at the next flush)."""
        entry = self.throttled.get(key)
        if entry is None:
            self.throttled[key] = [1, size]
        else:
            entry[0] += 1
            entry[1] += size
        self.throttled_total += 1

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

    def take_rows(self) -> list[UsageRow]:
        """Swap the counters (and the feeds' tallies) for empty ones; return them as
        ``usage_record_batch`` rows."""
        for feed in list(self._feeds):
            feed.settle()
        counts, self.counts = self.counts, {}
        return [
            (subscription_id, datetime.fromtimestamp(minute * 60, UTC), template, direction, events, size)
            for (subscription_id, template, direction, minute), (events, size) in counts.items()
        ]

    def restore_rows(self, rows: list[UsageRow]) -> None:
        """Merge rows a failed write could not store back into the counters."""
        for subscription_id, bucket, template, direction, events, size in rows:
            key = (subscription_id, template, direction, int(bucket.timestamp()) // 60)
            entry = self.counts.setdefault(key, [0, 0])
            entry[0] += events
            entry[1] += size

    def take_throttled(self) -> list[UsageRow]:
        """Swap the throttled counters for empty ones; return them as rows."""
        counts, self.throttled = self.throttled, {}
        return [
            (subscription_id, datetime.fromtimestamp(minute * 60, UTC), template, direction, events, size)
            for (subscription_id, template, direction, minute), (events, size) in counts.items()
        ]

    def restore_throttled(self, rows: list[UsageRow]) -> None:
        """Merge throttled rows a failed write could not store back."""
        for subscription_id, bucket, template, direction, events, size in rows:
            key = (subscription_id, template, direction, int(bucket.timestamp()) // 60)
            entry = self.throttled.setdefault(key, [0, 0])
            entry[0] += events
            entry[1] += size

    async def flush(self) -> int:
        """Write the counters (delivered, then throttled) to analytics from a worker thread;
        returns rows written.

        On a database error the rows are kept for the next flush and 0 is returned.
        """
        self.drops_log()
        rows, throttled = self.take_rows(), self.take_throttled()
        if not rows and not throttled:
            return 0
        try:
            return await sync_to_async(_usage_write, thread_sensitive=False)(rows, throttled)
        except Exception:
            log.exception(
                "Usage flush of %d rows failed; keeping them for the next flush", len(rows) + len(throttled)
            )
            self.restore_rows(rows)
            self.restore_throttled(throttled)
            return 0

    def flush_sync(self) -> None:
        """Final synchronous flush, for ``atexit`` (the event loop has stopped by then)."""
        rows, throttled = self.take_rows(), self.take_throttled()
        if rows or throttled:
            try:
                _usage_write(rows, throttled)
            except Exception:
                log.exception("Final usage flush lost %d rows", len(rows) + len(throttled))

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


def _usage_write(rows: list[UsageRow], throttled: list[UsageRow] | None = None) -> int:
    # Runs in a worker thread: drop the thread's connection afterwards like a request would.
    try:
        with transaction.atomic():
            written = usage_record_batch(rows=rows)
            return written + (throttled_record_batch(rows=throttled) if throttled else 0)
    finally:
        close_old_connections()


_meter = Meter()


def get_meter() -> Meter:
    """The process's meter (counters are shared by every consumer in the process)."""
    return _meter
