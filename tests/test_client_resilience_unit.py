"""
A client must not be knocked into a busy loop by its own application or by
a host that drops it at once.
"""

from __future__ import annotations

import pytest
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
