"""
Mutual TLS between machines, with real TLS over loopback sockets and
certificates made by twisted-channel's own helper: both sides verified, the
host sees the client's identity, and a peer not signed by caCerts, one
without a certificate, one that is not the machine expected, or one that
never completes a handshake is refused and logged and never reaches the
application.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol

from twisted_channel._certs import checkHost, makeCertificates
from twisted_channel._tls import (
    RECORD_SIZE,
    TLSCredentials,
    VerifiedPeer,
    VerifiedTLSFactory,
    loadCredentials,
    recordSpans,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """
    Two private authorities: ours (machines a, b and 127.0.0.1) and a
    stranger's (machine a again, and x).
    """
    ours = str(tmp_path_factory.mktemp("ours"))
    theirs = str(tmp_path_factory.mktemp("theirs"))
    makeCertificates(ours, ["a", "b", "127.0.0.1"])
    makeCertificates(theirs, ["a", "x"])
    return {"ours": ours, "theirs": theirs}


def _credentials(directory: str, host: str, ca: str | None = None) -> TLSCredentials:
    return loadCredentials(
        os.path.join(directory, host + ".pem"),
        os.path.join(directory, host + ".key"),
        ca or os.path.join(directory, "ca.pem"),
    )


def test_makeCertificates(tmp_path: Any) -> None:
    """
    An authority and one certificate and key per host; keys are private;
    nothing is overwritten; hosts are names or IP addresses.
    """
    directory = str(tmp_path / "certs")
    written = makeCertificates(directory, ["node1", "10.0.0.8"])
    assert sorted(os.path.basename(p) for p in written) == sorted(
        ["ca.pem", "ca.key", "node1.pem", "node1.key", "10.0.0.8.pem", "10.0.0.8.key"]
    )
    for path in written:
        mode = os.stat(path).st_mode & 0o777
        assert mode == (0o600 if path.endswith(".key") else 0o644), path
    assert _credentials(directory, "node1").identity == "node1"
    assert _credentials(directory, "10.0.0.8").identity == "10.0.0.8"
    with pytest.raises(FileExistsError):
        makeCertificates(directory, ["node1"])
    for wrong in ["", "a b", "../x", "-a", "a..b"]:
        with pytest.raises(ValueError, match="not a host name"):
            checkHost(wrong)
    with pytest.raises(ValueError, match="named twice"):
        makeCertificates(str(tmp_path / "other"), ["a", "a"])


def test_badCredentials(certificates: dict[str, str], tmp_path: Any) -> None:
    """
    Each wrong file is refused with a ValueError naming it.
    """
    ours = certificates["ours"]
    a, b = os.path.join(ours, "a"), os.path.join(ours, "b")
    ca = os.path.join(ours, "ca.pem")
    garbage = str(tmp_path / "garbage.pem")
    with open(garbage, "w") as f:
        f.write("not a certificate\n")
    cases = [
        ((a + ".pem", a + ".missing", ca), "privateKey=.*cannot be read"),
        ((garbage, a + ".key", ca), "holds no PEM certificate"),
        ((a + ".pem", garbage, ca), "holds no PEM private key"),
        ((a + ".pem", b + ".key", ca), "does not match"),
        ((a + ".pem", a + ".key", garbage), "caCerts=.*holds no PEM certificate"),
    ]
    for arguments, complaint in cases:
        with pytest.raises(ValueError, match=complaint):
            loadCredentials(*arguments)


class Recorder(Protocol):
    """
    Records what happens to it; the client side says hello when connected.
    """

    def __init__(self, events: list[Any], hello: bytes | None) -> None:
        self.events = events
        self.hello = hello
        self.connected_: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.events.append(("connected", self.transport.getPeer()))  # type: ignore[union-attr]
        if self.hello is not None:
            self.transport.write(self.hello)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("data", data))
        if self.hello is None:
            self.transport.write(b"reply to " + data)  # type: ignore[union-attr]

    def connectionLost(self, reason: object = None) -> None:
        self.events.append(("lost", None))


class _Events(list[Any]):
    """
    A list of events that wakes its side's waiters on each.
    """

    def __init__(self, side: Side) -> None:
        super().__init__()
        self.side = side

    def append(self, event: Any) -> None:
        super().append(event)
        changed, self.side.changed = self.side.changed, Deferred()
        changed.callback(None)


class Side:
    """
    One end's application: its factory and what its protocols recorded.
    """

    def __init__(self, hello: bytes | None) -> None:
        self.events = _Events(self)
        self.changed: Deferred[None] = Deferred()
        events = self.events

        class RecorderFactory(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                return Recorder(events, hello)

        self.factory = RecorderFactory()

    async def waitFor(self, kind: str, timeout: float = 10.0) -> Any:
        from twisted.internet import reactor

        while True:
            for event in self.events:
                if event[0] == kind:
                    return event
            await self.changed.addTimeout(timeout, reactor)


async def _sleep(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds)  # type: ignore[arg-type]


async def _link(
    server: TLSCredentials,
    clientOptions: Any,
    handshakeTimeout: float = 10.0,
    expectedIdentity: str | None = None,
) -> tuple[Side, Side, VerifiedTLSFactory, VerifiedTLSFactory, Any]:
    from twisted.internet import reactor
    from twisted.internet.endpoints import (
        SSL4ServerEndpoint,
        TCP4ClientEndpoint,
        wrapClientTLS,
    )

    host, client = Side(None), Side(b"hello")
    serverFactory = VerifiedTLSFactory(reactor, host.factory, handshakeTimeout)
    port = await SSL4ServerEndpoint(
        reactor, 0, server.serverOptions(), interface="127.0.0.1"
    ).listen(serverFactory)
    clientFactory = VerifiedTLSFactory(
        reactor, client.factory, expectedIdentity=expectedIdentity
    )
    endpoint = wrapClientTLS(
        clientOptions, TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
    )
    await endpoint.connect(clientFactory)
    return host, client, serverFactory, clientFactory, port


@pytest_twisted.ensureDeferred
async def test_mutualTLS(certificates: dict[str, str]) -> None:
    """
    Machines of one authority verify each other; the host's protocol sees
    the client's identity in getPeer(), the client's the host's.
    """
    ours = certificates["ours"]
    a, b = _credentials(ours, "a"), _credentials(ours, "b")
    host, client, _, _, port = await _link(a, b.clientOptions("a"))
    try:
        assert await host.waitFor("data") == ("data", b"hello")
        assert await client.waitFor("data") == ("data", b"reply to hello")
        (_, hostSees) = await host.waitFor("connected")
        (_, clientSees) = await client.waitFor("connected")
        assert isinstance(hostSees, VerifiedPeer) and hostSees.identity == "b"
        assert hostSees.host == "127.0.0.1"
        assert clientSees.identity == "a"
    finally:
        await port.stopListening()
        await _sleep(0.05)


@pytest.mark.parametrize("who", ["stranger", "no certificate"])
@pytest_twisted.ensureDeferred
async def test_strangerRefused(certificates: dict[str, str], who: str) -> None:
    """
    A client whose certificate another authority signed (even under the
    same name), or that has none, is refused and logged: the host's
    application never sees it, and it never gets a byte.
    """
    from twisted.internet.ssl import optionsForClientTLS, trustRootFromCertificates
    from twisted.logger import globalLogPublisher

    ours, theirs = certificates["ours"], certificates["theirs"]
    a = _credentials(ours, "a")
    if who == "stranger":
        # It trusts our authority, so it would talk to us; we do not trust it.
        options = _credentials(theirs, "a", os.path.join(ours, "ca.pem")).clientOptions(
            "a"
        )
    else:
        options = optionsForClientTLS(
            "a", trustRoot=trustRootFromCertificates(a.authorities)
        )
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    host, client, serverFactory, _, port = await _link(a, options)
    try:
        for _ in range(200):
            if serverFactory.refused:
                break
            await _sleep(0.025)
        await _sleep(0.2)
        assert serverFactory.refused == 1
        assert host.events == []
        assert [e for e in client.events if e[0] == "data"] == []
    finally:
        globalLogPublisher.removeObserver(logged.append)
        await port.stopListening()
        await _sleep(0.05)
    assert any("refused a TLS peer" in str(e.get("log_format")) for e in logged)


async def _clientRefusedHost(
    clientFactory: VerifiedTLSFactory, client: Side, host: Side
) -> None:
    """
    Wait until the client refused the host; then neither application saw
    anything of the other.
    """
    for _ in range(200):
        if clientFactory.refused:
            break
        await _sleep(0.025)
    assert clientFactory.refused == 1
    assert client.events == []
    assert [e for e in host.events if e[0] == "data"] == []


@pytest_twisted.ensureDeferred
async def test_wrongMachineRefused(certificates: dict[str, str]) -> None:
    """
    A client that expects machine b but reaches a (an address proclaimed by
    someone who is not b) refuses it: its application is never connected
    and sends nothing.
    """
    ours = certificates["ours"]
    a, b = _credentials(ours, "a"), _credentials(ours, "b")
    host, client, _, clientFactory, port = await _link(
        a, a.clientOptions("b"), expectedIdentity="b"
    )
    try:
        await _clientRefusedHost(clientFactory, client, host)
    finally:
        await port.stopListening()
        await _sleep(0.05)
    assert b.identity == "b"


@pytest_twisted.ensureDeferred
async def test_silentPeerDropped(certificates: dict[str, str]) -> None:
    """
    A peer that connects and never completes a handshake is dropped after
    the handshake timeout, unseen by the application.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ClientEndpoint

    a = _credentials(certificates["ours"], "a")
    host = Side(None)
    serverFactory = VerifiedTLSFactory(reactor, host.factory, handshakeTimeout=0.3)
    port = await SSL4ServerEndpoint(
        reactor, 0, a.serverOptions(), interface="127.0.0.1"
    ).listen(serverFactory)
    lost: Deferred[None] = Deferred()

    class Silent(Protocol):
        def connectionLost(self, reason: object = None) -> None:
            lost.callback(None)

    try:
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(Silent)
        )
        await lost.addTimeout(5, reactor)
        assert serverFactory.refused == 1 and host.events == []
    finally:
        await port.stopListening()


def test_certificateNames(certificates: dict[str, str]) -> None:
    """
    The check a client makes after the handshake, whatever Twisted did: a
    certificate names its own host (DNS name or IP address), not another.
    """
    from twisted_channel._tls import certificateNames

    ours = certificates["ours"]
    a = _credentials(ours, "a").certificate.original
    local = _credentials(ours, "127.0.0.1").certificate.original
    assert certificateNames(a, "a")
    assert not certificateNames(a, "b")
    assert not certificateNames(a, "127.0.0.1")
    assert certificateNames(local, "127.0.0.1")
    assert not certificateNames(local, "127.0.0.2")


@pytest_twisted.ensureDeferred
async def test_expectedIdentityCheckedAfterHandshake(
    certificates: dict[str, str],
) -> None:
    """
    A client factory that expects machine b refuses a host whose
    certificate names a, even when the TLS options let the handshake
    through (they were made for a): its application is never connected.
    """
    ours = certificates["ours"]
    a, b = _credentials(ours, "a"), _credentials(ours, "b")
    host, client, _, clientFactory, port = await _link(
        a, b.clientOptions("a"), expectedIdentity="b"
    )
    try:
        await _clientRefusedHost(clientFactory, client, host)
    finally:
        await port.stopListening()
        await _sleep(0.05)


def test_recordSpans() -> None:
    """
    What one write hands the TLS layer is cut into spans of whole records'
    plaintext (16 KiB each, the last shorter) without joining it whole: the
    records inside one chunk are one view of that chunk; only a record
    that spans chunks is joined, and a chunk that is not C{bytes} is copied
    before it is held.
    """
    header, payload = b"h" * 12, os.urandom(4 * RECORD_SIZE)
    chunks = [header, payload, header, payload]
    spans = list(recordSpans(chunks))
    assert b"".join(spans) == b"".join(chunks)
    assert [len(p) for p in spans] == [
        RECORD_SIZE,
        3 * RECORD_SIZE,
        RECORD_SIZE,
        3 * RECORD_SIZE,
        24,
    ]
    # The first record spans the header and the payload: joined.  The next
    # three lie inside the payload: one view of it, nothing copied.
    assert isinstance(spans[0], bytes)
    assert isinstance(spans[1], memoryview) and spans[1].obj is payload
    assert list(recordSpans([])) == []
    assert [bytes(p) for p in recordSpans([b"ab", b"", b"cdefg"], 2)] == [
        b"ab",
        b"cdef",
        b"g",
    ]
    changing = bytearray(b"x" * (RECORD_SIZE + 1))
    held = list(recordSpans([changing]))
    changing[:] = b"y" * len(changing)
    assert b"".join(held) == b"x" * (RECORD_SIZE + 1)
