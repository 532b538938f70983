"""
The TCP transport's pieces without sockets: proofs, the port file, the
host's challenge step and its rate limit, the client's side of the
handshake, and the transport= option.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

import pytest
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.testing import MemoryReactorClock, StringTransport

from twisted_channel import ChannelEndpoint, UnsafeDirectoryError, _wire
from twisted_channel._address import HOST, ChannelAddress
from twisted_channel._auth import (
    NONCE_SIZE,
    PortFile,
    clientProof,
    hostProof,
    readPortFile,
    removePortFile,
    writePortFile,
)
from twisted_channel._client import ChannelClientTransport, _ClientLink
from twisted_channel._directory import channelPaths
from twisted_channel._host import (
    AUTH_FAILURE_LIMIT,
    AUTH_FAILURE_WINDOW,
    ChannelPort,
    _HostingTerm,
    _HostLink,
)

from ._support.hostlinks import App, AppFactory, hello

SECRET = b"s" * 32


def frames(transport: StringTransport) -> list[tuple[int, bytes]]:
    result = _wire.FrameDecoder(1 << 20).feed(transport.value())
    transport.clear()
    return result


# Proofs and the port file


def test_proofsDifferByDirectionAndSecret() -> None:
    hostNonce, clientNonce = b"h" * 32, b"c" * 32
    proof = clientProof(SECRET, hostNonce, clientNonce)
    assert proof != hostProof(SECRET, clientNonce, hostNonce)
    assert proof != clientProof(b"t" * 32, hostNonce, clientNonce)
    assert proof != clientProof(SECRET, b"H" * 32, clientNonce)
    assert len(proof) == 32


def test_portFileRoundTripAndMode(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "jobs.port")
    writePortFile(path, PortFile(4321, SECRET, 99))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert readPortFile(path) == PortFile(4321, SECRET, 99)
    assert os.listdir(str(tmp_path)) == ["jobs.port"]


def test_portFileIsNotSyncedToDisk(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A host writes its port file on the takeover's path without waiting for
    the disk (an fsync took up to 24 ms under a shared machine's load, time
    a killed host's clients need to leave it before the kernel closes its
    sockets); the rename alone makes the whole file visible.
    """
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    monkeypatch.setattr(os, "fdatasync", synced.append)
    path = os.path.join(str(tmp_path), "c.port")
    writePortFile(path, PortFile(4321, SECRET, 99))
    assert synced == []
    assert readPortFile(path) == PortFile(4321, SECRET, 99)


def test_portFileReadableByOthersIsRefused(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "jobs.port")
    writePortFile(path, PortFile(4321, SECRET, 99))
    os.chmod(path, 0o644)
    with pytest.raises(UnsafeDirectoryError, match="mode 0644"):
        readPortFile(path)


def test_portFileSymlinkIsRefused(tmp_path: pytest.TempPathFactory) -> None:
    target = os.path.join(str(tmp_path), "elsewhere")
    writePortFile(target, PortFile(4321, SECRET, 99))
    link = os.path.join(str(tmp_path), "jobs.port")
    os.symlink(target, link)
    with pytest.raises(UnsafeDirectoryError, match="symbolic link"):
        readPortFile(link)


@pytest.mark.parametrize(
    "content",
    [b"", b"{}", b'{"port": 0, "secret": "00", "pid": 1}', b"not json", b"[1]"],
)
def test_portFileGarbageIsRefused(
    tmp_path: pytest.TempPathFactory, content: bytes
) -> None:
    path = os.path.join(str(tmp_path), "jobs.port")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(descriptor, content)
    os.close(descriptor)
    with pytest.raises(ValueError, match="port file"):
        readPortFile(path)


def test_removePortFileOnlyRemovesItsOwn(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "jobs.port")
    writePortFile(path, PortFile(4321, b"n" * 32, 99))
    removePortFile(path, SECRET)
    assert os.path.exists(path)
    removePortFile(path, b"n" * 32)
    assert not os.path.exists(path)
    removePortFile(path, b"n" * 32)


# The host's challenge


@pytest.fixture
def port(channelDirectory: str) -> ChannelPort:
    reactor = MemoryReactorClock()
    port = ChannelPort(
        reactor,
        "jobs",
        channelPaths("jobs", channelDirectory),
        AppFactory(),
        1000,
        transport="tcp",
    )
    port.secret = SECRET
    port.role = HOST
    port._term = _HostingTerm(0)
    return port


def openHostLink(port: ChannelPort) -> tuple[_HostLink, StringTransport]:
    assert port._term is not None
    link = _HostLink(port, port._term)
    transport = StringTransport()
    link.makeConnection(transport)
    return link, transport


def test_hostChallengesThenWelcomes(port: ChannelPort) -> None:
    link, transport = openHostLink(port)
    [(kind, hostNonce)] = frames(transport)
    assert kind == _wire.CHALLENGE
    clientNonce = b"c" * NONCE_SIZE
    link.dataReceived(
        _wire.encodeFrame(
            _wire.AUTH, clientNonce + clientProof(SECRET, hostNonce, clientNonce)
        )
        + hello()
        + _wire.encodeFrame(_wire.DATA, b"first")
    )
    sent = frames(transport)
    assert [kind for kind, _ in sent] == [_wire.AUTH_OK, _wire.WELCOME, _wire.ACK]
    assert sent[0][1] == hostProof(SECRET, clientNonce, hostNonce)
    application = port.factory.built[-1]  # type: ignore[attr-defined]
    assert isinstance(application, App)
    assert application.received == [b"first"]


def test_helloWithoutAuthenticationIsRefused(port: ChannelPort) -> None:
    link, transport = openHostLink(port)
    frames(transport)
    link.dataReceived(hello())
    [(kind, reason)] = frames(transport)
    assert kind == _wire.ERROR
    assert b"not an authentication" in reason
    assert transport.disconnecting
    assert port.factory.built == []  # type: ignore[attr-defined]


def test_rateLimitAfterFailures(port: ChannelPort) -> None:
    """
    After AUTH_FAILURE_LIMIT failures, new links are closed without a
    challenge until the window has passed.
    """
    for _ in range(AUTH_FAILURE_LIMIT):
        link, transport = openHostLink(port)
        frames(transport)
        link.dataReceived(_wire.encodeFrame(_wire.AUTH, b"\0" * 64))
        assert b"authentication failed" in frames(transport)[0][1]
    link, transport = openHostLink(port)
    assert transport.value() == b""
    assert transport.disconnecting
    port.clock.advance(AUTH_FAILURE_WINDOW + 1)  # type: ignore[attr-defined]
    link, transport = openHostLink(port)
    assert [kind for kind, _ in frames(transport)] == [_wire.CHALLENGE]


# The client's side


def makeTcpClient() -> ChannelClientTransport:
    client = ChannelClientTransport(
        MemoryReactorClock(),
        ChannelAddress("jobs", "/nonexistent/jobs.port", HOST),
        App(),
        AppFactory(),
        5.0,
        1000,
        4000,
        transport="tcp",
    )
    return client


def test_clientAnswersChallengeAndChecksHost() -> None:
    client = makeTcpClient()
    client.write(b"queued")
    link = _ClientLink(client, SECRET)
    transport = StringTransport()
    link.makeConnection(transport)
    assert transport.value() == b""
    hostNonce = b"h" * NONCE_SIZE
    link.dataReceived(_wire.encodeFrame(_wire.CHALLENGE, hostNonce))
    [(kind, body)] = frames(transport)
    assert kind == _wire.AUTH
    clientNonce, proof = body[:NONCE_SIZE], body[NONCE_SIZE:]
    assert proof == clientProof(SECRET, hostNonce, clientNonce)
    link.dataReceived(
        _wire.encodeFrame(_wire.AUTH_OK, hostProof(SECRET, clientNonce, hostNonce))
    )
    # Authenticated: the hello, and (eagerly) the message queued before.
    sent = frames(transport)
    assert [kind for kind, _ in sent] == [_wire.HELLO, _wire.DATA]
    assert _wire.decodeHello(sent[0][1]).flags & _wire.FLAG_EAGER
    assert sent[1][1] == b"queued"


def test_clientRefusesHostWithoutSecret() -> None:
    client = makeTcpClient()
    link = _ClientLink(client, SECRET)
    transport = StringTransport()
    link.makeConnection(transport)
    link.dataReceived(_wire.encodeFrame(_wire.CHALLENGE, b"h" * NONCE_SIZE))
    frames(transport)
    link.dataReceived(_wire.encodeFrame(_wire.AUTH_OK, b"x" * 32))
    assert transport.value() == b""
    assert transport.disconnecting


# The option


def test_transportOption(channelDirectory: str) -> None:
    reactor = MemoryReactorClock()
    description = f"channel:jobs:dir={channelDirectory}:transport=tcp"
    for endpoint in (
        serverFromString(reactor, description),
        clientFromString(reactor, description),
    ):
        assert isinstance(endpoint, ChannelEndpoint)
        assert endpoint.transportKind == "tcp"
        assert endpoint.address == os.path.join(channelDirectory, "jobs.port")
    default = clientFromString(reactor, f"channel:jobs:dir={channelDirectory}")
    assert default.transportKind == "unix"


@pytest.mark.parametrize("value", ["udp", "", "UNIX", "pipe"])
def test_badTransportOption(value: str) -> None:
    with pytest.raises(ValueError, match="transport=unix or transport=tcp"):
        clientFromString(MemoryReactorClock(), f"channel:jobs:transport={value}")


def test_badTransportKeyword() -> None:
    with pytest.raises(ValueError, match="'unix' or 'tcp'"):
        ChannelEndpoint(MemoryReactorClock(), "jobs", transport="udp")


def test_tcpIsTheDefaultWithoutUnixSockets() -> None:
    """
    A reactor without IReactorUNIX (Windows' IOCP reactor) gets TCP.
    """

    class NoUnix:
        pass

    assert ChannelEndpoint(NoUnix(), "jobs").transportKind == "tcp"


def test_handshakeTimeoutOption(channelDirectory: str) -> None:
    reactor = MemoryReactorClock()
    endpoint = serverFromString(
        reactor, f"channel:jobs:dir={channelDirectory}:handshakeTimeout=2.5"
    )
    assert endpoint.handshakeTimeout == 2.5
    assert endpoint._port(AppFactory()).handshakeTimeout == 2.5
    assert clientFromString(reactor, "channel:jobs").handshakeTimeout == 10.0


@pytest.mark.parametrize("value", ["0", "-1", "x", "inf", "nan"])
def test_badHandshakeTimeout(value: str) -> None:
    with pytest.raises(ValueError, match="handshakeTimeout"):
        clientFromString(MemoryReactorClock(), f"channel:jobs:handshakeTimeout={value}")


def test_createPortFileClosesItsDescriptorWhenFdopenFails(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    If the file object cannot be made over the new file's descriptor, the
    descriptor is closed (not leaked) and nothing is left at the path.
    """
    from twisted_channel import _auth

    opened: list[int] = []

    def failingFdopen(descriptor: int, *args: Any, **kwargs: Any) -> Any:
        opened.append(descriptor)
        raise MemoryError("no memory for the file object")

    monkeypatch.setattr(_auth.os, "fdopen", failingFdopen)
    temporary = str(tmp_path / "port.tmp")
    with pytest.raises(MemoryError):
        _auth.createPortFile(temporary, _auth.PortFile(1234, b"s" * 32, 42))
    [descriptor] = opened
    with pytest.raises(OSError) as raised:
        os.fstat(descriptor)
    assert raised.value.errno == errno.EBADF
    assert not os.path.lexists(temporary)
