"""Demo content: two AsyncAPI 3.0 documents written for Eventgate and simulated event feeds.

``stock-prices.asyncapi.yaml`` (``prices/{symbol}``) and ``train-departures.asyncapi.yaml``
(``departures/{station}``) are imported by ``manage.py load_demo``; ``portal.demo.feeds``
simulates their events for ``manage.py demo_backend``. Demo only: no real market or rail data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEMO_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class DemoAPI:
    """A demo API: its gateway slug, version and AsyncAPI document in ``portal/demo/``."""

    slug: str
    version: str
    filename: str

    @property
    def path(self) -> Path:
        return DEMO_DIR / self.filename

    def content(self) -> bytes:
        return self.path.read_bytes()

    def parameter_enum(self, name: str) -> list[str]:
        """The ``enum`` of component parameter ``name``: the feed covers exactly these values."""
        document: dict[str, Any] = yaml.safe_load(self.content())
        return [str(value) for value in document["components"]["parameters"][name]["enum"]]


STOCK_PRICES = DemoAPI(slug="stock-prices", version="1.0.0", filename="stock-prices.asyncapi.yaml")
TRAIN_DEPARTURES = DemoAPI(
    slug="train-departures", version="1.0.0", filename="train-departures.asyncapi.yaml"
)
DEMO_APIS = (STOCK_PRICES, TRAIN_DEPARTURES)
