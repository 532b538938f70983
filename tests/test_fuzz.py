"""
Property-based fuzzing of what a hostile peer controls: the bytes of the
frame decoder and of the host's handshake, in arbitrary chunks.

- No input makes an exception escape, or hangs (each example has a
  deadline, and the handshake has one too: a link that never completes
  its hello is closed when it expires).
- Every bad link is closed with one ERROR frame carrying a reason; a
  link whose bytes are a valid beginning stays open and is served.
- A good link of the same host, fed between the bad link's chunks, is
  unaffected: everything it sends is delivered and acknowledged.
- The decoder never holds more than one frame's worth of bytes.

The inputs are random bytes, valid streams, and valid streams mutated
(bytes flipped, inserted, removed, lengths forged).  A reference model of
the wire rules says what must happen to each.  ``TC_FUZZ_EXAMPLES`` sets
the number of examples per property (the soak raises it); with
``TC_COUNT_FILE`` set, the number of cases tried is appended there.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from twisted_channel import _host, _wire
from twisted_channel._address import HOST
from twisted_channel._credentials import PeerCredentials
from twisted_channel._directory import channelPaths
from twisted_channel._host import ChannelPort, _HostingTerm, _HostLink
from twisted_channel._wire import MAX_CONTROL_BODY, FrameDecoder, ProtocolError

pytestmark = pytest.mark.timeout(300)

#: The host's largest message in these tests.  Over L{MAX_CONTROL_BODY}, so
#: that what a peer may send before and after its hello differs.
LIMIT = 5000
HANDSHAKE_TIMEOUT = 10.0
EXAMPLES = int(os.environ.get("TC_FUZZ_EXAMPLES", "150"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)

_cases: dict[str, int] = {}


def _count(name: str) -> None:
    _cases[name] = _cases.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _reportCases() -> Iterator[None]:
    """
    Append how many cases each property tried to C{$TC_COUNT_FILE}.
    """
    yield
    path = os.environ.get("TC_COUNT_FILE")
    if path:
        with open(path, "a") as f:
            for name, count in sorted(_cases.items()):
                f.write(json.dumps({"kind": "fuzz", "name": name, "count": count}))
                f.write("\n")


# Inputs


def frame(kind: int, body: bytes) -> bytes:
    return _wire.encodeFrame(kind, body)


def hello(clientId: bytes = b"h" * 16, flags: int = 0, firstSequence: int = 1) -> bytes:
    return _wire.encodeHello(_wire.Hello(clientId, 99, LIMIT, firstSequence, flags))


#: DATA body sizes whose fate does not depend on where the stream was cut
#: (see L{test_dataPipelinedWithHelloIsJudgedByOneLimit}).
dataSizes = st.one_of(
    st.integers(0, 64),
    st.integers(0, MAX_CONTROL_BODY),
    st.integers(LIMIT + 1, LIMIT + 64),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """
    One frame: mostly DATA or PING, sometimes any other kind, with a body of
    a legal or illegal size.
    """
    kind = draw(
        st.one_of(
            st.just(_wire.DATA),
            st.just(_wire.PING),
            st.sampled_from(sorted(_wire.KNOWN_KINDS)),
            st.integers(0, 255),
        )
    )
    if kind == _wire.DATA:
        size = draw(dataSizes)
    else:
        size = draw(
            st.one_of(
                st.integers(0, 32),
                st.integers(MAX_CONTROL_BODY + 1, MAX_CONTROL_BODY + 8),
            )
        )
    return frame(kind, draw(st.binary(min_size=size, max_size=size)))


@st.composite
def helloFrames(draw: st.DrawFn) -> bytes:
    """
    A hello, valid or subtly not: wrong magic, version, length or kind.
    """
    flags = draw(st.sampled_from([0, 0, 0, _wire.FLAG_STATUS_QUERY, 0x80, 0xFE]))
    first = draw(st.one_of(st.just(1), st.integers(0, 2**64 - 1)))
    good = hello(draw(st.binary(min_size=16, max_size=16)), flags, first)
    fault = draw(st.sampled_from(["none"] * 6 + ["magic", "version", "long", "short"]))
    body = bytearray(good[5:])
    if fault == "magic":
        body[draw(st.integers(0, 3))] ^= draw(st.integers(1, 255))
    elif fault == "version":
        body[4] = draw(st.integers(0, 255).filter(lambda v: v != _wire.VERSION))
    elif fault == "long":
        body += draw(st.binary(min_size=1, max_size=8))
    elif fault == "short":
        del body[draw(st.integers(0, len(body) - 1)) :]
    return frame(_wire.HELLO, bytes(body))


@st.composite
def mutated(draw: st.DrawFn, stream: bytes) -> bytes:
    """
    C{stream} with a few bytes flipped, inserted or removed, or a length
    field forged.
    """
    data = bytearray(stream)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        where = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "length"]))
        if action == "flip":
            data[where] ^= draw(st.integers(1, 255))
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        elif len(data) - where >= 4:
            forged = draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, LIMIT + 2]))
            data[where : where + 4] = struct.pack(">I", forged)
    return bytes(data)


@st.composite
def hostileStreams(draw: st.DrawFn) -> bytes:
    """
    What a peer might send: random bytes, a hello and frames, or such a
    stream mutated.
    """
    shape = draw(st.sampled_from(["random", "valid", "mutated", "mutated"]))
    if shape == "random":
        return draw(st.binary(max_size=300))
    stream = draw(helloFrames()) + b"".join(draw(st.lists(frames(), max_size=8)))
    if shape == "mutated":
        stream = draw(mutated(stream))
    return stream


@st.composite
def cuts(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """
    C{data} split at arbitrary points (single bytes included).
    """
    if not data:
        return [data]
    points = draw(st.lists(st.integers(0, len(data)), max_size=12))
    if draw(st.booleans()) and len(data) < 80:
        points = list(range(len(data) + 1))
    bounds = sorted({0, len(data), *points})
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# The reference model


@dataclass
class Expected:
    """
    What the wire rules say a host does with a stream.

    @ivar outcome: C{"error"} (refused with an ERROR frame), C{"status"}
        (a status query, answered and closed), C{"status or error"} (a
        status query followed by bytes that break the rules: which of the
        two depends on whether they came in the same read), C{"open"}
        (welcomed and served) or C{"waiting"} (no complete hello yet).
    """

    outcome: str
    delivered: list[bytes] = field(default_factory=list)
    pings: int = 0
    firstSequence: int = 1


def model(stream: bytes) -> Expected:
    """
    Judge C{stream} frame by frame, as the host must whatever the chunks.
    """
    offset = 0
    welcomed = False
    result = Expected("waiting")
    while len(stream) - offset >= 5:
        length, kind = struct.unpack_from(">IB", stream, offset)
        body = length - 1
        if length == 0:
            return Expected("error", result.delivered)
        if kind == _wire.DATA:
            if body > (LIMIT if welcomed else MAX_CONTROL_BODY):
                return Expected("error", result.delivered)
        elif kind not in _wire.KNOWN_KINDS or body > MAX_CONTROL_BODY:
            return Expected("error", result.delivered)
        if offset + 4 + length > len(stream):
            break
        payload = stream[offset + 5 : offset + 4 + length]
        offset += 4 + length
        if not welcomed:
            if kind != _wire.HELLO:
                return Expected("error")
            try:
                parsed = _wire.decodeHello(payload)
            except ProtocolError:
                return Expected("error")
            if parsed.flags & _wire.FLAG_STATUS_QUERY:
                # What follows is not read, unless it came in the same read
                # as the hello: then the decoder judges it first.
                try:
                    FrameDecoder(MAX_CONTROL_BODY).feed(stream[offset:])
                except ProtocolError:
                    return Expected("status or error")
                return Expected("status")
            if parsed.flags & _wire.FLAG_TERM:
                # A hello across machines: this host does not host there.
                return Expected("error")
            welcomed = True
            result.outcome = "open"
            result.firstSequence = parsed.firstSequence
        elif kind == _wire.DATA:
            result.delivered.append(payload)
        elif kind == _wire.PING:
            result.pings += 1
        else:
            return Expected("error", result.delivered)
    return result


def _judgedByThePreHelloLimit(stream: bytes, chunks: list[bytes]) -> bool:
    """
    Whether a DATA frame of more than 4 KiB (but within L{LIMIT}) has its
    header in the read that completes the hello, where the host checks it
    against the pre-hello limit, after a hello the host accepts (one it
    refuses is refused for itself, before that frame is judged).
    """
    if len(stream) < 5:
        return False
    helloEnd = 4 + struct.unpack_from(">I", stream)[0]
    if model(stream[:helloEnd]).outcome != "open":
        return False
    readEnd = 0
    for chunk in chunks:
        readEnd += len(chunk)
        if readEnd >= helloEnd:
            break
    offset = helloEnd
    while offset + 5 <= min(readEnd, len(stream)):
        length, kind = struct.unpack_from(">IB", stream, offset)
        if kind == _wire.DATA and MAX_CONTROL_BODY < length - 1 <= LIMIT:
            return True
        if length == 0:
            return False
        offset += 4 + length
    return False


# The host


class App(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost = 0

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost += 1


class Handle:
    """
    A socket handle that cannot name its peer.
    """


class LinkTransport(StringTransport):
    def getHandle(self) -> Any:
        return Handle()


class Host:
    """
    A port that won the election, with a memory clock, and its links.
    """

    def __init__(self, directory: str, limit: int = LIMIT) -> None:
        self.reactor = MemoryReactorClock()
        self.apps: list[App] = []

        def build() -> App:
            app = App()
            self.apps.append(app)
            return app

        self.port = ChannelPort(
            self.reactor,
            "fuzz",
            channelPaths("fuzz", directory),
            Factory.forProtocol(build),
            limit,
            handshakeTimeout=HANDSHAKE_TIMEOUT,
        )
        self.term = _HostingTerm(self.reactor.seconds())
        self.port._term = self.term
        self.port.role = HOST

    def link(self) -> tuple[_HostLink, LinkTransport]:
        link = _HostLink(self.port, self.term)
        transport = LinkTransport()
        link.makeConnection(transport)
        return link, transport


@pytest.fixture(autouse=True)
def _noPeerCredentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        _host, "peerCredentials", lambda handle: PeerCredentials(None, None)
    )


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("fuzz"))


def replies(transport: StringTransport) -> list[tuple[int, bytes]]:
    return FrameDecoder(1 << 30).feed(transport.value())


def assertRefused(transport: StringTransport, because: str = "") -> str:
    """
    The link was closed with exactly one ERROR frame carrying a reason;
    return the reason.  (Only an ACK may follow it: see
    L{test_errorIsTheLastFrame}.)
    """
    frames = replies(transport)
    assert transport.disconnecting, frames
    kinds = [kind for kind, _ in frames]
    assert kinds.count(_wire.ERROR) == 1, kinds
    after = kinds[kinds.index(_wire.ERROR) + 1 :]
    assert after in ([], [_wire.ACK]), kinds
    reason = dict(frames)[_wire.ERROR].decode("utf-8")
    assert reason.strip(), "an ERROR frame with no reason"
    assert because in reason, reason
    return reason


class GoodClient:
    """
    A well-behaved link on the same host, fed a message whenever the
    hostile one is fed a chunk.
    """

    def __init__(self, host: Host) -> None:
        self.link, self.transport = host.link()
        self.link.dataReceived(hello(os.urandom(16)))
        self.app = host.apps[-1]
        self.sent: list[bytes] = []

    def send(self) -> None:
        message = b"good %d" % len(self.sent)
        self.sent.append(message)
        self.link.dataReceived(frame(_wire.DATA, message))

    def check(self) -> None:
        assert not self.transport.disconnecting
        assert self.app.received == self.sent
        frames = replies(self.transport)
        assert frames[0][0] == _wire.WELCOME
        assert _wire.decodeAck(frames[-1][1]) == len(self.sent)


@FUZZ
@given(data=st.data())
def test_hostileLinkNeverHurtsTheHost(directory: str, data: st.DataObject) -> None:
    """
    Whatever a peer sends, in whatever chunks: no exception escapes the
    host; a stream the wire rules refuse closes the link with one ERROR
    frame and a reason; a valid one is welcomed and each DATA frame is
    delivered once and acknowledged; an incomplete hello is refused when
    the handshake deadline expires; and a good link beside it is served
    throughout.
    """
    _count("host handshake and frames")
    stream = data.draw(hostileStreams(), "stream")
    chunks = data.draw(cuts(stream), "chunks")
    expected = model(stream)
    host = Host(directory)
    good = GoodClient(host)
    link, transport = host.link()
    for chunk in chunks:
        link.dataReceived(chunk)
        good.send()
        if not transport.disconnecting:
            # At most one incomplete frame is held.
            assert link.session.buffered < 5 + LIMIT
    apps = [a for a in host.apps if a is not good.app]
    received = apps[0].received if apps else []
    if _judgedByThePreHelloLimit(stream, chunks) and transport.disconnecting:
        # The known fault (see test_dataPipelinedWithHelloIsJudgedByTheHostLimit):
        # refused by the wrong limit, but refused properly.
        assert "over the limit of 4096" in assertRefused(transport)
    elif expected.outcome == "error":
        assertRefused(transport)
        # What was delivered before the fault, at most.
        assert received == expected.delivered[: len(received)]
    elif expected.outcome == "status or error" and _wire.ERROR in dict(
        replies(transport)
    ):
        assertRefused(transport)
        assert not apps
    elif expected.outcome.startswith("status"):
        frames = replies(transport)
        assert [kind for kind, _ in frames] == [_wire.STATUS]
        assert json.loads(frames[0][1])["name"] == "fuzz"
        assert transport.disconnecting
        assert not apps
    elif expected.outcome == "open":
        assert not transport.disconnecting
        frames = replies(transport)
        assert frames[0][0] == _wire.WELCOME
        resumeAfter = _wire.decodeWelcome(frames[0][1]).resumeAfter
        assert resumeAfter == max(0, expected.firstSequence - 1)
        assert received == expected.delivered
        kinds = [kind for kind, _ in frames[1:]]
        assert set(kinds) <= {_wire.ACK, _wire.PONG}
        assert kinds.count(_wire.PONG) == expected.pings
        acks = [_wire.decodeAck(body) for kind, body in frames if kind == _wire.ACK]
        if expected.delivered:
            assert acks[-1] == resumeAfter + len(expected.delivered)
    else:
        assert not transport.disconnecting
        assert not apps
        host.reactor.advance(HANDSHAKE_TIMEOUT)
        assertRefused(transport, "no hello within")
    good.send()
    good.check()
    # The kernel reports the end; nothing escapes then either.
    link.connectionLost(Failure(error.ConnectionDone()))
    good.link.connectionLost(Failure(error.ConnectionLost()))
    assert not host.term.allLinks
    assert not host.term.links
    assert all(app.lost == 1 for app in host.apps)


@FUZZ
@given(data=st.data(), limit=st.integers(0, 6000))
def test_decoderMatchesTheRulesInAnyChunks(data: st.DataObject, limit: int) -> None:
    """
    The decoder, fed a hostile stream in arbitrary chunks, returns exactly
    the frames the wire rules allow, or raises L{ProtocolError} (and
    nothing else) where they are broken, whatever the chunks; it never
    buffers more than one frame.
    """
    _count("frame decoder")
    stream = data.draw(hostileStreams(), "stream")
    chunks = data.draw(cuts(stream), "chunks")
    decoder = FrameDecoder(limit)
    got: list[tuple[int, bytes]] = []
    failed = None
    for chunk in chunks:
        try:
            got.extend(decoder.feed(chunk))
        except ProtocolError as e:
            failed = str(e)
            break
        assert decoder.buffered <= 4 + 1 + max(limit, MAX_CONTROL_BODY)
    expected: list[tuple[int, bytes]] = []
    broken = False
    offset = 0
    while len(stream) - offset >= 5:
        length, kind = struct.unpack_from(">IB", stream, offset)
        if (
            length == 0
            or (kind == _wire.DATA and length - 1 > limit)
            or (kind != _wire.DATA and kind not in _wire.KNOWN_KINDS)
            or (kind != _wire.DATA and length - 1 > MAX_CONTROL_BODY)
        ):
            broken = True
            break
        if offset + 4 + length > len(stream):
            break
        expected.append((kind, stream[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    if broken:
        assert failed, "no ProtocolError on a stream that breaks the rules"
        assert got == expected[: len(got)]
    else:
        assert failed is None, failed
        assert got == expected
        assert decoder.buffered == len(stream) - offset


@FUZZ
@given(
    stream=st.binary(min_size=0, max_size=64),
    seconds=st.lists(st.floats(0, 3), min_size=1, max_size=20),
)
def test_tricklingPeerIsDroppedAtTheDeadline(
    stream: bytes, seconds: list[float]
) -> None:
    """
    A slow-loris peer, whatever it trickles and however slowly, is closed
    with a reason once the handshake deadline passes unless it completed a
    hello: bytes do not extend the deadline.
    """
    _count("handshake deadline")
    host = Host("/tmp/tc-fuzz-unused")
    link, transport = host.link()
    elapsed = 0.0
    cutAt = max(1, len(stream) // len(seconds))
    pieces = [stream[i : i + cutAt] for i in range(0, len(stream), cutAt)] or [b""]
    for piece, wait in zip(pieces, seconds, strict=False):
        if elapsed + wait >= HANDSHAKE_TIMEOUT:
            break
        host.reactor.advance(wait)
        elapsed += wait
        link.dataReceived(piece)
        if transport.disconnecting:
            break
    if transport.disconnecting:
        assertRefused(transport)
        return
    host.reactor.advance(HANDSHAKE_TIMEOUT - elapsed)
    if host.apps:
        assert not transport.disconnecting
    else:
        assertRefused(transport, "no hello within")


@pytest.mark.parametrize(
    "limit, size, accepted",
    [
        (5000, 4096, True),
        (5000, 4097, True),
        (5000, 5000 + 1, False),
        (1000, 1000, True),
        (1000, 1001, False),
        (1000, 4097, False),
    ],
)
def test_dataPipelinedWithHelloIsJudgedByTheHostLimit(
    directory: str, limit: int, size: int, accepted: bool
) -> None:
    """
    Whether a DATA frame is accepted must not depend on how the stream was
    cut: one over the host's C{maxMessageSize} is refused, one within it
    delivered, whether it comes in the hello's read or in the next.
    """
    for together in (False, True):
        host = Host(directory, limit)
        link, transport = host.link()
        message = frame(_wire.DATA, b"x" * size)
        if together:
            link.dataReceived(hello() + message)
        else:
            link.dataReceived(hello())
            link.dataReceived(message)
        assert transport.disconnecting is not accepted, (limit, size, together)


def test_errorIsTheLastFrame(directory: str) -> None:
    """
    The ERROR frame is the last a refused link is sent: the acknowledgement
    of what was delivered before the fault comes before it, so that a
    client that stops reading at the ERROR still learns it.
    """
    host = Host(directory)
    link, transport = host.link()
    link.dataReceived(hello() + frame(_wire.DATA, b"a") + frame(_wire.WELCOME, b""))
    kinds = [kind for kind, _ in replies(transport)]
    assert kinds == [_wire.WELCOME, _wire.ACK, _wire.ERROR]
