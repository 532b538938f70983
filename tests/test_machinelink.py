"""
The channel's links between machines, with the channel's real host port
over real loopback sockets: a link accepted while its process may be about
to host is held, nothing of it read, until it hosts, then welcomed with the
term; one accepted by a process that neither hosts nor may soon is closed;
held ones are closed when the campaign follows another machine; a host
that steps down ends its links.  A client drops a link to a host of a lower
term than etcd names, and its hellos say that term.  A machine's TLS port
is recorded for its local heirs, who bind it again.
"""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.protocol import Factory, Protocol

from twisted_channel import ChannelEndpoint
from twisted_channel._address import HOST, ChannelAddress
from twisted_channel._campaign import HostRecord
from twisted_channel._clusterchannel import (
    ClusterPort,
    ClusterSettings,
    _listenReusable,
    readPortFile,
    writePortFile,
)
from twisted_channel._wire import (
    FLAG_TERM,
    Hello,
    decodeWelcome,
    encodeHello,
)

pytestmark = pytest.mark.timeout(30)


async def _tick(seconds: float = 0.01) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds)  # type: ignore[arg-type]


def _hello(lowestTerm: int) -> bytes:
    return encodeHello(
        Hello(os.urandom(16), os.getpid(), 1024, flags=FLAG_TERM, lowestTerm=lowestTerm)
    )


class _Dialer:
    """
    A peer of a machine's port (plain TCP, as with C{insecure=}) that says
    hello and reads what comes back, without blocking the reactor.
    """

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.socket.setblocking(False)
        self.received = b""
        self.closed = False

    def read(self) -> bytes:
        while True:
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return self.received
            except ConnectionError:
                self.closed = True
                return self.received
            if not data:
                self.closed = True
                return self.received
            self.received += data


async def _machinePort(
    tmp_path: Any, received: list[bytes]
) -> tuple[Any, ClusterPort, Any]:
    """
    A channel port on the real reactor whose application appends what it
    receives to C{received}, its cluster port (etcd unreachable, plain TCP:
    its role and term are set by the test) and that port's listening port
    for links between machines.
    """
    from twisted.internet import reactor

    class Recorder(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    endpoint = ChannelEndpoint(
        reactor,
        "jobs",
        directory=str(tmp_path),
        coordinator="etcd://127.0.0.1:1",
        insecure=True,
    )
    assert endpoint.cluster is not None
    local = endpoint._port(Factory.forProtocol(Recorder))
    local.startListening()
    port = ClusterPort(reactor, local, endpoint.cluster, "jobs")
    port._serverFactory = port._buildServerFactory()
    return local, port, await port._listen()


async def _until(check: Any, timeout: float = 5.0) -> None:
    waited = 0.0
    while not check():
        assert waited < timeout, "timed out"
        await _tick()
        waited += 0.01


@pytest_twisted.ensureDeferred
async def test_heldUntilHosting(tmp_path: Any) -> None:
    """
    A link accepted while this process may be about to host (its campaign
    is taking the key over) is held: its hello is not read, nothing
    reaches the channel, until the process hosts (its whenHosting() fired
    first); then the host welcomes it with its term.  One accepted by a
    process that neither hosts nor may soon is closed, and held ones are
    closed when the campaign follows another machine.
    """
    received: list[bytes] = []
    local, port, listening = await _machinePort(tmp_path, received)
    election = SimpleNamespace(contending=False)
    port._election = election  # type: ignore[assignment]
    port._record = HostRecord("127.0.0.1:4433", "a", os.getpid())
    port.role = "standby"
    address = listening.getHost().port
    dialers: list[_Dialer] = []
    try:
        refused = _Dialer(address)
        dialers.append(refused)
        await _until(lambda: refused.read() == b"" and refused.closed)

        election.contending = True
        held = _Dialer(address)
        dialers.append(held)
        await _until(lambda: len(port._held) == 1)
        # What the TLS layer hands on from the read that completed its
        # handshake (here, over plain TCP, given to the link directly).
        port._held[0][0].dataReceived(_hello(0) + b"\0\0\0\x06\x03hello")
        await _tick(0.05)
        assert held.read() == b"" and not held.closed and received == []
        hosting: list[list[bytes]] = []
        port.whenHosting().addCallback(lambda _: hosting.append(list(received)))
        port._hosting(12)
        await _until(lambda: received == [b"hello"])
        # The application learned it hosts before the held link delivered.
        assert hosting == [[]]
        answer = held.read()
        welcome = decodeWelcome(answer[5 : 5 + int.from_bytes(answer[:4], "big") - 1])
        assert welcome.host is not None and welcome.host.term == 12
        assert port._held == []

        port.role, port.term = "standby", None
        local.acrossMachines = None
        dropped = _Dialer(address)
        dialers.append(dropped)
        await _until(lambda: len(port._held) == 1)
        port._releaseHeld()
        await _until(lambda: dropped.read() == b"" and dropped.closed)
        assert port._held == []
    finally:
        for dialer in dialers:
            dialer.socket.close()
        await listening.stopListening()
        await local.stopListening()
        await port.client.close()


@pytest_twisted.ensureDeferred
async def test_steppingDownEndsTheLinks(tmp_path: Any) -> None:
    """
    A host across machines that steps down ends its links at once: nothing
    its peers sent after is delivered, and each peer sees its link end.
    """
    received: list[bytes] = []
    local, port, listening = await _machinePort(tmp_path, received)
    port._election = SimpleNamespace(contending=True)  # type: ignore[assignment]
    port._record = HostRecord("127.0.0.1:4433", "a", os.getpid())
    port._hosting(7)
    peer = _Dialer(listening.getHost().port)
    try:
        peer.socket.sendall(_hello(0) + b"\0\0\0\x04\x03one")
        await _until(lambda: received == [b"one"])
        port._notHosting(7, "its lease is lost")
        assert (port.role, port.term, local.acrossMachines) == ("standby", None, None)
        try:
            peer.socket.sendall(b"\0\0\0\x04\x03two")
        except ConnectionError:
            pass
        await _until(lambda: peer.read() is not None and peer.closed)
        await _tick(0.05)
        assert received == [b"one"]
    finally:
        peer.socket.close()
        await listening.stopListening()
        await local.stopListening()
        await port.client.close()


def test_clientLeavesALowerTerm() -> None:
    """
    When etcd names a host of a higher term than the linked one, a client
    across machines drops its link (a host cut off from it may have
    stepped down without its close reaching it), and its hellos say that
    term as the lowest they accept; a link to the host etcd names stays;
    when etcd names none, the link goes.  A dial under way is not doubled
    when etcd names a host at the same address, and is given up for one at
    another.
    """
    from twisted.internet.testing import MemoryReactorClock

    from twisted_channel._client import ChannelClientTransport
    from twisted_channel._machinelink import MachineClientLink, MachineReconnection

    settings = ClusterSettings.check("etcd://127.0.0.1:1", insecure=True)
    assert settings is not None
    reactor = MemoryReactorClock()
    protocol = Protocol()
    transport = ChannelClientTransport(
        reactor,
        ChannelAddress("jobs", "/nowhere", HOST),
        protocol,
        Factory.forProtocol(Protocol),
        5.0,
        1024,
        1 << 20,
        acrossMachines=True,
        reconnection=lambda *a: MachineReconnection(settings, "jobs", None, *a),
        linkType=MachineClientLink,
    )
    reconnection = transport.reconnection
    assert isinstance(reconnection, MachineReconnection)
    aborted: list[int] = []

    def linkedTo(term: int) -> None:
        transport.link = SimpleNamespace(  # type: ignore[assignment]
            hostAddress=ChannelAddress("jobs", "/nowhere", HOST, term=term),
            abort=lambda: aborted.append(term),
        )

    record = HostRecord("127.0.0.1:4433", "a", 99)
    linkedTo(4)
    reconnection._changed((record, 6))
    assert aborted == [4] and transport.session.lowestTerm == 6
    assert reconnection.host == (record, 6)
    # The client dials the host etcd names, over plain TCP (insecure=).
    transport.link = None
    reconnection.hostAppeared()
    [(host, port, *_)] = reactor.tcpClients
    assert (host, port) == ("127.0.0.1", 4433)
    # While that attempt is under way, etcd naming a host at the same
    # address (a local heir) dials nothing more; at another address, the
    # attempt is given up and that one dialed.
    reconnection._changed((HostRecord("127.0.0.1:4433", "a", 100), 7))
    assert len(reactor.tcpClients) == 1
    reconnection._changed((HostRecord("127.0.0.2:4433", "b", 98), 8))
    assert [c[:2] for c in reactor.tcpClients[1:]] == [("127.0.0.2", 4433)]
    linkedTo(8)
    reconnection._changed((record, 8))
    assert aborted == [4]
    reconnection._changed(None)
    assert aborted == [4, 8] and transport.session.lowestTerm == 8
    reconnection.stop()


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


@pytest_twisted.ensureDeferred
async def test_roleObserversAcrossMachines(tmp_path: Any) -> None:
    """
    A port across machines tells its role observers each change, as a
    one-machine port does: C{"host"} when it hosts, C{"standby"} when it
    steps down, C{"stopped"} once when it stops listening (a second
    C{stopListening} changes nothing).
    """
    from twisted.internet.defer import succeed

    received: list[bytes] = []
    local, port, listening = await _machinePort(tmp_path, received)
    port._election = SimpleNamespace(  # type: ignore[assignment]
        contending=True, stop=lambda: succeed(None)
    )
    port._record = HostRecord("127.0.0.1:4433", "a", os.getpid())
    port.role = "standby"
    roles: list[str] = []
    port.addRoleObserver(roles.append)
    try:
        port._hosting(7)
        port._notHosting(7, "its lease is lost")
        await port.stopListening()
        await port.stopListening()
        assert roles == ["host", "standby", "stopped"]
        port.removeRoleObserver(roles.append)
        with pytest.raises(ValueError):
            port.removeRoleObserver(roles.append)
    finally:
        await listening.stopListening()
        await local.stopListening()
        await port.client.close()
