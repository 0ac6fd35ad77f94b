"""``manage.py bench_import``: how long importing a large AsyncAPI document takes.

Generates a 3.0 document shaped like real large ones (``fleet_document``), then times, in the
same run: the baseline — only reading the YAML with PyYAML's C loader when available — and
Eventgate's whole import (parse, validate against the official schema, resolve refs, store rows;
rolled back afterwards, so nothing is kept). Prints the figures and the ratio import/baseline.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from portal.models import User
from portal.services.apis import api_import


def fleet_document(channels: int) -> str:
    """A 3.0 document with ``channels`` channels: each with a parameter, a message whose inline
    payload uses a shared ``$ref`` header schema, and one ``send`` operation (about 740 bytes per
    channel)."""
    lines = ["asyncapi: 3.0.0", "info: {title: Fleet telemetry, version: 1.0.0}", "channels:"]
    for n in range(channels):
        lines += [
            f"  vehicle{n}:",
            f"    address: fleet/{n}/vehicles/{{vehicleId}}/telemetry",
            f"    description: Telemetry of fleet {n}, sent every few seconds by each vehicle.",
            "    parameters:",
            "      vehicleId: {description: The vehicle's registration., examples: [AB-123-C]}",
            "    messages:",
            "      reading:",
            f"        name: reading{n}",
            "        payload:",
            "          type: object",
            "          required: [at, speed]",
            "          properties:",
            "            header: {$ref: '#/components/schemas/Header'}",
            "            at: {type: string, format: date-time}",
            "            speed: {type: number, description: Speed in km/h.}",
            "            position: {type: object, properties: {lat: {type: number}, lon: {type: number}}}",
        ]
    lines.append("operations:")
    for n in range(channels):
        lines += [f"  sendReading{n}:", "    action: send", f"    channel: {{$ref: '#/channels/vehicle{n}'}}"]
    lines += ["components:", "  schemas:", "    Header:", "      type: object", "      properties:"]
    lines += [f"        field{n}: {{type: string, description: Header field {n}.}}" for n in range(10)]
    return "\n".join(lines) + "\n"


class _Rollback(Exception):
    pass


class Command(BaseCommand):
    help = "Time the import of a generated large AsyncAPI document against a plain YAML load."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--channels", type=int, default=700, help="Channels in the document.")
        parser.add_argument("--repeat", type=int, default=3, help="Runs of each measurement.")

    def handle(self, *args: Any, **options: Any) -> None:
        provider = User.objects.filter(is_provider=True).first()
        if provider is None:
            raise CommandError("No provider account: run `manage.py load_demo` first.")
        document = fleet_document(options["channels"])
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        baseline = [_timed(lambda: yaml.load(document, Loader=loader)) for _ in range(options["repeat"])]
        imports = [_timed(lambda: _import_rolled_back(provider, document)) for _ in range(options["repeat"])]
        base, full = statistics.median(baseline), statistics.median(imports)
        self.stdout.write(
            f"document: {len(document.encode()):,} bytes, {options['channels']} channels\n"
            f"baseline (YAML load only, {loader.__name__}): median {base:.3f} s\n"
            f"Eventgate import (parse, validate, resolve, store): median {full:.3f} s "
            f"(min {min(imports):.3f} s)\n"
            f"ratio import/baseline: {full / base:.1f}x"
        )


def _timed(work: Any) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _import_rolled_back(provider: User, document: str) -> None:
    try:
        with transaction.atomic():
            api_import(provider=provider, content=document, filename="fleet.yaml")
            raise _Rollback
    except _Rollback:
        pass
