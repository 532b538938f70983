"""
C{python -m bench}: run every measurement C{--runs} times, interleaving the
channel, the baseline and the peers, print a Markdown table of the medians
and write them, with every run's numbers, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from bench import _node, _peers, _scenarios
from bench._common import (
    BASELINE,
    CHANNEL,
    MPCONN,
    NODE,
    PEER_TITLES,
    PEERS,
    ZMQ,
    median,
    percentile,
)
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


@dataclass
class PeerStatus:
    ok: bool
    detail: str


def _measurements(s: Settings, node: _node.NodeStatus | None) -> list[Measurement]:
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


def _size(size: int) -> str:
    return f"{size >> 10} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def _figures(s: Settings, faninNote: str) -> list[Figure]:
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
            "client's rate, its first to last message at the host (msg/s)",
            "higher",
            0,
            "fanin",
            lambda r: r["slowest_client_msgs_per_s"],
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
    capMiB = s.bufCap / (1 << 20)
    for size in s.bufSizes:
        what = (
            f"client with no host, maxBufferSize {capMiB:g} MiB, "
            f"{s.bufTotal / 1e6:g} MB written as {_size(size)} messages"
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


def _log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _format(value: float | None, digits: int) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a != a or b != b or not b:
        return None
    return a / b


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _peerCell(
    value: float | None, digits: int, vsBase: float | None, vsPeer: float | None
) -> str:
    """
    A peer's cell: its value, then (its ratio to the baseline / the
    channel's ratio to it).
    """
    if value is None or value != value:
        return "–"
    return f"{_format(value, digits)} ({_times(vsBase)} / {_times(vsPeer)})"


def _preparePeers(
    requested: list[str], quick: bool
) -> tuple[dict[str, PeerStatus], _node.NodeStatus | None]:
    statuses: dict[str, PeerStatus] = {}
    node: _node.NodeStatus | None = None
    for peer in requested:
        if peer == ZMQ:
            ok, detail = _peers.zmqStatus()
            statuses[peer] = PeerStatus(ok, detail)
        elif peer == MPCONN:
            statuses[peer] = PeerStatus(
                True, f"Python {platform.python_version()}, AF_UNIX"
            )
        elif peer == NODE:
            t0 = time.monotonic()
            try:
                node = _node.prepare(install=not quick)
            except Exception as e:  # never an error of the benchmark
                node = _node.NodeStatus(False, f"skipped: {type(e).__name__}: {e}")
            statuses[peer] = PeerStatus(node.ok, node.detail)
            _log(f"open-channel: {node.detail} ({time.monotonic() - t0:.1f} s)")
    return statuses, node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark twisted-channel against Twisted unix: endpoints "
        "with Int32StringReceiver and, where available, pyzmq, "
        "multiprocessing.connection and the Node package open-channel, all "
        "measured in the same invocation.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts, 1 run (a smoke test)"
    )
    parser.add_argument("--runs", type=int, default=None, help="runs (default 5)")
    parser.add_argument(
        "--json", default="bench-results.json", help="where to write the results"
    )
    parser.add_argument(
        "--kills", type=int, default=None, help="host kills per failover run"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated groups to run: " + ",".join(_scenarios.SCENARIOS),
    )
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help="comma-separated peers to measure too, or 'none' (default: "
        f"{','.join(PEERS)}; each is skipped, with the reason in the table, "
        "where it cannot run; --quick uses open-channel only if an earlier "
        "full run installed it)",
    )
    options = parser.parse_args(argv)

    settings = Settings.quick() if options.quick else Settings()
    if options.kills is not None:
        settings.kills = options.kills
    runs = options.runs if options.runs is not None else (1 if options.quick else 5)
    if runs < 1:
        parser.error("--runs must be at least 1")
    groups = set(_scenarios.SCENARIOS)
    if options.only:
        groups = {g.strip() for g in options.only.split(",") if g.strip()}
        unknown = groups - set(_scenarios.SCENARIOS)
        if unknown:
            parser.error(f"unknown groups: {', '.join(sorted(unknown))}")
    requested = [
        p.strip() for p in options.peers.split(",") if p.strip() and p.strip() != "none"
    ]
    unknown = set(requested) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    requested = [p for p in PEERS if p in requested]

    wantedClients = settings.faninClients
    settings.faninClients, limitedBy = _scenarios.faninCapacity(wantedClients)
    faninNote = (
        f" (of {wantedClients} wanted; limited by {limitedBy})"
        if settings.faninClients < wantedClients
        else ""
    )

    started = time.time()
    t0 = time.monotonic()
    # Only the peers that some selected measurement uses are prepared (the
    # Node install is slow).
    peerGroups = {ZMQ: {"throughput", "roundtrip"}, MPCONN: {"throughput", "roundtrip"}}
    peerGroups[NODE] = {"throughput", "roundtrip", "failover"}
    requested = [p for p in requested if peerGroups[p] & groups]
    statuses, node = _preparePeers(requested, options.quick)
    active = [p for p in requested if statuses[p].ok]

    measurements = [m for m in _measurements(settings, node) if m.group in groups]
    figures = [
        f
        for f in _figures(settings, faninNote)
        if any(m.name == f.measurement for m in measurements)
    ]
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for m in measurements:
        raw[m.name] = {impl: [] for impl in m.impls}
        for peer in m.peers:
            if peer in active:
                raw[m.name][peer] = []
    failovers: list[dict[str, Any]] = []
    nodeFailovers: list[dict[str, Any]] = []
    errors: list[str] = []

    peerErrors: list[str] = []

    def attempt(
        what: str, run: Callable[[], dict[str, Any]], peer: bool = False
    ) -> dict[str, Any] | None:
        """
        C{run()}, or None if it failed.  A peer's failure is reported but
        is not an error of the benchmark: the peers are not under test.
        """
        try:
            return run()
        except Exception:
            (peerErrors if peer else errors).append(
                f"{what}:\n" + traceback.format_exc()
            )
            _log(f"{what}: FAILED")
            _log((peerErrors if peer else errors)[-1])
            return None

    for run in range(runs):
        for m in measurements:
            # Rotate which implementation goes first, so that drift on the
            # machine hits all alike (with two, they alternate).
            impls = [*m.impls, *(p for p in m.peers if p in active)]
            shift = run % len(impls)
            for impl in impls[shift:] + impls[:shift]:
                what = f"run {run + 1}/{runs} {m.name} {impl}"
                if impl in m.peers:
                    result = attempt(what, partial(m.peers[impl], settings), True)
                else:
                    result = attempt(what, partial(m.run, impl, settings))
                if result is not None:
                    raw[m.name][impl].append(result)
                    _log(f"{what}: " + _brief(result))
        if "failover" in groups:
            what = f"run {run + 1}/{runs} failover"
            result = attempt(what, partial(_scenarios.failover, settings))
            if result is not None:
                failovers.append(result)
                _log(
                    f"{what}: {result['kills']} kills, "
                    f"first message p50 {result['first_message_p50_ms']:.2f} ms, "
                    f"max {result['first_message_max_ms']:.2f} ms, "
                    f"lost {result['lost']}, duplicates {result['duplicates']}"
                )
            if NODE in active and node is not None:
                trials = [False] * settings.nodeTrials + [
                    True
                ] * settings.nodeIdleTrials
                for idle in trials:
                    kind = "idle at the kill" if idle else "streaming"
                    what = f"run {run + 1}/{runs} open-channel failover, {kind}"
                    nodeResult = attempt(
                        what, partial(_node.failover, node, idle, settings), True
                    )
                    if nodeResult is not None:
                        nodeFailovers.append(nodeResult)
                        _log(f"{what}: " + _briefNode(nodeResult))

    peerColumns = requested
    table: dict[str, dict[str, Any]] = {}
    rows: list[list[str]] = []
    if peerColumns:
        rows.append(
            [
                "what ran",
                f"twisted-channel {_version('twisted_channel') or ''}".strip(),
                f"Twisted {_version('twisted') or ''} unix: + Int32StringReceiver",
                "–",
                *[statuses[p].detail for p in peerColumns],
            ]
        )
    for f in figures:
        runsByImpl = raw[f.measurement]
        channelRuns = [f.read(r) for r in runsByImpl.get(CHANNEL, [])]
        baselineRuns = [f.read(r) for r in runsByImpl.get(BASELINE, [])]
        c = median(channelRuns) if channelRuns else None
        b = median(baselineRuns) if baselineRuns and f.baseline else None
        ratio = _ratio(c, b)
        # The runs are interleaved, so run i of each side shares the
        # machine's state: the median of those paired ratios is steadier.
        # (Only when no run failed on either side, else they do not pair.)
        paired = []
        if f.baseline and len(channelRuns) == len(baselineRuns) == runs:
            pairs = zip(channelRuns, baselineRuns, strict=True)
            paired = [x / y for x, y in pairs if y]
        entry: dict[str, Any] = {
            "label": f.label,
            "better": f.better,
            "channel": c,
            "baseline": b,
            "ratio": ratio,
            "ratio_paired_median": median(paired) if paired else None,
            "channel_runs": channelRuns,
            "baseline_runs": baselineRuns,
        }
        if f.versus is not None:
            entry["ratio"] = _ratio(c, f.versus)
            entry["ratio_to"] = f.versusName
            entry[f.versusName] = f.versus
            entry["runs"] = runsByImpl.get(CHANNEL, [])
        peerCells = []
        peerEntries: dict[str, Any] = {}
        for peer in peerColumns:
            if peer not in runsByImpl:
                peerCells.append("–")
                continue
            values = [f.read(r) for r in runsByImpl[peer]]
            v = median(values) if values else None
            vsBase = _ratio(v, b)
            vsPeer = _ratio(c, v)
            peerEntries[peer] = {
                "value": v,
                "runs": values,
                "ratio_to_baseline": vsBase,
                "channel_ratio": vsPeer,
            }
            peerCells.append(_peerCell(v, f.digits, vsBase, vsPeer))
        if peerEntries:
            entry["peers"] = peerEntries
        table[f.key] = entry
        if f.versus is not None:
            baseCell = f"{f.versusName} {_format(f.versus, f.digits)}"
            ratioCell = _times(entry["ratio"]) + f" {f.versusName}"
        elif f.baseline:
            baseCell = _format(b, f.digits)
            ratioCell = _times(ratio)
        else:
            baseCell = ratioCell = "n/a"
        rows.append(
            [
                f.label + (" ↑" if f.better == "higher" else " ↓"),
                _format(c, f.digits),
                baseCell,
                ratioCell,
                *peerCells,
            ]
        )

    failoverSummary: dict[str, Any] | None = None
    nodeSummary: dict[str, Any] | None = None
    if "failover" in groups:
        failoverSummary, nodeSummary = _failoverRows(
            settings, failovers, nodeFailovers, table, rows, peerColumns, active
        )

    elapsed = time.monotonic() - t0
    markdown = _markdown(rows, peerColumns)
    verdicts = _verdicts(table, active)
    print(markdown)
    print()
    notes = (
        f"ratio = twisted-channel / baseline (↑ higher is better, ↓ lower is "
        f"better); each figure is the median of {runs} run(s); failover "
        f"figures pool all kills. Baseline: Twisted unix: endpoints with "
        f"Int32StringReceiver. Senders write {settings.slice} messages (at "
        f"most {settings.sliceBytes >> 20} MiB) per reactor turn; failover "
        f"clients write {settings.streamSlice} messages every "
        f"{settings.streamInterval * 1000:g} ms each."
    )
    if peerColumns:
        notes += (
            " Peer cells: value (peer / baseline, twisted-channel / peer); "
            "each peer is used as its API is naturally used: pyzmq PUSH/PULL "
            "and REQ/REP over ipc://, multiprocessing.connection send_bytes/"
            "recv_bytes, open-channel with a 4-byte length prefix and "
            "write()/'drain' between two cluster workers. open-channel's "
            f"failover: 3 workers each writing a message every 2 ms, the "
            f"host SIGKILLed, {settings.nodeObserveMs} ms watched; its 'lost' "
            "counts the survivors' messages (after a warm-up) no host received."
        )
    print(notes + f" {elapsed:.0f} s.")
    if verdicts:
        print()
        for line in verdicts:
            print(line)
    if errors:
        print(f"\n{len(errors)} measurement(s) FAILED; see stderr and the JSON.")
    if peerErrors:
        print(
            f"\n{len(peerErrors)} peer measurement(s) failed (the peer's, not "
            "counted as errors); see stderr and the JSON."
        )

    document = {
        "meta": {
            "started": started,
            "seconds": elapsed,
            "runs": runs,
            "quick": options.quick,
            "groups": sorted(groups),
            "settings": asdict(settings),
            "fanin_clients_wanted": wantedClients,
            "fanin_limited_by": limitedBy or None,
            "python": sys.version,
            "executable": sys.executable,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "twisted": _version("twisted"),
            "twisted_channel": _version("twisted_channel"),
            "baseline": "Twisted unix: endpoints, Int32StringReceiver both sides",
            "ratio": "twisted-channel / baseline",
        },
        "peers": {
            p: {
                "title": PEER_TITLES[p],
                "ran": statuses[p].ok,
                "detail": statuses[p].detail,
            }
            for p in requested
        },
        "figures": table,
        "failover": failoverSummary,
        "node_failover": nodeSummary,
        "raw": raw,
        "node_failover_trials": nodeFailovers,
        "errors": errors,
        "peer_errors": peerErrors,
        "table_markdown": markdown,
        "verdicts": verdicts,
    }
    with open(options.json, "w", encoding="utf-8") as f:
        json.dump(_clean(document), f, indent=2, allow_nan=False, default=str)
        f.write("\n")
    _log(f"wrote {options.json}")
    lostAny = bool(failoverSummary and failoverSummary["lost"])
    return 1 if errors or lostAny else 0


def _failoverRows(
    settings: Settings,
    failovers: list[dict[str, Any]],
    nodeFailovers: list[dict[str, Any]],
    table: dict[str, dict[str, Any]],
    rows: list[list[str]],
    peerColumns: list[str],
    active: list[str],
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """
    The failover figures: the channel's, pooled over every kill, and
    open-channel's, pooled over its trials, in the Node column.
    """
    firsts = [s["first_message_ms"] for r in failovers for s in r["samples"]]
    elections = [s["elected_ms"] for r in failovers for s in r["samples"]]
    kills = len(firsts)
    idleFirsts = [
        s["first_after_resume_ms"] for r in failovers for s in r["idle_samples"]
    ]
    idleElected = [s["elected_ms"] for r in failovers for s in r["idle_samples"]]
    lost = sum(r["lost"] for r in failovers) if failovers else None
    summary = {
        "kills": kills,
        "runs": len(failovers),
        "first_message_p50_ms": percentile(firsts, 0.5) if firsts else None,
        "first_message_p99_ms": percentile(firsts, 0.99) if firsts else None,
        "first_message_max_ms": max(firsts) if firsts else None,
        "elected_p50_ms": percentile(elections, 0.5) if elections else None,
        "elected_max_ms": max(elections) if elections else None,
        "lost": lost,
        "duplicates": sum(r["duplicates"] for r in failovers),
        "unexpected": sum(r["unexpected"] for r in failovers),
        "messages_sent": sum(sum(r["sent"].values()) for r in failovers),
        "candidates": settings.candidates,
        "clients": settings.streamClients,
        "client_rate_msgs_per_s": settings.streamSlice / settings.streamInterval,
        "idle_kills": sum(r["idle_kills"] for r in failovers),
        "idle_elected_p50_ms": percentile(idleElected, 0.5) if idleElected else None,
        "idle_first_after_resume_p50_ms": (
            percentile(idleFirsts, 0.5) if idleFirsts else None
        ),
        "idle_first_after_resume_max_ms": max(idleFirsts) if idleFirsts else None,
        "per_run": failovers,
    }
    nodeSummary = None
    streaming: dict[str, Any] = {}
    idle: dict[str, Any] = {}
    if NODE in active:
        nodeSummary = _node.summarizeFailover(nodeFailovers)
        streaming, idle = nodeSummary["streaming"], nodeSummary["idle"]

    def cells(nodeCell: str) -> list[str]:
        return [nodeCell if p == NODE else "–" for p in peerColumns]

    def nodeTimeCell(value: float | None, channel: float | None) -> str:
        if NODE not in active:
            return "–"
        if not streaming.get("trials"):
            return "–"
        if value is None:
            return "never recovered"
        return _peerCell(value, 2, None, _ratio(channel, value))

    label = (
        f"failover: SIGKILL host → first message at new host, "
        f"{settings.candidates} candidates, {settings.streamClients} clients, "
        f"{kills} kills"
    )
    for key, which, field_ in FAILOVER_FIGURES:
        value = summary[field_]
        entry: dict[str, Any] = {
            "label": f"{label}, {which} (ms)",
            "channel": value,
            "baseline": None,
            "ratio": None,
            "better": "lower",
        }
        nodeValue = streaming.get(field_)
        if NODE in active:
            entry["peers"] = {
                NODE: {"value": nodeValue, "channel_ratio": _ratio(value, nodeValue)}
            }
        table[key] = entry
        rows.append(
            [
                f"{label}, {which} (ms) ↓",
                _format(value, 2),
                "n/a",
                "n/a",
                *cells(nodeTimeCell(nodeValue, value)),
            ]
        )
    value = summary["elected_p50_ms"]
    table["failover_elected_p50_ms"] = {
        "label": "failover: SIGKILL host → new host elected, p50 (ms)",
        "channel": value,
        "baseline": None,
        "ratio": None,
        "better": "lower",
    }
    nodeValue = streaming.get("new_host_p50_ms")
    if NODE in active:
        table["failover_elected_p50_ms"]["peers"] = {
            NODE: {"value": nodeValue, "channel_ratio": _ratio(value, nodeValue)}
        }
    rows.append(
        [
            "failover: SIGKILL host → new host elected (open-channel: accepts "
            "its first connection), p50 (ms) ↓",
            _format(value, 2),
            "n/a",
            "n/a",
            *cells(nodeTimeCell(nodeValue, value)),
        ]
    )
    nodeLost = "–"
    if NODE in active and streaming.get("trials"):
        nodeLost = (
            f"{streaming['lost']:,} of {streaming['sent']:,} "
            f"({streaming['lost_after_kill']:,} of the "
            f"{streaming['sent_after_kill']:,} written after the kill)"
        )
    table["failover_lost"] = {
        "label": "failover: messages lost",
        "channel": lost,
        "baseline": None,
        "ratio": None,
        "better": "lower",
    }
    if NODE in active:
        table["failover_lost"]["peers"] = {
            NODE: {"value": streaming.get("lost"), "sent": streaming.get("sent")}
        }
    rows.append(
        [
            f"failover: messages lost (of {summary['messages_sent']:,} sent; "
            f"{summary['duplicates']:,} delivered twice) ↓",
            _format(lost, 0),
            "n/a",
            "n/a",
            *cells(nodeLost),
        ]
    )
    # Every kill gave the channel a new host that took messages (else the
    # run fails), and nothing was lost: every client delivered again.
    channelNever = f"0 of {kills} kills" if failovers and lost == 0 else "–"
    nodeNever = "–"
    if NODE in active and streaming.get("trials"):
        nodeNever = (
            f"{streaming['not_all_recovered']} of {streaming['trials']} trials "
            f"({streaming['survivors_never_recovered']} of "
            f"{streaming['survivors']} surviving writers)"
        )
    table["failover_never_recovered"] = {
        "label": "failover: kills after which a client never delivered again",
        "channel": 0 if failovers and lost == 0 else None,
        "baseline": None,
        "ratio": None,
        "better": "lower",
    }
    if NODE in active:
        table["failover_never_recovered"]["peers"] = {
            NODE: {
                "trials": streaming.get("trials"),
                "value": streaming.get("not_all_recovered"),
                "survivors_never_recovered": streaming.get("survivors_never_recovered"),
            }
        }
    rows.append(
        [
            "failover: kills after which a client never delivered again ↓",
            channelNever,
            "n/a",
            "n/a",
            *cells(nodeNever),
        ]
    )
    idleKills = summary["idle_kills"]
    if idleKills or (NODE in active and idle.get("trials")):
        idleLabel = (
            f"failover with the writers idle at the kill (paused "
            f"{_scenarios.IDLE_BEFORE * 1000:g} ms before, resumed "
            f"{_scenarios.IDLE_AFTER * 1000:g} ms after): kills after which a "
            "client never delivered again"
        )
        channelCell = "–"
        if idleKills:
            channelCell = (
                f"0 of {idleKills} kills (first message "
                f"{_format(summary['idle_first_after_resume_p50_ms'], 2)} ms p50 "
                "after writing resumed)"
                if lost == 0
                else f"? of {idleKills} kills (messages were lost)"
            )
        nodeCell = "–"
        entry = {
            "label": idleLabel,
            "channel": 0 if idleKills and lost == 0 else None,
            "channel_kills": idleKills,
            "baseline": None,
            "ratio": None,
            "better": "lower",
        }
        if NODE in active and idle.get("trials"):
            nodeCell = (
                f"{idle['not_all_recovered']} of {idle['trials']} trials "
                f"({idle['survivors_never_recovered']} of {idle['survivors']} "
                f"surviving writers; lost {idle['lost_after_kill']:,} of "
                f"{idle['sent_after_kill']:,} written after the kill)"
            )
            entry["peers"] = {
                NODE: {"value": idle["not_all_recovered"], "trials": idle["trials"]}
            }
        table["failover_idle_never_recovered"] = entry
        rows.append([idleLabel + " ↓", channelCell, "n/a", "n/a", *cells(nodeCell)])
    return summary, nodeSummary


#: Short names of the figures, for the verdict lines.
SHORT = {
    "throughput_100B_msgs_per_s": "throughput 100 B",
    "throughput_1KiB_MB_per_s": "throughput 1 KiB",
    "throughput_64KiB_MB_per_s": "throughput 64 KiB",
    "roundtrip_p50_us": "round trip p50",
    "roundtrip_p99_us": "round trip p99",
    "failover_first_message_p50_ms": "failover kill → first message p50",
    "failover_first_message_p99_ms": "failover kill → first message p99",
    "failover_first_message_max_ms": "failover kill → first message max",
    "failover_elected_p50_ms": "failover kill → new host p50",
    "failover_lost": "failover messages lost",
    "failover_never_recovered": "writers that never recovered",
    "failover_idle_never_recovered": "idle-at-kill failovers never recovered",
}


def _verdicts(table: dict[str, dict[str, Any]], active: list[str]) -> list[str]:
    """
    One line per peer: where twisted-channel is ahead of it or behind, on
    the figures both measured.
    """
    lines = []
    for peer in active:
        parts = []
        for key, entry in table.items():
            peerEntry = entry.get("peers", {}).get(peer)
            if not peerEntry:
                continue
            c, v = entry.get("channel"), peerEntry.get("value")
            if c is None or v is None:
                continue
            if key in ("failover_never_recovered", "failover_idle_never_recovered"):
                trials = peerEntry.get("trials")
                what = SHORT[key]
                parts.append(
                    f"{what}: ahead (none vs {v} of {trials} trials)"
                    if v
                    else f"{what}: even (none either)"
                )
                continue
            if key == "failover_lost":
                ahead = c < v
                word = "ahead" if ahead else ("even" if c == v else "behind")
                parts.append(f"{SHORT[key]}: {word} ({c:,} vs {v:,})")
                continue
            ratio = _ratio(c, v)
            if ratio is None:
                continue
            higher = entry.get("better") == "higher"
            ahead = ratio > 1 if higher else ratio < 1
            short = SHORT.get(key, entry["label"].split(" (")[0])
            parts.append(f"{short}: {'ahead' if ahead else 'behind'} ({ratio:.2f}×)")
        if parts:
            lines.append(
                f"twisted-channel vs {PEER_TITLES[peer]}: " + "; ".join(parts) + "."
            )
    return lines


def _clean(value: Any) -> Any:
    """
    C{value} with every NaN replaced by None, which JSON can hold.
    """
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _version(module: str) -> str | None:
    try:
        imported = __import__(module)
    except ImportError:
        return None
    version = getattr(imported, "__version__", None)
    if version is None:
        return None
    return str(getattr(version, "public", lambda: version)())


def _brief(result: dict[str, Any]) -> str:
    parts = []
    for key, value in result.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, float):
            parts.append(f"{key}={value:,.1f}")
        elif isinstance(value, int):
            parts.append(f"{key}={value:,}")
    return " ".join(parts)


def _briefNode(result: dict[str, Any]) -> str:
    if result.get("setup_failed"):
        return "no host elected: " + str(result.get("reason"))

    def ms(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f} ms"

    return (
        f"new host {ms(result['new_host_ms'])}, first message "
        f"{ms(result['first_message_ms'])}, every survivor "
        f"{ms(result['recovery_all_ms'])}, lost {result['lost']} of "
        f"{result['sent']}, write errors {result['write_errors']}"
    )


def _markdown(rows: list[list[str]], peers: list[str]) -> str:
    header = ["figure", "twisted-channel", "baseline", "ratio"]
    header += [PEER_TITLES[p] for p in peers]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
