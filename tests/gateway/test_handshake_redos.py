"""Handshakes whose address or parameter pattern would make a backtracking regex engine run for
minutes (ReDoS, CWE-1333) are refused promptly, and ordinary addresses still match.

Without the fix these tests do not fail, they stall: Python's ``re`` held the GIL for seconds on
the six-parameter templates and for minutes on the ``^(a|aa)+$`` pattern, freezing the whole
gateway process. No timing assertions (team rule): finishing promptly is the proof.
"""

from __future__ import annotations

import uuid

import pytest

from gateway.auth import HandshakeRefused, handshake_authorize
from portal.models import API, APIKey, Channel
from tests.factories import (
    APIFactory,
    APIVersionFactory,
    ApplicationFactory,
    BusinessPlanFactory,
    ChannelFactory,
    OperationFactory,
    SubscriptionFactory,
)

pytestmark = pytest.mark.django_db

TEMPLATES = {
    "sensors/{region}.{sensor}.{metric}": {},
    "dots/{a}.{b}.{c}.{d}.{e}.{f}": {},
    "x/{a}{b}{c}{d}{e}{f}z": {},
    # AsyncAPI 2.x keeps a parameter's pattern under its schema (2.6 §Parameter Object).
    "r/{word}": {"word": {"schema": {"type": "string", "pattern": "^(a|aa)+$"}}},
}


@pytest.fixture
def sensors_api(alice) -> API:
    """A published API v1.0.0 whose receivable channels are the ``TEMPLATES``."""
    api = APIFactory(provider=alice, slug=f"sensors-{uuid.uuid4().hex[:8]}")
    version = APIVersionFactory(api=api, version="1.0.0")
    for address, parameters in TEMPLATES.items():
        OperationFactory(channel=ChannelFactory(api_version=version, address=address, parameters=parameters))
    BusinessPlanFactory(api=api, name="Free")
    return api


@pytest.fixture
def secret(bob, sensors_api) -> str:
    """An API key of bob's application, actively subscribed to ``sensors_api``."""
    application = ApplicationFactory(owner=bob)
    SubscriptionFactory(application=application, plan=sensors_api.plans.get())
    return APIKey.generate(application=application)[1]


def authorize(api: API, secret: str, address: str):
    return handshake_authorize(secret=secret, api_slug=api.slug, version="1.0.0", address=address)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        # 1500 dots: refused on length (255-byte AMQP routing key) before any template is tried.
        ("sensors/" + "." * 1500 + "/x", "exceeds 255 bytes"),
        # Short enough for a routing key (a dot takes 3 bytes there, as %2E), yet re needed
        # O(n^6) steps to give up on these two: 2 s and 7 s with the GIL held.
        ("dots/" + "." * 70 + "/x", "no channel"),
        ("x/" + "a" * 90, "no channel"),
        # The provider's pattern backtracks exponentially (about 1.6^n steps: 3 s with re for 36
        # letters, minutes for 46): the match runs out of time and the handshake is refused.
        ("r/" + "a" * 36 + "!", "channel address took too long to match"),
        ("r/" + "a" * 46 + "!", "channel address took too long to match"),
    ],
    ids=[
        "dots-template-1500-dots",
        "six-dotted-params",
        "six-adjacent-params",
        "exponential-pattern-36",
        "exponential-pattern-46",
    ],
)
def test_handshake_with_pathological_address_is_refused(sensors_api, secret, address, reason):
    with pytest.raises(HandshakeRefused, match=reason):
        authorize(sensors_api, secret, address)


def test_over_long_address_is_refused_before_matching(sensors_api, secret):
    # 300 bytes that would match "r/{word}" and its pattern: only the length can refuse it.
    with pytest.raises(HandshakeRefused, match=r"exceeds 255 bytes"):
        authorize(sensors_api, secret, "r/" + "a" * 298)


def test_dotted_address_still_matches_with_its_parameter_values(sensors_api, secret):
    grant = authorize(sensors_api, secret, "sensors/eu.s1.temp").channel
    assert grant.channel_template == "sensors/{region}.{sensor}.{metric}"
    assert grant.address == "sensors/eu.s1.temp"
    channel = Channel.objects.get(api_version__api=sensors_api, address=grant.channel_template)
    assert channel.address_regex().match("sensors/eu.s1.temp").groupdict() == {
        "region": "eu",
        "sensor": "s1",
        "metric": "temp",
    }
    # Extra dots go to the first parameter, as Python's greedy re gave them.
    assert channel.address_regex().match("sensors/eu.west.s1.temp").groupdict() == {
        "region": "eu.west",
        "sensor": "s1",
        "metric": "temp",
    }


def test_adjacent_parameters_and_patterns_still_match(sensors_api, secret):
    assert authorize(sensors_api, secret, "x/abcdefghz").channel.channel_template == "x/{a}{b}{c}{d}{e}{f}z"
    channel = Channel.objects.get(api_version__api=sensors_api, address="x/{a}{b}{c}{d}{e}{f}z")
    assert channel.address_regex().match("x/abcdefghz").groupdict() == {
        "a": "abc",
        "b": "d",
        "c": "e",
        "d": "f",
        "e": "g",
        "f": "h",
    }
    assert authorize(sensors_api, secret, "r/aaaa").channel.channel_template == "r/{word}"
    with pytest.raises(HandshakeRefused, match="bad parameter 'word': 'aab' does not match the pattern"):
        authorize(sensors_api, secret, "r/aab")  # outside the parameter's pattern
