"""``manage.py demo_backend``: the demo provider backend, publishing simulated events forever.

Stock ticks for every symbol of ``stock-prices`` (default 20 events/s in all, so each of the
8 symbols ticks a few times a second) and departure updates for every station of
``train-departures`` (default 2 events/s), through ``gateway.publishing`` — the same path a
real provider uses. It survives RabbitMQ restarts: while the broker is away, events are
dropped (they are live data) and publishing resumes once the robust connection is back.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from gateway.publishing import EventPublisher
from portal.demo import STOCK_PRICES, TRAIN_DEPARTURES, DemoAPI
from portal.demo.feeds import DepartureBoard, StockTicker

log = logging.getLogger(__name__)

# Returns (channel address, payload) for one event; called with no arguments.
Feed = Callable[..., tuple[str, dict[str, Any]]]
RETRY_SECONDS = 2.0


class Command(BaseCommand):
    help = (
        "Publish simulated stock ticks and train departure updates to RabbitMQ (the demo provider backend)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--stock-rate", type=float, default=20.0, help="Stock ticks per second, all symbols."
        )
        parser.add_argument("--departure-rate", type=float, default=2.0, help="Departure updates per second.")
        parser.add_argument(
            "--seconds", type=float, default=0.0, help="Stop after this long (0: run forever)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        rng = random.Random()
        feeds = [
            (
                STOCK_PRICES,
                StockTicker(STOCK_PRICES.parameter_enum("symbol"), rng=rng).tick,
                options["stock_rate"],
            ),
            (
                TRAIN_DEPARTURES,
                DepartureBoard(TRAIN_DEPARTURES.parameter_enum("station"), rng=rng).update,
                options["departure_rate"],
            ),
        ]
        self.stdout.write(
            f"Publishing demo events: {options['stock_rate']:g}/s stock ticks, "
            f"{options['departure_rate']:g}/s departure updates. Ctrl-C stops."
        )
        try:
            asyncio.run(demo_publish(feeds, seconds=options["seconds"]))
        except KeyboardInterrupt:
            pass


async def demo_publish(feeds: Sequence[tuple[DemoAPI, Feed, float]], *, seconds: float = 0.0) -> None:
    """Run every feed at its rate (events/s) over one publisher until ``seconds`` pass (0: forever)."""
    publisher = await _connected_publisher()
    try:
        tasks = [
            asyncio.create_task(_feed_publish(publisher, api, feed, rate))
            for api, feed, rate in feeds
            if rate > 0
        ]
        await asyncio.wait(tasks, timeout=seconds or None)
        for task in tasks:
            task.cancel()
    finally:
        await publisher.close()


async def _connected_publisher() -> EventPublisher:
    # The first connection is not robust yet (aio-pika fails fast): retry until RabbitMQ answers.
    while True:
        publisher = EventPublisher(name="eventgate-demo-backend")
        try:
            await publisher.connect()
            return publisher
        except Exception as exc:  # noqa: BLE001 - any connection error: wait and retry
            log.warning("RabbitMQ unavailable (%s); retrying in %.0f s", exc, RETRY_SECONDS)
            await asyncio.sleep(RETRY_SECONDS)


async def _feed_publish(publisher: EventPublisher, api: DemoAPI, feed: Feed, rate: float) -> None:
    loop = asyncio.get_running_loop()
    interval, next_at, failing = 1.0 / rate, loop.time(), False
    while True:
        address, payload = feed()
        try:
            await publisher.publish(api=api.slug, version=api.version, address=address, payload=payload)
            if failing:
                log.warning("Publishing %s events again", api.slug)
            failing = False
        except Exception as exc:  # noqa: BLE001 - broker down or reconnecting: drop, keep going
            if not failing:
                log.warning(
                    "Publishing %s events failed (%s); retrying while RabbitMQ recovers", api.slug, exc
                )
            failing = True
            await asyncio.sleep(RETRY_SECONDS / 4)
        next_at = max(next_at + interval * random.expovariate(1.0), loop.time() - 1.0)
        await asyncio.sleep(max(0.0, next_at - loop.time()))
