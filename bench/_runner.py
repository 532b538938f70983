"""
C{python -m bench}: run every measurement C{--runs} times, interleaving the
channel, the baseline and the peers, print a Markdown table of the medians
and write them, with every run's numbers, as JSON.

This module runs things (L{main}: the command line, the peers' set-up, the
runs); what is measured is in L{bench._figures} and L{bench._scenarios},
the table and the JSON in L{bench._report}.
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

from bench import _node, _peers, _report, _scenarios, _tlsbench
from bench._common import MPCONN, NODE, PEER_TITLES, PEERS, ZMQ
from bench._figures import Measurement, figures, measurements
from bench._scenarios import Settings


@dataclass
class PeerStatus:
    ok: bool
    detail: str


@dataclass
class Plan:
    """
    What the command line asks for.

    @ivar requested: the peers asked for, in the table's order.
    @ivar wantedClients: the fan-in clients the settings want, before
        L{_scenarios.faninCapacity} limited them (by C{limitedBy}).
    """

    options: argparse.Namespace
    settings: Settings
    runs: int
    groups: set[str]
    requested: list[str]
    wantedClients: int
    limitedBy: str
    faninNote: str


#: How many times a peer's measurement is run before it is given up.  The
#: peers are not under test, and one may fail under load by its own doing:
#: open-channel elects its host through C{ps}, and a worker has been seen
#: to dial the socket before the host bound it (C{ENOENT}) on a loaded
#: machine, leaving the comparison without that peer's figure.
PEER_TRIES = 2


@dataclass
class Results:
    """
    Every run's results, and what failed.
    """

    raw: dict[str, dict[str, list[dict[str, Any]]]]
    failovers: list[dict[str, Any]] = field(default_factory=list)
    nodeFailovers: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    peerErrors: list[str] = field(default_factory=list)


def _log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


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


def _plan(argv: list[str] | None) -> Plan:
    """
    Parse the command line.
    """
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

    return Plan(
        options,
        settings,
        runs,
        groups,
        requested,
        wantedClients,
        limitedBy,
        faninNote,
    )


def _measureAll(
    plan: Plan,
    chosen: list[Measurement],
    active: list[str],
    node: _node.NodeStatus | None,
) -> Results:
    """
    Run every measurement C{plan.runs} times, rotating the order of the
    implementations and peers, then the failover runs.
    """
    runs, groups, settings = plan.runs, plan.groups, plan.settings
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for m in chosen:
        raw[m.name] = {impl: [] for impl in m.impls}
        for peer in m.peers:
            if peer in active:
                raw[m.name][peer] = []
    results = Results(raw)
    failovers = results.failovers
    nodeFailovers = results.nodeFailovers
    errors = results.errors
    peerErrors = results.peerErrors

    def attempt(
        what: str, run: Callable[[], dict[str, Any]], peer: bool = False
    ) -> dict[str, Any] | None:
        """
        C{run()}, or None if it failed.  A peer's failure is reported but
        is not an error of the benchmark: the peers are not under test, and
        a peer's run that failed is run again (L{PEER_TRIES}).
        """
        tries = PEER_TRIES if peer else 1
        for tried in range(1, tries + 1):
            try:
                return run()
            except Exception:
                again = " (run again)" if tried < tries else ""
                (peerErrors if peer else errors).append(
                    f"{what}{again}:\n" + traceback.format_exc()
                )
                _log(f"{what}: FAILED{again}")
                _log((peerErrors if peer else errors)[-1])
        return None

    for run in range(runs):
        for m in chosen:
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
                    _log(f"{what}: " + _report.brief(result))
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
                        _log(f"{what}: " + _report.briefNode(nodeResult))
    return results


def _peersFor(requested: list[str], groups: set[str]) -> list[str]:
    """
    The peers that some selected measurement uses (only they are prepared:
    the Node install is slow).
    """
    peerGroups = {ZMQ: {"throughput", "roundtrip"}, MPCONN: {"throughput", "roundtrip"}}
    peerGroups[NODE] = {"throughput", "roundtrip", "failover"}
    return [p for p in requested if peerGroups[p] & groups]


def main(argv: list[str] | None = None) -> int:
    """
    Run the benchmark; return the exit status: 1 if a measurement failed
    or the failover lost a message, else 0.
    """
    plan = _plan(argv)
    options, settings, runs, groups = (
        plan.options,
        plan.settings,
        plan.runs,
        plan.groups,
    )
    started = time.time()
    t0 = time.monotonic()
    requested = _peersFor(plan.requested, groups)
    statuses, node = _preparePeers(requested, options.quick)
    active = [p for p in requested if statuses[p].ok]
    tlsStatus: PeerStatus | None = None
    if "tls" in groups:
        tlsStatus = PeerStatus(*_tlsbench.status())
        _log(f"tls group: {tlsStatus.detail}")
    tlsRuns = tlsStatus is not None and tlsStatus.ok
    chosen = [m for m in measurements(settings, node, tlsRuns) if m.group in groups]
    shown = [
        f
        for f in figures(settings, plan.faninNote)
        if any(m.name == f.measurement for m in chosen)
    ]
    results = _measureAll(plan, chosen, active, node)

    peerColumns = requested
    details = {p: statuses[p].detail for p in peerColumns}
    table, rows = _report.figureTable(shown, results.raw, runs, peerColumns, details)
    failoverSummary: dict[str, Any] | None = None
    nodeSummary: dict[str, Any] | None = None
    if "failover" in groups:
        failoverSummary, nodeSummary = _report.failoverRows(
            settings,
            results.failovers,
            results.nodeFailovers,
            table,
            rows,
            peerColumns,
            active,
        )

    elapsed = time.monotonic() - t0
    markdown = _report.markdown(rows, peerColumns)
    verdicts = _report.verdicts(table, active)
    _report.printSummary(
        markdown,
        _report.notes(settings, runs, bool(peerColumns)),
        elapsed,
        verdicts,
        results.errors,
        results.peerErrors,
    )
    if tlsStatus is not None:
        print(
            "\nAcross machines over TLS: the channel's client on machine b, its "
            "host on machine a (two dir= on loopback, one etcd), against "
            "Twisted ssl: endpoints with Int32StringReceiver and the same "
            f"certificates; {tlsStatus.detail}."
        )
    wantedClients, limitedBy = plan.wantedClients, plan.limitedBy
    raw = results.raw
    nodeFailovers = results.nodeFailovers
    errors, peerErrors = results.errors, results.peerErrors
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
            "twisted": _report.version("twisted"),
            "twisted_channel": _report.version("twisted_channel"),
            "baseline": "Twisted unix: endpoints, Int32StringReceiver both sides",
            "tls_baseline": "Twisted ssl: endpoints, Int32StringReceiver both sides",
            "tls": None if tlsStatus is None else asdict(tlsStatus),
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
        json.dump(_report.clean(document), f, indent=2, allow_nan=False, default=str)
        f.write("\n")
    _log(f"wrote {options.json}")
    lostAny = bool(failoverSummary and failoverSummary["lost"])
    return 1 if errors or lostAny else 0
