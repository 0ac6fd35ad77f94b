"""``manage.py bench_gateway``: the gateway's throughput, latency and connection cost against
baselines (a bare aio-pika → ``websockets`` bridge, Pushpin) in the same run.

Creates a bench API with credentials (deleted at the end, also on Ctrl-C or an error), starts
each target as a real server process, drives it with load-generator and publisher processes,
prints a table per scenario and writes every figure to JSON (``--json``, default
``var/bench/<timestamp>.json``). See docs/performance.md for what each scenario and figure means.
"""

from __future__ import annotations

import signal
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.bench.report import document, json_write, tables
from gateway.bench.runner import SCENARIOS, SERVERS, TARGETS, BenchParameters, bench_run


def _names(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise CommandError(f"--{what}: choose from {', '.join(allowed)} (got {value!r})")
    return names


def _rates(value: str) -> list[int]:
    try:
        rates = [int(float(part)) for part in value.split(",") if part.strip()]
    except ValueError:
        raise CommandError(
            f"--rates: a comma-separated list of deliveries per second (got {value!r})"
        ) from None
    if not rates or min(rates) <= 0:
        raise CommandError("--rates: give at least one positive rate")
    return rates


class Command(BaseCommand):
    help = "Benchmark the gateway against a bare bridge and Pushpin (docs/performance.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--full",
            action="store_true",
            help="The issue's sizes (1,000 subscribers, 20,000 idle, storm 5,000).",
        )
        parser.add_argument(
            "--scenarios", default=",".join(SCENARIOS), help="Comma-separated: " + ", ".join(SCENARIOS)
        )
        parser.add_argument(
            "--targets", default=",".join(TARGETS), help="Comma-separated: " + ", ".join(TARGETS)
        )
        parser.add_argument(
            "--servers", default="uvicorn", help="ASGI servers for the gateway: uvicorn, daphne or both"
        )
        parser.add_argument(
            "--subscribers", type=int, help="Subscribers in fanout and channels (default 200; full 1,000)."
        )
        parser.add_argument("--step-seconds", type=float, help="Seconds per rate step (default 2; full 5).")
        parser.add_argument("--rates", help="Rising expected deliveries/s per step, comma-separated.")
        parser.add_argument(
            "--refine", type=int, help="Bisection steps after the first failing rate (default 1; full 2)."
        )
        parser.add_argument(
            "--max-p99-ms", type=float, help="A step fails above this p99 latency (default 100)."
        )
        parser.add_argument(
            "--max-loss", type=float, help="A step fails above this loss fraction (default 0.01)."
        )
        parser.add_argument("--client-processes", type=int, help="Load-generator processes (default 2).")
        parser.add_argument(
            "--open-concurrency", type=int, help="Handshakes in flight while connecting (default 200)."
        )
        parser.add_argument(
            "--idle",
            type=int,
            dest="idle_connections",
            help="Idle connections to reach (default 1,000; full 20,000).",
        )
        parser.add_argument(
            "--idle-batch", type=int, help="Idle connections opened per batch (default 1,000)."
        )
        parser.add_argument(
            "--idle-hold", type=float, help="Seconds the idle connections are held (default 3; full 25)."
        )
        parser.add_argument(
            "--gateway-processes", type=int, help="Gateway processes for the idle scenario only (default 1)."
        )
        parser.add_argument(
            "--storm",
            type=int,
            dest="storm_handshakes",
            help="Handshakes in the storm (default 500; full 5,000).",
        )
        parser.add_argument(
            "--storm-concurrency", type=int, help="Storm handshakes in flight (default 50; full 100)."
        )
        parser.add_argument("--keys", type=int, help="API keys shared by the subscribers (default 10).")
        parser.add_argument(
            "--profile", action="store_true", help="py-spy flamegraph of the gateway at the fanout max rate."
        )
        parser.add_argument(
            "--json", type=Path, help="Where to write the JSON (default var/bench/<timestamp>.json)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        overrides: dict[str, Any] = {
            "scenarios": _names(options["scenarios"], SCENARIOS, "scenarios"),
            "targets": _names(options["targets"], TARGETS, "targets"),
            "servers": _names(options["servers"], SERVERS, "servers"),
            "profile": options["profile"],
        }
        for name in (
            "subscribers",
            "step_seconds",
            "refine",
            "max_p99_ms",
            "max_loss",
            "client_processes",
            "open_concurrency",
            "idle_connections",
            "idle_batch",
            "idle_hold",
            "gateway_processes",
            "storm_handshakes",
            "storm_concurrency",
            "keys",
        ):
            if options[name] is not None:
                if options[name] < 0 or (options[name] == 0 and name != "refine"):
                    raise CommandError(f"--{name.replace('_', '-')} must be positive")
                overrides[name] = options[name]
        if options["rates"]:
            overrides["rates"] = _rates(options["rates"])
        parameters = BenchParameters.full(**overrides) if options["full"] else BenchParameters(**overrides)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        json_path: Path = options["json"] or Path(settings.BASE_DIR) / "var" / "bench" / f"{stamp}.json"
        json_path.parent.mkdir(parents=True, exist_ok=True)

        def terminated(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt  # the run's clean-up (processes, bench objects) runs on the way out

        previous = signal.signal(signal.SIGTERM, terminated)
        try:
            result = bench_run(parameters, json_path=json_path, log=self._log)
        except KeyboardInterrupt:
            raise CommandError("Interrupted; processes stopped and bench objects deleted.") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        doc = document(result)
        json_write(doc, json_path)
        self.stdout.write("\n" + tables(doc) + "\n")
        self.stdout.write(f"\nJSON: {json_path}\n")

    def _log(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
