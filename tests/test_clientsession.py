"""
Pure tests of the client's session (L{twisted_channel._clientsession}):
frames in, chunks and events out, with no reactor, transport or socket.
"""

from __future__ import annotations

import pytest

from twisted_channel import _wire
from twisted_channel._authexchange import HostAuthExchange
from twisted_channel._clientsession import (
    ACKNOWLEDGED,
    AUTHENTICATING,
    AWAITING_WELCOME,
    EAGER_ASSUMED_LIMIT,
    GIVE_UP,
    GOODBYE,
    OPEN,
    STALLED,
    ClientDeadlines,
    ClientSession,
    HostBrokeProtocolError,
    HostRefused,
    LinkSession,
    MessagesTooLargeError,
    Send,
    Welcomed,
)

CLIENT = b"c" * 16
PID = 77
LIMIT = 1 << 20
SECRET = b"s" * 32


def decode(chunks: list[bytes]) -> list[tuple[int, bytes]]:
    return _wire.FrameDecoder(LIMIT).feed(b"".join(chunks))


def session(*held: bytes) -> ClientSession:
    client = ClientSession(CLIENT, PID, LIMIT)
    for payload in held:
        client.pending.append(payload)
    return client


def welcome(link: LinkSession, resumeAfter: int, maxMessageSize: int = LIMIT) -> None:
    event = link.control(
        _wire.WELCOME,
        _wire.encodeWelcome(_wire.Welcome(resumeAfter, 1, maxMessageSize))[5:],
    )
    assert isinstance(event, Welcomed)


def test_eagerHelloCarriesWhatIsHeld() -> None:
    client = session(b"a", b"b")
    link = client.newLink()
    assert link.state == AWAITING_WELCOME
    [(kind, body), *messages] = decode(link.start())
    hello = _wire.decodeHello(body)
    assert (kind, hello.clientId, hello.pid, hello.firstSequence) == (
        _wire.HELLO,
        CLIENT,
        PID,
        1,
    )
    assert hello.flags & _wire.FLAG_EAGER
    assert messages == [(_wire.DATA, b"a"), (_wire.DATA, b"b")]
    assert (link.eager, link.eagerThrough) == (True, 2)


def test_resumeSendsOnlyWhatTheEagerHelloDidNot() -> None:
    """
    On the welcome, a link sends what was written after its hello, and
    forgets what the host says it already had.
    """
    client = session(b"a", b"b")
    link = client.newLink()
    link.start()
    client.pending.append(b"c")
    welcome(link, 1)
    chunks = client.resume(link, _wire.Welcome(1, 1, LIMIT))
    assert decode(chunks) == [(_wire.DATA, b"c")]
    assert link.open and link.state == OPEN
    assert list(client.pending.messages) == [b"b", b"c"]
    assert link.resent == 1


def test_plainHelloResendsEverythingAfterTheResumePoint() -> None:
    client = session(b"a", b"b", b"c")
    client.eagerRefused()
    link = client.newLink()
    [(_, body)] = decode(link.start())
    assert not _wire.decodeHello(body).flags & _wire.FLAG_EAGER
    chunks = client.resume(link, _wire.Welcome(1, 1, LIMIT))
    assert decode(chunks) == [(_wire.DATA, b"b"), (_wire.DATA, b"c")]
    # A welcome says how large a message the host takes: eager again.
    assert client.mayBeEager()


def test_largeMessagesWaitForAWelcome() -> None:
    client = session(b"x" * (EAGER_ASSUMED_LIMIT + 1))
    assert not client.mayBeEager()
    link = client.newLink()
    link.start()
    client.resume(link, _wire.Welcome(0, 1, LIMIT))
    assert client.mayBeEager()


def test_welcomePastWhatTheLinkSentIsBroken() -> None:
    client = session(b"a")
    link = client.newLink()
    link.start()
    with pytest.raises(HostBrokeProtocolError, match="this link's newest is 1"):
        client.resume(link, _wire.Welcome(2, 1, LIMIT))
    assert not link.open


def test_welcomePastEverythingWrittenIsBroken() -> None:
    client = session(b"a")
    client.eagerRefused()
    link = client.newLink()
    link.start()
    with pytest.raises(HostBrokeProtocolError, match="newest message is 1"):
        client.resume(link, _wire.Welcome(5, 1, LIMIT))


def test_hostTakingSmallerMessages() -> None:
    client = session(b"x" * 100)
    link = client.newLink()
    link.start()
    with pytest.raises(MessagesTooLargeError, match="at most 10 bytes; 1 buffered"):
        client.resume(link, _wire.Welcome(0, 1, 10))


def test_acknowledgementsForget() -> None:
    client = session(b"a", b"b", b"c")
    link = client.newLink()
    link.start()
    client.resume(link, _wire.Welcome(0, 1, LIMIT))
    assert link.control(_wire.ACK, _wire.encodeAck(2)[5:]) is ACKNOWLEDGED
    assert list(client.pending.messages) == [b"c"]
    with pytest.raises(HostBrokeProtocolError, match="acknowledgement of message 9"):
        link.control(_wire.ACK, _wire.encodeAck(9)[5:])
    with pytest.raises(HostBrokeProtocolError, match="ack is 3 bytes"):
        link.control(_wire.ACK, b"abc")


def test_framesOutOfPlace() -> None:
    """
    Before the welcome, only a welcome, an error or a ping is in place;
    after it, a second welcome is not.
    """
    link = session().newLink()
    for kind in (_wire.DATA, _wire.ACK, _wire.GOODBYE, _wire.AUTH_OK):
        with pytest.raises(HostBrokeProtocolError, match=f"frame of kind {kind}"):
            link.control(kind, b"")
    assert link.control(_wire.PING, b"") is None
    assert link.control(_wire.PONG, b"") is None


def test_goodbyeAndRefusal() -> None:
    client = session(b"a")
    link = client.newLink()
    link.start()
    assert link.control(_wire.ERROR, b"too large") == HostRefused("too large")
    # An eager link refused: the next one waits for its welcome.
    assert not client.mayBeEager()
    link = client.newLink()
    link.start()
    client.resume(link, _wire.Welcome(0, 1, LIMIT))
    assert link.control(_wire.GOODBYE, b"") is GOODBYE
    with pytest.raises(HostBrokeProtocolError):
        link.control(_wire.WELCOME, b"")


def test_authenticationThenHello() -> None:
    client = session(b"queued")
    link = client.newLink(SECRET)
    assert link.state == AUTHENTICATING
    assert link.start() == []
    host = HostAuthExchange(SECRET)
    [(kind, body)] = _wire.FrameDecoder(LIMIT).feed(host.challenge)
    answer = link.control(kind, body)
    assert isinstance(answer, Send)
    [(kind, body)] = decode(answer.chunks)
    proof = host.receive(kind, body)
    hello = link.control(*_wire.FrameDecoder(LIMIT).feed(proof)[0])
    assert isinstance(hello, Send)
    assert [kind for kind, _ in decode(hello.chunks)] == [_wire.HELLO, _wire.DATA]
    assert link.state == AWAITING_WELCOME


def test_authenticationRefusedOrBroken() -> None:
    link = session().newLink(SECRET)
    assert link.control(_wire.ERROR, b"busy") == HostRefused("busy")
    link = session().newLink(SECRET)
    link.control(_wire.CHALLENGE, b"h" * 32)
    with pytest.raises(HostBrokeProtocolError, match="could not prove"):
        link.control(_wire.AUTH_OK, b"x" * 32)


def test_receiveSplitsFrames() -> None:
    link = session().newLink()
    raw = _wire.encodeFrame(_wire.PING) + _wire.encodeFrame(_wire.DATA, b"m")
    assert link.receive(raw[:3]) == []
    assert link.receive(raw[3:]) == [(_wire.PING, b""), (_wire.DATA, b"m")]


def test_giveUpDeadline() -> None:
    deadlines = ClientDeadlines(5.0, 10.0)
    assert deadlines.next() is None
    deadlines.lookForHost(100.0)
    deadlines.lookForHost(101.0)
    assert deadlines.next() == 105.0
    assert deadlines.due(104.0, waiting=False, readingPaused=False) is None
    assert deadlines.due(105.0, waiting=False, readingPaused=False) is GIVE_UP
    assert deadlines.next() is None


def test_noTimeoutNeverGivesUp() -> None:
    deadlines = ClientDeadlines(0, 10.0)
    deadlines.lookForHost(100.0)
    assert deadlines.next() is None


def test_linkedStopsGivingUp() -> None:
    deadlines = ClientDeadlines(5.0, 10.0)
    deadlines.lookForHost(100.0)
    deadlines.linked()
    assert deadlines.next() is None
    deadlines.watch(102.0)
    assert deadlines.next() == 112.0


def test_stallDeadlineMovesWithNews() -> None:
    """
    News from the host puts the stall verdict off: the deadline that falls
    finds nothing due, and the next is the stall timeout after the news.
    """
    deadlines = ClientDeadlines(5.0, 10.0)
    deadlines.watch(100.0)
    deadlines.lastProgress = 107.0
    assert deadlines.due(110.0, waiting=True, readingPaused=False) is None
    assert deadlines.next() == 117.0
    assert deadlines.due(117.0, waiting=True, readingPaused=False) is STALLED


def test_stallRecheckedOnce() -> None:
    deadlines = ClientDeadlines(5.0, 10.0)
    deadlines.watch(100.0)
    assert deadlines.due(110.0, waiting=True, readingPaused=False) is STALLED
    assert deadlines.mayRecheck
    deadlines.recheck(110.0)
    assert deadlines.next() == 110.0
    assert deadlines.due(110.0, waiting=True, readingPaused=False) is STALLED
    assert not deadlines.mayRecheck
    deadlines.stalled()
    assert deadlines.next() is None


def test_stallNotJudgedWhilePausedOrIdle() -> None:
    deadlines = ClientDeadlines(5.0, 10.0)
    deadlines.watch(100.0)
    assert deadlines.due(110.0, waiting=True, readingPaused=True) is None
    assert deadlines.next() == 120.0
    assert deadlines.due(120.0, waiting=False, readingPaused=False) is None
    assert not deadlines.watching
    assert deadlines.next() is None


def test_lostHostStopsTheStallDeadline() -> None:
    deadlines = ClientDeadlines(5.0, 10.0)
    deadlines.watch(100.0)
    deadlines.lookForHost(103.0)
    assert deadlines.next() == 108.0
    deadlines.stop()
    assert deadlines.next() is None


def welcomeFrom(term: int | None) -> _wire.Welcome:
    host = None if term is None else _wire.HostTerm(term, "a", "10.0.0.8:4443")
    return _wire.Welcome(0, 1, LIMIT, host=host)


def test_acrossMachinesHelloSaysTheLowestTerm() -> None:
    """
    Across machines, each hello asks for a host of at least the highest
    term seen (0 at first), and each welcome kept raises it; on one machine
    the hello is the one-machine hello.
    """
    client = ClientSession(CLIENT, PID, LIMIT, acrossMachines=True)
    link = client.newLink()
    [(_, body)] = decode(link.start())
    hello = _wire.decodeHello(body)
    assert hello.flags & _wire.FLAG_TERM and hello.lowestTerm == 0
    client.resume(link, welcomeFrom(7))
    assert client.lowestTerm == 7
    [(_, body)] = decode(client.newLink().start())
    assert _wire.decodeHello(body).lowestTerm == 7
    plain = session()
    assert plain.lowestTerm is None
    [(_, body)] = decode(plain.newLink().start())
    assert not _wire.decodeHello(body).flags & _wire.FLAG_TERM


def test_acrossMachinesNeverALowerTerm() -> None:
    """
    Across machines, a welcome from a host of a lower term than one seen,
    or one that names no host, breaks the protocol (the link is dropped)
    and changes nothing; an equal or higher term is kept.
    """
    client = ClientSession(CLIENT, PID, LIMIT, acrossMachines=True)
    client.pending.append(b"a")
    client.resume(client.newLink(), welcomeFrom(7))
    for welcome, error in [
        (welcomeFrom(6), "host's term 6 is lower than term 7"),
        (welcomeFrom(None), "welcome names no host across machines"),
    ]:
        link = client.newLink()
        link.start()
        with pytest.raises(HostBrokeProtocolError, match=error):
            client.resume(link, welcome)
        assert not link.open
        assert client.lowestTerm == 7
        assert list(client.pending.messages) == [b"a"]
    link = client.newLink()
    link.start()
    client.resume(link, welcomeFrom(7))
    assert link.open
    link = client.newLink()
    link.start()
    client.resume(link, welcomeFrom(9))
    assert client.lowestTerm == 9
