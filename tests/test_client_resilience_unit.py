"""
A client must not be knocked into a busy loop by its own application or by
a host that drops it at once.
"""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_channel import IChannelLinkObserver, _client, _wire
from twisted_channel._credentials import PeerCredentials
from twisted_channel._reconnection import HEALTHY_LINK

from ._support.clientlinks import (
    HOST_PID,
    LinkTransport,
    ack,
    connected,
    loseLink,
    makeClient,
)


@pytest.fixture(autouse=True)
def noPeerCredentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        _client, "peerCredentials", lambda handle: PeerCredentials(None, None)
    )


@implementer(IChannelLinkObserver)
class BrokenObserver(Protocol):
    def linkEstablished(self, host: object) -> None:
        raise RuntimeError("observer bug")

    def linkLost(self, reason: Failure) -> None:
        raise RuntimeError("observer bug")


def test_observerThatRaisesDoesNotCostTheLink() -> None:
    client, protocol, reactor = makeClient(protocol=BrokenObserver())
    client.write(b"one")
    link, transport = connected(client)
    assert not transport.disconnecting
    assert client.state == "connected"
    ack(link, 1)
    assert len(client.pending) == 0
    loseLink(link)
    assert client.state == "connecting"


def countAttempts(reactor: object) -> int:
    return len(reactor.unixClients)  # type: ignore[attr-defined]


def welcomeLatestAttempt(reactor: object) -> tuple[object, LinkTransport]:
    """
    Let the connector's latest attempt reach a host that welcomes it.
    """
    wrapper = reactor.unixClients[-1][1].buildProtocol(None)  # type: ignore[attr-defined]
    transport = LinkTransport()
    wrapper.makeConnection(transport)
    wrapper.dataReceived(_wire.encodeWelcome(_wire.Welcome(0, HOST_PID, 1000)))
    return wrapper._wrappedProtocol, transport


def test_linkDroppedAtOnceBacksOff() -> None:
    """
    Links that die right after their welcome, with nothing acknowledged, are
    retried with a growing delay, not at once each time.
    """
    client, protocol, reactor = makeClient(timeout=0)
    client.startConnecting()
    delays = []
    for _ in range(8):
        link, transport = welcomeLatestAttempt(reactor)
        before = countAttempts(reactor)
        loseLink(link)
        assert countAttempts(reactor) == before
        [call] = [c for c in reactor.getDelayedCalls() if c.active()]
        delays.append(call.getTime() - reactor.seconds())
        reactor.advance(call.getTime() - reactor.seconds())
        assert countAttempts(reactor) == before + 1
    assert delays[-1] > delays[0] * 8


def test_healthyLinkLossReconnectsAtOnce() -> None:
    client, protocol, reactor = makeClient(timeout=0)
    client.startConnecting()
    link, transport = welcomeLatestAttempt(reactor)
    reactor.advance(HEALTHY_LINK)
    before = countAttempts(reactor)
    loseLink(link)
    assert countAttempts(reactor) == before + 1


@implementer(IChannelLinkObserver)
class LinkEvents(Protocol):
    """
    Records, in order, what the channel tells it of its links and its end.
    """

    def __init__(self) -> None:
        self.events: list[str] = []

    def linkEstablished(self, host: object) -> None:
        self.events.append("established")

    def linkLost(self, reason: Failure) -> None:
        self.events.append("lost")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.events.append("connectionLost")


def test_observerToldOnceTheNextAttemptIsMade() -> None:
    """
    A healthy link lost: the next attempt is begun at once, and the
    application's observer is told at the next reactor turn, not before
    it, so that the observer's work never delays the next host's hello.
    """
    observer = LinkEvents()
    client, protocol, reactor = makeClient(protocol=observer, timeout=0)
    client.startConnecting()
    link, transport = welcomeLatestAttempt(reactor)
    assert observer.events == ["established"]
    reactor.advance(HEALTHY_LINK)
    before = countAttempts(reactor)
    loseLink(link)
    assert countAttempts(reactor) == before + 1
    assert observer.events == ["established"]
    reactor.advance(0)
    assert observer.events == ["established", "lost"]
    welcomeLatestAttempt(reactor)
    assert observer.events == ["established", "lost", "established"]


def test_observerToldOfTheLostLinkBeforeTheEnd() -> None:
    """
    A connection that ends before the observer was told of its lost link
    tells it first: linkLost, then connectionLost.
    """
    observer = LinkEvents()
    client, protocol, reactor = makeClient(protocol=observer, timeout=0)
    client.startConnecting()
    link, transport = welcomeLatestAttempt(reactor)
    reactor.advance(HEALTHY_LINK)
    loseLink(link)
    client._finish(Failure(ConnectionDone()))  # what a due deadline does
    assert observer.events == ["established", "lost", "connectionLost"]
    reactor.advance(0)
    assert observer.events == ["established", "lost", "connectionLost"]


def test_observerClosingOnLinkLostStopsTheAttempt() -> None:
    """
    An observer that aborts the connection when told of a lost link ends
    it: the attempt already made is given up and no other is made.
    """

    class Aborting(LinkEvents):
        def linkLost(self, reason: Failure) -> None:
            super().linkLost(reason)
            self.transport.abortConnection()  # type: ignore[union-attr]

    observer = Aborting()
    client, protocol, reactor = makeClient(protocol=observer, timeout=0)
    client.startConnecting()
    link, transport = welcomeLatestAttempt(reactor)
    reactor.advance(HEALTHY_LINK)
    loseLink(link)
    attempt = reactor.connectors[-1]
    assert not attempt.stoppedConnecting
    reactor.advance(0)
    reactor.advance(0)
    assert observer.events == ["established", "lost", "connectionLost"]
    assert attempt.stoppedConnecting
    attempts = countAttempts(reactor)
    reactor.advance(10)
    assert countAttempts(reactor) == attempts
    assert client.state == "closed"
