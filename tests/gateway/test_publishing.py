"""The event publishing contract (routing keys, headers) and the client frame built from it."""

from __future__ import annotations

import json

import pytest

from gateway.bridge import frame_build, timestamp_json
from gateway.publishing import event_message, routing_key


@pytest.mark.parametrize(
    "api, version, address, expected",
    [
        ("stock-prices", "1.0.0", "prices/ACME", "stock-prices.1%2E0%2E0.prices.ACME"),
        ("gemini", "1.0.0", "/v1/marketdata/btcusd", "gemini.1%2E0%2E0.v1.marketdata.btcusd"),
        ("a", "2", "fx/EUR.USD", "a.2.fx.EUR%2EUSD"),
        ("a", "2", "odd/*/#/100%", "a.2.odd.%2A.%23.100%25"),
    ],
)
def test_routing_key_keeps_each_version_and_address_segment_one_topic_word(api, version, address, expected):
    assert routing_key(api=api, version=version, address=address) == expected


def test_routing_keys_of_distinct_channels_never_collide():
    keys = {
        routing_key(api="a", version=version, address=address)
        for version, address in [("1.0", "x"), ("1", "0.x"), ("1", "0/x"), ("1%2E0", "x")]
    }
    assert len(keys) == 4


def test_routing_key_over_255_bytes_is_refused():
    with pytest.raises(ValueError, match="255 bytes"):
        routing_key(api="a", version="1", address="x" * 300)


def test_event_message_carries_id_channel_and_precise_publish_time():
    message = event_message(
        api="stock-prices",
        version="1.0.0",
        address="/prices/ACME",
        payload={"p": 1.5},
        published_at=1764400000.123456,
    )
    assert json.loads(message.body) == {"p": 1.5}
    assert message.content_type == "application/json" and message.message_id
    assert message.headers == {
        "eg-api": "stock-prices",
        "eg-version": "1.0.0",
        "eg-channel": "prices/ACME",
        "eg-published-at": "1764400000.123456",
    }


def test_frame_wraps_the_raw_payload_with_id_channel_and_timestamp():
    body = json.dumps({"symbol": "ACME", "name": 'Acmé "Corp"'}, ensure_ascii=False).encode()
    frame = frame_build(
        event_id='id-"1"',
        channel_fragment=',"channel":"prices/ACME","published_at":',
        published_at="1.25",
        body=body,
    )
    assert json.loads(frame) == {
        "id": 'id-"1"',
        "channel": "prices/ACME",
        "published_at": 1.25,
        "payload": {"symbol": "ACME", "name": 'Acmé "Corp"'},
    }


@pytest.mark.parametrize(
    "header, expected",
    [
        ("1764400000.123456", "1764400000.123456"),
        (b"2.5", "2.5"),
        (3, "3.0"),
        (None, "null"),
        ("nan", "null"),
        ("x", "null"),
    ],
)
def test_publish_time_header_becomes_a_json_number_or_null(header, expected):
    assert timestamp_json(header) == expected
