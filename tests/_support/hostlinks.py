"""
Helpers for the host's unit tests: recording applications and their
factory, and a port with a hosting term on a memory reactor, as if this
process had won the election, whose links are fed by hand.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport

from twisted_channel import _wire
from twisted_channel._address import HOST
from twisted_channel._directory import channelPaths
from twisted_channel._host import ChannelPort, _HostingTerm, _HostLink

from .clientlinks import Recorder

CLIENT_PID = 1234
LIMIT = 1000


class App(Recorder):
    """
    A host application protocol that records what happens to it.
    """


class Exploding(App):
    """
    An application with a bug: it raises on C{b"boom"}.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if data == b"boom":
            raise RuntimeError("application bug")


class Closing(App):
    """
    An application that ends the client's connection after one message.
    """

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(b"bye: " + data)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class AppFactory(Factory):
    def __init__(self, protocolClass: type[App] = App) -> None:
        self.protocolClass = protocolClass
        self.built: list[App] = []
        self.addresses: list[IAddress] = []

    def buildProtocol(self, addr: IAddress) -> App:
        protocol = self.protocolClass()
        protocol.factory = self
        self.built.append(protocol)
        self.addresses.append(addr)
        return protocol


class LinkTransport(StringTransport):
    """
    A string transport with a socket handle that cannot name its peer.
    """

    def getHandle(self) -> Any:
        return None


class Host:
    """
    A port and a hosting term, as if this process had won the election.
    """

    def __init__(self, directory: str, factory: AppFactory) -> None:
        self.reactor = MemoryReactorClock()
        self.factory = factory
        self.port = ChannelPort(
            self.reactor,
            "jobs",
            channelPaths("jobs", directory),
            factory,
            LIMIT,
            handshakeTimeout=10.0,
        )
        self.term = _HostingTerm(self.reactor.seconds())
        self.port._term = self.term
        self.port.role = HOST

    def link(self) -> tuple[_HostLink, StringTransport]:
        link = _HostLink(self.port, self.term)
        transport = LinkTransport()
        link.makeConnection(transport)
        return link, transport


def hello(
    clientId: bytes = b"c" * 16,
    firstSequence: int = 1,
    maxMessageSize: int = LIMIT,
    flags: int = 0,
) -> bytes:
    return _wire.encodeHello(
        _wire.Hello(clientId, CLIENT_PID, maxMessageSize, firstSequence, flags)
    )


def data(*payloads: bytes) -> bytes:
    return b"".join(_wire.encodeFrame(_wire.DATA, p) for p in payloads)


def sent(transport: StringTransport) -> list[tuple[int, bytes]]:
    frames = _wire.FrameDecoder(0xFFFFFFFE).feed(transport.value())
    transport.clear()
    return frames


def acks(frames: list[tuple[int, bytes]]) -> list[int]:
    assert all(kind == _wire.ACK for kind, _ in frames), frames
    return [_wire.decodeAck(body) for _, body in frames]


def welcomed(transport: StringTransport) -> _wire.Welcome:
    [(kind, body)] = sent(transport)
    assert kind == _wire.WELCOME
    return _wire.decodeWelcome(body)


def errorOf(transport: StringTransport) -> str:
    frames = sent(transport)
    assert [kind for kind, _ in frames] == [_wire.ERROR], frames
    return frames[0][1].decode("utf-8")
