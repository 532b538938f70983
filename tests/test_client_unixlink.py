"""
A client's Unix link connected by the client itself and adopted by the
reactor, with the real reactor and real sockets: what goes on when the
host's socket refuses the connect at once for a reason other than "no
host".
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import pytest
import pytest_twisted

from twisted_channel import ChannelEndpoint


def _endingClient() -> type:
    """
    A client protocol whose C{ended} fires at its C{connectionLost}: a test
    waits for it, so that the client stops watching the channel's
    directory before the directory goes.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Protocol

    class EndingClient(Protocol):
        def __init__(self) -> None:
            self.ended: Deferred[None] = Deferred()

        def connectionLost(self, reason: object = None) -> None:
            self.ended.callback(None)

    return EndingClient


async def _firstMessageArrives(endpoint: ChannelEndpoint) -> tuple[Any, Any]:
    """
    Host on C{endpoint}, connect a client to it and write one message:
    once the host's protocol has it, the client's protocol (an
    L{_endingClient}) and the port.  The port is stopped if it fails.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Factory, Protocol

    arrived: Deferred[bytes] = Deferred()

    class Host(Protocol):
        def dataReceived(self, data: bytes) -> None:
            if not arrived.called:
                arrived.callback(data)

    port = await endpoint.listen(Factory.forProtocol(Host))
    try:
        await port.whenHosting()
        protocol = await endpoint.connect(Factory.forProtocol(_endingClient()))
        assert protocol.transport is not None
        protocol.transport.write(b"first")
        assert await arrived.addTimeout(5, reactor) == b"first"
    except BaseException:
        await port.stopListening()
        raise
    return protocol, port


@pytest_twisted.ensureDeferred
async def test_fullBacklogGoesThroughTwisted(channelDirectory: str) -> None:
    """
    A listening socket whose backlog is full makes a non-blocking Unix
    C{connect} fail with C{EAGAIN}: the host is there, only busy.  The
    attempt is then Twisted's connector's, which connects once the backlog
    has room, and the hello (with the message written before) arrives.
    """
    from twisted.internet import reactor, task
    from twisted.internet.protocol import Factory

    endpoint = ChannelEndpoint(reactor, "busy", directory=channelDirectory)
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    queued = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    queued.setblocking(False)
    try:
        listening.bind(endpoint.address)
        listening.listen(0)
        # The backlog holds this one; the next connect is refused with
        # EAGAIN.
        queued.connect(endpoint.address)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.setblocking(False)
        try:
            assert probe.connect_ex(endpoint.address) == errno.EAGAIN
        finally:
            probe.close()
        protocol = await endpoint.connect(Factory.forProtocol(_endingClient()))
        assert protocol.transport is not None
        protocol.transport.write(b"first")
        await task.deferLater(reactor, 0.05, lambda: None)
        # Room in the backlog: Twisted's connector connects.
        listening.accept()[0].close()
        listening.setblocking(False)
        link = None
        received = b""
        for _ in range(500):
            # Polled, not blocking: the reactor must run meanwhile.
            await task.deferLater(reactor, 0.01, lambda: None)
            if link is None:
                try:
                    link, _ = listening.accept()
                except BlockingIOError:
                    continue
                link.setblocking(False)
            try:
                chunk = link.recv(4096)
            except BlockingIOError:
                continue
            assert chunk, f"the link closed after {received!r}"
            received += chunk
            if b"first" in received:
                break
        try:
            assert b"first" in received, f"only {received!r} arrived"
        finally:
            # Nothing acknowledges the message: not waited for.
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
            if link is not None:
                link.close()
            await protocol.ended.addTimeout(5, reactor)
    finally:
        queued.close()
        listening.close()


@pytest_twisted.ensureDeferred
async def test_noSocketGoesThroughTwisted(
    channelDirectory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    When the client cannot make its socket (out of descriptors, say), the
    attempt is Twisted's connector's, not lost: the message reaches the
    host.
    """
    from twisted.internet import reactor

    from twisted_channel import _reconnection

    refused: list[int] = []

    def noSocket() -> socket.socket:
        refused.append(1)
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(_reconnection, "_unixSocket", noSocket)
    endpoint = ChannelEndpoint(reactor, "nosocket", directory=channelDirectory)
    protocol, port = await _firstMessageArrives(endpoint)
    try:
        assert refused
        protocol.transport.loseConnection()
        await protocol.ended.addTimeout(5, reactor)
    finally:
        await port.stopListening()


@pytest.mark.parametrize("edge", ["probed", "lacking"])
@pytest_twisted.ensureDeferred
async def test_linkTransportIsMadeOverTheConnectedSocket(
    edge: str, channelDirectory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    The reactor's transport of a client's Unix link is made over the very
    socket the client connected (no duplicate, no names asked of the
    kernel).  Where the Twisted in use cannot, the socket goes through
    C{adoptStreamConnection}, which keeps a duplicate, and the client's own
    is closed.  Either way the first message arrives.
    """
    from twisted.internet import reactor

    from twisted_channel import _reconnection, _sockets

    if edge == "lacking":
        monkeypatch.setattr(_sockets, "_found", None)
        probeTwisted = _sockets.probeTwisted

        def withoutIt() -> _sockets.TwistedEdge:
            found = probeTwisted()
            return _sockets.TwistedEdge(
                **{**vars(found), "unixTransportOver": False, "missing": ("x",)}
            )

        monkeypatch.setattr(_sockets, "probeTwisted", withoutIt)
    made: list[socket.socket] = []
    unixSocket = _reconnection._unixSocket

    def recordingSocket() -> socket.socket:
        made.append(unixSocket())
        return made[-1]

    monkeypatch.setattr(_reconnection, "_unixSocket", recordingSocket)
    endpoint = ChannelEndpoint(reactor, "itself", directory=channelDirectory)
    protocol, port = await _firstMessageArrives(endpoint)
    try:
        await protocol.transport.whenConnected().addTimeout(5, reactor)
        [connected] = made
        handle = protocol.transport.getHandle()
        if edge == "probed":
            assert handle is connected
        else:
            assert handle is not connected and connected.fileno() == -1
        # The socket was published under a temporary name, then renamed.
        assert handle.getpeername().startswith(os.path.dirname(endpoint.address))
        assert protocol.transport.getPeer().pid == os.getpid()
        protocol.transport.loseConnection()
        await protocol.ended.addTimeout(5, reactor)
    finally:
        await port.stopListening()


@pytest.mark.parametrize("where", ["connectionMade", "transport"])
@pytest_twisted.ensureDeferred
async def test_linkThatFailsToStartIsDroppedAndTheSearchGoesOn(
    where: str, channelDirectory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A link the client made whose start fails (an error escapes its
    C{connectionMade}, or its transport cannot be made) is logged and
    dropped, and the client tries again: the first message arrives, rather
    than the connection waiting for a handshake that never ends.
    """
    from twisted.internet import reactor

    from twisted_channel import _reconnection

    connectUnixLink = _reconnection.connectUnixLink
    failures: list[str] = []

    def failingOnce(reactor: Any, link: socket.socket, peer: str, build: Any) -> None:
        if failures:
            connectUnixLink(reactor, link, peer, build)
            return
        failures.append(where)
        if where == "transport":
            build()
            raise OSError(errno.ENOBUFS, "no transport")

        def broken() -> Any:
            protocol = build()

            def connectionMade() -> None:
                raise OSError(errno.ENOTCONN, "no peer")

            protocol.connectionMade = connectionMade
            return protocol

        connectUnixLink(reactor, link, peer, broken)

    monkeypatch.setattr(_reconnection, "connectUnixLink", failingOnce)
    endpoint = ChannelEndpoint(reactor, "broken" + where, directory=channelDirectory)
    protocol, port = await _firstMessageArrives(endpoint)
    try:
        assert failures == [where]
        protocol.transport.loseConnection()
        await protocol.ended.addTimeout(5, reactor)
    finally:
        await port.stopListening()
