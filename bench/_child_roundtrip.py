"""
The round-trip children: C{echo} sends back what it receives, C{ping}
times sequential round trips.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from time import monotonic_ns
from typing import Any

from bench._child import CHANNEL, connect, fail, int32, listen, stopSoon
from bench._common import report, say


def runEcho(reactor: Any, options: argparse.Namespace) -> None:
    from twisted.internet.protocol import Factory, Protocol

    if options.impl == CHANNEL:

        class Echo(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(data)  # type: ignore[union-attr]

            def connectionLost(self, reason: Any = None) -> None:
                stopSoon(reactor)

    else:

        class Echo(int32()):  # type: ignore[no-redef]
            def stringReceived(self, data: bytes) -> None:
                self.sendString(data)

            def connectionLost(self, reason: Any = None) -> None:
                stopSoon(reactor)

    listen(reactor, options, Factory.forProtocol(Echo)).addCallbacks(
        lambda _: say("READY"), fail(reactor)
    )


def runPing(reactor: Any, options: argparse.Namespace) -> None:
    from twisted.internet.protocol import Factory, Protocol

    from bench._common import percentile

    payload = b"p" * options.size
    warmup = options.warmup
    total = warmup + options.count
    rtts: list[int] = []
    state = {"i": 0, "t": 0}

    def replied(protocol: Any, send: Callable[[bytes], None]) -> None:
        t = monotonic_ns()
        i = state["i"]
        if i >= warmup:
            rtts.append(t - state["t"])
        state["i"] = i = i + 1
        if i < total:
            state["t"] = monotonic_ns()
            send(payload)
            return
        report(
            {
                "pings": len(rtts),
                "p50_us": percentile(rtts, 0.5) / 1e3,
                "p99_us": percentile(rtts, 0.99) / 1e3,
                "mean_us": sum(rtts) / len(rtts) / 1e3,
                "max_us": max(rtts) / 1e3,
            }
        )
        protocol.transport.loseConnection()

    if options.impl == CHANNEL:

        class Pinger(Protocol):
            def dataReceived(self, data: bytes) -> None:
                replied(self, self.transport.write)  # type: ignore[union-attr]

            def connectionLost(self, reason: Any = None) -> None:
                stopSoon(reactor)

        def start(protocol: Any) -> None:
            state["t"] = monotonic_ns()
            protocol.transport.write(payload)

    else:

        class Pinger(int32()):  # type: ignore[no-redef]
            def stringReceived(self, data: bytes) -> None:
                replied(self, self.sendString)

            def connectionLost(self, reason: Any = None) -> None:
                stopSoon(reactor)

        def start(protocol: Any) -> None:
            state["t"] = monotonic_ns()
            protocol.sendString(payload)

    connect(reactor, options, Factory.forProtocol(Pinger)).addCallbacks(
        start, fail(reactor)
    )
