"""The webhook dispatcher: RabbitMQ events in, one delivery row and Celery task per webhook out.

Shape (``manage.py webhook_dispatcher``; ``docs/webhooks.md``):

- one robust aio-pika connection per process (reconnects every second; the durable queue, its
  bindings and the consumer are restored by aio-pika);
- one **durable** queue, ``WEBHOOK_DISPATCH_QUEUE`` (default ``eventgate.webhooks``), shared by
  every dispatcher process (they compete for its messages), consumed with manual acks: an event
  is acknowledged only after its deliveries are stored, so events published while no dispatcher
  runs, or during a crash, wait in the queue (while RabbitMQ itself stays up: events are
  transient messages);
- one binding per routing key with a deliverable webhook (``WebhookSubscription.objects
  .deliverable()``). The database is the source of truth, polled every
  ``WEBHOOK_DISPATCH_POLL_INTERVAL`` seconds: bindings are added for new keys and removed for
  keys nobody needs any more. A binding left over from an earlier run (the queue outlives the
  process) is removed as soon as an event arrives through it;
- events are taken in batches of up to ``BATCH_EVENTS``: each is framed once (the WebSocket
  frame, ``gateway.bridge.frame_build``), stored as one ``WebhookDelivery`` per webhook in one
  transaction, then acknowledged; the Celery tasks are queued after commit.

Between polls the same loop meters delivered deliveries (every ``GATEWAY_FLUSH_INTERVAL``
seconds), re-queues deliveries whose task was lost, renews leases and prunes old deliveries.
Per-attempt metrics (``analytics.WebhookRecord``, delivery latency, dead letters) are not
batched here: the Celery worker writes them with each attempt's outcome, in the same
transaction (``gateway.webhooks.services._attempt_finish`` says why).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from gateway.bridge import frame_build
from gateway.publishing import amqp_connect, exchange_declare
from gateway.webhooks.services import (
    EventForWebhooks,
    WebhookRoute,
    webhook_deliveries_create,
    webhook_deliveries_prune,
    webhook_deliveries_sweep,
    webhook_leases_renew,
    webhook_routes,
    webhook_usage_flush,
)

log = logging.getLogger(__name__)

BATCH_EVENTS = 200
SWEEP_INTERVAL = 30.0  # seconds: lost tasks, lease renewals
PRUNE_INTERVAL = 3600.0  # seconds: old deliveries
T = TypeVar("T")


async def _in_thread(function: Callable[..., T], **kwargs: Any) -> T:
    """Run ORM work in Django's sync thread, dropping a broken or old DB connection afterwards."""

    def work() -> T:
        try:
            return function(**kwargs)
        finally:
            close_old_connections()

    return await sync_to_async(work, thread_sensitive=True)()


class WebhookDispatcher:
    """The dispatcher of one process (see the module docstring)."""

    def __init__(self, *, queue_name: str | None = None) -> None:
        self.queue_name = queue_name or settings.WEBHOOK_DISPATCH_QUEUE
        self.poll_interval = float(settings.WEBHOOK_DISPATCH_POLL_INTERVAL)
        self.flush_interval = float(settings.GATEWAY_FLUSH_INTERVAL)
        self.routes: dict[str, WebhookRoute] = {}
        self.dropped = 0  # events whose body is not one JSON value, or too big
        self._bound: set[str] = set()
        self._announced: set[tuple[int, str]] = set()  # (webhook id, routing key) logged as routed
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None

    async def connect(self, stop: asyncio.Event) -> bool:
        """Connect and declare the exchange and the durable queue, retrying every 2 s until
        RabbitMQ answers or ``stop`` is set; returns whether it connected."""
        while not stop.is_set():
            try:
                connection = await amqp_connect(name=f"eventgate-webhooks pid={os.getpid()}")
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=BATCH_EVENTS * 2)
                self._exchange = await exchange_declare(channel)
                self._queue = await channel.declare_queue(self.queue_name, durable=True)
            except Exception as exc:  # noqa: BLE001 - any connection or declaration error: retry
                log.warning("Webhook dispatcher cannot reach RabbitMQ (%s); retrying in 2 s", exc)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=2)
                except TimeoutError:
                    pass
                continue
            self._connection = connection
            return True
        return False

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set, then stop consuming, meter what is left and close."""
        if not await self.connect(stop):
            return
        assert self._queue is not None and self._connection is not None
        await self.refresh()
        consumer_tag = await self._queue.consume(self._on_message)
        log.info(
            "Webhook dispatcher ready: queue %s, %d routing keys bound", self.queue_name, len(self._bound)
        )
        workers = [
            asyncio.create_task(self._dispatch_forever(), name="webhook-dispatch"),
            asyncio.create_task(self._upkeep_forever(), name="webhook-upkeep"),
        ]
        try:
            await stop.wait()
        finally:
            try:
                await self._queue.cancel(consumer_tag)
            except Exception as exc:  # noqa: BLE001 - closing anyway
                log.warning("Could not cancel the webhook consumer: %s", exc)
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self._flush_usage()
            # Unacknowledged events in the inbox go back to the queue when the channel closes.
            await self._connection.close()
            log.info("Webhook dispatcher stopped")

    async def refresh(self) -> None:
        """Reload the routes from the database and make the queue's bindings match them.

        The routes change first, so an event of a key being bound finds its webhooks, and an
        event of a key being unbound is recognised as stale.
        """
        self.routes = await _in_thread(webhook_routes)
        wanted = set(self.routes)
        for key in sorted(wanted - self._bound):
            await self._bind(key)
        for key in sorted(self._bound - wanted):
            await self._unbind(key)
        self._announce()

    def _announce(self) -> None:
        """Log each webhook that starts receiving events (its key is bound and it is routed)
        or stops; tests and operators wait for these lines."""
        current = {
            (webhook_id, key)
            for key, route in self.routes.items()
            if key in self._bound
            for webhook_id in route.webhook_ids
        }
        for webhook_id, key in sorted(current - self._announced):
            log.info("Webhook dispatcher delivers to webhook %d (%s)", webhook_id, key)
        for webhook_id, key in sorted(self._announced - current):
            log.info("Webhook dispatcher stopped delivering to webhook %d (%s)", webhook_id, key)
        self._announced = current

    async def _bind(self, key: str) -> None:
        assert self._queue is not None and self._exchange is not None
        try:
            await self._queue.bind(self._exchange, key, timeout=10)
        except Exception as exc:  # noqa: BLE001 - the next refresh tries again
            log.warning("Could not bind %s: %s", key, exc)
            return
        self._bound.add(key)
        log.info("Webhook dispatcher bound %s", key)

    async def _unbind(self, key: str) -> None:
        assert self._queue is not None and self._exchange is not None
        try:
            await self._queue.unbind(self._exchange, key, timeout=10)
        except Exception as exc:  # noqa: BLE001 - the next refresh (or event) tries again
            log.warning("Could not unbind %s: %s", key, exc)
            return
        self._bound.discard(key)
        log.info("Webhook dispatcher unbound %s", key)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(message)

    async def _dispatch_forever(self) -> None:
        while True:
            batch = [await self._inbox.get()]
            while len(batch) < BATCH_EVENTS and not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            await self.dispatch(batch)

    async def dispatch(self, batch: list[AbstractIncomingMessage]) -> None:
        """Store the deliveries of ``batch`` and acknowledge it; on a database error, return the
        events to the queue (``nack`` with requeue) and pause a second."""
        events, stale = [], set()
        for message in batch:
            key = message.routing_key or ""
            route = self.routes.get(key)
            if route is None:
                stale.add(key)
                continue
            event_id = message.message_id or str(uuid.uuid4())
            try:
                frame = frame_build(
                    event_id=event_id,
                    channel_fragment=',"channel":' + json.dumps(route.address) + ',"published_at":',
                    published_at=message.headers.get("eg-published-at"),
                    body=message.body,
                )
            except ValueError as invalid:
                self.dropped += 1
                log.warning("Dropped event %s on %s: %s", message.message_id, key, invalid)
                continue
            events.append(EventForWebhooks(event_id=event_id, frame=frame, webhook_ids=route.webhook_ids))
        try:
            await _in_thread(webhook_deliveries_create, events=events)
        except Exception:
            log.exception(
                "Could not store %d webhook deliveries; returning the events to the queue", len(events)
            )
            await self._settle(batch, ack=False)
            await asyncio.sleep(1)
            return
        await self._settle(batch, ack=True)
        for key in stale - set(self.routes):
            await self._unbind(key)

    async def _settle(self, batch: list[AbstractIncomingMessage], *, ack: bool) -> None:
        for message in batch:
            try:
                await (message.ack() if ack else message.nack(requeue=True))
            except Exception as exc:  # noqa: BLE001 - channel gone: RabbitMQ redelivers, rows dedupe
                log.warning("Could not settle event %s: %s", message.message_id, exc)

    async def _flush_usage(self) -> None:
        try:
            metered = await _in_thread(webhook_usage_flush)
        except Exception:
            log.exception("Webhook usage flush failed; the deliveries are metered at the next flush")
        else:
            if metered:
                log.debug("Metered %d webhook deliveries", metered)

    async def _upkeep_forever(self) -> None:
        last_flush = last_sweep = last_prune = time.monotonic()
        while True:
            await asyncio.sleep(self.poll_interval)
            now = time.monotonic()
            try:
                await self.refresh()
                if now - last_flush >= self.flush_interval:
                    last_flush = now
                    await self._flush_usage()
                if now - last_sweep >= SWEEP_INTERVAL:
                    last_sweep = now
                    await _in_thread(webhook_deliveries_sweep)
                    await _in_thread(webhook_leases_renew)
                if now - last_prune >= PRUNE_INTERVAL:
                    last_prune = now
                    await _in_thread(webhook_deliveries_prune)
            except Exception:
                log.exception("Webhook dispatcher upkeep failed; trying again in %.1f s", self.poll_interval)
