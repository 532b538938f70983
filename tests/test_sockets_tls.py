"""
What the channel asks of a link's transport under TLS, over real mutual
TLS on loopback: the socket's transport is found under the layers; a write
of several chunks leaves in the same call (nothing left buffered, no
watch for writability); a write larger
than the kernel takes is kept and arrives whole and in order; reads take
up to 256 KiB at once; once the handshake is done, reads are decrypted
into one buffer and handed on together, and the records of a write are
taken out of the TLS layer together, into one buffer; Twisted's own
handling of the end of TLS and of an abort still holds.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel

from twisted_channel._certs import makeCertificates
from twisted_channel._sockets import (
    _KEPT_PIECE,
    _TLS_READ,
    READ_BUFFER_SIZE,
    _EagerWrite,
    _TLSFlush,
    bufferedBytes,
    probeTLS,
    readDirectly,
    readInLargePieces,
    sendNow,
    sendSequenceNow,
    socketTransport,
    writeEagerly,
)
from twisted_channel._tls import (
    VerifiedTLSFactory,
    loadCredentials,
    tlsFactory,
)

pytestmark = pytest.mark.timeout(60)


class Collector(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.count = 0
        self.made: Deferred[Collector] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(bytes(data))
        self.count += len(data)


async def _pair(
    directory: str, serverOptions: Any = None
) -> tuple[Collector, Collector, list[Any]]:
    """
    A verified mutual-TLS connection over loopback: the client's protocol
    and the server's.

    @param serverOptions: the server's TLS options, if not machine C{a}'s
        own.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

    def credentials(host: str) -> Any:
        return loadCredentials(
            os.path.join(directory, host + ".pem"),
            os.path.join(directory, host + ".key"),
            os.path.join(directory, "ca.pem"),
        )

    server = Collector()
    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        tlsFactory(
            serverOptions or credentials("a").serverOptions(),
            False,
            VerifiedTLSFactory(reactor, Factory.forProtocol(lambda: server)),
        )
    )
    client = Collector()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", listening.getHost().port).connect(
        tlsFactory(
            credentials("b").clientOptions("a"),
            True,
            VerifiedTLSFactory(
                reactor, Factory.forProtocol(lambda: client), expectedIdentity="a"
            ),
        )
    )
    await client.made
    await server.made
    return client, server, [listening]


async def _until(check: Any) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(1000):
        if check():
            return
        await deferLater(reactor, 0.01)  # type: ignore[arg-type]
    raise AssertionError("timed out")


@pytest_twisted.ensureDeferred
async def test_eagerWritesUnderTLS(tmp_path: Any) -> None:
    """
    Under TLS, with the socket's transport writing eagerly, a write of
    several chunks (two TLS records) leaves within the call: the
    socket's transport holds nothing after it and never asked the reactor
    to watch for writability; a write of more than the kernel takes is
    kept by the transport and arrives whole, in order, after what came
    before.
    """
    from twisted.internet import reactor

    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    transport = client.transport
    sock: Any = socketTransport(transport)
    try:
        assert sock is not transport and sock.getHandle() is not None
        assert writeEagerly(sock)
        assert isinstance(vars(sock)["write"], _EagerWrite)
        assert readInLargePieces(transport) and sock.bufferSize == READ_BUFFER_SIZE
        sendSequenceNow(transport, [b"one", b"two" * 10_000, b"three"])
        assert bufferedBytes(transport) == 0
        assert sock not in reactor.getWriters()
        sendNow(transport, b"four")
        assert bufferedBytes(transport) == 0
        expected = b"one" + b"two" * 10_000 + b"three" + b"four"
        await _until(lambda: server.count == len(expected))
        assert b"".join(server.received) == expected

        # More than the kernel takes at once: the rest waits in the
        # transport, which the reactor then sends, in order.
        large = os.urandom(8 * 1024 * 1024)
        sendSequenceNow(transport, [b"head", large])
        sendNow(transport, b"tail")
        total = len(expected) + 4 + len(large) + 4
        await _until(lambda: server.count == total)
        assert b"".join(server.received)[len(expected) :] == b"head" + large + b"tail"
    finally:
        transport.loseConnection()  # type: ignore[union-attr]
        for port in ports:
            await port.stopListening()


def test_socketTransportOfAPlainTransport() -> None:
    """
    A transport with no layers is its own socket's transport; one that is
    not Twisted's socket transport neither reads in large pieces nor
    writes eagerly.
    """
    from twisted.internet.testing import StringTransport

    plain = StringTransport()
    assert socketTransport(plain) is plain
    assert not readInLargePieces(plain)
    assert not writeEagerly(plain)


@pytest_twisted.ensureDeferred
async def test_goneLinkHoldsNothing(tmp_path: Any) -> None:
    """
    Under TLS, what the socket's transport held when its connection ended
    is not counted as held (the host's budget forgets such a link: the TLS
    layer and the verification above it stay "connected").
    """
    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    transport: Any = client.transport
    lost: Deferred[None] = Deferred()
    client.connectionLost = lambda reason: lost.callback(None)  # type: ignore[method-assign,assignment]
    try:
        server.transport.pauseProducing()  # type: ignore[union-attr]
        for _ in range(64):
            sendNow(transport, os.urandom(1024 * 1024))
        assert bufferedBytes(transport) > 0
        transport.abortConnection()
        await lost
        assert bufferedBytes(transport) == 0
    finally:
        for port in ports:
            await port.stopListening()


def test_probeTLSFindsAll() -> None:
    """
    With the pyOpenSSL and Twisted in use, the probe finds what reads
    through TLS and the flush of a write's records need.
    """
    edge = probeTLS()
    assert edge.missing == ()
    assert edge.read is not None and edge.bioRead is not None


def test_probeTLSNamesWhatIsLacking(monkeypatch: Any) -> None:
    """
    A pyOpenSSL whose bindings lack a function the reads and writes call
    straight (here C{ERR_peek_error}, with which a read's error is found
    on OpenSSL's queue) is named by the probe, which offers none of them:
    links go through Twisted's TLS layer as it is.
    """
    from OpenSSL import SSL

    bindings = SSL._lib  # type: ignore[attr-defined]

    class Lacking:
        def __getattr__(self, name: str) -> Any:
            if name == "ERR_peek_error":
                raise AttributeError(name)
            return getattr(bindings, name)

    monkeypatch.setattr(SSL, "_lib", Lacking())
    edge = probeTLS()
    assert edge.missing == ("OpenSSL.SSL._lib.ERR_peek_error",)
    assert edge.read is edge.write is edge.bioRead is edge.errorQueued is None


@pytest_twisted.ensureDeferred
async def test_readThroughTLS(tmp_path: Any) -> None:
    """
    Once the handshake is done, a transport under TLS reads directly: what
    the peer sends (large writes and small ones, written eagerly) arrives
    whole and in order, several records handed on together; the peer's
    close (its close_notify) ends the connection cleanly, as Twisted's
    TLS layer ends it.
    """
    from twisted.internet.error import ConnectionDone

    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    clientTransport: Any = client.transport
    serverSocket: Any = socketTransport(server.transport)
    lost: Deferred[Any] = Deferred()
    server.connectionLost = lambda reason: lost.callback([reason])  # type: ignore[method-assign,assignment]
    try:
        assert readDirectly(server.transport, server.dataReceived)
        assert serverSocket.doRead.__code__ is _TLS_READ
        assert writeEagerly(clientTransport)
        assert isinstance(vars(clientTransport.transport)["_flushSendBIO"], _TLSFlush)
        chunks = [os.urandom(n) for n in (1, 100, 70_000, 3, 1 << 20, 16_384, 5)]
        for chunk in chunks:
            sendNow(clientTransport, chunk)
        large = os.urandom(8 * 1024 * 1024)
        sendSequenceNow(clientTransport, [b"head", large, b"tail"])
        expected = b"".join(chunks) + b"head" + large + b"tail"
        await _until(lambda: server.count == len(expected))
        assert b"".join(server.received) == expected
        # Records of one read are handed on together, not one at a time.
        assert len(server.received) < len(expected) // (16 * 1024)
        clientTransport.loseConnection()
        [reason] = await lost
        assert reason.check(ConnectionDone)
        assert server.count == len(expected)
    finally:
        for port in ports:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_abortWhileReadingThroughTLS(tmp_path: Any) -> None:
    """
    A protocol that aborts its connection while a direct read under TLS
    hands it data is handed nothing more, and loses its connection.
    """
    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    clientTransport: Any = client.transport
    lost: Deferred[Any] = Deferred()
    server.connectionLost = lambda reason: lost.callback(None)  # type: ignore[method-assign,assignment]
    handed: list[int] = []

    def abortOnFirst(data: bytes | memoryview) -> None:
        handed.append(len(data))
        server.transport.abortConnection()  # type: ignore[union-attr]

    try:
        assert readDirectly(server.transport, abortOnFirst)
        sendNow(clientTransport, os.urandom(4 * 1024 * 1024))
        await lost
        assert len(handed) == 1
    finally:
        clientTransport.abortConnection()
        for port in ports:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_recordsKeptInPieces(tmp_path: Any) -> None:
    """
    Under TLS, with the records of a write taken out of the TLS layer
    together, what the kernel does not take is kept in pieces of at most
    L{_KEPT_PIECE} bytes (each a copy, the buffer being reused), and
    arrives whole and in order after what came before.
    """
    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    transport: Any = client.transport
    sock: Any = socketTransport(transport)
    try:
        assert writeEagerly(transport)
        server.transport.pauseProducing()  # type: ignore[union-attr]
        large = os.urandom(4 * 1024 * 1024)
        sendSequenceNow(transport, [b"head", large])
        assert bufferedBytes(transport) > 0
        kept = [len(piece) for piece in sock._tempDataBuffer]
        assert kept and max(kept) <= _KEPT_PIECE
        sendNow(transport, b"tail")
        server.transport.resumeProducing()  # type: ignore[union-attr]
        await _until(lambda: server.count == len(large) + 8)
        assert b"".join(server.received) == b"head" + large + b"tail"
    finally:
        transport.loseConnection()
        for port in ports:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_smallBuffersUnderTLS(tmp_path: Any, monkeypatch: Any) -> None:
    """
    With a plaintext buffer and a records buffer smaller than a TLS record,
    a read under TLS is decrypted in as many pieces as it takes, each
    handed on when the buffer is full, and a write's records are taken out
    of the TLS layer in as many pieces: everything arrives whole and in
    order.
    """
    from OpenSSL import SSL

    from twisted_channel import _sockets

    def small(size: int) -> tuple[memoryview, Any]:
        buffer = bytearray(size)
        return memoryview(buffer), SSL._ffi.from_buffer(buffer)  # type: ignore[attr-defined]

    monkeypatch.setattr(_sockets, "_plainBuffer", small(1000))
    monkeypatch.setattr(_sockets, "_recordsBuffer", small(5000))
    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    transport: Any = client.transport
    try:
        assert readDirectly(server.transport, server.dataReceived)
        assert writeEagerly(transport)
        chunks = [os.urandom(n) for n in (10, 40_000, 999, 1000, 1001, 300_000)]
        sendSequenceNow(transport, chunks)
        expected = b"".join(chunks)
        await _until(lambda: server.count == len(expected))
        assert b"".join(server.received) == expected
        assert max(len(piece) for piece in server.received) <= 1000
    finally:
        transport.loseConnection()
        for port in ports:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_refusedRecordsGoThroughTheLayer(tmp_path: Any) -> None:
    """
    When C{SSL_write}, called straight by L{writeRecords}, refuses, what is
    left of the write goes through the TLS layer's own C{write}: everything
    arrives whole and in order.
    """
    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    transport: Any = client.transport
    try:
        assert writeEagerly(transport)
        flush = vars(transport.transport)["_flushSendBIO"]
        sslWrite = flush.sslWrite
        calls: list[int] = []

        def refuseThird(ssl: Any, pointer: Any, length: int) -> int:
            calls.append(length)
            return -1 if len(calls) == 3 else int(sslWrite(ssl, pointer, length))

        flush.sslWrite = refuseThird
        chunks = [os.urandom(n) for n in (100, 70_000, 5, 50_000, 7)]
        sendSequenceNow(transport, chunks)
        sendNow(transport, b"after")
        expected = b"".join(chunks) + b"after"
        await _until(lambda: server.count == len(expected))
        assert b"".join(server.received) == expected
        assert len(calls) > 3
    finally:
        transport.loseConnection()
        for port in ports:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_writeWhilePausedUnderTLS(tmp_path: Any) -> None:
    """
    A producer that writes when the transport pauses it (as the transport
    keeps what the kernel did not take of a write's records) has what it
    writes arrive after the whole of that write.
    """
    from twisted.internet.interfaces import IPushProducer
    from zope.interface import implementer

    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    transport: Any = client.transport

    @implementer(IPushProducer)
    class WritesWhenPaused:
        paused = 0

        def pauseProducing(self) -> None:
            self.paused += 1
            sendNow(transport, b"paused")

        def resumeProducing(self) -> None:
            pass

        def stopProducing(self) -> None:
            pass

    producer = WritesWhenPaused()
    try:
        assert writeEagerly(transport)
        transport.registerProducer(producer, True)
        server.transport.pauseProducing()  # type: ignore[union-attr]
        large = os.urandom(8 * 1024 * 1024)
        sendSequenceNow(transport, [b"head", large])
        assert producer.paused
        server.transport.resumeProducing()  # type: ignore[union-attr]
        expected = b"head" + large + b"paused" * producer.paused
        await _until(lambda: server.count == len(expected))
        assert b"".join(server.received) == expected
    finally:
        transport.unregisterProducer()
        transport.loseConnection()
        for port in ports:
            await port.stopListening()


def _abortUnlessLost(transport: Any) -> None:
    """
    Abort C{transport}'s connection, unless its TLS layer has already ended
    (after which Twisted's abort would fail).
    """
    from twisted_channel._sockets import _tlsLayer

    if _tlsLayer(transport)._tlsConnection is not None:
        transport.abortConnection()


def _corruptedAfter(transport: Any, good: bytes, bad: bytes) -> bytes:
    """
    What the TLS layer under C{transport} makes of C{good} and of C{bad},
    each its own record, with a byte of C{bad}'s record's ciphertext
    flipped: the peer decrypts the first and fails on the second.
    """
    from twisted_channel._sockets import _tlsLayer

    connection = _tlsLayer(transport)._tlsConnection
    connection.send(good)
    first = connection.bio_read(1 << 16)
    connection.send(bad)
    second = bytearray(connection.bio_read(1 << 16))
    second[len(second) // 2] ^= 0xFF
    return first + bytes(second)


@pytest.mark.parametrize("reaction", ["dial", "reply"])
@pytest_twisted.ensureDeferred
async def test_corruptedRecordLeavesNoErrorBehind(tmp_path: Any, reaction: str) -> None:
    """
    A verified peer whose records, in one read, are a good one and then a
    corrupted one: the good one's plaintext is handed on, and what runs then finds
    OpenSSL's error queue (one per thread, shared by every connection)
    empty, not holding the corrupted record's error; what it does there
    does not take that error from the bad link, which is closed with it
    (bad record MAC, not a connection lost for no said reason): here the
    first handshake step of a new TLS connection, as a link dialling
    another machine takes, which clears the queue, or a reply on the bad
    link itself, as a link's acknowledgement, which cannot be encrypted
    any more.  The end is logged, naming the peer and the error.  Another
    link of the same process, reading directly too, loses nothing.
    """
    from OpenSSL import SSL
    from twisted.logger import globalLogPublisher

    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    otherClient, otherServer, otherPorts = await _pair(str(tmp_path))
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    lost: Deferred[Any] = Deferred()
    server.connectionLost = lambda reason: lost.callback([reason])  # type: ignore[method-assign,assignment]
    queued: list[int] = []

    def react(data: bytes | memoryview) -> None:
        server.dataReceived(data)  # type: ignore[arg-type]
        queued.append(SSL._lib.ERR_peek_error())  # type: ignore[attr-defined]
        if reaction == "reply":
            sendNow(server.transport, b"ack")
            return
        fresh = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
        fresh.set_connect_state()
        with pytest.raises(SSL.WantReadError):
            fresh.do_handshake()

    try:
        assert readDirectly(server.transport, react)
        assert writeEagerly(server.transport)
        assert readDirectly(otherServer.transport, otherServer.dataReceived)
        raw = _corruptedAfter(client.transport, b"good", b"bad" * 100)
        socketTransport(client.transport).write(raw)  # type: ignore[attr-defined]
        [reason] = await lost
        assert b"".join(server.received) == b"good"
        assert queued == [0]
        assert reason.check(SSL.Error), reason
        assert SSL._lib.ERR_peek_error() == 0  # type: ignore[attr-defined]
        [warned] = [e for e in logged if e.get("log_level") == LogLevel.warn]
        assert warned["peer"].identity == "b"
        assert warned["reason"] == reason.getErrorMessage()
        large = os.urandom(2 * 1024 * 1024)
        sendNow(otherClient.transport, large)
        await _until(lambda: otherServer.count == len(large))
        assert b"".join(otherServer.received) == large
    finally:
        globalLogPublisher.removeObserver(logged.append)
        _abortUnlessLost(client.transport)
        otherClient.transport.loseConnection()  # type: ignore[union-attr]
        for port in ports + otherPorts:
            await port.stopListening()


@pytest.mark.parametrize("truncated", [False, True])
@pytest_twisted.ensureDeferred
async def test_closeNotifyWithTheLastRecords(tmp_path: Any, truncated: bool) -> None:
    """
    The peer's last records and its close_notify in one read: the records'
    plaintext is handed on, then the connection ends cleanly; the peer's
    TCP close in the middle of a record ends it otherwise (a truncation is
    not a clean end), after what came whole before it.
    """
    from twisted.internet.error import ConnectionDone

    from twisted_channel._sockets import _tlsLayer

    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    lost: Deferred[Any] = Deferred()
    server.connectionLost = lambda reason: lost.callback([reason])  # type: ignore[method-assign,assignment]
    try:
        assert readDirectly(server.transport, server.dataReceived)
        connection = _tlsLayer(client.transport)._tlsConnection
        last = os.urandom(40_000)
        connection.send(last[:16384])
        connection.send(last[16384:32768])
        connection.send(last[32768:])
        raw = connection.bio_read(1 << 17)
        if truncated:
            raw = raw[:-100]
        else:
            connection.shutdown()
            raw += connection.bio_read(1 << 16)
        sock: Any = socketTransport(client.transport)
        sock.socket.sendall(raw)
        sock.socket.shutdown(2)
        [reason] = await lost
        assert b"".join(server.received) == (last[:32768] if truncated else last)
        assert bool(reason.check(ConnectionDone)) is not truncated, reason
    finally:
        _abortUnlessLost(client.transport)
        for port in ports:
            await port.stopListening()


@pytest.mark.parametrize("closing", [True, False])
@pytest_twisted.ensureDeferred
async def test_closeOrPauseWithinARead(
    tmp_path: Any, monkeypatch: Any, closing: bool
) -> None:
    """
    A protocol handed the records of one read in several pieces (a
    plaintext buffer smaller than they are) that closes its connection, or
    pauses its transport, at the first piece: as under Twisted's own reads,
    it is handed the rest of what was read, in order; closed, the
    connection then ends cleanly on both sides; paused, then resumed,
    everything arrives, whole and in order.
    """
    from OpenSSL import SSL
    from twisted.internet.error import ConnectionDone

    from twisted_channel import _sockets

    buffer = bytearray(1000)
    monkeypatch.setattr(
        _sockets,
        "_plainBuffer",
        (memoryview(buffer), SSL._ffi.from_buffer(buffer)),  # type: ignore[attr-defined]
    )
    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    lost: Deferred[Any] = Deferred()
    clientLost: Deferred[Any] = Deferred()
    server.connectionLost = lambda reason: lost.callback([reason])  # type: ignore[method-assign,assignment]
    client.connectionLost = lambda reason: clientLost.callback([reason])  # type: ignore[method-assign,assignment]
    pieces: list[int] = []

    def handOn(data: bytes | memoryview) -> None:
        pieces.append(len(data))
        server.dataReceived(data)  # type: ignore[arg-type]
        if len(pieces) == 1:
            if closing:
                server.transport.loseConnection()  # type: ignore[union-attr]
            else:
                server.transport.pauseProducing()  # type: ignore[union-attr]

    try:
        assert readDirectly(server.transport, handOn)
        sent = os.urandom(40_000)
        sendNow(client.transport, sent)
        if closing:
            [reason] = await lost
            [clientReason] = await clientLost
            assert reason.check(ConnectionDone), reason
            assert clientReason.check(ConnectionDone), clientReason
        else:
            await _until(lambda: len(pieces) > 1)
            server.transport.resumeProducing()  # type: ignore[union-attr]
        await _until(lambda: server.count == len(sent))
        assert b"".join(server.received) == sent
        assert len(pieces) > 1
    finally:
        _abortUnlessLost(client.transport)
        for port in ports:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_withoutTheTLSEdge(tmp_path: Any, monkeypatch: Any) -> None:
    """
    Where the probe found something lacking (here, as it reports a
    pyOpenSSL without C{SSL_read}), links under TLS read and write through
    Twisted's TLS layer as it is: no direct reads, no records taken out by
    L{_TLSFlush}; writes of any size, both ways, arrive whole and in order,
    and the end of TLS is clean.
    """
    from twisted.internet.error import ConnectionDone

    from twisted_channel import _sockets
    from twisted_channel._sockets import TLSEdge

    monkeypatch.setattr(
        _sockets,
        "_tlsFound",
        TLSEdge(None, None, None, 0, ("OpenSSL.SSL._lib.SSL_read",)),
    )
    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    lost: Deferred[Any] = Deferred()
    server.connectionLost = lambda reason: lost.callback([reason])  # type: ignore[method-assign,assignment]
    try:
        assert not readDirectly(server.transport, server.dataReceived)
        assert not readDirectly(client.transport, client.dataReceived)
        assert writeEagerly(client.transport) and writeEagerly(server.transport)
        for transport in (client.transport, server.transport):
            assert "_flushSendBIO" not in vars(_sockets._tlsLayer(transport))
        chunks = [os.urandom(n) for n in (1, 70_000, 3, 1 << 20, 5)]
        for chunk in chunks:
            sendNow(client.transport, chunk)
        sendSequenceNow(client.transport, chunks)
        sendSequenceNow(server.transport, chunks)
        expected = b"".join(chunks) * 2
        await _until(lambda: server.count == len(expected))
        await _until(lambda: client.count == len(expected) // 2)
        assert b"".join(server.received) == expected
        assert b"".join(client.received) == expected[: len(expected) // 2]
        client.transport.loseConnection()  # type: ignore[union-attr]
        [reason] = await lost
        assert reason.check(ConnectionDone), reason
    finally:
        for port in ports:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_postHandshakeRecordsReadDirectly(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """
    Links that read directly from their C{connectionMade} on (as a link
    between machines does) take the records a TLS 1.3 server sends once
    the client's handshake is done (its session tickets, which carry no
    application data) through C{SSL_read} straight, which asks for more;
    what is written afterwards, both ways, arrives whole.
    """
    import dataclasses

    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from twisted_channel import _sockets
    from twisted_channel._sockets import tlsEdge

    edge = tlsEdge()
    reads: list[tuple[int, int]] = []

    def read(ssl: Any, pointer: Any, size: int) -> int:
        got = int(edge.read(ssl, pointer, size))
        reads.append((got, edge.getError(ssl, got)))
        return got

    monkeypatch.setattr(_sockets, "_tlsFound", dataclasses.replace(edge, read=read))
    made = Collector.connectionMade

    def readingDirectly(self: Collector) -> None:
        assert readDirectly(self.transport, self.dataReceived)
        made(self)

    monkeypatch.setattr(Collector, "connectionMade", readingDirectly)
    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    try:
        await _until(lambda: reads)
        await deferLater(reactor, 0.05)  # type: ignore[arg-type]
        assert reads and all(got < 0 for got, _ in reads), reads
        assert {error for _, error in reads} == {edge.wantRead}
        large = os.urandom(1 << 20)
        sendNow(server.transport, large)
        sendNow(client.transport, large[::-1])
        await _until(lambda: client.count == server.count == len(large))
        assert b"".join(client.received) == large
        assert b"".join(server.received) == large[::-1]
    finally:
        client.transport.loseConnection()  # type: ignore[union-attr]
        for port in ports:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_replyWithinARead(tmp_path: Any) -> None:
    """
    A protocol that writes (an acknowledgement, a reply) while a direct
    read under TLS hands it data, which calls C{SSL_write} between the
    read's last C{SSL_read} and the question of what ended it: the read is
    still found to have ended for want of more records, so the TLS layer's
    own read (a 32 KiB buffer, an exception) is not called for it, and
    every reply arrives.
    """
    from twisted_channel._sockets import _tlsLayer

    makeCertificates(str(tmp_path), ["a", "b"])
    client, server, ports = await _pair(str(tmp_path))
    layer = _tlsLayer(server.transport)
    layerReads: list[None] = []
    ownRead = layer._flushReceiveBIO

    def counted() -> None:
        layerReads.append(None)
        ownRead()

    layer._flushReceiveBIO = counted

    def reply(data: bytes | memoryview) -> None:
        server.dataReceived(data)  # type: ignore[arg-type]
        sendNow(server.transport, b"ack")

    try:
        assert readDirectly(server.transport, reply)
        assert writeEagerly(server.transport)
        for count in range(1, 22):
            sendNow(client.transport, b"request")
            await _until(lambda: client.count == 3 * count)  # noqa: B023
            if count == 1:
                # The read that ended the handshake, in which _pair's
                # connectionMade ran, went on in the layer's own read.
                layerReads.clear()
        assert server.count == 21 * len(b"request")
        assert layerReads == []
    finally:
        client.transport.loseConnection()  # type: ignore[union-attr]
        for port in ports:
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_renegotiationWhileReadingDirectly(tmp_path: Any) -> None:
    """
    Over TLS 1.2 (a peer may cap its version there), a renegotiation the
    host starts while both ends read and write directly (its records read
    by C{SSL_read} straight, which asks for more and leaves the answer to
    be sent; writes made meanwhile) completes, and the streams both ways
    go on whole.  (TLS 1.3's KeyUpdate cannot be driven: pyOpenSSL's
    bindings lack C{SSL_key_update}.)
    """
    from twisted.internet.ssl import CertificateOptions, TLSVersion

    from twisted_channel._sockets import _tlsLayer

    makeCertificates(str(tmp_path), ["a", "b"])
    a = loadCredentials(
        *(os.path.join(str(tmp_path), name) for name in ("a.pem", "a.key", "ca.pem"))
    )
    options = CertificateOptions(
        privateKey=a.certificate.privateKey.original,
        certificate=a.certificate.original,
        verify=True,
        caCerts=[authority.original for authority in a.authorities],
        requireCertificate=True,
        raiseMinimumTo=TLSVersion.TLSv1_2,
        lowerMaximumSecurityTo=TLSVersion.TLSv1_2,
    )
    client, server, ports = await _pair(str(tmp_path), options)
    host = _tlsLayer(server.transport)
    try:
        assert host._tlsConnection.get_protocol_version_name() == "TLSv1.2"
        for side in (client, server):
            assert readDirectly(side.transport, side.dataReceived)
            assert writeEagerly(side.transport)
        assert host._tlsConnection.renegotiate()
        host._flushSendBIO()
        toClient, toServer = os.urandom(1 << 20), os.urandom(1 << 20)
        for start in range(0, 1 << 20, 1 << 18):
            sendNow(server.transport, toClient[start : start + (1 << 18)])
            sendNow(client.transport, toServer[start : start + (1 << 18)])
        await _until(lambda: client.count == server.count == 1 << 20)
        assert b"".join(client.received) == toClient
        assert b"".join(server.received) == toServer
        assert host._tlsConnection.total_renegotiations() == 1
        # Its last messages may still be on their way when the streams end
        # (they do not wait for it): it completes, within the wait's bound.
        await _until(lambda: not host._tlsConnection.renegotiate_pending())
    finally:
        client.transport.loseConnection()  # type: ignore[union-attr]
        for port in ports:
            await port.stopListening()
