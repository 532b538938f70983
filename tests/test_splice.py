"""
The splices that carry a channel's links between machines, over real
loopback sockets: bytes go both ways unchanged, a link that ends is
forgotten, cutting ends both sides at once, a refused dial closes the
accepted link; a host's dial to its own channel socket carries the
verified peer's identity by the dialing socket's name.  A host's first
bytes on a link are its term, which the relay reads before splicing; a
link accepted while its process may be about to host waits for it; a
relay keeps the links to the host etcd names and cuts older ones; a
machine's TLS port is recorded for its local heirs, who bind it again.
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
from twisted_channel._clusterchannel import (
    _TERM,
    _discard,
    _Half,
    _HalfFactory,
    _HostEnd,
    _listenReusable,
    _SpliceFactory,
    readPortFile,
    writePortFile,
)
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
async def test_recordsOfOneReadTogether(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Under TLS, the records that one read from the socket brings are handed
    on as one chunk, not one a record: 1 MiB (64 records or more) reaches
    the echo server in no more chunks than reads, and comes back whole.
    """
    from twisted.internet import reactor

    from twisted_channel._tls import _VerifiedProtocol

    counts = {"reads": 0, "chunks": 0}
    started = _VerifiedProtocol.startBatch
    echoed = Echo.dataReceived

    def startBatch(self: _VerifiedProtocol) -> None:
        # The echo server's reads, also the one that ends its handshake
        # (before which it has no protocol yet).
        if getattr(self.factory.wrappedFactory, "protocol", None) is Echo:
            counts["reads"] += 1
        started(self)

    def dataReceived(self: Echo, data: bytes) -> None:
        counts["chunks"] += 1
        echoed(self, data)

    monkeypatch.setattr(_VerifiedProtocol, "startBatch", startBatch)
    monkeypatch.setattr(Echo, "dataReceived", dataReceived)
    certificates = str(tmp_path / "certs")
    makeCertificates(certificates, ["a", "b"])
    splices, client, ports = await _rig(certificates=certificates)
    message = bytes(range(256)) * 4096
    try:
        client.transport.write(message)  # type: ignore[union-attr]
        while len(client.received) < len(message):
            client.arrived = Deferred()
            await client.arrived.addTimeout(10, reactor)
        assert client.received == message
        assert 0 < counts["chunks"] <= counts["reads"]
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
    port.role, port.term = "host", 7
    try:
        dialed = await port._dialLocal(accepted).addTimeout(10, reactor)
        assert accepted.transport.value() == _TERM.pack(7)  # type: ignore[union-attr]
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


def test_hostEndReadsTermFirst() -> None:
    """
    A relay's end of a link to a host takes the host's first 8 bytes, in
    whatever pieces they come, as its term, says so once, and passes what
    came after them on once spliced.
    """
    from twisted.internet.testing import StringTransport

    told: list[int | None] = []
    end = _HostEnd(lambda half: told.append(half.term))
    end.makeConnection(StringTransport())
    packed = _TERM.pack(2**40 + 3)
    end.dataReceived(packed[:3])
    assert told == [] and end.term is None
    end.dataReceived(packed[3:] + b"welc")
    assert told == [2**40 + 3]
    partner = _Half()
    partnerTransport = StringTransport()
    partner.makeConnection(partnerTransport)
    end.join(partner)
    end.dataReceived(b"ome")
    assert partnerTransport.value() == b"welcome"
    assert told == [2**40 + 3]


def _port(tmp_path: Any) -> Any:
    from twisted.internet import reactor

    from twisted_channel._clusterchannel import ClusterPort, ClusterSettings

    settings = ClusterSettings.check("etcd://127.0.0.1:1", insecure=True)
    return ClusterPort(reactor, _Local(str(tmp_path / "c.sock")), settings, "jobs")


@pytest_twisted.ensureDeferred
async def test_heldUntilHosting(tmp_path: Any) -> None:
    """
    A link accepted while this process may be about to host (its campaign
    is taking the key over) waits, nothing of it dialed, until it hosts;
    then it is spliced and told the term.  One accepted by a process that
    neither hosts nor may soon is refused, and held ones are refused when
    the campaign follows another machine.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import UNIXServerEndpoint
    from twisted.internet.testing import StringTransport

    from twisted_channel._campaign import HostRecord

    server = Factory.forProtocol(PeerName)
    server.names = []  # type: ignore[attr-defined]
    port = _port(tmp_path)
    listening = await UNIXServerEndpoint(reactor, port.local.paths.socket).listen(
        server
    )
    election = SimpleNamespace(contending=False)
    port._election = election
    port._record = HostRecord("127.0.0.1:4433", "a", os.getpid())
    port.role = "standby"

    def accepted() -> _Half:
        half = _Half()
        half.makeConnection(StringTransport())
        return half

    try:
        with pytest.raises(ConnectionRefusedError):
            await port._dialLocal(accepted())
        election.contending = True
        first = accepted()
        held = port._dialLocal(first)
        await Deferred.fromCoroutine(_tick())
        assert not held.called and server.names == []  # type: ignore[attr-defined]
        assert first.transport.value() == b""  # type: ignore[union-attr]
        port._hosting(12)
        dialed = await held.addTimeout(10, reactor)
        assert first.transport.value() == _TERM.pack(12)  # type: ignore[union-attr]
        dialed.transport.loseConnection()  # type: ignore[union-attr]
        port.role, port.term = "standby", None
        second = port._dialLocal(accepted())
        port._releaseHeld()
        with pytest.raises(ConnectionRefusedError):
            await second
        assert port._held == []
    finally:
        port.client.close()
        await listening.stopListening()


def test_steppingDownClosesTheLocalLinks(tmp_path: Any) -> None:
    """
    A host across machines that steps down cuts its splices and closes its
    one-machine port's links at once, so that nothing the splices wrote to
    its channel socket before is delivered after.
    """
    port = _port(tmp_path)
    try:
        cut = []
        port._splices.cutAll = lambda joinedOnly=False: cut.append(True)
        port.role, port.term = "host", 7
        port._notHosting(7, "its lease is lost")
        assert cut == [True]
        assert port.local.linksClosed == 1
        assert (port.role, port.term, port.local.acrossMachines) == (
            "standby",
            None,
            None,
        )
    finally:
        port.client.close()


def test_relayKeepsLinksToTheNamedHost() -> None:
    """
    When etcd names a new host, a relay cuts its links to hosts of lower
    terms and keeps those to the host now named (dialed at its machine's
    unchanged address before etcd's news came); when etcd names none, it
    cuts them all.
    """
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from twisted_channel._campaign import HostRecord
    from twisted_channel._clusterchannel import ClusterSettings, _Relay

    settings = ClusterSettings.check("etcd://127.0.0.1:1", insecure=True)
    relay = _Relay(MemoryReactorClock(), settings, "jobs")

    def link(term: int) -> tuple[_Half, StringTransport]:
        accepted, host = _Half(), _HostEnd(lambda half: None)
        transport = StringTransport()
        accepted.makeConnection(transport)
        host.makeConnection(StringTransport())
        host.dataReceived(_TERM.pack(term))
        accepted.join(host)
        relay.splices.live.add(accepted)
        return accepted, transport

    try:
        (_, oldTransport), (new, newTransport) = link(4), link(6)
        record = HostRecord("10.0.0.1:4433", "a", 99)
        relay._changed((record, 6))
        assert relay.splices.live == {new}
        assert oldTransport.disconnecting and not newTransport.disconnecting
        relay._changed(None)
        assert relay.splices.live == set() and newTransport.disconnecting
    finally:
        relay.close()


def test_portFile(tmp_path: Any) -> None:
    """
    A machine's TLS port is recorded for its local heirs; a missing file or
    one that holds no port reads as 0 (choose one).
    """
    path = str(tmp_path / "jobs.lock.port")
    assert readPortFile(path) == 0
    writePortFile(path, 4433)
    assert readPortFile(path) == 4433
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    for garbage in (b"", b"x\n", b"70000\n", b"0\n"):
        with open(path, "wb") as f:
            f.write(garbage)
        assert readPortFile(path) == 0


def test_heirBindsTheSamePort() -> None:
    """
    A local heir binds its machine's TLS port while the predecessor's
    socket is still open (the kernel closes a killed process's sockets
    last); once that one is closed the heir gets every connection.
    """
    import socket

    first = _listenReusable("127.0.0.1", 0)
    port = first.getsockname()[1]
    heir = _listenReusable("127.0.0.1", port)
    try:
        first.close()
        dialing = socket.create_connection(("127.0.0.1", port), timeout=5)
        heir.setblocking(True)
        heir.settimeout(5)
        accepted, _ = heir.accept()
        accepted.close()
        dialing.close()
    finally:
        first.close()
        heir.close()


def test_relayDialsAgainWhenTheHostGoes() -> None:
    """
    When a host's end of a relay's link goes first, the relay dials the
    host etcd names at once, for the channel's client to take when it
    connects again; not when the client's end went first, and not once the
    relay is closed.
    """
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from twisted_channel._campaign import HostRecord
    from twisted_channel._clusterchannel import ClusterSettings, _Relay

    settings = ClusterSettings.check("etcd://127.0.0.1:1", insecure=True)
    reactor = MemoryReactorClock()
    relay = _Relay(reactor, settings, "jobs")
    relay.host = (HostRecord("10.0.0.1:4433", "a", 99), 6)

    def hostEnd(withPartner: bool) -> _HostEnd:
        end = _HostEnd(lambda half: None)
        end.makeConnection(StringTransport())
        if withPartner:
            end.partner = _Half()
        return end

    try:
        relay._hostLost(hostEnd(withPartner=False))
        assert relay._spare is None and reactor.tcpClients == []
        relay._hostLost(hostEnd(withPartner=True))
        assert relay._spare is not None
        [(address, port, *_)] = reactor.tcpClients
        assert (address, port) == ("10.0.0.1", 4433)
        spare = relay._takeSpare()
        assert spare is not None and relay._spare is None
        _discard(spare)
        relay.host = (HostRecord("10.0.0.2:4433", "b", 98), 7)
        relay._hostLost(hostEnd(withPartner=True))
        relay.host = (HostRecord("10.0.0.3:4433", "c", 97), 8)
        assert relay._takeSpare() is None, "a spare for a host etcd no longer names"
        reactor.advance(10)
    finally:
        relay.close()
    relay._hostLost(hostEnd(withPartner=True))
    assert relay._spare is None


@pytest_twisted.ensureDeferred
async def test_relayClosesCleanly(etcdServer: Any) -> None:
    """
    A client's relay, closed, removes its private directory once its port
    has stopped, and nothing is logged as an error (its port removes its
    socket file as it stops, which failed when the directory went first).
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    from twisted.logger import LogLevel, capturedLogs

    from twisted_channel._clusterchannel import ClusterSettings, _Relay

    settings = ClusterSettings.check(etcdServer.coordinator, insecure=True)
    assert settings is not None
    with capturedLogs() as events:
        relay = _Relay(reactor, settings, "closing")
        relay.start("closing")
        assert os.path.exists(os.path.join(relay.directory, "closing.sock"))
        directory = relay.directory
        relay.close()
        for _ in range(100):
            if not os.path.exists(directory):
                break
            await deferLater(reactor, 0.01, lambda: None)
        await deferLater(reactor, 0.05, lambda: None)
        # An unhandled failure is logged when its Deferred is collected.
        import gc

        del relay
        gc.collect()
    assert not os.path.exists(directory)
    errors = [e for e in events if e["log_level"] >= LogLevel.error]
    assert errors == [], errors
