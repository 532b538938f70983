"""
A child process for the chaos harness and the attack tests.

Run as ``python _worker.py MODE --dir D --name N ...``; it reports on stdout,
one line per event, flushed at once:

- ``ROLE host`` / ``ROLE standby`` / ``ROLE stopped`` as a candidate's role
  changes, ``ELECTED <monotonic ns>`` (just before ``ROLE host``) each time
  it becomes host, and ``FIRST <monotonic ns>`` when its protocol receives
  the first message of that hosting term;
- ``ERROR <class>: <message>`` if listening or connecting failed, or a
  name or option was refused (the process then exits);
- ``LINK <host pid>`` / ``UNLINK`` as a client's links come and go;
- ``SENT <n>`` once a client stopped writing, ``n`` being its last number;
- ``FULL <written> <buffered bytes>`` when a write raised
  C{ChannelBufferFullError} (the client then stops writing);
- ``PAUSED <n>`` / ``RESUMED <n>`` when its producer is paused or resumed
  (the first few times, then every 100th);
- ``RECEIVED <messages> <bytes>`` once a client got C{--expect} messages
  (and every C{--report-every} messages);
- ``HOSTFULL <written>`` when a host's write to a client raised
  C{ChannelBufferFullError} (its flood then stops);
- ``WROTE <n>`` then ``CLOSED <reason class> <undelivered>`` when a
  client's connection ends;
- ``STOPPED`` after ``stop`` on stdin made a candidate stop listening.

Modes:

- ``candidate``: stand as a candidate host.  Its protocol records each
  message it receives as a line ``<host pid> <head> <monotonic ns>
  <length>`` in C{--record} (the head is the message up to its first space),
  written with one C{write(2)} before C{dataReceived} returns, so that
  nothing it acknowledged is missing from the record even if it is killed a
  moment later.  With C{--stream TAG} it also runs a streaming client, as
  processes that are both candidates and clients do.  A message
  ``flood <count> <size> <producer>`` makes it write C{count} messages of
  C{size} bytes back to that client, as a push producer or not.
- ``client``: stream messages ``TAG:1``, ``TAG:2``... (padded with a space
  and ``x`` to C{--size} bytes) at C{--rate} per second, or as fast as a
  registered push producer is allowed to (C{--producer}).  With C{--count 0}
  it writes until ``finish`` is read on stdin; then it closes gracefully.

Stdin commands: ``stop`` (a candidate stops listening), ``finish`` (the
stream stops and closes gracefully).  End of stdin ends the process: a
worker never outlives the harness.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer


def say(line: str) -> None:
    """
    Print one report line and flush it.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


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
    The candidates' protocol: records each message it receives.
    """

    recordDescriptor = -1
    #: Whether no message arrived yet in this hosting term.
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
    Writes ``TAG:1``, ``TAG:2``... at a rate, or as a push producer as fast
    as the transport lets it, then closes gracefully.
    """

    stopReactorOnClose = True

    def __init__(self, options: argparse.Namespace, tag: str) -> None:
        self.options = options
        self.tag = tag.encode()
        self.next = 1
        self.finished = False
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.received = 0
        self.receivedBytes = 0
        self.started = 0.0
        self.loop: Any = None
        self.pending: Any = None

    def message(self, number: int) -> bytes:
        head = b"%s:%d" % (self.tag, number)
        size = self.options.size
        if size > len(head) + 1:
            return head + b" " + b"x" * (size - len(head) - 1)
        return head

    def connectionMade(self) -> None:
        self.reactor = _reactor()
        self.started = self.reactor.seconds()
        if self.options.request:
            self.transport.write(self.options.request.encode())  # type: ignore[union-attr]
        if self.options.producer:
            self.transport.registerProducer(self, True)  # type: ignore[union-attr]
            self.pending = self.reactor.callLater(0, self.produce)
        elif self.options.count != 0 or self.options.rate > 0:
            from twisted.internet.task import LoopingCall

            self.loop = LoopingCall(self.writeSome)
            self.loop.clock = self.reactor
            self.loop.start(self.options.tick, now=True)

    def _write(self) -> bool:
        """
        Write the next message; False if the stream must end.
        """
        from twisted_channel import ChannelBufferFullError

        try:
            self.transport.write(self.message(self.next))  # type: ignore[union-attr]
        except ChannelBufferFullError:
            buffered = self.transport.pending.byteCount  # type: ignore[union-attr]
            say(f"FULL {self.next - 1} {buffered}")
            self.finish()
            return False
        self.next += 1
        if self.options.count and self.next > self.options.count:
            self.finish()
            return False
        return True

    def writeSome(self) -> None:
        if self.finished:
            return
        if self.options.rate > 0:
            elapsed = self.reactor.seconds() - self.started
            target = int(elapsed * self.options.rate) + 1
        else:
            target = self.next + self.options.slice
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
        say(f"SENT {self.next - 1}")
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

    def linkEstablished(self, host: Any) -> None:
        say(f"LINK {host.pid}")

    def linkLost(self, reason: Failure) -> None:
        say("UNLINK")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.finished = True
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        undelivered = getattr(reason.value, "undelivered", 0)
        say(f"WROTE {self.next - 1}")
        say(f"CLOSED {type(reason.value).__name__} {undelivered}")
        if self.stopReactorOnClose:
            self.reactor.callLater(0, self.reactor.stop)


def _connectStream(options: argparse.Namespace, tag: str) -> list[StreamingClient]:
    from zope.interface import directlyProvides

    from twisted_channel import ChannelEndpoint, IChannelLinkObserver

    endpoint = ChannelEndpoint(
        _reactor(),
        options.name,
        directory=options.dir,
        timeout=options.timeout,
        **_sizes(options),
    )
    built: list[StreamingClient] = []

    def build() -> StreamingClient:
        protocol = StreamingClient(options, tag)
        protocol.stopReactorOnClose = options.mode == "client"
        directlyProvides(protocol, IChannelLinkObserver, IPushProducer)
        built.append(protocol)
        return protocol

    def failed(reason: Failure) -> None:
        say(f"ERROR {type(reason.value).__name__}: {reason.getErrorMessage()}")
        _reactor().callWhenRunning(_reactor().stop)

    endpoint.connect(Factory.forProtocol(build)).addErrback(failed)  # type: ignore[arg-type]
    return built


class _Commands(Protocol):
    """
    Reads commands from stdin; its end ends the process.
    """

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def dataReceived(self, data: bytes) -> None:
        for command in data.decode().split():
            if command == "stop" and "port" in self.state:
                self.state["port"].stopListening().addCallback(lambda _: say("STOPPED"))
            elif command == "finish":
                for stream in self.state.get("streams", []):
                    stream.finish()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        reactor = _reactor()
        if reactor.running:
            reactor.stop()


def _sizes(options: argparse.Namespace) -> dict[str, Any]:
    """
    The endpoint's size and transport options the command line gave.
    """
    sizes: dict[str, Any] = {"maxBufferSize": options.max_buffer}
    if options.max_message is not None:
        sizes["maxMessageSize"] = options.max_message
    if options.transport is not None:
        sizes["transport"] = options.transport
    return sizes


def runCandidate(options: argparse.Namespace, state: dict[str, Any]) -> None:
    from twisted_channel import ChannelEndpoint

    reactor = _reactor()
    RecordingServer.recordDescriptor = os.open(
        options.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
    )
    endpoint = ChannelEndpoint(
        reactor, options.name, directory=options.dir, **_sizes(options)
    )
    if options.handshake_timeout is not None:
        # The endpoint has no option for it (yet); the port has.
        makePort = endpoint._port

        def port(factory: Any) -> Any:
            made = makePort(factory)
            made.handshakeTimeout = options.handshake_timeout
            return made

        endpoint._port = port  # type: ignore[method-assign]

    def observe(role: str) -> None:
        if role == "host":
            RecordingServer.firstPending = True
            say(f"ELECTED {time.monotonic_ns()}")
        say(f"ROLE {role}")

    def listened(port: Any) -> None:
        state["port"] = port
        port.addRoleObserver(observe)
        if port.role == "host":
            say(f"ELECTED {time.monotonic_ns()}")
        say(f"ROLE {port.role}")
        if options.stream:
            state["streams"] = _connectStream(options, options.stream)

    def failed(reason: Failure) -> None:
        say(f"ERROR {type(reason.value).__name__}: {reason.getErrorMessage()}")
        reactor.callWhenRunning(reactor.stop)

    endpoint.listen(Factory.forProtocol(RecordingServer)).addCallbacks(listened, failed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["candidate", "client"])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--record", default=os.devnull)
    parser.add_argument("--stream", default="", help="candidate: also stream")
    parser.add_argument("--tag", default="c")
    parser.add_argument("--count", type=int, default=0, help="0: until told")
    parser.add_argument("--rate", type=float, default=0.0, help="messages/s")
    parser.add_argument("--slice", type=int, default=10)
    parser.add_argument("--tick", type=float, default=0.005)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--max-buffer", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--max-message", type=int, default=None)
    parser.add_argument("--transport", choices=["unix", "tcp"], default=None)
    parser.add_argument("--producer", action="store_true")
    parser.add_argument("--stay", action="store_true")
    parser.add_argument("--request", default="")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--report-every", type=int, default=0)
    parser.add_argument("--handshake-timeout", type=float, default=None)
    parser.add_argument("--reactor", choices=["default", "asyncio"], default="default")
    options = parser.parse_args()
    if options.reactor == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import stdio

    state: dict[str, Any] = {}
    try:
        if options.mode == "candidate":
            runCandidate(options, state)
        else:
            state["streams"] = _connectStream(options, options.tag)
    except ValueError as e:
        # A bad name or option: refused before anything was touched.
        say(f"ERROR {type(e).__name__}: {e}")
        sys.exit(2)
    stdio.StandardIO(_Commands(state))
    _reactor().run()


if __name__ == "__main__":
    main()
