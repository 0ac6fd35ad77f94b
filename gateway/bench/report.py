"""The benchmark's output: ratios against the baselines, plain-text tables and the JSON document.

Ratios are ``<gateway target>/<baseline>`` for every gateway target (``gateway``,
``gateway-daphne``) and baseline (``bare-bridge``, ``pushpin``) that both have the figure, plus
``gateway-daphne/gateway`` and ``gateway-throttled/gateway`` (the cost of throttling: the same
gateway, its subscribers on a plan whose throttling policy counts every delivery). Above 1
means the gateway's figure is larger: better for rates and connections held, worse for latency,
CPU per delivery and KiB per connection.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

BASELINES = ("bare-bridge", "pushpin")


def _rate_figures(entry: dict[str, Any]) -> dict[str, float | None]:
    best = entry.get("max_step") or {}
    half = entry.get("half") or {}
    return {
        "max_rate": entry.get("max_rate"),
        "p99_at_half_ms": half.get("p99_ms"),
        "p50_at_half_ms": half.get("p50_ms"),
        "cpu_us_per_delivery_at_max": best.get("server_cpu_us_per_delivery"),
    }


def _idle_figures(entry: dict[str, Any]) -> dict[str, float | None]:
    return {
        "held": entry.get("held"),
        "kib_per_connection": entry.get("kib_per_connection"),
        "cpu_percent_idle": entry.get("cpu_percent_idle"),
    }


def _storm_figures(entry: dict[str, Any]) -> dict[str, float | None]:
    # Baselines have no credentials: their warm figure stands for both variants.
    warm = (entry.get("warm") or {}).get("handshakes_per_second")
    cold = (entry.get("cold") or {}).get("handshakes_per_second")
    return {"warm_handshakes_per_second": warm, "cold_handshakes_per_second": cold or warm}


FIGURES: dict[str, Callable[[dict[str, Any]], dict[str, float | None]]] = {
    "fanout": _rate_figures,
    "channels": _rate_figures,
    "idle": _idle_figures,
    "storm": _storm_figures,
}


def cpu_ratio_at_same_rates(ours: dict[str, Any], theirs: dict[str, Any]) -> float | None:
    """The mean, over the rates both targets passed (``ok`` steps of the same ``rate``), of
    ``ours``' server µs of CPU per delivery over ``theirs``': what the gateway pays for the
    same work, steadier than the maxima when p99 spikes decide where a rise stops. None when
    no rate was passed by both."""

    def by_rate(entry: dict[str, Any]) -> dict[float, float]:
        return {
            step["rate"]: step["server_cpu_us_per_delivery"]
            for step in entry.get("steps") or []
            if step.get("ok") and step.get("server_cpu_us_per_delivery")
        }

    mine, other = by_rate(ours), by_rate(theirs)
    common = sorted(set(mine) & set(other))
    if not common:
        return None
    return sum(mine[rate] / other[rate] for rate in common) / len(common)


def ratios(scenarios: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{scenario: {"gateway/bare-bridge": {figure: ratio}}}`` for the comparable figures."""
    result: dict[str, dict[str, dict[str, float]]] = {}
    for scenario, entries in scenarios.items():
        figures = {
            name: FIGURES[scenario](entry)
            for name, entry in entries.items()
            if isinstance(entry, dict) and "skipped" not in entry and "error" not in entry
        }
        pairs = [(g, b) for g in ("gateway", "gateway-daphne") for b in BASELINES]
        pairs.append(("gateway-daphne", "gateway"))
        # Throttling's cost: the same gateway with every delivery counted against a policy.
        pairs += [("gateway-throttled", "gateway"), ("gateway-daphne-throttled", "gateway-daphne")]
        for ours, theirs in pairs:
            if ours not in figures or theirs not in figures:
                continue
            pair = {}
            for figure, value in figures[ours].items():
                other = figures[theirs].get(figure)
                if value is not None and other:
                    pair[figure] = value / other
            if scenario in ("fanout", "channels"):
                same = cpu_ratio_at_same_rates(entries[ours], entries[theirs])
                if same is not None:
                    pair["cpu_us_per_delivery_at_same_rates"] = same
            if pair:
                result.setdefault(scenario, {})[f"{ours}/{theirs}"] = pair
    return result


def document(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: the run's result with its ``ratios``."""
    return {**result, "ratios": ratios(result["scenarios"])}


def json_write(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


# --- tables ------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ",.0f", unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{unit}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(header))
    ]
    lines.append("  ".join("-" * width for width in widths))
    for row in rows:
        lines.append(
            "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row))
        )
    return "\n".join(lines)


def _label(doc: dict[str, Any], name: str) -> str:
    return name + (" (baseline)" if name in BASELINES else "")


def _not_run(entry: dict[str, Any]) -> str | None:
    if "skipped" in entry:
        return f"skipped: {entry['skipped']}"
    if "error" in entry:
        return f"error: {entry['error']}"
    return None


def _ratio_rows(doc: dict[str, Any], scenario: str, columns: list[str | None], width: int) -> list[list[str]]:
    """One row per ratio pair: the ratio under each figure's column (``columns``: the figure of
    each column after the first, None for none), padded to ``width`` columns after the first."""
    columns = columns + [None] * (width - len(columns))
    return [
        [pair] + [_fmt(figures[c], ".2f", "×") if c in figures else "" for c in columns]
        for pair, figures in doc["ratios"].get(scenario, {}).items()
    ]


def rate_table(doc: dict[str, Any], scenario: str) -> str:
    entries = doc["scenarios"][scenario]
    header = [
        "target",
        "max deliv/s",
        "p50@½max ms",
        "p95@½max ms",
        "p99@½max ms",
        "CPU%@max",
        "µs CPU/deliv",
        "RSS MiB",
        "clients CPU%",
    ]
    rows, notes = [], []
    for name, entry in entries.items():
        why = _not_run(entry)
        if why:
            notes.append(f"{name}: {why}")
            continue
        best, half = entry.get("max_step") or {}, entry.get("half") or {}
        last = (entry.get("steps") or [{}])[-1]
        rows.append(
            [
                _label(doc, name),
                _fmt(entry.get("max_rate")),
                _fmt(half.get("p50_ms"), ".1f"),
                _fmt(half.get("p95_ms"), ".1f"),
                _fmt(half.get("p99_ms"), ".1f"),
                _fmt(best.get("server_cpu_percent")),
                _fmt(best.get("server_cpu_us_per_delivery"), ".1f"),
                _fmt((best or last).get("server_rss_kib", 0) / 1024 if (best or last) else None, ".0f"),
                _fmt(best.get("clients_cpu_percent")),
            ]
        )
    columns = [
        "max_rate",
        "p50_at_half_ms",
        None,
        "p99_at_half_ms",
        None,
        "cpu_us_per_delivery_at_max",
        None,
        None,
    ]
    rows += _ratio_rows(doc, scenario, columns, len(header) - 1)
    for pair, figures in doc["ratios"].get(scenario, {}).items():
        if "cpu_us_per_delivery_at_same_rates" in figures:
            notes.append(
                f"{pair}: server CPU per delivery at the same rates (mean over the rates both passed): "
                f"{figures['cpu_us_per_delivery_at_same_rates']:.2f}×"
            )
    parameters = doc["parameters"]
    what = "on one channel" if scenario == "fanout" else "each on its own channel"
    title = (
        f"{scenario}: {parameters['subscribers']:,} subscribers {what}, "
        f"steps of {parameters['step_seconds']:g} s, stop at p99 > {parameters['max_p99_ms']:g} ms "
        f"or loss > {100 * parameters['max_loss']:g}%"
    )
    return "\n".join([title, _table(header, rows), *notes])


def steps_table(doc: dict[str, Any], scenario: str) -> str:
    """Every step of ``scenario``: phase (rise, down, refine, half, profile), rates, latency, CPU."""
    header = ["target", "step", "rate/s", "published/s", "delivered/s", "loss %", "p50", "p95", "p99 ms"]
    header += ["CPU%", "clients%", "broker%", ""]
    rows = []
    for name, entry in doc["scenarios"][scenario].items():
        steps = list(entry.get("steps") or [])
        steps += [entry["half"]] if entry.get("half") else []
        steps += [entry["profile"]["step"]] if "step" in (entry.get("profile") or {}) else []
        for step in steps:
            rows.append(
                [
                    name,
                    step.get("phase", ""),
                    _fmt(step["rate"]),
                    _fmt(step["published_per_second"]),
                    _fmt(step["delivered_per_second"]),
                    _fmt(100 * step["loss"], ".2f"),
                    _fmt(step["p50_ms"], ".1f"),
                    _fmt(step["p95_ms"], ".1f"),
                    _fmt(step["p99_ms"], ".1f"),
                    _fmt(step["server_cpu_percent"]),
                    _fmt(step["clients_cpu_percent"]),
                    _fmt(step.get("broker_cpu_percent")),
                    "ok" if step["ok"] else "fail",
                ]
            )
    return _table(header, rows) if rows else ""


def idle_table(doc: dict[str, Any]) -> str:
    header = ["target", "held", "of", "failures", "KiB/conn", "CPU% idle", "RSS MiB", "processes", "ramp s"]
    rows, notes = [], []
    for name, entry in doc["scenarios"]["idle"].items():
        why = _not_run(entry)
        if why:
            notes.append(f"{name}: {why}")
            continue
        failures = sum(entry.get("refused", {}).values()) + sum(entry.get("failed", {}).values())
        rows.append(
            [
                _label(doc, name),
                _fmt(entry.get("held")),
                _fmt(entry.get("target_connections")),
                _fmt(failures),
                _fmt(entry.get("kib_per_connection"), ".1f"),
                _fmt(entry.get("cpu_percent_idle"), ".1f"),
                _fmt(entry.get("rss_after_kib", 0) / 1024, ".0f"),
                _fmt(entry.get("server_processes")),
                _fmt(entry.get("ramp_seconds"), ".1f"),
            ]
        )
    rows += _ratio_rows(
        doc, "idle", ["held", None, None, "kib_per_connection", "cpu_percent_idle"], len(header) - 1
    )
    parameters = doc["parameters"]
    title = (
        f"idle: ramp to {parameters['idle_connections']:,} connections "
        f"in batches of {parameters['idle_batch']:,}, hold {parameters['idle_hold']:g} s "
        "(KiB/conn = RSS delta / connections held)"
    )
    return "\n".join([title, _table(header, rows), *notes])


def storm_table(doc: dict[str, Any]) -> str:
    header = [
        "target",
        "variant",
        "accepted",
        "refused",
        "failed",
        "closed",
        "seconds",
        "handshakes/s",
        "CPU%",
    ]
    rows, notes = [], []
    for name, entry in doc["scenarios"]["storm"].items():
        why = _not_run(entry)
        if why:
            notes.append(f"{name}: {why}")
            continue
        for variant in ("warm", "cold"):
            figures = entry.get(variant) or {}
            if "skipped" in figures:
                continue
            rows.append(
                [
                    _label(doc, name),
                    variant,
                    _fmt(figures.get("accepted")),
                    _fmt(sum(figures.get("refused", {}).values())),
                    _fmt(sum(figures.get("failed", {}).values())),
                    _fmt(sum(figures.get("closed_early", {}).values())),
                    _fmt(figures.get("seconds"), ".2f"),
                    _fmt(figures.get("handshakes_per_second")),
                    _fmt(figures.get("server_cpu_percent")),
                ]
            )
    for pair, figures in doc["ratios"].get("storm", {}).items():
        for variant in ("warm", "cold"):
            value = figures.get(f"{variant}_handshakes_per_second")
            if value is not None:
                rows.append([pair, variant, "", "", "", "", "", _fmt(value, ".2f", "×"), ""])
    parameters = doc["parameters"]
    title = (
        f"storm: {parameters['storm_handshakes']:,} handshakes, at most {parameters['storm_concurrency']:,} "
        "in flight (warm: a few API keys; cold: a new key per handshake; baselines have no credentials)"
    )
    return "\n".join([title, _table(header, rows), *notes])


def tables(doc: dict[str, Any]) -> str:
    """Every scenario's table (and the rate scenarios' steps), machine and targets first."""
    machine = doc["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    parts = [
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['ram_mib']:,} MiB RAM, "
        f"Python {machine['python']}, open files {machine['open_files_limit']['soft']:,}; {versions}",
        "Targets: "
        + "; ".join(
            f"{n}: {t.get('label') or 'skipped: ' + str(t.get('skipped'))}" for n, t in doc["targets"].items()
        ),
    ]
    for scenario in doc["scenarios"]:
        if scenario in ("fanout", "channels"):
            parts += [rate_table(doc, scenario), steps_table(doc, scenario)]
        elif scenario == "idle":
            parts.append(idle_table(doc))
        elif scenario == "storm":
            parts.append(storm_table(doc))
    return "\n\n".join(part for part in parts if part)
