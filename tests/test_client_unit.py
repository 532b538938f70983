"""
Unit tests of the client's state machine: L{ChannelClientTransport},
L{_ClientLink} and L{ChannelReconnectingFactory}, driven by hand with a
memory reactor and string transports.  No sockets, no sleeps.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.interfaces import IConsumer, ITransport
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_channel import (
    ChannelAddress,
    ChannelBufferFullError,
    ChannelClientTransport,
    ChannelClosedError,
    ChannelHostLostError,
    ChannelUnreachableError,
    IChannelLinkObserver,
    _auth,
    _client,
    _reconnection,
    _wire,
)
from twisted_channel._address import HOST
from twisted_channel._client import (
    CLOSED,
    CONNECTED,
    CONNECTING,
    LINK_HANDSHAKE_TIMEOUT,
)
from twisted_channel._clientsession import EAGER_ASSUMED_LIMIT
from twisted_channel._credentials import PeerCredentials
from twisted_channel._pending import PendingWrites

from ._support.clientlinks import (
    HOST_PID,
    SOCKET,
    LinkTransport,
    Observer,
    Producer,
    Recorder,
    RecordingFactory,
    Replier,
    WaitingRead,
    ack,
    connected,
    loseLink,
    makeClient,
    openLink,
    sent,
    sentData,
    welcome,
)


@pytest.fixture(autouse=True)
def noPeerCredentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    String transports have no socket to ask the kernel about.
    """
    monkeypatch.setattr(
        _client, "peerCredentials", lambda handle: PeerCredentials(None, None)
    )


# Interfaces and the hello


def test_interfaces() -> None:
    client, _, _ = makeClient()
    assert verifyObject(ITransport, client)
    assert verifyObject(IConsumer, client)
    assert client.state == CONNECTING
    assert not client.closed
    assert "jobs" in repr(client)


def test_hello() -> None:
    """
    A new link says hello with the connection's id, this process's pid, the
    size limit and the oldest unacknowledged message.
    """
    client, _, _ = makeClient(maxMessageSize=777)
    client.write(b"a")
    client.write(b"b")
    client.pending.acknowledge(1)
    link, transport = openLink(client)
    [(kind, body), message] = sent(transport)
    assert kind == _wire.HELLO
    hello = _wire.decodeHello(body)
    assert hello == _wire.Hello(client.clientId, os.getpid(), 777, 2, _wire.FLAG_EAGER)
    # Eager: what it holds goes with the hello.
    assert message == (_wire.DATA, b"b")
    assert len(client.clientId) == 16
    assert client.state == CONNECTING


def test_helloWithRealHandleLackingCredentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    A handle that cannot report peer credentials is not an obstacle: the
    link says hello all the same.
    """
    from twisted_channel import _credentials

    monkeypatch.setattr(_client, "peerCredentials", _credentials.peerCredentials)
    client, _, _ = makeClient()
    link, transport = openLink(client)
    [(kind, _)] = sent(transport)
    assert kind == _wire.HELLO
    assert not transport.disconnecting


def test_hostOfAnotherUserRefused(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A socket served by another uid is dropped without a hello.
    """
    monkeypatch.setattr(
        _client, "peerCredentials", lambda handle: PeerCredentials(99, os.getuid() + 1)
    )
    client, _, reactor = makeClient()
    link, transport = openLink(client)
    assert transport.value() == b""
    assert transport.disconnecting
    assert reactor.getDelayedCalls() == []


# Buffering and sending


def test_writesBeforeLinkBufferedThenSentInOneWrite() -> None:
    """
    Writes made while no host is reachable are held, then sent in order
    with the hello of the next link, in a single call (a C{write} of the
    frames joined, as small as these are; else a C{writeSequence}),
    without waiting for the welcome; the welcome sends nothing more.
    """
    client, _, _ = makeClient()
    for payload in (b"one", b"two", b"three"):
        client.write(payload)
    assert len(client.pending) == 3
    link, transport = openLink(client)
    assert len(transport.writes) == 1
    assert transport.sequences == []
    frames = sent(transport)
    assert frames[0][0] == _wire.HELLO
    assert frames[1:] == [(_wire.DATA, p) for p in (b"one", b"two", b"three")]
    transport.sequences.clear()
    welcome(link)
    assert transport.value() == b""
    assert client.state == CONNECTED
    assert client.link is link
    assert len(client.pending) == 3


def test_largeWritesBeforeLinkSentUnjoined() -> None:
    """
    Writes made before the link that take 4 KiB or more leave with the hello
    in a single C{writeSequence}: header and payload apart, not copied into
    one piece.
    """
    client, _, _ = makeClient(maxBufferSize=8000)
    payloads = [bytes([97 + i]) * 900 for i in range(5)]
    for payload in payloads:
        client.write(payload)
    _, transport = openLink(client)
    assert transport.writes == []
    [chunks] = transport.sequences
    assert all(payload in chunks for payload in payloads)
    frames = sent(transport)
    assert frames[0][0] == _wire.HELLO
    assert frames[1:] == [(_wire.DATA, p) for p in payloads]


def test_writesBetweenHelloAndWelcomeFollowTheEagerOnes() -> None:
    """
    Messages written after an eager hello, before its welcome, are sent on
    the welcome, after those that went with the hello.
    """
    client, _, _ = makeClient()
    client.write(b"one")
    link, transport = openLink(client)
    transport.clear()
    client.write(b"two")
    client.write(b"three")
    welcome(link)
    assert sentData(transport) == [b"two", b"three"]
    assert len(client.pending) == 3


def test_notEagerWhenAMessageMayBeOverTheHostsLimit() -> None:
    """
    A held message larger than a host is assumed to take (before any
    welcome: EAGER_ASSUMED_LIMIT) makes the hello wait for the welcome,
    which names the host's limit; then the rest is sent.
    """
    large = b"x" * (EAGER_ASSUMED_LIMIT + 1)
    client, _, _ = makeClient(
        maxMessageSize=EAGER_ASSUMED_LIMIT * 2, maxBufferSize=EAGER_ASSUMED_LIMIT * 4
    )
    client.write(b"small")
    client.write(large)
    link, transport = openLink(client)
    [(kind, body)] = sent(transport)
    assert kind == _wire.HELLO
    assert not _wire.decodeHello(body).flags & _wire.FLAG_EAGER
    link.dataReceived(
        _wire.encodeWelcome(_wire.Welcome(0, HOST_PID, EAGER_ASSUMED_LIMIT * 2))
    )
    assert sentData(transport) == [b"small", large]
    # That host takes larger messages: the next hello is eager again.
    loseLink(link)
    second, secondTransport = openLink(client)
    frames = sent(secondTransport)
    assert _wire.decodeHello(frames[0][1]).flags & _wire.FLAG_EAGER
    assert frames[1:] == [(_wire.DATA, b"small"), (_wire.DATA, large)]


def test_eagerLinkRefusedThenNextWaitsForWelcome() -> None:
    """
    A host that refuses an eager link (a message over its limit, say) makes
    the next link wait for the welcome, which says what the host takes.
    """
    client, protocol, _ = makeClient()
    client.write(b"m1")
    link, transport = openLink(client)
    transport.clear()
    link.dataReceived(_wire.encodeFrame(_wire.ERROR, b"message of 2 bytes is over"))
    assert transport.disconnecting
    loseLink(link)
    second, secondTransport = openLink(client)
    [(kind, body)] = sent(secondTransport)
    assert not _wire.decodeHello(body).flags & _wire.FLAG_EAGER
    welcome(second)
    assert sentData(secondTransport) == [b"m1"]
    assert protocol.lost == []


def test_welcomeBeyondEagerMessagesIsBroken() -> None:
    """
    A host whose welcome claims messages this link never sent is broken:
    the link is dropped and the messages kept.
    """
    client, _, _ = makeClient()
    client.write(b"m1")
    link, transport = openLink(client)
    transport.clear()
    welcome(link, resumeAfter=2)
    assert transport.disconnecting
    assert client.state == CONNECTING
    assert len(client.pending) == 1


def test_welcomeResumeAfterDropsDelivered() -> None:
    """
    A welcome saying the host already has the first k messages makes the
    client forget them and send only the rest.
    """
    client, _, _ = makeClient()
    for i in range(1, 6):
        client.write(b"m%d" % i)
    # Waiting for the welcome (a host refused an eager hello before).
    client.session.eagerRefused()
    link, transport = openLink(client)
    transport.clear()
    welcome(link, resumeAfter=2)
    assert sentData(transport) == [b"m3", b"m4", b"m5"]
    assert client.pending.firstSequence == 3
    assert len(client.pending) == 3
    # An eager link: all five went with the hello; the welcome sends none.
    loseLink(link)
    second, secondTransport = openLink(client)
    secondTransport.clear()
    welcome(second, resumeAfter=4)
    assert secondTransport.value() == b""
    assert client.pending.firstSequence == 5


def test_welcomeWithNothingToSend() -> None:
    """
    With nothing buffered, a welcome sends nothing.
    """
    client, _, _ = makeClient()
    link, transport = openLink(client)
    transport.clear()
    welcome(link)
    assert transport.value() == b""
    assert transport.sequences == []


def test_writesWhileConnectedLeaveTogetherAtTheEndOfTheTurn() -> None:
    """
    Messages written while a link is up go to its transport in one call, at
    the end of the reactor turn that wrote them.
    """
    client, _, reactor = makeClient()
    link, transport = connected(client)
    client.write(b"now")
    client.writeSequence([b"a", b"b", b"c"])
    client.write(bytearray(b"ba"))
    client.write(memoryview(b"mv"))
    assert transport.value() == b""
    reactor.advance(0)
    assert transport.sequences == []
    assert sentData(transport) == [b"now", b"abc", b"ba", b"mv"]
    assert client.pending.resumeAfter(0) == [b"now", b"abc", b"ba", b"mv"]
    reactor.advance(0)
    assert transport.value() == b""


def test_replyInDataReceivedLeavesWithTheRead() -> None:
    """
    What the application writes while handling a message from the host is
    handed over at the end of that read, without waiting for the turn to
    end.
    """
    client, protocol, reactor = makeClient(protocol=Replier())
    link, transport = connected(client)
    link.dataReceived(_wire.encodeFrame(_wire.DATA, b"ping"))
    assert sentData(transport) == [b"re:ping"]
    # Nothing was scheduled for it: the stall check is the only timer.
    assert reactor.getDelayedCalls() == [client.reconnection._deadlineCall]


def test_replyBeforeABrokenFrameLeavesAtTheEndOfTheTurn() -> None:
    """
    A read that ends early (a frame the client cannot take) does not strand
    what the application wrote while handling it: that is flushed at the
    end of the turn, as any write is, and stays pending for the next link.
    """
    client, protocol, reactor = makeClient(protocol=Replier())
    link, transport = connected(client)
    link.dataReceived(
        _wire.encodeFrame(_wire.DATA, b"ping") + _wire.encodeFrame(_wire.HELLO, b"")
    )
    assert transport.disconnecting
    reactor.advance(0)
    assert sentData(transport) == [b"re:ping"]
    assert list(client.pending.messages) == [b"re:ping"]


def test_largeWriteIsNotCopied() -> None:
    """
    A large payload goes to the link as its header and itself, not joined.
    """
    client, _, reactor = makeClient(maxMessageSize=100_000, maxBufferSize=400_000)
    link, transport = openLink(client)
    welcome(link, maxMessageSize=100_000)
    transport.clear()
    transport.sequences.clear()
    payload = b"p" * 50_000
    client.write(payload)
    reactor.advance(0)
    [[header, sentPayload]] = transport.sequences
    assert header == _wire.frameHeader(_wire.DATA, len(payload))
    assert sentPayload is payload


def test_unflushedWritesAreResentAfterLinkLoss() -> None:
    """
    Writes not yet handed to a link that is lost are sent on the next one,
    in order, once.
    """
    client, _, reactor = makeClient()
    link, transport = connected(client)
    client.write(b"one")
    client.write(b"two")
    loseLink(link)
    reactor.advance(0)
    assert transport.value() == b""
    second, secondTransport = openLink(client)
    assert sent(secondTransport)[1:] == [(_wire.DATA, b"one"), (_wire.DATA, b"two")]
    welcome(second)
    reactor.advance(0)
    assert secondTransport.value() == b""


def test_ackFreesPending() -> None:
    """
    Cumulative ACKs free what they cover; stale ones change nothing.
    """
    client, _, _ = makeClient()
    link, transport = connected(client)
    for payload in (b"a", b"bb", b"ccc"):
        client.write(payload)
    ack(link, 2)
    assert len(client.pending) == 1
    assert client.pending.byteCount == 3
    ack(link, 1)
    assert len(client.pending) == 1
    ack(link, 3)
    assert len(client.pending) == 0
    assert client.state == CONNECTED
    assert not transport.disconnecting


def test_replyThenItsAckInOneRead() -> None:
    """
    A host's reply and the acknowledgement after it, in one read (a round
    trip's): the answer leaves with the read, and the acknowledgement frees
    what it covers.
    """
    client, protocol, _ = makeClient(protocol=Replier())
    link, transport = connected(client)
    client.write(b"ping")
    client.flush()
    transport.clear()
    link.dataReceived(_wire.encodeFrame(_wire.DATA, b"pong") + _wire.encodeAck(1))
    assert protocol.received == [b"pong"]
    assert sentData(transport) == [b"re:pong"]
    assert list(client.pending.messages) == [b"re:pong"]
    assert client.state == CONNECTED
    assert not transport.disconnecting


def test_replyThenAckBeyondNewestDropsLinkAfterTheAnswer() -> None:
    """
    An acknowledgement after a reply that covers a message never sent: the
    answer has left, then the link is dropped, every message kept.
    """
    client, _, _ = makeClient(protocol=Replier())
    link, transport = connected(client)
    client.write(b"ping")
    client.flush()
    transport.clear()
    link.dataReceived(_wire.encodeFrame(_wire.DATA, b"pong") + _wire.encodeAck(5))
    assert sentData(transport) == [b"re:pong"]
    assert transport.disconnecting
    assert list(client.pending.messages) == [b"ping", b"re:pong"]


def test_loseConnectionOnAReplyThenItsAck() -> None:
    """
    An application that closes on its last reply: the acknowledgement in
    the same read, after that reply, ends the connection.
    """

    class CloseOnReply(Recorder):
        def dataReceived(self, data: bytes) -> None:
            super().dataReceived(data)
            self.transport.loseConnection()  # type: ignore[union-attr]

    client, protocol, _ = makeClient(protocol=CloseOnReply())
    link, transport = connected(client)
    client.write(b"ping")
    client.flush()
    link.dataReceived(_wire.encodeFrame(_wire.DATA, b"pong") + _wire.encodeAck(1))
    assert client.state == CLOSED
    [reason] = protocol.lost
    assert reason.check(error.ConnectionDone)


def test_ackBeyondNewestDropsLink() -> None:
    """
    A host acknowledging a message never sent is broken: the link is
    dropped, and the messages kept.
    """
    client, _, _ = makeClient()
    link, transport = connected(client)
    client.write(b"a")
    ack(link, 2)
    assert transport.disconnecting
    assert len(client.pending) == 1


def test_lostLinkThenNewLinkResends() -> None:
    """
    When a link is lost, what its host had not acknowledged is sent again,
    in order and with later writes, on the next link.
    """
    client, protocol, reactor = makeClient()
    link, transport = connected(client)
    for i in range(1, 5):
        client.write(b"m%d" % i)
    ack(link, 1)
    loseLink(link)
    assert client.state == CONNECTING
    assert client.link is None
    assert protocol.lost == []
    # The next attempt starts at once.
    assert [c[0] for c in reactor.unixClients] == [SOCKET]
    client.write(b"m5")
    assert len(client.pending) == 4

    second, transport2 = openLink(client)
    [(kind, body), *messages] = sent(transport2)
    assert kind == _wire.HELLO
    assert _wire.decodeHello(body).firstSequence == 2
    assert _wire.decodeHello(body).clientId == client.clientId
    assert messages == [(_wire.DATA, b"m%d" % i) for i in range(2, 6)]
    # In one call (joined, as small as they are).
    assert len(transport2.writes) == 1
    assert transport2.sequences == []
    welcome(second, resumeAfter=1)
    assert transport2.value() == b""

    # The second host got two of them before that link died too: the third
    # link sends all four with its hello, and its host skips two.
    loseLink(second)
    third, transport3 = openLink(client)
    assert sent(transport3)[1:] == [(_wire.DATA, b"m%d" % i) for i in range(2, 6)]
    welcome(third, resumeAfter=3)
    assert transport3.value() == b""
    assert client.pending.firstSequence == 4
    ack(third, 5)
    assert not client.pending
    assert protocol.lost == []


def test_dataFromHost() -> None:
    """
    Each DATA frame from the host is one C{dataReceived} call.
    """
    client, protocol, _ = makeClient()
    link, _ = connected(client)
    link.dataReceived(
        _wire.encodeFrame(_wire.DATA, b"x") + _wire.encodeFrame(_wire.DATA, b"")
    )
    frame = _wire.encodeFrame(_wire.DATA, b"split")
    link.dataReceived(frame[:3])
    link.dataReceived(frame[3:])
    assert protocol.received == [b"x", b"", b"split"]


def test_welcomeAndFramesInOneRead() -> None:
    """
    A welcome followed by an ACK and DATA in one read is handled in order.
    """
    client, protocol, _ = makeClient()
    client.write(b"a")
    link, transport = openLink(client)
    assert sent(transport)[1:] == [(_wire.DATA, b"a")]
    link.dataReceived(
        _wire.encodeWelcome(_wire.Welcome(0, HOST_PID, 1000))
        + _wire.encodeAck(1)
        + _wire.encodeFrame(_wire.DATA, b"reply")
    )
    assert transport.value() == b""
    assert not client.pending
    assert protocol.received == [b"reply"]


def test_hostAddressAndWhenConnected() -> None:
    """
    Once welcomed, the peer is the host with the pid from its welcome, and
    L{whenConnected} fires with it.
    """
    client, _, _ = makeClient()
    waiting = client.whenConnected()
    assert not waiting.called
    assert client.getPeer() == ChannelAddress("jobs", SOCKET, HOST)
    link, _ = connected(client)
    expected = ChannelAddress("jobs", SOCKET, HOST, HOST_PID, None)
    assert client.getPeer() == expected
    assert waiting.result == expected
    assert client.whenConnected().result == expected
    me = client.getHost()
    assert (me.role, me.pid, me.uid) == ("client", os.getpid(), os.getuid())
    loseLink(link)
    assert client.getPeer() == ChannelAddress("jobs", SOCKET, HOST)


# Write errors


def test_writeTooLarge() -> None:
    client, _, _ = makeClient(maxMessageSize=10)
    client.write(b"x" * 10)
    with pytest.raises(ValueError, match="message of 11 bytes is over the limit"):
        client.write(b"x" * 11)
    assert len(client.pending) == 1


def test_writeText() -> None:
    client, _, _ = makeClient()
    with pytest.raises(TypeError, match="data must be bytes, not str"):
        client.write("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.write(None)  # type: ignore[arg-type]
    assert not client.pending


def test_bufferFull() -> None:
    """
    A write that would pass maxBufferSize is refused and buffers nothing;
    acknowledgements make room again.  Each message counts its payload and
    PendingWrites.MESSAGE_OVERHEAD, so small messages are capped too.
    """
    overhead = PendingWrites.MESSAGE_OVERHEAD
    cap = 2 * (100 + overhead) + 50 + overhead
    client, _, _ = makeClient(maxMessageSize=100, maxBufferSize=cap)
    client.write(b"x" * 100)
    client.write(b"x" * 100)
    with pytest.raises(ChannelBufferFullError, match="2 unacknowledged messages"):
        client.write(b"x" * 51)
    client.write(b"x" * 50)
    assert client.pending.byteCount == 250
    assert client.pending.footprint == cap
    with pytest.raises(ChannelBufferFullError):
        client.write(b"x")
    link, _ = connected(client)
    ack(link, 1)
    client.write(b"y" * 100)
    assert client.pending.byteCount == 250
    assert client.pending.footprint == cap


def test_writeAfterClose() -> None:
    client, _, reactor = makeClient()
    client.write(b"a")
    client.loseConnection()
    with pytest.raises(ChannelClosedError, match="closing"):
        client.write(b"b")
    client.abortConnection()
    reactor.advance(0)
    with pytest.raises(ChannelClosedError, match="closed"):
        client.write(b"b")


# Closing


def test_loseConnectionWaitsForAcks() -> None:
    """
    L{loseConnection} closes once every message is acknowledged, with
    L{ConnectionDone}.
    """
    client, protocol, _ = makeClient()
    link, transport = connected(client)
    client.write(b"a")
    client.write(b"b")
    client.loseConnection()
    assert client.disconnecting
    assert client.state == CONNECTED
    assert protocol.lost == []
    ack(link, 1)
    assert protocol.lost == []
    assert not transport.disconnecting
    ack(link, 2)
    assert client.state == CLOSED
    [reason] = protocol.lost
    assert reason.check(error.ConnectionDone)
    assert transport.disconnecting
    assert client.factory.stopped == 1


def test_loseConnectionWithNothingPending() -> None:
    client, protocol, reactor = makeClient()
    waiting = client.whenConnected()
    failures: list[Failure] = []
    waiting.addErrback(failures.append)
    client.loseConnection()
    # Not from within loseConnection: as on TCP, at the next reactor turn.
    assert protocol.lost == []
    reactor.advance(0)
    [reason] = protocol.lost
    assert reason.check(error.ConnectionDone)
    assert failures[0].check(ChannelClosedError)
    client.loseConnection()
    assert len(protocol.lost) == 1
    assert client.whenConnected().called


def test_loseConnectionWhileConnectingSendsOnWelcome() -> None:
    """
    Messages written before L{loseConnection} are still delivered when a
    host turns up, and the connection closes after their ACK.
    """
    client, protocol, _ = makeClient()
    client.write(b"late")
    client.loseConnection()
    link, transport = openLink(client)
    assert sent(transport)[1:] == [(_wire.DATA, b"late")]
    welcome(link)
    assert protocol.lost == []
    ack(link, 1)
    assert protocol.lost[0].check(error.ConnectionDone)


def test_loseConnectionAlreadyDeliveredClosesOnWelcome() -> None:
    """
    If the new host says it already has everything, the closing connection
    ends at its welcome.
    """
    client, protocol, _ = makeClient()
    client.write(b"a")
    client.loseConnection()
    link, _ = openLink(client)
    welcome(link, resumeAfter=1)
    assert protocol.lost[0].check(error.ConnectionDone)


def test_loseConnectionGivesUpAfterTimeout() -> None:
    """
    A host that never acknowledges does not hold a closing connection open
    for ever: its link is dropped after the stall timeout, and with no
    other host the connection ends after its timeout.
    """
    client, protocol, reactor = makeClient(timeout=3)
    link, transport = connected(client)
    client.write(b"a")
    client.loseConnection()
    reactor.advance(2.9)
    assert protocol.lost == []
    assert not transport.disconnecting
    reactor.advance(0.2)
    assert transport.disconnecting
    loseLink(link)
    assert protocol.lost == []
    reactor.advance(3.1)
    [reason] = protocol.lost
    assert reason.check(ChannelUnreachableError)
    assert reason.value.undelivered == 1


def test_loseConnectionWaitsForSlowHost() -> None:
    """
    A host that keeps acknowledging, however slowly, is waited for beyond
    the timeout: closing never drops messages a live host is working on.
    """
    client, protocol, reactor = makeClient(timeout=1)
    link, transport = connected(client)
    for _ in range(10):
        client.write(b"m")
    client.loseConnection()
    for sequence in range(1, 10):
        reactor.advance(1.5)
        ack(link, sequence)
        assert protocol.lost == []
    assert not transport.disconnecting
    ack(link, 10)
    [reason] = protocol.lost
    assert reason.check(error.ConnectionDone)


def test_abortConnection() -> None:
    client, protocol, reactor = makeClient()
    link, transport = connected(client)
    client.write(b"a")
    client.abortConnection()
    assert protocol.lost == []
    reactor.advance(0)
    [reason] = protocol.lost
    assert reason.check(error.ConnectionAborted)
    assert "1 message(s) not acknowledged" in reason.getErrorMessage()
    assert transport.disconnecting
    # The link's end after that changes nothing.
    loseLink(link)
    assert len(protocol.lost) == 1


def test_timeoutWithNoHost() -> None:
    """
    With no host for C{timeout} seconds, the connection ends with
    L{ChannelUnreachableError} saying how many messages were not delivered.
    """
    client, protocol, reactor = makeClient(timeout=5)
    client.startConnecting()
    for payload in (b"a", b"b", b"c"):
        client.write(payload)
    waiting = client.whenConnected()
    failures: list[Failure] = []
    waiting.addErrback(failures.append)
    reactor.advance(4.99)
    assert protocol.lost == []
    reactor.advance(0.02)
    [reason] = protocol.lost
    assert reason.check(ChannelUnreachableError)
    assert reason.check(error.ConnectionLost)
    assert reason.value.undelivered == 3
    assert reason.value.name == "jobs"
    assert reason.value.timeout == 5
    assert "3 written message(s) were not acknowledged" in str(reason.value)
    assert failures[0].check(ChannelClosedError)
    assert client.state == CLOSED
    assert client.factory.stopped == 1
    assert reactor.getDelayedCalls() == []


def failLatestAttempt(reactor: MemoryReactorClock) -> None:
    """
    Make the most recent connection attempt fail, as when nobody listens.
    """
    factory = reactor.unixClients[-1][1]
    factory.clientConnectionFailed(
        reactor.connectors[-1], Failure(error.ConnectionRefusedError())
    )


def test_failedAttemptsRetryQuicklyUntilTimeout() -> None:
    """
    Refused attempts are retried after milliseconds, backing off to at most
    C{maxDelay}, until the timeout ends the connection.
    """
    client, protocol, reactor = makeClient(timeout=2)
    client.write(b"a")
    client.startConnecting()
    assert len(reactor.unixClients) == 1
    failLatestAttempt(reactor)
    # Two calls are now scheduled: the give-up timer and a quick retry.
    waits = sorted(c.getTime() - reactor.seconds() for c in reactor.getDelayedCalls())
    assert len(waits) == 2
    assert waits[0] <= 0.0024
    assert waits[1] == 2
    while protocol.lost == []:
        attempts = len(reactor.unixClients)
        reactor.advance(client.reconnection.strategy.maxDelay)
        if protocol.lost:
            break
        assert len(reactor.unixClients) == attempts + 1
        failLatestAttempt(reactor)
    assert 2 <= reactor.seconds() <= 2 + client.reconnection.strategy.maxDelay
    assert protocol.lost[0].check(ChannelUnreachableError)
    assert protocol.lost[0].value.undelivered == 1
    assert reactor.getDelayedCalls() == []


def test_timeoutZeroNeverGivesUp() -> None:
    """
    With timeout=0 a client retries for ever and keeps its messages.
    """
    client, protocol, reactor = makeClient(timeout=0)
    client.write(b"a")
    client.startConnecting()
    for _ in range(500):
        failLatestAttempt(reactor)
        assert len(reactor.getDelayedCalls()) == 1
        reactor.advance(client.reconnection.strategy.maxDelay)
    reactor.advance(10**6)
    assert protocol.lost == []
    assert client.state == CONNECTING
    assert len(client.pending) == 1
    assert len(reactor.unixClients) == 501

    # A host at last: the latest attempt connects, and the message goes.
    wrapper = reactor.unixClients[-1][1].buildProtocol(None)
    transport = LinkTransport()
    wrapper.makeConnection(transport)
    assert sent(transport)[1:] == [(_wire.DATA, b"a")]
    wrapper.dataReceived(_wire.encodeWelcome(_wire.Welcome(0, HOST_PID, 1000)))
    assert client.state == CONNECTED
    assert (
        client.link is not None
        and client.link.connector is client.reconnection.connector
    )


def test_connectedLinkCancelsGiveUp() -> None:
    """
    A welcome stops the give-up timer; losing the link starts it again.
    """
    client, protocol, reactor = makeClient(timeout=5)
    client.startConnecting()
    wrapper = reactor.unixClients[-1][1].buildProtocol(None)
    wrapper.makeConnection(LinkTransport())
    wrapper.dataReceived(_wire.encodeWelcome(_wire.Welcome(0, HOST_PID, 1000)))
    assert reactor.getDelayedCalls() == []
    reactor.advance(100)
    assert protocol.lost == []
    loseLink(client.link)  # type: ignore[arg-type]
    reactor.advance(5.01)
    assert protocol.lost[0].check(ChannelUnreachableError)


# The reconnection strategy


class FakeConnector:
    def __init__(self) -> None:
        self.connects = 0

    def connect(self) -> None:
        self.connects += 1


def scheduledWaits(
    client: ChannelClientTransport, reactor: MemoryReactorClock, count: int
) -> list[float]:
    connector = FakeConnector()
    waits = []
    for _ in range(count):
        before = set(reactor.getDelayedCalls())
        client.reconnection.strategy.retry(connector)  # type: ignore[arg-type]
        [call] = set(reactor.getDelayedCalls()) - before
        waits.append(call.getTime() - reactor.seconds())
    reactor.advance(10)
    assert connector.connects == count
    return waits


def test_strategyDelays() -> None:
    """
    Retries start after about two milliseconds and back off, with jitter,
    never below zero nor above C{maxDelay}.
    """
    client, _, reactor = makeClient()
    strategy = client.reconnection.strategy
    waits = scheduledWaits(client, reactor, 40)
    assert strategy.initialDelay * 0.8 <= waits[0] <= strategy.initialDelay * 1.2
    assert waits[0] < 0.01
    expected = strategy.initialDelay
    for wait in waits:
        assert 0 <= wait <= strategy.maxDelay
        assert expected * (1 - strategy.jitter) <= wait + 1e-12
        assert wait <= expected * (1 + strategy.jitter) + 1e-12
        expected = min(expected * strategy.factor, strategy.maxDelay)
    assert waits[-1] >= strategy.maxDelay * (1 - strategy.jitter)
    strategy.resetDelay()
    assert scheduledWaits(client, reactor, 1)[0] < 0.01


@pytest.mark.parametrize("pick", [min, max])
def test_strategyJitterClamped(pick: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Even extreme jitter stays in [0, maxDelay].
    """
    monkeypatch.setattr(_reconnection.random, "uniform", lambda a, b: pick(a, b))
    client, _, reactor = makeClient()
    client.reconnection.strategy.jitter = 1.5
    for wait in scheduledWaits(client, reactor, 20):
        assert 0 <= wait <= client.reconnection.strategy.maxDelay
    assert max(scheduledWaits(client, reactor, 1)) in (
        0.0,
        client.reconnection.strategy.maxDelay,
    )


def test_strategyStopped() -> None:
    """
    After L{stopTrying} nothing is scheduled; without a connector at all,
    retry says so.
    """
    client, _, reactor = makeClient()
    client.reconnection.strategy.stopTrying()
    client.reconnection.strategy.retry(FakeConnector())  # type: ignore[arg-type]
    assert reactor.getDelayedCalls() == []
    client.reconnection.strategy.continueTrying = True
    with pytest.raises(ValueError, match="no connector"):
        client.reconnection.strategy.retry()


def test_stopTryingCancelsTheScheduledRetry() -> None:
    """
    The strategy keeps the retry it scheduled in an attribute of its own
    (not L{ReconnectingClientFactory}'s private one), and L{stopTrying}
    and L{cancelRetry} still cancel it.
    """
    client, _, reactor = makeClient()
    strategy = client.reconnection.strategy
    connector = FakeConnector()
    for stop in (strategy.cancelRetry, strategy.stopTrying):
        strategy.retry(connector)  # type: ignore[arg-type]
        scheduled = strategy.nextAttempt
        assert scheduled is not None and scheduled.active()
        stop()
        assert not scheduled.active() and strategy.nextAttempt is None
    reactor.advance(10)
    assert connector.connects == 0


def test_unwelcomedLinkLostRetries() -> None:
    """
    A link that never got its welcome counts as a failed attempt: another
    is made after a short delay, not at once.
    """
    client, protocol, reactor = makeClient()
    link, transport = openLink(client)
    loseLink(link)
    assert reactor.unixClients == []
    [call] = reactor.getDelayedCalls()
    assert call.getTime() - reactor.seconds() <= 0.0024
    reactor.advance(0.01)
    assert len(reactor.unixClients) == 1
    assert protocol.lost == []


# Misbehaving hosts


def test_handshakeTimeout() -> None:
    """
    A host that does not answer the hello in time has its link dropped.
    """
    client, _, reactor = makeClient(timeout=0)
    link, transport = openLink(client)
    reactor.advance(LINK_HANDSHAKE_TIMEOUT - 0.01)
    assert not transport.disconnecting
    reactor.advance(0.02)
    assert transport.disconnecting
    assert client.state == CONNECTING


def test_handshakeTimeoutReadsAWaitingAnswerFirst(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    A handshake deadline that passes while the host's answer waits unread
    (this process was suspended or starved, and the reactor runs its timed
    calls before it reads) is judged again once the reactor has read: the
    welcome read then keeps the link.
    """
    client, _, reactor = makeClient(timeout=0)
    link, transport = openLink(client)
    monkeypatch.setattr(
        _client, "unreadBytes", WaitingRead(reactor, 100, lambda: welcome(link))
    )
    reactor.advance(LINK_HANDSHAKE_TIMEOUT + 5)
    assert not transport.disconnecting
    assert client.state == CONNECTED
    assert reactor.getDelayedCalls() == []


def test_handshakeTimeoutReadsOnlyOnce(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    If what was read is still no welcome, the link is dropped at once,
    whatever else waits.
    """
    client, _, reactor = makeClient(timeout=0)
    link, transport = openLink(client)
    monkeypatch.setattr(
        _client,
        "unreadBytes",
        WaitingRead(reactor, 100, lambda: link.dataReceived(b"\0\0")),
    )
    reactor.advance(LINK_HANDSHAKE_TIMEOUT + 5)
    assert transport.disconnecting
    assert client.state == CONNECTING


def test_stallCheckReadsAWaitingAnswerFirst(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A stall check that falls due while the host's acknowledgement waits
    unread reads it before judging the host; an acknowledgement still
    missing after that drops the link.
    """
    client, _, reactor = makeClient(timeout=2)
    link, transport = connected(client)
    monkeypatch.setattr(
        _reconnection, "unreadBytes", WaitingRead(reactor, 9, lambda: ack(link, 1))
    )
    client.write(b"waiting")
    reactor.advance(client.stallTimeout + 5)
    assert not transport.disconnecting
    assert len(client.pending) == 0
    monkeypatch.setattr(_reconnection, "unreadBytes", WaitingRead(reactor, 9))
    client.write(b"never acknowledged")
    reactor.advance(client.stallTimeout + 5)
    assert transport.disconnecting


def test_welcomeCancelsHandshakeTimeout() -> None:
    client, _, reactor = makeClient(timeout=0)
    link, transport = connected(client)
    assert reactor.getDelayedCalls() == []
    reactor.advance(LINK_HANDSHAKE_TIMEOUT * 2)
    assert not transport.disconnecting


def test_errorFrameDropsLink() -> None:
    client, protocol, _ = makeClient()
    link, transport = openLink(client)
    link.dataReceived(_wire.encodeError("go away"))
    assert transport.disconnecting
    assert client.state == CONNECTING
    assert protocol.lost == []


@pytest.mark.parametrize(
    "frame",
    [
        _wire.encodeFrame(_wire.DATA, b"early"),
        _wire.encodeAck(0),
        _wire.encodeFrame(_wire.GOODBYE),
        _wire.encodeFrame(_wire.STATUS, b"{}"),
        b"GET / HTTP/1.1\r\n\r\n",
        _wire.encodeFrame(_wire.WELCOME, b"short"),
    ],
)
def test_brokenHostBeforeWelcome(frame: bytes) -> None:
    """
    Anything but a well-formed welcome first drops the link, and delivers
    nothing to the application.
    """
    client, protocol, _ = makeClient()
    link, transport = openLink(client)
    link.dataReceived(frame)
    assert transport.disconnecting
    assert protocol.received == []
    assert client.state == CONNECTING
    assert protocol.lost == []


def test_secondWelcomeDropsLink() -> None:
    client, _, _ = makeClient()
    link, transport = connected(client)
    welcome(link)
    assert transport.disconnecting


def test_welcomeResumingBeyondWritesDropsLink() -> None:
    """
    A welcome claiming messages never written drops the link and keeps the
    messages.
    """
    client, _, _ = makeClient()
    client.write(b"a")
    link, transport = openLink(client)
    welcome(link, resumeAfter=2)
    assert transport.disconnecting
    assert len(client.pending) == 1
    assert client.state == CONNECTING


def test_hostWithSmallerLimitFailsConnection() -> None:
    """
    A host that accepts smaller messages than some already buffered ends
    the connection with a L{ValueError} saying so.
    """
    client, protocol, _ = makeClient()
    client.write(b"x" * 100)
    link, transport = openLink(client)
    welcome(link, maxMessageSize=50)
    [reason] = protocol.lost
    assert reason.check(ValueError)
    assert "at most 50 bytes" in reason.getErrorMessage()


def test_hostWithSmallerLimitClosesLink() -> None:
    client, _, _ = makeClient()
    client.write(b"x" * 100)
    link, transport = openLink(client)
    welcome(link, maxMessageSize=50)
    assert transport.disconnecting


def test_applicationErrorClosesConnection() -> None:
    """
    An application whose C{dataReceived} raises has its connection closed
    with that error.
    """

    class Broken(Recorder):
        def dataReceived(self, data: bytes) -> None:
            raise RuntimeError("app bug")

    client, protocol, _ = makeClient(protocol=Broken())
    link, transport = connected(client)
    link.dataReceived(
        _wire.encodeFrame(_wire.DATA, b"a") + _wire.encodeFrame(_wire.DATA, b"b")
    )
    [reason] = protocol.lost
    assert reason.check(RuntimeError)
    assert transport.disconnecting


def test_goodbyeEndsConnection() -> None:
    """
    A GOODBYE from the host ends the logical connection: no reconnection,
    and a L{ConnectionDone} when everything was acknowledged.
    """
    client, protocol, reactor = makeClient()
    link, transport = connected(client)
    client.write(b"a")
    ack(link, 1)
    link.dataReceived(_wire.encodeFrame(_wire.GOODBYE))
    [reason] = protocol.lost
    assert reason.check(error.ConnectionDone)
    assert client.state == CLOSED
    assert transport.disconnecting
    loseLink(link)
    assert reactor.unixClients == []
    assert reactor.getDelayedCalls() == []
    assert len(protocol.lost) == 1


def test_goodbyeWithUnacknowledged() -> None:
    """
    A GOODBYE while messages are unacknowledged ends the connection with
    L{ConnectionLost} saying how many.
    """
    client, protocol, _ = makeClient()
    link, _ = connected(client)
    client.write(b"a")
    client.write(b"b")
    link.dataReceived(
        _wire.encodeFrame(_wire.GOODBYE) + _wire.encodeFrame(_wire.DATA, b"after")
    )
    [reason] = protocol.lost
    assert reason.check(error.ConnectionLost)
    assert "2 message(s) not acknowledged" in reason.getErrorMessage()
    assert protocol.received == []


def test_pongIgnored() -> None:
    client, protocol, _ = makeClient()
    link, transport = connected(client)
    link.dataReceived(_wire.encodeFrame(_wire.PONG, b"x"))
    assert not transport.disconnecting
    assert protocol.received == []


# Link observers


def test_linkObserver() -> None:
    """
    A protocol providing L{IChannelLinkObserver} hears of each link coming
    up and going down; its C{connectionLost} only at the end.
    """
    client, protocol, reactor = makeClient(protocol=Observer())
    link, _ = connected(client)
    loseLink(link)
    second, _ = connected(client)
    assert [event for event, _ in protocol.events] == ["up", "down", "up"]
    assert protocol.events[0][1] == ChannelAddress("jobs", SOCKET, HOST, HOST_PID)
    assert protocol.events[1][1].check(error.ConnectionLost)
    assert protocol.lost == []
    client.loseConnection()
    reactor.advance(0)
    assert protocol.lost[0].check(error.ConnectionDone)
    assert [event for event, _ in protocol.events] == ["up", "down", "up"]


def test_observerClosingInLinkLost() -> None:
    """
    An observer that aborts in C{linkLost} stops the reconnection.
    """

    @implementer(IChannelLinkObserver)
    class Quitter(Observer):
        def linkLost(self, reason: Failure) -> None:
            super().linkLost(reason)
            self.transport.abortConnection()  # type: ignore[union-attr]

    client, protocol, reactor = makeClient(protocol=Quitter())
    link, _ = connected(client)
    loseLink(link)
    reactor.advance(0)
    assert client.state == CLOSED
    assert reactor.unixClients == []
    assert protocol.lost[0].check(error.ConnectionAborted)


# Producers


def test_streamingProducerPausedAndResumed() -> None:
    """
    A streaming producer is paused once unacknowledged bytes reach half the
    buffer cap, and resumed once ACKs bring them to a quarter.
    """
    step = 100 + PendingWrites.MESSAGE_OVERHEAD
    client, _, _ = makeClient(maxMessageSize=100, maxBufferSize=8 * step)
    assert (client.highWater, client.lowWater) == (4 * step, 2 * step)
    producer = Producer()
    client.registerProducer(producer, True)
    assert producer.events == []
    link, _ = connected(client)
    for _ in range(3):
        client.write(b"x" * 100)
    assert producer.events == []
    client.write(b"x" * 100)
    assert producer.events == ["pause"]
    client.write(b"x" * 100)
    client.write(b"x" * 100)
    assert producer.events == ["pause"]
    ack(link, 2)
    assert producer.events == ["pause"]
    ack(link, 3)
    assert producer.events == ["pause"]
    ack(link, 4)
    assert producer.events == ["pause", "resume"]
    ack(link, 6)
    assert producer.events == ["pause", "resume"]
    client.unregisterProducer()
    for _ in range(8):
        client.write(b"x" * 100)
    assert producer.events == ["pause", "resume"]


def test_producerRegisteredAboveHighWater() -> None:
    client, _, _ = makeClient(maxMessageSize=100, maxBufferSize=400)
    client.write(b"x" * 100)
    client.write(b"x" * 100)
    producer = Producer()
    client.registerProducer(producer, True)
    assert producer.events == ["pause"]
    with pytest.raises(RuntimeError, match="already registered"):
        client.registerProducer(Producer(), True)


def test_pullProducer() -> None:
    """
    A pull producer is asked for more at registration and after each ACK,
    unless too much is buffered: then only once ACKs bring the buffer down
    to the low-water mark.
    """
    step = 100 + PendingWrites.MESSAGE_OVERHEAD
    client, _, _ = makeClient(maxMessageSize=100, maxBufferSize=4 * step)
    assert (client.highWater, client.lowWater) == (2 * step, step)
    producer = Producer()
    client.registerProducer(producer, False)
    assert producer.events == ["resume"]
    link, _ = connected(client)
    # A link coming up is a chance to produce, too.
    assert producer.events == ["resume"] * 2
    client.write(b"x" * 100)
    ack(link, 1)
    assert producer.events == ["resume"] * 3
    for _ in range(3):
        client.write(b"x" * 100)
    assert producer.events == ["resume"] * 3
    ack(link, 2)
    assert client.pending.byteCount == 200
    assert producer.events == ["resume"] * 3
    ack(link, 3)
    assert producer.events == ["resume"] * 4


def test_producerResumedWhenWelcomeAcknowledges() -> None:
    client, _, _ = makeClient(maxMessageSize=100, maxBufferSize=1000)
    producer = Producer()
    client.registerProducer(producer, True)
    link, _ = connected(client)
    for _ in range(5):
        client.write(b"x" * 100)
    assert producer.events == ["pause"]
    # The host got them all, but its ACK was lost with the link.
    loseLink(link)
    second, _ = openLink(client)
    welcome(second, resumeAfter=5)
    assert not client.pending
    assert producer.events == ["pause", "resume"]


def test_producerStoppedWhenConnectionEnds() -> None:
    client, _, reactor = makeClient(timeout=1)
    producer = Producer()
    client.registerProducer(producer, True)
    client.startConnecting()
    reactor.advance(2)
    assert client.state == CLOSED
    assert "stop" in producer.events


# failover=close


def test_failoverCloseEndsTheConnectionWhenTheHostIsLost() -> None:
    """
    With C{failover=close}, losing the host's link ends the connection with
    L{ChannelHostLostError}, counting what no host acknowledged, and no
    other link is tried.
    """
    client, protocol, reactor = makeClient(failover="close")
    link, transport = connected(client)
    client.write(b"one")
    client.write(b"two")
    client.flush()
    ack(link, 1)
    loseLink(link)
    assert client.state == CLOSED
    [reason] = protocol.lost
    assert reason.check(ChannelHostLostError, error.ConnectionLost)
    assert reason.value.undelivered == 1
    assert reason.value.hostPid == HOST_PID
    assert "1 written message(s) were not acknowledged" in str(reason.value)
    assert reactor.tcpClients == reactor.unixClients == []
    with pytest.raises(ChannelClosedError):
        client.write(b"three")


def test_failoverCloseWaitsForTheFirstHost() -> None:
    """
    Before any host welcomed it, a C{failover=close} client waits and
    buffers as any client does: a failed attempt is not a host lost.
    """
    client, protocol, reactor = makeClient(failover="close")
    client.write(b"early")
    link, transport = openLink(client)
    link.connectionLost(Failure(error.ConnectionRefusedError()))
    assert client.state == CONNECTING
    second, secondTransport = openLink(client)
    welcome(second)
    assert client.state == CONNECTED
    assert protocol.lost == []


def test_failoverResendIsTheDefault() -> None:
    client, protocol, reactor = makeClient()
    assert client.failover == "resend"
    link, transport = connected(client)
    loseLink(link)
    assert client.state == CONNECTING
    assert protocol.lost == []


def test_secondWelcomedLinkIsRefused() -> None:
    """
    Two links in their handshake at once (a host appeared while the first
    one waited for its welcome): the first welcomed is kept, and a welcome
    on the other closes it, so that one logical connection has one link.
    """
    client, protocol, _ = makeClient()
    client.write(b"m1")
    first, firstTransport = openLink(client)
    second, secondTransport = openLink(client)
    welcome(first)
    assert client.link is first
    welcome(second)
    assert secondTransport.disconnecting
    assert not firstTransport.disconnecting
    assert client.link is first
    assert client.state == CONNECTED
    loseLink(second)
    assert client.link is first
    assert client.state == CONNECTED
    assert protocol.lost == []


# A host that refuses the link


def refusedOverTcp(
    client: ChannelClientTransport, reason: bytes, portPid: int | None
) -> None:
    """
    Open a loopback TCP link, made with the port file's C{portPid}, whose
    host answers the challenge's answer with an C{ERROR}.
    """
    link = _client._ClientLink(client, b"s" * 32, portPid=portPid)
    transport = LinkTransport()
    link.makeConnection(transport)
    link.dataReceived(_wire.encodeFrame(_wire.CHALLENGE, b"n" * _auth.NONCE_SIZE))
    link.dataReceived(_wire.encodeFrame(_wire.ERROR, reason))
    assert transport.disconnecting
    loseLink(link)


def test_refusedOverTcpNamesThePortFilesPidAndWarnsOncePerReason() -> None:
    """
    Over loopback TCP a host refuses before it has said its pid: the line
    names the pid the port file gave (else "the host"), not "pid None".
    The same refusal at each retry is one warning (then debug lines) until
    a link is welcomed; after that it is a warning again.
    """
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        client, _, _ = makeClient()
        refusedOverTcp(client, b"too many failures", 777)
        refusedOverTcp(client, b"too many failures", 777)
        refusedOverTcp(client, b"something else", None)
        link, _ = openLink(client)
        welcome(link)
        loseLink(link)
        refusedOverTcp(client, b"too many failures", 777)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    refusals = [
        (event["log_level"], formatEvent(event))
        for event in logged
        if "closed the link" in event.get("log_format", "")
    ]
    assert refusals == [
        (
            LogLevel.warn,
            "channel jobs: host pid 777 closed the link: too many failures",
        ),
        (
            LogLevel.debug,
            "channel jobs: host pid 777 closed the link: too many failures",
        ),
        (LogLevel.warn, "channel jobs: the host closed the link: something else"),
        (
            LogLevel.warn,
            "channel jobs: host pid 777 closed the link: too many failures",
        ),
    ]
    assert all("None" not in line for _, line in refusals)


def test_tcpLinkKnowsThePortFilesPid(tmp_path: Any) -> None:
    """
    Over loopback TCP each attempt reads the port file afresh, and its link
    is made with the pid that file named, for the lines before a welcome.
    """
    path = str(tmp_path / "jobs.port")
    _auth.writePortFile(path, _auth.PortFile(4321, b"s" * 32, 777))
    reactor = MemoryReactorClock()
    client = ChannelClientTransport(
        reactor,
        ChannelAddress("jobs", path, HOST),
        Recorder(),
        RecordingFactory(),
        5.0,
        1000,
        4000,
        transport="tcp",
    )
    client.startConnecting()
    reactor.advance(0)
    [(host, port, factory, _, _)] = reactor.tcpClients
    assert (host, port) == ("127.0.0.1", 4321)
    link = factory.buildProtocol(None)._wrappedProtocol
    assert link.portPid == 777
    assert link.describeHost() == "host pid 777"
    client.abortConnection()
