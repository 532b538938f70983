"""
The recording candidate and the streaming client: one child process that
tests, the chaos soak, the benchmark's failover run and the demo start on a
channel, C{python -m twisted_channel.testing.recorder MODE --dir D --name N
...}.

Modes:

 - C{candidate}: stand as a candidate host.  Its protocol records each
   message it receives as a line C{<host pid> <head> <monotonic ns>
   <length>} in C{--record} (the head is the message up to its first
   space), written with one C{write(2)} before C{dataReceived} returns, so
   that nothing it acknowledged is missing from the record even if it is
   killed a moment later (read it with L{twisted_channel.testing.readRecords}).
   With C{--stream TAG} it also runs a streaming client, as processes that
   are both candidates and clients do.  A message C{flood <count> <size>
   <producer>} makes it write C{count} messages of C{size} bytes back to
   that client, as a push producer or not.
 - C{client}: write C{TAG:1}, C{TAG:2}... (padded with a space and C{x} to
   C{--size} bytes): C{--slice} every C{--interval} seconds, or at
   C{--rate} per second, or as fast as a registered push producer is let
   (C{--producer}); after C{--count} messages, or when told to C{finish}
   (C{--count 0}: no limit), it closes gracefully, unless C{--stay}.  With
   C{--count 0}, no C{--rate} and no C{--endless} it writes nothing but
   C{--request}.

It reports on standard output, one line per event, flushed at once:

 - C{ELECTED <ns>} then C{ROLE host} each time a candidate becomes host;
   C{ROLE standby}, C{ROLE stopped} as its role changes otherwise; C{FIRST
   <ns>} when its protocol receives the first message of a hosting term;
   C{STOPPED} once C{stop} made it stop listening;
 - C{ERROR <class>: <message>} if listening or connecting failed, or a
   name or option was refused (the process then exits);
 - C{READY} once a client's connection is made (its writes may still wait
   for a host); C{LINK <host pid>} and C{UNLINK <reason class>} as its links
   come and go (not with C{--quiet-links}); C{PROGRESS <written>
   <acknowledged>} every C{--progress} seconds;
 - C{SENT <n>} once a client stopped writing, C{n} being its last number;
   C{FULL <written> <buffered bytes>} when a write raised
   C{ChannelBufferFullError} (it then stops writing); C{PAUSED <n>} /
   C{RESUMED <n>} when its producer is paused or resumed (the first three
   times, then every 100th); C{HELD <n>} / C{RELEASED <ns>} after C{hold} /
   C{release};
 - C{RECEIVED <messages> <bytes>} once a client got C{--expect} messages
   (and every C{--report-every} messages); C{HOSTFULL <written>} when a
   host's write to a client raised C{ChannelBufferFullError};
 - C{WROTE <n>} then C{CLOSED <reason class> <undelivered>} when a client's
   connection ends.

Commands on standard input, one a line: C{stop} (a candidate stops
listening), C{finish} (the streams stop writing and close gracefully),
C{hold} and C{release} (the streams stop writing for a while, and start
again).  The end of standard input ends the process, so that it never
outlives its parent; C{--limit} bounds its life in any case.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer


def say(line: str) -> None:
    """
    Print one report line and flush it.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def logToStandardError() -> None:
    """
    Begin Twisted's logging: events of level info and up, as text on
    standard error, which a L{twisted_channel.testing.ChildProcess} keeps
    for the tests that check what a child's channel said (its standard
    output is the child's report lines, L{say}).
    """
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(LogLevel.info)],
            )
        ],
        redirectStandardIO=False,
    )


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@implementer(IPushProducer)
class _FloodProducer:
    """
    Writes C{count} messages of C{size} bytes to a host-side transport as a
    push producer: only while not paused.
    """

    def __init__(self, transport: Any, count: int, size: int) -> None:
        self.transport = transport
        self.left = count
        self.filler = b"f" * size
        self.paused = False
        self.stopped = False

    def resumeProducing(self) -> None:
        self.paused = False
        while self.left > 0 and not self.paused and not self.stopped:
            self.left -= 1
            # A new object each time, as real messages are.
            self.transport.write(self.filler[:-1] + b"f")
        if self.left == 0 and not self.stopped:
            self.stopped = True
            self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.stopped = True


class RecordingServer(Protocol):
    """
    The candidate's protocol: records each message it receives.

    @cvar recordDescriptor: the record file, open for appending.
    @cvar firstPending: whether no message arrived yet in this hosting term.
    """

    recordDescriptor = -1
    firstPending = True

    def dataReceived(self, data: bytes) -> None:
        space = data.find(b" ")
        head = data if space < 0 else data[:space]
        if len(head) > 200:
            head = head[:200]
        now = time.monotonic_ns()
        os.write(
            self.recordDescriptor,
            b"%d %s %d %d\n" % (os.getpid(), head, now, len(data)),
        )
        if RecordingServer.firstPending:
            RecordingServer.firstPending = False
            say(f"FIRST {now}")
        if data.startswith(b"flood "):
            _, count, size, producer = data.split()
            self.flood(int(count), int(size), producer == b"1")

    def flood(self, count: int, size: int, producer: bool) -> None:
        """
        Write C{count} messages of C{size} bytes to this client.
        """
        transport: Any = self.transport
        if producer:
            flooding = _FloodProducer(transport, count, size)
            transport.registerProducer(flooding, True)
            flooding.resumeProducing()
            return
        from twisted_channel import ChannelBufferFullError

        filler = b"f" * size
        left = [count]

        def some() -> None:
            # In batches, so that the reactor goes on meanwhile; with no
            # producer only the link's cap holds the writes back.
            for _ in range(min(64, left[0])):
                try:
                    transport.write(filler[:-1] + b"f")
                except ChannelBufferFullError:
                    say(f"HOSTFULL {count - left[0]}")
                    return
                left[0] -= 1
            if left[0] > 0:
                _reactor().callLater(0, some)

        some()


@implementer(IPushProducer)
class StreamingClient(Protocol):
    """
    Writes C{TAG:1}, C{TAG:2}... in slices, at a rate, or as a push producer
    as fast as the transport lets it, then closes gracefully.

    @cvar stopReactorOnClose: whether the end of the connection ends the
        process (not for a candidate that also streams).
    """

    stopReactorOnClose = True

    def __init__(self, options: argparse.Namespace, tag: str) -> None:
        self.options = options
        self.tag = tag.encode()
        self.next = 1
        self.finished = False
        self.held = False
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.received = 0
        self.receivedBytes = 0
        self.started = 0.0
        self.heldAt = 0.0
        self.loop: Any = None
        self.progress: Any = None
        self.pending: Any = None

    def message(self, number: int) -> bytes:
        """
        Message C{number}, padded to C{--size} bytes.
        """
        head = b"%s:%d" % (self.tag, number)
        size: int = self.options.size
        if size > len(head) + 1:
            return head + b" " + b"x" * (size - len(head) - 1)
        return head

    def connectionMade(self) -> None:
        from twisted.internet.task import LoopingCall

        self.reactor = _reactor()
        self.started = self.reactor.seconds()
        if self.options.request:
            self.transport.write(self.options.request.encode())  # type: ignore[union-attr]
        if self.options.progress > 0:
            self.progress = LoopingCall(self.reportProgress)
            self.progress.clock = self.reactor
            self.progress.start(self.options.progress)
        if self.options.producer:
            self.transport.registerProducer(self, True)  # type: ignore[union-attr]
            self.pending = self.reactor.callLater(0, self.produce)
        elif self.options.count or self.options.rate > 0 or self.options.endless:
            self.loop = LoopingCall(self.writeSome)
            self.loop.clock = self.reactor
            self.loop.start(self.options.interval, now=True)

    def written(self) -> int:
        """
        The last number written.
        """
        return self.next - 1

    def reportProgress(self) -> None:
        transport: Any = self.transport
        acknowledged = self.written() - len(transport.pending)
        say(f"PROGRESS {self.written()} {acknowledged}")

    def _write(self) -> bool:
        """
        Write the next message; False if the stream must end.
        """
        from twisted_channel import ChannelBufferFullError

        try:
            self.transport.write(self.message(self.next))  # type: ignore[union-attr]
        except ChannelBufferFullError:
            buffered = self.transport.pending.byteCount  # type: ignore[union-attr]
            say(f"FULL {self.written()} {buffered}")
            self.finish()
            return False
        self.next += 1
        if self.options.count and self.next > self.options.count:
            self.finish()
            return False
        return True

    def writeSome(self) -> None:
        if self.finished or self.held:
            return
        if self.options.rate > 0:
            elapsed = self.reactor.seconds() - self.started
            target = int(elapsed * self.options.rate) + 1
        else:
            target = self.next + self.options.slice - 1
        while self.next <= target and not self.finished:
            if not self._write():
                return

    def produce(self) -> None:
        self.pending = None
        written = 0
        while not self.paused and not self.finished and written < 64:
            if not self._write():
                return
            written += 1
        if not self.paused and not self.finished:
            self.pending = self.reactor.callLater(0, self.produce)

    # IPushProducer

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1
        if self.pauses <= 3 or self.pauses % 100 == 0:
            say(f"PAUSED {self.pauses}")

    def resumeProducing(self) -> None:
        if self.finished:
            return
        self.paused = False
        self.resumes += 1
        if self.resumes <= 3 or self.resumes % 100 == 0:
            say(f"RESUMED {self.resumes}")
        if self.pending is None:
            self.pending = self.reactor.callLater(0, self.produce)

    def stopProducing(self) -> None:
        self.finished = True

    # Commands

    def hold(self) -> None:
        """
        Stop writing until L{release}.
        """
        if not self.held:
            self.heldAt = _reactor().seconds()
        self.held = True
        say(f"HELD {self.written()}")

    def release(self) -> None:
        """
        Start writing again after L{hold}; the time is taken before the
        first write.  At a C{--rate}, the stream goes on at that rate from
        where it stopped: the time it was held does not count, or it would
        write all it owes for that time in one burst.
        """
        if not self.held or self.finished:
            return
        self.held = False
        self.started += _reactor().seconds() - self.heldAt
        say(f"RELEASED {time.monotonic_ns()}")
        self.writeSome()

    def finish(self) -> None:
        """
        Stop writing and close gracefully (unless C{--stay}).
        """
        if self.finished:
            return
        self.finished = True
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None
        say(f"SENT {self.written()}")
        transport: Any = self.transport
        if self.options.producer:
            transport.unregisterProducer()
        if not self.options.stay and transport.state != "closed":
            transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received += 1
        self.receivedBytes += len(data)
        every = self.options.report_every
        if (self.options.expect and self.received == self.options.expect) or (
            every and self.received % every == 0
        ):
            say(f"RECEIVED {self.received} {self.receivedBytes}")

    # IChannelLinkObserver

    def linkEstablished(self, host: Any) -> None:
        if not self.options.quiet_links:
            say(f"LINK {host.pid}")

    def linkLost(self, reason: Failure) -> None:
        if not self.options.quiet_links:
            say(f"UNLINK {type(reason.value).__name__}")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.finished = True
        for loop in (self.loop, self.progress):
            if loop is not None and loop.running:
                loop.stop()
        if self.progress is not None:
            self.reportProgress()
        undelivered = getattr(reason.value, "undelivered", None)
        if undelivered is None:
            undelivered = len(self.transport.pending)  # type: ignore[union-attr]
        say(f"WROTE {self.written()}")
        say(f"CLOSED {type(reason.value).__name__} {undelivered}")
        if self.stopReactorOnClose:
            self.reactor.callLater(0, self.reactor.stop)


def _endpoint(options: argparse.Namespace) -> Any:
    """
    The channel endpoint the command line describes.
    """
    from twisted_channel import ChannelEndpoint

    settings: dict[str, Any] = {"maxBufferSize": options.max_buffer}
    if options.max_message is not None:
        settings["maxMessageSize"] = options.max_message
    if options.transport is not None:
        settings["transport"] = options.transport
    if options.handshake_timeout is not None:
        settings["handshakeTimeout"] = options.handshake_timeout
    return ChannelEndpoint(
        _reactor(),
        options.name,
        directory=options.dir,
        timeout=options.timeout,
        **settings,
    )


def _failed(reason: Failure) -> None:
    say(f"ERROR {type(reason.value).__name__}: {reason.getErrorMessage()}")
    _reactor().callWhenRunning(_reactor().stop)


def connectStream(options: argparse.Namespace, tag: str) -> list[StreamingClient]:
    """
    Connect a L{StreamingClient} writing messages tagged C{tag}.

    @return: a list that will hold it once it is built.
    """
    from twisted_channel import IChannelLinkObserver

    built: list[StreamingClient] = []

    def build() -> StreamingClient:
        protocol = StreamingClient(options, tag)
        protocol.stopReactorOnClose = options.mode == "client"
        directlyProvides(protocol, IChannelLinkObserver, IPushProducer)
        built.append(protocol)
        return protocol

    def connected(protocol: object) -> None:
        say("READY")

    factory = Factory.forProtocol(build)
    _endpoint(options).connect(factory).addCallbacks(connected, _failed)
    return built


class _Commands(Protocol):
    """
    Reads commands from standard input; its end ends the process.
    """

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def dataReceived(self, data: bytes) -> None:
        streams: list[StreamingClient] = self.state.get("streams", [])
        for command in data.decode().split():
            if command == "stop" and "port" in self.state:
                self.state["port"].stopListening().addCallback(lambda _: say("STOPPED"))
            elif command == "finish":
                for stream in streams:
                    stream.finish()
            elif command == "hold":
                for stream in streams:
                    stream.hold()
            elif command == "release":
                for stream in streams:
                    stream.release()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        # The parent went away: do not outlive it.
        reactor = _reactor()
        if reactor.running:
            reactor.stop()


def runCandidate(options: argparse.Namespace, state: dict[str, Any]) -> None:
    """
    Stand as a recording candidate host (and stream, with C{--stream}).
    """
    RecordingServer.recordDescriptor = os.open(
        options.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
    )

    def observe(role: str) -> None:
        if role == "host":
            RecordingServer.firstPending = True
            # One write for both lines: each wakes the parent's reader.
            say(f"ELECTED {time.monotonic_ns()}\nROLE {role}")
            return
        say(f"ROLE {role}")

    def listened(port: Any) -> None:
        state["port"] = port
        port.addRoleObserver(observe)
        if port.role == "host":
            say(f"ELECTED {time.monotonic_ns()}")
        say(f"ROLE {port.role}")
        if options.stream:
            state["streams"] = connectStream(options, options.stream)

    factory = Factory.forProtocol(RecordingServer)
    _endpoint(options).listen(factory).addCallbacks(listened, _failed)


def parser() -> argparse.ArgumentParser:
    """
    The command line's parser.
    """
    parser = argparse.ArgumentParser(
        prog="python -m twisted_channel.testing.recorder",
        description="A recording candidate host, or a streaming client, of a "
        "channel, for tests.",
    )
    parser.add_argument("mode", choices=["candidate", "client"])
    parser.add_argument("--dir", required=True, help="the channel's directory")
    parser.add_argument("--name", required=True, help="the channel's name")
    parser.add_argument("--record", default=os.devnull, help="candidate: record")
    parser.add_argument("--stream", default="", help="candidate: also stream TAG")
    parser.add_argument("--ballast", type=int, default=0, help="MiB to hold")
    parser.add_argument("--tag", default="c")
    parser.add_argument("--count", type=int, default=0, help="0: no limit")
    parser.add_argument("--endless", action="store_true", help="write until told")
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s")
    parser.add_argument("--slice", type=int, default=10, help="messages a tick")
    parser.add_argument("--interval", type=float, default=0.005, help="a tick (s)")
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--max-buffer", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--max-message", type=int, default=None)
    parser.add_argument("--transport", choices=["unix", "tcp"], default=None)
    parser.add_argument("--handshake-timeout", type=float, default=None)
    parser.add_argument("--producer", action="store_true")
    parser.add_argument("--stay", action="store_true", help="do not close")
    parser.add_argument(
        "--quiet-links",
        action="store_true",
        help="client: no LINK/UNLINK lines (each wakes the parent mid-takeover)",
    )
    parser.add_argument("--request", default="", help="written first")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--report-every", type=int, default=0)
    parser.add_argument("--progress", type=float, default=0.0, help="seconds")
    parser.add_argument("--limit", type=int, default=0, help="seconds to live")
    parser.add_argument("--reactor", choices=["default", "asyncio"], default="default")
    return parser


def main(arguments: list[str] | None = None) -> None:
    """
    Run the recorder with C{arguments} (default: the command line's).
    """
    options = parser().parse_args(arguments)
    if options.limit > 0:
        # Bounded in time whatever happens: SIGALRM's default action ends it.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(options.limit)
    if options.reactor == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import stdio

    # Memory the kernel must free when this process dies, before it closes
    # its sockets.
    ballast = bytearray(options.ballast * 1024 * 1024)
    state: dict[str, Any] = {}
    try:
        if options.mode == "candidate":
            runCandidate(options, state)
        else:
            state["streams"] = connectStream(options, options.tag)
    except ValueError as e:
        # A bad name or option: refused before anything was touched.
        say(f"ERROR {type(e).__name__}: {e}")
        sys.exit(2)
    stdio.StandardIO(_Commands(state))
    _reactor().run()
    del ballast


if __name__ == "__main__":
    main()
