"""
What the benchmark measures and reports: each measurement (which
scenario, which implementations and peers run it) and each figure of the
table (its label, which way is better, how to read it from a result).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import _node, _scenarios, _tlsbench
from bench._common import BASELINE, CHANNEL, MPCONN, NODE, ZMQ
from bench._scenarios import Settings

Runner = Callable[[Settings], dict[str, Any]]


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    better: str  # "higher" or "lower"
    digits: int
    #: The measurement it comes from, and how to read it from a result.
    measurement: str
    read: Callable[[dict[str, Any]], float]
    #: Whether the baseline measures this too (else "n/a").
    baseline: bool = True
    #: A fixed figure to compare with instead of the baseline, and its name
    #: (the client buffer's cap).
    versus: float | None = None
    versusName: str = ""


@dataclass(frozen=True)
class Measurement:
    name: str
    group: str
    run: Callable[[str, Settings], dict[str, Any]]
    #: Which of the channel and the baseline run it.
    impls: tuple[str, ...] = (CHANNEL, BASELINE)
    #: The peers that run it too, each with its runner.
    peers: dict[str, Runner] = field(default_factory=dict)


def measurements(
    s: Settings, node: _node.NodeStatus | None, tls: bool = True
) -> list[Measurement]:
    """
    Every measurement; the TLS group's only with C{tls} (it needs etcd).
    """

    def pythonPeers(
        run: Callable[[str, Settings], dict[str, Any]],
    ) -> dict[str, Runner]:
        return {
            ZMQ: lambda s: run(ZMQ, s),
            MPCONN: lambda s: run(MPCONN, s),
        }

    def thr(size: int, count: Callable[[Settings], int]) -> Any:
        return lambda impl, s: _scenarios.throughput(impl, size, count(s), s)

    thr100 = thr(100, lambda s: s.thrSmallCount)
    thr1k = thr(1024, lambda s: s.thrKiBCount)
    thr64k = thr(65536, lambda s: s.thr64KiBCount)
    nodeThr: dict[str, Runner] = {}
    nodeRtt: dict[str, Runner] = {}
    if node is not None and node.ok:
        nodeThr[NODE] = lambda s: _node.throughput(node, 100, s.thrSmallCount, s)
        nodeRtt[NODE] = lambda s: _node.roundTrip(node, s)
    measurements = [
        Measurement(
            "thr_100B", "throughput", thr100, peers=pythonPeers(thr100) | nodeThr
        ),
        Measurement("thr_1KiB", "throughput", thr1k, peers=pythonPeers(thr1k)),
        Measurement("thr_64KiB", "throughput", thr64k, peers=pythonPeers(thr64k)),
        Measurement(
            "rtt",
            "roundtrip",
            _scenarios.roundTrip,
            peers=pythonPeers(_scenarios.roundTrip) | nodeRtt,
        ),
        Measurement("startup", "startup", _scenarios.startup),
        Measurement("fanin", "fanin", _scenarios.fanIn),
        Measurement("memory", "memory", _scenarios.memory),
    ]
    if tls:

        def tlsThr(size: int, count: Callable[[Settings], int]) -> Any:
            return lambda impl, s: _tlsbench.throughput(impl, size, count(s), s)

        measurements += [
            Measurement("tls_thr_100B", "tls", tlsThr(100, lambda s: s.thrSmallCount)),
            Measurement(
                "tls_thr_64KiB", "tls", tlsThr(65536, lambda s: s.thr64KiBCount)
            ),
            Measurement("tls_rtt", "tls", _tlsbench.roundTrip),
        ]
    for size in s.bufSizes:
        measurements.append(
            Measurement(
                f"buffer_{size}B",
                "memory",
                lambda impl, s, size=size: _scenarios.clientBuffer(size, s),
                impls=(CHANNEL,),
            )
        )
    return measurements


def sizeLabel(size: int) -> str:
    return f"{size >> 10} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def figures(s: Settings, faninNote: str) -> list[Figure]:
    figures = [
        Figure(
            "throughput_100B_msgs_per_s",
            f"throughput, {s.thrSmallCount:,} × 100 B (msg/s)",
            "higher",
            0,
            "thr_100B",
            lambda r: r["msgs_per_s"],
        ),
        Figure(
            "throughput_1KiB_MB_per_s",
            f"throughput, {s.thrKiBCount:,} × 1 KiB (MB/s)",
            "higher",
            1,
            "thr_1KiB",
            lambda r: r["mb_per_s"],
        ),
        Figure(
            "throughput_64KiB_MB_per_s",
            f"throughput, {s.thr64KiBCount:,} × 64 KiB (MB/s)",
            "higher",
            1,
            "thr_64KiB",
            lambda r: r["mb_per_s"],
        ),
        Figure(
            "roundtrip_p50_us",
            f"round trip {s.rttSize} B, p50 of {s.rttCount:,} (µs)",
            "lower",
            1,
            "rtt",
            lambda r: r["p50_us"],
        ),
        Figure(
            "roundtrip_p99_us",
            f"round trip {s.rttSize} B, p99 of {s.rttCount:,} (µs)",
            "lower",
            1,
            "rtt",
            lambda r: r["p99_us"],
        ),
        Figure(
            "startup_listen_us",
            "start-up: listen() → hosting (µs)",
            "lower",
            1,
            "startup",
            lambda r: r["listen_us"],
        ),
        Figure(
            "startup_restart_listen_us",
            "start-up: listen() → hosting, a name used before (a restart) (µs)",
            "lower",
            1,
            "startup",
            lambda r: r["restart_listen_us"],
        ),
        Figure(
            "startup_connect_us",
            "start-up: connect() → first message delivered (µs)",
            "lower",
            1,
            "startup",
            lambda r: r["connect_us"],
        ),
        Figure(
            "fanin_msgs_per_s",
            f"fan-in, {s.faninClients} client processes{faninNote} × "
            f"{s.faninCount:,} × 100 B, aggregate (msg/s)",
            "higher",
            0,
            "fanin",
            lambda r: r["msgs_per_s"],
        ),
        Figure(
            "fanin_slowest_client_msgs_per_s",
            f"fan-in, {s.faninClients} client processes{faninNote}: slowest "
            "client's rate, its messages over the time from the first "
            "message at the host (any client's) to its own last (msg/s)",
            "higher",
            0,
            "fanin",
            lambda r: r["slowest_client_msgs_per_s"],
        ),
        Figure(
            "fanin_median_client_msgs_per_s",
            f"fan-in, {s.faninClients} client processes{faninNote}: median "
            "client's rate, measured the same way (msg/s)",
            "higher",
            0,
            "fanin",
            lambda r: r["median_client_msgs_per_s"],
        ),
        Figure(
            "memory_per_link_KiB",
            f"host memory per idle link, {s.memLinks:,} links (KiB RSS)",
            "lower",
            1,
            "memory",
            lambda r: r["per_link_kib"],
        ),
    ]
    tls = "TLS across machines (baseline: Twisted ssl:),"
    figures += [
        Figure(
            "tls_throughput_100B_msgs_per_s",
            f"{tls} throughput, {s.thrSmallCount:,} × 100 B (msg/s)",
            "higher",
            0,
            "tls_thr_100B",
            lambda r: r["msgs_per_s"],
        ),
        Figure(
            "tls_throughput_64KiB_MB_per_s",
            f"{tls} throughput, {s.thr64KiBCount:,} × 64 KiB (MB/s)",
            "higher",
            1,
            "tls_thr_64KiB",
            lambda r: r["mb_per_s"],
        ),
        Figure(
            "tls_roundtrip_p50_us",
            f"{tls} round trip {s.rttSize} B, p50 of {s.rttCount:,} (µs)",
            "lower",
            1,
            "tls_rtt",
            lambda r: r["p50_us"],
        ),
        Figure(
            "tls_roundtrip_p99_us",
            f"{tls} round trip {s.rttSize} B, p99 of {s.rttCount:,} (µs)",
            "lower",
            1,
            "tls_rtt",
            lambda r: r["p99_us"],
        ),
    ]
    capMiB = s.bufCap / (1 << 20)
    for size in s.bufSizes:
        what = (
            f"client with no host, maxBufferSize {capMiB:g} MiB, "
            f"{s.bufTotal / 1e6:g} MB written as {sizeLabel(size)} messages"
        )
        figures.append(
            Figure(
                f"client_buffer_{size}B_rss_growth_MiB",
                f"{what}: peak RSS growth (MiB; ratio to the cap)",
                "lower",
                1,
                f"buffer_{size}B",
                lambda r: r["reported_growth_mib"],
                baseline=False,
                versus=capMiB,
                versusName="cap",
            )
        )
        figures.append(
            Figure(
                f"client_buffer_{size}B_refused",
                f"{what}: writes refused with ChannelBufferFullError "
                f"(of {-(-s.bufTotal // size):,})",
                "lower",
                0,
                f"buffer_{size}B",
                lambda r: r["refused"],
                baseline=False,
            )
        )
    return figures


FAILOVER_FIGURES = [
    ("failover_first_message_p50_ms", "p50", "first_message_p50_ms"),
    ("failover_first_message_p99_ms", "p99", "first_message_p99_ms"),
    ("failover_first_message_max_ms", "max", "first_message_max_ms"),
]
