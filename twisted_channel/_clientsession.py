"""
The client's end of a channel, without any I/O: the messages no host has
acknowledged, the client's id, whether a new link may send them with its
hello, and, for each link, its handshake (authentication, hello, the
welcome and the resume point it names) and what each frame from the host
means.

L{ClientSession} is the logical connection, which outlives its links;
L{LinkSession} is one link's protocol state, made by
L{ClientSession.newLink}.  Neither imports a reactor, a transport or a
socket: C{_client.ChannelClientTransport} and C{_client._ClientLink} read
and write, call the application, and arm the timers.

A link goes through these states::

    AUTHENTICATING ──AUTH_OK──▶ AWAITING_WELCOME ──WELCOME──▶ OPEN
    (TCP only; over Unix sockets a link starts awaiting its welcome,
     its hello sent by start())

Frames are returned to the Twisted side, which hands each C{DATA} body of
an open link straight to the application (the hottest path there is) and
every other frame to L{LinkSession.control}.  What the bytes out are is a
list of chunks (a header, a payload, a header...), so that payloads are
never copied here.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from . import _wire
from ._authexchange import (
    AuthenticationFailedError,
    AuthenticationRefusedError,
    ClientAuthExchange,
)
from ._pending import PendingWrites

AUTHENTICATING: Final = "authenticating"
AWAITING_WELCOME: Final = "awaiting welcome"
OPEN: Final = "open"

#: Before any host has said how large a message it takes, messages up to
#: this size go with an eager hello.
EAGER_ASSUMED_LIMIT = 64 * 1024

_ACK = struct.Struct(">Q")


class HostBrokeProtocolError(_wire.ProtocolError):
    """
    The host sent something a host never sends: a frame out of place, a
    welcome that resumes past what the link sent, an acknowledgement of a
    message never written.  The link is dropped and another tried.
    """


class MessagesTooLargeError(ValueError):
    """
    The host that welcomed the link takes smaller messages than some the
    client holds: the connection cannot go on.
    """


@dataclass(frozen=True)
class Send:
    """
    Send C{chunks} on the link (the handshake's next step).
    """

    chunks: list[bytes]


@dataclass(frozen=True)
class Welcomed:
    """
    The host welcomed the link; the Twisted side decides whether to keep
    it, and if so calls L{ClientSession.resume}.
    """

    welcome: _wire.Welcome


@dataclass(frozen=True)
class HostRefused:
    """
    The host closed the link with an C{ERROR} frame, for C{reason}.
    """

    reason: str


class _Marker:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: The host acknowledged messages (L{ClientSession.pending} already forgot
#: them): a paused producer may go on, a closing connection may end.
ACKNOWLEDGED: Final = _Marker("ACKNOWLEDGED")
#: The host's application ended the connection: do not reconnect.
GOODBYE: Final = _Marker("GOODBYE")

ControlEvent = Send | Welcomed | HostRefused | _Marker | None


class ClientSession:
    """
    One logical connection's protocol state on the client.

    @ivar pending: the messages no host has acknowledged, oldest first.
        The client transport's C{write} appends to it directly: that is
        the hottest path there is.
    @ivar clientId: the 16 bytes that name this connection to every host.
    @ivar maxMessageSize: the largest message this client takes and writes.
    @ivar hostMaxMessageSize: the largest message the last host took
        (before any welcome, L{EAGER_ASSUMED_LIMIT}, a size every host is
        assumed to take), for eager hellos.
    @ivar lowestTerm: across machines, the highest term of a host that
        welcomed this connection or that etcd named (raised by the
        connection's reconnection; 0 before any): no host of a lower term
        is accepted.  C{None} on one machine, where hosts have no term.
    """

    def __init__(
        self,
        clientId: bytes,
        pid: int,
        maxMessageSize: int,
        acrossMachines: bool = False,
    ) -> None:
        """
        @param clientId: 16 bytes no other connection's id is (see
            L{twisted_channel._process.newClientId}).
        @param pid: this process's id, as the hello says it.
        @param acrossMachines: whether hosts are across machines (reached
            over TLS): hellos then say L{lowestTerm}, and welcomes
            must name a host of that term or higher.
        """
        self.clientId = clientId
        self.pid = pid
        self.maxMessageSize = maxMessageSize
        self.lowestTerm: int | None = 0 if acrossMachines else None
        self.pending = PendingWrites()
        self.hostMaxMessageSize = EAGER_ASSUMED_LIMIT
        self._eagerRefused = False

    def newLink(self, secret: bytes | None = None) -> LinkSession:
        """
        A new link's protocol state.

        @param secret: over loopback TCP, the secret from the port file
            read for this link, which it proves it knows before its hello.
        """
        return LinkSession(self, secret)

    def mayBeEager(self) -> bool:
        """
        Whether a new link may send every message held with its hello: no
        host refused an eager link since the last welcome, and none of them
        is over the largest message the host is known (or, before any
        welcome, assumed) to take.
        """
        if self._eagerRefused:
            return False
        limit = min(self.maxMessageSize, self.hostMaxMessageSize)
        pending = self.pending
        if pending.byteCount <= limit:
            return True
        return max(map(len, pending.messages)) <= limit

    def eagerRefused(self) -> None:
        """
        A host refused an eager link: wait for the welcome on the next one.
        """
        self._eagerRefused = True

    def resume(self, link: LinkSession, welcome: _wire.Welcome) -> list[bytes]:
        """
        The host welcomed C{link}, and the link is kept: forget what the
        host already has, open the link, and return the chunks to send on
        it (every message held that the link has not sent yet).

        @raise HostBrokeProtocolError: if the welcome resumes past what
            the link could have sent, or, across machines, names no host
            or one of a lower term than one seen (the link is dropped).
        @raise MessagesTooLargeError: if the host takes smaller messages
            than some held (the connection ends).
        """
        lowestTerm = self.lowestTerm
        if lowestTerm is not None:
            # The host checked the hello's term too; this holds even
            # against one that did not.
            host = welcome.host
            if host is None:
                raise HostBrokeProtocolError(
                    "welcome names no host across machines, nor its term"
                )
            if host.term < lowestTerm:
                raise HostBrokeProtocolError(
                    f"host's term {host.term} is lower than term {lowestTerm}, "
                    "which this client has seen"
                )
        resumeAfter = welcome.resumeAfter
        if link.eager and resumeAfter > link.eagerThrough:
            raise HostBrokeProtocolError(
                f"welcome resumes after message {resumeAfter}, but this "
                f"link's newest is {link.eagerThrough}"
            )
        pending = self.pending
        try:
            resend = pending.resumeAfter(resumeAfter)
        except ValueError as e:
            raise HostBrokeProtocolError(str(e)) from None
        self.hostMaxMessageSize = welcome.maxMessageSize
        self._eagerRefused = False
        if lowestTerm is not None:
            assert welcome.host is not None
            self.lowestTerm = welcome.host.term
        tooLarge = [len(p) for p in resend if len(p) > welcome.maxMessageSize]
        if tooLarge:
            raise MessagesTooLargeError(
                f"accepts messages of at most {welcome.maxMessageSize} bytes; "
                f"{len(tooLarge)} buffered message(s) are larger"
            )
        if link.eager:
            # Those up to eagerThrough went with the hello.
            del resend[: link.eagerThrough - pending.firstSequence + 1]
        link.state = OPEN
        link.resent = len(resend)
        return framed(resend)


def framed(payloads: Collection[bytes], leading: bytes = b"") -> list[bytes]:
    """
    The chunks that send C{payloads} as C{DATA} frames, after C{leading}
    (an encoded frame, if any): a header, then the payload itself, for
    each.
    """
    header = _wire.frameHeader
    data = _wire.DATA
    chunks: list[bytes] = [leading] if leading else []
    append = chunks.append
    for payload in payloads:
        append(header(data, len(payload)))
        append(payload)
    return chunks


class LinkSession:
    """
    One link's protocol state on the client.

    @ivar state: L{AUTHENTICATING}, L{AWAITING_WELCOME} or L{OPEN}.
    @ivar open: whether the host welcomed the link and it was kept.
    @ivar eager: whether the link's hello was eager (L{_wire.FLAG_EAGER}).
    @ivar eagerThrough: the newest message sent with the hello.
    @ivar resent: how many messages were sent on the welcome.
    """

    def __init__(self, session: ClientSession, secret: bytes | None) -> None:
        self._session = session
        self._decoder = _wire.FrameDecoder(session.maxMessageSize)
        self._auth: ClientAuthExchange | None = None
        if secret is not None:
            self._auth = ClientAuthExchange(secret)
            self.state: str = AUTHENTICATING
        else:
            self.state = AWAITING_WELCOME
        self.eager = False
        self.eagerThrough = 0
        self.resent = 0

    @property
    def decoder(self) -> _wire.FrameDecoder:
        """
        The link's frame decoder, for a reader that reads large messages
        straight into it (L{_wire.FrameDecoder.readTarget}).
        """
        return self._decoder

    @property
    def open(self) -> bool:
        """
        Whether the host welcomed the link and it was kept.
        """
        return self.state == OPEN

    def start(self) -> list[bytes]:
        """
        What to send as soon as the link is connected: over Unix sockets
        the hello (with every message held, if it may be eager); over TCP
        nothing, as the host speaks first.
        """
        if self.state == AUTHENTICATING:
            return []
        return self._hello()

    def _hello(self) -> list[bytes]:
        """
        Say hello and, if every message held may be sent before the host
        answers, send them all with it: the host delivers them in the same
        read, instead of one round trip later.
        """
        session = self._session
        pending = session.pending
        # The queue itself, asked directly: on the way to the first
        # message, each of PendingWrites' properties is a call.
        messages = pending.messages
        eager = self.eager = session.mayBeEager()
        flags = _wire.FLAG_EAGER if eager else 0
        lowestTerm = session.lowestTerm
        if lowestTerm is not None:
            flags |= _wire.FLAG_TERM
        firstSequence = pending.firstSequence
        hello = _wire.helloFrame(
            session.clientId,
            session.pid,
            session.maxMessageSize,
            firstSequence,
            flags,
            lowestTerm or 0,
        )
        self.eagerThrough = firstSequence + len(messages) - 1
        if not eager or not messages:
            return [hello]
        return framed(messages, leading=hello)

    def receive(self, data: bytes | memoryview) -> list[tuple[int, bytes]]:
        """
        The frames that C{data}, read from the link, completes.  While
        L{open}, hand each C{DATA} body to the application; give every
        other frame to L{control}.

        @raise _wire.ProtocolError: if the bytes break the wire format.
        """
        return self._decoder.feed(data)

    def control(self, kind: int, body: bytes) -> ControlEvent:
        """
        Take a frame from the host other than the C{DATA} of an open link.

        @return: what it means: L{ACKNOWLEDGED}, L{GOODBYE}, a L{Send} of
            the handshake's next step, L{Welcomed}, L{HostRefused}, or
            None (a ping or a pong, which only show the host is alive).
        @raise HostBrokeProtocolError: if a host would not send it.
        """
        state = self.state
        if state == OPEN:
            if kind == _wire.ACK:
                if len(body) != 8:
                    raise HostBrokeProtocolError(
                        f"ack is {len(body)} bytes long; it must be 8"
                    )
                try:
                    self._session.pending.acknowledge(_ACK.unpack(body)[0])
                except ValueError as e:
                    raise HostBrokeProtocolError(str(e)) from None
                return ACKNOWLEDGED
            if kind == _wire.GOODBYE:
                return GOODBYE
        elif state == AUTHENTICATING:
            return self._authenticate(kind, body)
        elif kind == _wire.WELCOME:
            return Welcomed(_wire.decodeWelcome(body))
        if kind == _wire.ERROR:
            if self.eager:
                # Perhaps a message it was sent before its welcome is over
                # its limit: the next link waits for the welcome, which
                # says so.
                self._session.eagerRefused()
            return HostRefused(body.decode("utf-8", "replace"))
        if kind == _wire.PONG or kind == _wire.PING:
            # A host that stopped reading us pings to show it is alive.
            return None
        raise HostBrokeProtocolError(f"unexpected frame of kind {kind}")

    def _authenticate(self, kind: int, body: bytes) -> ControlEvent:
        """
        Answer the host's challenge, then check the host's own proof and
        say hello.
        """
        exchange = self._auth
        assert exchange is not None
        try:
            answer = exchange.receive(kind, body)
        except AuthenticationRefusedError as e:
            return HostRefused(str(e))
        except AuthenticationFailedError as e:
            raise HostBrokeProtocolError(str(e)) from None
        if not exchange.done:
            return Send([answer])
        self._auth = None
        self.state = AWAITING_WELCOME
        return Send(self._hello())


#: Seconds a host may take to answer a hello before the link is dropped and
#: another is tried.  A host frozen by SIGSTOP still accepts connections in
#: the kernel; this is what keeps a client from waiting on it for ever.
LINK_HANDSHAKE_TIMEOUT = 2.0

#: What L{ClientDeadlines.due} found: no host within the timeout.
GIVE_UP: Final = _Marker("GIVE_UP")
#: What L{ClientDeadlines.due} found: the linked host acknowledged nothing
#: for the stall timeout while messages waited.
STALLED: Final = _Marker("STALLED")


class ClientDeadlines:
    """
    When a client judges its situation, as data.  While no host is linked:
    when it gives up (C{timeout} after it began looking, or lost its host).
    While one is and messages wait for its acknowledgement: when it takes
    the host for frozen (C{stallTimeout} after the last news from it).  At
    most one of the two runs at a time.  The client transport arms one
    timer for L{next} and calls L{due} when it fires.

    @ivar lastProgress: when the host was last heard from.  The transport
        sets it on every read, directly: a read is a hot path, and a later
        deadline needs no new timer (the one armed finds, when it fires,
        that the host was heard from meanwhile, and L{next} is later).
    @ivar watching: whether the stall deadline runs.
    @ivar giveUpAt: when the client gives up, if it is looking for a host
        and has a timeout.
    """

    def __init__(self, timeout: float, stallTimeout: float) -> None:
        """
        @param timeout: seconds without a host before giving up; 0 never.
        @param stallTimeout: seconds a linked host may leave messages
            unacknowledged.
        """
        self.timeout = timeout
        self.stallTimeout = stallTimeout
        self.giveUpAt: float | None = None
        self.watching = False
        self.lastProgress = 0.0
        self._recheckAt: float | None = None
        self._rechecked = False

    def lookForHost(self, now: float) -> None:
        """
        No host is linked from C{now}: the give-up deadline runs (unless it
        already does), the stall deadline does not.
        """
        self.watching = False
        self._recheckAt = None
        if self.timeout > 0 and self.giveUpAt is None:
            self.giveUpAt = now + self.timeout

    def outlastsHandshake(self) -> bool:
        """
        Whether the give-up deadline, if one runs, falls well after a link
        dialed now would have been dropped for not being answered
        (L{LINK_HANDSHAKE_TIMEOUT}): while that link's handshake is under
        way, its own deadline is the one that can fall.
        """
        return self.timeout <= 0 or self.timeout > 2 * LINK_HANDSHAKE_TIMEOUT

    def linked(self) -> None:
        """
        A host welcomed a link: the give-up deadline stops.
        """
        self.giveUpAt = None

    def watch(self, now: float) -> None:
        """
        Messages wait for the linked host's acknowledgement from C{now}.
        """
        self.watching = True
        self.lastProgress = now
        self._recheckAt = None
        self._rechecked = False

    def stop(self) -> None:
        """
        The connection ended: no deadline runs.
        """
        self.giveUpAt = None
        self.watching = False
        self._recheckAt = None

    def next(self) -> float | None:
        """
        When the next deadline falls, or None if none runs.
        """
        if self._recheckAt is not None:
            return self._recheckAt
        at = self.giveUpAt
        if self.watching:
            stall = self.lastProgress + self.stallTimeout
            if at is None or stall < at:
                at = stall
        return at

    def due(self, now: float, waiting: bool, readingPaused: bool) -> _Marker | None:
        """
        The timer armed for L{next} fired at C{now}: judge.

        @param waiting: whether a link is up with messages unacknowledged.
        @param readingPaused: whether the application stopped reading the
            host (its acknowledgements wait unread, so it is judged later).
        @return: L{GIVE_UP}, L{STALLED} or None (nothing is due; arm the
            timer for L{next} again).  After L{STALLED}, the transport may
            call L{recheck} once, if the host's answer waits unread.
        """
        self._recheckAt = None
        if self.giveUpAt is not None and now >= self.giveUpAt:
            self.giveUpAt = None
            return GIVE_UP
        if not self.watching:
            return None
        if not waiting:
            self.watching = False
            return None
        if readingPaused:
            self.watch(now)
            return None
        if now - self.lastProgress < self.stallTimeout:
            # The host was heard from meanwhile.
            self._rechecked = False
            return None
        return STALLED

    @property
    def mayRecheck(self) -> bool:
        """
        Whether a L{STALLED} verdict may be put off once, to read first.
        """
        return not self._rechecked

    def recheck(self, now: float) -> None:
        """
        The host's answer waits unread: this process was late, not the
        host.  Judge again at C{now}, once the reactor has read it.
        """
        self._rechecked = True
        self._recheckAt = now

    def stalled(self) -> None:
        """
        The link to a stalled host is dropped: no stall deadline runs until
        messages wait on a link again.
        """
        self.watching = False
