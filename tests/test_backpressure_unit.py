"""
Flow control on both ends of a link, with in-memory transports and a fake
clock: the host's per-link cap, reading paused by either application, and
the pings that tell a client a paused host is alive.
"""

from __future__ import annotations

import pytest

from twisted_channel import ChannelBufferFullError, _client, _host, _wire
from twisted_channel._credentials import PeerCredentials
from twisted_channel._host import KEEPALIVE_INTERVAL

from ._support.clientlinks import (
    ack,
    connected,
    loseLink,
    makeClient,
    openLink,
    welcome,
)
from ._support.hostlinks import AppFactory, Host, LinkTransport, data, hello, sent


@pytest.fixture
def host(channelDirectory: str) -> Host:
    return Host(channelDirectory, AppFactory())


@pytest.fixture(autouse=True)
def noPeerCredentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    String transports have no socket to ask the kernel about.
    """
    for module in (_client, _host):
        monkeypatch.setattr(
            module, "peerCredentials", lambda handle: PeerCredentials(None, None)
        )


def test_hostCapsWhatOneLinkHolds(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The host's application cannot make one link hold more than
    maxBufferSize unsent bytes: the write past it raises, and nothing of it
    is queued.
    """
    # Everything written stays unsent, like a socket whose peer stopped
    # reading (what a real socket transport holds is counted by
    # _sockets.bufferedBytes, tested over real sockets in test_sockets).
    monkeypatch.setattr(
        _host, "bufferedBytes", lambda transport: len(transport.value())
    )
    host.port.maxBufferSize = 1000
    link = host.link()[0]
    transport = LinkTransport()
    link.makeConnection(transport)
    link.dataReceived(hello())
    transport.clear()
    application = host.factory.built[-1]
    for _ in range(9):
        application.transport.write(b"x" * 100)
    before = transport.value()
    with pytest.raises(ChannelBufferFullError, match="maxBufferSize=1000"):
        application.transport.write(b"y" * 100)
    assert transport.value() == before


def test_hostPausesReadingAndPings(host: Host) -> None:
    """
    An application that pauses its transport stops the link's reading, and
    the client hears a ping every second until it resumes.
    """
    link, transport = host.link()
    link.dataReceived(hello())
    sent(transport)
    application = host.factory.built[-1]
    application.transport.pauseProducing()
    assert transport.producerState == "paused"
    assert [kind for kind, _ in sent(transport)] == [_wire.PING]
    host.reactor.advance(KEEPALIVE_INTERVAL)
    host.reactor.advance(KEEPALIVE_INTERVAL)
    assert [kind for kind, _ in sent(transport)] == [_wire.PING] * 2
    application.transport.resumeProducing()
    assert transport.producerState == "producing"
    host.reactor.advance(KEEPALIVE_INTERVAL * 5)
    assert sent(transport) == []
    link.dataReceived(data(b"after"))
    assert application.received == [b"after"]


def test_hostPingsStopWhenLinkEnds(host: Host) -> None:
    link, transport = host.link()
    link.dataReceived(hello())
    host.factory.built[-1].transport.pauseProducing()
    link.connectionLost(None)  # type: ignore[arg-type]
    assert host.reactor.getDelayedCalls() == []


def test_pingsKeepAStalledLinkAlive() -> None:
    """
    A client whose messages wait unacknowledged keeps its link while the
    host pings; once the pings stop, the link is dropped after the stall
    timeout.
    """
    client, protocol, reactor = makeClient(timeout=2)
    link, transport = connected(client)
    client.write(b"waiting")
    for _ in range(10):
        reactor.advance(1)
        link.dataReceived(_wire.encodeFrame(_wire.PING))
    assert not transport.disconnecting
    reactor.advance(2.1)
    assert transport.disconnecting


def test_clientPausesReadingAcrossLinks() -> None:
    """
    An application that pauses its client transport stops reading from the
    host, also on the link made after a failover, and is not taken for a
    stalled host meanwhile.
    """
    client, protocol, reactor = makeClient(timeout=2)
    link, transport = connected(client)
    client.pauseProducing()
    assert transport.producerState == "paused"
    client.write(b"unacknowledged")
    reactor.advance(30)
    assert not transport.disconnecting
    loseLink(link)
    second, secondTransport = openLink(client)
    welcome(second)
    assert secondTransport.producerState == "paused"
    client.resumeProducing()
    assert secondTransport.producerState == "producing"
    ack(second, 1)
    assert len(client.pending) == 0


def test_stopProducingClosesLikeATransport() -> None:
    client, protocol, reactor = makeClient()
    connected(client)
    client.stopProducing()
    reactor.advance(0)
    assert client.state == "closed"


def test_applicationAbortCutsOffAClientNotReading(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    An abort on a link whose client is not reading (the socket still holds
    data) drops the link at once, without waiting for the client.
    """
    monkeypatch.setattr(
        _host, "bufferedBytes", lambda transport: len(transport.value())
    )

    class Aborting(LinkTransport):
        aborted = False

        def abortConnection(self) -> None:
            self.aborted = True
            super().abortConnection()

    link = host.link()[0]
    transport = Aborting()
    link.makeConnection(transport)
    link.dataReceived(hello())
    application = host.factory.built[-1]
    application.transport.write(b"x" * 100)
    application.transport.abortConnection()
    assert transport.aborted
    assert sent(transport)[-1] == (_wire.GOODBYE, b"")


def test_loseConnectionWhilePausedReadsTheAcknowledgements() -> None:
    """
    An application that paused its client transport and then closes it (as
    an HTTP client does) still gets its connection closed: the link reads
    on for the acknowledgements, and, as on TCP after loseConnection, the
    host's messages are no longer delivered.
    """
    client, protocol, reactor = makeClient()
    link, transport = connected(client)
    client.pauseProducing()
    client.write(b"last")
    client.loseConnection()
    assert transport.producerState == "producing"
    client.pauseProducing()
    assert transport.producerState == "producing"
    link.dataReceived(_wire.encodeFrame(_wire.DATA, b"unread"))
    ack(link, 1)
    assert client.state == "closed"
    assert protocol.received == []
