"""Simulated event feeds for the demo APIs; payloads follow the documents in ``portal/demo/``.

``StockTicker.tick()`` and ``DepartureBoard.update()`` each return ``(channel address, payload)``
for one event; ``manage.py demo_backend`` publishes them. Pure Python, no I/O.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# Starting price (USD) per fictional symbol; unknown symbols start at 100.
OPENING_PRICES = {
    "ACME": 187.40,
    "GLOBEX": 64.15,
    "INITECH": 23.80,
    "UMBRELLA": 412.00,
    "HOOLI": 1290.50,
    "STARK": 318.75,
    "WAYNE": 152.30,
    "SOYLENT": 9.42,
}


def iso(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``: ``2026-11-29T14:31:07.250Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Quote:
    symbol: str
    anchor: float  # the price the walk is pulled back to, so it never drifts off for days
    previous_close: float
    price: float
    volume: int = 0


class StockTicker:
    """Mean-reverting random-walk prices (log returns, σ ≈ 0.06 % per tick) for each symbol."""

    SIGMA = 0.0006
    REVERSION = 0.002

    def __init__(self, symbols: list[str], *, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.quotes: dict[str, _Quote] = {}
        for symbol in symbols:
            opening = OPENING_PRICES.get(symbol, 100.0)
            close = round(opening * (1 + self.rng.uniform(-0.02, 0.02)), 2)
            self.quotes[symbol] = _Quote(symbol, anchor=opening, previous_close=close, price=opening)

    def tick(self, symbol: str | None = None, now: datetime | None = None) -> tuple[str, dict[str, Any]]:
        """Move one symbol's price (a random one by default); returns ``("prices/<symbol>", tick)``."""
        quote = self.quotes[symbol] if symbol else self.rng.choice(list(self.quotes.values()))
        pull = self.REVERSION * math.log(quote.anchor / quote.price)
        quote.price = max(0.01, quote.price * math.exp(pull + self.rng.gauss(0, self.SIGMA)))
        quote.volume += 100 * self.rng.randint(1, 50)
        spread = max(0.01, round(quote.price * 0.0002, 2))
        bid = max(0.01, round(quote.price - spread / 2, 2))
        payload = {
            "symbol": quote.symbol,
            "price": round(quote.price, 2),
            "currency": "USD",
            "bid": bid,
            "ask": round(bid + spread, 2),
            "volume": quote.volume,
            "change_percent": round(100 * (quote.price / quote.previous_close - 1), 2),
            "timestamp": iso(now or datetime.now(UTC)),
        }
        return f"prices/{quote.symbol}", payload


# Station (CRS code) → (operator, destination, destination CRS code) of its trains.
ROUTES = {
    "KGX": [
        ("LNER", "Edinburgh Waverley", "EDB"),
        ("LNER", "Leeds", "LDS"),
        ("LNER", "Newcastle", "NCL"),
        ("Grand Central", "Sunderland", "SUN"),
    ],
    "EUS": [
        ("Avanti West Coast", "Manchester Piccadilly", "MAN"),
        ("Avanti West Coast", "Glasgow Central", "GLC"),
        ("Avanti West Coast", "Birmingham New Street", "BHM"),
        ("Avanti West Coast", "Liverpool Lime Street", "LIV"),
    ],
    "PAD": [
        ("GWR", "Bristol Temple Meads", "BRI"),
        ("GWR", "Cardiff Central", "CDF"),
        ("GWR", "Plymouth", "PLY"),
        ("GWR", "Oxford", "OXF"),
    ],
    "MAN": [
        ("Avanti West Coast", "London Euston", "EUS"),
        ("TransPennine Express", "Leeds", "LDS"),
        ("CrossCountry", "Birmingham New Street", "BHM"),
        ("TransPennine Express", "Edinburgh Waverley", "EDB"),
    ],
    "BHM": [
        ("Avanti West Coast", "London Euston", "EUS"),
        ("CrossCountry", "Manchester Piccadilly", "MAN"),
        ("CrossCountry", "Bristol Temple Meads", "BRI"),
        ("CrossCountry", "Edinburgh Waverley", "EDB"),
    ],
    "LDS": [
        ("LNER", "London King's Cross", "KGX"),
        ("TransPennine Express", "Manchester Piccadilly", "MAN"),
        ("CrossCountry", "Birmingham New Street", "BHM"),
        ("Northern", "York", "YRK"),
    ],
    "EDB": [
        ("LNER", "London King's Cross", "KGX"),
        ("ScotRail", "Glasgow Queen Street", "GLQ"),
        ("ScotRail", "Aberdeen", "ABD"),
        ("CrossCountry", "Birmingham New Street", "BHM"),
    ],
    "BRI": [
        ("GWR", "London Paddington", "PAD"),
        ("CrossCountry", "Manchester Piccadilly", "MAN"),
        ("GWR", "Cardiff Central", "CDF"),
        ("CrossCountry", "Birmingham New Street", "BHM"),
    ],
}
PLATFORMS = {"KGX": 11, "EUS": 16, "PAD": 14, "MAN": 14, "BHM": 12, "LDS": 17, "EDB": 20, "BRI": 15}
DELAY_REASONS = [
    "Awaiting a crew member",
    "A late-running train ahead",
    "Signalling problem",
    "Congestion",
    "Passengers needing extra time to board",
    "A fault on this train",
    "Trespass on the railway",
]
BOARD_LENGTH = 6


@dataclass
class Departure:
    """One departure on a station's board (times in UTC)."""

    station: str
    train_id: str
    operator: str
    destination: str
    destination_code: str
    scheduled: datetime
    delay_minutes: int = 0
    platform: str | None = None
    status: str = "scheduled"
    reason: str | None = None

    @property
    def expected(self) -> datetime:
        return self.scheduled + timedelta(minutes=self.delay_minutes)

    def payload(self, now: datetime) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "train_id": self.train_id,
            "operator": self.operator,
            "station": self.station,
            "destination": self.destination,
            "destination_code": self.destination_code,
            "scheduled_departure": iso(self.scheduled),
            "expected_departure": iso(self.expected),
            "platform": self.platform,
            "status": self.status,
            "delay_minutes": self.delay_minutes,
            "updated_at": iso(now),
        }
        if self.reason:
            payload["reason"] = self.reason
        return payload


@dataclass
class DepartureBoard:
    """Departure boards of several stations whose trains get platforms, delays and depart."""

    stations: list[str]
    rng: random.Random = field(default_factory=random.Random)
    boards: dict[str, list[Departure]] = field(default_factory=dict)

    def update(self, station: str | None = None, now: datetime | None = None) -> tuple[str, dict[str, Any]]:
        """Advance one departure of ``station`` (random by default); returns
        ``("departures/<station>", update)``."""
        now = now or datetime.now(UTC)
        station = station or self.rng.choice(self.stations)
        board = self._board(station, now)
        # The next train out gets most updates, as on a real board.
        departure = (
            board[0] if board[0].expected <= now + timedelta(minutes=3) else self.rng.choice(board[:4])
        )
        self._advance(departure, now)
        return f"departures/{station}", departure.payload(now)

    def _board(self, station: str, now: datetime) -> list[Departure]:
        board = [d for d in self.boards.get(station, []) if d.status not in ("departed", "cancelled")]
        while len(board) < BOARD_LENGTH:
            last = board[-1].scheduled if board else now + timedelta(minutes=2)
            board.append(self._new_departure(station, last + timedelta(minutes=self.rng.randint(3, 9))))
        board.sort(key=lambda d: d.expected)
        self.boards[station] = board
        return board

    def _new_departure(self, station: str, scheduled: datetime) -> Departure:
        operator, destination, code = self.rng.choice(
            ROUTES.get(station, [("Eventgate Rail", "Elsewhere", "ELS")])
        )
        train_id = f"1{code[0]}{self.rng.randint(0, 99):02d}"
        return Departure(
            station, train_id, operator, destination, code, scheduled.replace(second=0, microsecond=0)
        )

    def _advance(self, departure: Departure, now: datetime) -> None:
        minutes_left = (departure.expected - now).total_seconds() / 60
        roll = self.rng.random()
        if departure.status == "boarding" and minutes_left <= 0:
            departure.status = "departed"
        elif departure.platform and minutes_left <= 2:
            departure.status = "boarding"
        elif departure.platform is None and (minutes_left < 15 or roll < 0.3):
            departure.platform = str(self.rng.randint(1, PLATFORMS.get(departure.station, 10)))
            departure.status = "delayed" if departure.delay_minutes else "on_time"
        elif roll < 0.01:
            departure.status, departure.reason = "cancelled", self.rng.choice(DELAY_REASONS)
        elif roll < 0.25:
            departure.delay_minutes += self.rng.randint(1, 4)
            departure.reason = departure.reason or self.rng.choice(DELAY_REASONS)
            departure.status = "delayed" if departure.platform else "scheduled"
