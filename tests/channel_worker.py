"""
A child process for the multi-process tests: a candidate host that records
what it receives, or a client that streams numbered messages.

Run as ``python channel_worker.py MODE --dir D --name N ...``; it reports on
stdout, one line per event, flushed at once:

- ``ROLE host`` / ``ROLE standby`` when the candidate's role changes;
- ``LINK <host pid>`` each time a client's link comes up, ``UNLINK <reason
  class>`` each time it goes;
- ``SENT <count>`` once a client has written everything;
- ``CLOSED <reason class> <undelivered>`` when a client's connection ends.

A host records each message it receives as a line ``<host pid> <message>``
in the file given by ``--record``, written before its ``dataReceived``
returns, so that nothing it acknowledged is missing from the record even if
it is killed a moment later.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class RecordingServer(Protocol):
    recordDescriptor = -1

    def dataReceived(self, data: bytes) -> None:
        os.write(self.recordDescriptor, b"%d %s\n" % (os.getpid(), data))
        if data.startswith(b"echo:"):
            self.transport.write(data[5:])  # type: ignore[union-attr]


class StreamingClient(Protocol):
    """
    Writes ``TAG:1`` to ``TAG:COUNT`` in slices, so that links come and go
    while it writes, then closes gracefully.
    """

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.next = 1

    def connectionMade(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.reactor.callLater(0, self.writeSome)

    def writeSome(self) -> None:
        options = self.options
        stop = min(self.next + options.slice, options.count + 1)
        for number in range(self.next, stop):
            self.transport.write(b"%s:%d" % (options.tag.encode(), number))  # type: ignore[union-attr]
        self.next = stop
        if self.next <= options.count:
            self.reactor.callLater(options.interval, self.writeSome)
            return
        say(f"SENT {options.count}")
        if not options.stay:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        say(f"GOT {data.decode()}")

    def linkEstablished(self, host: Any) -> None:
        say(f"LINK {host.pid}")

    def linkLost(self, reason: Failure) -> None:
        say(f"UNLINK {type(reason.value).__name__}")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        undelivered = getattr(reason.value, "undelivered", 0)
        say(f"CLOSED {type(reason.value).__name__} {undelivered}")
        self.reactor.callLater(0, self.reactor.stop)


def runCandidate(options: argparse.Namespace) -> None:
    from twisted.internet import reactor, stdio

    from twisted_channel import ChannelEndpoint

    # Memory the kernel must free when this process dies, before it closes
    # its sockets.
    ballast = bytearray(options.ballast * 1024 * 1024)
    RecordingServer.recordDescriptor = os.open(
        options.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
    )
    endpoint = ChannelEndpoint(
        reactor, options.name, directory=options.dir, transport=options.transport
    )
    factory = Factory.forProtocol(RecordingServer)
    state: dict[str, Any] = {}

    class Commands(Protocol):
        def dataReceived(self, data: bytes) -> None:
            for command in data.decode().split():
                if command == "stop":
                    state["port"].stopListening().addCallback(lambda _: say("STOPPED"))

        def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
            # The test went away: do not outlive it.
            if reactor.running:  # type: ignore[attr-defined]
                reactor.stop()  # type: ignore[attr-defined]

    def listened(port: Any) -> None:
        state["port"] = port
        port.addRoleObserver(lambda role: say(f"ROLE {role}"))
        say(f"ROLE {port.role}")

    def failed(reason: Failure) -> None:
        say(f"ERROR {reason.getErrorMessage()}")
        reactor.stop()  # type: ignore[attr-defined]

    endpoint.listen(factory).addCallbacks(listened, failed)
    stdio.StandardIO(Commands())
    reactor.run()  # type: ignore[attr-defined]
    del ballast


def runClient(options: argparse.Namespace) -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory
    from zope.interface import directlyProvides

    from twisted_channel import ChannelEndpoint, IChannelLinkObserver

    endpoint = ChannelEndpoint(
        reactor,
        options.name,
        directory=options.dir,
        transport=options.transport,
        timeout=options.timeout,
    )

    def build() -> StreamingClient:
        protocol = StreamingClient(options)
        directlyProvides(protocol, IChannelLinkObserver)
        return protocol

    factory = Factory.forProtocol(build)  # type: ignore[arg-type]
    endpoint.connect(factory)
    reactor.run()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["candidate", "client"])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--record", default=os.devnull)
    parser.add_argument("--tag", default="c")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--slice", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.001)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--stay", action="store_true")
    parser.add_argument("--ballast", type=int, default=0, help="MiB a candidate holds")
    parser.add_argument("--reactor", choices=["default", "asyncio"], default="default")
    parser.add_argument("--transport", choices=["unix", "tcp"], default="unix")
    options = parser.parse_args()
    if options.reactor == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    if options.mode == "candidate":
        runCandidate(options)
    else:
        runClient(options)


if __name__ == "__main__":
    main()
