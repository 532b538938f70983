"""
The channel's wire format, without any I/O.

Every byte that crosses a channel link is a frame::

    +----------------+--------+------------------+
    | length: u32 BE | kind:u8| body (length - 1) |
    +----------------+--------+------------------+

``length`` counts the kind byte and the body.  The first frame a client
sends is a L{Hello}; the host answers with a L{Welcome} (or an L{ERROR}
frame carrying a reason, then closes).  After that both sides exchange
C{DATA} frames, one per application message, and the host acknowledges the
client's messages with cumulative C{ACK} frames.

Sequence numbers are implicit: the host's L{Welcome} says how many of the
client's messages it has already delivered (C{resumeAfter}); the next C{DATA}
frame on the link is message C{resumeAfter + 1}, and so on.  That keeps each
message's overhead to five bytes while letting a host recognise a resend.

This module is sans-IO: L{FrameDecoder} turns bytes into frames and the
C{encode*} functions turn messages into bytes.  It never touches a socket, a
reactor or a clock, so it is tested on its own.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, cast

MAGIC: Final = b"TWCH"
VERSION: Final = 1

HELLO: Final = 1
WELCOME: Final = 2
DATA: Final = 3
ACK: Final = 4
ERROR: Final = 5
STATUS: Final = 7
PING: Final = 8
PONG: Final = 9
#: The host's application closed this client's connection: the client must
#: not reconnect.
GOODBYE: Final = 10
#: Loopback TCP only, before the hello: the host's nonce.
CHALLENGE: Final = 11
#: The client's nonce and its proof that it knows the channel's secret.
AUTH: Final = 12
#: The host's proof that it knows the secret.
AUTH_OK: Final = 13

KNOWN_KINDS: Final = frozenset(
    {
        HELLO,
        WELCOME,
        DATA,
        ACK,
        ERROR,
        STATUS,
        PING,
        PONG,
        GOODBYE,
        CHALLENGE,
        AUTH,
        AUTH_OK,
    }
)

#: Frames other than C{DATA} are small; this bounds what a peer that has not
#: yet identified itself can make us buffer.
MAX_CONTROL_BODY: Final = 4096

#: The largest first sequence number a hello may name: far beyond what a
#: client can write, and far from the u64 an acknowledgement carries.
MAX_SEQUENCE: Final = 2**62

#: The largest body a u32 length can describe.
MAX_FRAME_BODY: Final = 0xFFFFFFFF - 1

#: The header of every frame: length, then kind.
HEADER: Final = struct.Struct(">IB")
_HEADER = HEADER
_ACK = struct.Struct(">Q")
# A whole C{ACK} frame: header and sequence number.
_ACK_FRAME = struct.Struct(">IBQ")
HEADER_SIZE: Final = _HEADER.size

# A hello is magic, version, flags, client id, pid, maximum message size,
# first sequence number.
_HELLO = struct.Struct(">4sBB16sIIQ")
# A welcome is magic, version, resume point, host pid, maximum message size.
_WELCOME = struct.Struct(">4sBQII")
# Whole frames, header and body in one pack: a hello without a term, a
# welcome that names no host.
_HELLO_FRAME = struct.Struct(">IB4sBB16sIIQ")
_WELCOME_FRAME = struct.Struct(">IB4sBQII")

#: Hello flag: the peer only wants to ask for the channel's status.
FLAG_STATUS_QUERY: Final = 0x01
#: Hello flag: the client's messages follow the hello at once, without
#: waiting for the welcome, numbered from the hello's first sequence number;
#: the host skips those it already delivered.  This saves a round trip when
#: a link comes up (start-up, failover).
FLAG_EAGER: Final = 0x02
#: Hello flag: the client reaches the host across machines (over TLS), and
#: a u64 follows the hello's fields: the lowest term it accepts
#: (the highest it has seen).  A host answers only while it hosts across
#: machines with a term at least that, and its welcome then names it
#: (L{HostTerm}).  A one-machine hello never sets it, so one machine's wire
#: is unchanged.
FLAG_TERM: Final = 0x04

# What follows a hello with FLAG_TERM: the lowest term the client accepts.
_LOWEST_TERM = struct.Struct(">Q")
# What follows a welcome that names its host across machines: the term,
# then the identity and the address, each a length byte and UTF-8.
_TERM = struct.Struct(">Q")


class ProtocolError(Exception):
    """
    A peer sent bytes that break the wire format.

    The message says what was wrong, for the log line written when the link
    is closed because of it.
    """


@dataclass(frozen=True, init=False)
class Hello:
    """
    The first frame of a client link.

    @ivar clientId: 16 bytes naming the client's logical connection, the same
        across every link that connection makes, so that a host recognises
        a resend.
    @ivar pid: the client's process id, as the client claims it.
    @ivar maxMessageSize: the largest message the client accepts.
    @ivar firstSequence: the sequence number of the oldest message the client
        still holds (not yet acknowledged by any host); a host that has not
        seen this client numbers the link's first message with it.
    @ivar flags: a bit set of C{FLAG_*} values.
    @ivar version: the wire version the client speaks.
    @ivar lowestTerm: with L{FLAG_TERM}, the lowest term of a host across
        machines the client accepts (0 before it has seen any).
    """

    clientId: bytes
    pid: int
    maxMessageSize: int
    firstSequence: int = 1
    flags: int = 0
    version: int = VERSION
    lowestTerm: int = 0

    def __init__(
        self,
        clientId: bytes,
        pid: int,
        maxMessageSize: int,
        firstSequence: int = 1,
        flags: int = 0,
        version: int = VERSION,
        lowestTerm: int = 0,
    ) -> None:
        # The frozen dataclass's own __init__ sets each field through
        # object.__setattr__; one update does the same, on the way to each
        # link's first message.
        self.__dict__.update(
            clientId=clientId,
            pid=pid,
            maxMessageSize=maxMessageSize,
            firstSequence=firstSequence,
            flags=flags,
            version=version,
            lowestTerm=lowestTerm,
        )


@dataclass(frozen=True)
class HostTerm:
    """
    Who hosts across machines, as the host's welcome says it: its fencing
    term, its machine's identity and the address it is reached at.

    @ivar term: the host's term (etcd's revision of its election key).
    @ivar identity: its machine's identity (its certificate's name).
    @ivar address: its advertised C{HOST:PORT}.
    """

    term: int
    identity: str
    address: str


@dataclass(frozen=True, init=False)
class Welcome:
    """
    The host's answer to a L{Hello}.

    @ivar resumeAfter: how many of this client's messages the host has
        already delivered to its application; the client resends from the
        next one.
    @ivar pid: the host's process id.
    @ivar maxMessageSize: the largest message the host accepts.
    @ivar version: the wire version the host speaks.
    @ivar host: across machines (an answer to a hello with L{FLAG_TERM}),
        the host's term, identity and address; else C{None}.
    """

    resumeAfter: int
    pid: int
    maxMessageSize: int
    version: int = VERSION
    host: HostTerm | None = None

    def __init__(
        self,
        resumeAfter: int,
        pid: int,
        maxMessageSize: int,
        version: int = VERSION,
        host: HostTerm | None = None,
    ) -> None:
        # As L{Hello}'s: one update, not a call per field.
        self.__dict__.update(
            resumeAfter=resumeAfter,
            pid=pid,
            maxMessageSize=maxMessageSize,
            version=version,
            host=host,
        )


def frameHeader(kind: int, bodyLength: int) -> bytes:
    """
    The five bytes that precede a body of C{bodyLength} bytes of C{kind}.
    """
    return _HEADER.pack(bodyLength + 1, kind)


def encodeFrame(kind: int, body: bytes = b"") -> bytes:
    """
    One whole frame.
    """
    return _HEADER.pack(len(body) + 1, kind) + body


def encodeHello(hello: Hello) -> bytes:
    """
    A C{HELLO} frame.

    @raise ValueError: if the client id is not 16 bytes.
    """
    return helloFrame(
        hello.clientId,
        hello.pid,
        hello.maxMessageSize,
        hello.firstSequence,
        hello.flags,
        hello.lowestTerm,
        hello.version,
    )


def helloFrame(
    clientId: bytes,
    pid: int,
    maxMessageSize: int,
    firstSequence: int,
    flags: int,
    lowestTerm: int = 0,
    version: int = VERSION,
) -> bytes:
    """
    The C{HELLO} frame of a L{Hello} with these fields, made without one
    (a client's way to its first message).

    @raise ValueError: if the client id is not 16 bytes.
    """
    if len(clientId) != 16:
        raise ValueError(f"client id is {len(clientId)} bytes; it must be 16")
    if not flags & FLAG_TERM:
        return _HELLO_FRAME.pack(
            _HELLO.size + 1,
            HELLO,
            MAGIC,
            version,
            flags,
            clientId,
            pid,
            maxMessageSize,
            firstSequence,
        )
    body = _HELLO.pack(
        MAGIC, version, flags, clientId, pid, maxMessageSize, firstSequence
    ) + _LOWEST_TERM.pack(lowestTerm)
    return encodeFrame(HELLO, body)


def _encodeName(name: str, what: str) -> bytes:
    encoded = name.encode("utf-8")
    if not 1 <= len(encoded) <= 255:
        raise ValueError(f"{what} must be 1 to 255 bytes of UTF-8, not {name!r}")
    return bytes([len(encoded)]) + encoded


def encodeWelcome(welcome: Welcome) -> bytes:
    """
    A C{WELCOME} frame.

    @raise ValueError: if the host's identity or address is empty or over
        255 bytes.
    """
    return welcomeFrame(
        welcome.resumeAfter,
        welcome.pid,
        welcome.maxMessageSize,
        welcome.host,
        welcome.version,
    )


def welcomeFrame(
    resumeAfter: int,
    pid: int,
    maxMessageSize: int,
    host: HostTerm | None = None,
    version: int = VERSION,
) -> bytes:
    """
    The C{WELCOME} frame of a L{Welcome} with these fields, made without
    one (a host's way to a link's first message).

    @raise ValueError: if the host's identity or address is empty or over
        255 bytes.
    """
    if host is None:
        return _WELCOME_FRAME.pack(
            _WELCOME.size + 1,
            WELCOME,
            MAGIC,
            version,
            resumeAfter,
            pid,
            maxMessageSize,
        )
    body = (
        _WELCOME.pack(MAGIC, version, resumeAfter, pid, maxMessageSize)
        + _TERM.pack(host.term)
        + _encodeName(host.identity, "the host's identity")
        + _encodeName(host.address, "the host's address")
    )
    return encodeFrame(WELCOME, body)


def encodeAck(sequence: int) -> bytes:
    """
    An C{ACK} frame: every message up to and including C{sequence} was
    delivered.
    """
    return encodeFrame(ACK, _ACK.pack(sequence))


def encodeError(reason: str) -> bytes:
    """
    An C{ERROR} frame: the sender is about to close the link, and why.
    """
    return encodeFrame(ERROR, reason.encode("utf-8", "replace")[:MAX_CONTROL_BODY])


def _checkMagic(magic: bytes, version: int, what: str) -> None:
    if magic != MAGIC:
        raise ProtocolError(f"{what} does not start with the channel's magic bytes")
    if version != VERSION:
        raise ProtocolError(
            f"{what} asks for wire version {version}; this side speaks {VERSION}"
        )


def decodeHello(body: bytes) -> Hello:
    """
    Parse the body of a C{HELLO} frame.

    @raise ProtocolError: if it is not a hello this version understands.
    """
    size = _HELLO.size
    if len(body) >= size and body[5] & FLAG_TERM:
        size += _LOWEST_TERM.size
    if len(body) != size:
        raise ProtocolError(f"hello is {len(body)} bytes long; it must be {size}")
    magic, version, flags, clientId, pid, maxMessageSize, first = _HELLO.unpack_from(
        body
    )
    _checkMagic(magic, version, "hello")
    lowestTerm = 0
    if flags & FLAG_TERM:
        lowestTerm = _LOWEST_TERM.unpack_from(body, _HELLO.size)[0]
    if not 1 <= first <= MAX_SEQUENCE:
        # A host counts on from here; it must not run off the end of an
        # acknowledgement's u64.
        raise ProtocolError(
            f"hello's first sequence number {first} is not from 1 to {MAX_SEQUENCE}"
        )
    return Hello(clientId, pid, maxMessageSize, first, flags, version, lowestTerm)


def decodeWelcome(body: bytes) -> Welcome:
    """
    Parse the body of a C{WELCOME} frame.

    @raise ProtocolError: if it is not a welcome this version understands.
    """
    if len(body) < _WELCOME.size:
        raise ProtocolError(
            f"welcome is {len(body)} bytes long; it must be at least {_WELCOME.size}"
        )
    magic, version, resumeAfter, pid, maxMessageSize = _WELCOME.unpack_from(body)
    _checkMagic(magic, version, "welcome")
    host = None
    if len(body) > _WELCOME.size:
        host = _decodeHostTerm(body, _WELCOME.size)
    return Welcome(resumeAfter, pid, maxMessageSize, version, host)


def _decodeHostTerm(body: bytes, offset: int) -> HostTerm:
    """
    Parse what follows a welcome's fixed fields: the host across machines.

    @raise ProtocolError: unless it is exactly a term of 1 or more, then
        two non-empty UTF-8 names with their length bytes.
    """
    if len(body) < offset + _TERM.size:
        raise ProtocolError("welcome's host term is cut short")
    term: int = _TERM.unpack_from(body, offset)[0]
    if term < 1:
        raise ProtocolError("welcome's host term is 0; terms start at 1")
    offset += _TERM.size
    names = []
    for what in ("identity", "address"):
        if offset >= len(body):
            raise ProtocolError(f"welcome's host {what} is missing")
        length = body[offset]
        name = body[offset + 1 : offset + 1 + length]
        if length == 0 or len(name) != length:
            raise ProtocolError(f"welcome's host {what} is empty or cut short")
        try:
            names.append(name.decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(f"welcome's host {what} is not UTF-8") from None
        offset += 1 + length
    if offset != len(body):
        raise ProtocolError(
            f"welcome has {len(body) - offset} byte(s) after its host's address"
        )
    return HostTerm(term, names[0], names[1])


def decodeAck(body: bytes) -> int:
    """
    Parse the body of an C{ACK} frame.

    @raise ProtocolError: if it is not eight bytes.
    """
    if len(body) != _ACK.size:
        raise ProtocolError(f"ack is {len(body)} bytes long; it must be {_ACK.size}")
    sequence: int = _ACK.unpack(body)[0]
    return sequence


#: A C{DATA} frame whose body is at least this large, and not whole in one
#: read, is gathered in a buffer of its own, its exact size, instead of in
#: the stream's buffer: what follows of it is copied (or read) into place
#: once, never moved again as later reads are appended.
LARGE_BODY: Final = 8192

#: A large message is gathered in pieces: the first holds at most this
#: much beyond what has arrived, each next one as much as has arrived, so
#: that a peer that announces a large message makes its reader hold about
#: twice what it sent, not the size it announced.  Pieces are never moved
#: once made; joining them is the message's one copy.
_LARGE_FIRST = 256 * 1024


#: A read (a view of the reader's buffer) whose first frame is no longer
#: than this is copied whole into bytes before it is parsed.
_COPIED_WHOLE_UNDER = 4096


class FrameDecoder:
    """
    Split a byte stream into frames.

    Bodies are copied out of what is fed, once, into the bytes returned
    (a view whose first message is small is first copied whole: see
    L{_COPIED_WHOLE_UNDER}); nothing fed is kept beyond the call (an
    incomplete frame is copied), so a reader may feed a view of a buffer it
    reuses.

    @ivar maxMessageSize: the largest C{DATA} body accepted; other kinds are
        bounded by L{MAX_CONTROL_BODY}.
    @ivar largeUnderWay: whether a large message is under way, and
        L{readTarget} has a view to offer (an attribute, so that a reader
        looks without a call per read).
    @ivar lastPiece: whether L{readTarget}'s view runs to the end of the
        large message's body: what a read brings beyond it is the frames
        after it, which a reader may read into a buffer of its own in the
        same call.
    """

    # One per link, for as long as the link lives: no instance dictionary.
    __slots__ = (
        "maxMessageSize",
        "_buffer",
        "_pieces",
        "_largeSize",
        "_largeFilled",
        "_pieceFilled",
        "largeUnderWay",
        "lastPiece",
    )

    def __init__(self, maxMessageSize: int) -> None:
        self.maxMessageSize = maxMessageSize
        self._buffer = bytearray()
        # A large frame under way (see LARGE_BODY): its body's pieces, the
        # size announced, how much has arrived, and how much of the last
        # piece is filled.
        self._pieces: list[bytearray] = []
        self._largeSize = 0
        self._largeFilled = 0
        self._pieceFilled = 0
        self.largeUnderWay = False
        self.lastPiece = False

    @property
    def buffered(self) -> int:
        """
        How many bytes of incomplete frames are held.
        """
        large = self._largeFilled + HEADER_SIZE if self.largeUnderWay else 0
        return len(self._buffer) + large

    def readTarget(self) -> memoryview | None:
        """
        Where the next bytes read from the link may go directly, without
        passing through the caller's buffer: (part of) the rest of a large
        frame's body under way, or None.  Tell L{received} how many bytes
        were put there.
        """
        if not self.largeUnderWay:
            return None
        return memoryview(self._pieces[-1])[self._pieceFilled :]

    def received(self, count: int) -> None:
        """
        C{count} bytes were read into L{readTarget}'s view; the next L{feed}
        (C{b""} will do) returns the frame once it is whole.
        """
        self._advanceLarge(count)

    def _advanceLarge(self, count: int) -> None:
        """
        C{count} more bytes are in the last piece; begin the next one if it
        is full and the body is not whole.
        """
        filled = self._largeFilled = self._largeFilled + count
        piece = self._pieceFilled = self._pieceFilled + count
        if piece == len(self._pieces[-1]) and filled < self._largeSize:
            left = self._largeSize - filled
            self._pieces.append(bytearray(min(left, filled)))
            self._pieceFilled = 0
            self.lastPiece = left <= filled

    def _takeLarge(self, data: bytes | bytearray | memoryview) -> int:
        """
        Copy into the large frame's pieces as much of C{data} as its body
        lacks.

        @return: how much of C{data} was taken.
        """
        view = memoryview(data)
        taken = 0
        end = len(view)
        while taken < end and self._largeFilled < self._largeSize:
            piece = self._pieces[-1]
            at = self._pieceFilled
            count = min(len(piece) - at, end - taken)
            piece[at : at + count] = view[taken : taken + count]
            taken += count
            self._advanceLarge(count)
        return taken

    def feed(
        self, data: bytes | bytearray | memoryview, maxFrames: int | None = None
    ) -> list[tuple[int, bytes]]:
        """
        Add bytes read from the link and return every frame they complete, in
        order, as C{(kind, body)} pairs.

        @param maxFrames: return at most this many, keeping the rest
            buffered (call again, with C{b""}, for them): a handshake takes
            one frame at a time, so that each is judged by the limit in
            force once the frames before it are handled.

        @raise ProtocolError: on an unknown kind or a frame over its limit.
            The decoder is then unusable: the link must be closed.
        """
        if not data and self._buffer and not self.largeUnderWay:
            # Called again for what an earlier call left (the frames read
            # with a hello): the buffer starts on a frame boundary, so it
            # is parsed as if read now, the commonest case by the fast path
            # below, not completed frame by frame.
            data = bytes(self._buffer)
            self._buffer.clear()
        if maxFrames == 1 and not self._buffer and not self.largeUnderWay:
            # A handshake's read, one frame taken: a whole control frame
            # within its limit, from a frame boundary, is taken here (what
            # follows it waits in the buffer); anything else, as below.
            end = len(data)
            if end > 4:
                length, kind = _HEADER.unpack_from(data)
                stop = length + 4
                if (
                    stop <= end
                    and 0 < length <= MAX_CONTROL_BODY + 1
                    and kind != DATA
                    and kind in KNOWN_KINDS
                ):
                    if stop < end:
                        self._buffer += memoryview(data)[stop:]
                    return [(kind, bytes(data[5:stop]))]
        if maxFrames is None and not self._buffer and not self.largeUnderWay:
            # The commonest reads of all, a round trip's: one whole message
            # within the limit, from a frame boundary, alone (a request) or
            # with the acknowledgement that follows it (a reply).
            end = len(data)
            if end > 4:
                length, kind = _HEADER.unpack_from(data)
                if kind == DATA and 0 < length <= self.maxMessageSize + 1:
                    stop = length + 4
                    if stop == end:
                        return [(DATA, bytes(data[5:]))]
                    if end - stop == _ACK_FRAME.size:
                        ackLength, ackKind, _ = _ACK_FRAME.unpack_from(data, stop)
                        if ackLength == 9 and ackKind == ACK:
                            return [
                                (DATA, bytes(data[5:stop])),
                                (ACK, bytes(data[stop + 5 :])),
                            ]
        frames: list[tuple[int, bytes]] = []
        room = -1 if maxFrames is None else maxFrames
        if self.largeUnderWay:
            if data:
                data = memoryview(data)[self._takeLarge(data) :]
            if self._largeFilled < self._largeSize:
                return frames
            pieces = self._pieces
            self._pieces = []
            self._largeFilled = self._pieceFilled = 0
            self.largeUnderWay = False
            frames.append((DATA, b"".join(pieces)))
            room -= 1
        buffer = self._buffer
        offset = 0
        if buffer:
            # The frame under way is completed from the front of C{data} and
            # parsed from the buffer; the rest of C{data} is parsed from
            # itself, as a read that starts on a frame boundary is.
            offset = self._completeFrame(buffer, data)
            # A view, so that bodies are copied once (a slice of the
            # bytearray would be copied again into bytes).
            owned = memoryview(buffer)
            try:
                parsed, room = self._parse(owned, 0, room, frames)
            finally:
                owned.release()
            del buffer[:parsed]
            if buffer or offset == len(data):
                # Still incomplete (all of C{data} is in it), or no room
                # for more frames: what is left waits for the next call.
                buffer += memoryview(data)[offset:]
                return frames
        if (
            type(data) is not bytes
            and len(data) - offset >= 5
            and _HEADER.unpack_from(data, offset)[0] <= _COPIED_WHOLE_UNDER
        ):
            # A view of the reader's buffer, starting with a small message:
            # one copy of the read, then a slice of it per body, costs less
            # than a view and a copy per body (up to about 4 KiB a message).
            data = bytes(memoryview(data)[offset:])
            offset = 0
        # The common case: parsed straight from what was read, copying only
        # bodies.
        parsed, room = self._parse(data, offset, room, frames)
        if parsed < len(data):
            buffer += memoryview(data)[parsed:]
        return frames

    def _completeFrame(
        self, buffer: bytearray, data: bytes | bytearray | memoryview
    ) -> int:
        """
        Move to C{buffer}, which holds the start of a frame, as much of
        C{data} as that frame lacks (all of it, if the frame is a large one
        or C{data} is short; nothing more once its header is known bad,
        which L{_parse} then refuses).

        @return: how much of C{data} was moved.
        """
        view = memoryview(data)
        taken = 0
        if len(buffer) < 5:
            taken = min(5 - len(buffer), len(view))
            buffer += view[:taken]
            if len(buffer) < 5:
                return taken
        length = _HEADER.unpack_from(buffer)[0]
        if length > LARGE_BODY:
            # Gathered in pieces of its own (see L{_parse}), from what was
            # read, as before.
            buffer += view[taken:]
            return len(view)
        lacking = 4 + length - len(buffer)
        if lacking > 0:
            more = min(lacking, len(view) - taken)
            buffer += view[taken : taken + more]
            taken += more
        return taken

    def _parse(
        self,
        source: bytes | bytearray | memoryview,
        offset: int,
        room: int,
        frames: list[tuple[int, bytes]],
    ) -> tuple[int, int]:
        """
        Append to C{frames} the frames of C{source} from C{offset} on, at
        most C{room} of them (no limit if negative), starting a large one
        that C{source} holds only the start of.

        @return: where parsing stopped in C{source} (at the start of an
            incomplete frame, or at its end), and the room left.
        @raise ProtocolError: as L{feed}.
        """
        append = frames.append
        unpack = _HEADER.unpack_from
        maxData = self.maxMessageSize + 1
        dataKind = DATA
        # A slice of bytes is a copy already; of anything else, a view (or
        # a bytearray) to copy into bytes.
        sliceIsCopy = type(source) is bytes
        end = len(source)
        while end - offset >= 5 and room != 0:
            if room < 0:
                # The common case: whole messages within the limit, one
                # after another, taken by a loop that tests nothing else
                # (no room to count, no other kind); what it stops at is
                # handled below.
                if sliceIsCopy:
                    raw = cast(bytes, source)
                    while end - offset >= 5:
                        length, kind = unpack(raw, offset)
                        stop = offset + 4 + length
                        if kind != dataKind or not 0 < length <= maxData:
                            break
                        if stop > end:
                            break
                        append((dataKind, raw[offset + 5 : stop]))
                        offset = stop
                else:
                    while end - offset >= 5:
                        length, kind = unpack(source, offset)
                        stop = offset + 4 + length
                        if kind != dataKind or not 0 < length <= maxData:
                            break
                        if stop > end:
                            break
                        append((dataKind, bytes(source[offset + 5 : stop])))
                        offset = stop
                if end - offset < 5:
                    break
            length, kind = unpack(source, offset)
            stop = offset + 4 + length
            if kind == DATA and 0 < length <= maxData and stop <= end:
                # A whole message within the limit: the common case, in
                # one test.
                append((DATA, bytes(source[offset + 5 : stop])))
                offset = stop
                room -= 1
                continue
            if kind == ACK and length == 9 and stop <= end:
                # A whole acknowledgement: what follows a batch's replies.
                append((ACK, bytes(source[offset + 5 : stop])))
                offset = stop
                room -= 1
                continue
            if length == 0:
                raise ProtocolError("frame length of 0 leaves no room for its kind")
            if kind == DATA:
                if length > maxData:
                    raise ProtocolError(
                        f"message of {length - 1} bytes is over the limit "
                        f"of {self.maxMessageSize} bytes"
                    )
            elif kind not in KNOWN_KINDS:
                raise ProtocolError(f"unknown frame kind {kind}")
            elif length > MAX_CONTROL_BODY + 1:
                raise ProtocolError(
                    f"control frame of kind {kind} is {length - 1} bytes "
                    f"long, over the limit of {MAX_CONTROL_BODY}"
                )
            if stop > end:
                if kind == DATA and length > LARGE_BODY:
                    # Gathered in pieces of its own: the rest of it is
                    # copied (or read) into place once.
                    size = self._largeSize = length - 1
                    first = min(size, end - offset - 5 + _LARGE_FIRST)
                    self._pieces = [bytearray(first)]
                    self.lastPiece = first == size
                    self.largeUnderWay = True
                    self._takeLarge(memoryview(source)[offset + 5 : end])
                    offset = end
                break
            append((kind, bytes(source[offset + 5 : stop])))
            offset = stop
            room -= 1
        return offset, room
