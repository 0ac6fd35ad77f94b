"""The demo: its AsyncAPI documents, simulated feeds, `load_demo`, and the banner's client
command run for real against a daphne process while the demo backend publishes."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from django.core.management import call_command
from jsonschema import Draft7Validator, FormatChecker

from gateway.auth import handshake_authorize
from gateway.management.commands.demo_backend import demo_publish
from portal.asyncapi import parse_document
from portal.demo import DEMO_APIS, STOCK_PRICES, TRAIN_DEPARTURES
from portal.demo.feeds import DepartureBoard, StockTicker
from portal.models import API, APIKey, Subscription, User

EXPECTED_CHANNELS = {"stock-prices": "prices/{symbol}", "train-departures": "departures/{station}"}


@pytest.mark.parametrize("demo", DEMO_APIS, ids=lambda demo: demo.slug)
def test_demo_document_is_valid_asyncapi_with_one_receivable_channel(demo):
    parsed = parse_document(
        content=demo.content(), filename=demo.filename
    )  # validates against @asyncapi/specs
    assert parsed.asyncapi_version == "3.0.0" and parsed.version == demo.version
    [channel] = parsed.channels
    assert channel.address == EXPECTED_CHANNELS[demo.slug]
    assert [operation.action for operation in channel.operations] == ["receive"]
    [parameter] = channel.parameters.values()
    assert len(parameter["enum"]) == 8


def payload_validator(demo) -> Draft7Validator:
    document = yaml.safe_load(demo.content())
    [schema] = document["components"]["schemas"].values()
    return Draft7Validator(schema, format_checker=FormatChecker())


def test_simulated_events_follow_their_documents():
    ticker = StockTicker(STOCK_PRICES.parameter_enum("symbol"))
    board = DepartureBoard(TRAIN_DEPARTURES.parameter_enum("station"))
    stock_schema, departure_schema = payload_validator(STOCK_PRICES), payload_validator(TRAIN_DEPARTURES)
    start = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    statuses = set()
    for second in range(0, 4 * 3600, 5):  # four simulated hours
        now = start + timedelta(seconds=second)
        address, tick = ticker.tick(now=now)
        assert address == f"prices/{tick['symbol']}" and tick["bid"] < tick["ask"]
        assert not list(stock_schema.iter_errors(tick)), tick
        address, update = board.update(now=now)
        assert address == f"departures/{update['station']}"
        assert not list(departure_schema.iter_errors(update)), update
        statuses.add(update["status"])
    assert {"on_time", "delayed", "boarding", "departed"} <= statuses
    prices = [quote.price / quote.anchor for quote in ticker.quotes.values()]
    assert all(0.7 < ratio < 1.3 for ratio in prices), "prices drift off instead of reverting"


def test_load_demo_is_idempotent_and_issues_a_fresh_key(db, tmp_path):
    credentials = tmp_path / "demo-credentials.json"
    call_command("load_demo", credentials=credentials, stdout=io.StringIO())
    first_key = json.loads(credentials.read_text())["api_key"]
    call_command("load_demo", credentials=credentials, stdout=io.StringIO())
    demo = json.loads(credentials.read_text())

    assert User.objects.get(email="consumer@eventgate.local").check_password("eventgate-demo")
    assert User.objects.get(email="admin@eventgate.local").is_staff
    assert User.objects.get(email="provider@eventgate.local").is_provider
    assert sorted(API.objects.published().values_list("slug", flat=True)) == [
        "stock-prices",
        "train-departures",
    ]
    for api in API.objects.all():
        free, paid = api.plans.order_by("flat_fee_minor")
        assert free.is_free and not free.requires_approval and free.is_approved
        assert (
            paid.requires_approval
            and paid.is_approved
            and paid.flat_fee_minor
            and paid.price_per_1000_events_minor
        )
    subscriptions = Subscription.objects.filter(application__name="Demo dashboard")
    assert sorted(subscriptions.values_list("plan__name", "status")) == [
        ("Free", "active"),
        ("Free", "active"),
    ]
    assert APIKey.objects.for_secret(first_key) is None, "the previous demo key must be revoked"
    assert (credentials.stat().st_mode & 0o777) == 0o600
    assert demo["channels"] == [
        {"api": "stock-prices", "version": "1.0.0", "address": "prices/ACME"},
        {"api": "train-departures", "version": "1.0.0", "address": "departures/KGX"},
    ]
    for channel in demo["channels"]:
        grant = handshake_authorize(
            secret=demo["api_key"],
            api_slug=channel["api"],
            version=channel["version"],
            address=channel["address"],
        )
        assert grant.api_slug == channel["api"]


def client_output(command_url: str, lines: list[str], connected: threading.Event) -> subprocess.Popen[str]:
    """Run the banner's `python -m websockets <url>` command; collect its output lines."""
    process = subprocess.Popen(
        [sys.executable, "-m", "websockets", command_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Connected to"):
                connected.set()

    threading.Thread(target=read, daemon=True).start()
    return process


@pytest.mark.e2e
def test_banner_client_command_prints_live_demo_events(gateway_server, tmp_path):
    credentials = tmp_path / "demo-credentials.json"
    call_command("load_demo", credentials=credentials, stdout=io.StringIO())
    banner = io.StringIO()
    call_command("demo_banner", url=gateway_server.url, credentials=credentials, once=True, stdout=banner)
    urls = re.findall(r"\.venv/bin/python -m websockets '([^']+)'", banner.getvalue())
    assert len(urls) == 2 and all("access_token=eg_" in url for url in urls), banner.getvalue()

    clients = []
    for url in urls:
        lines: list[str] = []
        connected = threading.Event()
        clients.append((client_output(url, lines, connected), lines, connected))
    try:
        for _, lines, connected in clients:
            assert connected.wait(10), "".join(lines)
        feeds = [
            (STOCK_PRICES, StockTicker(["ACME"]).tick, 20.0),
            (TRAIN_DEPARTURES, DepartureBoard(["KGX"]).update, 10.0),
        ]
        asyncio.run(demo_publish(feeds, seconds=3))
        time.sleep(0.5)
    finally:
        for process, _, _ in clients:
            assert process.stdin is not None
            process.stdin.close()  # end of input: the client closes the connection and exits
            process.wait(10)
    stocks, departures = ("".join(lines) for _, lines, _ in clients)
    # At least what this test published (another demo backend on the shared RabbitMQ may add more).
    assert stocks.count('"channel":"prices/ACME"') >= 20, stocks
    assert departures.count('"channel":"departures/KGX"') >= 10, departures
    assert '"channel":"departures' not in stocks and '"channel":"prices' not in departures
