"""
Smoke test of the benchmark: ``python -m bench --quick`` runs to the end,
writes its JSON, and the failover test lost no message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.timeout(180)

FIGURES = {
    "throughput_100B_msgs_per_s",
    "throughput_1KiB_MB_per_s",
    "throughput_64KiB_MB_per_s",
    "roundtrip_p50_us",
    "roundtrip_p99_us",
    "startup_listen_us",
    "startup_connect_us",
    "fanin_msgs_per_s",
    "memory_per_link_KiB",
    "failover_first_message_p50_ms",
    "failover_first_message_p99_ms",
    "failover_first_message_max_ms",
    "failover_elected_p50_ms",
    "failover_lost",
}


def test_quickBenchmark(tmp_path: object, request: pytest.FixtureRequest) -> None:
    if request.config.getoption("reactor", "default") != "default":
        pytest.skip("the benchmark's children always run the default reactor")
    output = os.path.join(str(tmp_path), "bench.json")
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", output],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "| figure | twisted-channel | baseline | ratio |" in completed.stdout
    with open(output, encoding="utf-8") as f:
        results = json.load(f)
    assert {"meta", "figures", "failover", "raw", "errors"} <= set(results)
    assert results["errors"] == []
    assert FIGURES <= set(results["figures"])
    for key in FIGURES:
        figure = results["figures"][key]
        assert {"channel", "baseline", "ratio"} <= set(figure), key
        assert figure["channel"] is not None, key
    for key in FIGURES - {k for k in FIGURES if k.startswith("failover_")}:
        assert results["figures"][key]["baseline"] is not None, key
        assert results["figures"][key]["ratio"] is not None, key
    failover = results["failover"]
    assert failover["kills"] >= 1
    assert failover["lost"] == 0
    assert results["figures"]["failover_lost"]["channel"] == 0
