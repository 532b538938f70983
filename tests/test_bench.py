"""
Smoke test of the benchmark: ``python -m bench --quick`` runs to the end,
writes its JSON, the failover test lost no message, the client buffer
held to its cap, each peer either ran or was skipped with a reason
(never an error; no network needed), and the TLS group ran where etcd is
(else it is skipped with its reason).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

from bench import _node, _runner, _tlsbench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.timeout(180)

FIGURES = {
    "throughput_100B_msgs_per_s",
    "throughput_1KiB_MB_per_s",
    "throughput_64KiB_MB_per_s",
    "roundtrip_p50_us",
    "roundtrip_p99_us",
    "startup_listen_us",
    "startup_restart_listen_us",
    "startup_connect_us",
    "fanin_msgs_per_s",
    "fanin_slowest_client_msgs_per_s",
    "fanin_median_client_msgs_per_s",
    "memory_per_link_KiB",
}

#: The TLS group's, where etcd runs: the channel across machines against
#: Twisted ssl: endpoints.
TLS_FIGURES = {
    "tls_throughput_100B_msgs_per_s",
    "tls_throughput_64KiB_MB_per_s",
    "tls_roundtrip_p50_us",
    "tls_roundtrip_p99_us",
}

CHANNEL_ONLY = {
    "client_buffer_1024B_rss_growth_MiB",
    "client_buffer_1024B_refused",
    "failover_first_message_p50_ms",
    "failover_first_message_p99_ms",
    "failover_first_message_max_ms",
    "failover_elected_p50_ms",
    "failover_lost",
    "failover_never_recovered",
    "failover_idle_never_recovered",
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
    assert {"meta", "figures", "failover", "raw", "errors", "peers"} <= set(results)
    assert results["errors"] == []
    figures = results["figures"]
    assert FIGURES | CHANNEL_ONLY <= set(figures)
    for key in FIGURES | CHANNEL_ONLY:
        figure = figures[key]
        assert {"channel", "baseline", "ratio"} <= set(figure), key
        assert figure["channel"] is not None, key
    for key in FIGURES:
        assert figures[key]["baseline"] is not None, key
        assert figures[key]["ratio"] is not None, key

    tlsRuns, tlsDetail = _tlsbench.status()
    assert results["meta"]["tls"] == {"ok": tlsRuns, "detail": tlsDetail}
    assert tlsDetail in completed.stdout
    if tlsRuns:
        for key in TLS_FIGURES:
            figure = figures[key]
            assert figure["channel"] is not None and figure["channel"] > 0, key
            assert figure["baseline"] is not None and figure["baseline"] > 0, key
            assert figure["ratio"] is not None, key
    else:
        assert tlsDetail.startswith("skipped:")
        assert not TLS_FIGURES & set(figures)

    failover = results["failover"]
    assert failover["kills"] >= 1
    assert failover["idle_kills"] >= 1
    assert failover["lost"] == 0
    assert figures["failover_lost"]["channel"] == 0
    assert figures["failover_never_recovered"]["channel"] == 0

    # The client with no host holds exactly the cap and refuses the rest;
    # its memory grows with what it holds, not with what was written (three
    # times the cap).
    [buffered] = results["raw"]["buffer_1024B"]["channel"]
    assert buffered["state"] == "connecting"
    # The cap counts each message's payload and 64 bytes of bookkeeping.
    perMessage = 1024 + 64
    assert buffered["footprint_bytes"] == buffered["accepted"] * perMessage
    assert 0 <= buffered["cap_bytes"] - buffered["footprint_bytes"] < perMessage
    assert buffered["buffered_bytes"] == buffered["accepted"] * 1024
    assert buffered["accepted"] + buffered["refused"] == buffered["writes"]
    assert figures["client_buffer_1024B_rss_growth_MiB"]["ratio"] < 2.0

    # Every peer either ran or says why it did not; none is an error.
    peers = results["peers"]
    assert set(peers) == {"zmq", "mpconn", "node"}
    for name, peer in peers.items():
        assert peer["ran"] or peer["detail"].startswith("skipped"), (name, peer)
    assert peers["mpconn"]["ran"]
    assert peers["zmq"]["ran"] == _importable("zmq")
    for name, peer in peers.items():
        if peer["ran"]:
            for key in ("throughput_100B_msgs_per_s", "roundtrip_p50_us"):
                value = figures[key]["peers"][name]["value"]
                assert value is not None and value > 0, (name, key)
        assert peer["detail"] in completed.stdout
    if peers["node"]["ran"]:
        assert figures["failover_first_message_p50_ms"]["peers"]["node"] is not None
        assert figures["failover_lost"]["peers"]["node"]["sent"] > 0


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def test_nodeSkippedWithoutInstall(tmp_path: object) -> None:
    """
    Without a cached install, C{--quick}'s way (no install) skips the Node
    peer and says why.
    """
    status = _node.prepare(install=False, root=str(tmp_path))
    assert not status.ok
    assert status.detail.startswith("skipped:")


def test_nodeSkippedWhenInstallFails(tmp_path: object) -> None:
    """
    A missing or failing npm skips the Node peer, with the reason; nothing is
    left in the cache.
    """
    root = os.path.join(str(tmp_path), "cache")
    missing = os.path.join(str(tmp_path), "no-such-npm")
    status = _node.prepare(install=True, root=root, npm=missing)
    assert not status.ok
    assert status.detail.startswith("skipped:")
    failing = os.path.join(str(tmp_path), "npm")
    with open(failing, "w", encoding="ascii") as f:
        f.write("#!/bin/sh\necho 'npm ERR! network unreachable' >&2\nexit 1\n")
    os.chmod(failing, 0o755)
    status = _node.prepare(install=True, root=root, npm=failing)
    assert not status.ok
    assert status.detail.startswith("skipped:")
    if status.detail != "skipped: node is not on PATH":
        assert "network unreachable" in status.detail
    assert not os.path.exists(root) or os.listdir(root) == []


def test_nodeSkippedWithoutNode(tmp_path: object) -> None:
    status = _node.prepare(
        install=True, root=str(tmp_path), node=os.path.join(str(tmp_path), "node")
    )
    assert not status.ok
    assert status.detail.startswith("skipped:")


def test_tlsSkippedWithoutEtcd(
    tmp_path: object,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """
    Where there is no etcd binary, C{--only tls} measures nothing, says why
    in a line of its own and in the JSON, and is no error.
    """
    from twisted_channel import _democluster

    def missing(needs: str = "demo --cluster") -> str:
        raise _democluster.MissingEtcdError(f"{needs} needs an etcd server")

    monkeypatch.setattr(_democluster, "etcdBinary", missing)
    output = os.path.join(str(tmp_path), "bench.json")
    status = _runner.main(["--only", "tls", "--peers", "none", "--json", output])
    assert status == 0
    printed = capsys.readouterr()
    # It says what needs etcd: the bench, not the demo.
    assert "skipped: the bench's tls group needs an etcd server" in printed.out
    with open(output, encoding="utf-8") as f:
        results = json.load(f)
    assert results["meta"]["tls"] == {
        "ok": False,
        "detail": "skipped: the bench's tls group needs an etcd server",
    }
    assert results["figures"] == {}
    assert results["errors"] == []


def test_failedPeerRunIsRunAgain(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A peer's measurement that fails (open-channel's election can, under
    load) is run again once: the figure is the second run's, and the first
    failure is still reported among the peer's errors.
    """
    from bench import _common, _scenarios

    real = _scenarios.roundTrip
    calls: list[str] = []

    def failingOnce(impl: str, settings: object) -> dict[str, object]:
        calls.append(impl)
        if impl == _common.MPCONN and calls.count(impl) == 1:
            raise RuntimeError("the peer's own failure")
        return real(impl, settings)  # type: ignore[arg-type]

    monkeypatch.setattr(_scenarios, "roundTrip", failingOnce)
    output = os.path.join(str(tmp_path), "bench.json")
    status = _runner.main(
        ["--quick", "--only", "roundtrip", "--peers", "mpconn", "--json", output]
    )
    assert status == 0
    with open(output, encoding="utf-8") as f:
        results = json.load(f)
    assert calls.count(_common.MPCONN) == 2
    value = results["figures"]["roundtrip_p50_us"]["peers"]["mpconn"]["value"]
    assert value is not None and value > 0
    [failure] = results["peer_errors"]
    assert "(run again)" in failure and "the peer's own failure" in failure
