"""
Unit tests for L{twisted_channel._wire}: the sans-IO frame format.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_channel import _wire
from twisted_channel._wire import (
    ACK,
    DATA,
    ERROR,
    HEADER_SIZE,
    HELLO,
    KNOWN_KINDS,
    MAGIC,
    MAX_CONTROL_BODY,
    VERSION,
    WELCOME,
    FrameDecoder,
    Hello,
    ProtocolError,
    Welcome,
)

#: The largest DATA body the decoders in these tests accept.
LIMIT = 300

U8 = st.integers(0, 0xFF)
U32 = st.integers(0, 0xFFFFFFFF)
U64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)


def frameStrategy() -> st.SearchStrategy[tuple[int, bytes]]:
    """
    Any well-formed frame a decoder with a DATA limit of L{LIMIT} accepts.
    """
    data = st.tuples(st.just(DATA), st.binary(max_size=LIMIT))
    control = st.tuples(
        st.sampled_from(sorted(KNOWN_KINDS - {DATA})), st.binary(max_size=64)
    )
    return st.one_of(data, control)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    Split C{data} at the given offsets (taken modulo its length).
    """
    if not data:
        return [data]
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def feedAll(decoder: FrameDecoder, chunks: list[bytes]) -> list[tuple[int, bytes]]:
    frames: list[tuple[int, bytes]] = []
    for chunk in chunks:
        frames.extend(decoder.feed(chunk))
    return frames


# Round trips


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(frameStrategy(), max_size=20),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_framesRoundTripInAnyChunking(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    """
    Any sequence of frames, encoded and then fed to a decoder in any
    chunking, decodes to the same frames, with nothing left buffered.
    """
    encoded = b"".join(_wire.encodeFrame(kind, body) for kind, body in frames)
    decoder = FrameDecoder(LIMIT)
    assert feedAll(decoder, chunked(encoded, cuts)) == frames
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(frameStrategy(), max_size=10))
def test_byteAtATime(frames: list[tuple[int, bytes]]) -> None:
    """
    Feeding one byte at a time decodes the same frames.
    """
    encoded = b"".join(_wire.encodeFrame(kind, body) for kind, body in frames)
    decoder = FrameDecoder(LIMIT)
    result = feedAll(decoder, [encoded[i : i + 1] for i in range(len(encoded))])
    assert result == frames
    assert decoder.buffered == 0


@settings(max_examples=100, deadline=None)
@given(payloads=st.lists(st.binary(max_size=LIMIT), max_size=10))
def test_frameHeaderMatchesEncodeFrame(payloads: list[bytes]) -> None:
    """
    A header from L{_wire.frameHeader} followed by the body is the same as
    L{_wire.encodeFrame}, which is how the client and host send DATA.
    """
    for payload in payloads:
        assert _wire.frameHeader(DATA, len(payload)) + payload == _wire.encodeFrame(
            DATA, payload
        )
    assert len(_wire.frameHeader(DATA, 0)) == HEADER_SIZE == 5


@settings(max_examples=200, deadline=None)
@given(
    clientId=st.binary(min_size=16, max_size=16),
    pid=U32,
    maxMessageSize=U32,
    firstSequence=st.integers(min_value=1, max_value=_wire.MAX_SEQUENCE),
    flags=U8,
)
def test_helloRoundTrip(
    clientId: bytes, pid: int, maxMessageSize: int, firstSequence: int, flags: int
) -> None:
    """
    A hello decodes to what was encoded, directly and through a decoder.
    """
    hello = Hello(clientId, pid, maxMessageSize, firstSequence, flags)
    frame = _wire.encodeHello(hello)
    assert _wire.decodeHello(frame[HEADER_SIZE:]) == hello
    [(kind, body)] = FrameDecoder(1).feed(frame)
    assert kind == HELLO
    assert _wire.decodeHello(body) == hello


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(frameStrategy(), min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    taken=st.integers(0, 12),
    reused=st.booleans(),
)
def test_oneFrameAtATimeThenTheRest(
    frames: list[tuple[int, bytes]], cuts: list[int], taken: int, reused: bool
) -> None:
    """
    A handshake's reads: the first C{taken} frames taken one at a time
    (C{maxFrames=1}, then C{b""} for what a read left), the rest as they
    come (C{b""} first, for what the handshake left in the buffer), in any
    chunking, read as bytes or as views of a reused buffer, come out as they
    went in.
    """
    stream = b"".join(_wire.encodeFrame(kind, body) for kind, body in frames)
    decoder = FrameDecoder(LIMIT)
    out: list[tuple[int, bytes]] = []
    handshaking = True
    for chunk in chunked(stream, cuts):
        data: bytes | memoryview = memoryview(bytearray(chunk)) if reused else chunk
        while handshaking:
            if len(out) >= taken:
                handshaking = False
                out.extend(decoder.feed(b""))
                break
            got = decoder.feed(data, 1)
            data = b""
            if not got:
                break
            out.extend(got)
        if not handshaking:
            out.extend(decoder.feed(data))
    out.extend(decoder.feed(b""))
    assert out == frames
    assert decoder.buffered == 0


def test_helloDefaults() -> None:
    """
    A hello's first sequence defaults to 1, its flags to none and its version
    to this side's.
    """
    hello = _wire.decodeHello(_wire.encodeHello(Hello(b"c" * 16, 7, 100))[HEADER_SIZE:])
    assert hello == Hello(b"c" * 16, 7, 100, 1, 0, VERSION)
    assert hello.flags & _wire.FLAG_STATUS_QUERY == 0


@settings(max_examples=200, deadline=None)
@given(resumeAfter=U64, pid=U32, maxMessageSize=U32)
def test_welcomeRoundTrip(resumeAfter: int, pid: int, maxMessageSize: int) -> None:
    """
    A welcome decodes to what was encoded.
    """
    welcome = Welcome(resumeAfter, pid, maxMessageSize)
    frame = _wire.encodeWelcome(welcome)
    [(kind, body)] = FrameDecoder(1).feed(frame)
    assert kind == WELCOME
    assert _wire.decodeWelcome(body) == welcome


@settings(max_examples=200, deadline=None)
@given(sequence=U64)
def test_ackRoundTrip(sequence: int) -> None:
    """
    An ACK decodes to its sequence number.
    """
    [(kind, body)] = FrameDecoder(1).feed(_wire.encodeAck(sequence))
    assert kind == ACK
    assert _wire.decodeAck(body) == sequence


def test_errorFrame() -> None:
    """
    An ERROR frame carries its reason as UTF-8, cut to the control limit so
    that any decoder accepts it.
    """
    [(kind, body)] = FrameDecoder(1).feed(_wire.encodeError("nope: é"))
    assert (kind, body.decode("utf-8")) == (ERROR, "nope: é")
    long = _wire.encodeError("x" * (MAX_CONTROL_BODY * 2))
    [(kind, body)] = FrameDecoder(1).feed(long)
    assert kind == ERROR
    assert len(body) == MAX_CONTROL_BODY


# Truncated input


@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(frameStrategy(), min_size=1, max_size=10),
    data=st.data(),
)
def test_truncatedInputIsBuffered(
    frames: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    """
    Input that stops inside a frame yields the complete frames before it and
    buffers the rest; the rest of the bytes then complete it.
    """
    encoded = [_wire.encodeFrame(kind, body) for kind, body in frames]
    whole = b"".join(encoded)
    cut = data.draw(st.integers(0, len(whole) - 1), label="cut")
    decoder = FrameDecoder(LIMIT)
    first = decoder.feed(whole[:cut])
    # Which frames end at or before the cut?
    complete = 0
    end = 0
    for frame in encoded:
        if end + len(frame) > cut:
            break
        end += len(frame)
        complete += 1
    assert first == frames[:complete]
    assert decoder.buffered == cut - end
    assert decoder.feed(whole[cut:]) == frames[complete:]
    assert decoder.buffered == 0


def test_partialHeader() -> None:
    """
    Fewer than five bytes are not a frame yet.
    """
    decoder = FrameDecoder(10)
    frame = _wire.encodeAck(5)
    for i in range(HEADER_SIZE - 1):
        assert decoder.feed(frame[i : i + 1]) == []
    assert decoder.buffered == HEADER_SIZE - 1
    assert decoder.feed(frame[HEADER_SIZE - 1 :]) == [(ACK, struct.pack(">Q", 5))]
    assert decoder.buffered == 0


def test_emptyFeed() -> None:
    """
    Feeding nothing yields nothing and keeps what was buffered.
    """
    decoder = FrameDecoder(10)
    assert decoder.feed(b"") == []
    decoder.feed(b"\x00\x00")
    assert decoder.feed(b"") == []
    assert decoder.buffered == 2


def test_bytearrayAndMemoryviewInput() -> None:
    """
    The decoder accepts any bytes-like chunk and returns bodies as bytes.
    """
    frame = _wire.encodeFrame(DATA, b"hello")
    decoder = FrameDecoder(10)
    assert decoder.feed(bytearray(frame[:7])) == []
    [(kind, body)] = decoder.feed(bytearray(frame[7:]))
    assert (kind, body) == (DATA, b"hello")
    assert type(body) is bytes


# Corrupted input


def test_unknownKind() -> None:
    """
    A kind the wire format does not define is refused as soon as its header
    arrives.
    """
    with pytest.raises(ProtocolError, match="unknown frame kind 99"):
        FrameDecoder(10).feed(_wire.frameHeader(99, 3))
    with pytest.raises(ProtocolError, match="unknown frame kind 0"):
        FrameDecoder(10).feed(_wire.encodeFrame(0))


def test_unknownKindAfterGoodFrames() -> None:
    """
    An unknown kind after good frames in the same read still raises.
    """
    decoder = FrameDecoder(10)
    with pytest.raises(ProtocolError, match="unknown frame kind 200"):
        decoder.feed(_wire.encodeAck(1) + _wire.encodeFrame(200, b"x"))


def test_dataAtLimit() -> None:
    """
    A DATA body exactly at the limit is accepted.
    """
    assert FrameDecoder(10).feed(_wire.encodeFrame(DATA, b"x" * 10)) == [
        (DATA, b"x" * 10)
    ]
    assert FrameDecoder(10).feed(_wire.encodeFrame(DATA)) == [(DATA, b"")]


def test_roundTripReads() -> None:
    """
    The reads of a round trip, each from a frame boundary into a fresh
    decoder: a message alone, a message then its acknowledgement; and what
    only looks like them: a message followed by a frame of an
    acknowledgement's size that is not one, or by an acknowledgement whose
    length is wrong (its body refused by L{_wire.decodeAck}), a message
    over the limit alone or before an acknowledgement (refused).  Each
    view of a reused buffer is copied.
    """
    message = _wire.encodeFrame(DATA, b"x" * 10)
    ack = _wire.encodeAck(7)
    ping = _wire.encodeFrame(_wire.PING, b"12345678")
    assert len(ping) == len(ack)
    buffer = bytearray(message + ack)
    frames = FrameDecoder(10).feed(memoryview(buffer))
    buffer[:] = bytes(len(buffer))
    assert frames == [(DATA, b"x" * 10), (ACK, struct.pack(">Q", 7))]
    assert FrameDecoder(10).feed(memoryview(message)) == [(DATA, b"x" * 10)]
    assert FrameDecoder(10).feed(message + ping) == [
        (DATA, b"x" * 10),
        (_wire.PING, b"12345678"),
    ]
    # An acknowledgement's 13 bytes, of which its length claims 12.
    shortAck = struct.pack(">IB", 8, ACK) + bytes(8)
    decoder = FrameDecoder(10)
    [data, (kind, body)] = decoder.feed(message + shortAck)
    assert data == (DATA, b"x" * 10) and kind == ACK and decoder.buffered == 1
    with pytest.raises(ProtocolError, match="ack is 7 bytes long"):
        _wire.decodeAck(body)
    over = _wire.encodeFrame(DATA, b"x" * 11)
    for read in (over, over + ack):
        with pytest.raises(ProtocolError, match="over the limit of 10 bytes"):
            FrameDecoder(10).feed(read)


def test_oversizedData() -> None:
    """
    A DATA frame over the limit is refused from its header alone, before
    its body is buffered, with a message giving both sizes.
    """
    decoder = FrameDecoder(10)
    with pytest.raises(ProtocolError, match="message of 11 bytes is over the limit"):
        decoder.feed(_wire.frameHeader(DATA, 11))
    with pytest.raises(ProtocolError, match="limit of 10 bytes"):
        FrameDecoder(10).feed(_wire.frameHeader(DATA, 0xFFFFFFFE))


def test_oversizedControlFrame() -> None:
    """
    Frames other than DATA are bounded by L{MAX_CONTROL_BODY}, whatever the
    DATA limit.
    """
    ok = _wire.encodeFrame(ERROR, b"e" * MAX_CONTROL_BODY)
    assert FrameDecoder(1).feed(ok) == [(ERROR, b"e" * MAX_CONTROL_BODY)]
    decoder = FrameDecoder(10 * MAX_CONTROL_BODY)
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(_wire.frameHeader(HELLO, MAX_CONTROL_BODY + 1))
    message = str(caught.value)
    assert "control frame of kind 1" in message
    assert f"{MAX_CONTROL_BODY + 1} bytes long" in message
    assert f"limit of {MAX_CONTROL_BODY}" in message


def test_zeroLength() -> None:
    """
    A length of zero has no room for the kind byte.
    """
    with pytest.raises(ProtocolError, match="frame length of 0"):
        FrameDecoder(10).feed(b"\x00\x00\x00\x00\x03")


def test_zeroLengthAfterBufferedBytes() -> None:
    """
    A zero length is found when its header is completed by a later read.
    """
    decoder = FrameDecoder(10)
    assert decoder.feed(_wire.encodeAck(1) + b"\x00\x00") == [
        (ACK, struct.pack(">Q", 1))
    ]
    with pytest.raises(ProtocolError, match="frame length of 0"):
        decoder.feed(b"\x00\x00\x04")


def helloBody(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "magic": MAGIC,
        "version": VERSION,
        "flags": 0,
        "clientId": b"i" * 16,
        "pid": 1,
        "maxMessageSize": 10,
        "first": 1,
    }
    fields.update(overrides)
    return struct.pack(">4sBB16sIIQ", *fields.values())


def welcomeBody(**overrides: object) -> bytes:
    fields: dict[str, object] = {
        "magic": MAGIC,
        "version": VERSION,
        "resumeAfter": 0,
        "pid": 1,
        "maxMessageSize": 10,
    }
    fields.update(overrides)
    return struct.pack(">4sBQII", *fields.values())


def test_helloBodyHelper() -> None:
    """
    The helpers below build the same bodies as the encoders.
    """
    assert helloBody() == _wire.encodeHello(Hello(b"i" * 16, 1, 10))[HEADER_SIZE:]
    assert welcomeBody() == _wire.encodeWelcome(Welcome(0, 1, 10))[HEADER_SIZE:]


def test_badMagic() -> None:
    """
    A hello or welcome without the magic bytes is refused.
    """
    with pytest.raises(ProtocolError, match="hello does not start with .* magic"):
        _wire.decodeHello(helloBody(magic=b"HTTP"))
    with pytest.raises(ProtocolError, match="welcome does not start with .* magic"):
        _wire.decodeWelcome(welcomeBody(magic=b"\x00\x00\x00\x00"))


def test_wrongVersion() -> None:
    """
    A hello or welcome of another wire version is refused, naming both.
    """
    with pytest.raises(
        ProtocolError,
        match=f"hello asks for wire version 2; this side speaks {VERSION}",
    ):
        _wire.decodeHello(helloBody(version=2))
    with pytest.raises(ProtocolError, match="welcome asks for wire version 0"):
        _wire.decodeWelcome(welcomeBody(version=0))


@pytest.mark.parametrize("delta", [-1, 1])
def test_wrongBodyLengths(delta: int) -> None:
    """
    Hello, welcome and ACK bodies of the wrong length are refused, with the
    length found and the one expected.
    """
    hello = helloBody()
    badHello = hello[:-1] if delta < 0 else hello + b"\x00"
    with pytest.raises(
        ProtocolError,
        match=f"hello is {len(hello) + delta} bytes long; it must be {len(hello)}",
    ):
        _wire.decodeHello(badHello)
    welcome = welcomeBody()
    # A welcome may be longer: what follows its fixed fields names its host
    # across machines, and one byte cannot.
    badWelcome = welcome[:-1] if delta < 0 else welcome + b"\x00"
    with pytest.raises(
        ProtocolError,
        match=f"welcome is {len(welcome) + delta} bytes long; "
        f"it must be at least {len(welcome)}"
        if delta < 0
        else "welcome's host term is cut short",
    ):
        _wire.decodeWelcome(badWelcome)
    with pytest.raises(ProtocolError, match=f"ack is {8 + delta} bytes long"):
        _wire.decodeAck(b"\x00" * (8 + delta))


def test_emptyBodies() -> None:
    """
    Empty bodies are refused by every control decoder.
    """
    for decode, what in [
        (_wire.decodeHello, "hello"),
        (_wire.decodeWelcome, "welcome"),
        (_wire.decodeAck, "ack"),
    ]:
        with pytest.raises(ProtocolError, match=f"{what} is 0 bytes long"):
            decode(b"")


# Arbitrary bytes


@settings(max_examples=300, deadline=None)
@given(
    garbage=st.binary(max_size=200),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
    limit=st.integers(1, 100),
)
def test_randomBytes(garbage: bytes, cuts: list[int], limit: int) -> None:
    """
    Arbitrary bytes either decode to well-formed frames or raise
    L{ProtocolError}: never another exception.  And the outcome does not
    depend on how the bytes were split: the frames are the same, and if one
    feed raises, some feed of the chunked input raises too.
    """
    whole = FrameDecoder(limit)
    try:
        expected: list[tuple[int, bytes]] | None = whole.feed(garbage)
    except ProtocolError as e:
        assert str(e)
        expected = None
    else:
        for kind, body in expected:
            assert kind in KNOWN_KINDS
            assert len(body) <= (limit if kind == DATA else MAX_CONTROL_BODY)
            assert type(body) is bytes

    pieces = FrameDecoder(limit)
    got: list[tuple[int, bytes]] = []
    try:
        for chunk in chunked(garbage, cuts):
            got.extend(pieces.feed(chunk))
    except ProtocolError:
        assert expected is None
    else:
        assert got == expected
        assert pieces.buffered == whole.buffered


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=60))
def test_randomControlBodies(body: bytes) -> None:
    """
    The control decoders raise only L{ProtocolError} on arbitrary bodies.
    """
    for decode in (_wire.decodeHello, _wire.decodeWelcome, _wire.decodeAck):
        try:
            decode(body)
        except ProtocolError as e:
            assert str(e)


@pytest.mark.parametrize("first", [0, _wire.MAX_SEQUENCE + 1, 2**64 - 1])
def test_helloSequenceOutOfRange(first: int) -> None:
    """
    A hello whose first sequence number is 0 or near the end of a u64 is
    refused: a host acknowledging from there would overflow.
    """
    body = _wire.encodeHello(_wire.Hello(b"c" * 16, 1, 1000, first))[5:]
    with pytest.raises(_wire.ProtocolError, match="first sequence number"):
        _wire.decodeHello(body)


# Large messages and reused read buffers

#: A decoder limit that lets bodies past L{_wire.LARGE_BODY} through.
BIG_LIMIT = 4 * _wire.LARGE_BODY

bigFrames = st.lists(
    st.one_of(
        st.tuples(st.just(DATA), st.binary(max_size=16)),
        st.tuples(
            st.just(DATA),
            st.integers(_wire.LARGE_BODY - 2, BIG_LIMIT).map(
                lambda n: bytes(i % 251 for i in range(n))
            ),
        ),
        st.tuples(st.just(ACK), st.binary(min_size=8, max_size=8)),
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None)
@given(frames=bigFrames, cuts=st.lists(st.integers(0, 10**6), max_size=20))
def test_reusedBufferAndOwnBuffer(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    """
    Fed as views of one buffer overwritten after every feed (as a direct
    reader reuses its read buffer), with every read that the decoder offers
    to take into a large message's own buffer taken there, cut anywhere,
    the frames come out whole and in order, and nothing is left buffered.
    """
    whole = b"".join(_wire.encodeFrame(kind, body) for kind, body in frames)
    shared = bytearray(len(whole) + 1)
    view = memoryview(shared)
    decoder = FrameDecoder(BIG_LIMIT)
    got: list[tuple[int, bytes]] = []
    position = 0
    for chunk in chunked(whole, cuts):
        while chunk:
            target = decoder.readTarget()
            if target is not None:
                taken = min(len(target), len(chunk))
                target[:taken] = chunk[:taken]
                target.release()
                decoder.received(taken)
                got.extend(decoder.feed(b""))
            else:
                taken = len(chunk)
                view[:taken] = chunk
                got.extend(decoder.feed(view[:taken]))
                # The next read overwrites the buffer.
                view[:taken] = b"\xee" * taken
            chunk = chunk[taken:]
            position += taken
    assert position == len(whole)
    assert got == frames
    assert decoder.buffered == 0
    assert decoder.readTarget() is None


def test_largeMessageBufferedCount() -> None:
    """
    A large message under way counts in L{FrameDecoder.buffered}, header
    included, and is offered as a place to read into until it is whole.
    """
    body = b"x" * (_wire.LARGE_BODY + 100)
    frame = _wire.encodeFrame(DATA, body)
    decoder = FrameDecoder(len(body))
    assert decoder.feed(frame[:1000]) == []
    assert decoder.buffered == 1000
    target = decoder.readTarget()
    assert target is not None and len(target) == len(frame) - 1000
    target[:] = frame[1000:]
    target.release()
    decoder.received(len(frame) - 1000)
    assert decoder.feed(_wire.encodeAck(1)) == [
        (DATA, body),
        (ACK, struct.pack(">Q", 1)),
    ]
    assert decoder.buffered == 0


def test_largeMessageAndFrameLimit() -> None:
    """
    A large message completed counts towards C{maxFrames}; the frames
    after it stay buffered for the next call.
    """
    body = b"y" * (_wire.LARGE_BODY + 1)
    frame = _wire.encodeFrame(DATA, body)
    ack = _wire.encodeAck(2)
    decoder = FrameDecoder(len(body))
    assert decoder.feed(frame[:-1]) == []
    assert decoder.feed(frame[-1:] + ack, 1) == [(DATA, body)]
    assert decoder.buffered == len(ack)
    assert decoder.feed(b"") == [(ACK, struct.pack(">Q", 2))]


def test_oversizedLargeMessageRefusedBeforeBuffering() -> None:
    """
    A message over the limit is refused on its header: no buffer of its
    announced size is made for it.
    """
    decoder = FrameDecoder(_wire.LARGE_BODY * 2)
    header = _wire.frameHeader(DATA, _wire.LARGE_BODY * 2 + 1)
    with pytest.raises(ProtocolError):
        decoder.feed(header + b"z" * 10)
    assert decoder.readTarget() is None


def test_largeMessageBufferGrowsWithWhatArrives() -> None:
    """
    A peer that announces a large message makes the decoder hold about
    what it sent, not the size it announced; the buffer grows as the
    message arrives, whether copied in by L{FrameDecoder.feed} or read into
    L{FrameDecoder.readTarget}'s view, and the message comes out whole.
    """
    size = 8 << 20
    body = bytes(i % 253 for i in range(size))
    frame = _wire.encodeFrame(DATA, body)
    decoder = FrameDecoder(size)
    assert decoder.feed(frame[:100]) == []
    target = decoder.readTarget()
    assert target is not None and len(target) <= 512 * 1024
    target.release()
    position = 100
    step = 100_000
    while position < len(frame):
        if (position // step) % 2:
            got = decoder.feed(frame[position : position + step])
        else:
            target = decoder.readTarget()
            assert target is not None
            taken = min(len(target), step)
            target[:taken] = frame[position : position + taken]
            target.release()
            decoder.received(taken)
            got = decoder.feed(b"")
            step = taken
        position += step
        step = 100_000
        held = decoder.buffered
        if position < len(frame):
            assert got == []
            assert decoder.readTarget() is not None
            assert held == position
            assert sum(map(len, decoder._pieces)) <= 2 * position + 512 * 1024
    assert got == [(DATA, body)]
    assert decoder.buffered == 0


def test_helloWithLowestTerm() -> None:
    """
    A hello with FLAG_TERM carries the lowest term the client accepts, as
    eight more bytes; without the flag it is the one-machine hello,
    unchanged.
    """
    hello = _wire.Hello(b"i" * 16, 7, 10, 3, _wire.FLAG_TERM | _wire.FLAG_EAGER, 1, 41)
    frame = _wire.encodeHello(hello)
    assert len(frame) == HEADER_SIZE + len(helloBody()) + 8
    assert _wire.decodeHello(frame[HEADER_SIZE:]) == hello
    plain = _wire.Hello(b"i" * 16, 7, 10, 3, 0, 1, 41)
    assert _wire.encodeHello(plain)[HEADER_SIZE:] == helloBody(pid=7, first=3)
    assert _wire.decodeHello(helloBody(pid=7, first=3)).lowestTerm == 0
    with pytest.raises(ProtocolError, match="hello is 38 bytes long; it must be 46"):
        _wire.decodeHello(helloBody(flags=_wire.FLAG_TERM))
    with pytest.raises(ProtocolError, match="hello is 46 bytes long; it must be 38"):
        _wire.decodeHello(helloBody() + b"\0" * 8)


def test_welcomeNamingItsHost() -> None:
    """
    A welcome may name its host across machines: term, identity and
    address; it decodes to what was encoded, and one without is the
    one-machine welcome, unchanged.
    """
    host = _wire.HostTerm(2**40 + 5, "machine-a.example", "10.0.0.8:4443")
    welcome = _wire.Welcome(4, 99, 10, host=host)
    frame = _wire.encodeWelcome(welcome)
    assert _wire.decodeWelcome(frame[HEADER_SIZE:]) == welcome
    plain = _wire.encodeWelcome(_wire.Welcome(0, 1, 10))
    assert plain[HEADER_SIZE:] == welcomeBody()
    assert _wire.decodeWelcome(welcomeBody()).host is None
    unicode = _wire.HostTerm(1, "ma\u0161ina", "[::1]:1")
    encoded = _wire.encodeWelcome(_wire.Welcome(0, 1, 10, host=unicode))
    assert _wire.decodeWelcome(encoded[HEADER_SIZE:]).host == unicode


@pytest.mark.parametrize(
    "tail, error",
    [
        (struct.pack(">Q", 0) + b"\x01a\x01b", "host term is 0"),
        (struct.pack(">Q", 3)[:5], "host term is cut short"),
        (struct.pack(">Q", 3), "host identity is missing"),
        (struct.pack(">Q", 3) + b"\x00\x01b", "host identity is empty"),
        (struct.pack(">Q", 3) + b"\x05ab", "host identity is empty or cut short"),
        (struct.pack(">Q", 3) + b"\x01a", "host address is missing"),
        (struct.pack(">Q", 3) + b"\x01a\x02\xff\xfe", "host address is not UTF-8"),
        (struct.pack(">Q", 3) + b"\x01a\x01bXY", "2 byte\\(s\\) after"),
    ],
)
def test_welcomeHostGarbage(tail: bytes, error: str) -> None:
    """
    What follows a welcome's fixed fields must be exactly a term of 1 or
    more and two non-empty UTF-8 names; anything else is a protocol error
    naming what is wrong.
    """
    with pytest.raises(ProtocolError, match=error):
        _wire.decodeWelcome(welcomeBody() + tail)


@pytest.mark.parametrize("name", ["", "x" * 256])
def test_welcomeHostNamesBounded(name: str) -> None:
    """
    A host's identity or address the welcome cannot carry (empty, over 255
    bytes) is refused when encoding, naming which.
    """
    with pytest.raises(ValueError, match="the host's identity must be 1 to 255"):
        _wire.encodeWelcome(
            _wire.Welcome(0, 1, 10, host=_wire.HostTerm(1, name, "a:1"))
        )
    with pytest.raises(ValueError, match="the host's address must be 1 to 255"):
        _wire.encodeWelcome(_wire.Welcome(0, 1, 10, host=_wire.HostTerm(1, "a", name)))


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 150_000), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_viewsOfOneReusedBuffer(sizes: list[int], cuts: list[int]) -> None:
    """
    Reads handed over as views of one buffer that is overwritten once each
    call returns (a link's reads under TLS, decrypted into the process's
    one plaintext buffer): messages of any size (large ones too), in any
    chunking, come out as they went in; whatever the decoder keeps of a
    frame a read ends within is its own copy.
    """
    frames = [(DATA, bytes([index % 251]) * size) for index, size in enumerate(sizes)]
    stream = b"".join(_wire.encodeFrame(kind, body) for kind, body in frames)
    shared = bytearray(len(stream))
    decoder = FrameDecoder(200_000)
    out: list[tuple[int, bytes]] = []
    for chunk in chunked(stream, cuts):
        shared[: len(chunk)] = chunk
        out.extend(decoder.feed(memoryview(shared)[: len(chunk)]))
        shared[:] = b"\xaa" * len(shared)
    assert out == frames
    assert decoder.buffered == 0
