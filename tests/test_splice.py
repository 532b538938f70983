"""
The splices that carry a channel's links between machines, over real
loopback sockets: bytes go both ways unchanged, a link that ends is
forgotten, cutting ends both sides at once, a refused dial closes the
accepted link; a host's dial to its own channel socket carries the
verified peer's identity by the dialing socket's name.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

from twisted_channel._certs import makeCertificates
from twisted_channel._clusterchannel import _Half, _HalfFactory, _SpliceFactory
from twisted_channel._sockets import bufferedBytes
from twisted_channel._tls import TLSCredentials, VerifiedTLSFactory, tlsFactory

pytestmark = pytest.mark.timeout(30)


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()
        self.arrived: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if not self.arrived.called:
            self.arrived.callback(None)

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


async def _rig(
    refuse: bool = False, certificates: str | None = None
) -> tuple[_SpliceFactory, Client, list[Any]]:
    """
    A client, a splice and an echo server, over loopback TCP; with
    C{certificates}, the splice dials the echo server over mutual TLS, as
    a client's relay dials a host (machine C{b} dialing C{a}).
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

    echoFactory: Any = Factory.forProtocol(Echo)
    if certificates is not None:
        echoFactory = tlsFactory(
            _credentials(certificates, "a").serverOptions(),
            False,
            VerifiedTLSFactory(reactor, echoFactory),
        )
    echo = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        echoFactory
    )

    def dial(accepted: _Half) -> Deferred[_Half]:
        made: Deferred[_Half] = Deferred()
        port = 1 if refuse else echo.getHost().port
        factory: Any = _HalfFactory(made.callback)
        if certificates is not None:
            factory = tlsFactory(
                _credentials(certificates, "b").clientOptions("a"),
                True,
                VerifiedTLSFactory(reactor, factory, expectedIdentity="a"),
            )
        TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory).addErrback(
            made.errback
        )
        return made

    splices = _SpliceFactory(dial, lambda: True)
    front = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(splices)
    client = await TCP4ClientEndpoint(
        reactor, "127.0.0.1", front.getHost().port
    ).connect(Factory.forProtocol(Client))
    return splices, client, [echo, front]


def _credentials(directory: str, host: str) -> TLSCredentials:
    from twisted_channel._tls import loadCredentials

    return loadCredentials(
        os.path.join(directory, host + ".pem"),
        os.path.join(directory, host + ".key"),
        os.path.join(directory, "ca.pem"),
    )


async def _stop(ports: list[Any]) -> None:
    for port in ports:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_bytesBothWaysThenForgotten() -> None:
    """
    60 kB go through and come back unchanged; once the link ends, the
    splicer holds nothing of it.
    """
    from twisted.internet import reactor

    splices, client, ports = await _rig()
    try:
        client.transport.write(b"hello " * 10000)  # type: ignore[union-attr]
        while len(client.received) < 60000:
            client.arrived = Deferred()
            await client.arrived.addTimeout(10, reactor)
        assert client.received == b"hello " * 10000
        assert len(splices.live) == 1
        client.transport.loseConnection()  # type: ignore[union-attr]
        await client.lost.addTimeout(10, reactor)
        for _ in range(100):
            if not splices.live:
                break
            await Deferred.fromCoroutine(_tick())
        assert splices.live == set()
    finally:
        await _stop(ports)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest_twisted.ensureDeferred
async def test_chunksLeaveAtOnce(
    tls: bool, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Each chunk a splice reads is in the kernel, on its way to the partner's
    peer, by the time the read is handled (Twisted would hold it until the
    reactor's next iteration, and its TLS layer one more): nothing is left
    in the partner socket's transport after any read, in a round trip of
    small messages, plain or over mutual TLS.  The bytes come back whole.
    """
    from twisted.internet import reactor

    left: list[int] = []
    handled = _Half.dataReceived

    def watched(self: _Half, data: bytes) -> None:
        handled(self, data)
        if self.partner is not None:
            left.append(bufferedBytes(self.partner.socketTransport))

    monkeypatch.setattr(_Half, "dataReceived", watched)
    certificates = None
    if tls:
        certificates = str(tmp_path / "certs")
        makeCertificates(certificates, ["a", "b"])
    splices, client, ports = await _rig(certificates=certificates)
    try:
        for i in range(20):
            message = b"%03d" % i * 20
            client.received = b""
            client.arrived = Deferred()
            client.transport.write(message)  # type: ignore[union-attr]
            while client.received != message:
                await client.arrived.addTimeout(10, reactor)
                client.arrived = Deferred()
        # Both ways: 20 chunks to the echo server, 20 back (at least).
        assert len(left) >= 40
        assert set(left) == {0}
    finally:
        client.transport.loseConnection()  # type: ignore[union-attr]
        await _stop(ports)


@pytest_twisted.ensureDeferred
async def test_cutEndsBoth() -> None:
    """
    Cutting (a host stepping down) ends the accepted link at once.
    """
    from twisted.internet import reactor

    splices, client, ports = await _rig()
    try:
        client.transport.write(b"x")  # type: ignore[union-attr]
        await client.arrived.addTimeout(10, reactor)
        splices.cutAll()
        await client.lost.addTimeout(10, reactor)
        assert splices.live == set()
    finally:
        await _stop(ports)


@pytest_twisted.ensureDeferred
async def test_refusedDialClosesTheLink() -> None:
    """
    A partner that cannot be reached closes the accepted link, unread.
    """
    from twisted.internet import reactor

    splices, client, ports = await _rig(refuse=True)
    try:
        await client.lost.addTimeout(10, reactor)
        assert client.received == b"" and splices.live == set()
    finally:
        await _stop(ports)


async def _tick() -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.01)  # type: ignore[arg-type]


class _Local:
    """
    What a host's splice uses of its one-machine port: the socket's path
    and the registry of spliced peers.
    """

    def __init__(self, socketPath: str) -> None:
        self.paths = SimpleNamespace(socket=socketPath)
        self.splicedPeers: dict[object, str | None] = {}
        self.acrossMachines: object = None
        self.linksClosed = 0

    def closeLinks(self) -> None:
        self.linksClosed += 1


class PeerName(Protocol):
    def connectionMade(self) -> None:
        self.factory.names.append(  # type: ignore[attr-defined]
            self.transport.getHandle().getpeername()  # type: ignore[union-attr]
        )


@pytest_twisted.ensureDeferred
async def test_dialLocalNamesTheVerifiedPeer(tmp_path: Any) -> None:
    """
    A host's splice dials its channel socket from a socket whose name, as
    the accepting side sees it, is registered with the identity the TLS
    side verified, until that connection ends; a dial that fails leaves
    nothing registered.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import UNIXServerEndpoint
    from twisted.internet.testing import StringTransport

    from twisted_channel._clusterchannel import ClusterPort, ClusterSettings
    from twisted_channel._tls import VerifiedPeer

    path = str(tmp_path / "c.sock")
    server = Factory.forProtocol(PeerName)
    server.names = []  # type: ignore[attr-defined]
    listening = await UNIXServerEndpoint(reactor, path).listen(server)
    local = _Local(path)
    settings = ClusterSettings.check("etcd://127.0.0.1:1", insecure=True)
    port = ClusterPort(reactor, local, settings, "jobs")
    accepted = _Half()
    accepted.makeConnection(
        StringTransport(peerAddress=VerifiedPeer("10.0.0.9", 4433, "b"))  # type: ignore[arg-type]
    )
    try:
        dialed = await port._dialLocal(accepted).addTimeout(10, reactor)
        for _ in range(100):
            if server.names:  # type: ignore[attr-defined]
                break
            await Deferred.fromCoroutine(_tick())
        [name] = server.names  # type: ignore[attr-defined]
        assert name.startswith(b"\0twisted-channel-splice-")
        assert local.splicedPeers == {name: "b"}
        dialed.transport.loseConnection()  # type: ignore[union-attr]
        for _ in range(100):
            if not local.splicedPeers:
                break
            await Deferred.fromCoroutine(_tick())
        assert local.splicedPeers == {}
        local.paths.socket = str(tmp_path / "nobody.sock")
        with pytest.raises(OSError):
            await port._dialLocal(accepted)
        assert local.splicedPeers == {}
    finally:
        port.client.close()
        await listening.stopListening()


def test_steppingDownClosesTheLocalLinks(tmp_path: Any) -> None:
    """
    A host across machines that steps down cuts its splices and closes its
    one-machine port's links at once, so that nothing the splices wrote to
    its channel socket before is delivered after.
    """
    from twisted.internet import reactor

    from twisted_channel._clusterchannel import ClusterPort, ClusterSettings

    local = _Local(str(tmp_path / "c.sock"))
    settings = ClusterSettings.check("etcd://127.0.0.1:1", insecure=True)
    port = ClusterPort(reactor, local, settings, "jobs")
    try:
        cut = []
        port._splices.cutAll = lambda joinedOnly=False: cut.append(True)  # type: ignore[method-assign]
        port.role, port.term = "host", 7
        port._notHosting(7, "its lease is lost")
        assert cut == [True]
        assert local.linksClosed == 1
        assert (port.role, port.term, local.acrossMachines) == ("standby", None, None)
    finally:
        port.client.close()
