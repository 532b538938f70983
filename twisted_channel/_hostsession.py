"""
The host's end of one link, without any I/O: the handshake, the resume
point, the skipping of resent messages, acknowledgements, pings, and the
order of the last frames when a link ends in the middle of a batch.

L{HostSession} is fed the bytes the client sent and returns the bytes to
send and what happened, like L{twisted_channel._wire.FrameDecoder} (which
it drives) and h11's C{Connection}.  It imports no reactor, transport or
socket: C{_host._HostLink}, the Twisted protocol, reads from the socket,
calls the application and writes what the session returns.

A link goes through these states::

    AUTHENTICATING ──AUTH ok──▶ AWAITING_HELLO ──hello──▶ (HelloReceived)
          │                         │                         │
          └────── refused ──────────┴──▶ CLOSED ◀── refuse ───┤
                                           ▲                  welcome()
                                           │                  ▼
                                 refuse/close/abandon ◀──── OPEN

Over Unix sockets a session starts in C{AWAITING_HELLO}: the directory's
mode and the peer's credentials stand for the secret.

Once open, each read is one batch: L{HostSession.receive} returns the
frames to deliver (resends already dropped), the link hands each C{DATA}
body to the application, and L{HostSession.endBatch} returns, in one piece,
the replies the application wrote meanwhile, the acknowledgement, and, if
the link ends in that batch, its last frame (C{ERROR} or C{GOODBYE}), so
that the client always learns what was delivered before it learns the
link's end.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from . import _wire
from ._authexchange import AuthenticationFailedError, HostAuthExchange

#: How many clients a host remembers the delivery progress of, for
#: recognising resends; the least recently seen disconnected ones go first.
REMEMBERED_CLIENTS = 65536

AUTHENTICATING: Final = "authenticating"
AWAITING_HELLO: Final = "awaiting hello"
OPEN: Final = "open"
CLOSED: Final = "closed"

#: How a link ends after its batch: not at all, with the C{ERROR} frame of
#: a refusal, or with a C{GOODBYE} then a graceful close or an abort.
NO_END: Final = 0
END_REFUSED: Final = 1
END_GOODBYE: Final = 2
END_GOODBYE_ABORT: Final = 3

# An acknowledgement, header and all, in one pack: it leaves with every
# batch.
_ACK_FRAME = struct.Struct(">IBQ")


class DeliveryRecords:
    """
    What a host has delivered, for one hosting term: for each client id,
    how many of its messages the application received, so that a resend
    is recognised; and the term's counts for the status query.

    @ivar delivered: for each client id, the sequence number of the last
        message delivered, least recently seen first.
    @ivar messages: how many messages were delivered this term.
    @ivar bytes: how many payload bytes were received and sent this term.
    """

    def __init__(self, live: Collection[bytes]) -> None:
        """
        @param live: the ids of the clients linked now, whose records are
            never forgotten.
        """
        self.delivered: OrderedDict[bytes, int] = OrderedDict()
        self.messages = 0
        self.bytes = 0
        self._live = live

    def remember(self, clientId: bytes, sequence: int) -> None:
        """
        Record that every message of C{clientId} up to C{sequence} was
        delivered; forget the oldest records of clients not linked now past
        L{REMEMBERED_CLIENTS}.
        """
        delivered = self.delivered
        delivered[clientId] = sequence
        delivered.move_to_end(clientId)
        if len(delivered) > REMEMBERED_CLIENTS:
            self.forgetOldest()

    def lastSeen(self, clientId: bytes) -> None:
        """
        C{clientId}'s link ended: its record becomes the most recently seen,
        the last of the disconnected ones to be forgotten.
        """
        if clientId in self.delivered:
            self.delivered.move_to_end(clientId)

    def forgetOldest(self) -> None:
        """
        Forget the oldest records of clients not linked now past
        L{REMEMBERED_CLIENTS}.
        """
        delivered = self.delivered
        for oldId in list(delivered)[: len(delivered) - REMEMBERED_CLIENTS]:
            if oldId not in self._live:
                del delivered[oldId]


@dataclass(frozen=True)
class Authenticated:
    """
    The client proved it knows the secret; send C{reply} (the host's own
    proof) and wait for its hello.
    """

    reply: bytes


@dataclass(frozen=True)
class HelloReceived:
    """
    The client said hello: the link decides whether to take it (and then
    calls L{HostSession.welcome}) or to refuse it.
    """

    hello: _wire.Hello


@dataclass(frozen=True)
class StatusQueried:
    """
    The peer asked for the channel's status: answer with one C{STATUS}
    frame and close.
    """


@dataclass(frozen=True)
class Refused:
    """
    The peer broke the handshake.  Log C{reason}, send C{frame} (its
    C{ERROR}) and close.

    @ivar authentication: whether it failed to prove it knows the secret
        (a host limits how often that may happen).
    """

    reason: str
    frame: bytes
    authentication: bool = False


HandshakeEvent = Authenticated | HelloReceived | StatusQueried | Refused


class HostSession:
    """
    One link's protocol state, on the host's side.

    @ivar state: one of L{AUTHENTICATING}, L{AWAITING_HELLO}, L{OPEN},
        L{CLOSED}.
    @ivar closing: whether the link is ending (L{state} is L{CLOSED}):
        nothing more is delivered or sent, except a batch's end.
    @ivar clientId: the client's id, once it said hello.
    @ivar sequence: the sequence number of the last message delivered.
    @ivar peerMaxMessageSize: the largest message the client accepts.
    @ivar writeLimit: the largest message the host may send: the smaller of
        its own limit and L{peerMaxMessageSize} (one comparison per write).
    @ivar outbox: during a batch (between L{receive}, or L{welcomeInBatch},
        and L{endBatch}), the frames (or a frame's header, then its payload)
        that leave with the batch's acknowledgement, joined once; else
        None.
        The link appends the small replies its application writes during
        a batch directly, adding their size to L{outboxBytes}: that is the
        hottest path of a reply.
    @ivar outboxBytes: the size of the frames in L{outbox}.
    """

    # One per link, for as long as the link lives: no instance dictionary.
    __slots__ = (
        "records",
        "maxMessageSize",
        "_decoder",
        "_auth",
        "state",
        "closing",
        "_hello",
        "clientId",
        "sequence",
        "_skip",
        "peerMaxMessageSize",
        "writeLimit",
        "outbox",
        "outboxBytes",
        "_ending",
        "_endingFrame",
        "_welcomeHeld",
    )

    def __init__(
        self,
        records: DeliveryRecords,
        maxMessageSize: int,
        secret: bytes | None = None,
        nonce: bytes | None = None,
    ) -> None:
        """
        @param records: the term's delivery records, which say where a
            client that was here before resumes.
        @param maxMessageSize: the largest message the host accepts.
        @param secret: over loopback TCP, the secret the client must prove
            it knows before its hello; None over Unix sockets.
        @param nonce: the host's nonce for that proof (fresh by default).
        """
        self.records = records
        self.maxMessageSize = maxMessageSize
        self.clientId: bytes | None = None
        # Until the peer has said hello, nothing larger than a control frame
        # is buffered for it.
        self._decoder = _wire.FrameDecoder(_wire.MAX_CONTROL_BODY)
        self._auth: HostAuthExchange | None = None
        if secret is not None:
            self._auth = HostAuthExchange(secret, nonce)
            self.state: str = AUTHENTICATING
        else:
            self.state = AWAITING_HELLO
        self.closing = False
        self._hello: _wire.Hello | None = None
        self.sequence = 0
        # Messages at the start of an eager hello's data that this host
        # already delivered, still to be skipped.
        self._skip = 0
        self.peerMaxMessageSize = maxMessageSize
        self.writeLimit = maxMessageSize
        self.outbox: list[bytes] | None = None
        self.outboxBytes = 0
        # Whether the outbox begins with the welcome (see welcomeInBatch).
        self._welcomeHeld = False
        self._ending = NO_END
        self._endingFrame = b""

    @property
    def decoder(self) -> _wire.FrameDecoder:
        """
        The link's frame decoder, for a reader that reads large messages
        straight into it (L{_wire.FrameDecoder.readTarget}).
        """
        return self._decoder

    @property
    def buffered(self) -> int:
        """
        How many bytes of incomplete frames are held.
        """
        return self._decoder.buffered

    def greeting(self) -> bytes:
        """
        What the host sends as soon as the link is accepted: over TCP the
        challenge, else nothing (the client speaks first).
        """
        return self._auth.challenge if self._auth is not None else b""

    # The handshake

    def nextHandshakeEvent(
        self, data: bytes | memoryview = b""
    ) -> HandshakeEvent | None:
        """
        Take C{data} and return the next step of the handshake, or None
        when more bytes are needed.  Frames are taken one at a time: those
        that follow the hello are judged by the limit it sets, once
        L{welcome} has been called.

        @raise _wire.ProtocolError: if the bytes break the wire format
            (refuse the link with its message).
        """
        state = self.state
        if state != AUTHENTICATING and state != AWAITING_HELLO:
            raise RuntimeError(f"the handshake is over: the session is {state}")
        frames = self._decoder.feed(data, 1)
        if not frames:
            return None
        [(kind, body)] = frames
        exchange = self._auth
        if exchange is not None:
            self._auth = None
            try:
                reply = exchange.receive(kind, body)
            except AuthenticationFailedError as e:
                return self._refusedHandshake(str(e), authentication=True)
            self.state = AWAITING_HELLO
            return Authenticated(reply)
        if kind != _wire.HELLO:
            return self._refusedHandshake(f"first frame is of kind {kind}, not a hello")
        try:
            hello = _wire.decodeHello(body)
        except _wire.ProtocolError as e:
            return self._refusedHandshake(str(e))
        if hello.flags & _wire.FLAG_STATUS_QUERY:
            self._close()
            return StatusQueried()
        self._hello = hello
        return HelloReceived(hello)

    def _refusedHandshake(self, reason: str, authentication: bool = False) -> Refused:
        self._close()
        return Refused(reason, _wire.encodeError(reason), authentication)

    def welcome(self, hostPid: int, host: _wire.HostTerm | None = None) -> bytes:
        """
        Take the client that said hello: work out where it resumes (what
        this term already delivered of its messages, or the hello's first
        sequence number), and return the C{WELCOME} that says so.  The
        session is then L{OPEN}; what followed the hello is returned by
        the next L{receive}.

        @param host: across machines, who hosts, for a hello with
            L{_wire.FLAG_TERM} (else left out of the welcome).
        """
        hello = self._hello
        if hello is None or self.closing:
            raise RuntimeError("welcome() without a hello to answer")
        self._hello = None
        clientId = hello.clientId
        records = self.records
        resumeAfter = max(records.delivered.get(clientId, 0), hello.firstSequence - 1)
        self.clientId = clientId
        self.sequence = resumeAfter
        if hello.flags & _wire.FLAG_EAGER:
            self._skip = resumeAfter - (hello.firstSequence - 1)
        self.peerMaxMessageSize = hello.maxMessageSize
        self.writeLimit = min(self.maxMessageSize, hello.maxMessageSize)
        self._decoder.maxMessageSize = self.maxMessageSize
        records.remember(clientId, resumeAfter)
        self.state = OPEN
        if not hello.flags & _wire.FLAG_TERM:
            host = None
        return _wire.welcomeFrame(resumeAfter, hostPid, self.maxMessageSize, host)

    # Batches

    def welcomeInBatch(self, hostPid: int, host: _wire.HostTerm | None = None) -> None:
        """
        As L{welcome}, but the C{WELCOME} begins a batch instead of being
        returned: what the application writes as it is connected, the
        messages read with the hello (L{receive}, which goes on with this
        batch) and their acknowledgement follow it, and all of it leaves in
        one piece at L{endBatch}.  A link's first message is then delivered
        before anything is sent, and one send serves both.  The welcome is
        never dropped (L{abandon} keeps it), and goes before any refusal or
        goodbye (which go last, as in any batch).
        """
        frame = self.welcome(hostPid, host)
        self.outbox = [frame]
        self._welcomeHeld = True

    def receive(self, data: bytes | memoryview) -> list[tuple[int, bytes]]:
        """
        Begin a batch with the bytes of one read, and return its frames,
        in order, without the messages of an eager hello that this host
        had already delivered.  Hand each C{DATA} body to the application
        and every other frame to L{control}, stopping if L{closing}
        becomes true; then call L{endBatch}.

        @raise _wire.ProtocolError: if the bytes break the wire format (no
            batch begins: refuse the link with its message).
        """
        frames = self._decoder.feed(data)
        if self._skip:
            frames = self._skipResent(frames)
        if self.outbox is None:
            self.outbox = []
        return frames

    def _skipResent(self, frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        kept = []
        for frame in frames:
            if self._skip and frame[0] == _wire.DATA:
                self._skip -= 1
            else:
                kept.append(frame)
        return kept

    def control(self, kind: int, body: bytes) -> str | None:
        """
        Take a frame other than C{DATA} of the batch: answer a ping.

        @return: the reason to refuse the link, if the frame has no place
            here (then call L{refuse} with it).
        """
        if kind == _wire.PING:
            frame = _wire.encodeFrame(_wire.PONG, body)
            if self.outbox is not None:
                self.outbox.append(frame)
                self.outboxBytes += len(frame)
            return None
        return f"unexpected frame of kind {kind} after the handshake"

    def endBatch(self, delivered: int, payloadBytes: int) -> tuple[bytes, int]:
        """
        End the batch that L{receive} began: C{delivered} messages (of
        C{payloadBytes} bytes) reached the application.

        @return: the bytes to send, in one piece (the replies written
            during the batch, the acknowledgement, then the link's last
            frame if it ends), and how it ends: L{NO_END},
            L{END_REFUSED}, L{END_GOODBYE} or L{END_GOODBYE_ABORT}.
        """
        out = self.outbox
        assert out is not None, "endBatch() without receive()"
        self.outbox = None
        self.outboxBytes = 0
        self._welcomeHeld = False
        if delivered:
            sequence = self.sequence + delivered
            self.sequence = sequence
            records = self.records
            records.messages += delivered
            records.bytes += payloadBytes
            # The client's record, set by welcome(): updated in place (it
            # neither grows the records nor, while linked, may be forgotten;
            # it becomes the most recently seen when the link ends, see
            # DeliveryRecords.lastSeen).
            records.delivered[self.clientId] = sequence  # type: ignore[index]
            out.append(_ACK_FRAME.pack(9, _wire.ACK, sequence))
        ending = self._ending
        if ending:
            out.append(self._endingFrame)
            self._ending = NO_END
            self._endingFrame = b""
        if not out:
            return b"", ending
        if len(out) == 1:
            return out[0], ending
        return b"".join(out), ending

    def takeOutbox(self) -> bytes:
        """
        Empty L{outbox} ahead of the batch's end and return what it held:
        a large reply goes to the transport on its own, after what was
        written before it.
        """
        out = self.outbox
        if not out:
            return b""
        self.outbox = []
        self.outboxBytes = 0
        self._welcomeHeld = False
        return b"".join(out)

    # Ends

    def _close(self) -> None:
        self.state = CLOSED
        self.closing = True

    def refuse(self, reason: str) -> bytes | None:
        """
        End the link because the peer broke the rules.

        @return: the C{ERROR} frame to send before closing; None if a batch
            is under way (it goes last in L{endBatch}, after the
            acknowledgement of what was delivered before the fault) or the
            link is already ending.
        """
        if self.closing:
            return None
        self._close()
        frame = _wire.encodeError(reason)
        if self.outbox is not None:
            self._ending = END_REFUSED
            self._endingFrame = frame
            return None
        return frame

    def close(self, abort: bool) -> bytes | None:
        """
        The application ends the connection: the client must not come back.

        @return: the C{GOODBYE} frame to send before closing (or aborting);
            None if a batch is under way (it goes last in L{endBatch},
            after the acknowledgement, so that the client knows what was
            delivered) or the link is already ending.
        """
        if self.closing:
            return None
        self._close()
        frame = _wire.encodeFrame(_wire.GOODBYE)
        if self.outbox is not None:
            self._ending = END_GOODBYE_ABORT if abort else END_GOODBYE
            self._endingFrame = frame
            return None
        return frame

    def closeQuietly(self) -> None:
        """
        End the link without a last word, for the client to come back and
        resend what was not acknowledged (the host stops, or the client
        opened another link).
        """
        self._close()

    def abandon(self) -> None:
        """
        End the link without a last word because the application failed:
        what it wrote in the batch is dropped, and only the acknowledgement
        of what it was given goes.
        """
        self._close()
        self._ending = NO_END
        self._endingFrame = b""
        if self.outbox is not None:
            # The welcome, if the batch holds it, still goes: the client
            # must know the link was taken before it is told the rest.
            self.outbox = self.outbox[:1] if self._welcomeHeld else []
            self.outboxBytes = 0
