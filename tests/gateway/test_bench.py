"""``manage.py bench_gateway`` smoke test: a run of a few seconds against the gateway and the bare
bridge (no speed thresholds), and the latency histogram's precision."""

from __future__ import annotations

import json
import os
import random
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from gateway.bench.objects import bench_objects_left
from gateway.bench.targets import ManagedProcess
from gateway.bench.wsclient import bucket_of, hist_percentile
from tests.fixtures.servers import database_url_for_tests, rabbitmq_list


def _children() -> list[int]:
    """PIDs of this process's live child processes."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != b"Z":
            children.append(int(entry.name))
    return children


def test_latency_histogram_percentiles_within_one_percent():
    rng = random.Random(5)
    latencies = sorted(rng.lognormvariate(-5, 1.5) for _ in range(20_000))  # seconds, ~7 ms median
    histogram: dict[int, int] = {}
    for latency in latencies:
        histogram[bucket_of(latency)] = histogram.get(bucket_of(latency), 0) + 1
    for fraction in (0.5, 0.95, 0.99):
        exact_ms = latencies[int(fraction * len(latencies)) - 1] * 1000
        assert hist_percentile(histogram, fraction) == pytest.approx(exact_ms, rel=0.011)
    assert hist_percentile({}, 0.5) is None


def test_tiny_bench_run_measures_gateway_and_bare_bridge_and_cleans_up(transactional_db, tmp_path):
    database_url_for_tests()  # skips unless PostgreSQL: server processes share the test database
    json_path = tmp_path / "bench.json"
    children_before = set(_children())
    out = StringIO()
    call_command(
        "bench_gateway",
        "--targets=gateway,bare-bridge",
        "--scenarios=fanout,channels,idle,storm",
        "--subscribers=10",
        "--rates=200",
        "--refine=0",
        "--step-seconds=1",
        "--idle=20",
        "--idle-hold=0.5",
        "--storm=10",
        "--storm-concurrency=5",
        "--keys=2",
        f"--json={json_path}",
        stdout=out,
    )
    doc = json.loads(json_path.read_text())
    text = out.getvalue()

    for target in ("gateway", "bare-bridge"):
        # fanout: every subscriber received every event of each step, with a latency.
        fanout = doc["scenarios"]["fanout"][target]
        for step in [*fanout["steps"], fanout["half"]]:
            published = step["published"]
            assert published > 0
            assert step["per_connection_min"] == step["per_connection_max"] == published, step
            assert step["delivered"] == step["expected"] == published * 10
            assert step["loss"] == 0
            assert 0 < step["p50_ms"] <= step["p95_ms"] <= step["p99_ms"]
            assert step["server_cpu_percent"] >= 0 and step["server_rss_kib"] > 0
        assert fanout["max_rate"] > 0
        # channels: each of the 10 subscribers on its own channel; every event delivered once.
        channels = doc["scenarios"]["channels"][target]
        step = channels["steps"][0]
        assert step["delivered"] == step["expected"] == step["published"] > 0
        assert step["p99_ms"] > 0
        idle = doc["scenarios"]["idle"][target]
        assert idle["held"] == 20 and not idle["failed"] and not idle["refused"]
        assert idle["kib_per_connection"] is not None
        warm = doc["scenarios"]["storm"][target]["warm"]
        assert warm["accepted"] == 10 and warm["handshakes_per_second"] > 0
    cold = doc["scenarios"]["storm"]["gateway"]["cold"]
    assert cold["accepted"] == 10 and not cold["refused"] and not cold["failed"]
    assert "skipped" in doc["scenarios"]["storm"]["bare-bridge"]["cold"]

    assert doc["ratios"]["fanout"]["gateway/bare-bridge"]["max_rate"] > 0
    assert doc["machine"]["cores"] and doc["parameters"]["subscribers"] == 10
    assert "gateway/bare-bridge" in text and "bare-bridge (baseline)" in text
    assert "BASELINE" in doc["targets"]["bare-bridge"]["label"]

    # Everything the run made is gone: bench objects, processes, the bare bridge's queue.
    assert bench_objects_left(doc["bench_prefix"]) == 0
    assert not ManagedProcess.running
    assert set(_children()) <= children_before
    server_pids = [pid for info in doc["targets"].values() for pid in info["server_pids"]]
    assert server_pids and not any(Path(f"/proc/{pid}").exists() for pid in server_pids)
    queues = {row["name"] for row in rabbitmq_list("queues", "name")}
    assert doc["targets"]["bare-bridge"]["queues"] and not queues & set(
        doc["targets"]["bare-bridge"]["queues"]
    )
    gateway_queues = [q for q in queues if q.startswith("eventgate.gateway.")]
    assert not [q for q in gateway_queues for pid in server_pids if f".{pid}." in q]


def test_tiny_bench_run_compares_the_gateway_with_throttling_on_and_off(transactional_db, tmp_path):
    database_url_for_tests()
    json_path = tmp_path / "bench.json"
    out = StringIO()
    call_command(
        "bench_gateway",
        "--targets=gateway,gateway-throttled",
        "--scenarios=fanout",
        "--subscribers=10",
        "--rates=200",
        "--refine=0",
        "--step-seconds=1",
        "--keys=2",
        f"--json={json_path}",
        stdout=out,
    )
    doc = json.loads(json_path.read_text())
    throttled = doc["scenarios"]["fanout"]["gateway-throttled"]
    # The policy counts every delivery but its limits are never reached: nothing is lost.
    for step in [*throttled["steps"], throttled["half"]]:
        assert step["delivered"] == step["expected"] == step["published"] * 10 > 0
        assert step["loss"] == 0
    assert "throttling on" in doc["targets"]["gateway-throttled"]["label"]
    assert doc["ratios"]["fanout"]["gateway-throttled/gateway"]["max_rate"] > 0
    assert "gateway-throttled/gateway" in out.getvalue()
    assert bench_objects_left(doc["bench_prefix"]) == 0
    # The throttled subscription's counters went with it (this test's Redis database had none
    # before: tests/conftest.py).
    from django.conf import settings

    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        assert not list(client.scan_iter(match="LIMITS:eventgate/*")), "throttling counters left behind"
        client.close()
