"""The benchmark's scenarios, run on one started target with fresh client and publisher
processes each (figures explained in docs/performance.md):

- ``fanout``: S subscribers on one channel; steps of rising *delivery* rate (expected deliveries
  per second = events published per second × subscribers of the channel), each D seconds; a step
  passes with p99 ≤ ``max_p99_ms``, loss ≤ ``max_loss`` and no connection closed by the server.
  The ramp stops at the first failing step, then bisects (``rate_ramp``). Max rate = best
  delivered/s of the passing steps; then one step at half of it ("p99 at half max");
- ``channels``: the same with each subscriber on its own channel (``ticks/0`` … ``ticks/S-1``);
- ``idle``: connections opened in batches up to a count (or until over 1% of a batch fail),
  held for a few seconds: connections held, RSS delta per connection, CPU while idle;
- ``storm``: H handshakes, at most C in flight: "warm" (every handshake with one of a few API
  keys) and "cold" (a distinct, never-used key per handshake; gateway only).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.bench.drivers import ClientGroup, PublisherProcess, sum_counts
from gateway.bench.objects import BenchObjects, bench_keys_create
from gateway.bench.targets import ProcessUsage, Target, broker_pids, cpu_percent, process_usage
from gateway.bench.wsclient import MAX_CONNECTIONS_PER_PROCESS, hist_percentile

Log = Callable[[str], None]

SCENARIOS = ("fanout", "channels", "idle", "storm")
TARGETS = ("gateway", "gateway-throttled", "bare-bridge", "pushpin")
SERVERS = ("uvicorn", "daphne")
DEFAULT_RATES = (20_000, 40_000, 80_000, 160_000, 320_000, 640_000)
FULL_RATES = (5_000, 10_000, *range(20_000, 60_001, 10_000), *range(80_000, 160_001, 20_000))
FULL_RATES += (200_000, 250_000, 300_000)

# Handshakes in flight a target tolerates when it does not say (``max_open_concurrency``):
# Pushpin 1.36 answers bursts of a few hundred with immediate 502s (shared/bench/README.md).
OPEN_CONCURRENCY_LIMITS = {"pushpin": 25}


@dataclass
class BenchParameters:
    """Sizes and choices of one run (units: connections, events per second, seconds)."""

    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    servers: list[str] = field(default_factory=lambda: ["uvicorn"])
    subscribers: int = 200
    step_seconds: float = 2.0
    rates: list[int] = field(default_factory=lambda: list(DEFAULT_RATES))  # expected deliveries/s
    refine: int = 1  # bisection steps after the first failing rate
    max_p99_ms: float = 100.0
    max_loss: float = 0.01
    client_processes: int = 2
    open_concurrency: int = 200  # handshakes in flight while opening subscribers / idle batches
    idle_connections: int = 1000
    idle_batch: int = 1000
    idle_hold: float = 3.0
    gateway_processes: int = 1  # idle scenario only
    storm_handshakes: int = 500
    storm_concurrency: int = 50
    keys: int = 10  # API keys shared by subscribers (and the storm's warm variant)
    profile: bool = False

    @classmethod
    def full(cls, **overrides: Any) -> BenchParameters:
        """The issue's sizes: 1,000 subscribers, 20,000 idle connections, a storm of 5,000."""
        values: dict[str, Any] = dict(
            subscribers=1000,
            step_seconds=5.0,
            rates=list(FULL_RATES),
            refine=2,
            idle_connections=20_000,
            idle_batch=1000,
            idle_hold=25.0,
            storm_handshakes=5000,
            storm_concurrency=100,
        )
        values.update(overrides)
        return cls(**values)


@dataclass
class Run:
    """What the scenarios of one run share."""

    parameters: BenchParameters
    log: Log
    log_dir: Path
    json_path: Path
    objects: BenchObjects | None = None

    def clients(self, processes: int | None = None) -> contextlib.AbstractContextManager[ClientGroup]:
        return _closing(ClientGroup(processes or self.parameters.client_processes, self.log_dir))

    def open_options(self, target: Target, concurrency: int) -> dict[str, Any]:
        """Handshake concurrency (and batch pause) for ``target``: its ``max_open_concurrency``
        caps ``concurrency``."""
        limit = getattr(target, "max_open_concurrency", None) or OPEN_CONCURRENCY_LIMITS.get(target.name)
        pause = float(getattr(target, "open_pause", 0.0) or 0.0)
        if limit:
            return {
                "concurrency": min(concurrency, int(limit)),
                "batch": int(limit) if pause else 0,
                "pause": pause,
            }
        return {"concurrency": concurrency}


@contextlib.contextmanager
def _closing(group: ClientGroup) -> Iterator[ClientGroup]:
    try:
        yield group
    finally:
        group.stop()


def _usage(pids: Sequence[int]) -> ProcessUsage:
    return process_usage(pids)


def rate_step(
    run: Run,
    target: Target,
    clients: ClientGroup,
    publisher: PublisherProcess,
    *,
    rate: float,
    channels: list[str],
    per_channel: int,
) -> dict[str, Any]:
    """One step: publish for ``step_seconds`` so that ``rate`` deliveries/s are expected, wait
    for the deliveries to arrive, and measure (see the module docstring)."""
    parameters = run.parameters
    clients.quiesce()
    server_pids, client_pids = target.server_pids(), clients.pids()
    publisher_pids = [publisher.process.pid]
    broker = broker_pids()
    before = (_usage(server_pids), _usage(client_pids), _usage(publisher_pids), _usage(broker))
    answer = publisher.rate(
        events_per_second=rate / per_channel, channels=channels, seconds=parameters.step_seconds
    )
    expected = int(answer["published"]) * per_channel
    _drain(clients, expected=expected, limit=parameters.step_seconds + 5.0)
    after = (_usage(server_pids), _usage(client_pids), _usage(publisher_pids), _usage(broker))
    report = clients.report()
    delivered = report["received"]
    span = (report["last_at"] - answer["started"]) if report["last_at"] else parameters.step_seconds
    delivered_per_second = delivered / span if span > 0 else 0.0
    hist = report["hist"]
    p50, p95, p99 = (hist_percentile(hist, q) for q in (0.50, 0.95, 0.99))
    loss = max(0.0, 1.0 - delivered / expected) if expected else 0.0
    closed = sum(report["closed"].values())
    cpu_seconds = after[0].cpu_seconds - before[0].cpu_seconds
    step = {
        "rate": rate,
        "events_per_second": rate / per_channel,
        "published": answer["published"],
        "published_per_second": answer["published"] / answer["seconds"] if answer["seconds"] else 0.0,
        "publish_seconds": answer["seconds"],
        "expected": expected,
        "delivered": delivered,
        "delivered_per_second": delivered_per_second,
        "loss": loss,
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "max_ms": hist_percentile(hist, 1.0),
        "per_connection_min": report["per_connection_min"],
        "per_connection_max": report["per_connection_max"],
        "closed_by_server": report["closed"],
        "server_cpu_percent": cpu_percent(before[0], after[0]),
        "server_cpu_us_per_delivery": 1e6 * cpu_seconds / delivered if delivered else None,
        "server_rss_kib": after[0].rss_kib,
        "clients_cpu_percent": cpu_percent(before[1], after[1]),
        "publisher_cpu_percent": cpu_percent(before[2], after[2]),
        "broker_cpu_percent": cpu_percent(before[3], after[3]) if broker else None,
    }
    step["ok"] = bool(
        p99 is not None and p99 <= parameters.max_p99_ms and loss <= parameters.max_loss and not closed
    )
    return step


def _drain(clients: ClientGroup, *, expected: int, limit: float) -> None:
    """Wait until ``expected`` deliveries arrived, nothing arrived for 1 s, or ``limit`` s passed."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        received = clients.count()["received"]
        if received >= expected:
            return
        if received != last:
            last, since = received, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            return
        time.sleep(0.02)


@dataclass
class RateSession:
    """The subscribers and publisher of one rate scenario on one target, for its steps."""

    run: Run
    target: Target
    clients: ClientGroup
    publisher: PublisherProcess
    scenario: str
    channels: list[str]
    per_channel: int  # subscribers per channel: deliveries per published event

    def step(self, rate: float, phase: str) -> dict[str, Any]:
        """One step at ``rate`` expected deliveries/s; ``phase`` ("rise", "down", "refine",
        "half", "profile") is recorded and printed."""
        step = rate_step(
            self.run,
            self.target,
            self.clients,
            self.publisher,
            rate=rate,
            channels=self.channels,
            per_channel=self.per_channel,
        )
        step["phase"] = phase
        self.run.log("  " + _step_line(f"{self.scenario} {phase}", step))
        return step


def rate_ramp(session: RateSession) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The steps of the search for the max rate, and the best passing step (or None).

    Rises through ``rates`` until a step fails; if the very first fails, halves it (at most 4
    times) until one passes; then ``refine`` bisection steps between the best passing rate and
    the lowest failing one.
    """
    parameters = session.run.parameters
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    failed_at: float | None = None

    def take(step: dict[str, Any]) -> bool:
        nonlocal best, failed_at
        steps.append(step)
        if step["ok"]:
            if best is None or step["delivered_per_second"] > best["delivered_per_second"]:
                best = step
        elif failed_at is None or step["rate"] < failed_at:
            failed_at = step["rate"]
        return bool(step["ok"])

    for rate in parameters.rates:
        if not take(session.step(rate, "rise")):
            break
    if best is None and failed_at is not None:
        rate = failed_at
        for _ in range(4):
            rate /= 2
            if take(session.step(rate, "down")):
                break
    if best is not None and failed_at is not None:
        low, high = best["rate"], failed_at
        for _ in range(parameters.refine):
            middle = (low + high) / 2
            if take(session.step(middle, "refine")):
                low = middle
            else:
                high = middle
    return steps, best


def rate_scenario(run: Run, target: Target, scenario: str) -> dict[str, Any]:
    """``fanout`` or ``channels`` for ``target`` (see the module docstring)."""
    parameters = run.parameters
    count = parameters.subscribers
    channels = ["ticks/0"] if scenario == "fanout" else [f"ticks/{n}" for n in range(count)]
    per_channel = count if scenario == "fanout" else 1
    result: dict[str, Any] = {"subscribers": count, "channels": len(channels), "steps": []}
    with run.clients() as clients:
        publisher = PublisherProcess(target, run.log_dir)
        try:
            specs = [target.client_spec(channels[i % len(channels)], i) for i in range(count)]
            opened = clients.open(specs, **run.open_options(target, parameters.open_concurrency))
            result["open"] = opened
            if opened["opened"] < count:
                result["error"] = f"only {opened['opened']} of {count} subscribers connected: {_why(opened)}"
                run.log(f"  {scenario}: {result['error']}")
                return result
            session = RateSession(run, target, clients, publisher, scenario, channels, per_channel)
            result["steps"], best = rate_ramp(session)
            result["max_rate"] = best["delivered_per_second"] if best else None
            result["max_step"] = best
            result["half"] = session.step(best["delivered_per_second"] / 2, "half") if best else None
            if best and parameters.profile and scenario == "fanout" and target.name.startswith("gateway"):
                result["profile"] = profile_step(session, rate=best["rate"])
            clients.close()
        finally:
            publisher.stop()
    return result


def _why(opened: dict[str, Any]) -> str:
    reasons = {**opened["refused"], **opened["failed"]}
    return ", ".join(f"{reason}: {number}" for reason, number in reasons.items()) or "no reason given"


def _step_line(scenario: str, step: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return f"{value:.1f}" if value is not None else "-"

    return (
        f"{scenario:<13} rate {step['rate']:>9,.0f}/s  delivered {step['delivered_per_second']:>9,.0f}/s  "
        f"loss {100 * step['loss']:5.2f}%  p50/p95/p99 {ms(step['p50_ms'])}/{ms(step['p95_ms'])}/"
        f"{ms(step['p99_ms'])} ms  server CPU {step['server_cpu_percent']:.0f}%  "
        f"clients CPU {step['clients_cpu_percent']:.0f}%  {'ok' if step['ok'] else 'FAIL'}"
    )


def profile_step(session: RateSession, *, rate: float) -> dict[str, Any]:
    """One more step at ``rate`` with py-spy recording the target's first server process: a
    flamegraph SVG and a collapsed-stack file (``--format raw``) next to the JSON document."""
    run, target = session.run, session.target
    py_spy = str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        py_spy = shutil.which("py-spy") or py_spy
    if not Path(py_spy).exists():
        run.log("  profile: py-spy is not installed (pip install py-spy); skipped")
        return {"skipped": "py-spy is not installed"}
    pid = target.server_pids()[0]
    stem = run.json_path.with_suffix("")
    files = {
        "flamegraph": Path(f"{stem}.{target.name}.fanout.svg"),
        "raw": Path(f"{stem}.{target.name}.fanout.txt"),
    }
    duration = max(1, math.ceil(run.parameters.step_seconds))
    recorders = [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(duration),
                "--rate",
                "250",
                "--nonblocking",
                "--format",
                kind,
                "--output",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for kind, path in files.items()
    ]
    try:
        time.sleep(0.5)  # py-spy attaches
        step = session.step(rate, "profile")
        errors = []
        for recorder in recorders:
            _, stderr = recorder.communicate(timeout=duration + 30)
            if recorder.returncode:
                errors.append(stderr.decode(errors="replace").strip()[-500:])
    finally:
        for recorder in recorders:
            if recorder.poll() is None:
                recorder.kill()
                recorder.wait()
    run.log(f"  profile: {files['flamegraph']} and {files['raw']}")
    return {
        "pid": pid,
        "step": step,
        "files": {kind: str(path) for kind, path in files.items() if path.exists()},
        "errors": errors,
    }


IDLE_WARM_UP = 50  # connections opened and closed before the idle ramp's first RSS sample


def idle_scenario(run: Run, target: Target) -> dict[str, Any]:
    """Ramp to ``idle_connections`` in batches (until over 1% of a batch fails), hold
    ``idle_hold`` s. Run it on a freshly started target: memory freed by earlier scenarios would
    be reused and hide the connections' cost. A warm-up of ``IDLE_WARM_UP`` connections, opened
    and closed before the first sample, keeps one-time costs (code paths loaded, database and
    Redis connections of the first handshake) out of the per-connection figure."""
    parameters = run.parameters
    goal = parameters.idle_connections
    processes = max(parameters.client_processes, math.ceil(goal / MAX_CONNECTIONS_PER_PROCESS))
    result: dict[str, Any] = {"target_connections": goal, "client_processes": processes}
    with run.clients(processes) as clients:
        pids = target.server_pids()
        warm_up = [target.client_spec("ticks/0", i) for i in range(min(IDLE_WARM_UP, goal))]
        clients.open(warm_up, **run.open_options(target, parameters.open_concurrency))
        clients.close()
        time.sleep(1.0)
        before = _usage(pids)
        held = 0
        refused: dict[str, int] = {}
        failed: dict[str, int] = {}
        started = time.monotonic()
        while held < goal:
            size = min(parameters.idle_batch, goal - held)
            specs = [target.client_spec("ticks/0", held + i) for i in range(size)]
            opened = clients.open(specs, **run.open_options(target, parameters.open_concurrency))
            held = opened["open"]
            refused, failed = (
                sum_counts([refused, opened["refused"]]),
                sum_counts([failed, opened["failed"]]),
            )
            # A stray reset is no limit; more than 1% of a batch failing is.
            failures = sum(opened["refused"].values()) + sum(opened["failed"].values())
            if failures > size // 100 or not opened["opened"]:
                break
        result["ramp_seconds"] = time.monotonic() - started
        time.sleep(1.0)  # let the server settle (handshake tasks, buffers)
        middle = _usage(pids)
        time.sleep(parameters.idle_hold)
        after = _usage(pids)
        still = clients.count()
        held = still["open"]
        result.update(
            held=held,
            refused=refused,
            failed=failed,
            closed_by_server=still["closed"],
            rss_before_kib=before.rss_kib,
            rss_after_kib=after.rss_kib,
            kib_per_connection=(after.rss_kib - before.rss_kib) / held if held else None,
            cpu_percent_idle=cpu_percent(middle, after),
            hold_seconds=parameters.idle_hold,
            server_processes=len(pids),
        )
        run.log(
            f"  idle: {held:,} held of {goal:,} in {result['ramp_seconds']:.1f} s, "
            f"{result['kib_per_connection'] or 0:.1f} KiB/connection, "
            f"CPU idle {result['cpu_percent_idle']:.1f}%"
            + (f", failures {_why({'refused': refused, 'failed': failed})}" if refused or failed else "")
        )
        clients.close()
    return result


def storm_variant(run: Run, target: Target, variant: str) -> dict[str, Any]:
    """H handshakes with at most C in flight; accepted ones that the server closes within 0.5 s
    count as closed early (not accepted)."""
    parameters = run.parameters
    count = parameters.storm_handshakes
    with run.clients() as clients:
        pids = target.server_pids()
        specs = [target.client_spec("ticks/0", i) for i in range(count)]
        before = _usage(pids)
        opened = clients.open(specs, **run.open_options(target, parameters.storm_concurrency))
        after = _usage(pids)
        time.sleep(0.5)
        still = clients.count()
        closed_early = sum(still["closed"].values())
        accepted = opened["opened"] - closed_early
        seconds = opened["seconds"]
        result = {
            "variant": variant,
            "handshakes": count,
            "concurrency": run.open_options(target, parameters.storm_concurrency)["concurrency"],
            "accepted": accepted,
            "refused": opened["refused"],
            "failed": opened["failed"],
            "closed_early": still["closed"],
            "seconds": seconds,
            "handshakes_per_second": accepted / seconds if seconds > 0 else None,
            "server_cpu_percent": cpu_percent(before, after),
        }
        run.log(
            f"  storm {variant}: {accepted:,} of {count:,} accepted in {seconds:.2f} s = "
            f"{result['handshakes_per_second'] or 0:,.0f}/s, server CPU {result['server_cpu_percent']:.0f}%"
            + (f", not accepted: {_why(opened)}" if opened["refused"] or opened["failed"] else "")
            + (f", closed early: {still['closed']}" if closed_early else "")
        )
        clients.close()
    return result


def storm_scenario(run: Run, target: Target) -> dict[str, Any]:
    result = {"warm": storm_variant(run, target, "warm")}
    use_secrets = getattr(target, "use_secrets", None)
    if use_secrets is None or run.objects is None:
        result["cold"] = {"skipped": "no credentials: only the warm variant applies"}
        return result
    started = time.monotonic()
    cold = bench_keys_create(run.objects, run.parameters.storm_handshakes)
    run.log(f"  storm cold: created {len(cold):,} keys in {time.monotonic() - started:.1f} s (not counted)")
    with use_secrets(cold):
        result["cold"] = storm_variant(run, target, "cold")
    return result
