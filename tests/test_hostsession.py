"""
Pure tests of the host's session (L{twisted_channel._hostsession}): bytes
in, bytes and events out, with no reactor, transport or socket.
"""

from __future__ import annotations

import pytest

from twisted_channel import _wire
from twisted_channel._auth import NONCE_SIZE
from twisted_channel._authexchange import ClientAuthExchange
from twisted_channel._hostsession import (
    AUTHENTICATING,
    AWAITING_HELLO,
    CLOSED,
    END_GOODBYE,
    END_GOODBYE_ABORT,
    END_REFUSED,
    NO_END,
    OPEN,
    Authenticated,
    DeliveryRecords,
    HelloReceived,
    HostSession,
    Refused,
    StatusQueried,
)

CLIENT = b"c" * 16
LIMIT = 1000
HOST_PID = 4321
SECRET = b"s" * 32


def hello(firstSequence: int = 1, flags: int = 0, clientId: bytes = CLIENT) -> bytes:
    return _wire.encodeHello(_wire.Hello(clientId, 99, LIMIT, firstSequence, flags))


def data(*payloads: bytes) -> bytes:
    return b"".join(_wire.encodeFrame(_wire.DATA, p) for p in payloads)


def decode(raw: bytes) -> list[tuple[int, bytes]]:
    return _wire.FrameDecoder(LIMIT).feed(raw)


def opened(
    records: DeliveryRecords | None = None, raw: bytes | None = None
) -> tuple[HostSession, bytes]:
    """
    A session that said hello and was welcomed; and its welcome frame.
    """
    session = HostSession(records or DeliveryRecords(()), LIMIT)
    event = session.nextHandshakeEvent(hello() if raw is None else raw)
    assert isinstance(event, HelloReceived)
    return session, session.welcome(HOST_PID)


def deliver(session: HostSession, raw: bytes) -> tuple[list[bytes], bytes, int]:
    """
    One batch, as the link runs it: every message is delivered.
    """
    frames = session.receive(raw)
    messages = []
    for kind, body in frames:
        if session.closing:
            break
        if kind == _wire.DATA:
            messages.append(body)
        else:
            reason = session.control(kind, body)
            if reason is not None:
                session.refuse(reason)
    out, ending = session.endBatch(len(messages), sum(map(len, messages)))
    return messages, out, ending


def test_helloThenWelcomeFromTheStart() -> None:
    session = HostSession(DeliveryRecords(()), LIMIT)
    assert session.state == AWAITING_HELLO
    assert session.greeting() == b""
    assert session.nextHandshakeEvent(hello()[:7]) is None
    event = session.nextHandshakeEvent(hello()[7:])
    assert isinstance(event, HelloReceived)
    assert event.hello.clientId == CLIENT
    [(kind, body)] = decode(session.welcome(HOST_PID))
    assert kind == _wire.WELCOME
    assert _wire.decodeWelcome(body) == _wire.Welcome(0, HOST_PID, LIMIT)
    assert session.state == OPEN


def test_framesAfterTheHelloWaitForTheWelcome() -> None:
    """
    What follows the hello in the same read is returned by the first
    batch, judged by the host's limit rather than the handshake's.
    """
    big = b"x" * (_wire.MAX_CONTROL_BODY + 10)
    session = HostSession(DeliveryRecords(()), 2 * len(big))
    assert isinstance(session.nextHandshakeEvent(hello() + data(big)), HelloReceived)
    session.welcome(HOST_PID)
    messages, out, ending = deliver(session, b"")
    assert messages == [big]
    assert decode(out) == [(_wire.ACK, (1).to_bytes(8, "big"))]
    assert ending == NO_END


def test_welcomeResumesAfterWhatWasDelivered() -> None:
    """
    A client that was here before resumes after what this term delivered;
    one never seen resumes before its oldest message.
    """
    records = DeliveryRecords(())
    records.remember(CLIENT, 7)
    session, welcome = opened(records, hello(firstSequence=5))
    assert _wire.decodeWelcome(decode(welcome)[0][1]).resumeAfter == 7
    session, welcome = opened(DeliveryRecords(()), hello(firstSequence=5))
    assert _wire.decodeWelcome(decode(welcome)[0][1]).resumeAfter == 4


def test_eagerResendIsSkipped() -> None:
    """
    An eager client's messages that this term already delivered are
    dropped; the rest are delivered and acknowledged with their own
    sequence numbers.
    """
    records = DeliveryRecords(())
    records.remember(CLIENT, 3)
    raw = hello(firstSequence=2, flags=_wire.FLAG_EAGER) + data(b"2", b"3", b"4")
    session, _ = opened(records, raw)
    messages, out, _ = deliver(session, b"")
    assert messages == [b"4"]
    assert decode(out) == [(_wire.ACK, (4).to_bytes(8, "big"))]
    assert records.delivered[CLIENT] == 4
    assert records.messages == 1


def test_eagerResendSplitAcrossReads() -> None:
    records = DeliveryRecords(())
    records.remember(CLIENT, 2)
    session, _ = opened(records, hello(flags=_wire.FLAG_EAGER))
    assert deliver(session, data(b"1"))[0] == []
    assert deliver(session, data(b"2", b"3"))[0] == [b"3"]


def test_pingIsAnsweredInTheBatch() -> None:
    session, _ = opened()
    messages, out, _ = deliver(
        session, data(b"a") + _wire.encodeFrame(_wire.PING, b"hi")
    )
    assert decode(out) == [
        (_wire.PONG, b"hi"),
        (_wire.ACK, (1).to_bytes(8, "big")),
    ]


def test_unexpectedFrameIsRefusedAfterTheAck() -> None:
    """
    A frame with no place after the handshake ends the link, but the
    client first learns what was delivered before it.
    """
    session, _ = opened()
    messages, out, ending = deliver(
        session, data(b"a") + _wire.encodeFrame(_wire.WELCOME) + data(b"b")
    )
    assert messages == [b"a"]
    assert ending == END_REFUSED
    [ack, (kind, reason)] = decode(out)
    assert ack == (_wire.ACK, (1).to_bytes(8, "big"))
    assert kind == _wire.ERROR
    assert b"unexpected frame of kind 2" in reason
    assert session.state == CLOSED


def welcomedInBatch(payloads: tuple[bytes, ...] = (b"a", b"b")) -> HostSession:
    """
    A session whose hello came with C{payloads} (eager), welcomed in the
    batch of that read.
    """
    session = HostSession(DeliveryRecords(()), LIMIT)
    raw = hello(flags=_wire.FLAG_EAGER) + data(*payloads)
    assert isinstance(session.nextHandshakeEvent(raw), HelloReceived)
    session.welcomeInBatch(HOST_PID)
    return session


def test_welcomeInBatchLeavesWithTheAck() -> None:
    """
    A welcome made in the batch is not returned: it goes first in what the
    batch sends, then what the application wrote as it was connected (in
    the outbox before L{HostSession.receive}), then the acknowledgement of
    the messages read with the hello, in one piece.
    """
    session = welcomedInBatch()
    assert session.state == OPEN
    assert session.outbox is not None
    session.outbox.append(data(b"hi"))
    messages, out, ending = deliver(session, b"")
    assert messages == [b"a", b"b"]
    welcome = _wire.encodeWelcome(_wire.Welcome(0, HOST_PID, LIMIT))
    assert out == welcome + data(b"hi") + _wire.encodeAck(2)
    assert ending == NO_END
    assert session.outbox is None


def test_welcomeInBatchKeptWhenAbandoned() -> None:
    """
    An application that fails in the batch loses what it wrote, not the
    welcome: the client is told the link was taken, then what was
    delivered.
    """
    session = welcomedInBatch()
    session.receive(b"")
    assert session.outbox is not None
    session.outbox.append(data(b"reply"))
    session.abandon()
    out, _ = session.endBatch(1, 1)
    assert [kind for kind, _ in decode(out)] == [_wire.WELCOME, _wire.ACK]


def test_welcomeInBatchBeforeGoodbyeAndRefusal() -> None:
    """
    A goodbye (the application closed as it was connected) or a refusal
    (what followed the hello broke the rules) goes after the welcome, in
    the batch's one piece.
    """
    session = welcomedInBatch()
    assert session.close(abort=False) is None
    out, ending = session.endBatch(0, 0)
    assert [kind for kind, _ in decode(out)] == [_wire.WELCOME, _wire.GOODBYE]
    assert ending == END_GOODBYE

    session = HostSession(DeliveryRecords(()), LIMIT)
    raw = hello(flags=_wire.FLAG_EAGER) + _wire.frameHeader(_wire.DATA, LIMIT + 1)
    assert isinstance(session.nextHandshakeEvent(raw), HelloReceived)
    session.welcomeInBatch(HOST_PID)
    with pytest.raises(_wire.ProtocolError):
        session.receive(b"")
    assert session.refuse("too large") is None
    out, ending = session.endBatch(0, 0)
    assert [kind for kind, _ in decode(out)] == [_wire.WELCOME, _wire.ERROR]
    assert ending == END_REFUSED


def test_welcomeInBatchFirstInTakeOutbox() -> None:
    """
    A large reply written in the batch sends what the outbox holds first,
    the welcome included; the batch's end sends only the rest.
    """
    session = welcomedInBatch()
    session.receive(b"")
    assert session.outbox is not None
    session.outbox.append(b"ab")
    taken = session.takeOutbox()
    assert taken == _wire.encodeWelcome(_wire.Welcome(0, HOST_PID, LIMIT)) + b"ab"
    session.abandon()
    out, _ = session.endBatch(2, 2)
    assert decode(out) == [(_wire.ACK, (2).to_bytes(8, "big"))]


def test_goodbyeDuringABatchGoesAfterTheAck() -> None:
    for abort, expected in [(False, END_GOODBYE), (True, END_GOODBYE_ABORT)]:
        session, _ = opened()
        session.receive(data(b"a", b"b"))
        assert session.outbox is not None
        session.outbox.append(data(b"reply"))
        assert session.close(abort) is None
        assert session.closing
        out, ending = session.endBatch(1, 1)
        assert ending == expected
        assert [kind for kind, _ in decode(out)] == [
            _wire.DATA,
            _wire.ACK,
            _wire.GOODBYE,
        ]


def test_goodbyeOutsideABatchIsAtOnce() -> None:
    session, _ = opened()
    assert session.close(abort=False) == _wire.encodeFrame(_wire.GOODBYE)
    assert session.close(abort=False) is None
    assert session.refuse("late") is None


def test_abandonKeepsOnlyTheAck() -> None:
    session, _ = opened()
    session.receive(data(b"a"))
    assert session.outbox is not None
    session.outbox.append(data(b"reply"))
    session.abandon()
    out, ending = session.endBatch(1, 1)
    assert decode(out) == [(_wire.ACK, (1).to_bytes(8, "big"))]
    assert ending == NO_END


def test_takeOutbox() -> None:
    session, _ = opened()
    session.receive(b"")
    assert session.takeOutbox() == b""
    assert session.outbox is not None
    session.outbox.extend([b"ab", b"cd"])
    session.outboxBytes = 4
    assert session.takeOutbox() == b"abcd"
    assert session.outboxBytes == 0
    assert session.endBatch(0, 0) == (b"", NO_END)
    assert session.outbox is None


def test_firstFrameNotAHello() -> None:
    session = HostSession(DeliveryRecords(()), LIMIT)
    event = session.nextHandshakeEvent(data(b"x"))
    assert isinstance(event, Refused)
    assert event.reason == "first frame is of kind 3, not a hello"
    assert decode(event.frame) == [(_wire.ERROR, event.reason.encode())]
    assert not event.authentication
    assert session.closing


def test_badHello() -> None:
    session = HostSession(DeliveryRecords(()), LIMIT)
    event = session.nextHandshakeEvent(_wire.encodeFrame(_wire.HELLO, b"short"))
    assert isinstance(event, Refused)
    assert "hello is 5 bytes long" in event.reason


def test_oversizedFrameBeforeTheHello() -> None:
    """
    Before the hello, nothing over a control frame's limit is taken.
    """
    session = HostSession(DeliveryRecords(()), LIMIT)
    with pytest.raises(_wire.ProtocolError):
        session.nextHandshakeEvent(data(b"x" * (_wire.MAX_CONTROL_BODY + 1)))


def test_statusQuery() -> None:
    session = HostSession(DeliveryRecords(()), LIMIT)
    event = session.nextHandshakeEvent(hello(flags=_wire.FLAG_STATUS_QUERY))
    assert event == StatusQueried()
    assert session.closing
    with pytest.raises(RuntimeError):
        session.welcome(HOST_PID)


def test_authenticationThenHello() -> None:
    session = HostSession(DeliveryRecords(()), LIMIT, SECRET, b"h" * NONCE_SIZE)
    assert session.state == AUTHENTICATING
    client = ClientAuthExchange(SECRET)
    [challenge] = decode(session.greeting())
    answer = client.receive(*challenge)
    event = session.nextHandshakeEvent(answer + hello())
    assert isinstance(event, Authenticated)
    client.receive(*decode(event.reply)[0])
    assert client.done
    assert isinstance(session.nextHandshakeEvent(), HelloReceived)


def test_helloWithoutAuthentication() -> None:
    session = HostSession(DeliveryRecords(()), LIMIT, SECRET)
    event = session.nextHandshakeEvent(hello())
    assert isinstance(event, Refused)
    assert event.authentication
    assert "not an authentication" in event.reason


def test_recordsKeepLiveClients(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted_channel import _hostsession

    monkeypatch.setattr(_hostsession, "REMEMBERED_CLIENTS", 1)
    records = DeliveryRecords({b"live"})
    records.remember(b"live", 1)
    records.remember(b"gone", 1)
    records.remember(b"new", 1)
    assert list(records.delivered) == [b"live", b"new"]


def test_welcomeNamesItsHostOnlyWhenAsked() -> None:
    """
    A host across machines names itself (term, machine, address) in its
    welcome to a hello that asks (L{_wire.FLAG_TERM}); a one-machine hello
    gets the one-machine welcome, whatever the host.
    """
    host = _wire.HostTerm(12, "a", "10.0.0.8:4443")
    session = HostSession(DeliveryRecords(()), LIMIT)
    across = _wire.encodeHello(
        _wire.Hello(CLIENT, 99, LIMIT, 1, _wire.FLAG_TERM, lowestTerm=9)
    )
    event = session.nextHandshakeEvent(across)
    assert isinstance(event, HelloReceived)
    assert event.hello.lowestTerm == 9
    [(_, body)] = decode(session.welcome(HOST_PID, host))
    assert _wire.decodeWelcome(body) == _wire.Welcome(0, HOST_PID, LIMIT, host=host)
    plain = HostSession(DeliveryRecords(()), LIMIT)
    assert isinstance(plain.nextHandshakeEvent(hello()), HelloReceived)
    [(_, body)] = decode(plain.welcome(HOST_PID, host))
    assert _wire.decodeWelcome(body) == _wire.Welcome(0, HOST_PID, LIMIT)
