"""
The start-up child: C{listen()} to hosting and C{connect()} to the first
message delivered, in one process, on a fresh channel (or socket) each
time; then C{listen()} to hosting again on each of those names, stopped
(a restart: the channel's lock file is there already).
"""

from __future__ import annotations

import argparse
import os
from time import monotonic_ns
from typing import Any

from bench._child import CHANNEL, fail, int32, stopSoon
from bench._common import report


def runStartup(reactor: Any, options: argparse.Namespace) -> None:
    """
    C{--reps} times, on a fresh channel (or socket) each time: the time
    from C{listen()} to hosting (for the baseline, to listening), and from
    C{connect()} to the first message delivered to the host's protocol.
    Then C{--reps} times, on each of those names again, the time from
    C{listen()} to hosting: a service's start on every start but its
    first.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.internet.protocol import Factory, Protocol

    from bench._common import median
    from twisted_channel import ChannelEndpoint

    arrivals: list[Deferred[int]] = []

    def arrived() -> None:
        t = monotonic_ns()
        if arrivals:
            arrivals.pop(0).callback(t)

    class ChannelHost(Protocol):
        def dataReceived(self, data: bytes) -> None:
            arrived()

    class BaselineHost(int32()):  # type: ignore[misc, valid-type]
        def stringReceived(self, data: bytes) -> None:
            arrived()

    class BaselineClient(int32()):  # type: ignore[misc, valid-type]
        def connectionMade(self) -> None:
            self.sendString(b"hello")

    def pause(seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        reactor.callLater(seconds, d.callback, None)
        return d

    async def listen(name: str) -> tuple[Any, Any, int]:
        """
        Listen on channel (or socket) C{name}: the endpoint to connect
        with, the port, and the nanoseconds from C{listen()} to hosting (for
        the baseline, to listening).
        """
        if options.impl == CHANNEL:
            endpoint = ChannelEndpoint(reactor, name, directory=options.dir)
            t0 = monotonic_ns()
            port = await endpoint.listen(Factory.forProtocol(ChannelHost))
            await port.whenHosting()
            return endpoint, port, monotonic_ns() - t0
        path = os.path.join(options.dir, name + ".b.sock")
        server = serverFromString(reactor, f"unix:{path}")
        client = clientFromString(reactor, f"unix:path={path}")
        t0 = monotonic_ns()
        port = await server.listen(Factory.forProtocol(BaselineHost))
        return client, port, monotonic_ns() - t0

    async def once(i: int) -> tuple[int, int]:
        arrival: Deferred[int] = Deferred()
        arrivals.append(arrival)
        endpoint, port, listenNs = await listen(f"st{i}")
        t2 = monotonic_ns()
        if options.impl == CHANNEL:
            protocol = await endpoint.connect(Factory.forProtocol(Protocol))
            protocol.transport.write(b"hello")
        else:
            protocol = await endpoint.connect(Factory.forProtocol(BaselineClient))
        t3 = await arrival
        protocol.transport.loseConnection()
        await pause(0.02)
        await port.stopListening()
        return listenNs, t3 - t2

    async def again(i: int) -> int:
        # The name used (and stopped) by once(i).
        _, port, listenNs = await listen(f"st{i}")
        await pause(0.02)
        await port.stopListening()
        return listenNs

    async def main() -> None:
        listens: list[float] = []
        connects: list[float] = []
        restarts: list[float] = []
        for i in range(options.reps):
            listenNs, connectNs = await once(i)
            listens.append(listenNs / 1e3)
            connects.append(connectNs / 1e3)
            await pause(0.02)
        for i in range(options.reps):
            restarts.append(await again(i) / 1e3)
            await pause(0.02)
        report(
            {
                "listen_us": median(listens),
                "connect_us": median(connects),
                "restart_listen_us": median(restarts),
                "listen_all_us": listens,
                "connect_all_us": connects,
                "restart_listen_all_us": restarts,
            }
        )

    d = Deferred.fromCoroutine(main())
    d.addErrback(fail(reactor))
    d.addBoth(lambda _: stopSoon(reactor))
