"""The consumer's usage page: events and bytes per subscription, from the same rows billing reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Sum
from django.db.models.functions import TruncHour
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from analytics.models import UsageRecord
from analytics.services import UsageTotals, usage_for_subscription
from portal.models import Subscription

RECENT_ROWS = 30
CHART_HOURS = 24


@dataclass
class SubscriptionUsage:
    subscription: Subscription
    this_month: UsageTotals
    all_time: UsageTotals
    recent: list[dict[str, Any]] = field(default_factory=list)
    chart: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def chart_id(self) -> str:
        return f"usage-chart-{self.subscription.pk}"


def _month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _recent_rows(subscription: Subscription, granularity: str) -> list[dict[str, Any]]:
    """The newest usage rows, per minute as stored or summed per hour."""
    records = UsageRecord.objects.filter(subscription=subscription)
    if granularity == "hour":
        rows = (
            records.annotate(bucket=TruncHour("bucket_start"))
            .values("bucket", "channel", "direction")
            .annotate(events=Sum("events"), bytes=Sum("bytes"))
            .order_by("-bucket", "channel", "direction")
        )
    else:
        rows = records.values("bucket_start", "channel", "direction", "events", "bytes").order_by(
            "-bucket_start", "channel"
        )
    labels = dict(UsageRecord.Direction.choices)
    return [
        {
            **row,
            "bucket": row.get("bucket") or row["bucket_start"],
            "direction_label": labels[row["direction"]],
        }
        for row in rows[:RECENT_ROWS]
    ]


def _hourly_chart(subscription: Subscription, now: datetime) -> dict[str, list[Any]]:
    """Events delivered per hour over the last day, oldest first, with empty hours as zero."""
    end = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=CHART_HOURS)
    rows = (
        UsageRecord.objects.filter(
            subscription=subscription, direction=UsageRecord.Direction.OUT, bucket_start__gte=start
        )
        .annotate(hour=TruncHour("bucket_start"))
        .values("hour")
        .annotate(total=Sum("events"))
    )
    sums = {row["hour"]: row["total"] for row in rows}
    hours = [start + timedelta(hours=i) for i in range(CHART_HOURS)]
    return {"labels": [f"{hour:%H:00}" for hour in hours], "events": [sums.get(hour, 0) for hour in hours]}


@login_required
def usage(request: HttpRequest) -> HttpResponse:
    """Usage of each of the user's subscriptions: this month, all time, and recent rows."""
    granularity = "hour" if request.GET.get("by") == "hour" else "minute"
    now = timezone.now()
    subscriptions = (
        Subscription.objects.filter(application__owner=request.user)
        .select_related("application", "api", "plan")
        .order_by("application__name", "api__name")
    )
    usages = [
        SubscriptionUsage(
            subscription=subscription,
            this_month=usage_for_subscription(subscription=subscription, start=_month_start(now)),
            all_time=usage_for_subscription(subscription=subscription),
            recent=_recent_rows(subscription, granularity),
            chart=_hourly_chart(subscription, now),
        )
        for subscription in subscriptions
    ]
    context = {"usages": usages, "granularity": granularity, "month_start": _month_start(now), "now": now}
    return render(request, "analytics/usage.html", context)
