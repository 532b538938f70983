"""
Helpers for the client's unit tests: recording applications, string
transports standing for links, and a client transport on a memory reactor
with links opened, welcomed, acknowledged and lost by hand.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_channel import (
    ChannelAddress,
    ChannelClientTransport,
    IChannelLinkObserver,
    _wire,
)
from twisted_channel._address import HOST
from twisted_channel._client import _ClientLink

SOCKET = "/tmp/tc-unit/jobs.sock"
HOST_PID = 4242


class Recorder(Protocol):
    """
    A client application that records what happens to it.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []
        self.made = 0

    def connectionMade(self) -> None:
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost.append(reason)


class Replier(Recorder):
    """
    A client application that answers each message from the host.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(b"re:" + data)  # type: ignore[union-attr]


@implementer(IChannelLinkObserver)
class Observer(Recorder):
    """
    A client application that also watches links come and go.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, object]] = []

    def linkEstablished(self, host: object) -> None:
        self.events.append(("up", host))

    def linkLost(self, reason: Failure) -> None:
        self.events.append(("down", reason))


class RecordingFactory(Factory):
    stopped = 0

    def doStop(self) -> None:
        self.stopped += 1


class NoCredentials:
    """
    A socket handle that cannot tell who its peer is.
    """

    def getsockopt(self, *args: object) -> bytes:
        raise OSError("not a socket")


class LinkTransport(StringTransport):
    """
    A string transport that records each C{write} and C{writeSequence}
    call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.sequences: list[list[bytes]] = []

    def getHandle(self) -> NoCredentials:
        return NoCredentials()

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        data = list(data)
        self.sequences.append(data)
        super().writeSequence(data)


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


class WaitingRead:
    """
    Stands in for L{_sockets.unreadBytes}: C{count} bytes wait unread, and
    the reactor reads them (calls C{read}) on its next pass, before a call
    scheduled now.
    """

    def __init__(
        self, reactor: MemoryReactorClock, count: int, read: Any = None
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.read = read

    def __call__(self, transport: object) -> int:
        count = self.count
        if self.read is not None:
            read, self.read = self.read, None

            def readNow() -> None:
                self.count = 0
                read()

            self.reactor.callLater(0, readNow)
        return count


def makeClient(
    protocol: Protocol | None = None,
    timeout: float = 5.0,
    maxMessageSize: int = 1000,
    maxBufferSize: int = 4000,
    failover: str = "resend",
) -> tuple[ChannelClientTransport, Any, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    if protocol is None:
        protocol = Recorder()
    factory = RecordingFactory()
    transport = ChannelClientTransport(
        reactor,
        ChannelAddress("jobs", SOCKET, HOST),
        protocol,
        factory,
        timeout,
        maxMessageSize,
        maxBufferSize,
        failover=failover,
    )
    protocol.makeConnection(transport)
    return transport, protocol, reactor


def openLink(client: ChannelClientTransport) -> tuple[_ClientLink, LinkTransport]:
    link = _ClientLink(client)
    transport = LinkTransport()
    link.makeConnection(transport)
    return link, transport


def sent(transport: StringTransport) -> list[tuple[int, bytes]]:
    """
    The frames written to C{transport} since it was last cleared.
    """
    frames = _wire.FrameDecoder(0xFFFFFFFE).feed(transport.value())
    transport.clear()
    return frames


def sentData(transport: StringTransport) -> list[bytes]:
    frames = sent(transport)
    assert all(kind == _wire.DATA for kind, _ in frames), frames
    return [body for _, body in frames]


def welcome(
    link: _ClientLink, resumeAfter: int = 0, maxMessageSize: int = 1000
) -> None:
    link.dataReceived(
        _wire.encodeWelcome(_wire.Welcome(resumeAfter, HOST_PID, maxMessageSize))
    )


def ack(link: _ClientLink, sequence: int) -> None:
    link.dataReceived(_wire.encodeAck(sequence))


def connected(
    client: ChannelClientTransport, resumeAfter: int = 0
) -> tuple[_ClientLink, LinkTransport]:
    """
    A link that said hello and was welcomed, with its output cleared.
    """
    link, transport = openLink(client)
    welcome(link, resumeAfter)
    transport.clear()
    transport.sequences.clear()
    return link, transport


def loseLink(link: _ClientLink) -> None:
    link.connectionLost(Failure(error.ConnectionLost("gone")))
