"""
The memory children: C{memhost} hosts many idle links and reads its
resident memory, C{idle} holds those links, C{bufclient} writes past its
buffer's cap with no host and reports its memory.
"""

from __future__ import annotations

import argparse
import gc
from time import monotonic_ns
from typing import Any

from bench._child import CHANNEL, connect, fail, int32, listen, stopSoon
from bench._common import raiseFileLimit, report, rssKiB, say


def runMemHost(reactor: Any, options: argparse.Namespace) -> None:
    """
    Host C{--links} idle links; read this process's RSS once hosting, once
    C{--conns} links are up (C{MARK}) and once all are (C{RESULT}).
    """
    from twisted.internet.protocol import Factory, Protocol

    raiseFileLimit(options.links + 256)
    state = {"n": 0, "rss0": 0, "mark": 0}

    def settled() -> int:
        gc.collect()
        return rssKiB()

    def mark() -> None:
        state["mark"] = settled()
        say("MARK", state["n"], state["mark"])

    def measure() -> None:
        rss1 = settled()
        n = state["n"]
        later = n - options.conns
        report(
            {
                "links": n,
                "rss0_kib": state["rss0"],
                "rss_mark_kib": state["mark"],
                "rss1_kib": rss1,
                "per_link_kib": (rss1 - state["mark"]) / later if later else None,
                "per_link_overall_kib": (rss1 - state["rss0"]) / max(n, 1),
            }
        )

    def made() -> None:
        state["n"] += 1
        if state["n"] == options.conns:
            reactor.callLater(0.3, mark)
        if state["n"] == options.links:
            reactor.callLater(0.3, measure)

    if options.impl == CHANNEL:

        class Idle(Protocol):
            def connectionMade(self) -> None:
                made()

    else:

        class Idle(int32()):  # type: ignore[no-redef]
            def connectionMade(self) -> None:
                made()

    def ready(_: Any) -> None:
        state["rss0"] = settled()
        say("READY", state["rss0"])

    listen(reactor, options, Factory.forProtocol(Idle)).addCallbacks(
        ready, fail(reactor)
    )


def runIdle(reactor: Any, options: argparse.Namespace) -> None:
    """
    Open C{--links} links, a few at a time (a listening socket's backlog is
    finite), and hold them.
    """
    from twisted.internet.protocol import Factory, Protocol

    raiseFileLimit(options.links + 256)
    protocol = Protocol if options.impl == CHANNEL else int32()
    factory = Factory.forProtocol(protocol)
    held: list[Any] = []
    state = {"started": 0, "retries": 0}

    def openOne() -> None:
        if state["started"] >= options.links:
            return
        state["started"] += 1
        connect(reactor, options, factory).addCallbacks(opened, failed)

    def opened(protocol: Any) -> None:
        held.append(protocol)
        if len(held) == options.links:
            say("READY", len(held), state["retries"])
        else:
            openOne()

    def failed(reason: Any) -> None:
        # A Unix socket whose backlog is full refuses at once (EAGAIN),
        # which Twisted reports as a failed connection: try again shortly.
        state["retries"] += 1
        if state["retries"] > options.links:
            fail(reactor)(reason)
            return
        state["started"] -= 1
        reactor.callLater(0.01, openOne)

    for _ in range(8):
        openOne()


def runBufClient(reactor: Any, options: argparse.Namespace) -> None:
    """
    A client of a channel nobody hosts, with C{maxBufferSize=--cap}: write
    C{--total} bytes in messages of C{--size} bytes, each a fresh bytes
    object as an application makes them, counting those refused with
    L{twisted_channel.ChannelBufferFullError}; report the resident memory
    before, after, and at its peak while writing.
    """
    from twisted.internet.protocol import Factory, Protocol

    from twisted_channel import ChannelBufferFullError, ChannelEndpoint

    size = options.size
    count = -(-options.total // size)
    endpoint = ChannelEndpoint(
        reactor,
        options.name,
        directory=options.dir,
        timeout=0,
        maxBufferSize=options.cap,
    )

    def connected(protocol: Any) -> None:
        transport = protocol.transport
        write = transport.write
        filler = b"x" * (size - 8)
        gc.collect()
        resetPeak = _resetPeakRss()
        rss0 = rssKiB()
        accepted = refused = 0
        t0 = monotonic_ns()
        for i in range(count):
            try:
                write(i.to_bytes(8, "big") + filler)
            except ChannelBufferFullError:
                refused += 1
            else:
                accepted += 1
        t1 = monotonic_ns()
        gc.collect()
        rss1 = rssKiB()
        peak = _peakRssKiB()
        report(
            {
                "cap_bytes": options.cap,
                "message_bytes": size,
                "written_bytes": count * size,
                "writes": count,
                "accepted": accepted,
                "refused": refused,
                "state": transport.state,
                "buffered_bytes": transport.pending.byteCount,
                "footprint_bytes": transport.pending.footprint,
                "rss0_kib": rss0,
                "rss1_kib": rss1,
                "peak_kib": peak,
                "peak_reset": resetPeak,
                "growth_mib": (rss1 - rss0) / 1024,
                "peak_growth_mib": (peak - rss0) / 1024 if resetPeak else None,
                "seconds": (t1 - t0) / 1e9,
            }
        )
        transport.abortConnection()
        stopSoon(reactor)

    endpoint.connect(Factory.forProtocol(Protocol)).addCallbacks(
        connected, fail(reactor)
    )


def _resetPeakRss() -> bool:
    """
    Reset this process's peak resident set size (C{VmHWM}), where the
    kernel allows it (Linux 4.0 and later).
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _peakRssKiB() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")
