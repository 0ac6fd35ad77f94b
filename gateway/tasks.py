"""Celery tasks of the gateway: webhook intent verification and delivery (thin: ids in, services do
the work; ``gateway.webhooks.services``)."""

from __future__ import annotations

from celery import shared_task

from gateway.webhooks.services import webhook_deliver, webhook_verify


@shared_task(ignore_result=True)
def webhook_verify_task(webhook_id: int) -> None:
    """Verify intent of webhook ``webhook_id`` once (WebSub §5.3); the result is on the webhook."""
    webhook_verify(webhook_id=webhook_id)


@shared_task(bind=True, ignore_result=True, max_retries=None, acks_late=True, reject_on_worker_lost=True)
def webhook_deliver_task(self, delivery_id: str) -> None:  # type: ignore[no-untyped-def]
    """One attempt of delivery ``delivery_id``; a failed attempt with attempts left is retried by
    Celery after the backoff delay the service returns (``WEBHOOK_RETRY_BASE_DELAY * 2**(n-1)``
    seconds). Running twice is harmless: the service claims the delivery first. A delivery the
    plan throttles (``gateway.webhooks.services.delivery_throttle``) or cancels is final: no
    retry."""
    retry_in = webhook_deliver(delivery_id=delivery_id)
    if retry_in is not None:
        raise self.retry(countdown=retry_in)
