"""The benchmark run: ``bench_run(parameters, json_path=…, log=print)``.

Creates the bench objects (``gateway.bench.objects``); for each target (the gateway under each
``--servers`` entry, the bare bridge, Pushpin) starts it, runs the chosen scenarios
(``gateway.bench.scenarios``) and stops it; stops every process it started and deletes the bench
objects at the end, also after an error, Ctrl-C or SIGTERM. Returns the result document
(``gateway.bench.report.document``'s input).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import platform
import resource
import shutil
import subprocess
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from gateway.bench.objects import BenchObjects, bench_objects_create, bench_objects_delete, bench_prefix
from gateway.bench.scenarios import (
    SCENARIOS,
    SERVERS,
    TARGETS,
    BenchParameters,
    Log,
    Run,
    idle_scenario,
    rate_scenario,
    storm_scenario,
)
from gateway.bench.targets import BareBridgeTarget, GatewayTarget, ManagedProcess, Target

__all__ = ["SCENARIOS", "SERVERS", "TARGETS", "BenchParameters", "bench_run"]

atexit.register(ManagedProcess.stop_all)


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, kernel, Python and library versions, open-file limit, load."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        ram_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    versions = {}
    for package in ("django", "channels", "uvicorn", "websockets", "daphne", "aio-pika", "aiormq", "uvloop"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    pushpin = shutil.which("pushpin")
    if pushpin:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            versions["pushpin"] = (
                subprocess.run([pushpin, "--version"], capture_output=True, text=True, timeout=10)
                .stdout.strip()
                .splitlines()[0]
            )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "ram_mib": ram_kib // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "open_files_limit": {"soft": soft, "hard": hard},
        "load_average_at_start": list(os.getloadavg()),
    }


def _pushpin_target(log_dir: Path) -> tuple[Target | None, str | None]:
    """The Pushpin target, or why it cannot run (``gateway.bench.pushpin`` is imported lazily)."""
    try:
        from gateway.bench import pushpin
    except ImportError as exc:
        return None, f"gateway.bench.pushpin cannot be imported: {exc}"
    reason = pushpin.pushpin_available()
    if reason:
        return None, reason
    try:
        return pushpin.PushpinTarget(log_dir=log_dir), None
    except TypeError:
        return pushpin.PushpinTarget(), None


def _targets(run: Run, objects: BenchObjects) -> list[tuple[str, Target | None, str | None]]:
    """(name, target or None, why skipped) in run order."""
    chosen: list[tuple[str, Target | None, str | None]] = []
    for name in run.parameters.targets:
        if name in ("gateway", "gateway-throttled"):
            throttled = name == "gateway-throttled"
            for server in run.parameters.servers:
                target = GatewayTarget(
                    server=server,
                    api=objects.api,
                    version=objects.version,
                    secrets=objects.throttled_secrets if throttled else objects.secrets,
                    log_dir=run.log_dir,
                    throttled=throttled,
                )
                chosen.append((target.name, target, None))
        elif name == "bare-bridge":
            chosen.append(
                (name, BareBridgeTarget(api=objects.api, version=objects.version, log_dir=run.log_dir), None)
            )
        elif name == "pushpin":
            target, reason = _pushpin_target(run.log_dir)
            chosen.append((name, target, reason))
        else:
            raise ValueError(f"unknown target {name!r}")
    return chosen


def bench_run(parameters: BenchParameters, *, json_path: Path, log: Log = print) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns the result document's parts:
    ``parameters``, ``machine``, ``targets`` (name → label or ``skipped``), ``scenarios``
    (scenario → target → figures), ``started``/``finished`` (ISO 8601) and ``bench_prefix``."""
    from django.utils import timezone

    log_dir = json_path.with_suffix("")
    log_dir = log_dir.parent / f"{log_dir.name}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    run = Run(parameters=parameters, log=log, log_dir=log_dir, json_path=json_path)
    result: dict[str, Any] = {
        "started": timezone.now().isoformat(),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(parameters).items()},
        "machine": machine(),
        "targets": {},
        "scenarios": {scenario: {} for scenario in parameters.scenarios},
        "logs": str(log_dir),
    }
    prefix = result["bench_prefix"] = bench_prefix()
    try:
        objects = run.objects = bench_objects_create(prefix=prefix, keys=parameters.keys)
        log(f"Bench API {objects.api} {objects.version} with {parameters.keys} API keys; logs in {log_dir}")
        all_channels = [f"ticks/{n}" for n in range(max(parameters.subscribers, 1))]
        for name, target, skipped in _targets(run, objects):
            if target is None:
                log(f"{name}: skipped: {skipped}")
                result["targets"][name] = {"skipped": skipped}
                for scenario in parameters.scenarios:
                    result["scenarios"][scenario][name] = {"skipped": skipped}
                continue
            result["targets"][name] = {"label": target.label}
            log(f"{target.label}:")
            _target_scenarios(run, target, all_channels, result)
    finally:
        ManagedProcess.stop_all()
        # Deleting the keys tells their (closed) connections' control groups; channels_redis
        # reports each stale group member at INFO.
        channels_log = logging.getLogger("channels_redis")
        level = channels_log.level
        channels_log.setLevel(max(level, logging.WARNING))
        try:
            deleted = bench_objects_delete(prefix)
        finally:
            channels_log.setLevel(level)
        log(f"Bench objects deleted ({deleted} rows).")
    result["finished"] = timezone.now().isoformat()
    return result


def _target_start(target: Target, channels: list[str], info: dict[str, Any]) -> None:
    """Start ``target``; note its server PIDs (and the bare bridge's queue) in ``info``."""
    target.start(channels=channels)
    info.setdefault("server_pids", []).extend(target.server_pids())
    queue = getattr(target, "queue", None)
    if queue:
        info.setdefault("queues", []).append(queue)


def _target_scenarios(run: Run, target: Target, channels: list[str], result: dict[str, Any]) -> None:
    """Run the chosen scenarios on ``target``: fanout, channels and storm on one start, idle last
    (on ``gateway_processes`` gateway processes when asked). A scenario's error is recorded as
    its result and the next scenario runs; a target that does not start is recorded for all."""
    parameters = run.parameters
    info = result["targets"][target.name]
    scenarios = [s for s in parameters.scenarios if s != "idle"]
    scenarios += ["idle"] if "idle" in parameters.scenarios else []
    running: Target | None = None
    try:
        for scenario in scenarios:
            wanted = target
            if scenario == "idle" and running is not None:
                running.stop()  # idle measures memory: on a fresh server (see idle_scenario)
                running = None
            if scenario == "idle" and isinstance(target, GatewayTarget) and parameters.gateway_processes > 1:
                wanted = GatewayTarget(
                    server=target.server,
                    api=target.api,
                    version=target.version,
                    secrets=target.secrets,
                    log_dir=run.log_dir,
                    processes=parameters.gateway_processes,
                    throttled=target.throttled,
                )
            if wanted is not running:
                if running is not None:
                    running.stop()
                running = None
                _target_start(wanted, channels, info)
                running = wanted
            try:
                if scenario == "storm":
                    figures = storm_scenario(run, wanted)
                elif scenario == "idle":
                    figures = {"label": wanted.label, **idle_scenario(run, wanted)}
                else:
                    figures = rate_scenario(run, wanted, scenario)
            except Exception as exc:  # noqa: BLE001 - one scenario failing must not end the others
                run.log(f"  {scenario} failed: {exc}")
                figures = {"error": str(exc)}
            result["scenarios"][scenario][target.name] = figures
    except Exception as exc:  # noqa: BLE001 - a target that cannot start must not end the others
        run.log(f"  {target.name} failed: {exc}")
        for scenario in parameters.scenarios:
            result["scenarios"][scenario].setdefault(target.name, {"error": str(exc)})
    finally:
        if running is not None:
            running.stop()
