"""
A coverage-guided fuzzer (atheris, libFuzzer) for what a hostile peer
controls: the frame decoder, and the host's end of a link fed arbitrary
bytes in arbitrary chunks.

Run it (atheris: ``pip install atheris``)::

    python fuzz/fuzz_wire.py --seeds fuzz/corpus          # write seed inputs
    python fuzz/fuzz_wire.py -max_total_time=180 -print_final_stats=1 fuzz/corpus

Any exception other than the decoder's own L{ProtocolError}, or a broken
invariant, is a crash and libFuzzer saves the input that caused it.  The
invariants:

- the decoder returns only frames of known kinds within their size limits,
  and holds at most one incomplete frame;
- the host's link never lets an exception escape; a link it closes was sent
  exactly one ERROR frame with a non-empty reason (or, for a status query,
  the status); a link it keeps open was sent a WELCOME first and then only
  ACK and PONG frames, and its application received each DATA frame once.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import atheris

# Twisted itself is not instrumented: only the channel's code is.
from twisted.internet import error
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

with atheris.instrument_imports(include=["twisted_channel"]):
    from twisted_channel import _host, _wire
    from twisted_channel._address import HOST
    from twisted_channel._credentials import PeerCredentials
    from twisted_channel._directory import channelPaths
    from twisted_channel._host import ChannelPort, _HostingTerm, _HostLink

LIMIT = 5000
_host.peerCredentials = lambda handle: PeerCredentials(None, None)  # type: ignore[assignment]


class _App(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


class _Transport(StringTransport):
    def getHandle(self) -> Any:
        return None


def _port() -> tuple[ChannelPort, _HostingTerm, MemoryReactorClock, list[_App]]:
    reactor = MemoryReactorClock()
    apps: list[_App] = []

    def build() -> _App:
        apps.append(_App())
        return apps[-1]

    port = ChannelPort(
        reactor,
        "fuzz",
        channelPaths("fuzz", "/tmp/tc-fuzz-unused"),
        Factory.forProtocol(build),
        LIMIT,
        handshakeTimeout=10.0,
    )
    term = _HostingTerm(0.0)
    port._term = term
    port.role = HOST
    return port, term, reactor, apps


def _chunks(provider: atheris.FuzzedDataProvider) -> list[bytes]:
    chunks = []
    while provider.remaining_bytes() > 0 and len(chunks) < 32:
        size = provider.ConsumeIntInRange(0, 600)
        chunks.append(provider.ConsumeBytes(size))
    return chunks


def _checkDecoder(chunks: list[bytes], limit: int) -> None:
    decoder = _wire.FrameDecoder(limit)
    for chunk in chunks:
        try:
            frames = decoder.feed(chunk)
        except _wire.ProtocolError as e:
            assert str(e)
            return
        for kind, body in frames:
            assert kind in _wire.KNOWN_KINDS, kind
            bound = limit if kind == _wire.DATA else _wire.MAX_CONTROL_BODY
            assert len(body) <= bound, (kind, len(body))
        assert decoder.buffered < 5 + max(limit, _wire.MAX_CONTROL_BODY)


def _checkHost(chunks: list[bytes]) -> None:
    port, term, reactor, apps = _port()
    link = _HostLink(port, term)
    transport = _Transport()
    link.makeConnection(transport)
    for chunk in chunks:
        link.dataReceived(chunk)
    reactor.advance(10.0)
    replies = _wire.FrameDecoder(1 << 30).feed(transport.value())
    kinds = [kind for kind, _ in replies]
    if transport.disconnecting:
        if kinds == [_wire.STATUS]:
            pass
        else:
            assert kinds.count(_wire.ERROR) == 1, kinds
            assert dict(replies)[_wire.ERROR].strip(), "ERROR without a reason"
    else:
        assert kinds and kinds[0] == _wire.WELCOME, kinds
        assert set(kinds[1:]) <= {_wire.ACK, _wire.PONG}, kinds
        acks = [_wire.decodeAck(b) for k, b in replies if k == _wire.ACK]
        if apps and apps[0].received:
            first = _wire.decodeWelcome(replies[0][1]).resumeAfter
            assert acks[-1] == first + len(apps[0].received)
    link.connectionLost(Failure(error.ConnectionDone()))
    assert not term.allLinks and not term.links


def TestOneInput(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    limit = provider.ConsumeIntInRange(0, 6000)
    chunks = _chunks(provider)
    _checkDecoder(chunks, limit)
    _checkHost(chunks)


def _writeSeeds(directory: str) -> None:
    """
    A few valid streams to start from (a hello with frames, a status
    query, a hello in pieces, garbage); libFuzzer mutates them, and finds
    its way to how the input is cut into chunks.
    """
    os.makedirs(directory, exist_ok=True)
    hello = _wire.encodeHello(_wire.Hello(b"s" * 16, 1, LIMIT))
    status = _wire.encodeHello(
        _wire.Hello(b"s" * 16, 1, LIMIT, 1, _wire.FLAG_STATUS_QUERY)
    )
    data = _wire.encodeFrame(_wire.DATA, b"message")
    ping = _wire.encodeFrame(_wire.PING, b"p")
    streams = {
        "hello-data": hello + data + data + ping,
        "status": status,
        "pieces": hello[:7] + hello[7:] + data[:3] + data[3:],
        "garbage": b"GET / HTTP/1.1\r\n\r\n",
    }
    for name, stream in streams.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(b"\x00\x13" + stream)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        _writeSeeds(sys.argv[2])
        return
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
