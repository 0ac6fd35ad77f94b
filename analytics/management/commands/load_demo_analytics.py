"""``manage.py load_demo_analytics``: a week of made-up analytics history for the demo
consumer's subscriptions, so the dashboards have something to show on a fresh ``make run``
(the live demo backend adds real traffic on top). Writes through the same batch writers as the
gateway; does nothing if the history is there already."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from analytics.models import LATENCY_BOUNDS_US, ConnectionRecord, HandshakeRecord
from analytics.services import (
    connection_record_batch,
    handshake_record_batch,
    latency_record_batch,
    usage_counts_batch,
)
from portal.models import Subscription

CONSUMER_EMAIL = "consumer@eventgate.local"
DEMO_PROCESS = "demo-history"
DAYS = 7
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0", "python-websockets/15.0", "okhttp/4.12.0"]


class Command(BaseCommand):
    help = "Write a week of demo analytics history for the demo consumer (demo only; idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        subscriptions = list(
            Subscription.objects.filter(application__owner__email=CONSUMER_EMAIL, status="active")
            .select_related("api", "application")
            .prefetch_related("api__versions__channels")
        )
        if not subscriptions:
            self.stdout.write(
                "Demo analytics: no demo consumer subscriptions (run `manage.py load_demo` first)."
            )
            return
        if ConnectionRecord.objects.filter(process=DEMO_PROCESS).exists():
            self.stdout.write("Demo analytics: history already loaded.")
            return
        now = timezone.now().replace(second=0, microsecond=0)
        written = sum(self._history(subscription, now) for subscription in subscriptions)
        self.stdout.write(
            f"Demo analytics: {written:,} rows of history for {len(subscriptions)} subscription(s)."
        )

    def _history(self, subscription: Subscription, now: datetime) -> int:
        """A chain of connections over the week (a client reconnecting every few hours) and the
        usage they carried: every usage row falls inside one connection, whose record sums its
        rows, so the connection history agrees with the charts."""
        rng = random.Random(subscription.pk)  # the same made-up week on every machine
        version = subscription.api.versions.order_by("-created").first()
        templates = [channel.address for channel in version.channels.all()][:3] if version else []
        templates = templates or ["events"]
        start = now - timedelta(days=DAYS)
        spans, opened = [], start
        while opened < now - timedelta(minutes=30):
            closed = min(opened + timedelta(minutes=rng.randint(60, 6 * 60)), now - timedelta(minutes=10))
            spans.append([opened, closed, 0, 0, 0, 0])  # opened, closed, events, bytes, throttled, dropped
            opened = closed + timedelta(minutes=rng.randint(0, 20))
        rows, latency = [], []
        minute, span = start, 0
        while minute < now and span < len(spans):
            recent = now - minute <= timedelta(hours=24)
            step = timedelta(minutes=1) if recent else timedelta(minutes=10)
            while span < len(spans) and spans[span][1] <= minute:
                span += 1
            if span == len(spans):
                break
            current = spans[span]
            if current[0] <= minute:
                daily = 0.55 + 0.45 * abs(12 - abs(minute.hour - 14)) / 12  # busier in the afternoon (UTC)
                for index, template in enumerate(templates):
                    per_minute = max(1, int(rng.gauss(40, 8) * daily / (index + 1)))
                    events = per_minute * int(step.total_seconds() // 60)
                    size = events * rng.randint(180, 420)
                    throttled = events // 50 if rng.random() < 0.08 else 0
                    dropped = rng.randint(1, 4) if rng.random() < 0.03 else 0
                    rows.append(
                        (
                            subscription.pk,
                            minute,
                            template,
                            "out",
                            events,
                            size,
                            throttled,
                            throttled * 300,
                            dropped,
                            0,
                            0,
                        )
                    )
                    current[2:6] = [
                        current[2] + events,
                        current[3] + size,
                        current[4] + throttled,
                        current[5] + dropped,
                    ]
                    if rng.random() < 0.02:
                        rows.append((subscription.pk, minute, template, "in", 0, 0, 0, 0, 0, 1, 0))
                    for le_us, share in (
                        (2000, 0.35),
                        (3000, 0.35),
                        (5000, 0.2),
                        (10000, 0.08),
                        (50000, 0.02),
                    ):
                        assert le_us in LATENCY_BOUNDS_US
                        if int(events * share):
                            latency.append(
                                (subscription.pk, minute, template, "out", le_us, int(events * share))
                            )
            minute += step
        written = usage_counts_batch(rows=rows) + latency_record_batch(rows=latency)
        records, handshakes = [], []
        for opened, closed, events, size, throttled, dropped in spans:
            if throttled and rng.random() < 0.3:
                code, reason = 4429, "events rate limit of the plan reached"
            else:
                code, reason = rng.choice([(1000, "closed by the client"), (1001, "closed by the client")])
            common = {
                "subscription_id": subscription.pk,
                "application_id": subscription.application_id,
                "api_id": subscription.api_id,
                "client_ip": f"203.0.113.{rng.randint(2, 250)}",
                "user_agent": rng.choice(AGENTS),
                "process": DEMO_PROCESS,
            }
            records.append(
                ConnectionRecord(
                    **common,
                    version=version.version if version else "",
                    protocol=rng.choice(["websocket", "websocket", "sse"]),
                    channels=",".join(sorted(templates)),
                    opened_at=opened,
                    closed_at=closed,
                    duration_seconds=(closed - opened).total_seconds(),
                    close_code=code,
                    close_reason=reason,
                    events_out=events,
                    bytes_out=size,
                    throttled_events=throttled,
                    dropped_events=dropped,
                )
            )
            handshakes.append(
                HandshakeRecord(
                    **common,
                    at=opened,
                    outcome="accepted",
                    protocol="websocket",
                    version=version.version if version else "",
                    channel=templates[0],
                )
            )
            if rng.random() < 0.15:  # now and then a client tries an expired key first
                handshakes.append(
                    HandshakeRecord(
                        **common,
                        at=opened - timedelta(seconds=5),
                        outcome="invalid_token",
                        code=4401,
                        detail="unknown, invalid, revoked or expired credential",
                        protocol="websocket",
                        version=version.version if version else "",
                        channel=templates[0],
                    )
                )
        return written + connection_record_batch(records=records) + handshake_record_batch(records=handshakes)
