"""
The ways the channel uses Twisted's socket transports beyond their public
interfaces, over real Unix and TCP sockets with the installed reactor.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
)
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_channel import ChannelEndpoint
from twisted_channel._sockets import (
    bufferedBytes,
    readDirectly,
    sendNow,
    unreadBytes,
)


class Collector(Protocol):
    """
    Keeps what its transport hands it, and says how its connection ended.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.direct: list[bytes] = []
        self.reason: Failure | None = None
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.lost.callback(None)


async def _connectedPair(
    transport: str, directory: str
) -> tuple[Collector, Collector, IListeningPort]:
    """
    A listening port, and a server and a client protocol linked through it.
    """
    from twisted.internet import reactor

    servers: list[Collector] = []
    serverMade: Deferred[None] = Deferred()

    class ServerCollector(Collector):
        def connectionMade(self) -> None:
            servers.append(self)
            serverMade.callback(None)

    factory = Factory.forProtocol(ServerCollector)
    client = Collector()
    endpoint: IStreamClientEndpoint
    if transport == "unix":
        path = os.path.join(directory, "s.sock")
        port = reactor.listenUNIX(path, factory)  # type: ignore[attr-defined]
        endpoint = UNIXClientEndpoint(reactor, path)
    else:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    await connectProtocol(endpoint, client)
    await serverMade.addTimeout(5, reactor)
    return servers[0], client, port


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest_twisted.ensureDeferred
async def test_readDirectlyDeliversEveryByteInOrder(
    transport: str, channelDirectory: str
) -> None:
    """
    Once a transport reads directly, everything its peer sends reaches the
    function given, in order and not through the protocol; the peer's close
    still ends the connection cleanly.
    """
    server, client, port = await _connectedPair(transport, channelDirectory)
    try:
        assert server.transport is not None
        assert readDirectly(server.transport, server.direct.append)
        payload = bytes(range(256)) * 4096
        assert client.transport is not None
        client.transport.write(payload)
        await _until(lambda: sum(map(len, server.direct)) >= len(payload))
        assert b"".join(server.direct) == payload
        assert server.received == []
        client.transport.loseConnection()
        await server.lost.addTimeout(5, _reactor())
        assert server.reason is not None and server.reason.check(ConnectionDone)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_readDirectlyEndsTheConnectionOnAnError(channelDirectory: str) -> None:
    """
    A read that fails (here: the peer reset the connection) ends the
    connection through the reactor as lost, as the transport's own read
    would.
    """
    server, client, port = await _connectedPair("tcp", channelDirectory)
    try:
        assert server.transport is not None
        assert readDirectly(server.transport, server.direct.append)
        assert client.transport is not None
        # A zero linger time makes closing send a reset.
        client.transport.getHandle().setsockopt(  # type: ignore[attr-defined]
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        client.transport.abortConnection()  # type: ignore[attr-defined]
        await server.lost.addTimeout(5, _reactor())
        assert server.reason is not None and server.reason.check(ConnectionLost)
        assert server.direct == []
    finally:
        await port.stopListening()


class SocketHolder:
    """
    Just enough of a transport for L{unreadBytes}: a handle.
    """

    def __init__(self, handle: socket.socket) -> None:
        self.handle = handle

    def getHandle(self) -> socket.socket:
        return self.handle


def test_unreadBytesCountsWhatTheKernelHolds() -> None:
    """
    The bytes a socket received and nobody read yet; 0 for a transport
    without a socket, or whose socket is closed.
    """
    one, other = socket.socketpair()
    try:
        holder = SocketHolder(other)
        assert unreadBytes(holder) == 0
        one.sendall(b"x" * 1000)
        assert unreadBytes(holder) == 1000
        other.recv(300)
        assert unreadBytes(holder) == 700
    finally:
        one.close()
        other.close()
    assert unreadBytes(holder) == 0
    assert unreadBytes(StringTransport()) == 0


def test_readDirectlyLeavesOtherTransportsAlone() -> None:
    """
    A transport that is not one of Twisted's socket connections keeps its
    own way of reading.
    """
    transport = StringTransport()
    assert not readDirectly(transport, lambda data: None)
    assert "doRead" not in vars(transport)


@pytest_twisted.ensureDeferred
async def test_sendNowKeepsOrderBehindBufferedData(channelDirectory: str) -> None:
    """
    Data sent while the transport still holds earlier data goes behind it,
    not ahead; sent on an empty transport, it leaves without buffering.
    """
    server, client, port = await _connectedPair("unix", channelDirectory)
    try:
        assert client.transport is not None
        sendNow(client.transport, b"first")
        assert bufferedBytes(client.transport) == 0
        big = b"x" * (8 << 20)
        client.transport.write(big)
        assert bufferedBytes(client.transport) > 0
        sendNow(client.transport, b"last")
        total = 5 + len(big) + 4
        await _until(lambda: sum(map(len, server.received)) >= total, 20)
        received = b"".join(server.received)
        assert received == b"first" + big + b"last"
    finally:
        await port.stopListening()


def _reactor() -> IReactorTime:
    from twisted.internet import reactor

    return reactor  # type: ignore[return-value]


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest_twisted.ensureDeferred
async def test_channelLinksReadDirectly(transport: str, channelDirectory: str) -> None:
    """
    Both ends of a channel's link read directly, and messages still arrive
    whole, in order, both ways.
    """
    from twisted.internet import reactor

    hostReceived: list[bytes] = []
    clientReceived: list[bytes] = []

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            hostReceived.append(data)
            assert self.transport is not None
            self.transport.write(data.upper())

    class Client(Protocol):
        def dataReceived(self, data: bytes) -> None:
            clientReceived.append(data)

    endpoint = ChannelEndpoint(
        reactor, "direct", directory=channelDirectory, transport=transport
    )
    port = await endpoint.listen(Factory.forProtocol(Echo))
    try:
        await port.whenHosting()  # type: ignore[attr-defined]
        client = await endpoint.connect(Factory.forProtocol(Client))
        assert client.transport is not None
        messages = [b"m%d" % i * (1 + i % 700) for i in range(200)]
        for message in messages:
            client.transport.write(message)
        await _until(lambda: len(clientReceived) == len(messages))
        assert hostReceived == messages
        assert clientReceived == [m.upper() for m in messages]
        link = client.transport.link  # type: ignore[attr-defined]
        assert "doRead" in vars(link.transport)
        [hostLink] = port._term.allLinks  # type: ignore[attr-defined]
        assert "doRead" in vars(hostLink.transport)
        client.transport.loseConnection()
    finally:
        await port.stopListening()
