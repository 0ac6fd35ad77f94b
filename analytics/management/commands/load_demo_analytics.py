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
        rng = random.Random(subscription.pk)  # the same made-up week on every machine
        version = subscription.api.versions.order_by("-created").first()
        templates = [channel.address for channel in version.channels.all()][:3] if version else []
        templates = templates or ["events"]
        rows, latency = [], []
        start = now - timedelta(days=DAYS)
        minute = start
        while minute < now:
            recent = now - minute <= timedelta(hours=24)
            step = timedelta(minutes=1) if recent else timedelta(hours=1)
            hour = minute.hour
            daily = 0.55 + 0.45 * abs(12 - abs(hour - 14)) / 12  # busier in the afternoon (UTC)
            for index, template in enumerate(templates):
                per_minute = max(1, int(rng.gauss(40, 8) * daily / (index + 1)))
                events = per_minute * (1 if recent else 60)
                size = events * rng.randint(180, 420)
                throttled = events // 50 if rng.random() < 0.08 else 0
                dropped = rng.randint(1, 4) if rng.random() < 0.03 else 0
                rejected = 1 if rng.random() < 0.02 else 0
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
                if rejected:
                    rows.append((subscription.pk, minute, template, "in", 0, 0, 0, 0, 0, rejected, 0))
                for le_us, share in ((2000, 0.35), (3000, 0.35), (5000, 0.2), (10000, 0.08), (50000, 0.02)):
                    assert le_us in LATENCY_BOUNDS_US
                    count = int(events * share)
                    if count:
                        latency.append((subscription.pk, minute, template, "out", le_us, count))
            minute += step
        written = usage_counts_batch(rows=rows) + latency_record_batch(rows=latency)
        records, handshakes = [], []
        opened = start + timedelta(hours=2)
        while opened < now - timedelta(hours=1):
            duration = rng.uniform(120, 4 * 3600)
            closed = min(opened + timedelta(seconds=duration), now - timedelta(minutes=5))
            events = int((closed - opened).total_seconds() * rng.uniform(0.3, 0.7))
            code, reason = rng.choice(
                [(1000, "closed by the client"), (1001, "closed by the client"), (4429, "rate limit")]
            )
            ip, agent = f"203.0.113.{rng.randint(2, 250)}", rng.choice(AGENTS)
            common = {
                "subscription_id": subscription.pk,
                "application_id": subscription.application_id,
                "api_id": subscription.api_id,
                "client_ip": ip,
                "user_agent": agent,
                "process": DEMO_PROCESS,
            }
            records.append(
                ConnectionRecord(
                    **common,
                    version=version.version if version else "",
                    protocol=rng.choice(["websocket", "websocket", "sse"]),
                    channels=templates[0],
                    opened_at=opened,
                    closed_at=closed,
                    duration_seconds=round((closed - opened).total_seconds(), 3),
                    close_code=code,
                    close_reason=reason,
                    events_out=events,
                    bytes_out=events * 300,
                    throttled_events=events // 40 if code == 4429 else 0,
                )
            )
            outcome = "accepted" if rng.random() < 0.9 else rng.choice(["quota_exhausted", "not_found"])
            handshakes.append(
                HandshakeRecord(
                    **common,
                    at=opened,
                    outcome=outcome,
                    code=None if outcome == "accepted" else (4429 if outcome == "quota_exhausted" else 4404),
                    protocol="websocket",
                    version=version.version if version else "",
                    channel=templates[0],
                )
            )
            opened = closed + timedelta(minutes=rng.uniform(5, 240))
        return written + connection_record_batch(records=records) + handshake_record_batch(records=handshakes)
