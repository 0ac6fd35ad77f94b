"""The runner's handles on its helper processes: a group of load generators used as one
(``gateway.bench.wsclient``) and the publisher (``gateway.bench.publisher``), both driven by JSON
lines over their stdin/stdout."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.bench.targets import ClientSpec, ManagedProcess, Target
from gateway.bench.wsclient import hist_merge


def _base_dir() -> Path:
    from django.conf import settings

    return Path(settings.BASE_DIR)


class ClientGroup:
    """``processes`` load-generator processes (``gateway.bench.wsclient``) used as one."""

    def __init__(self, processes: int, log_dir: Path) -> None:
        self.procs: list[ManagedProcess] = []
        try:
            for number in range(processes):
                self.procs.append(
                    ManagedProcess(
                        [sys.executable, "-m", "gateway.bench.wsclient"],
                        pipes=True,
                        log_path=log_dir / f"wsclient-{number}.log",
                        cwd=_base_dir(),
                    )
                )
        except BaseException:
            self.stop()
            raise

    def pids(self) -> list[int]:
        return [process.pid for process in self.procs]

    def _ask_all(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        for process, command in zip(self.procs, commands, strict=True):
            process.send(command)
        return [process.receive() for process in self.procs]

    def open(
        self,
        specs: Sequence[ClientSpec],
        *,
        concurrency: int,
        batch: int = 0,
        pause: float = 0.0,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Open ``specs`` spread round-robin over the processes, at most ``concurrency`` handshakes
        in flight in all. Returns the summed answers; ``seconds`` from the first start to the
        last finish."""
        count = len(self.procs)
        per_process = max(1, math.ceil(concurrency / count))
        parts: list[list[dict[str, object]]] = [[] for _ in range(count)]
        for index, spec in enumerate(specs):
            parts[index % count].append(spec.as_json())
        batch_per_process = math.ceil(batch / count) if batch else 0
        answers = self._ask_all(
            [
                {
                    "cmd": "open",
                    "specs": part,
                    "concurrency": per_process,
                    "batch": batch_per_process,
                    "pause": pause,
                    "timeout": timeout,
                }
                for part in parts
            ]
        )
        refused: dict[str, int] = {}
        failed: dict[str, int] = {}
        for answer in answers:
            for source, into in ((answer["refused"], refused), (answer["failed"], failed)):
                for reason, number in source.items():
                    into[reason] = into.get(reason, 0) + number
        busy = [a for a in answers if a["seconds"] > 0 or a["opened"]]
        started = min((a["started"] for a in busy), default=0.0)
        finished = max((a["finished"] for a in busy), default=0.0)
        return {
            "opened": sum(a["opened"] for a in answers),
            "refused": refused,
            "failed": failed,
            "seconds": max(0.0, finished - started),
            "open": sum(a["open"] for a in answers),
        }

    def count(self) -> dict[str, Any]:
        answers = self._ask_all([{"cmd": "count"}] * len(self.procs))
        return {
            "received": sum(a["received"] for a in answers),
            "open": sum(a["open"] for a in answers),
            "closed": sum_counts(a["closed"] for a in answers),
        }

    def report(self) -> dict[str, Any]:
        """Summed reports of every process since the last one (counters restart)."""
        answers = self._ask_all([{"cmd": "report"}] * len(self.procs))
        firsts = [a["first_at"] for a in answers if a["first_at"] is not None]
        lasts = [a["last_at"] for a in answers if a["last_at"] is not None]
        with_connections = [a for a in answers if a["open"]]
        return {
            "received": sum(a["received"] for a in answers),
            "timed": sum(a["timed"] for a in answers),
            "hist": hist_merge(a["hist"] for a in answers),
            "first_at": min(firsts, default=None),
            "last_at": max(lasts, default=None),
            "per_connection_min": min((a["per_connection"]["min"] for a in with_connections), default=0),
            "per_connection_max": max((a["per_connection"]["max"] for a in with_connections), default=0),
            "open": sum(a["open"] for a in answers),
            "closed": sum_counts(a["closed"] for a in answers),
        }

    def quiesce(self, *, quiet: float = 0.5, limit: float = 15.0) -> None:
        """Wait until nothing more arrives for ``quiet`` seconds (at most ``limit``), then reset."""
        deadline = time.monotonic() + limit
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            received = self.count()["received"]
            if received != last:
                last, since = received, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
            time.sleep(0.05)
        self.report()

    def close(self) -> dict[str, Any]:
        answers = self._ask_all([{"cmd": "close", "timeout": 10.0}] * len(self.procs))
        return {"closed": sum(a["closed"] for a in answers), "aborted": sum(a["aborted"] for a in answers)}

    def stop(self) -> None:
        for process in self.procs:
            with contextlib.suppress(OSError, ValueError):
                process.send({"cmd": "quit"})
        for process in self.procs:
            process.stop(timeout=5, grace=5)  # it closes its connections first (RFC 6455 §7)
        self.procs.clear()


def sum_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Add up ``{reason or close code: number}`` counts."""
    total: dict[str, int] = {}
    for count in counts:
        for key, number in count.items():
            total[key] = total.get(key, 0) + number
    return total


class PublisherProcess:
    """``python -m gateway.bench.publisher`` with the target's ``publisher_args``."""

    def __init__(self, target: Target, log_dir: Path) -> None:
        self.process = ManagedProcess(
            [sys.executable, "-m", "gateway.bench.publisher", *target.publisher_args()],
            pipes=True,
            log_path=log_dir / f"publisher-{target.name}.log",
            cwd=_base_dir(),
        )
        try:
            self.process.receive()  # {"ready": true}
        except BaseException:
            self.process.stop()
            raise

    def rate(self, *, events_per_second: float, channels: list[str], seconds: float) -> dict[str, Any]:
        self.process.send(
            {"cmd": "rate", "events_per_second": events_per_second, "channels": channels, "seconds": seconds}
        )
        return self.process.receive()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.send({"cmd": "quit"})
        self.process.stop(timeout=5, grace=2)
