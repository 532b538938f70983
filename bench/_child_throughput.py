"""
The throughput and fan-in children: C{recv} counts what arrives and times
it, C{send} writes as a streaming producer, C{fanin} forks many senders
that start on one signal.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from time import monotonic_ns
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from bench._child import (
    CHANNEL,
    commands,
    connect,
    fail,
    int32,
    listen,
    stoppedUnasked,
    stopSoon,
)
from bench._common import median, report, say


def runRecv(reactor: Any, options: argparse.Namespace) -> None:
    from twisted.internet.protocol import Factory, Protocol

    total = options.count
    state = {"n": 0, "t0": 0, "closed": 0, "done": False}
    #: Per connection: [messages, first arrival, last arrival] (ns).
    links: list[list[int]] = []

    def finish() -> None:
        t1 = monotonic_ns()
        state["done"] = True
        seconds = (t1 - state["t0"]) / 1e9
        # Each sender's rate: its messages over the time from the first
        # arrival here of any sender's message (all start on one signal) to
        # its own last.  A sender's first to last alone says nothing once a
        # host reads a sender's messages in a few large reads: the window is
        # then a few microseconds.
        rates = sorted(
            n / ((last - state["t0"]) / 1e9)
            for n, _, last in links
            if n and last > state["t0"]
        )
        report(
            {
                "messages": total,
                "seconds": seconds,
                "msgs_per_s": (total - 1) / seconds if seconds > 0 else None,
                "t0_ns": state["t0"],
                "t1_ns": t1,
                "senders": len(links),
                "sender_rate_min": rates[0] if rates else None,
                "sender_rate_median": median(rates) if rates else None,
                "sender_rate_max": rates[-1] if rates else None,
                "sender_last_spread_s": (
                    (max(x[2] for x in links) - min(x[2] for x in links)) / 1e9
                    if links
                    else None
                ),
            }
        )

    def arrived(link: list[int]) -> None:
        t = monotonic_ns()
        if not link[0]:
            link[1] = t
        link[0] += 1
        link[2] = t
        n = state["n"] = state["n"] + 1
        if n == 1:
            state["t0"] = t
        if n == total:
            finish()

    def closed() -> None:
        state["closed"] += 1
        if state["closed"] >= options.conns:
            if not state["done"]:
                say("INCOMPLETE", state["n"])
            stopSoon(reactor)

    # With one sender, the receivers count and nothing more, as lean as the
    # peers' loops; with several, each link also keeps its own times (which
    # costs either implementation the same one call per message).
    if options.impl == CHANNEL:

        class Counter(Protocol):
            def dataReceived(self, data: bytes) -> None:
                n = state["n"] = state["n"] + 1
                if n == 1:
                    state["t0"] = monotonic_ns()
                if n == total:
                    finish()

            def connectionLost(self, reason: Any = None) -> None:
                closed()

        class LinkCounter(Counter):
            def connectionMade(self) -> None:
                self.link = [0, 0, 0]
                links.append(self.link)

            def dataReceived(self, data: bytes) -> None:
                arrived(self.link)

    else:

        class Counter(int32()):  # type: ignore[no-redef]
            def stringReceived(self, data: bytes) -> None:
                n = state["n"] = state["n"] + 1
                if n == 1:
                    state["t0"] = monotonic_ns()
                if n == total:
                    finish()

            def connectionLost(self, reason: Any = None) -> None:
                closed()

        class LinkCounter(Counter):  # type: ignore[no-redef]
            def connectionMade(self) -> None:
                self.link = [0, 0, 0]
                links.append(self.link)

            def stringReceived(self, data: bytes) -> None:
                arrived(self.link)

    factory = Factory.forProtocol(LinkCounter if options.conns > 1 else Counter)
    listen(reactor, options, factory).addCallbacks(
        lambda _: say("READY"), fail(reactor)
    )


def runSend(reactor: Any, options: argparse.Namespace) -> None:
    """
    Write C{--count} messages, at most C{--slice} per reactor turn, with the
    discipline a Twisted application uses for bulk data, the same for both
    implementations: the sender is registered on its transport as a
    streaming producer, and stops writing while the transport has it paused
    (plain Twisted pauses it when its write buffer passes C{bufferSize}, the
    channel when its unacknowledged messages pass half of
    C{maxBufferSize}).  C{DONE} reports the messages written and how often
    the sender was paused.
    """
    from twisted.internet.protocol import Factory, Protocol

    payload = b"x" * options.size

    if options.impl == CHANNEL:

        class Sender(Protocol):
            def connectionLost(self, reason: Any = None) -> None:
                finished()

        def writer(protocol: Any) -> Callable[[bytes], None]:
            write: Callable[[bytes], None] = protocol.transport.write
            return write

    else:

        class Sender(int32()):  # type: ignore[no-redef]
            def connectionLost(self, reason: Any = None) -> None:
                finished()

        def writer(protocol: Any) -> Callable[[bytes], None]:
            send: Callable[[bytes], None] = protocol.sendString
            return send

    pumps: list[_SendingProducer] = []

    def finished() -> None:
        sent = pumps[0].sent if pumps else 0
        pauses = pumps[0].pauses if pumps else 0
        say("DONE", sent, pauses)
        stopSoon(reactor)

    def start(protocol: Any) -> None:
        pump = _SendingProducer(
            reactor, protocol.transport, writer(protocol), payload, options
        )
        pumps.append(pump)
        pump.start()

    def connected(protocol: Any) -> None:
        if options.go:
            commands["go"] = lambda: start(protocol)
            say("READY")
        else:
            say("READY")
            start(protocol)

    connect(reactor, options, Factory.forProtocol(Sender)).addCallbacks(
        connected, fail(reactor)
    )


@implementer(IPushProducer)
class _SendingProducer:
    """
    The throughput sender: a streaming producer that writes C{--count}
    copies of C{payload}, at most C{--slice} per reactor turn and none
    while paused, then unregisters and closes the connection.
    """

    def __init__(
        self,
        reactor: Any,
        transport: Any,
        write: Callable[[bytes], None],
        payload: bytes,
        options: argparse.Namespace,
    ) -> None:
        self.reactor = reactor
        self.transport = transport
        self.write = write
        self.payload = payload
        self.total = options.count
        self.step = options.slice
        self.sent = 0
        self.pauses = 0
        self.paused = False
        self.stopped = False
        self.scheduled: Any = None

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self._schedule()

    def _schedule(self) -> None:
        if self.scheduled is None and not self.paused and not self.stopped:
            self.scheduled = self.reactor.callLater(0, self._turn)

    def _turn(self) -> None:
        self.scheduled = None
        write = self.write
        payload = self.payload
        sent = self.sent
        stop = min(sent + self.step, self.total)
        # A pause arrives from inside write(): look after each one.
        while sent < stop and not self.paused and not self.stopped:
            write(payload)
            sent += 1
        self.sent = sent
        if sent >= self.total:
            self.stopped = True
            self.transport.unregisterProducer()
            self.transport.loseConnection()
            return
        self._schedule()

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.stopped = True


def runFanIn(options: argparse.Namespace) -> None:
    """
    Fork C{--conns} senders (as L{runSend} with C{--go}), each reporting
    C{READY} and C{DONE} on the stdout they share with this process, and
    start them all at the parent's C{go}.  Forking after Twisted is
    imported, and before any reactor is, starts a hundred clients in well
    under a second where a hundred interpreters would take half a minute.

    This process runs no reactor: it reads stdin itself.  Each sender gets
    the start signal on a pipe of its own and exits when that pipe reaches
    end of file (when this process ends, however it ends), or at its own
    C{--limit}; this process kills and reaps every sender by pid before it
    exits.
    """
    import traceback

    import twisted.internet.protocol  # noqa: F401  (shared by every fork)
    import twisted.protocols.basic  # noqa: F401

    if options.impl == CHANNEL:
        import twisted_channel  # noqa: F401

    options.go = True
    pids: list[int] = []
    pipes: list[int] = []
    try:
        for _ in range(options.conns):
            readEnd, writeEnd = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as e:
                os.close(readEnd)
                os.close(writeEnd)
                say("ERROR", f"fork failed after {len(pids)} senders: {e}")
                return
            if pid == 0:
                status = 1
                try:
                    os.close(writeEnd)
                    for fd in pipes:
                        os.close(fd)
                    signal.alarm(max(1, options.limit))
                    _fanInSender(options, readEnd)
                    status = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(status)
            os.close(readEnd)
            pids.append(pid)
            pipes.append(writeEnd)
        say("FORKED", len(pids))
        for raw in sys.stdin.buffer:
            if raw.strip() == b"go":
                break
        else:
            return
        for fd in pipes:
            os.write(fd, b"g")
        failed = 0
        while pids:
            _, status = os.waitpid(pids[0], 0)
            pids.pop(0)
            failed += status != 0
        say("EXITED", failed)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for fd in pipes:
            os.close(fd)


def _fanInSender(options: argparse.Namespace, startPipe: int) -> None:
    """
    One forked sender of L{runFanIn}: a fresh reactor, then L{runSend}.
    """
    from twisted.internet import reactor

    def watch() -> None:
        while True:
            data = os.read(startPipe, 1)
            if not data:
                os._exit(3)
            reactor.callFromThread(commands["go"])

    threading.Thread(target=watch, name="start-watch", daemon=True).start()
    runSend(reactor, options)
    reactor.run()  # type: ignore[attr-defined]
    stoppedUnasked()
