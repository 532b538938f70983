"""
The benchmark's child processes: ``python -m bench._children KIND ...``.

Each child is bounded in time twice over: C{signal.alarm(--limit)} ends it
even if its reactor is stuck, and it exits as soon as its stdin reaches end
of file, which happens when the parent closes it or dies.  Commands from
the parent (C{go}, C{stop}) arrive as lines on stdin.

Kinds (C{--impl channel} uses L{twisted_channel.ChannelEndpoint}, C{--impl
baseline} plain Twisted C{unix:} endpoints with C{Int32StringReceiver}):

- C{recv}: a receiver that counts C{--count} messages over C{--conns}
  connections and reports the time from the first to the last;
- C{send}: a sender of C{--count} messages of C{--size} bytes, C{--slice}
  writes per reactor turn;
- C{echo} / C{ping}: the two ends of the round-trip test;
- C{startup}: listen-to-hosting and connect-to-first-message, in-process;
- C{memhost} / C{idle}: a host's memory with many idle links, and the
  process holding those links;
- C{fanin}: forks C{--conns} C{send} clients at once (no reactor of its
  own), for the fan-in test;
- C{bufclient}: a client of a channel nobody hosts, writing past its
  C{maxBufferSize}, reporting its memory (channel only).

The peers' children (pyzmq, C{multiprocessing.connection}) are in
L{bench._peers}, open-channel's scripts in C{bench/js/}; the failover
test's candidates and clients are L{twisted_channel.testing.recorder}'s.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable
from time import monotonic_ns
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from bench._common import (
    BASELINE,
    CHANNEL,
    INT32_MAX_LENGTH,
    median,
    raiseFileLimit,
    report,
    rssKiB,
    say,
)

#: What a line on stdin runs, by its first word.
commands: dict[str, Callable[[], None]] = {}


def _watchStdin(reactor: Any) -> None:
    """
    Run the parent's commands; exit at once when stdin closes.
    """

    def run(word: str) -> None:
        # Looked up in the reactor thread, so that a command registered
        # before the line announcing it is never missed.
        handler = commands.get(word)
        if handler is None:
            say("ERROR", f"unknown or early command {word!r}")
            _stopSoon(reactor)
            return
        handler()

    def read() -> None:
        for raw in sys.stdin.buffer:
            reactor.callFromThread(run, raw.decode("ascii", "replace").strip())
        os._exit(3)

    threading.Thread(target=read, name="stdin-watch", daemon=True).start()


_stopping: list[bool] = []


def _stopSoon(reactor: Any) -> None:
    """
    Stop the reactor once the current call returns (once, however often
    this is called).
    """
    if not _stopping:
        _stopping.append(True)
        reactor.callLater(0, reactor.stop)


def _fail(reactor: Any) -> Callable[[Any], None]:
    def failed(reason: Any) -> None:
        say("ERROR", reason.getErrorMessage().replace("\n", " "))
        _stopSoon(reactor)

    return failed


def _channel(reactor: Any, options: argparse.Namespace) -> Any:
    from twisted_channel import ChannelEndpoint

    return ChannelEndpoint(
        reactor, options.name, directory=options.dir, timeout=options.timeout
    )


def _unixPath(options: argparse.Namespace) -> str:
    return os.path.join(options.dir, options.name + ".b.sock")


def _listen(reactor: Any, options: argparse.Namespace, factory: Any) -> Any:
    """
    Listen with the implementation chosen; the Deferred fires once this
    process accepts connections (for the channel: once it hosts).
    """
    if options.impl == CHANNEL:
        d = _channel(reactor, options).listen(factory)
        return d.addCallback(
            lambda port: port.whenHosting().addCallback(lambda _: port)
        )
    from twisted.internet.endpoints import serverFromString

    # A deep backlog, so that clients opening many links at once (memory
    # test) are not refused while this process waits for a CPU.
    endpoint = serverFromString(reactor, f"unix:{_unixPath(options)}:backlog=1024")
    return endpoint.listen(factory)


def _connect(reactor: Any, options: argparse.Namespace, factory: Any) -> Any:
    """
    Connect with the implementation chosen; the Deferred fires with the
    protocol once a link is up.
    """
    if options.impl == CHANNEL:

        def linked(protocol: Any) -> Any:
            return protocol.transport.whenConnected().addCallback(lambda _: protocol)

        return _channel(reactor, options).connect(factory).addCallback(linked)
    from twisted.internet.endpoints import clientFromString

    endpoint = clientFromString(reactor, f"unix:path={_unixPath(options)}")
    return endpoint.connect(factory)


def _int32() -> type:
    from twisted.protocols.basic import Int32StringReceiver

    class Int32(Int32StringReceiver):
        MAX_LENGTH = INT32_MAX_LENGTH

    return Int32


# Throughput and fan-in


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
        # Each sender's own rate: its messages over the time from its first
        # to its last arrival here.
        rates = sorted(
            (n - 1) / ((last - first) / 1e9)
            for n, first, last in links
            if n > 1 and last > first
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
            _stopSoon(reactor)

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

        class Counter(_int32()):  # type: ignore[no-redef]
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
    _listen(reactor, options, factory).addCallbacks(
        lambda _: say("READY"), _fail(reactor)
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

        class Sender(_int32()):  # type: ignore[no-redef]
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
        _stopSoon(reactor)

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

    _connect(reactor, options, Factory.forProtocol(Sender)).addCallbacks(
        connected, _fail(reactor)
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
    _stoppedUnasked()


# Memory of a client with no host


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
        _stopSoon(reactor)

    endpoint.connect(Factory.forProtocol(Protocol)).addCallbacks(
        connected, _fail(reactor)
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


# Round trip


def runEcho(reactor: Any, options: argparse.Namespace) -> None:
    from twisted.internet.protocol import Factory, Protocol

    if options.impl == CHANNEL:

        class Echo(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(data)  # type: ignore[union-attr]

            def connectionLost(self, reason: Any = None) -> None:
                _stopSoon(reactor)

    else:

        class Echo(_int32()):  # type: ignore[no-redef]
            def stringReceived(self, data: bytes) -> None:
                self.sendString(data)

            def connectionLost(self, reason: Any = None) -> None:
                _stopSoon(reactor)

    _listen(reactor, options, Factory.forProtocol(Echo)).addCallbacks(
        lambda _: say("READY"), _fail(reactor)
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
                _stopSoon(reactor)

        def start(protocol: Any) -> None:
            state["t"] = monotonic_ns()
            protocol.transport.write(payload)

    else:

        class Pinger(_int32()):  # type: ignore[no-redef]
            def stringReceived(self, data: bytes) -> None:
                replied(self, self.sendString)

            def connectionLost(self, reason: Any = None) -> None:
                _stopSoon(reactor)

        def start(protocol: Any) -> None:
            state["t"] = monotonic_ns()
            protocol.sendString(payload)

    _connect(reactor, options, Factory.forProtocol(Pinger)).addCallbacks(
        start, _fail(reactor)
    )


# Start-up


def runStartup(reactor: Any, options: argparse.Namespace) -> None:
    """
    C{--reps} times, on a fresh channel (or socket) each time: the time
    from C{listen()} to hosting (for the baseline, to listening), and from
    C{connect()} to the first message delivered to the host's protocol.
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

    class BaselineHost(_int32()):  # type: ignore[misc, valid-type]
        def stringReceived(self, data: bytes) -> None:
            arrived()

    class BaselineClient(_int32()):  # type: ignore[misc, valid-type]
        def connectionMade(self) -> None:
            self.sendString(b"hello")

    def pause(seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        reactor.callLater(seconds, d.callback, None)
        return d

    async def once(i: int) -> tuple[int, int]:
        arrival: Deferred[int] = Deferred()
        arrivals.append(arrival)
        name = f"st{i}"
        if options.impl == CHANNEL:
            endpoint = ChannelEndpoint(reactor, name, directory=options.dir)
            t0 = monotonic_ns()
            port = await endpoint.listen(Factory.forProtocol(ChannelHost))
            await port.whenHosting()
            t1 = monotonic_ns()
            t2 = monotonic_ns()
            protocol = await endpoint.connect(Factory.forProtocol(Protocol))
            protocol.transport.write(b"hello")
        else:
            path = os.path.join(options.dir, name + ".b.sock")
            server = serverFromString(reactor, f"unix:{path}")
            client = clientFromString(reactor, f"unix:path={path}")
            t0 = monotonic_ns()
            port = await server.listen(Factory.forProtocol(BaselineHost))
            t1 = monotonic_ns()
            t2 = monotonic_ns()
            protocol = await client.connect(Factory.forProtocol(BaselineClient))
        t3 = await arrival
        connectNs = t3 - t2
        protocol.transport.loseConnection()
        await pause(0.02)
        await port.stopListening()
        return t1 - t0, connectNs

    async def main() -> None:
        listens: list[float] = []
        connects: list[float] = []
        for i in range(options.reps):
            listenNs, connectNs = await once(i)
            listens.append(listenNs / 1e3)
            connects.append(connectNs / 1e3)
            await pause(0.02)
        report(
            {
                "listen_us": median(listens),
                "connect_us": median(connects),
                "listen_all_us": listens,
                "connect_all_us": connects,
            }
        )

    d = Deferred.fromCoroutine(main())
    d.addErrback(_fail(reactor))
    d.addBoth(lambda _: _stopSoon(reactor))


# Memory with idle links


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

        class Idle(_int32()):  # type: ignore[no-redef]
            def connectionMade(self) -> None:
                made()

    def ready(_: Any) -> None:
        state["rss0"] = settled()
        say("READY", state["rss0"])

    _listen(reactor, options, Factory.forProtocol(Idle)).addCallbacks(
        ready, _fail(reactor)
    )


def runIdle(reactor: Any, options: argparse.Namespace) -> None:
    """
    Open C{--links} links, a few at a time (a listening socket's backlog is
    finite), and hold them.
    """
    from twisted.internet.protocol import Factory, Protocol

    raiseFileLimit(options.links + 256)
    protocol = Protocol if options.impl == CHANNEL else _int32()
    factory = Factory.forProtocol(protocol)
    held: list[Any] = []
    state = {"started": 0, "retries": 0}

    def openOne() -> None:
        if state["started"] >= options.links:
            return
        state["started"] += 1
        _connect(reactor, options, factory).addCallbacks(opened, failed)

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
            _fail(reactor)(reason)
            return
        state["started"] -= 1
        reactor.callLater(0.01, openOne)

    for _ in range(8):
        openOne()


KINDS: dict[str, Callable[[Any, argparse.Namespace], None]] = {
    "recv": runRecv,
    "send": runSend,
    "echo": runEcho,
    "ping": runPing,
    "startup": runStartup,
    "memhost": runMemHost,
    "idle": runIdle,
    "bufclient": runBufClient,
}

#: Kinds that run no reactor of their own.
PLAIN_KINDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "fanin": runFanIn,
}


def _stoppedUnasked() -> None:
    """
    Say so if the reactor stopped although nothing here asked it to: a
    signal from outside (SIGTERM, SIGINT) is the only other way.
    """
    if not _stopping:
        say("ERROR", "the reactor stopped unasked (a signal from outside?)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._children")
    parser.add_argument("kind", choices=sorted([*KINDS, *PLAIN_KINDS]))
    parser.add_argument("--impl", choices=[CHANNEL, BASELINE], default=CHANNEL)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--name", default="b")
    parser.add_argument("--limit", type=int, default=300, help="seconds to live")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--slice", type=int, default=1000)
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--go", action="store_true")
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--links", type=int, default=0)
    parser.add_argument("--cap", type=int, default=32 << 20)
    parser.add_argument("--total", type=int, default=100_000_000)
    options = parser.parse_args(argv)

    # Bounded in time whatever happens: SIGALRM's default action ends us.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, options.limit))

    if options.kind in PLAIN_KINDS:
        PLAIN_KINDS[options.kind](options)
        sys.stdout.flush()
        os._exit(0)

    from twisted.internet import reactor

    _watchStdin(reactor)
    KINDS[options.kind](reactor, options)
    reactor.run()  # type: ignore[attr-defined]
    _stoppedUnasked()
    # Leave without finalising the interpreter, which would wait for the
    # thread blocked reading stdin.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
