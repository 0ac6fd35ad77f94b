"""``manage.py webhook_dispatcher``: turn RabbitMQ events into webhook deliveries until stopped."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from gateway.webhooks.dispatcher import WebhookDispatcher


class Command(BaseCommand):
    help = (
        "Consume events for webhook subscriptions from RabbitMQ (one durable queue) and queue a "
        "Celery delivery task per webhook. Runs until SIGTERM or SIGINT. See docs/webhooks.md."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queue", default=None, help="RabbitMQ queue name (default: WEBHOOK_DISPATCH_QUEUE)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        asyncio.run(self._run(options["queue"]))

    async def _run(self, queue_name: str | None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await WebhookDispatcher(queue_name=queue_name).run(stop)
