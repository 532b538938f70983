"""
The surface of both channel transports (a client's logical connection and
the host's end of a link) against Twisted's own TCP transport as the
reference: each test runs the same assertions on a real C{tcp} connection
and on both channel transports, over real sockets, over both of the
channel's transports (C{transport=unix} and C{transport=tcp}).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IPullProducer,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_channel import ChannelEndpoint

pytestmark = pytest.mark.timeout(60)

KINDS = ["tcp-reference", "client-unix", "host-unix", "client-tcp", "host-tcp"]


class Recorder(Protocol):
    """
    Records what arrives and how the connection ended.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []
        self.made: Deferred[None] = Deferred()
        self.whenLost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost.append(reason)
        if not self.whenLost.called:
            self.whenLost.callback(None)

    def data(self) -> bytes:
        return b"".join(self.received)


class RecordingFactory(Factory):
    def __init__(self) -> None:
        self.built: list[Recorder] = []
        self.first: Deferred[Recorder] = Deferred()

    def buildProtocol(self, addr: Any) -> Recorder:
        protocol = Recorder()
        self.built.append(protocol)
        if not self.first.called:
            protocol.made.addCallback(lambda _: self.first.callback(protocol))
        return protocol


@dataclass
class Pair:
    """
    A connected pair: the transport under test (C{tested.transport}) and
    the protocol at the other end.
    """

    tested: Recorder
    peer: Recorder
    closers: list[Callable[[], Any]] = field(default_factory=list)

    @property
    def transport(self) -> Any:
        return self.tested.transport


async def wait(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


async def within(waiter: Deferred[Any], seconds: float = 10.0) -> Any:
    """
    C{waiter}'s result, or a failure if it takes more than C{seconds}.
    """
    from twisted.internet import reactor

    return await waiter.addTimeout(seconds, reactor)


async def eventually(condition: Callable[[], object], what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest_twisted.async_yield_fixture(params=KINDS)
async def pair(
    request: pytest.FixtureRequest, channelDirectory: str
) -> AsyncIterator[Pair]:
    from twisted.internet import reactor

    kind = request.param
    serverFactory = RecordingFactory()
    clientFactory = RecordingFactory()
    closers: list[Callable[[], Any]] = []
    if kind == "tcp-reference":
        from twisted.internet.endpoints import TCP4ClientEndpoint

        port = reactor.listenTCP(0, serverFactory, interface="127.0.0.1")
        closers.append(port.stopListening)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            clientFactory
        )
        server = await within(serverFactory.first)
        client = await within(clientFactory.first)
        result = Pair(server, client, closers)
    else:
        side, transportKind = kind.split("-")
        endpoint = ChannelEndpoint(
            reactor, "surface", directory=channelDirectory, transport=transportKind
        )
        channelPort = await endpoint.listen(serverFactory)
        closers.append(channelPort.stopListening)
        client = await endpoint.connect(clientFactory)
        await client.transport.whenConnected()  # type: ignore[union-attr]
        server = await within(serverFactory.first)
        if side == "client":
            result = Pair(client, server, closers)
        else:
            result = Pair(server, client, closers)
    try:
        yield result
    finally:
        for protocol in (result.tested, result.peer):
            if not protocol.lost and protocol.transport is not None:
                protocol.transport.abortConnection()  # type: ignore[attr-defined]
        for protocol in (result.tested, result.peer):
            if not protocol.whenLost.called:
                await within(protocol.whenLost)
        for closer in closers:
            await closer()


@pytest_twisted.ensureDeferred
async def test_interfacesAndStateWhileConnected(pair: Pair) -> None:
    transport = pair.transport
    assert ITransport.providedBy(transport)
    assert IConsumer.providedBy(transport)
    assert IPushProducer.providedBy(transport)
    assert transport.connected
    assert not transport.disconnecting
    assert not transport.disconnected


@pytest_twisted.ensureDeferred
async def test_handleIsTheSocket(pair: Pair) -> None:
    handle = pair.transport.getHandle()
    assert isinstance(handle.fileno(), int)


@pytest_twisted.ensureDeferred
async def test_addressesHaveHostAndPort(pair: Pair) -> None:
    """
    twisted.web formats C{getHost().host} and C{getHost().port} (a request
    without a Host header, a redirect); both must be there.
    """
    host = pair.transport.getHost()
    assert isinstance(host.host, str) and host.host
    assert isinstance(host.port, int)
    assert pair.transport.getPeer() is not None


@pytest_twisted.ensureDeferred
async def test_socketOptionsAreHarmlessCalls(pair: Pair) -> None:
    transport = pair.transport
    transport.setTcpNoDelay(True)
    assert transport.getTcpNoDelay()
    transport.setTcpKeepAlive(True)
    assert transport.getTcpKeepAlive()
    transport.setTcpNoDelay(False)
    assert not transport.getTcpNoDelay()
    transport.write(b"still works")
    await eventually(lambda: pair.peer.data() == b"still works", "the write")


@pytest_twisted.ensureDeferred
async def test_pauseAndResumeReading(pair: Pair) -> None:
    pair.transport.pauseProducing()
    await wait(0.05)
    pair.peer.transport.write(b"while paused")  # type: ignore[union-attr]
    await wait(0.2)
    assert pair.tested.received == []
    pair.transport.resumeProducing()
    await eventually(lambda: pair.tested.data() == b"while paused", "the read")


@implementer(IPullProducer)
class PullProducer:
    """
    Writes one chunk each time it is asked, then unregisters.
    """

    def __init__(self, consumer: Any, chunks: int) -> None:
        self.consumer = consumer
        self.left = chunks
        self.asked = 0
        self.stopped = False

    def resumeProducing(self) -> None:
        self.asked += 1
        if self.left:
            self.consumer.write(b"%d;" % self.left)
            self.left -= 1
            if not self.left:
                self.consumer.unregisterProducer()

    def stopProducing(self) -> None:
        self.stopped = True


@pytest_twisted.ensureDeferred
async def test_pullProducerIsDriven(pair: Pair) -> None:
    """
    A pull producer is asked for more until it is done, without anyone
    calling it but the transport.
    """
    producer = PullProducer(pair.transport, 20)
    pair.transport.registerProducer(producer, False)
    expected = b"".join(b"%d;" % n for n in range(20, 0, -1))
    await eventually(lambda: pair.peer.data() == expected, "every chunk")
    assert producer.asked >= 20


@implementer(IPushProducer)
class PushProducer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


@pytest_twisted.ensureDeferred
async def test_oneProducerAtATime(pair: Pair) -> None:
    first = PushProducer()
    pair.transport.registerProducer(first, True)
    with pytest.raises(RuntimeError):
        pair.transport.registerProducer(PushProducer(), True)
    pair.transport.unregisterProducer()
    second = PushProducer()
    pair.transport.registerProducer(second, True)
    pair.transport.unregisterProducer()
    assert first.calls == second.calls == []


@pytest_twisted.ensureDeferred
async def test_streamingProducerStoppedWhenConnectionEnds(pair: Pair) -> None:
    producer = PushProducer()
    pair.transport.registerProducer(producer, True)
    pair.peer.transport.abortConnection()  # type: ignore[union-attr]
    await within(pair.tested.whenLost)
    assert producer.calls[-1:] == ["stop"]


@pytest_twisted.ensureDeferred
async def test_loseConnectionFlushesThenCloses(pair: Pair) -> None:
    transport = pair.transport
    transport.write(b"last words")
    transport.loseConnection()
    assert transport.disconnecting
    transport.loseConnection()
    await within(pair.tested.whenLost)
    await within(pair.peer.whenLost)
    assert pair.peer.data() == b"last words"
    assert len(pair.tested.lost) == 1
    assert pair.tested.lost[0].check(error.ConnectionDone)
    assert not transport.connected
    assert transport.disconnected
    transport.loseConnection()
    transport.abortConnection()
    assert len(pair.tested.lost) == 1


@pytest_twisted.ensureDeferred
async def test_abortConnection(pair: Pair) -> None:
    pair.transport.abortConnection()
    await within(pair.tested.whenLost)
    await within(pair.peer.whenLost)
    assert len(pair.tested.lost) == 1
    assert pair.tested.lost[0].check(error.ConnectionAborted)
    assert pair.transport.disconnected


@pytest_twisted.ensureDeferred
async def test_producerRegisteredAfterTheEndIsStopped(pair: Pair) -> None:
    pair.transport.loseConnection()
    await within(pair.tested.whenLost)
    producer = PushProducer()
    pair.transport.registerProducer(producer, True)
    assert producer.calls == ["stop"]


@pytest_twisted.ensureDeferred
async def test_peerClosingEndsTheConnection(pair: Pair) -> None:
    pair.peer.transport.loseConnection()  # type: ignore[union-attr]
    await within(pair.tested.whenLost)
    assert pair.tested.lost[0].check(error.ConnectionDone)
    assert not pair.transport.connected


@pytest_twisted.ensureDeferred
async def test_logPrefixNamesTheProtocol(pair: Pair) -> None:
    """
    Twisted code calls C{transport.logPrefix()} (C{log.callWithLogger},
    conch's SSH service, C{policies}); like C{tcp.Connection}'s, it
    starts with the protocol's class name, and is what C{callWithLogger}
    gives the log as the system.
    """
    from twisted.python import log

    prefix = pair.transport.logPrefix()
    assert isinstance(prefix, str)
    assert prefix.split(",")[0] == "Recorder"
    seen: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        seen.append(event["system"])

    log.addObserver(observer)
    try:
        log.callWithLogger(pair.transport, log.msg, "inside")
    finally:
        log.removeObserver(observer)
    assert seen == [prefix]
