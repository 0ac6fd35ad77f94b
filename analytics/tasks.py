"""Analytics' Celery tasks: thin wrappers around ``analytics.rollup``.

``analytics_rollup_task`` runs on Celery beat every ``ANALYTICS_ROLLUP_SCHEDULE_SECONDS``
(``CELERY_BEAT_SCHEDULE`` in settings). Every run can be repeated or overlap another without harm
(``analytics.rollup``: rows are set to exact sums, marks only move forward, under a row lock).
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from analytics.rollup import analytics_rollup

logger = logging.getLogger(__name__)


@shared_task
def analytics_rollup_task() -> dict[str, object]:
    """Roll minute usage and latency rows up into hours, hours into days, then delete rows past
    their retention. Returns ``{"hour": ISO mark, "day": ISO mark, "deleted": {model: rows}}``
    (marks None before the first roll-up)."""
    run = analytics_rollup(now=timezone.now())
    hour, day, deleted = run.hour, run.day, run.deleted
    summary = {
        "hour": hour.rolled_until.isoformat() if hour.rolled_until else None,
        "day": day.rolled_until.isoformat() if day.rolled_until else None,
        "deleted": deleted,
    }
    logger.info(
        "Analytics roll-up: hours until %s (%d usage, %d latency rows), days until %s (%d usage, "
        "%d latency rows), deleted %s",
        summary["hour"],
        hour.usage_rows,
        hour.latency_rows,
        summary["day"],
        day.usage_rows,
        day.latency_rows,
        deleted or "nothing",
    )
    return summary
