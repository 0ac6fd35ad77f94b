"""The event publishing contract: how a provider backend hands events to the gateway.

Events go to the durable topic exchange ``settings.EVENTGATE_EXCHANGE`` on RabbitMQ, one AMQP
message per event (the full contract is in ``docs/gateway.md``):

- routing key: ``<api slug>.<version>.<address segment>.<address segment>...`` — the concrete
  channel address split on ``/`` (leading and trailing ``/`` dropped), and in every part ``%``,
  ``.``, ``*`` and ``#`` percent-encoded (``%25``, ``%2E``, ``%2A``, ``%23``), so versions such as
  ``1.0.0`` and addresses with dots stay one topic word each. Example: API ``stock-prices``,
  version ``1.0.0``, address ``prices/ACME`` → ``stock-prices.1%2E0%2E0.prices.ACME``. A channel
  template's parameters map to whole words, so ``stock-prices.1%2E0%2E0.prices.*`` binds every
  symbol (AMQP 0-9-1 §3.1.3.3 topic exchange; 255 bytes at most, §4.2.5.3 shortstr).
- ``message_id``: the event id (a UUID unless the provider gives one).
- headers: ``eg-api`` (slug), ``eg-version``, ``eg-channel`` (the concrete address, e.g.
  ``prices/ACME``) and ``eg-published-at``: Unix time in seconds as a decimal *string* with
  microseconds (``"1764400000.123456"``), for latency. Not an AMQP float: pamqp encodes Python
  floats as 32-bit ``f`` values, which at 1.7e9 s resolve only 128 seconds; the gateway also
  accepts a 64-bit ``d`` double or an integer from other clients.
- ``content_type`` ``application/json``; body: the event payload as UTF-8 JSON bytes.
- delivery mode 1 (transient): events are live data, the gateway keeps no backlog.
"""

from __future__ import annotations

import json
import time
import uuid
from types import TracebackType
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from django.conf import settings

CONTENT_TYPE = "application/json"
MAX_ROUTING_KEY_BYTES = 255
_ESCAPES = str.maketrans({"%": "%25", ".": "%2E", "*": "%2A", "#": "%23"})


def _word(text: str) -> str:
    """One routing-key word: ``text`` with ``%``, ``.``, ``*``, ``#`` percent-encoded."""
    return text.translate(_ESCAPES)


def address_normalize(address: str) -> str:
    """The canonical form of a concrete channel address: no leading or trailing ``/``."""
    return address.strip("/")


def routing_key(*, api: str, version: str, address: str) -> str:
    """The routing key of events on ``address`` of ``api`` ``version`` (see the module docstring).

    Raises ``ValueError`` if the key would exceed 255 bytes (AMQP 0-9-1 shortstr limit).
    """
    words = [_word(api), _word(version)]
    words.extend(_word(segment) for segment in address_normalize(address).split("/"))
    key = ".".join(words)
    if len(key.encode()) > MAX_ROUTING_KEY_BYTES:
        raise ValueError(f"Routing key for {api} {version} {address!r} exceeds 255 bytes.")
    return key


def event_message(
    *,
    api: str,
    version: str,
    address: str,
    payload: Any,
    event_id: str | None = None,
    published_at: float | None = None,
) -> aio_pika.Message:
    """Build the AMQP message for one event.

    ``payload`` is any JSON-serialisable value, or ``bytes`` already holding UTF-8 JSON (sent
    as is, not checked). ``published_at`` defaults to now (Unix seconds).
    """
    if isinstance(payload, bytes | bytearray):
        body = bytes(payload)
    else:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return aio_pika.Message(
        body,
        content_type=CONTENT_TYPE,
        message_id=event_id or str(uuid.uuid4()),
        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        headers={
            "eg-api": api,
            "eg-version": version,
            "eg-channel": address_normalize(address),
            "eg-published-at": f"{time.time() if published_at is None else published_at:.6f}",
        },
    )


async def exchange_declare(channel: AbstractChannel) -> AbstractExchange:
    """Declare (idempotently) the durable topic exchange events travel through."""
    return await channel.declare_exchange(
        settings.EVENTGATE_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )


async def amqp_connect(*, name: str, timeout: float = 10.0) -> AbstractRobustConnection:
    """A robust aio-pika connection to ``settings.AMQP_URL`` that reconnects every second.

    ``name`` shows in RabbitMQ's management UI and ``rabbitmqctl list_connections``. The first
    attempt fails fast (raises ``aiormq``/``OSError`` connection errors, or ``TimeoutError``).
    """
    return await aio_pika.connect_robust(
        settings.AMQP_URL,
        timeout=timeout,
        reconnect_interval=1,
        client_properties={"connection_name": name},
    )


class EventPublisher:
    """Publishes a stream of events over one robust AMQP connection.

    Use as ``async with EventPublisher() as publisher: await publisher.publish(...)``.
    With ``confirm=True`` (default) each ``publish`` waits for RabbitMQ's publisher confirm, so a
    returned call means the broker routed the event; ``confirm=False`` trades that for throughput.
    While RabbitMQ is down, ``publish`` raises aio-pika/aiormq connection errors; the connection
    recovers by itself and later calls succeed again.
    """

    def __init__(self, *, confirm: bool = True, name: str = "eventgate-publisher") -> None:
        self.confirm = confirm
        self.name = name
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None

    async def connect(self) -> None:
        self._connection = await amqp_connect(name=self.name)
        channel = await self._connection.channel(publisher_confirms=self.confirm)
        self._exchange = await exchange_declare(channel)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        self._connection = self._exchange = None

    async def __aenter__(self) -> EventPublisher:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def publish(
        self,
        *,
        api: str,
        version: str,
        address: str,
        payload: Any,
        event_id: str | None = None,
        published_at: float | None = None,
    ) -> str:
        """Publish one event on ``address`` of ``api`` ``version``; returns its event id."""
        if self._exchange is None:
            raise RuntimeError("EventPublisher is not connected; use `async with` or call connect().")
        message = event_message(
            api=api,
            version=version,
            address=address,
            payload=payload,
            event_id=event_id,
            published_at=published_at,
        )
        # Not mandatory: an event nobody is subscribed to is dropped by RabbitMQ, not returned.
        await self._exchange.publish(
            message, routing_key=routing_key(api=api, version=version, address=address), mandatory=False
        )
        assert message.message_id is not None
        return message.message_id


async def event_publish(
    *,
    api: str,
    version: str,
    address: str,
    payload: Any,
    event_id: str | None = None,
    published_at: float | None = None,
) -> str:
    """Publish one event over a short-lived connection; returns its event id.

    Convenient for scripts and single events; for a stream use ``EventPublisher``, which keeps
    one connection (opening an AMQP connection costs several round trips).
    """
    async with EventPublisher(name="eventgate-event-publish") as publisher:
        return await publisher.publish(
            api=api,
            version=version,
            address=address,
            payload=payload,
            event_id=event_id,
            published_at=published_at,
        )
