"""
Unit tests of the host's end of a link, L{_HostLink}, driven by hand with a
memory reactor and string transports.  No sockets, no sleeps, no election.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import socket
import stat
import subprocess
import sys
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from twisted_channel import (
    ChannelAddress,
    ChannelClientTransport,
    _host,
    _hostsession,
    _publishing,
    _temporary,
    _wire,
)
from twisted_channel._address import HOST
from twisted_channel._auth import LOOPBACK, PortFile, readPortFile
from twisted_channel._credentials import PeerCredentials
from twisted_channel._directory import channelPaths
from twisted_channel._election import HostElection
from twisted_channel._host import ChannelPort, _HostingTerm, _HostLink

from ._support.clientlinks import WaitingRead
from ._support.hostlinks import (
    CLIENT_PID,
    LIMIT,
    App,
    AppFactory,
    Closing,
    Exploding,
    Host,
    LinkTransport,
    acks,
    data,
    errorOf,
    hello,
    sent,
    welcomed,
)


@pytest.fixture(autouse=True)
def noPeerCredentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        _host, "peerCredentials", lambda handle: PeerCredentials(None, None)
    )


@pytest.fixture
def host(channelDirectory: str) -> Host:
    return Host(channelDirectory, AppFactory())


# Handshake


def test_aReadAtAcceptThatRaisesEndsTheLinkNotThePort(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A link is read as it is accepted, inside the listening port's accept:
    an error escaping that read is logged and ends the link, and does not
    reach the port (whose dispatch would close it).
    """
    monkeypatch.setattr(_host, "readDirectly", lambda *args: True)

    class FailingRead(LinkTransport):
        aborted = False

        def doRead(self) -> None:
            raise RuntimeError("a bug in the read")

        def abortConnection(self) -> None:
            self.aborted = True

    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        link = _HostLink(host.port, host.term)
        transport = FailingRead()
        link.makeConnection(transport)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert transport.aborted
    [event] = [e for e in logged if "log_failure" in e]
    assert event["log_failure"].check(RuntimeError)
    assert "reading the new link" in formatEvent(event)


def test_helloGetsWelcomeAndApplication(host: Host) -> None:
    """
    A hello is answered with a welcome, and the factory's protocol is
    connected to the link.
    """
    link, transport = host.link()
    assert transport.value() == b""
    link.dataReceived(hello())
    assert welcomed(transport) == _wire.Welcome(0, os.getpid(), LIMIT)
    [app] = host.factory.built
    assert app.made == 1
    assert verifyObject(ITransport, app.transport)
    peer = ChannelAddress("jobs", host.port.paths.socket, None, CLIENT_PID, None)
    assert app.transport.getPeer() == peer  # type: ignore[union-attr]
    assert host.factory.addresses == [peer]
    # Over a Unix socket, with the host and port twisted.web formats.
    assert app.transport.getHost() == dataclasses.replace(  # type: ignore[union-attr]
        host.port.getHost(), host="localhost", port=0
    )
    assert host.term.links == {b"c" * 16: link}
    assert link in host.term.allLinks
    assert host.reactor.getDelayedCalls() == []
    assert not transport.disconnecting


def test_helloInPieces(host: Host) -> None:
    """
    A hello split across reads is a hello.
    """
    link, transport = host.link()
    frame = hello()
    for i in range(len(frame)):
        link.dataReceived(frame[i : i + 1])
    assert welcomed(transport).resumeAfter == 0
    assert len(host.factory.built) == 1


def test_helloAndDataInOneRead(host: Host) -> None:
    link, transport = host.link()
    link.dataReceived(hello() + data(b"a", b"b"))
    frames = sent(transport)
    assert [kind for kind, _ in frames] == [_wire.WELCOME, _wire.ACK]
    assert _wire.decodeAck(frames[1][1]) == 2
    assert host.factory.built[0].received == [b"a", b"b"]


# Delivery and acknowledgement


def test_oneAckPerRead(host: Host) -> None:
    """
    Each DATA frame is one C{dataReceived} call; each read that delivers
    messages is answered with one cumulative ACK.
    """
    link, transport = host.link()
    link.dataReceived(hello())
    transport.clear()
    [app] = host.factory.built
    link.dataReceived(data(b"one", b"two", b""))
    assert app.received == [b"one", b"two", b""]
    assert acks(sent(transport)) == [3]
    frame = data(b"four")
    link.dataReceived(frame[:6])
    assert transport.value() == b""
    link.dataReceived(frame[6:] + data(b"five")[:2])
    assert acks(sent(transport)) == [4]
    link.dataReceived(data(b"five")[2:])
    assert acks(sent(transport)) == [5]
    assert app.received == [b"one", b"two", b"", b"four", b"five"]
    assert host.term.messages == 5
    assert host.term.delivered[b"c" * 16] == 5


def test_resendRecognisedOnNewLink(host: Host) -> None:
    """
    When a client says hello again with the same id, the new link resumes
    after what the host already delivered; the old link is closed quietly
    and nothing is delivered twice.
    """
    first, firstTransport = host.link()
    first.dataReceived(hello())
    first.dataReceived(data(b"m1", b"m2"))
    firstTransport.clear()

    # The client never saw the ACK: it still holds m1 and m2.
    second, secondTransport = host.link()
    second.dataReceived(hello(firstSequence=1))
    assert welcomed(secondTransport).resumeAfter == 2
    assert firstTransport.disconnecting
    assert firstTransport.value() == b""
    # Late data on the old link is ignored.
    first.dataReceived(data(b"m3"))
    assert firstTransport.value() == b""

    second.dataReceived(data(b"m3"))
    assert acks(sent(secondTransport)) == [3]
    app1, app2 = host.factory.built
    assert app1.received == [b"m1", b"m2"]
    assert app2.received == [b"m3"]
    assert host.term.links == {b"c" * 16: second}

    first.connectionLost(Failure(error.ConnectionDone()))
    assert app1.lost and not app2.lost
    assert host.term.links == {b"c" * 16: second}


def test_resumeAfterLinkLost(host: Host) -> None:
    """
    A client that comes back after its link was lost resumes after what was
    delivered, even if it saw only part of the acknowledgements.
    """
    first, _ = host.link()
    first.dataReceived(hello() + data(b"m1", b"m2", b"m3"))
    first.connectionLost(Failure(error.ConnectionLost()))
    assert host.term.links == {}
    assert host.factory.built[0].lost[0].check(error.ConnectionLost)
    second, transport = host.link()
    second.dataReceived(hello(firstSequence=2))
    assert welcomed(transport).resumeAfter == 3


def test_unknownClientNumbersFromItsFirstSequence(host: Host) -> None:
    """
    A client this host has not seen (it failed over from another host)
    numbers its messages from the oldest one it holds.
    """
    link, transport = host.link()
    link.dataReceived(hello(b"n" * 16, firstSequence=5))
    assert welcomed(transport).resumeAfter == 4
    link.dataReceived(data(b"m5"))
    assert acks(sent(transport)) == [5]


def test_eagerHelloSkipsWhatWasDelivered(host: Host) -> None:
    """
    An eager client sends what it holds with its hello, numbered from its
    oldest message; the host delivers at once, skipping what it already
    delivered on an earlier link, and acknowledges the lot.
    """
    first, _ = host.link()
    first.dataReceived(hello() + data(b"m1", b"m2"))
    first.connectionLost(Failure(error.ConnectionLost()))
    # The client saw no acknowledgement: it holds m1 and m2, and wrote m3.
    second, transport = host.link()
    second.dataReceived(
        hello(firstSequence=1, flags=_wire.FLAG_EAGER) + data(b"m1", b"m2", b"m3")
    )
    frames = sent(transport)
    assert frames[0][0] == _wire.WELCOME
    assert _wire.decodeWelcome(frames[0][1]).resumeAfter == 2
    assert acks(frames[1:]) == [3]
    assert host.factory.built[1].received == [b"m3"]
    # What follows, in a later read, is numbered on.
    second.dataReceived(data(b"m4"))
    assert acks(sent(transport)) == [4]
    assert host.factory.built[1].received == [b"m3", b"m4"]


def test_eagerHelloSkipsAcrossReads(host: Host) -> None:
    """
    The messages to skip may arrive over several reads, with pings among
    them.
    """
    first, _ = host.link()
    first.dataReceived(hello() + data(b"m1", b"m2", b"m3"))
    first.connectionLost(Failure(error.ConnectionLost()))
    second, transport = host.link()
    second.dataReceived(hello(firstSequence=2, flags=_wire.FLAG_EAGER) + data(b"m2"))
    assert welcomed(transport).resumeAfter == 3
    second.dataReceived(_wire.encodeFrame(_wire.PING, b"p") + data(b"m3", b"m4"))
    frames = sent(transport)
    assert [kind for kind, _ in frames] == [_wire.PONG, _wire.ACK]
    assert acks(frames[1:]) == [4]
    assert host.factory.built[1].received == [b"m4"]


def test_eagerHelloFromNewClient(host: Host) -> None:
    """
    A host that never saw the client delivers all of an eager hello's
    messages.
    """
    link, transport = host.link()
    link.dataReceived(
        hello(b"n" * 16, firstSequence=7, flags=_wire.FLAG_EAGER) + data(b"a", b"b")
    )
    frames = sent(transport)
    assert _wire.decodeWelcome(frames[0][1]).resumeAfter == 6
    assert acks(frames[1:]) == [8]
    assert host.factory.built[0].received == [b"a", b"b"]


def test_eagerMessageOverLimitRefusesLink(host: Host) -> None:
    """
    A message sent with an eager hello that is over the host's limit ends
    the link with a reason (the client then waits for the welcome, which
    names the limit).
    """
    link, transport = host.link()
    link.dataReceived(hello(flags=_wire.FLAG_EAGER) + data(b"x" * (LIMIT + 1)))
    frames = sent(transport)
    assert [kind for kind, _ in frames] == [_wire.WELCOME, _wire.ERROR]
    assert f"message of {LIMIT + 1} bytes is over the limit" in frames[1][1].decode()
    assert transport.disconnecting
    assert host.factory.built[0].received == []


def test_clientsAreSeparate(host: Host) -> None:
    a, aTransport = host.link()
    b, bTransport = host.link()
    a.dataReceived(hello(b"a" * 16) + data(b"x"))
    b.dataReceived(hello(b"b" * 16))
    assert welcomed(bTransport).resumeAfter == 0
    assert not aTransport.disconnecting
    assert len(host.term.links) == 2


def test_aClientIsLastSeenWhenItsLinkEnds(host: Host) -> None:
    """
    The delivery records are ordered by when each client was last seen: a
    batch updates its client's record in place, and a client whose link
    ends becomes the most recently seen (the last of the disconnected to be
    forgotten).
    """
    a, _ = host.link()
    b, _ = host.link()
    a.dataReceived(hello(b"a" * 16))
    b.dataReceived(hello(b"b" * 16))
    b.dataReceived(data(b"x"))
    a.dataReceived(data(b"y", b"z"))
    assert list(host.term.delivered.items()) == [(b"a" * 16, 2), (b"b" * 16, 1)]
    a.connectionLost(Failure(error.ConnectionDone()))
    assert list(host.term.delivered) == [b"b" * 16, b"a" * 16]
    b.connectionLost(Failure(error.ConnectionDone()))
    assert list(host.term.delivered) == [b"a" * 16, b"b" * 16]


def test_ping(host: Host) -> None:
    link, transport = host.link()
    link.dataReceived(hello())
    transport.clear()
    link.dataReceived(_wire.encodeFrame(_wire.PING, b"123"))
    assert sent(transport) == [(_wire.PONG, b"123")]


def test_unexpectedFrameAfterHandshake(host: Host) -> None:
    link, transport = host.link()
    link.dataReceived(hello())
    transport.clear()
    link.dataReceived(data(b"a") + _wire.encodeAck(1) + data(b"b"))
    frames = sent(transport)
    # What was delivered before the fault is acknowledged before the ERROR.
    assert [kind for kind, _ in frames] == [_wire.ACK, _wire.ERROR]
    assert "unexpected frame of kind 4 after the handshake" in frames[1][1].decode()
    assert host.factory.built[0].received == [b"a"]
    assert transport.disconnecting


# Refusals


@pytest.mark.parametrize(
    "garbage, reason",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "unknown frame kind"),
        (b"\x00\x00\x00\x00\x01", "frame length of 0"),
        (data(b"sneaky"), "first frame is of kind 3, not a hello"),
        (_wire.encodeAck(1), "first frame is of kind 4, not a hello"),
        (_wire.encodeFrame(_wire.HELLO, b"short"), "hello is 5 bytes long"),
        (
            _wire.encodeHello(_wire.Hello(b"c" * 16, 1, 1, version=9)),
            "hello asks for wire version 9",
        ),
        (
            _wire.encodeFrame(_wire.HELLO, b"XXXX" + hello()[9:]),
            "does not start with the channel's magic bytes",
        ),
        (_wire.frameHeader(_wire.HELLO, 5000), "over the limit of 4096"),
        # Before the hello, nothing larger than a control frame is buffered.
        (
            _wire.frameHeader(_wire.DATA, _wire.MAX_CONTROL_BODY + 1),
            "over the limit of 4096 bytes",
        ),
    ],
)
def test_garbageRefused(host: Host, garbage: bytes, reason: str) -> None:
    """
    A peer that does not start with a well-formed hello gets an ERROR frame
    saying why, then the link is closed; no application protocol is built.
    """
    link, transport = host.link()
    link.dataReceived(garbage)
    assert reason in errorOf(transport)
    assert transport.disconnecting
    assert host.factory.built == []
    link.dataReceived(hello())
    assert transport.value() == b""
    assert host.factory.built == []
    # A late deadline changes nothing, and the link's end cancels it.
    host.reactor.advance(5)
    assert transport.value() == b""
    link.connectionLost(Failure(error.ConnectionDone()))
    assert host.reactor.getDelayedCalls() == []
    assert host.term.allLinks == set()


def test_handshakeDeadline(host: Host) -> None:
    """
    A peer that connects and says nothing (or only part of a hello) is
    dropped when the handshake deadline passes.
    """
    link, transport = host.link()
    link.dataReceived(hello()[:10])
    host.reactor.advance(9.99)
    assert not transport.disconnecting
    host.reactor.advance(0.02)
    assert "no hello within 10 seconds" in errorOf(transport)
    assert transport.disconnecting
    link.connectionLost(Failure(error.ConnectionDone()))
    assert link not in host.term.allLinks


def test_handshakeDeadlineReadsAWaitingHelloFirst(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A deadline that passes while the client's hello waits unread (this
    process was suspended or starved, and the reactor runs its timed calls
    before it reads) is judged again once the reactor has read: the hello
    then beats it.  A peer whose read is still no hello is refused then.
    """
    link, transport = host.link()
    monkeypatch.setattr(
        _host,
        "unreadBytes",
        WaitingRead(host.reactor, len(hello()), lambda: link.dataReceived(hello())),
    )
    host.reactor.advance(15)
    assert not transport.disconnecting
    assert welcomed(transport).resumeAfter == 0

    slow, slowTransport = host.link()
    monkeypatch.setattr(
        _host,
        "unreadBytes",
        WaitingRead(host.reactor, 100, lambda: slow.dataReceived(hello()[:10])),
    )
    host.reactor.advance(15)
    assert "no hello within 10 seconds" in errorOf(slowTransport)
    assert slowTransport.disconnecting


def test_helloBeatsDeadline(host: Host) -> None:
    link, transport = host.link()
    host.reactor.advance(9)
    link.dataReceived(hello())
    host.reactor.advance(100)
    assert not transport.disconnecting
    assert welcomed(transport).resumeAfter == 0


def test_peerOfAnotherUserRefused(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        _host, "peerCredentials", lambda handle: PeerCredentials(77, os.getuid() + 1)
    )
    link, transport = host.link()
    assert f"peer runs as uid {os.getuid() + 1}" in errorOf(transport)
    assert transport.disconnecting
    assert host.reactor.getDelayedCalls() == []
    assert link.peerAddress.pid == 77


def test_kernelPidPreferred(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The peer's pid as the kernel reports it wins over the one in its hello.
    """
    monkeypatch.setattr(
        _host, "peerCredentials", lambda handle: PeerCredentials(77, os.getuid())
    )
    link, _ = host.link()
    link.dataReceived(hello())
    assert link.peerAddress.pid == 77
    assert link.peerAddress.uid == os.getuid()


def test_factoryRefuses(host: Host) -> None:
    """
    A factory that returns no protocol gets the link closed with an ERROR.
    """
    host.factory.buildProtocol = lambda addr: None  # type: ignore[method-assign,assignment,return-value]
    link, transport = host.link()
    link.dataReceived(hello())
    frames = sent(transport)
    assert frames[-1][0] == _wire.ERROR
    assert "factory refused" in frames[-1][1].decode()
    assert transport.disconnecting


def test_factoryRefusesWithoutWelcome(host: Host) -> None:
    host.factory.buildProtocol = lambda addr: None  # type: ignore[method-assign,assignment,return-value]
    link, transport = host.link()
    link.dataReceived(hello())
    assert [kind for kind, _ in sent(transport)] == [_wire.ERROR]


# Application errors and application closes


def test_applicationErrorAbortsOnlyItsLink(channelDirectory: str) -> None:
    """
    An application protocol that raises in C{dataReceived} has its link
    aborted; the rest of the read is not delivered, and other links go on.
    """
    host = Host(channelDirectory, AppFactory(Exploding))
    bad, badTransport = host.link()
    good, goodTransport = host.link()
    good.dataReceived(hello(b"g" * 16))
    bad.dataReceived(hello(b"b" * 16))
    bad.dataReceived(data(b"ok", b"boom", b"after"))
    assert badTransport.disconnected
    goodApp, badApp = host.factory.built
    assert badApp.received == [b"ok", b"boom"]
    bad.dataReceived(data(b"later"))
    assert badApp.received == [b"ok", b"boom"]
    bad.connectionLost(Failure(error.ConnectionAborted()))
    assert badApp.lost[0].check(error.ConnectionAborted)

    goodTransport.clear()
    good.dataReceived(data(b"fine"))
    assert goodApp.received == [b"fine"]
    assert acks(sent(goodTransport)) == [1]
    assert not goodTransport.disconnecting

    third, thirdTransport = host.link()
    third.dataReceived(hello(b"t" * 16))
    assert welcomed(thirdTransport).resumeAfter == 0


def test_applicationWrites(host: Host) -> None:
    """
    Each application write is one DATA frame to the client, within the
    smaller of both ends' limits.
    """
    link, transport = host.link()
    link.dataReceived(hello(maxMessageSize=10))
    transport.clear()
    appTransport = host.factory.built[0].transport
    assert appTransport is not None
    appTransport.write(b"hello")
    appTransport.writeSequence([b"a", b"b"])
    assert sent(transport) == [(_wire.DATA, b"hello"), (_wire.DATA, b"ab")]
    with pytest.raises(ValueError, match="message of 11 bytes is over the limit of 10"):
        appTransport.write(b"x" * 11)
    with pytest.raises(TypeError, match="must be bytes"):
        appTransport.write("text")  # type: ignore[arg-type]
    assert transport.value() == b""


def test_applicationLoseConnectionSaysGoodbye(host: Host) -> None:
    link, transport = host.link()
    link.dataReceived(hello())
    transport.clear()
    host.factory.built[0].transport.loseConnection()  # type: ignore[union-attr]
    assert sent(transport) == [(_wire.GOODBYE, b"")]
    assert transport.disconnecting and not transport.disconnected
    link.dataReceived(data(b"late"))
    assert host.factory.built[0].received == []
    assert transport.value() == b""


def test_applicationAbortSaysGoodbye(host: Host) -> None:
    link, transport = host.link()
    link.dataReceived(hello())
    transport.clear()
    application = host.factory.built[0]
    application.transport.abortConnection()  # type: ignore[union-attr]
    assert sent(transport) == [(_wire.GOODBYE, b"")]
    # The kernel took everything: the close is a graceful one, so that the
    # client reads the goodbye (an abort resets a TCP connection, which
    # drops what the peer has not read).
    assert transport.disconnecting
    link.connectionLost(Failure(error.ConnectionDone()))
    assert application.lost[0].check(error.ConnectionAborted)


def test_applicationCloseInDataReceivedStopsDelivery(channelDirectory: str) -> None:
    """
    Once the application closes the connection, the rest of the read is not
    delivered.
    """
    host = Host(channelDirectory, AppFactory(Closing))
    link, transport = host.link()
    link.dataReceived(hello())
    transport.clear()
    link.dataReceived(data(b"one", b"two"))
    assert host.factory.built[0].received == [b"one"]
    kinds = [kind for kind, _ in sent(transport)]
    assert sorted(kinds) == sorted([_wire.DATA, _wire.GOODBYE, _wire.ACK])


def test_ackBeforeGoodbye(channelDirectory: str) -> None:
    host = Host(channelDirectory, AppFactory(Closing))
    link, transport = host.link()
    link.dataReceived(hello())
    transport.clear()
    link.dataReceived(data(b"one"))
    kinds = [kind for kind, _ in sent(transport)]
    assert kinds.index(_wire.ACK) < kinds.index(_wire.GOODBYE)


def test_clientSeesCleanCloseAfterDeliveredMessage(
    channelDirectory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twisted_channel import _client

    monkeypatch.setattr(
        _client, "peerCredentials", lambda handle: PeerCredentials(None, None)
    )

    class ClientApp(App):
        pass

    host = Host(channelDirectory, AppFactory(Closing))
    clientApp = ClientApp()
    client = ChannelClientTransport(
        host.reactor,
        ChannelAddress("jobs", host.port.paths.socket, HOST),
        clientApp,
        Factory(),
        5.0,
        LIMIT,
        4 * LIMIT,
    )
    clientApp.makeConnection(client)
    client.write(b"request")

    clientLink = _client._ClientLink(client)
    clientSide = LinkTransport()
    clientLink.makeConnection(clientSide)
    hostLink, hostSide = host.link()
    # Shuttle bytes between the two ends until both are quiet.
    for _ in range(10):
        toHost, toClient = clientSide.value(), hostSide.value()
        clientSide.clear()
        hostSide.clear()
        if not toHost and not toClient:
            break
        if toHost:
            hostLink.dataReceived(toHost)
        if toClient:
            clientLink.dataReceived(toClient)
    assert host.factory.built[0].received == [b"request"]
    assert clientApp.received == [b"bye: request"]
    [reason] = clientApp.lost
    assert reason.check(error.ConnectionDone), reason


# Status queries


def test_statusQuery(host: Host) -> None:
    """
    A hello with the status flag gets a STATUS frame of JSON about the
    channel, then the link is closed; no application is involved.
    """
    busy, _ = host.link()
    busy.dataReceived(hello(b"a" * 16) + data(b"x", b"yy"))
    link, transport = host.link()
    link.dataReceived(hello(b"s" * 16, flags=_wire.FLAG_STATUS_QUERY))
    [(kind, body)] = sent(transport)
    assert kind == _wire.STATUS
    status = json.loads(body)
    assert status["name"] == "jobs"
    assert status["hosted"] is True
    assert status["pid"] == os.getpid()
    assert status["path"] == host.port.paths.socket
    assert status["links"] == 1
    assert status["messages"] == 2
    assert status["since"] == host.term.started
    assert status["bytes"] > 0
    assert transport.disconnecting
    assert len(host.factory.built) == 1
    assert b"s" * 16 not in host.term.links
    assert b"s" * 16 not in host.term.delivered
    assert host.reactor.getDelayedCalls() == []


def test_statusWhenNotHosting(channelDirectory: str) -> None:
    port = ChannelPort(
        MemoryReactorClock(), "jobs", channelPaths("jobs", channelDirectory), App, 10
    )
    status = port.status()
    assert status["hosted"] is False
    assert (status["links"], status["messages"], status["since"]) == (0, 0, None)


# Bookkeeping


def test_whenClosed(host: Host) -> None:
    link, _ = host.link()
    waiting = link.whenClosed()
    assert not waiting.called
    link.connectionLost(Failure(error.ConnectionDone()))
    assert waiting.called
    assert link.whenClosed().called
    assert host.term.allLinks == set()


def test_rememberedClientsBounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The host forgets the least recently seen disconnected clients first,
    never one with a live link.
    """
    monkeypatch.setattr(_hostsession, "REMEMBERED_CLIENTS", 2)
    term = _HostingTerm(0.0)
    term.links[b"live"] = object()  # type: ignore[assignment]
    term.remember(b"live", 1)
    term.remember(b"old", 1)
    term.remember(b"new", 1)
    assert list(term.delivered) == [b"live", b"old", b"new"]
    term.remember(b"newer", 1)
    assert list(term.delivered) == [b"live", b"new", b"newer"]
    term.remember(b"new", 5)
    assert list(term.delivered) == [b"live", b"newer", b"new"]
    assert term.delivered[b"new"] == 5


def test_closeLinks(host: Host) -> None:
    """
    L{ChannelPort.closeLinks} closes every link, handshake done or not,
    without a word to its client; what a link's socket still held is not
    delivered, nor acknowledged (a host across machines that stepped down
    delivers nothing after).
    """
    welcomedLink, welcomedTransport = host.link()
    welcomedLink.dataReceived(hello() + data(b"a"))
    assert host.factory.built[0].received == [b"a"]
    sent(welcomedTransport)
    shaking, shakingTransport = host.link()
    host.port.closeLinks()
    assert welcomedTransport.disconnecting and shakingTransport.disconnecting
    welcomedLink.dataReceived(data(b"b", b"c"))
    shaking.dataReceived(hello(b"d" * 16) + data(b"e"))
    assert [app.received for app in host.factory.built] == [[b"a"]]
    assert welcomedTransport.value() == shakingTransport.value() == b""


class ClosingAtOnce(App):
    """
    An application that ends the client's connection as soon as it starts.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.loseConnection()  # type: ignore[union-attr]


def test_noDataAfterCloseInConnectionMade(channelDirectory: str) -> None:
    host = Host(channelDirectory, AppFactory(ClosingAtOnce))
    link, transport = host.link()
    link.dataReceived(hello() + data(b"a", b"b"))
    assert host.factory.built[0].received == []


# Winning the election but failing to bind


def test_failedBindIsRetriedSoonThenLessOften(
    channelDirectory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A standby that wins the lock but cannot bind its socket (a full file
    system: a dead host's socket frees its inode only once the kernel has
    closed it, after the lock was won) gives the lock back and tries again
    10 ms later, then after doubling delays; once it hosts, the next
    failure starts from 10 ms again.
    """
    failures = []
    real = _publishing.listeningUnixSocket

    def full(path: str, ready: Any = None) -> Any:
        assert ready is None
        if len(failures) < 4:
            failures.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(_publishing, "listeningUnixSocket", full)
    reactor = MemoryReactorClock()
    port = ChannelPort(reactor, "jobs", channelPaths("jobs", channelDirectory), App, 10)
    port.role = _host.STANDBY
    assert port._election.tryNow()
    port._elected()
    delays = []
    while port.role != HOST:
        [call] = reactor.getDelayedCalls()
        delays.append(round(call.getTime() - reactor.seconds(), 3))
        # The lock is free while it waits.
        assert not port._election.holding
        reactor.advance(delays[-1])
    assert delays == [0.01, 0.02, 0.04, 0.08]
    assert port._electionRetry.delay == 0.01
    assert os.path.exists(port.paths.socket)
    stopped = port.stopListening()
    reactor.advance(0)
    assert stopped.called
    assert not os.path.exists(port.paths.socket)
    assert not port._election.holding


def test_takingOverAcceptsTheClientsQueuedAtOnce(channelDirectory: str) -> None:
    """
    Clients that connected to the socket the winning thread published, while
    the reactor thread was still waking, are accepted by the call that makes
    this process the host, not one turn of the reactor later.
    """
    reactor = MemoryReactorClock()
    port = ChannelPort(reactor, "jobs", channelPaths("jobs", channelDirectory), App, 10)
    port.role = _host.STANDBY
    assert port._election.tryNow()
    published = port._standbySocket.publish()
    clients = [socket.socket(socket.AF_UNIX) for _ in range(2)]
    try:
        for client in clients:
            client.connect(port.paths.socket)
        port._elected(published)
        assert port.role == HOST
        assert port._term is not None
        assert len(port._term.allLinks) == 2
        stopped = port.stopListening()
        reactor.advance(0)
        assert stopped.called
    finally:
        for client in clients:
            client.close()
    assert not os.path.exists(port.paths.socket)


def test_leftoverTemporarySocketsAreRemovedAfterTakingOver(
    channelDirectory: str,
) -> None:
    """
    A host killed between binding its temporary socket and renaming it (or
    a standby killed with its ready socket) leaves a file; the host removes
    it (its own channel's only, and not a live standby's), not while it
    takes over but when it checks its published socket, every second.
    """
    paths = channelPaths("jobs", channelDirectory)
    prefix = _temporary.temporaryPrefix(paths.socket)
    # Above any pid_max, so no such process.
    leftover = prefix + "99999999-dead"
    # Names no process of the channel makes.
    odd = [prefix + "0-x", prefix + "9" * 30 + "-x", prefix + "x"]
    live = prefix + f"{os.getpid()}-live"
    other = _temporary.temporaryPrefix(os.path.join(channelDirectory, "o.sock")) + "1-x"
    for path in (leftover, *odd, live, other):
        bound = socket.socket(socket.AF_UNIX)
        bound.bind(path)
        bound.close()
    reactor = MemoryReactorClock()
    port = ChannelPort(reactor, "jobs", paths, App, 10)
    port.role = _host.STANDBY
    assert port._election.tryNow()
    port._elected()
    assert port.role == HOST
    assert os.path.exists(leftover)
    reactor.advance(_publishing.PUBLISH_CHECK_INTERVAL)
    assert not os.path.exists(leftover)
    assert not any(os.path.exists(path) for path in odd)
    assert os.path.exists(live)
    assert os.path.exists(other)
    assert os.path.exists(paths.socket)
    # A standby killed later leaves its socket too; the host goes on looking.
    later = prefix + "99999998-dead"
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(later)
    bound.close()
    reactor.advance(_publishing.PUBLISH_CHECK_INTERVAL)
    assert not os.path.exists(later)
    stopped = port.stopListening()
    reactor.advance(0)
    assert stopped.called


def standingBy(directory: str) -> tuple[ChannelPort, HostElection]:
    """
    A port standing by, and the election that holds the lock meanwhile.
    """
    reactor = MemoryReactorClock()
    paths = channelPaths("jobs", directory)
    holder = HostElection(reactor, paths.lock, lambda prepared: None)
    assert holder.tryNow()
    port = ChannelPort(reactor, "jobs", paths, AppFactory(), 10)
    port.startListening()
    assert port.role == _host.STANDBY
    return port, holder


@pytest.mark.skipif(
    not os.path.exists("/proc/self/stat"), reason="no /proc to tell zombies by"
)
def test_aZombieMakerIsDead() -> None:
    """
    A standby killed but not yet reaped by its parent is dead: its ready
    socket may go.
    """
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Wait for it to end, but leave it unreaped.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert not _temporary.makerAlive(f".s~{child.pid}-x", ".s~")
    finally:
        child.wait(10)
    assert _temporary.makerAlive(f".s~{os.getpid()}-x", ".s~")


def test_temporaryNamesAreThisProcesssAndNeverTheSame(channelDirectory: str) -> None:
    """
    Each temporary name is the socket's prefix, this process's pid (which
    tells that its maker lives) and eight hex digits that differ from one
    name to the next; a child after a fork names its own pid.
    """
    path = os.path.join(channelDirectory, "jobs.sock")
    prefix = _temporary.temporaryPrefix(path)
    assert prefix == os.path.join(channelDirectory, ".jobs.sock~")
    names = [_temporary.temporaryName(path) for _ in range(3)]
    assert len(set(names)) == 3
    for name in names:
        pid, serial = name[len(prefix) :].split("-")
        assert pid == str(os.getpid()) and len(serial) == 8
        int(serial, 16)
        assert _temporary.makerAlive(name, prefix)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(reader)
        os.write(writer, _temporary.temporaryName(path).encode())
        os._exit(0)
    os.close(writer)
    try:
        childName = os.read(reader, 200).decode()
    finally:
        os.close(reader)
        os.waitpid(child, 0)
    assert childName.startswith(f"{prefix}{child}-")


def test_standbyHoldsASocketReadyToPublish(channelDirectory: str) -> None:
    """
    A standby binds and listens, under a temporary name and mode 0600, the
    socket it will publish if it wins; winning renames that very socket
    into place.
    """
    port, holder = standingBy(channelDirectory)
    paths = port.paths
    ready = port._standbySocket.ready
    assert ready is not None
    assert os.path.basename(ready.temporary).startswith(
        os.path.basename(_temporary.temporaryPrefix(paths.socket)) + f"{os.getpid()}-"
    )
    info = os.lstat(ready.temporary)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    probe = socket.socket(socket.AF_UNIX)
    probe.connect(ready.temporary)
    probe.close()
    published = port._standbySocket.publish()
    assert published.listening is ready.listening
    info = os.lstat(paths.socket)
    assert (info.st_dev, info.st_ino) == ready.identity == published.identity
    assert not os.path.exists(ready.temporary)
    assert port._standbySocket.ready is None
    port._standbySocket.withdraw(published)
    port.stopListening()
    holder.release()


def test_aUnixHostThatFailsToStartGivesBackItsSocket(
    channelDirectory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    If starting to listen on the socket published for it fails, the
    would-be host withdraws that socket (its file removed, the socket
    closed), as the TCP one withdraws its port: clients do not queue on a
    socket nobody will ever accept on.
    """
    port, holder = standingBy(channelDirectory)
    # The port's own wait, blocked on the lock, must not win it: this test
    # publishes and starts the host itself, and a win would be handed to a
    # memory reactor, which has no threads.
    port._election.cancel()
    holder.release()
    published = port._standbySocket.publish()
    assert os.path.exists(port.paths.socket)

    def failing(listeningPort: object, listening: socket.socket) -> bool:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(_publishing, "startListeningOn", failing)
    with pytest.raises(OSError):
        port._becomeHost(published)
    assert not os.path.lexists(port.paths.socket)
    assert published.listening.fileno() == -1
    port.stopListening()


def test_standbyStoppingRemovesItsReadySocket(channelDirectory: str) -> None:
    port, holder = standingBy(channelDirectory)
    ready = port._standbySocket.ready
    assert ready is not None and os.path.exists(ready.temporary)
    port.stopListening()
    assert not os.path.exists(ready.temporary)
    assert ready.listening.fileno() == -1
    assert port._standbySocket.ready is None
    holder.release()


def test_aStandbyStoppingTellsItsRoleObservers(channelDirectory: str) -> None:
    """
    A standby that stops listening tells its role observers C{"stopped"},
    once: its role changed (README: the observer "calls back on each
    change"), as a host's observers are told when it stops, and as a port
    across machines tells its own whatever its role was.
    """
    port, holder = standingBy(channelDirectory)
    roles: list[str] = []
    port.addRoleObserver(roles.append)
    port.stopListening()
    assert (port.role, roles) == (_host.STOPPED, [_host.STOPPED])
    port.stopListening()
    assert roles == [_host.STOPPED]
    holder.release()


def standingByOverTCP(directory: str) -> tuple[ChannelPort, HostElection]:
    """
    A port standing by over loopback TCP, and the election that holds the
    lock meanwhile.
    """
    reactor = MemoryReactorClock()
    paths = channelPaths("jobs", directory)
    holder = HostElection(reactor, paths.lock, lambda prepared: None)
    assert holder.tryNow()
    port = ChannelPort(reactor, "jobs", paths, AppFactory(), 10, transport="tcp")
    port.startListening()
    assert port.role == _host.STANDBY
    return port, holder


def test_tcpStandbyHoldsAPortReadyToPublish(channelDirectory: str) -> None:
    """
    A TCP standby binds and listens a loopback port, and writes the port
    file naming it and its secret under a temporary name, mode 0600, before
    it wins; winning renames that very file into place, naming that very
    port.  Whoever connects to the port meanwhile only waits in the
    kernel's queue.
    """
    port, holder = standingByOverTCP(channelDirectory)
    paths = port.paths
    ready = port._standbySocket.ready
    assert isinstance(ready, _publishing.ReadyPort)
    assert os.path.basename(ready.temporary).startswith(
        os.path.basename(_temporary.temporaryPrefix(paths.port)) + f"{os.getpid()}-"
    )
    info = os.lstat(ready.temporary)
    assert stat.S_ISREG(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert (info.st_dev, info.st_ino) == ready.identity
    assert readPortFile(ready.temporary) == PortFile(
        ready.port, ready.secret, os.getpid()
    )
    assert ready.listening.getsockname() == (LOOPBACK, ready.port)
    assert not os.path.exists(paths.port)
    probe = socket.create_connection((LOOPBACK, ready.port), 5)
    probe.close()
    published = port._standbySocket.publish()
    assert isinstance(published, _publishing.PublishedPort)
    assert published.listening is ready.listening
    assert (published.port, published.secret) == (ready.port, ready.secret)
    assert readPortFile(paths.port) == PortFile(ready.port, ready.secret, os.getpid())
    assert not os.path.exists(ready.temporary)
    assert port._standbySocket.ready is None
    port._standbySocket.withdraw(published)
    assert ready.listening.fileno() == -1
    port.stopListening()
    holder.release()
    assert os.listdir(channelDirectory) == ["jobs.lock"]


def test_tcpHostListensOnThePortItHeldReady(channelDirectory: str) -> None:
    """
    Elected with the port its election thread published, a TCP host hands
    that socket to the reactor (which listens on a duplicate) and serves
    the secret its port file names; stopping, it removes the file.
    """
    reactor = MemoryReactorClock()
    paths = channelPaths("jobs", channelDirectory)
    port = ChannelPort(reactor, "jobs", paths, App, 10, transport="tcp")
    port.role = _host.STANDBY
    assert port._election.tryNow()
    port._standbySocket.prepare()
    ready = port._standbySocket.ready
    assert isinstance(ready, _publishing.ReadyPort)
    descriptor = ready.listening.fileno()
    published = port._standbySocket.publish()
    port._elected(published)
    assert port.role == HOST
    [(adopted, family, _)] = reactor.adoptedPorts
    assert (adopted, family) == (descriptor, socket.AF_INET)
    assert ready.listening.fileno() == -1
    assert port.secret == ready.secret
    assert readPortFile(paths.port).port == ready.port
    stopped = port.stopListening()
    reactor.advance(0)
    assert stopped.called
    assert os.listdir(channelDirectory) == ["jobs.lock"]
    assert not port._election.holding


def test_tcpStandbyStoppingRemovesItsReadyPort(channelDirectory: str) -> None:
    port, holder = standingByOverTCP(channelDirectory)
    ready = port._standbySocket.ready
    assert isinstance(ready, _publishing.ReadyPort)
    port.stopListening()
    assert ready.listening.fileno() == -1
    assert port._standbySocket.ready is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOOPBACK, ready.port), 5).close()
    holder.release()
    assert os.listdir(channelDirectory) == ["jobs.lock"]


def test_tcpPortPublishedAfterStoppingIsWithdrawn(channelDirectory: str) -> None:
    """
    A port its election thread published after the standby stopped is
    withdrawn once the reactor thread hears of it: port file removed,
    socket closed, lock given up.
    """
    reactor = MemoryReactorClock()
    paths = channelPaths("jobs", channelDirectory)
    port = ChannelPort(reactor, "jobs", paths, App, 10, transport="tcp")
    port.role = _host.STANDBY
    port._standbySocket.prepare()
    assert port._election.tryNow()
    published = port._standbySocket.publish()
    assert isinstance(published, _publishing.PublishedPort)
    port.stopListening()
    assert os.path.exists(paths.port)
    port._elected(published)
    assert published.listening.fileno() == -1
    assert os.listdir(channelDirectory) == ["jobs.lock"]
    assert not port._election.holding
    assert port.role == _host.STOPPED


def test_readyPortFileGoneIsWrittenAfresh(channelDirectory: str) -> None:
    """
    If the ready port file was removed (or replaced) under the standby, the
    winner closes its port and publishes a new one, as it would have
    without one.
    """
    path = channelPaths("jobs", channelDirectory).port
    ready = _publishing.readyPort(path)
    os.unlink(ready.temporary)
    published = _publishing.listeningTCPPort(path, ready)
    assert ready.listening.fileno() == -1
    assert published.listening is not ready.listening
    assert published.listening.getsockname() == (LOOPBACK, published.port)
    assert readPortFile(path) == PortFile(published.port, published.secret, os.getpid())
    _publishing.withdrawTCPPort(published, path)
    assert published.listening.fileno() == -1
    assert os.listdir(channelDirectory) == []


def test_leftoverTemporaryPortFilesAreRemovedAfterTakingOver(
    channelDirectory: str,
) -> None:
    """
    A TCP standby killed with its ready port file (or a host killed between
    writing its port file and renaming it) leaves the file; the host
    removes it at its next check (its own channel's only, and not a live
    standby's), and leaves alone what is not a regular file.
    """
    paths = channelPaths("jobs", channelDirectory)
    prefix = _temporary.temporaryPrefix(paths.port)
    leftover = prefix + "99999999-dead"
    live = prefix + f"{os.getpid()}-live"
    other = _temporary.temporaryPrefix(paths.socket) + "99999999-dead"
    for path in (leftover, live, other):
        with open(path, "w") as f:
            f.write("{}")
    target = os.path.join(channelDirectory, "target")
    with open(target, "w") as f:
        f.write("kept")
    link = prefix + "99999997-dead"
    os.symlink(target, link)
    reactor = MemoryReactorClock()
    port = ChannelPort(reactor, "jobs", paths, App, 10, transport="tcp")
    port.role = _host.STANDBY
    assert port._election.tryNow()
    port._elected()
    assert port.role == HOST
    assert os.path.exists(leftover)
    reactor.advance(_publishing.PUBLISH_CHECK_INTERVAL)
    assert not os.path.exists(leftover)
    assert os.path.exists(live) and os.path.exists(other)
    assert os.path.islink(link)
    with open(target) as f:
        assert f.read() == "kept"
    assert readPortFile(paths.port).secret == port.secret
    stopped = port.stopListening()
    reactor.advance(0)
    assert stopped.called
    assert not os.path.exists(paths.port)


def test_readySocketGoneIsBoundAfresh(channelDirectory: str) -> None:
    """
    If the ready socket's file was removed (or replaced) under the standby,
    the winner binds a new socket, as it would have without one.
    """
    path = channelPaths("jobs", channelDirectory).socket
    ready = _publishing.readySocket(path)
    assert ready is not None
    os.unlink(ready.temporary)
    published = _publishing.listeningUnixSocket(path, ready)
    assert ready.listening.fileno() == -1
    assert published.listening is not ready.listening
    info = os.lstat(path)
    assert (info.st_dev, info.st_ino) == published.identity
    probe = socket.socket(socket.AF_UNIX)
    probe.connect(path)
    probe.close()
    _publishing.withdrawUnixSocket(published, path)
    assert os.listdir(channelDirectory) == []


def test_noRoomForATemporaryNameBindsInPlace(
    channelDirectory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Where no temporary socket can be made for want of an inode, the holder
    removes the dead host's socket and binds in its place, mode 0600; any
    other error is raised.
    """
    path = channelPaths("jobs", channelDirectory).socket
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()

    def full(path: str) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_publishing, "readySocket", full)
    published = _publishing.listeningUnixSocket(path)
    info = os.lstat(path)
    assert (info.st_dev, info.st_ino) == published.identity
    assert stat.S_IMODE(info.st_mode) == 0o600
    probe = socket.socket(socket.AF_UNIX)
    probe.connect(path)
    probe.close()
    _publishing.withdrawUnixSocket(published, path)
    assert os.listdir(channelDirectory) == []

    def refused(path: str) -> Any:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(_publishing, "readySocket", refused)
    with pytest.raises(PermissionError):
        _publishing.listeningUnixSocket(path)


# The reactor's shutdown


class TriggerReactor(MemoryReactorClock):
    """
    A memory reactor whose system event triggers can be removed.
    """

    def addSystemEventTrigger(  # type: ignore[override]
        self, phase: str, eventType: str, callable: Any, *args: Any, **kw: Any
    ) -> tuple[str, str, Any]:
        super().addSystemEventTrigger(phase, eventType, callable, *args, **kw)
        return (phase, eventType, callable)

    def removeSystemEventTrigger(self, triggerID: tuple[str, str, Any]) -> None:
        phase, eventType, callable = triggerID
        triggers = self.triggers[phase][eventType]
        triggers[:] = [t for t in triggers if t[0] != callable]


def shutdownTriggers(reactor: MemoryReactorClock) -> list[Any]:
    return [
        trigger[0] for trigger in reactor.triggers.get("before", {}).get("shutdown", [])
    ]


def test_hostHandsOverWhenTheReactorStops(channelDirectory: str) -> None:
    """
    When the reactor stops, a host stops listening (and so releases the
    lock) before the process exits: a standby takes over at once, instead
    of when the process is gone.  The reactor waits for the handover.
    """
    reactor = MemoryReactorClock()
    paths = channelPaths("jobs", channelDirectory)
    port = ChannelPort(reactor, "jobs", paths, AppFactory(), 10)
    port.startListening()
    assert port.role == HOST
    [trigger] = shutdownTriggers(reactor)
    handedOver = trigger()
    reactor.advance(0)
    assert handedOver.called
    assert port.role == _host.STOPPED
    assert not os.path.exists(paths.socket)
    nextHost = HostElection(reactor, paths.lock, lambda prepared: None)
    assert nextHost.tryNow()
    nextHost.release()


def test_standbyStopsWaitingWhenTheReactorStops(channelDirectory: str) -> None:
    port, holder = standingBy(channelDirectory)
    [trigger] = shutdownTriggers(port.reactor)
    assert trigger() is not None
    assert port.role == _host.STOPPED
    assert not port._election.waiting
    holder.release()


def test_stoppedPortForgetsItsShutdownTrigger(channelDirectory: str) -> None:
    """
    A port stopped by its owner no longer acts at shutdown; one started
    again does, once.
    """
    reactor = TriggerReactor()
    port = ChannelPort(
        reactor, "jobs", channelPaths("jobs", channelDirectory), AppFactory(), 10
    )
    port.startListening()
    port.stopListening()
    reactor.advance(0)
    assert shutdownTriggers(reactor) == []
    port.startListening()
    port.startListening()
    assert len(shutdownTriggers(reactor)) == 1
    port.stopListening()
    reactor.advance(0)
    assert shutdownTriggers(reactor) == []
