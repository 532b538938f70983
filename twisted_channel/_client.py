"""
The connecting side of a channel: one logical connection that outlives the
links beneath it.

The application's protocol is connected to a L{ChannelClientTransport} at
once: an L{ITransport} over the connection's L{ClientSession} (what the
protocol says) and its L{Reconnection} (finding the host, and finding it
again).  Each link is a L{_ClientLink}, the Twisted protocol that checks
the host's credentials, times its handshake and hands what it reads to the
transport; when a link is lost, the reconnection opens another, and the
transport sends again every message the old host had not acknowledged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IConnector,
    IConsumer,
    IDelayedCall,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _process, _wire
from ._address import CLIENT, HOST, ChannelAddress
from ._auth import LOOPBACK
from ._clientsession import (
    ACKNOWLEDGED,
    AUTHENTICATING,
    GOODBYE,
    LINK_HANDSHAKE_TIMEOUT,
    ClientDeadlines,
    ClientSession,
    HostBrokeProtocolError,
    HostRefused,
    MessagesTooLargeError,
    Send,
    Welcomed,
)
from ._clientsession import OPEN as _OPEN
from ._credentials import peerCredentials
from ._interfaces import (
    ChannelBufferFullError,
    ChannelClosedError,
    ChannelHostLostError,
    ChannelUnreachableError,
)
from ._pending import PendingWrites
from ._reconnection import Reconnection
from ._roles import LinkWaiters
from ._sockets import (
    pushToKernel,
    readDirectly,
    sendAtEndOfRead,
    sendNow,
    sendSequenceNow,
    unreadBytes,
)
from ._states import (
    CLOSED,
    CONNECTED,
    CONNECTING,
    CONNECTION,
    FINISHED,
    LINK_LOST,
    WELCOMED,
)
from ._surface import SocketOptions, streamAddress

if TYPE_CHECKING:
    from ._host import ChannelPort

_log = Logger()

_HEADER = _wire.HEADER
_DATA = _wire.DATA
_ACK = _wire.ACK
_OVERHEAD = PendingWrites.MESSAGE_OVERHEAD
#: A batch holding a payload this large or larger is sent unjoined
#: (C{sendmsg} of the headers and payloads); a smaller batch is joined into
#: one C{bytes} and sent.
_UNJOINED_FROM = 4096
#: A footprint no buffer reaches: where nothing is to be paused.
_NEVER = 1 << 62

#: What a client does when its host is lost: go on with the next host,
#: resending what was not acknowledged, or end the connection.
RESEND = "resend"
CLOSE = "close"
FAILOVER_MODES = (RESEND, CLOSE)


class _Discard:
    """
    Where the host's messages go once the application will not read them.
    """

    def dataReceived(self, data: bytes) -> None:
        pass


_DISCARD = _Discard()


class _ClientLink(Protocol):
    """
    The client's end of one link to a host, as a Twisted protocol: it checks
    the host's credentials, arms the handshake deadline, and hands what it
    reads to its connection, which interprets it with the link's
    L{LinkSession}.

    @ivar session: the link's protocol state.
    @ivar hostAddress: the host's address: its name and path until the
        host's welcome, then with its pid (and uid, as the kernel reports
        them over a Unix socket).
    @ivar hostPid: the host's pid where known: as the kernel reports it
        over a Unix socket from the link's start, else from its welcome.
    @ivar portPid: over loopback TCP, the pid the port file read for this
        link named (the host's, unless the file is stale): what a line
        about the host says before its welcome; else None.
    @ivar connector: the connector whose attempt made the link.
    """

    def __init__(
        self,
        connection: ChannelClientTransport,
        secret: bytes | None = None,
        connector: IConnector | None = None,
        portPid: int | None = None,
    ) -> None:
        """
        @param secret: over loopback TCP, the secret from the port file
            read for this link; None over Unix sockets, whose directory is
            private.
        @param portPid: over loopback TCP, the pid that port file named.
        """
        self._connection = connection
        self.connector = connector
        self.session = connection.session.newLink(secret)
        self._deadline: IDelayedCall | None = None
        self._deadlineRechecked = False
        self.hostAddress = connection.unknownHost
        # The host's pid and uid as the kernel reported them, until its
        # welcome makes its address.
        self.hostPid: int | None = None
        self._hostUid: int | None = None
        self.portPid = portPid
        # Whether reads go straight to the connection (see dataReceived).
        self._readsDirectly = False

    def connectionMade(self) -> None:
        """
        Check the host's credentials and say hello.  What the hello does
        not need waits until it has left: the host's address is made when
        its welcome comes, with the pid and uid the kernel reported here,
        and reads go straight to the connection from the first one (see
        L{dataReceived}).
        """
        assert self.transport is not None
        if self.session.state == AUTHENTICATING:
            # The host speaks first, with its challenge.
            self._startDeadline()
            return
        hostPid, hostUid = peerCredentials(self.transport.getHandle())  # type: ignore[attr-defined]
        if hostUid is not None and hostUid != os.getuid():
            connection = self._connection
            _log.warn(
                "channel {channel}: the socket {path} is served by uid {uid}, "
                "not by this process's uid; refusing it",
                channel=connection.address.name,
                path=connection.address.path,
                uid=hostUid,
            )
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self.hostPid = hostPid
        self._hostUid = hostUid
        self._startDeadline()
        self.send(self.session.start())

    def describeHost(self) -> str:
        """
        The host as a log line names it: by its pid where known (before
        its welcome over loopback TCP, the port file's), else as "the
        host".
        """
        pid = self.portPid if self.hostPid is None else self.hostPid
        return "the host" if pid is None else f"host pid {pid}"

    def _startDeadline(self) -> None:
        self._deadline = self._connection.reactor.callLater(
            LINK_HANDSHAKE_TIMEOUT, self._handshakeExpired
        )

    def send(self, chunks: list[bytes]) -> None:
        """
        Write C{chunks}, in one call, handed to the kernel at once when the
        transport holds nothing: the hello (with the messages written before
        the link was up) leaves as the link connects, not on the reactor's
        next iteration.
        """
        transport = self.transport
        if not chunks or transport is None:
            return
        if len(chunks) == 1:
            sendNow(transport, chunks[0])
        elif sum(map(len, chunks)) < _UNJOINED_FROM:
            # A hello with a few small messages: joined, it is one send,
            # without sendmsg's handling of what the kernel left of each.
            sendNow(transport, b"".join(chunks))
        else:
            sendSequenceNow(transport, chunks)

    def _handshakeExpired(self) -> None:
        self._deadline = None
        if not self._deadlineRechecked and unreadBytes(self.transport):
            # The host did answer: this process was late, not the host (it
            # was suspended, or short of CPU), and the reactor runs its timed
            # calls before it reads.  Judge once that is read.
            self._deadlineRechecked = True
            self._deadline = self._connection.reactor.callLater(
                0, self._handshakeExpired
            )
            return
        _log.warn(
            "channel {channel}: {host} did not answer within {timeout} s; trying again",
            channel=self._connection.address.name,
            host=self.describeHost(),
            hostPid=self.hostPid,
            timeout=LINK_HANDSHAKE_TIMEOUT,
        )
        self.abort()

    def _stopDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes | memoryview) -> None:
        """
        The link's first read (the welcome, or over TCP the host's
        challenge), or every read where the transport cannot be read
        directly: handed to the connection, and from now on the reactor
        hands what the transport reads straight to the connection, without
        this method in between (a partial is no Python call).  Set up here,
        not as the link connects: the hello leaves sooner, and no read can
        come before this one.
        """
        connection = self._connection
        if not self._readsDirectly:
            self._readsDirectly = True
            readDirectly(
                self.transport,
                partial(connection.linkDataReceived, self),
                self.session.decoder,
            )
        connection.linkDataReceived(self, data)

    def welcomed(self, welcome: _wire.Welcome) -> None:
        """
        The host answered: no deadline now, and its pid is known (across
        machines, its machine, address and term too).
        """
        self._stopDeadline()
        host = welcome.host
        if host is not None:
            # Across machines the welcome says who hosts: the machine, the
            # advertised address and the term.
            address, _, port = host.address.rpartition(":")
            self.hostAddress = ChannelAddress(
                self.hostAddress.name,
                self.hostAddress.path,
                HOST,
                welcome.pid,
                None,
                address or None,
                int(port) if port.isdigit() else None,
                term=host.term,
                identity=host.identity,
            )
        else:
            # Made now rather than as the link connected: nothing before
            # the welcome needs it.  The kernel's pid, else the welcome's.
            hostPid = self.hostPid
            self.hostAddress = ChannelAddress(
                self.hostAddress.name,
                self.hostAddress.path,
                HOST,
                welcome.pid if hostPid is None else hostPid,
                self._hostUid if hostPid is not None else None,
            )
        self.hostPid = self.hostAddress.pid

    def dropBroken(self, reason: str) -> None:
        """
        The host broke the protocol: log why, and drop the link.
        """
        _log.error(
            "channel {channel}: {host} broke the protocol ({reason}); "
            "dropping the link",
            channel=self._connection.address.name,
            host=self.describeHost(),
            hostPid=self.hostPid,
            reason=reason,
        )
        self.abort()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self._stopDeadline()
        self._connection.linkLost(self, reason)


class _RegisteredProducer:
    """
    The producer of a client's messages registered on its transport, and
    whether the transport paused it: a streaming one is paused when the
    unacknowledged messages take the high-water mark and resumed under the
    low one; a pull one is asked for more at each acknowledgement.
    """

    def __init__(self, producer: IProducer, streaming: bool) -> None:
        self.producer = producer
        self.streaming = streaming
        self.paused = False

    def pause(self) -> None:
        """
        The messages held reached the high-water mark.
        """
        if self.paused:
            return
        self.paused = True
        if self.streaming:
            IPushProducer(self.producer).pauseProducing()

    def mayGoOn(self, footprint: int, lowWater: int) -> None:
        """
        Acknowledged messages were forgotten; C{footprint} is what the rest
        take.
        """
        if self.paused:
            if footprint <= lowWater:
                self.paused = False
                self.producer.resumeProducing()  # type: ignore[attr-defined]
        elif not self.streaming:
            self.producer.resumeProducing()  # type: ignore[attr-defined]


@implementer(ITransport, IConsumer, IPushProducer)
class ChannelClientTransport(SocketOptions):
    """
    The transport of a client protocol connected through a channel.

    It is one logical connection: writes are buffered while no host is
    reachable, sent when a link comes up, and sent again to the next host if
    the old one dies before acknowledging them.  Each C{write} arrives at the
    host's protocol as one C{dataReceived} call.

    @ivar state: C{"connecting"} (no link to a host now; writes are
        buffered), C{"connected"} or C{"closed"}.
    @ivar disconnecting: whether L{loseConnection} (or L{abortConnection})
        was called, or the connection ended.
    @ivar pending: the messages no host has acknowledged yet.
    @ivar reconnection: how the host is found, and found again.
    @ivar readingPaused: whether the application paused reading the host's
        messages (L{pauseProducing}); a silent host is not judged frozen
        meanwhile.
    @ivar unknownHost: the host's address while no host is known (its
        name and path only): what L{getPeer} says then, and each link's
        until its host is known.

    Like Twisted's own stream transports it also has C{connected} and
    C{disconnected} (of the logical connection, not of the link beneath),
    C{getHandle()} (the current link's socket), L{logPrefix},
    L{IPushProducer} (the messages from the host) and L{IConsumer} (streaming and pull
    producers), and takes C{setTcpNoDelay} and C{setTcpKeepAlive} as
    harmless calls.

    What the protocol says is in L{session} (a L{ClientSession}: the
    pending messages, the eager-hello policy, the resume arithmetic) and in
    each link's L{LinkSession}; L{state} changes only as the table
    L{twisted_channel._states.CONNECTION} allows.  Finding the host and
    finding it again (the strategy, the connector, the watch, leaving a
    dead host early, and the timer of the give-up and stall deadlines) is
    its L{reconnection}, a L{Reconnection}, told when a link comes up or
    is lost; reads and writes record the host's news and the messages
    waiting for it in the reconnection's L{ClientDeadlines}
    (C{_deadlines}).  The Deferreds of L{whenConnected} and the
    protocol's L{IChannelLinkObserver} calls are a L{LinkWaiters}
    (C{_linkWaiters}).  Beside them this class keeps more than a handful of
    private attributes, in groups that do not interact: the batch being
    written (C{_outgoing}, C{_outgoingLarge}, C{_flushCall}, C{_inRead}),
    kept here because C{write} is the hottest path there is and must not
    call into another object; whether the host acknowledged anything on
    the current link (C{_ackedOnLink}, set where acknowledgements are read
    and handed to the reconnection when the link is lost); and the
    producers either way (C{_producer}, a L{_RegisteredProducer}, and
    L{readingPaused}).
    """

    disconnecting = False

    def __init__(
        self,
        reactor: Any,
        address: ChannelAddress,
        protocol: IProtocol,
        factory: IProtocolFactory,
        timeout: float,
        maxMessageSize: int,
        maxBufferSize: int,
        candidate: ChannelPort | None = None,
        transport: str = "unix",
        lockPath: str | None = None,
        failover: str = RESEND,
        acrossMachines: bool = False,
        reconnection: Callable[..., Reconnection] = Reconnection,
        linkType: Callable[..., _ClientLink] | None = None,
    ) -> None:
        """
        @param address: the channel's name and socket (or port file) path,
            as the host's address: role C{"host"}, nothing else known (what
            L{getPeer} says until a host is linked).
        @param failover: C{"resend"} (a host's loss moves the connection to
            the next host) or C{"close"} (it ends the connection with
            L{ChannelHostLostError}).
        @param acrossMachines: whether hosts are across machines: they must
            then name themselves and their term, never lower than one seen
            (see L{ClientSession}).
        @param reconnection: what finds the host and finds it again, called
            as L{Reconnection} is (across machines, a
            L{twisted_channel._machinelink.MachineReconnection}).
        @param linkType: what builds each link (default L{_ClientLink}).
        @param lockPath: the channel's lock file, whose record tells a
            linked client that its host died before the kernel closes the
            link (see L{Reconnection.hostAppeared}); without it, the close
            is awaited.
        """
        self.reactor = reactor
        self.address = address
        self.protocol = protocol
        self.factory = factory
        self.timeout = timeout
        self.maxMessageSize = maxMessageSize
        self.maxBufferSize = maxBufferSize
        self.candidate = candidate
        self.transportKind = transport
        self.failover = failover
        # Whether a link's read is being handled now (it flushes at its end).
        self._inRead = False
        self.session = ClientSession(
            _process.newClientId(), _process.pid, maxMessageSize, acrossMachines
        )
        self.clientId = self.session.clientId
        self.pending = self.session.pending
        self.state = CONNECTING
        self.link: _ClientLink | None = None
        self.reconnection = reconnection(
            self,
            _ClientLink if linkType is None else linkType,
            lockPath,
            ClientDeadlines(
                timeout,
                max(timeout, LINK_HANDSHAKE_TIMEOUT) if timeout > 0 else 10.0,
            ),
        )
        # The reconnection's deadlines, which reads and writes tell of the
        # host's news and of messages waiting for it.
        self._deadlines = self.reconnection.deadlines
        # Made when first needed (see _linkWaiters): not on the way to the
        # first message.
        self._waiters: LinkWaiters | None = None
        # Made once: it stands for every link until its host is known.
        # The endpoint's address is that already.
        self.unknownHost = (
            address
            if address.role == HOST and address.pid is None
            else ChannelAddress(address.name, address.path, HOST)
        )
        self._hostAddress = self.unknownHost
        # Whether the host acknowledged anything on the current link: the
        # link was healthy (see Reconnection.linkLost).
        self._ackedOnLink = False
        # The largest message a write may take now: ours, or the host's if
        # smaller while a link is up.
        self._writeLimit = maxMessageSize
        # While a link is up: the frames written this reactor turn, not yet
        # handed to its transport.
        self._outgoing: list[bytes] | None = None
        self._outgoingLarge = False
        # The header of the last message written, and its size.
        self._headerSize = -1
        self._header = b""
        self._flushCall: IDelayedCall | None = None
        self._callLater = reactor.callLater
        # Where a write holds its message until acknowledged.
        self._keep = self.pending.messages.append
        self.readingPaused = False
        # Whether the host's messages are dropped: reading was paused when
        # loseConnection was called, or the connection was aborted.
        self._readingAbandoned = False
        # The call that ends the connection at the next reactor turn.
        self._finishing: IDelayedCall | None = None
        # The call that tells the application of a lost link, and why, once
        # the next attempt is under way.
        self._linkLostNews: tuple[IDelayedCall, Failure] | None = None
        self._producer: _RegisteredProducer | None = None
        # The footprint at which a write pauses the registered producer
        # (its high-water mark), or, without one, a footprint never reached.
        self._pauseAt = _NEVER
        # The reasons hosts gave for refusing links since the last welcome:
        # a refusal repeated at each retry is one warning, not one a retry.
        self._refusals: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"<ChannelClientTransport {self.address.name!r} {self.state}, "
            f"{len(self.pending)} unacknowledged>"
        )

    @property
    def _linkWaiters(self) -> LinkWaiters:
        """
        The parties waiting for a link, made when first needed: a
        L{whenConnected}, the first link up or lost, or the end.
        """
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = LinkWaiters(self.address.name, self.protocol)
        return waiters

    @property
    def closed(self) -> bool:
        """
        Whether the logical connection has ended.
        """
        return self.state == CLOSED

    @property
    def writtenThrough(self) -> int:
        """
        The sequence number of the last message written: messages are
        numbered from 1, in the order of their C{write}, for the whole
        logical connection.  With L{acknowledgedThrough}, it tells whether
        a host took a given message (see L{twisted_channel.amp.ChannelAMP}).
        """
        return self.pending.nextSequence - 1

    @property
    def acknowledgedThrough(self) -> int:
        """
        The sequence number of the last message a host acknowledged (its
        protocol's C{dataReceived} returned for it, and for every one
        before it); 0 before any.
        """
        return self.pending.firstSequence - 1

    @property
    def connected(self) -> bool:
        """
        Whether the logical connection is open, as a TCP transport's
        C{connected} is until C{connectionLost}: true also while no host is
        reachable (writes are buffered then); L{state} tells links apart.
        """
        return self.state != CLOSED

    @property
    def disconnected(self) -> bool:
        """
        Whether the logical connection has ended (C{connectionLost} was
        called or is being called).
        """
        return self.state == CLOSED

    def getHandle(self) -> object:
        """
        The socket of the link to the current host, or C{None} while there
        is none.  It changes at each failover, and writing to it directly
        would break the channel's framing: use it to read socket options.
        """
        link = self.link
        if link is None or link.transport is None:
            return None
        return link.transport.getHandle()  # type: ignore[attr-defined]

    def startConnecting(self) -> None:
        """
        Start looking for the host.  Called once, by the endpoint.
        """
        self.reconnection.start(self.reactor.seconds())

    # ITransport

    def write(self, data: bytes) -> None:
        """
        Send C{data} as one message.  It is delivered even if no host is
        reachable now, once one is.

        @raise ValueError: if it is larger than the message size limit.
        @raise TypeError: if it is not L{bytes}.
        @raise ChannelClosedError: after L{loseConnection} or once closed.
        """
        if type(data) is not bytes:
            if isinstance(data, (bytearray, memoryview)):
                data = bytes(data)
            else:
                raise TypeError(f"data must be bytes, not {type(data).__name__}")
        size = len(data)
        pending = self.pending
        footprint = pending.footprint + size + _OVERHEAD
        # One comparison in the common case; the slow path says which limit.
        if (
            size > self._writeLimit
            or self.disconnecting
            or footprint > self.maxBufferSize
        ):
            self._refuseWrite(size)
        # PendingWrites.append, inlined (its deque's append, bound once):
        # this is the hottest line there is.
        self._keep(data)
        pending.footprint = footprint
        outgoing = self._outgoing
        if outgoing is not None:
            if not outgoing:
                # The first message of a batch: the batch goes to the
                # transport in one call, at the end of this reactor turn (or
                # of the read being handled).
                if not self._inRead:
                    self._flushCall = self._callLater(0, self.flush)
                if not self._deadlines.watching:
                    self._watchStall()
            # Header and payload apart: the batch is joined once at its
            # flush (or sent unjoined), so joining each message to its
            # header first would copy it twice.  Messages of one size
            # follow each other (a stream of records, a bulk transfer):
            # the last size's header is kept, not packed again.
            if size != self._headerSize:
                self._headerSize = size
                self._header = _HEADER.pack(size + 1, _DATA)
            outgoing.append(self._header)
            outgoing.append(data)
            if size >= _UNJOINED_FROM:
                self._outgoingLarge = True
        if footprint >= self._pauseAt:
            self._producer.pause()  # type: ignore[union-attr]

    def linkDataReceived(self, link: _ClientLink, data: bytes | memoryview) -> None:
        """
        Called by a link with the bytes it read: deliver the host's
        messages, act on its other frames as the link's session interprets
        them, then send what the application wrote in answer.
        """
        session = link.session
        try:
            frames = session.receive(data)
        except _wire.ProtocolError as e:
            link.dropBroken(str(e))
            return
        # An acknowledgement that ends the read after other frames (a
        # reply's: the host sends it after the replies of its batch) is
        # acted on once the answers to those frames are sent: it only lets
        # this client forget what it holds, which no answer waits for.
        lateAck: bytes | None = None
        if len(frames) > 1 and frames[-1][0] == _ACK and session.state == _OPEN:
            lateAck = frames.pop()[1]
        # What the application writes meanwhile is flushed at the end of the
        # read, so its writes need not schedule a flush of their own.
        self._inRead = True
        try:
            # One method, not two: this is the hottest path of a reply.
            protocol = _DISCARD if self._readingAbandoned else self.protocol
            for kind, body in frames:
                if kind == _DATA and session.state == _OPEN:
                    try:
                        protocol.dataReceived(body)
                    except Exception:
                        failure = Failure()
                        _log.failure(
                            "channel {channel}: the application's dataReceived "
                            "raised; closing the connection",
                            failure,
                            channel=self.address.name,
                        )
                        self._finish(failure)
                        return
                    if self.state == CLOSED:
                        return
                    continue
                try:
                    event = session.control(kind, body)
                except _wire.ProtocolError as e:
                    link.dropBroken(str(e))
                    return
                if event is ACKNOWLEDGED:
                    self._acknowledged()
                elif event is None:
                    pass
                elif isinstance(event, Send):
                    link.send(event.chunks)
                elif isinstance(event, Welcomed):
                    link.welcomed(event.welcome)
                    if not self.linkUp(link, event.welcome):
                        return
                elif isinstance(event, HostRefused):
                    self._hostRefused(link, event.reason)
                    link.abort()
                    return
                else:
                    assert event is GOODBYE
                    self.closedByHost()
                    return
                if self.state == CLOSED:
                    return
            # What the application wrote in answer leaves now, with what
            # the transport holds, in one send.
            outgoing = self._outgoing
            if (
                outgoing
                and self.link is link
                and self._flushCall is None
                and not self._outgoingLarge
            ):
                # flush(), inlined for its common case.
                self._outgoing = []
                sendAtEndOfRead(link.transport, b"".join(outgoing))
            else:
                if self.link is link:
                    self.flush()
                pushToKernel(link.transport)
            if lateAck is not None:
                try:
                    session.control(_ACK, lateAck)
                except _wire.ProtocolError as e:
                    link.dropBroken(str(e))
                    return
                self._acknowledged()
        finally:
            # Whatever the host sends shows that it is not frozen (set once
            # the answers are sent: nothing before looks at it).
            self._deadlines.lastProgress = self.reactor.seconds()
            self._inRead = False
            # Unless it stopped early, the read flushed what the
            # application wrote; else that leaves at the end of this
            # reactor turn, as any write does.
            if self._outgoing and self._flushCall is None:
                self._flushCall = self._callLater(0, self.flush)

    def _acknowledged(self) -> None:
        """
        The linked host acknowledged messages (its session forgot them): a
        producer held back by them may go on, and a connection closing
        once all are acknowledged ends.
        """
        self._ackedOnLink = True
        if self._producer is not None:
            self._producerMayGoOn()
        if self.disconnecting and not self.pending:
            self._finish(Failure(error.ConnectionDone()))

    def flush(self) -> None:
        """
        Hand the messages written since the last flush to the link's
        transport, in one call.  Done by itself at the end of the reactor
        turn in which they were written, or sooner at the end of handling a
        read.
        """
        call, self._flushCall = self._flushCall, None
        if call is not None and call.active():
            call.cancel()
        outgoing = self._outgoing
        if not outgoing:
            return
        self._outgoing = []
        link = self.link
        assert link is not None and link.transport is not None
        if self._outgoingLarge:
            # Large payloads go as they are, headers beside them, never
            # joined into frames.
            self._outgoingLarge = False
            sendSequenceNow(link.transport, outgoing)
        else:
            sendNow(link.transport, b"".join(outgoing))

    def _dropOutgoing(self) -> None:
        """
        The link is gone: what was not flushed is still pending, and is sent
        again on the next link.
        """
        call, self._flushCall = self._flushCall, None
        if call is not None and call.active():
            call.cancel()
        self._outgoing = None
        self._outgoingLarge = False

    def _refuseWrite(self, size: int) -> None:
        """
        Raise the error that says why a write of C{size} bytes is refused.
        """
        if size > self.maxMessageSize:
            raise ValueError(
                f"message of {size} bytes is over the limit of "
                f"{self.maxMessageSize} bytes (maxMessageSize)"
            )
        if size > self._writeLimit:
            raise ValueError(
                f"message of {size} bytes is over the limit of "
                f"{self._writeLimit} bytes of the host of channel "
                f"{self.address.name!r}"
            )
        if self.disconnecting:
            raise ChannelClosedError(
                f"channel {self.address.name!r} connection is "
                f"{'closed' if self.state == CLOSED else 'closing'}"
            )
        raise ChannelBufferFullError(
            f"channel {self.address.name!r} already holds "
            f"{len(self.pending)} unacknowledged messages taking "
            f"{self.pending.footprint} bytes; another {size} would pass "
            f"maxBufferSize={self.maxBufferSize} "
            "(register a producer to be paused before this happens)"
        )

    def writeSequence(self, data: Any) -> None:
        """
        Send the concatenation of C{data} as one message.
        """
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        Close the connection once every message written so far is
        acknowledged by a host (or, if none is reachable for C{timeout}
        seconds, give up and report how many were not).
        """
        if self.disconnecting or self.state == CLOSED:
            return
        self.disconnecting = True
        if not self.pending:
            self._finishSoon(Failure(error.ConnectionDone()))
            return
        if self.readingPaused:
            # The acknowledgements must be read.  As a TCP transport stops
            # reading at loseConnection, the host's messages are no longer
            # delivered (an HTTP client pauses its transport, then closes).
            self._readingAbandoned = True
            self.resumeProducing()
        # Else the last acknowledgement finishes it.  A host that makes
        # progress, however slowly, is waited for; one that stops
        # acknowledging loses its link after stallTimeout, and then the
        # usual timeout applies.

    def abortConnection(self) -> None:
        """
        Close the connection now, dropping unacknowledged messages.
        """
        if self.state == CLOSED or self._finishing is not None:
            return
        self.disconnecting = True
        self._readingAbandoned = True
        undelivered = len(self.pending)
        self._finishSoon(
            Failure(
                error.ConnectionAborted(
                    f"aborted with {undelivered} message(s) not acknowledged"
                )
            )
        )

    def _finishSoon(self, reason: Failure) -> None:
        """
        End the connection at the next reactor turn, not within the call
        that asked for it: Twisted's transports never call C{connectionLost}
        from inside C{loseConnection} or C{abortConnection}, and protocols
        count on it (an HTTP client's pool changes its state after
        C{loseConnection} returns, and would wait for ever).
        """
        if self._finishing is None:
            self._finishing = self.reactor.callLater(0, self._finish, reason)

    def logPrefix(self) -> str:
        """
        What Twisted's log calls this connection (C{log.callWithLogger}
        and Twisted's protocols ask a transport for it): the protocol's
        class name and C{"client"}, as C{tcp.Client}'s says.
        """
        return f"{self.protocol.__class__.__name__},client"

    def getPeer(self) -> ChannelAddress:
        """
        The current host's address (with its pid once a link is up; across
        machines, also its machine's C{identity}, its advertised C{host}
        and C{port}, and its C{term}, as its welcome said them).
        """
        return self._hostAddress

    def getHost(self) -> ChannelAddress:
        """
        This client's end.  Its C{host} and C{port} are C{"localhost"} and
        C{0} (or, over TCP, the loopback address), for protocols that
        format them.
        """
        return streamAddress(
            ChannelAddress(
                self.address.name,
                self.address.path,
                CLIENT,
                _process.pid,
                os.getuid(),
                LOOPBACK if self.transportKind == "tcp" else None,
            )
        )

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Register a producer of messages: a streaming one
        (L{IPushProducer}) is paused while the unacknowledged messages take
        more than half of C{maxBufferSize} and resumed under a quarter; a
        pull one is asked for more at once and at each acknowledgement.  On
        a closed connection it is stopped at once, as by a TCP transport.

        @raise RuntimeError: if a producer is registered already.
        """
        if self._producer is not None:
            raise RuntimeError(
                f"cannot register producer {producer!r}: "
                f"{self._producer.producer!r} is already registered"
            )
        if self.state == CLOSED:
            producer.stopProducing()
            return
        registered = self._producer = _RegisteredProducer(producer, streaming)
        self._pauseAt = self.highWater
        if self.pending.footprint >= self.highWater:
            registered.pause()
        elif not streaming:
            producer.resumeProducing()  # type: ignore[attr-defined]

    def unregisterProducer(self) -> None:
        self._producer = None
        self._pauseAt = _NEVER

    @property
    def highWater(self) -> int:
        """
        Buffered bytes above which a registered producer is paused.
        """
        return self.maxBufferSize // 2

    @property
    def lowWater(self) -> int:
        """
        Buffered bytes under which a paused producer is resumed.
        """
        return self.maxBufferSize // 4

    def _producerMayGoOn(self) -> None:
        """
        Acknowledged messages were forgotten: resume a paused producer under
        the low-water mark, and ask a pull producer for more.
        """
        producer = self._producer
        if producer is not None:
            producer.mayGoOn(self.pending.footprint, self.lowWater)

    # IPushProducer: the messages from the host, for an application that
    # wants to stop reading for a while.

    def pauseProducing(self) -> None:
        """
        Stop reading from the host until L{resumeProducing}; this holds for
        links made after a failover too.  After L{loseConnection} it does
        nothing: the acknowledgements that end the connection must be read.
        """
        if self._readingAbandoned:
            return
        self.readingPaused = True
        link = self.link
        if link is not None and link.transport is not None:
            link.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        """
        Read from the host again.
        """
        self.readingPaused = False
        self._deadlines.lastProgress = self.reactor.seconds()
        link = self.link
        if link is not None and link.transport is not None:
            link.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        """
        As for any Twisted transport: close the connection.
        """
        self.loseConnection()

    # State

    def whenConnected(self) -> Deferred[ChannelAddress]:
        """
        A Deferred that fires with the host's address when a link is up: at
        once if one is now.  It fails if the connection closes first.
        """
        if self.state == CONNECTED:
            return succeed(self._hostAddress)
        if self.state == CLOSED:
            return fail(ChannelClosedError(f"channel {self.address.name!r} is closed"))
        return self._linkWaiters.whenConnected()

    @property
    def stallTimeout(self) -> float:
        """
        Seconds a host may leave written messages unacknowledged before the
        link to it is dropped and another tried: a host frozen with SIGSTOP
        keeps its link open but never answers.
        """
        return self._deadlines.stallTimeout

    def _watchStall(self) -> None:
        """
        Messages now wait for the linked host: judge it if it stays silent.
        """
        self._deadlines.watch(self.reactor.seconds())
        self.reconnection.armDeadline()

    # Called by the reconnection

    def hostUnreachable(self) -> None:
        """
        No host was found within C{timeout} seconds: end the connection
        with L{ChannelUnreachableError}.
        """
        reason = ChannelUnreachableError(
            self.address.name, self.timeout, len(self.pending)
        )
        _log.warn(
            "channel {channel}: {reason}",
            channel=self.address.name,
            reason=str(reason),
            undelivered=len(self.pending),
        )
        self._finish(Failure(reason))

    # Called by links

    def _hostRefused(self, link: _ClientLink, reason: str) -> None:
        """
        The host refused C{link} for C{reason}: a warning the first time
        since a link was last welcomed, then debug lines.
        """
        log = _log.debug if reason in self._refusals else _log.warn
        self._refusals.add(reason)
        log(
            "channel {channel}: {host} closed the link: {reason}",
            channel=self.address.name,
            host=link.describeHost(),
            hostPid=link.hostPid,
            reason=reason,
        )

    def linkUp(self, link: _ClientLink, welcome: _wire.Welcome) -> bool:
        """
        A host welcomed C{link}: resend what it lacks, and go on there.

        @return: whether the link was kept.
        """
        self.reconnection.connector.settled(link)
        if self.state != CONNECTING:
            # Closed, or another link was welcomed first (a host appeared
            # while this one's handshake was under way): one logical
            # connection has one link.
            link.abort()
            return False
        try:
            resend = self.session.resume(link.session, welcome)
        except HostBrokeProtocolError as e:
            link.dropBroken(str(e))
            return False
        except MessagesTooLargeError as e:
            link.abort()
            self._finish(
                Failure(ValueError(f"the host of channel {self.address.name!r} {e}"))
            )
            return False
        now = self.reactor.seconds()
        reconnection = self.reconnection
        self.link = link
        self.state = CONNECTION[self.state, WELCOMED]
        self._hostAddress = link.hostAddress
        self._refusals.clear()
        hostsSeen = reconnection.linkUp(now)
        self._ackedOnLink = False
        self._writeLimit = min(self.maxMessageSize, welcome.maxMessageSize)
        self._outgoing = []
        if self.readingPaused and link.transport is not None:
            link.transport.pauseProducing()  # type: ignore[attr-defined]
        link.send(resend)
        if self.pending:
            self._deadlines.watch(now)
        reconnection.armDeadline()
        # The host may already have had much of what was buffered.
        self._producerMayGoOn()
        log = _log.info if hostsSeen > 1 else _log.debug
        log(
            "channel {channel}: link up to host pid {hostPid}; resent {resent} "
            "message(s)",
            channel=self.address.name,
            hostPid=link.hostAddress.pid,
            resent=link.session.resent,
            role=CLIENT,
        )
        self._tellLinkLost()
        self._linkWaiters.linkEstablished(self._hostAddress)
        if self.disconnecting and not self.pending:
            self._finish(Failure(error.ConnectionDone()))
        return self.state != CLOSED

    def closedByHost(self) -> None:
        """
        Called by the link: the host's application ended this connection.
        """
        undelivered = len(self.pending)
        if undelivered:
            reason: Exception = error.ConnectionLost(
                f"the host closed the connection with {undelivered} message(s) "
                "not acknowledged"
            )
        else:
            reason = error.ConnectionDone("the host closed the connection")
        self._finish(Failure(reason))

    def linkLost(self, link: _ClientLink, reason: Failure) -> None:
        """
        Called by a link when it closes: find the host again.
        """
        if self.state == CLOSED:
            return
        reconnection = self.reconnection
        connector = reconnection.connector
        connector.settled(link)
        if link is not self.link:
            # A link that never got a welcome: the host died or refused it
            # (then try again), or another was welcomed first (then nothing
            # is to be done: a retry would dial a second link to the host).
            if self.link is None:
                reconnection.attemptFailed(reason)
            return
        self.link = None
        if self.failover == CLOSE:
            # The conversation cannot move to another host half-way.
            self._finish(
                Failure(
                    ChannelHostLostError(
                        self.address.name, link.hostAddress.pid, len(self.pending)
                    )
                )
            )
            return
        self.state = CONNECTION[self.state, LINK_LOST]
        self._dropOutgoing()
        self._writeLimit = self.maxMessageSize
        self._hostAddress = self.unknownHost
        _log.info(
            "channel {channel}: link to host pid {hostPid} lost ({reason}); "
            "{pending} message(s) await a host",
            channel=self.address.name,
            hostPid=link.hostAddress.pid,
            reason=reason.getErrorMessage(),
            pending=len(self.pending),
            role=CLIENT,
        )
        if self._finishing is None:
            reconnection.linkLost(reason, self._ackedOnLink, self.reactor.seconds())
        # The application hears of it at the next reactor turn, after
        # Twisted has made the attempt just begun (it connects at that turn
        # too): its observer (a log line, a write to a pipe that wakes
        # another process) would otherwise come between the lost link and
        # the hello to the next host.  Before any read, so before the next
        # link's linkEstablished; and before connectionLost (see _finish).
        if self._linkWaiters.observed:
            self._linkLostNews = (
                self.reactor.callLater(0, self._tellLinkLost),
                reason,
            )

    def _tellLinkLost(self) -> None:
        """
        Tell the application's observer of the lost link, if it has not
        been told yet.
        """
        news, self._linkLostNews = self._linkLostNews, None
        if news is None:
            return
        call, reason = news
        if call.active():
            call.cancel()
        self._linkWaiters.linkLost(reason)

    def _finish(self, reason: Failure) -> None:
        finishing, self._finishing = self._finishing, None
        if finishing is not None and finishing.active():
            finishing.cancel()
        if self.state == CLOSED:
            return
        self.state = CONNECTION[self.state, FINISHED]
        self.disconnecting = True
        self.reconnection.stop()
        self._dropOutgoing()
        link, self.link = self.link, None
        if link is not None and link.transport is not None:
            link.transport.loseConnection()
        self._tellLinkLost()
        self._linkWaiters.closed(reason)
        registered, self._producer = self._producer, None
        self._pauseAt = _NEVER
        if registered is not None:
            registered.producer.stopProducing()
        candidate, self.candidate = self.candidate, None
        if candidate is not None:
            candidate.stopListening()
        try:
            self.protocol.connectionLost(reason)
        finally:
            self.factory.doStop()
