"""
The channel's links between machines: the channel's own link protocol
(hello and welcome, frames, acknowledgements) spoken inside the mutual TLS
connection itself, with nothing between a client's session and its host's.

This module owns both ends.  On the host, L{MachineHostLink} is a host link
of the machine's local host, built for each verified TLS connection to the
machine's port (plain TCP with C{insecure=}); its peer is the machine its
certificate names.  On the client, L{MachineReconnection} finds the host
etcd names (L{HostFinder}) and finds it again, with the one-machine
channel's reconnection strategy, and its L{MachineConnector} dials each
link, checking that the host's certificate names the machine the election
key names; L{MachineClientLink} is the client's end of one link.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IAddress, IConnector, IProtocol
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._address import ChannelAddress
from ._client import _ClientLink
from ._cluster import HostFinder, electionKey
from ._collection import collectFirstFull
from ._host import _HostLink
from ._reconnection import ConnectionsConnector, Reconnection
from ._sockets import (
    readDirectly,
    readInLargePieces,
    socketTransport,
    writeEagerly,
    writeUnjoined,
)

if TYPE_CHECKING:
    from ._campaign import HostRecord
    from ._client import ChannelClientTransport
    from ._clientsession import ClientDeadlines
    from ._clusterchannel import ClusterPort, ClusterSettings

_log = Logger()

#: Seconds a host holds a link accepted while it may be about to host (a
#: local heir whose etcd requests are in flight), and a client gives a
#: host's port to complete the TLS handshake; under the channel client's 2 s
#: deadline for a new link's handshake.
HOST_WAIT = 1.0


def _prepareSocket(transport: object) -> None:
    """
    Set up a link's TCP socket, under TLS if any: Nagle's algorithm off (an
    acknowledgement or a reply must not wait for the peer's delayed
    acknowledgement of the last write); reads of up to 256 KiB, so that
    one batch, with one acknowledgement, takes several large messages;
    the TLS records of one write taken out of the TLS layer together, into
    one buffer, and sent at once while the socket's transport holds
    nothing, and what it holds sent unjoined, not joined again with what
    the kernel did not take.
    """
    sock = socketTransport(transport)
    sock.setTcpNoDelay(True)  # type: ignore[attr-defined]
    readInLargePieces(sock)
    if sock is not transport:
        writeEagerly(transport)
    writeUnjoined(sock)


class MachineHostLink(_HostLink):
    """
    The host's end of a link from another machine (or a client of its own
    machine, which also comes through its machine's port): a verified TLS
    connection, whose peer is the machine its certificate names (C{None}
    with C{insecure=}), and the client's pid as its hello says.

    One accepted while its process is about to host is held (L{hold}): it
    reads nothing, and nothing it carries reaches the channel, until
    L{release}.
    """

    #: While held, what the TLS layer handed on already (from the read
    #: that completed the handshake).
    _held: list[bytes] | None = None
    _cut = False

    def hold(self) -> None:
        """
        Read nothing until L{release}: called before the connection is
        made.
        """
        self._held = []

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        port = self.port
        _prepareSocket(transport)
        self.term.allLinks.add(self)
        peer = transport.getPeer()
        self.peerAddress = ChannelAddress(
            port.name, port.paths.socket, None, identity=getattr(peer, "identity", None)
        )
        self._startDeadline()
        if self._held is None:
            # The one-machine channel's direct reads (under TLS, decrypted
            # into one buffer).
            readDirectly(transport, self.dataReceived, self.session.decoder)
        else:
            transport.pauseProducing()  # type: ignore[attr-defined]
            self.dataReceived = self._keep  # type: ignore[method-assign]

    def _keep(self, data: bytes | memoryview) -> None:
        assert self._held is not None
        self._held.append(bytes(data))

    def release(self) -> None:
        """
        This process hosts: read the link, starting with what it holds.
        """
        held, self._held = self._held, None
        transport = self.transport
        if held is None or transport is None or self._cut:
            return
        del self.dataReceived
        readDirectly(transport, self.dataReceived, self.session.decoder)
        transport.resumeProducing()  # type: ignore[attr-defined]
        if held:
            self.dataReceived(b"".join(held))

    def closeQuietly(self) -> None:
        """
        End the link at once, without a last word and without reading
        anything more: the client connects again (to whichever host etcd
        names) and resends what was not acknowledged.  A link across
        machines is aborted, not closed: a host cut off from its client
        must not keep its socket waiting for an acknowledgement.
        """
        transport = self.transport
        if transport is None or self._cut:
            return
        self._cut = True
        self.session.closeQuietly()
        transport.abortConnection()  # type: ignore[attr-defined]


class MachineLinkFactory(Factory):
    """
    The factory under a machine port's TLS (or, with C{insecure=}, its
    plain TCP): each verified connection becomes a link of the candidate's
    local host, or is refused (closed) while it does not host, nor may be
    about to.
    """

    noisy = False

    def __init__(self, candidate: ClusterPort) -> None:
        self._candidate = candidate

    def buildProtocol(self, addr: IAddress | None) -> MachineHostLink | None:
        return self._candidate.acceptLink()


class MachineClientLink(_ClientLink):
    """
    The client's end of one link to a host across machines: over TLS, the
    host's identity was verified before this link was built, and the
    welcome names the host (machine, pid, address, term).  Its connector's
    attempt lasts until it is welcomed or lost.
    """

    connector: MachineConnector

    def connectionMade(self) -> None:
        assert self.transport is not None
        _prepareSocket(self.transport)
        # The one-machine channel's direct reads (under TLS, decrypted into
        # one buffer), from the start: not put off to the first read as on
        # one machine (see _ClientLink.dataReceived), which under TLS comes
        # from within the TLS layer's own read.
        readDirectly(self.transport, self.dataReceived, self.session.decoder)
        self._readsDirectly = True
        self._startDeadline()
        self.send(self.session.start())


class _DialedLinkFactory(Factory):
    """
    Builds the link of one dial, once connected (over TLS: once the
    handshake verified the host), and tells the connector so.
    """

    noisy = False

    def __init__(self, connector: MachineConnector) -> None:
        self._connector = connector

    def buildProtocol(self, addr: IAddress | None) -> _ClientLink:
        return self._connector.linked(self)


@implementer(IConnector)
class MachineConnector(ConnectionsConnector):
    """
    What the reconnection strategy drives across machines: each C{connect}
    dials the host etcd names now, over mutual TLS whose host certificate
    must name the machine the election key names.  An attempt lasts until
    the host welcomes its link (a host about to host holds it meanwhile),
    or the dial or the link fails, so that etcd naming a host meanwhile
    does not make a second link to it.

    @ivar address: the address the attempt under way dialed, or C{None}.
    """

    def __init__(
        self,
        connection: ChannelClientTransport,
        reconnection: MachineReconnection,
        linkType: Callable[..., _ClientLink],
        settings: ClusterSettings,
    ) -> None:
        self._connection = connection
        self._reconnection = reconnection
        self._linkType = linkType
        self._settings = settings
        #: The attempt under way: its factory (which names it), the dial's
        #: Deferred, and the connection it made before its handshake is
        #: done, if any.
        self._dialing: _DialedLinkFactory | None = None
        self._attempt: Deferred[Any] | None = None
        self._dialed: Any = None
        #: The link the attempt made, until it is welcomed or lost.
        self._handshaking: _ClientLink | None = None
        self.address: str | None = None
        #: TLS client options, by the host identity they verify: built once.
        self._clientOptions: dict[str, Any] = {}

    @property
    def attempting(self) -> bool:
        """
        Whether a dial is under way.
        """
        return self._dialing is not None or self._handshaking is not None

    def connect(self) -> None:
        connection = self._connection
        if connection.closed or self.attempting:
            return
        host = self._reconnection.host
        if host is None:
            self._reconnection.strategy.clientConnectionFailed(  # type: ignore[no-untyped-call]
                self, Failure(error.ConnectError(string="etcd names no host"))
            )
            return
        reactor = connection.reactor
        record = host[0]
        address, _, port = record.address.rpartition(":")
        dialing = _DialedLinkFactory(self)
        factory: Any = dialing
        credentials = self._settings.credentials
        if credentials is not None:
            from ._tls import VerifiedTLSFactory, tlsFactory

            verified = VerifiedTLSFactory(
                reactor,
                dialing,
                handshakeTimeout=HOST_WAIT,
                expectedIdentity=record.identity,
            )
            verified.onRefused = lambda reason: self._failed(
                dialing, Failure(error.ConnectError(string=f"TLS refused: {reason}"))
            )
            options = self._clientOptions.get(record.identity)
            if options is None:
                options = credentials.clientOptions(record.identity)
                self._clientOptions[record.identity] = options
            factory = tlsFactory(options, True, verified)
        self._dialing = dialing
        self._dialed = None
        self.address = record.address
        endpoint = TCP4ClientEndpoint(reactor, address, int(port), timeout=5)
        attempt = endpoint.connect(factory)
        if self._dialing is dialing:
            self._attempt = attempt

        def connected(protocol: IProtocol) -> None:
            if self._dialing is dialing:
                self._dialed = protocol

        attempt.addCallbacks(connected, lambda reason: self._failed(dialing, reason))

    def linked(self, dialing: _DialedLinkFactory) -> _ClientLink:
        """
        The dial of C{dialing} made a connection (over TLS, verified): its
        link.
        """
        link = self._linkType(self._connection, None, self)
        if self._dialing is dialing:
            self._dialing = self._attempt = self._dialed = None
            self._handshaking = link
        return link

    def settled(self, link: _ClientLink) -> None:
        """
        C{link} was welcomed, or lost: the attempt that made it is over.
        """
        if self._handshaking is link:
            self._handshaking = None
            self.address = None

    def _failed(self, dialing: _DialedLinkFactory, reason: Failure) -> None:
        if self._dialing is not dialing:
            return
        self._dialing = self._attempt = self._dialed = None
        self.address = None
        _log.debug(
            "channel {channel}: cannot reach the host: {error}",
            channel=self._connection.address.name,
            error=reason.getErrorMessage(),
        )
        self._reconnection.attemptFailed(reason)

    def stopConnecting(self) -> None:
        if not self.attempting:
            raise error.NotConnectingError()
        attempt, dialed, link = self._attempt, self._dialed, self._handshaking
        self._dialing = self._attempt = self._dialed = self._handshaking = None
        self.address = None
        if link is not None:
            link.abort()
        if attempt is not None:
            attempt.cancel()
        if dialed is not None and dialed.transport is not None:
            # Connected, its handshake under way.
            dialed.transport.abortConnection()


class MachineReconnection(Reconnection):
    """
    Finding a client connection's host across machines, and finding it
    again: the host etcd's election key names (L{HostFinder}, never one of
    a lower term than one seen), dialed by a L{MachineConnector} with the
    one-machine channel's strategy (at once after a healthy link, then 2 ms
    doubling to 250 ms).  When etcd names another host, a backoff is cut
    short, a link to a host of a lower term is dropped (a host cut off from
    this client may have stepped down without its close reaching us), and
    the connection's hellos say the new term as the lowest they accept.

    @ivar host: the host etcd names now, with its term, or C{None}.
    """

    watchesFiles = False
    connector: MachineConnector

    def __init__(
        self,
        settings: ClusterSettings,
        name: str,
        candidate: ClusterPort | None,
        connection: ChannelClientTransport,
        linkType: Callable[..., _ClientLink],
        lockPath: str | None,
        deadlines: ClientDeadlines,
    ) -> None:
        """
        @param candidate: this process's candidacy for the endpoint's
            C{serverFactory}, already standing, stopped when the connection
            ends (as on one machine).
        """
        self._settings = settings
        super().__init__(connection, linkType, lockPath, deadlines)
        self.host: tuple[HostRecord, int] | None = None
        self._candidate = candidate
        self._etcd = settings.etcdClient(connection.reactor)
        self.finder = HostFinder(
            connection.reactor, self._etcd, electionKey(name), self._changed
        )

    def newConnector(self, linkType: Callable[..., _ClientLink]) -> MachineConnector:
        return MachineConnector(self._connection, self, linkType, self._settings)

    def start(self, now: float) -> None:
        self.finder.start()
        # The process's first full collection, which its imports would
        # otherwise bring due seconds from now, in a takeover as likely as
        # anywhere: this connection's links are its path to every new host.
        collectFirstFull()
        super().start(now)

    def _changed(self, host: tuple[HostRecord, int] | None) -> None:
        self.host = host
        connection = self._connection
        session = connection.session
        if host is not None and (session.lowestTerm or 0) < host[1]:
            session.lowestTerm = host[1]
        link = connection.link
        if link is not None:
            linked = link.hostAddress.term
            if host is None or (linked is not None and linked < host[1]):
                _log.info(
                    "channel {channel}: the host across machines changed (now "
                    "{host}); relinking",
                    channel=connection.address.name,
                    host="none"
                    if host is None
                    else f"{host[0].address} term {host[1]}",
                )
                link.abort()
        if host is not None:
            connector = self.connector
            if connector.attempting and connector.address != host[0].address:
                # Dialing a host etcd no longer names (a local heir takes
                # over at the same address: that attempt stays).
                connector.stopConnecting()
            self.hostAppeared()

    def stop(self) -> None:
        super().stop()
        self.finder.stop()
        self._etcd.close().addErrback(
            lambda f: _log.debug("closing the etcd client: {f}", f=f.value)
        )
        candidate, self._candidate = self._candidate, None
        if candidate is not None:
            candidate.stopListening().addErrback(
                lambda f: _log.failure("could not stop the candidate host", f)
            )
