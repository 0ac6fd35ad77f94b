"""Client → server events: parsed, checked, and published to RabbitMQ for the provider's backend.

A client sends an event on a channel with a ``send`` operation (single-channel mode: each text
frame is one payload; multiplexed mode: a ``publish`` frame). The consumer checks the
credential's scope on every frame (``gateway.auth.Grant.send_refusal``), then:

1. ``payload_parse``: the text must be exactly one JSON value (RFC 8259: no ``NaN``, no
   trailing data);
2. ``payload_error`` (``gateway.schemas``): when the API version has ``validate_payloads`` on,
   the payload must fit one of the send operation's message payload schemas;
3. ``InboundPublisher.publish``: one AMQP message to ``settings.EVENTGATE_INBOUND_EXCHANGE``
   (topic, durable) with the channel's routing key (``gateway.publishing.routing_key``), waiting
   for RabbitMQ's publisher confirm, so an accepted event is one the broker has taken.

AMQP message (docs/gateway.md, "Client → server events")::

    routing key   stock-prices.1%2E0%2E0.orders
    message_id    a UUID the gateway assigns
    content_type  application/json
    headers       eg-api, eg-version, eg-channel (concrete address), eg-published-at (decimal
                  string of Unix seconds), eg-application (id), eg-subscription (id)
    body          the payload as UTF-8 JSON

The publisher has its own robust AMQP connection per process, opened by the first client event
(most gateways never see one): RabbitMQ applies flow control to connections that publish, and
a consuming connection blocked by it would stall every subscriber's events (RabbitMQ docs,
"Flow Control": use separate connections to publish and to consume).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from django.conf import settings

from gateway.auth import ChannelGrant, Grant
from gateway.bridge import BrokerUnavailable
from gateway.publishing import amqp_connect, event_message

log = logging.getLogger(__name__)

# Seconds to wait for RabbitMQ's confirm of one client event before answering "try again later".
PUBLISH_TIMEOUT = 5.0


class PayloadInvalid(ValueError):
    """A client frame that is not exactly one JSON value; ``str(exc)`` says why."""


def _refuse_constant(name: str) -> Any:
    raise PayloadInvalid(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (_INFINITY, -_INFINITY):
        raise PayloadInvalid(f"number {text[:40]} is out of range (not a finite double)")
    return number


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # CPython's int max-str-digits limit (4300 digits by default)
        raise PayloadInvalid(f"integer of {len(text.lstrip('-'))} digits is too long") from None


_INFINITY = float("inf")
# A \uD800-\uDFFF escape: the only way a lone surrogate gets into a parsed str (RFC 8259 §8.2).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _has_lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def payload_parse(text: str) -> Any:
    """The JSON value of ``text``. Raises ``PayloadInvalid`` (its text says what and where)
    unless it is exactly one JSON value that can be passed on as UTF-8 JSON: RFC 8259 §6 and §8.2
    leave these to implementations, and the gateway refuses them: ``NaN``/``Infinity`` and
    numbers that overflow a double (``1e999``), integers over Python's 4300-digit conversion
    limit, strings with a lone UTF-16 surrogate (``"\\ud800"``: not encodable as UTF-8), and
    nesting too deep to parse.

    Cost: one ``json.loads``; the surrogate check only runs for text with a ``\\uD8..``-``\\uDF..``
    escape.
    """
    try:
        value = json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_integer
        )
    except RecursionError:
        raise PayloadInvalid("payload nested too deeply") from None
    except json.JSONDecodeError as error:
        raise PayloadInvalid(f"payload is not JSON: {error.msg} at character {error.pos}") from None
    except PayloadInvalid:
        raise
    except ValueError as error:  # anything else json refuses: say what, never a traceback
        raise PayloadInvalid(f"payload is not usable JSON: {str(error)[:100]}") from None
    if _SURROGATE_ESCAPE.search(text) is not None and _has_lone_surrogate(value):
        raise PayloadInvalid(
            "a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is not Unicode"
        )
    return value


def inbound_message(*, grant: Grant, channel: ChannelGrant, body: bytes) -> aio_pika.Message:
    """The AMQP message of one client event (``body``: UTF-8 JSON) on ``channel`` of ``grant``:
    the provider event shape (``gateway.publishing.event_message``) plus ``eg-application`` and
    ``eg-subscription`` (database ids) identifying who sent it."""
    message = event_message(api=grant.api_slug, version=grant.version, address=channel.address, payload=body)
    message.headers["eg-application"] = grant.application_id
    message.headers["eg-subscription"] = grant.subscription_id
    return message


class InboundPublisher:
    """The process's connection for client events: one robust connection, one confirming channel,
    the inbound exchange declared (topic, durable). Opened lazily; reconnects by itself."""

    def __init__(self) -> None:
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> AbstractExchange:
        async with self._lock:
            if self._exchange is None:
                try:
                    connection = await amqp_connect(name=f"eventgate-gateway-inbound pid={os.getpid()}")
                except Exception as exc:
                    raise BrokerUnavailable(f"cannot connect to RabbitMQ: {exc}") from exc
                try:
                    channel = await connection.channel(publisher_confirms=True)
                    self._exchange = await channel.declare_exchange(
                        settings.EVENTGATE_INBOUND_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
                    )
                except Exception as exc:
                    await connection.close()
                    raise BrokerUnavailable(f"cannot declare the inbound exchange: {exc}") from exc
                self._connection = connection
            return self._exchange

    async def publish(self, *, grant: Grant, channel: ChannelGrant, body: bytes) -> str:
        """Publish one client event and wait for RabbitMQ's confirm; returns its message id.

        Raises ``BrokerUnavailable`` when RabbitMQ cannot be reached or does not confirm within
        ``PUBLISH_TIMEOUT`` seconds (the client is told to try again later).
        """
        exchange = await self._ready()
        message = inbound_message(grant=grant, channel=channel, body=body)
        try:
            await exchange.publish(message, routing_key=channel.routing_key, timeout=PUBLISH_TIMEOUT)
        except Exception as exc:
            raise BrokerUnavailable(f"RabbitMQ did not take the event: {exc!r}") from exc
        assert message.message_id is not None
        return message.message_id

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
        self._connection = self._exchange = None


_publishers: dict[asyncio.AbstractEventLoop, InboundPublisher] = {}


def get_inbound_publisher() -> InboundPublisher:
    """The inbound publisher of the running event loop (one per process under uvicorn)."""
    loop = asyncio.get_running_loop()
    publisher = _publishers.get(loop)
    if publisher is None:
        for old_loop in [old for old in _publishers if old.is_closed()]:
            del _publishers[old_loop]
        publisher = _publishers[loop] = InboundPublisher()
    return publisher
