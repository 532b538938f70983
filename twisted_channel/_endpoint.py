"""
L{ChannelEndpoint}: the channel as a Twisted endpoint, both client and
server.
"""

from __future__ import annotations

import functools
import math
import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorUNIX,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from zope.interface import implementer

from ._address import HOST, ChannelAddress
from ._client import FAILOVER_MODES, RESEND, ChannelClientTransport
from ._directory import channelPaths, checkName, prepareDirectory
from ._host import HANDSHAKE_TIMEOUT, ChannelPort
from ._wire import MAX_FRAME_BODY

if TYPE_CHECKING:
    from ._clusterchannel import ClusterPort, ClusterSettings

#: The default largest message, in bytes.
DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: The default cap on a client's unacknowledged bytes.
DEFAULT_MAX_BUFFER_SIZE = 64 * 1024 * 1024
#: The default cap on the unsent bytes of all a host's links together.
DEFAULT_MAX_HOST_BUFFER_SIZE = 128 * 1024 * 1024
#: The default seconds a client waits for a host before giving up.
DEFAULT_TIMEOUT = 5.0


def checkTimeout(timeout: float) -> float:
    """
    @raise ValueError: unless C{timeout} is a finite number of seconds, zero
        or more (zero waits for ever).
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ValueError(f"timeout must be a number of seconds, not {timeout!r}")
    if not math.isfinite(timeout) or timeout < 0:
        raise ValueError(
            f"timeout must be a finite number of seconds, 0 or more "
            f"(0 waits for ever), not {timeout!r}"
        )
    return float(timeout)


UNIX = "unix"
TCP = "tcp"
TRANSPORTS = (UNIX, TCP)


def defaultTransport(reactor: object) -> str:
    """
    C{"unix"} where the reactor and the platform have Unix sockets, else
    C{"tcp"} (on Windows, for example).
    """
    if hasattr(socket, "AF_UNIX") and IReactorUNIX.providedBy(reactor):
        return UNIX
    return TCP


def checkTransport(transport: str) -> str:
    """
    @raise ValueError: unless C{transport} is C{"unix"} or C{"tcp"}.
    """
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be 'unix' or 'tcp', not {transport!r}")
    return transport


def checkSize(option: str, value: int, smallest: int = 1) -> int:
    """
    @raise ValueError: unless C{value} is a whole number of bytes in range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{option} must be a whole number of bytes, not {value!r}")
    if not smallest <= value <= MAX_FRAME_BODY:
        raise ValueError(
            f"{option} must be from {smallest} to {MAX_FRAME_BODY} bytes, not {value}"
        )
    return value


@implementer(IStreamClientEndpoint, IStreamServerEndpoint)
class ChannelEndpoint:
    """
    A named channel among the processes of one machine (one user, one
    runtime directory).

    C{listen(factory)} makes this process a candidate host: it hosts the
    channel if nobody does, else stands by and takes over when the host
    goes.  C{connect(factory)} fires at once with a protocol whose transport
    is one logical connection to whoever hosts the channel, now or later.

    @param reactor: the reactor; it must provide C{IReactorUNIX},
        C{IReactorTime} and C{IReactorFromThreads}.
    @param name: the channel's name: 1 to 100 characters of C{A-Z a-z 0-9 .
        _ -}, not starting with C{.} or C{-}.
    @param directory: the runtime directory (default C{$XDG_RUNTIME_DIR/
        twisted-channel}, else C{<tempdir>/twisted-channel-<uid>}).
    @param timeout: seconds a client waits for a host before its connection
        fails; C{0} waits for ever.
    @param serverFactory: if given, C{connect} also makes this process a
        candidate host serving links with this factory, as open-channel's
        C{openChannel(name, listener)} does, until the connection ends
        (across machines too).
    @param maxMessageSize: the largest message, in bytes, either way.
    @param maxBufferSize: the most unacknowledged bytes a client holds, and
        the most unsent bytes a host holds for one link.
    @param transport: C{"unix"} (a Unix socket in the runtime directory) or
        C{"tcp"} (a loopback TCP port named, with a secret both ends prove
        they know, in a port file in the runtime directory); the default is
        C{"unix"} where Unix sockets exist.
    @param handshakeTimeout: seconds a host gives a new link to prove itself
        and say hello before dropping it.

    @param maxHostBufferSize: the most unsent bytes a host holds for all
        its links together; a write past it raises
        L{ChannelBufferFullError}, and producers registered on links that
        hold unsent bytes are paused while the links hold more than half
        of it.
    @param failover: what a client does when its host is lost:
        C{"resend"} (the default) goes on with the next host, sending again
        what was not acknowledged; C{"close"} ends the connection with
        L{ChannelHostLostError}, for protocols whose conversation cannot
        move to another host half-way (HTTP).
    @ivar transportKind: C{"unix"} or C{"tcp"}: which of the two the channel
        runs over (the C{transport} given, or its default).  Not a
        transport: the protocols' transports are those.
    """

    def __init__(
        self,
        reactor: Any,
        name: str,
        *,
        directory: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        serverFactory: IProtocolFactory | None = None,
        maxMessageSize: int = DEFAULT_MAX_MESSAGE_SIZE,
        maxBufferSize: int = DEFAULT_MAX_BUFFER_SIZE,
        transport: str | None = None,
        failover: str = RESEND,
        maxHostBufferSize: int = DEFAULT_MAX_HOST_BUFFER_SIZE,
        handshakeTimeout: float = HANDSHAKE_TIMEOUT,
        coordinator: str | None = None,
        advertise: str | None = None,
        port: int | None = None,
        interface: str | None = None,
        leaseTTL: int | None = None,
        certKey: str | None = None,
        privateKey: str | None = None,
        caCerts: str | None = None,
        insecure: bool = False,
        etcdCaCerts: str | None = None,
        etcdCertKey: str | None = None,
        etcdPrivateKey: str | None = None,
        etcdUser: str | None = None,
        etcdPasswordFile: str | None = None,
    ) -> None:
        self._reactor = reactor
        # Across machines (docs/cluster.md); None for the one-machine channel.
        self.cluster: ClusterSettings | None = None
        # In ClusterSettings.check's order: each option is named once, both
        # to see whether any was given and to check them.
        clusterOptions = (
            *(advertise, port, interface, leaseTTL),
            *(certKey, privateKey, caCerts, insecure),
            *(etcdCaCerts, etcdCertKey, etcdPrivateKey, etcdUser, etcdPasswordFile),
        )
        if coordinator is not None or any(clusterOptions):
            # Imported only here: the one-machine channel loads no etcd or
            # TLS code.  check() refuses these options without coordinator=.
            from ._clusterchannel import ClusterSettings

            self.cluster = ClusterSettings.check(coordinator, *clusterOptions)
        if (
            isinstance(handshakeTimeout, bool)
            or not isinstance(handshakeTimeout, (int, float))
            or not 0 < handshakeTimeout < float("inf")
        ):
            raise ValueError(
                "handshakeTimeout must be a finite number of seconds above 0, "
                f"not {handshakeTimeout!r}"
            )
        self.handshakeTimeout = float(handshakeTimeout)
        if failover not in FAILOVER_MODES:
            raise ValueError(f"failover must be 'resend' or 'close', not {failover!r}")
        self.failover = failover
        self.transportKind = (
            defaultTransport(reactor)
            if transport is None
            else checkTransport(transport)
        )
        self.name = checkName(name)
        self.paths = channelPaths(name, directory)
        # The host's address as a connection knows it before any link (see
        # connect).
        self._hostAddress: ChannelAddress | None = None
        self.timeout = checkTimeout(timeout)
        self.serverFactory = serverFactory
        self.maxMessageSize = checkSize("maxMessageSize", maxMessageSize)
        self.maxBufferSize = checkSize("maxBufferSize", maxBufferSize)
        self.maxHostBufferSize = checkSize("maxHostBufferSize", maxHostBufferSize)
        if self.maxHostBufferSize < self.maxMessageSize:
            raise ValueError(
                f"maxHostBufferSize ({self.maxHostBufferSize}) must be at least "
                f"maxMessageSize ({self.maxMessageSize})"
            )
        if self.maxBufferSize < self.maxMessageSize:
            raise ValueError(
                f"maxBufferSize ({self.maxBufferSize}) must be at least "
                f"maxMessageSize ({self.maxMessageSize})"
            )

    def __repr__(self) -> str:
        return (
            f"<ChannelEndpoint {self.name!r} in {self.paths.directory!r} "
            f"over {self.transportKind}>"
        )

    @property
    def address(self) -> str:
        """
        The file clients look at: the socket, or the TCP port file.
        """
        return self.paths.socket if self.transportKind == UNIX else self.paths.port

    def _port(self, factory: IProtocolFactory) -> ChannelPort:
        return ChannelPort(
            self._reactor,
            self.name,
            self.paths,
            factory,
            self.maxMessageSize,
            maxBufferSize=self.maxBufferSize,
            maxHostBufferSize=self.maxHostBufferSize,
            transport=self.transportKind,
            handshakeTimeout=self.handshakeTimeout,
        )

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Stand as a candidate host of the channel.

        @return: a Deferred that fires with a L{ChannelPort} once this
            process hosts or stands by, or fails if the runtime directory is
            not safe, the lock file is of another format or locking
            mechanism (L{ChannelLockMismatchError}), or the socket cannot be
            bound.
        """
        if self.cluster is not None:
            from ._clusterchannel import ClusterPort

            try:
                prepareDirectory(self.paths.directory)
                cluster = ClusterPort(
                    self._reactor,
                    self._port(protocolFactory),
                    self.cluster,
                    self.name,
                )
                cluster.startListening()
            except Exception as e:
                return fail(e)
            return succeed(cluster)
        port = self._port(protocolFactory)
        try:
            port.startListening()
        except Exception as e:
            return fail(e)
        return succeed(port)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect to the channel without waiting for a host.

        @return: a Deferred that fires at once with the factory's protocol,
            connected to a L{ChannelClientTransport}; writes are buffered
            until a host is reachable.
        """
        candidate: ChannelPort | None = None
        # Across machines: this process's candidacy, and what finds the host
        # through etcd and dials it over TLS.
        standing: ClusterPort | None = None
        acrossMachines: dict[str, Any] = {}
        try:
            if self.serverFactory is not None or self.cluster is None:
                prepareDirectory(self.paths.directory)
            if self.cluster is not None:
                from ._clusterchannel import ClusterPort
                from ._machinelink import MachineClientLink, MachineReconnection

                if self.serverFactory is not None:
                    # As on one machine: this process stands as a candidate
                    # host (locally, then in etcd) for as long as the
                    # connection lives.
                    standing = ClusterPort(
                        self._reactor,
                        self._port(self.serverFactory),
                        self.cluster,
                        self.name,
                    )
                    standing.startListening()
                acrossMachines = {
                    "acrossMachines": True,
                    "reconnection": functools.partial(
                        MachineReconnection, self.cluster, self.name, standing
                    ),
                    "linkType": MachineClientLink,
                }
            elif self.serverFactory is not None:
                candidate = self._port(self.serverFactory)
                candidate.startListening()
        except Exception as e:
            if standing is not None and standing.role != "stopped":
                standing.stopListening().addErrback(lambda _: None)
            return fail(e)
        address = self._hostAddress
        if address is None:
            # The same for every connection (frozen): made once.
            address = self._hostAddress = ChannelAddress(self.name, self.address, HOST)
        protocolFactory.doStart()
        protocol = protocolFactory.buildProtocol(address)
        if protocol is None:
            protocolFactory.doStop()
            if candidate is not None:
                candidate.stopListening()
            if standing is not None:
                standing.stopListening()
            return fail(ConnectError(string="the factory returned no protocol"))
        transport = ChannelClientTransport(
            self._reactor,
            address,
            protocol,
            protocolFactory,
            self.timeout,
            self.maxMessageSize,
            self.maxBufferSize,
            candidate,
            transport=self.transportKind,
            lockPath=self.paths.lock,
            failover=self.failover,
            **acrossMachines,
        )
        protocol.makeConnection(transport)
        transport.startConnecting()
        return succeed(protocol)
