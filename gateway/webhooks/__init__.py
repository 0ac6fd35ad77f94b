"""Webhooks in the style of W3C WebSub: registration, intent verification, signed delivery with
retries and dead letters, redelivery (``docs/webhooks.md``).

- ``gateway.webhooks.addresses``: the callback URL policy (public addresses only unless
  ``WEBHOOK_ALLOW_PRIVATE_ADDRESSES``) and pinned-address HTTP requests;
- ``gateway.webhooks.services``: what the portal, REST API, Celery tasks and the dispatcher call;
- ``gateway.webhooks.dispatcher``: the process that turns RabbitMQ events into deliveries
  (``manage.py webhook_dispatcher``);
"""
