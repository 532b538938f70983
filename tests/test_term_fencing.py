"""
A client across machines fences its hosts by term, end to end, with the
channel's real host and client over a real Unix socket (a client across
machines dials TLS; here its connection, made as across machines, dials
the host's socket, so that a host of a lower term is reached at all): the
client's hello says the highest term it has seen, and a host
of a lower term, or one that does not host across machines, refuses it
before a byte reaches its application; a host of a higher term then gets
everything, and C{getPeer()} names it.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher

from twisted_channel import ChannelEndpoint
from twisted_channel._address import HOST, ChannelAddress
from twisted_channel._client import ChannelClientTransport
from twisted_channel._wire import HostTerm

pytestmark = pytest.mark.timeout(30)


class Recorder(Protocol):
    received: list[bytes]

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)


def recorder() -> tuple[Factory, list[bytes]]:
    received: list[bytes] = []

    class Recording(Recorder):
        def connectionMade(self) -> None:
            self.received = received

    return Factory.forProtocol(Recording), received


async def waitUntil(check: Any, timeout: float = 10.0) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    waited = 0.0
    while not check():
        assert waited < timeout, "timed out"
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


@pytest_twisted.ensureDeferred
async def test_neverALowerTerm(tmp_path: Any) -> None:
    """
    A client welcomed by a host of term 7 is refused, by the next host, while
    that host does not host across machines and while its term is 5: its
    application gets nothing; once its term is 9 the client links, resends,
    and C{getPeer()} names it with its term.
    """
    from twisted.internet import reactor

    directory = str(tmp_path / "relay")
    refusals: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        reason = event.get("reason")
        if isinstance(reason, str) and "closed the link" in event.get("log_format", ""):
            refusals.append(reason)

    globalLogPublisher.addObserver(observe)
    ports: list[Any] = []
    try:
        firstFactory, first = recorder()
        port = await ChannelEndpoint(reactor, "fenced", directory=directory).listen(
            firstFactory
        )
        ports.append(port)
        port.acrossMachines = HostTerm(7, "a", "10.0.0.8:4443")
        client = ChannelEndpoint(reactor, "fenced", directory=directory, timeout=0)
        protocol = Protocol()
        transport = ChannelClientTransport(
            reactor,
            ChannelAddress("fenced", client.address, HOST),
            protocol,
            Factory.forProtocol(Protocol),
            client.timeout,
            client.maxMessageSize,
            client.maxBufferSize,
            lockPath=client.paths.lock,
            acrossMachines=True,
        )
        protocol.makeConnection(transport)
        transport.startConnecting()
        transport.write(b"one")  # type: ignore[union-attr]
        await waitUntil(lambda: first == [b"one"])
        peer = transport.getPeer()  # type: ignore[union-attr]
        assert (peer.term, peer.identity, peer.host, peer.port) == (
            7,
            "a",
            "10.0.0.8",
            4443,
        )
        await port.stopListening()
        ports.remove(port)

        # The next host of this directory: first not hosting across
        # machines, then of a lower term, then of a higher one.
        secondFactory, second = recorder()
        port = await ChannelEndpoint(reactor, "fenced", directory=directory).listen(
            secondFactory
        )
        ports.append(port)
        transport.write(b"two")  # type: ignore[union-attr]
        await waitUntil(
            lambda: any("does not host across machines" in r for r in refusals)
        )
        port.acrossMachines = HostTerm(5, "b", "10.0.0.9:4443")
        await waitUntil(
            lambda: any("term 5 is lower than term 7" in r for r in refusals)
        )
        assert second == []
        assert transport.getPeer().term is None  # type: ignore[union-attr]
        linked: Deferred[Any] = transport.whenConnected()  # type: ignore[union-attr]
        port.acrossMachines = HostTerm(9, "b", "10.0.0.9:4443")
        host = await linked
        assert (host.term, host.identity, host.pid) == (9, "b", port.getHost().pid)
        await waitUntil(lambda: second == [b"two"])
        assert first == [b"one"]
        transport.loseConnection()  # type: ignore[union-attr]
    finally:
        globalLogPublisher.removeObserver(observe)
        for port in ports:
            await port.stopListening()
