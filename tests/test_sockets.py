"""
The ways the channel uses Twisted's socket transports beyond their public
interfaces, over real Unix and TCP sockets with the installed reactor.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import abstract, tcp, unix
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
)
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import context, log
from twisted.python.failure import Failure

from twisted_channel import ChannelEndpoint, _sockets, _wire
from twisted_channel._sockets import (
    TwistedEdge,
    bufferedBytes,
    probeTwisted,
    readDirectly,
    sendAtEndOfRead,
    sendNow,
    sendSequenceNow,
    twistedEdge,
    unreadBytes,
    writeUnjoined,
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
    function given, in order and not through the protocol (as views of a
    buffer the next read reuses: the function copies them); the peer's
    close still ends the connection cleanly.
    """
    server, client, port = await _connectedPair(transport, channelDirectory)
    try:
        assert server.transport is not None
        assert readDirectly(
            server.transport, lambda data: server.direct.append(bytes(data))
        )
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


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest_twisted.ensureDeferred
async def test_readDirectlyReadsALargeMessageIntoItsOwnBuffer(
    transport: str, channelDirectory: str
) -> None:
    """
    Given a frame decoder, a transport reading directly reads the rest of
    a large message straight into the message's own buffer (the function is
    then given C{b""}), and the decoder returns each message whole, in
    order, with the small frames between them.
    """
    from twisted_channel import _wire

    server, client, port = await _connectedPair(transport, channelDirectory)
    decoder = _wire.FrameDecoder(1 << 24)
    frames: list[tuple[int, bytes]] = []
    empty: list[int] = []

    def received(data: bytes | memoryview) -> None:
        if not data:
            empty.append(1)
        frames.extend(decoder.feed(data))

    large = [bytes([i]) * (3 << 20) for i in range(3)]
    sent = [large[0], b"small", large[1], large[2], b"last"]
    try:
        assert server.transport is not None
        assert readDirectly(server.transport, received, decoder)
        assert client.transport is not None
        for message in sent:
            client.transport.write(_wire.encodeFrame(_wire.DATA, message))
        await _until(lambda: len(frames) == len(sent))
        assert frames == [(_wire.DATA, message) for message in sent]
        assert empty, "no read went into a message's own buffer"
        assert decoder.buffered == 0
    finally:
        await port.stopListening()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest_twisted.ensureDeferred
async def test_readDirectlyReadsWhatFollowsALargeMessageInTheSameCall(
    transport: str, channelDirectory: str
) -> None:
    """
    The read that finishes a large message also reads the frames after it,
    into the shared buffer, when the message's own buffer ends with it:
    those frames come out of the same call, and everything arrives whole
    and in order.
    """
    from twisted_channel import _wire

    server, client, port = await _connectedPair(transport, channelDirectory)
    decoder = _wire.FrameDecoder(1 << 24)
    frames: list[tuple[int, bytes]] = []
    #: Reads that finished a large message and brought the frames after it.
    finishedAndMore: list[int] = []

    def received(data: bytes | memoryview) -> None:
        finishing = decoder.largeUnderWay and bool(data)
        new = decoder.feed(data)
        if finishing and len(new) > 1:
            finishedAndMore.append(len(new))
        frames.extend(new)

    sent = []
    for i in range(40):
        sent.append(bytes([i]) * (65536 + 7 * i))
        sent.append(b"small %d" % i)
    try:
        assert server.transport is not None
        assert readDirectly(server.transport, received, decoder)
        assert client.transport is not None
        for message in sent:
            client.transport.write(_wire.encodeFrame(_wire.DATA, message))
        await _until(lambda: len(frames) == len(sent))
        assert frames == [(_wire.DATA, message) for message in sent]
        assert finishedAndMore, "no read brought more than a large message's rest"
        assert decoder.buffered == 0
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


@pytest_twisted.ensureDeferred
async def test_sendAtEndOfReadSendsNowAndPushesWhatIsHeld(
    channelDirectory: str,
) -> None:
    """
    What a read's handling ends with: on an empty transport the data
    leaves at once; on one that holds data it goes behind it, and what the
    kernel takes of both is handed over now; what the kernel does not take
    waits in the transport.  Everything arrives once, in order.
    """
    server, client, port = await _connectedPair("unix", channelDirectory)
    try:
        assert client.transport is not None
        sendAtEndOfRead(client.transport, b"first")
        assert bufferedBytes(client.transport) == 0
        assert "doWrite" not in vars(client.transport)
        big = b"x" * (8 << 20)
        client.transport.write(big)
        held = bufferedBytes(client.transport)
        assert held == len(big)
        sendAtEndOfRead(client.transport, b"then")
        # Pushed now: the kernel took part of what was held.
        assert 0 < bufferedBytes(client.transport) < held + 4
        total = 5 + len(big) + 4
        await _until(lambda: sum(map(len, server.received)) >= total, 20)
        assert bufferedBytes(client.transport) == 0
        larger = b"y" * (8 << 20)
        sendAtEndOfRead(client.transport, larger)
        # The kernel took what it could at once; the rest waits, unjoined.
        assert 0 < bufferedBytes(client.transport) < len(larger)
        assert "doWrite" in vars(client.transport)
        total += len(larger)
        await _until(lambda: sum(map(len, server.received)) >= total, 20)
        assert b"".join(server.received) == b"first" + big + b"then" + larger
    finally:
        await port.stopListening()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest_twisted.ensureDeferred
async def test_sendSequenceNowKeepsOrder(transport: str, channelDirectory: str) -> None:
    """
    Pieces sent together on an empty transport leave at once, unjoined, as
    far as the kernel takes them; the rest, cut anywhere in a piece, waits
    in the transport, which from then on sends what it holds unjoined
    (L{writeUnjoined}); pieces sent while it holds data go behind; more
    pieces than one C{sendmsg} is given go too.  Everything arrives once,
    in order.
    """
    server, client, port = await _connectedPair(transport, channelDirectory)
    try:
        assert client.transport is not None
        sendSequenceNow(client.transport, [b"a", b"bc"])
        assert bufferedBytes(client.transport) == 0
        # Nothing was left to the transport: it sends as Twisted does.
        assert "doWrite" not in vars(client.transport)
        big = [bytes([i]) * (3 << 20) + b"!" for i in range(3)]
        sendSequenceNow(client.transport, big)
        assert 0 < bufferedBytes(client.transport) < sum(map(len, big))
        # What is left, it sends unjoined.
        assert "doWrite" in vars(client.transport)
        many = [b"%d," % i for i in range(2000)]
        sendSequenceNow(client.transport, many)
        expected = b"abc" + b"".join(big) + b"".join(many)
        await _until(lambda: sum(map(len, server.received)) >= len(expected), 20)
        assert b"".join(server.received) == expected
        assert bufferedBytes(client.transport) == 0
        sendSequenceNow(client.transport, many)
        expected += b"".join(many)
        await _until(lambda: sum(map(len, server.received)) >= len(expected), 20)
        assert b"".join(server.received) == expected
    finally:
        await port.stopListening()


class CountingProducer:
    """
    A streaming producer that counts how often it is paused and resumed.
    """

    def __init__(self) -> None:
        self.pauses = 0
        self.resumes = 0

    def pauseProducing(self) -> None:
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.resumes += 1

    def stopProducing(self) -> None:
        pass


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest_twisted.ensureDeferred
async def test_writeUnjoinedSendsWhatTheTransportHolds(
    transport: str, channelDirectory: str
) -> None:
    """
    A transport that sends unjoined delivers everything written while the
    kernel's buffer was full (single writes, sequences, pieces cut
    anywhere by the kernel) once and in order, never has Twisted join the
    large pieces it holds (only what adds up to less than 64 KiB), counts
    what it still holds, pauses and resumes a producer as Twisted does, and
    a C{loseConnection} ends the connection once all is sent.
    """
    server, client, port = await _connectedPair(transport, channelDirectory)
    try:
        assert client.transport is not None
        assert writeUnjoined(client.transport)
        assert "doWrite" in vars(client.transport)
        producer = CountingProducer()
        client.transport.registerProducer(producer, True)
        joins: list[int] = []
        plainDoWrite = abstract.FileDescriptor.doWrite

        def watched(self: Any) -> Any:
            joins.append(self._tempDataLen)
            return plainDoWrite(self)

        expected = bytearray()
        with pytest.MonkeyPatch.context() as patched:
            patched.setattr(abstract.FileDescriptor, "doWrite", watched)
            for i in range(40):
                piece = bytes([i]) * (65536 + i)
                if i % 3:
                    client.transport.write(piece)
                    expected += piece
                else:
                    sequence = [b"h%d" % i, piece, b"t"]
                    client.transport.writeSequence(sequence)
                    expected += b"".join(sequence)
            assert bufferedBytes(client.transport) == len(expected)
            assert producer.pauses >= 1
            await _until(lambda: sum(map(len, server.received)) >= len(expected), 20)
        assert b"".join(server.received) == expected
        assert bufferedBytes(client.transport) == 0
        # Twisted's doWrite ran only with no large piece left to join.
        assert joins and max(joins) < 65536
        assert producer.resumes == 1
        client.transport.unregisterProducer()
        last = b"z" * (4 << 20)
        client.transport.writeSequence([b"a", last])
        client.transport.loseConnection()
        await server.lost.addTimeout(20, _reactor())
        assert b"".join(server.received) == bytes(expected) + b"a" + last
        assert client.reason is not None
        assert client.reason.check(ConnectionDone)
    finally:
        await port.stopListening()


def test_writeUnjoinedLeavesOtherTransportsAlone() -> None:
    """
    Only Twisted's socket transports send unjoined; another transport is
    left as it is.
    """
    other = StringTransport()
    assert not writeUnjoined(other)
    assert "doWrite" not in vars(other)


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
        if isinstance(reactor, EPollReactor):
            # The reactor hands the links' reads over without the legacy
            # logging context.
            assert vars(reactor)["doIteration"].__code__ is (
                _sockets._directDoPoll(reactor).__code__
            )
        else:
            # Another reactor (CI's asyncio run) dispatches as it does.
            assert "doIteration" not in vars(reactor)
        client.transport.loseConnection()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_hostWelcomesWithoutWatchingForWritability(
    channelDirectory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A host hands its welcome, and the acknowledgement of the first messages,
    straight to the kernel: the link's transport is never registered with
    the reactor for writability on the way to the first message.
    """
    from twisted.internet import reactor

    watched: list[object] = []
    addWriter = reactor.addWriter  # type: ignore[attr-defined]

    def recordingAddWriter(writer: object) -> None:
        watched.append(writer)
        addWriter(writer)

    monkeypatch.setattr(reactor, "addWriter", recordingAddWriter)
    received: list[bytes] = []

    class Host(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    endpoint = ChannelEndpoint(reactor, "welcome", directory=channelDirectory)
    port = await endpoint.listen(Factory.forProtocol(Host))
    try:
        await port.whenHosting()  # type: ignore[attr-defined]
        client = await endpoint.connect(Factory.forProtocol(Protocol))
        assert client.transport is not None
        client.transport.write(b"first")
        await _until(lambda: client.transport.acknowledgedThrough == 1)  # type: ignore[union-attr]
        assert received == [b"first"]
        [hostLink] = port._term.allLinks  # type: ignore[attr-defined]
        assert hostLink.transport not in watched
        client.transport.loseConnection()
    finally:
        await port.stopListening()


class LoggedReader:
    """
    A descriptor over one end of a socket pair that notes the legacy
    logging context's C{system} each time it reads, and how it was lost.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.systems: list[object] = []
        self.lost: list[Failure] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "logged reader"

    def doRead(self) -> None:
        self.sock.recv(64)
        self.systems.append(context.get(log.ILogContext)["system"])

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


@pytest.fixture
def epollReactor() -> Iterator[Any]:
    """
    A reactor of the test's own, never run: its C{doIteration} is called
    by hand.
    """
    reactor: Any = EPollReactor()
    yield reactor
    reactor.removeAll()
    reactor.waker.connectionLost(None)
    reactor._poller.close()


def test_directDispatchSkipsTheLoggingContextOfLinksOnly(
    epollReactor: Any,
) -> None:
    """
    The epoll reactor's dispatch, once a link reads directly, hands that
    link's reads over without the legacy logging context, and every other
    descriptor's inside it, as Twisted's own dispatch does.
    """
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        plain = LoggedReader(pairs[0][0])
        link = tcp.Connection(pairs[1][0], Protocol(), epollReactor)
        link.connected = True
        systems: list[object] = []

        def received(data: bytes | memoryview) -> None:
            systems.append((bytes(data), context.get(log.ILogContext)["system"]))

        assert "doIteration" not in vars(epollReactor)
        assert readDirectly(link, received)
        assert "doIteration" in vars(epollReactor)
        epollReactor.addReader(plain)
        epollReactor.addReader(link)
        pairs[0][1].send(b"p")
        pairs[1][1].send(b"to the link")
        epollReactor.doIteration(0)
        assert plain.systems == ["logged reader"]
        assert systems == [(b"to the link", "-")]
        # Given once: a second link keeps the same dispatch.
        given = vars(epollReactor)["doIteration"]
        other = tcp.Connection(socket.socket(socket.AF_UNIX), Protocol(), epollReactor)
        try:
            assert readDirectly(other, received)
            assert vars(epollReactor)["doIteration"] is given
        finally:
            other.socket.close()
    finally:
        epollReactor.removeAll()
        for pair in pairs:
            for sock in pair:
                sock.close()


def test_directDispatchEndsALinkWhoseReadFails(epollReactor: Any) -> None:
    """
    A link whose read raises is disconnected and the failure logged, as
    Twisted's dispatch does; the reactor goes on with other descriptors.
    """
    pairs = [socket.socketpair() for _ in range(2)]
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        lost: list[Failure] = []

        class Lost(Protocol):
            def connectionLost(self, reason: Failure = connectionDone) -> None:
                lost.append(reason)

        link = tcp.Connection(pairs[0][0], Lost(), epollReactor)
        link.connected = True

        def received(data: bytes | memoryview) -> None:
            raise ZeroDivisionError("the application failed")

        assert readDirectly(link, received)
        plain = LoggedReader(pairs[1][0])
        epollReactor.addReader(link)
        epollReactor.addReader(plain)
        pairs[0][1].send(b"boom")
        pairs[1][1].send(b"p")
        epollReactor.doIteration(0)
        [reason] = lost
        assert reason.check(ZeroDivisionError)
        assert plain.systems == ["logged reader"]
        assert link.fileno() not in epollReactor._reads
    finally:
        globalLogPublisher.removeObserver(events.append)
        epollReactor.removeAll()
        for pair in pairs:
            for sock in pair:
                sock.close()
    # Logged by the reactor's dispatch, through the legacy log.err.
    assert any("the application failed" in str(e.get("failure")) for e in events)


def test_directDispatchEndsALinkWhosePeerEnded(epollReactor: Any) -> None:
    """
    A link whose peer ended its stream is disconnected as Twisted's
    dispatch disconnects it: its protocol learns of a clean end, and the reactor no
    longer watches it.
    """
    one, other = socket.socketpair()
    try:
        lost: list[Failure] = []

        class Lost(Protocol):
            def connectionLost(self, reason: Failure = connectionDone) -> None:
                lost.append(reason)

        link = tcp.Server(one, Lost(), ("", 0), None, 1, epollReactor)  # type: ignore[arg-type]
        received: list[bytes] = []
        assert readDirectly(link, lambda data: received.append(bytes(data)))
        epollReactor.addReader(link)
        other.send(b"last words")
        # Its end of the stream, and not yet of the socket: a read alone.
        other.shutdown(socket.SHUT_WR)
        for _ in range(5):
            epollReactor.doIteration(0)
        assert received == [b"last words"]
        [reason] = lost
        assert reason.check(ConnectionDone)
        assert link not in epollReactor.getReaders()
    finally:
        epollReactor.removeAll()
        one.close()
        other.close()


def test_directDispatchLeavesAReactorWithItsOwn(epollReactor: Any) -> None:
    """
    A reactor whose dispatch was replaced already (by the application, a
    test harness) keeps it.
    """

    def theirs(timeout: float | None) -> None:
        pass

    epollReactor.doIteration = theirs
    link = tcp.Connection(socket.socket(socket.AF_UNIX), Protocol(), epollReactor)
    try:
        assert readDirectly(link, lambda data: None)
        assert epollReactor.doIteration is theirs
    finally:
        link.socket.close()


@pytest_twisted.ensureDeferred
async def test_hostReadsTheHelloAsItAccepts(channelDirectory: str) -> None:
    """
    A client's hello leaves as its link connects, so the host, which reads a
    link as it accepts it, hands the first message to its application within
    the reactor's dispatch of the accept, not a turn later.
    """
    from twisted.internet import reactor

    inAccept = [False]
    whileAccepting: list[bool] = []

    class Host(Protocol):
        def dataReceived(self, data: bytes) -> None:
            whileAccepting.append(inAccept[0])

    endpoint = ChannelEndpoint(reactor, "accept", directory=channelDirectory)
    port = await endpoint.listen(Factory.forProtocol(Host))
    try:
        await port.whenHosting()  # type: ignore[attr-defined]
        listening = port._publication.listeningPort  # type: ignore[attr-defined]
        accept = listening.doRead

        def recordingAccept() -> object:
            inAccept[0] = True
            try:
                return accept()
            finally:
                inAccept[0] = False

        listening.doRead = recordingAccept
        # What the host arms on its clock (its links' deadlines).
        armed: list[object] = []

        class RecordingClock:
            def __getattr__(self, name: str) -> object:
                return getattr(reactor, name)

            def callLater(self, delay: float, f: Any, *a: Any, **kw: Any) -> Any:
                armed.append(f)
                return reactor.callLater(delay, f, *a, **kw)

        port.clock = RecordingClock()  # type: ignore[attr-defined]
        client = await endpoint.connect(Factory.forProtocol(Protocol))
        assert client.transport is not None
        client.transport.write(b"first")
        await _until(lambda: client.transport.acknowledgedThrough == 1)  # type: ignore[union-attr]
        assert whileAccepting == [True]
        # The hello was answered as the link was accepted: no handshake
        # deadline was armed (to be cancelled at once).
        [link] = port._term.allLinks  # type: ignore[attr-defined]
        assert link._deadline is None
        assert link._handshakeExpired not in armed
        client.transport.loseConnection()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_hostArmsTheDeadlineWhenTheHelloIsNotThere(
    channelDirectory: str,
) -> None:
    """
    A link accepted before its hello is there (here, a peer that connects
    and says nothing yet) has its handshake deadline armed; the hello that
    follows disarms it.
    """
    from twisted.internet import reactor

    endpoint = ChannelEndpoint(reactor, "silent", directory=channelDirectory)
    port = await endpoint.listen(Factory.forProtocol(Protocol))
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await port.whenHosting()  # type: ignore[attr-defined]
        peer.connect(endpoint.address)
        term = port._term  # type: ignore[attr-defined]
        await _until(lambda: len(term.allLinks) == 1)
        [link] = term.allLinks
        assert link._deadline is not None and link._deadline.active()
        deadline = link._deadline
        peer.sendall(
            _wire.encodeHello(_wire.Hello(os.urandom(16), os.getpid(), 1 << 20))
        )
        await _until(lambda: link.application is not None)
        assert link._deadline is None and not deadline.active()
    finally:
        peer.close()
        await port.stopListening()


# The probe of what the Twisted in use offers


def test_probeFindsEverythingOnThisTwisted() -> None:
    """
    Every Twisted CI runs on offers all the channel asks beyond Twisted's
    public interfaces: when a release renames or changes any of it, this
    fails, instead of the channel quietly going without.
    """
    found = probeTwisted()
    assert found.missing == ()
    assert found.bufferAccounting and found.sendImmediately
    assert found.unjoinedWrites
    assert found.adoptListeningSocket
    assert set(found.plainReads) == {tcp.Server.doRead, unix.Server.doRead}
    assert found.directDispatch
    assert found.unixTransportOver
    assert found.unixPortTemplate is not None
    assert found.directAccept
    assert twistedEdge() == found


def test_probeNamesAUnixTransportItCannotMake(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A Unix transport that cannot be made over a connected socket as
    C{adoptStreamConnection} makes it (here, one that keeps a socket of its
    own) turns that off, and only that.
    """
    original = unix.Server.__init__

    def init(self: Any, sock: socket.socket, *args: Any) -> None:
        original(self, sock.dup(), *args)

    monkeypatch.setattr(unix.Server, "__init__", init)
    found = probeTwisted()
    assert not found.unixTransportOver
    assert found.plainReads and found.bufferAccounting and found.directDispatch
    assert found.missing == ("unix.Server over a connected socket",)


def test_hostPortMadeWithoutTheConstructorIsTheSame(channelDirectory: str) -> None:
    """
    A host's Unix port, given its fields from the probe's template without
    running C{unix.Port}'s constructor, holds what the constructor would
    have left in it (a list of its own included), and is the channel's
    port (its C{socketPath}).  Without a reactor, the constructor runs and
    takes the global one.
    """
    from twisted.internet import reactor

    from twisted_channel._publishing import HostSocketPort

    path = os.fsencode(os.path.join(channelDirectory, "c.sock"))
    factory = Factory()
    ours = HostSocketPort(path, factory, backlog=128, mode=0o600, reactor=reactor)
    again = HostSocketPort(path, factory, backlog=128, mode=0o600, reactor=reactor)
    theirs = unix.Port(path, factory, 128, 0o600, reactor)
    assert twistedEdge().unixPortTemplate is not None
    assert ours.socketPath == path
    assert {k: v for k, v in vars(ours).items() if k != "socketPath"} == vars(theirs)
    assert ours._tempDataBuffer is not again._tempDataBuffer
    assert HostSocketPort(path, factory, 128, 0o600, None).reactor is reactor


def test_templateFollowsAConstructorThatLeavesMore(
    channelDirectory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A C{unix.Port} constructor that leaves more attributes (of values
    nobody changes in place, or its arguments under other names), as a
    Twisted release may, is followed: the host's ports get them too.
    """
    from twisted.internet import reactor

    from twisted_channel._publishing import HostSocketPort

    original = unix.Port.__init__

    def init(self: Any, fileName: bytes, factory: Any, *args: Any, **kw: Any) -> None:
        original(self, fileName, factory, *args, **kw)
        self.addedLater = "later"
        self.pathAgain = fileName

    monkeypatch.setattr(unix.Port, "__init__", init)
    found = probeTwisted()
    assert found.missing == ()
    assert found.unixPortTemplate is not None
    monkeypatch.setattr(_sockets, "_found", found)
    path = os.fsencode(os.path.join(channelDirectory, "c.sock"))
    port = HostSocketPort(path, Factory(), backlog=128, mode=0o600, reactor=reactor)
    assert port.addedLater == "later"  # type: ignore[attr-defined]
    assert port.pathAgain is path  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", ["changeable", "derived"])
def test_probeNamesAPortConstructorItCannotRepeat(
    channelDirectory: str, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """
    A C{unix.Port} constructor that leaves a value that could be changed in
    place (a template would share it between ports), or one it derives from
    an argument (a template would repeat the probe's), is named, only that
    is off, and the host's ports are then made by the constructor.
    """
    from twisted.internet import reactor

    from twisted_channel._publishing import HostSocketPort

    original = unix.Port.__init__

    def init(
        self: Any, fileName: bytes, factory: Any, backlog: int = 50, *a: Any, **kw: Any
    ) -> None:
        original(self, fileName, factory, backlog, *a, **kw)
        self.madeByTwisted = {} if kind == "changeable" else backlog + 1

    monkeypatch.setattr(unix.Port, "__init__", init)
    found = probeTwisted()
    assert found.missing == ("unix.Port's constructor's attributes",)
    assert found.unixPortTemplate is None and found.adoptListeningSocket
    monkeypatch.setattr(_sockets, "_found", found)
    path = os.fsencode(os.path.join(channelDirectory, "c.sock"))
    port = HostSocketPort(path, Factory(), backlog=128, mode=0o600, reactor=reactor)
    assert port.madeByTwisted == ({} if kind == "changeable" else 129)  # type: ignore[attr-defined]
    assert port.socketPath == path


def _withoutInstanceAttribute(
    monkeypatch: pytest.MonkeyPatch, cls: type, name: str
) -> None:
    """
    Make C{cls}'s instances lack C{name}, as if a Twisted release had
    renamed it.
    """
    original = cls.__init__  # type: ignore[misc]

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.__dict__.pop(name, None)

    monkeypatch.setattr(cls, "__init__", init)


@pytest.mark.parametrize(
    "lacking",
    [
        (abstract.FileDescriptor, "_tempDataLen", "FileDescriptor._tempDataLen"),
        (abstract.FileDescriptor, "offset", "FileDescriptor.offset"),
    ],
)
def test_probeNamesAMissingAttribute(
    lacking: tuple[type, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A private attribute that the Twisted in use lacks is named, and what
    depends on it is off.
    """
    cls, name, shown = lacking
    _withoutInstanceAttribute(monkeypatch, cls, name)
    if cls is abstract.FileDescriptor:
        # Nor a default on the class.
        monkeypatch.delattr(abstract.FileDescriptor, name, raising=False)
    found = probeTwisted()
    assert shown in found.missing
    assert not found.bufferAccounting and not found.sendImmediately
    assert found.adoptListeningSocket


#: What the probe calls a Unix port that does not accept once started on a
#: socket bound beforehand.
_STARTED_OTHERWISE = "unix.Port accepting on a socket it did not bind"


def _portsStartedOtherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Make Twisted's Unix ports accept only once started by their own
    C{startListening}, as if a release had its start prepare something
    more that accepting needs.
    """
    start = unix.Port.startListening
    accept = unix.Port.doRead

    def startListening(self: Any) -> None:
        start(self)
        self.preparedByTwisted = True

    def doRead(self: Any) -> None:
        if getattr(self, "preparedByTwisted", False):
            accept(self)

    monkeypatch.setattr(unix.Port, "startListening", startListening)
    monkeypatch.setattr(unix.Port, "doRead", doRead)


def test_probeFindsAPortThatDoesNotAcceptStartedOtherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    A Unix port that, started as the channel starts it on a socket bound
    beforehand, does not accept on it is named, and that is off; so is the
    channel's accept loop, which stands in for Twisted's, not for another.
    """
    _portsStartedOtherwise(monkeypatch)
    found = probeTwisted()
    assert found.missing == (_STARTED_OTHERWISE, _ACCEPT_LOOP)
    assert not found.adoptListeningSocket and not found.directAccept
    assert found.bufferAccounting and found.unixTransportOver


def test_portStartedOnABoundSocketAccepts(channelDirectory: str) -> None:
    """
    A port started on a socket bound and listening beforehand listens on
    that socket, as it is (no C{chmod} or C{listen} again), and accepts on
    it over a real connection.
    """
    from twisted.internet import reactor

    path = os.path.join(channelDirectory, "s.sock")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(path)
    os.chmod(path, 0o640)
    listening.listen(3)
    listening.setblocking(False)
    built: list[Protocol] = []

    class Keeping(Factory):
        noisy = False

        def buildProtocol(self, addr: Any) -> Protocol:
            built.append(Protocol())
            return built[-1]

    port = unix.Port(os.fsencode(path), Keeping(), reactor=reactor)
    try:
        assert _sockets.startListeningOn(port, listening)
        assert port.fileno() == listening.fileno()
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o640
        assert port in reactor.getReaders()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            port.doRead()
            [protocol] = built
            assert isinstance(protocol.transport, unix.Server)
            assert protocol.transport.connected
            protocol.transport.abortConnection()
    finally:
        port.stopReading()
        listening.close()


#: What the probe calls Twisted's accept loop when the channel's may not
#: stand in for it.
_ACCEPT_LOOP = "tcp.Port.doRead's accept loop, for Unix ports"


class _Noting(Factory):
    """
    Builds plain protocols, and notes the address each was built for and
    the legacy logging context's C{system} meanwhile; or raises, while
    C{failing}.
    """

    noisy = False

    def __init__(self) -> None:
        self.built: list[Protocol] = []
        self.addresses: list[object] = []
        self.systems: list[object] = []
        self.failing = False

    def buildProtocol(self, addr: Any) -> Protocol:
        if self.failing:
            raise ZeroDivisionError("the factory failed")
        self.addresses.append(addr)
        self.systems.append(context.get(log.ILogContext)["system"])
        self.built.append(Protocol())
        return self.built[-1]

    def close(self) -> None:
        for protocol in self.built:
            assert protocol.transport is not None
            protocol.transport.abortConnection()  # type: ignore[attr-defined]


@contextmanager
def _acceptingPort(
    directory: str, reactor: Any, sock: socket.socket | None = None
) -> Iterator[tuple[_sockets.LinkAcceptingPort, _Noting, str]]:
    """
    A channel's accepting port, started on a listening socket (C{sock} if
    given) at a path in C{directory}; its factory, and the path.
    """
    path = os.path.join(directory, "a.sock")
    listening = sock or socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(path)
    listening.listen(8)
    listening.setblocking(False)
    factory = _Noting()
    port = _sockets.LinkAcceptingPort(os.fsencode(path), factory, reactor=reactor)
    try:
        assert _sockets.startListeningOn(port, listening)
        yield port, factory, path
    finally:
        port.stopReading()
        factory.close()
        listening.close()


def test_portAcceptsWithTheChannelsLoop(
    channelDirectory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The channel's port accepts every link waiting, without Twisted's loop
    and without an address for its factory, each link the reactor's Unix
    transport over a non-blocking socket and numbered as Twisted numbers
    them; it then accepts as many at once as Twisted's loop would (as many
    as it found, or 20 more when it took all it could).
    """
    from twisted.internet import reactor

    twisteds: list[object] = []
    monkeypatch.setattr(tcp.Port, "doRead", twisteds.append)
    with _acceptingPort(channelDirectory, reactor) as (port, factory, path):
        clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
        try:
            for client in clients:
                client.connect(path)
            port.doRead()
            assert factory.addresses == [None] * 3
            transports = [protocol.transport for protocol in factory.built]
            assert [type(t) for t in transports] == [unix.Server] * 3
            assert [t.sessionno for t in transports] == [0, 1, 2]  # type: ignore[union-attr]
            assert all(t.connected for t in transports)  # type: ignore[union-attr]
            assert all(t.socket.gettimeout() == 0.0 for t in transports)  # type: ignore[union-attr]
            assert port.numberAccepts == 3
            # Nothing waits: nothing is made.
            port.doRead()
            assert len(factory.built) == 3 and port.numberAccepts == 1
            # As many as it may take: it takes 20 more the next time.
            for client in clients[:2]:
                client.close()
            clients[:2] = [socket.socket(socket.AF_UNIX) for _ in range(2)]
            for client in clients[:2]:
                client.connect(path)
            port.doRead()
            assert len(factory.built) == 4 and port.numberAccepts == 21
            port.doRead()
            assert len(factory.built) == 5
        finally:
            for client in clients:
                client.close()
    assert twisteds == []


class _AbortingOnce(socket.socket):
    """
    A listening socket whose first accept fails as one whose client gave
    up while queued does.
    """

    aborted = False

    def _accept(self) -> tuple[int, Any]:
        if not self.aborted:
            self.aborted = True
            raise ConnectionAbortedError(errno.ECONNABORTED, "aborted")
        return super()._accept()  # type: ignore[misc, no-any-return]


def test_portLeavesAnAcceptErrorToTwistedsLoop(channelDirectory: str) -> None:
    """
    An accept that fails otherwise than for want of a link is left to
    Twisted's loop, which meets what follows as it does: here the link
    after an aborted one is accepted by it (its factory given the
    address Twisted makes).  The aborted connection was used up by the
    failed accept, so Twisted's loop never meets it: its line, "Could not
    accept new connection (ECONNABORTED)", is written here, once.
    """
    from twisted.internet import reactor

    events: list[dict[str, Any]] = []
    sock = _AbortingOnce(socket.AF_UNIX, socket.SOCK_STREAM)
    globalLogPublisher.addObserver(events.append)
    try:
        with _acceptingPort(channelDirectory, reactor, sock) as (port, factory, path):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(path)
                port.doRead()
                assert sock.aborted
                [protocol] = factory.built
                [address] = factory.addresses
                assert isinstance(address, UNIXAddress)
                assert protocol.transport.connected  # type: ignore[union-attr]
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [
        formatEvent(event)
        for event in events
        if "Could not accept" in (event.get("log_format") or "")
    ]
    assert lines == ["Could not accept new connection (ECONNABORTED)"]


def test_portLogsWhatAcceptingRaisesAndGoesOn(channelDirectory: str) -> None:
    """
    What a link's making raises is logged, as Twisted's loop logs it, and
    the port goes on accepting.
    """
    from twisted.internet import reactor

    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        with _acceptingPort(channelDirectory, reactor) as (port, factory, path):
            with (
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first,
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as second,
            ):
                first.connect(path)
                factory.failing = True
                port.doRead()
                factory.failing = False
                second.connect(path)
                port.doRead()
                assert len(factory.built) == 1
                assert port in reactor.getReaders()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any("the factory failed" in str(e.get("failure")) for e in events)


def test_directDispatchAcceptsWithoutTheLoggingContext(
    epollReactor: Any, channelDirectory: str
) -> None:
    """
    Once the channel's port reads, the epoll reactor's dispatch is the
    channel's, and it hands the port's accepts over without the legacy
    logging context, as it does a link's reads.
    """
    with _acceptingPort(channelDirectory, epollReactor) as (port, factory, path):
        assert "doIteration" in vars(epollReactor)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            epollReactor.doIteration(0)
            assert factory.systems == ["-"]


def test_probeNamesAnAcceptLoopItDoesNotKnow(
    channelDirectory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Unix ports that make another transport than the one the channel's
    loop was found to make as Twisted's does turn that loop off, and only
    that: the channel's port then accepts through Twisted's loop, inside
    the logging context that names it.
    """
    from twisted.internet import reactor

    class Other(unix.Server):
        pass

    monkeypatch.setattr(unix.Port, "transport", Other)
    found = probeTwisted()
    assert found.missing == (_ACCEPT_LOOP,)
    assert not found.directAccept and found.adoptListeningSocket
    monkeypatch.setattr(_sockets, "_found", found)
    with _acceptingPort(channelDirectory, reactor) as (port, factory, path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            port.doRead()
            [address] = factory.addresses
            assert isinstance(address, UNIXAddress)
            assert isinstance(factory.built[0].transport, Other)
            assert factory.systems == [port.logPrefix()]


_DISPATCH = (
    "EPollReactor.doIteration/_poller/_selectables/_doReadOrWrite/_disconnectSelectable"
)


def test_probeNamesADispatchItDoesNotKnow(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    An epoll reactor whose dispatch is not the one the channel's stands in
    for turns direct dispatch off, and only that; links still read
    directly, through the reactor's own dispatch.
    """

    def doIteration(self: Any, timeout: float | None) -> None:
        pass

    monkeypatch.setattr(EPollReactor, "doIteration", doIteration)
    found = probeTwisted()
    assert not found.directDispatch
    assert found.plainReads and found.bufferAccounting
    assert _DISPATCH in found.missing


def test_probeNamesADispatchOutsideItsContext(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A dispatch with the expected names that does not read a descriptor
    inside the logging context that names it is found out too.
    """

    def callWithLogger(logger: Any, func: Any, *args: Any) -> Any:
        return func(*args)

    monkeypatch.setattr(log, "callWithLogger", callWithLogger)
    found = probeTwisted()
    assert not found.directDispatch
    assert _DISPATCH in found.missing


def test_probeNamesAReadItDoesNotKnow(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A transport whose read is not the plain one L{readDirectly} stands in
    for (here, Unix sockets') turns reading directly off.
    """

    def doRead(self: Any) -> None:
        pass

    monkeypatch.setattr(unix.Server, "doRead", doRead)
    found = probeTwisted()
    assert found.plainReads == ()
    assert "twisted.internet.unix.Server.doRead" in found.missing


def test_probeNamesBufferCountsThatDoNotAddUp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Attributes with the expected names but another meaning (here, writes
    that are not counted where the probe looks) are found out too.
    """
    write = abstract.FileDescriptor.write

    def uncounted(self: Any, data: bytes) -> None:
        write(self, data)
        self._tempDataLen = 0

    monkeypatch.setattr(abstract.FileDescriptor, "write", uncounted)
    found = probeTwisted()
    assert not found.bufferAccounting
    assert "FileDescriptor.dataBuffer/offset/_tempDataLen counts" in found.missing


def test_probeNamesAWriteItDoesNotKnow(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A transport whose C{doWrite} is not Twisted's own turns sending
    unjoined off, and only that.
    """

    def doWrite(self: Any) -> None:
        pass

    monkeypatch.setattr(tcp.Server, "doWrite", doWrite)
    found = probeTwisted()
    assert not found.unjoinedWrites
    assert found.bufferAccounting and found.sendImmediately
    assert "twisted.internet.tcp.Server.doWrite" in found.missing


def test_probeNamesUnjoinedWritesThatLoseData(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    A buffer whose pieces are not where sending unjoined takes them (here,
    a C{writeSequence} that keeps them elsewhere) is found out.
    """

    def writeSequence(self: Any, pieces: list[bytes]) -> None:
        self.dataBuffer = self.dataBuffer[self.offset :] + b"".join(pieces)
        self.offset = 0
        self.startWriting()

    monkeypatch.setattr(abstract.FileDescriptor, "writeSequence", writeSequence)
    found = probeTwisted()
    assert not found.unjoinedWrites
    assert "FileDescriptor.doWrite of a buffer sent unjoined" in found.missing


def _lacking(monkeypatch: pytest.MonkeyPatch) -> TwistedEdge:
    """
    Have the channel find, at its next probe, a Twisted without anything
    it asks beyond the public interfaces.
    """
    lacking = TwistedEdge(
        bufferAccounting=False,
        sendImmediately=False,
        unjoinedWrites=False,
        plainReads=(),
        adoptListeningSocket=False,
        directDispatch=False,
        missing=("FileDescriptor._tempDataLen", _STARTED_OTHERWISE),
    )
    monkeypatch.setattr(_sockets, "_found", None)
    monkeypatch.setattr(_sockets, "probeTwisted", lambda: lacking)
    return lacking


def test_oneWarningNamesWhatIsMissing(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    What the Twisted in use lacks is named in one warning, however often
    the channel asks.
    """
    _lacking(monkeypatch)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(3):
            assert twistedEdge().missing
    finally:
        globalLogPublisher.removeObserver(events.append)
    [warning] = [e for e in events if e["log_namespace"] == _sockets.__name__]
    assert warning["log_level"] is LogLevel.warn
    text = formatEvent(warning)
    assert "FileDescriptor._tempDataLen" in text
    assert _STARTED_OTHERWISE in text


def test_withoutTheProbedMeansTransportsAreUsedPublicly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    On a Twisted that lacks what the probe looks for, a socket transport
    is written to, and reads, through its public interface only.
    """
    _lacking(monkeypatch)
    written: list[bytes] = []
    with _sockets._probeConnection() as (connection, _):
        connection.write = written.append  # type: ignore[method-assign]
        sendNow(connection, b"hello")
        assert written == [b"hello"]
        assert bufferedBytes(connection) == 0
        assert not readDirectly(connection, lambda data: None)
        assert "doRead" not in vars(connection)
        assert not writeUnjoined(connection)
        assert "doWrite" not in vars(connection)


@pytest.mark.parametrize("probed", ["lacking", "renamed"])
@pytest_twisted.ensureDeferred
async def test_hostWithoutAdoptingBindsInPlaceAndCleansUp(
    probed: str, channelDirectory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Where a Unix listening port cannot adopt a socket bound beforehand
    (the probe said so, or really found it so), the host binds its socket
    in place: clients reach it, and stopping removes the file and closes
    the socket, over real sockets.
    """
    from twisted.internet import reactor

    if probed == "lacking":
        _lacking(monkeypatch)
    else:
        monkeypatch.setattr(_sockets, "_found", None)
        _portsStartedOtherwise(monkeypatch)
    received: list[bytes] = []

    class Upper(Protocol):
        def dataReceived(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.write(data.upper())

    class Client(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    endpoint = ChannelEndpoint(reactor, "edge", directory=channelDirectory)
    port = await endpoint.listen(Factory.forProtocol(Upper))
    try:
        await port.whenHosting()  # type: ignore[attr-defined]
        assert not twistedEdge().adoptListeningSocket
        hostPort = port._publication.listeningPort  # type: ignore[attr-defined]
        listening = hostPort.socket
        info = os.lstat(port.getHost().path)
        assert hostPort._identity == (info.st_dev, info.st_ino)
        client = await endpoint.connect(Factory.forProtocol(Client))
        assert client.transport is not None
        client.transport.write(b"hello")
        await _until(lambda: received == [b"HELLO"])
        client.transport.loseConnection()
    finally:
        await port.stopListening()
    assert listening.fileno() == -1
    assert not os.path.exists(port.getHost().path)
    assert sorted(os.listdir(channelDirectory)) == ["edge.lock"]
