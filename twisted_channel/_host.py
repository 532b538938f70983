"""
The listening side of a channel: a candidate that hosts or stands by.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import error
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IListeningPort,
    ILoggingContext,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import _process, _wire
from ._address import HOST, STANDBY, ChannelAddress
from ._auth import LOOPBACK, removePortFile
from ._authexchange import FailureLimit
from ._budget import BudgetedProducer, HostBudget
from ._candidacy import ElectionRetry, ShutdownHandover
from ._collection import collectBeforeWaiting
from ._credentials import peerCredentials
from ._directory import (
    ChannelPaths,
    prepareDirectory,
)
from ._election import HostElection
from ._hostsession import (
    END_GOODBYE_ABORT,
    NO_END,
    Authenticated,
    DeliveryRecords,
    HostSession,
    Refused,
    StatusQueried,
)
from ._interfaces import ChannelBufferFullError
from ._publishing import (
    HostSocketPort,
    Publication,
    PublishedPort,
    PublishedSocket,
    StandbyPort,
    StandbySocket,
)
from ._roles import RoleWaiters
from ._sockets import (
    bufferedBytes,
    pushToKernel,
    readDirectly,
    reserveReadBuffer,
    sendAtEndOfRead,
    sendNow,
    sendSequenceNow,
    twistedEdge,
    unreadBytes,
)
from ._states import ELECTED, PORT, START_FAILED, STARTED, STOPPED, WITHDRAWN
from ._surface import SocketOptions, streamAddress

_log = Logger()

_HEADER = _wire.HEADER
_DATA = _wire.DATA

#: Seconds a new link may take to send its hello before it is dropped, so
#: that a peer that connects and says nothing cannot hold a slot for ever.
HANDSHAKE_TIMEOUT = 10.0

#: Failed TCP authentications within AUTH_FAILURE_WINDOW seconds after which
#: new links are refused until the window has passed.
AUTH_FAILURE_LIMIT = 20
AUTH_FAILURE_WINDOW = 10.0

#: Seconds between the pings a host sends to a client it stopped reading.
KEEPALIVE_INTERVAL = 1.0


class _HostingTerm(DeliveryRecords):
    """
    What a host knows during one uninterrupted period of hosting: its
    delivery records (L{DeliveryRecords}), and its links.

    @ivar links: the links whose handshake is complete, by client id.
    @ivar allLinks: every link open now, handshake done or not.
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self.links: dict[bytes, _HostLink] = {}
        self.allLinks: set[_HostLink] = set()
        super().__init__(self.links)


@implementer(ITransport, IConsumer, IPushProducer)
class _LinkTransport(SocketOptions):
    """
    The transport a host's application protocol writes to: one client's
    link, one frame per write.

    Like Twisted's own stream transports it has C{disconnecting},
    C{connected}, C{disconnected}, C{getHandle()} (the link's socket),
    L{logPrefix},
    L{IPushProducer} (the client's messages) and L{IConsumer} (streaming and
    pull producers, driven by the link's socket and held back by the host's
    budget), and takes
    C{setTcpNoDelay} and C{setTcpKeepAlive} as harmless calls.
    """

    def __init__(self, link: _HostLink) -> None:
        self._link = link

    @property
    def disconnecting(self) -> bool:
        """
        Whether this connection is closing or closed: the application or
        the host closed it, or the link is gone.
        """
        link = self._link
        return link.session.closing or link._lost

    @property
    def connected(self) -> bool:
        """
        Whether the link is up (until C{connectionLost}).
        """
        return not self._link._lost

    @property
    def disconnected(self) -> bool:
        """
        Whether the link is gone (C{connectionLost} was or is being called).
        """
        return self._link._lost

    def getHandle(self) -> object:
        """
        The link's socket.  Writing to it directly would break the
        channel's framing: use it to read socket options.
        """
        transport = self._link.transport
        return None if transport is None else transport.getHandle()  # type: ignore[attr-defined]

    def write(self, data: bytes) -> None:
        """
        Send one application message to the client (the link's work, done
        here: this is a reply's hottest path).

        @raise ValueError: if it is over the size limit of either end.
        """
        if type(data) is not bytes and not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        size = len(data)
        link = self._link
        session = link.session
        if size > session.writeLimit:
            raise ValueError(
                f"message of {size} bytes is over the limit of "
                f"{min(link.port.maxMessageSize, session.peerMaxMessageSize)} bytes"
            )
        if session.closing or link.transport is None:
            return
        if (
            bufferedBytes(link.transport) + session.outboxBytes + size
            > link.port.maxBufferSize
        ):
            raise ChannelBufferFullError(
                f"channel {link.port.name!r}: the link to pid "
                f"{link.peerAddress.pid} already holds "
                f"{bufferedBytes(link.transport)} unsent bytes; another {size} "
                f"would pass maxBufferSize={link.port.maxBufferSize} (the client "
                "is not reading: register a producer to be paused first)"
            )
        budget = link.port.budget
        if budget.holding or size > budget.limit:
            # Else it fits: HostBudget.admit's own first test.
            budget.admit(size)
        link.term.bytes += size
        if size < 4096:
            outbox = session.outbox
            if outbox is not None:
                # During a batch: it leaves with the acknowledgement, and
                # the socket holds nothing of it yet.  Header and payload
                # apart: the batch's end joins them once.
                outbox.append(_HEADER.pack(size + 1, _DATA))
                outbox.append(data)
                session.outboxBytes += size + 5
                return
            else:
                # One small copy is cheaper than handing the transport two
                # pieces.
                link.transport.write(_HEADER.pack(size + 1, _DATA) + data)
        else:
            # What was written before it goes first.
            before = session.takeOutbox()
            header = _wire.frameHeader(_DATA, size)
            sendSequenceNow(
                link.transport, [before, header, data] if before else [header, data]
            )
        budget.wrote(link.transport, link.producer)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self._link.closeByApplication(abort=False)

    def abortConnection(self) -> None:
        self._link.closeByApplication(abort=True)

    def logPrefix(self) -> str:
        """
        What Twisted's log calls this connection (C{log.callWithLogger}
        and Twisted's protocols ask a transport for it): the application
        protocol's class name and the client's pid, as C{tcp.Server}'s
        says its class name, session number and peer.
        """
        link = self._link
        return f"{link.application.__class__.__name__},{link.peerAddress.pid}"

    def getPeer(self) -> IAddress:
        return self._link.peerAddress

    def getHost(self) -> IAddress:
        """
        The host's address; over a Unix socket its C{host} and C{port} are
        C{"localhost"} and C{0}, for protocols that format them (twisted.web
        does, for a request without a C{Host} header).
        """
        return streamAddress(self._link.port.getHost())

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Register a producer of this link's outgoing messages: the link's
        socket pauses a streaming one while its send buffer is full and
        asks a pull one for more each time it drains, as Twisted's do; the
        host's budget (C{maxHostBufferSize}) pauses it too while the host's
        links hold more than half of it and this one holds unsent bytes.

        @raise RuntimeError: if a producer is registered already.
        """
        link = self._link
        transport = link.transport
        assert transport is not None
        budgeted = BudgetedProducer(producer, streaming, transport, link.port.budget)
        IConsumer(transport).registerProducer(budgeted, streaming)
        if not link._lost:
            link.producer = budgeted

    def unregisterProducer(self) -> None:
        link = self._link
        producer, link.producer = link.producer, None
        if producer is not None:
            link.port.budget.forget(producer)
        transport = link.transport
        if transport is not None:
            IConsumer(transport).unregisterProducer()

    # IPushProducer: the client's messages, for an application that wants
    # to stop reading for a while.

    def pauseProducing(self) -> None:
        """
        Stop reading this client's messages (they wait in the client, which
        is told the host is alive) until L{resumeProducing}.
        """
        self._link.pauseReading()

    def resumeProducing(self) -> None:
        """
        Read this client's messages again.
        """
        self._link.resumeReading()

    def stopProducing(self) -> None:
        """
        As for any Twisted transport: close the connection.
        """
        self.loseConnection()


class _HostLink(Protocol):
    """
    The host's end of one link, as a Twisted protocol: it checks the peer's
    credentials, reads, hands the bytes to its L{HostSession} (the
    handshake, resends, acknowledgements, the order of the last frames),
    calls the application with the messages the session returns, and
    writes what the session says to send.  It owns what needs the reactor:
    the handshake deadline, the keepalive pings while the application does
    not read, and the per-link cap on unsent bytes.

    @ivar session: the link's protocol state.
    @ivar peerAddress: the client's address: its pid and uid as the kernel
        reports them over a Unix socket (else the pid its hello says, and
        across machines its machine's identity).  Set as the link is
        connected, before anything reads it.
    """

    peerAddress: ChannelAddress
    application: IProtocol | None = None
    #: The application's producer registered on this link, as the link's
    #: socket sees it.
    producer: BudgetedProducer | None = None
    #: Whether the handshake ended (the link opened, or was refused): its
    #: deadline is then off.
    _handshakeOver = False

    def __init__(self, port: ChannelPort, term: _HostingTerm) -> None:
        self.port = port
        self.term = term
        self.session = HostSession(term, port.maxMessageSize, port.secret)
        #: Whether the application aborted the connection.
        self._aborted = False
        self._deadline: IDelayedCall | None = None
        self._deadlineRechecked = False
        self._closedWaiters: list[Deferred[None]] = []
        self._lost = False
        self._keepAlive: LoopingCall | None = None

    @property
    def clientId(self) -> bytes | None:
        """
        The client's id, once it said hello.
        """
        return self.session.clientId

    def whenClosed(self) -> Deferred[None]:
        """
        A Deferred that fires when this link has closed.
        """
        waiter: Deferred[None] = Deferred()
        if self._lost:
            waiter.callback(None)
        else:
            self._closedWaiters.append(waiter)
        return waiter

    def connectionMade(self) -> None:
        assert self.transport is not None
        direct = readDirectly(self.transport, self.dataReceived, self.session.decoder)
        self.term.allLinks.add(self)
        port = self.port
        if port.secret is not None:
            # Loopback TCP: any user can connect, so the peer must first
            # prove it knows the secret.
            self.peerAddress = ChannelAddress(port.name, port.paths.port, None)
            if not port.acceptingLinks():
                self.session.closeQuietly()
                self.transport.abortConnection()  # type: ignore[attr-defined]
                return
            self.transport.write(self.session.greeting())
            self._startDeadline()
            return
        peerPid, peerUid = peerCredentials(
            self.transport.getHandle()  # type: ignore[attr-defined]
        )
        self.peerAddress = ChannelAddress(
            port.name, port.paths.socket, None, peerPid, peerUid
        )
        if peerUid is not None and peerUid != os.getuid():
            self.refuse(
                f"peer runs as uid {peerUid}, not as this channel's uid {os.getuid()}"
            )
            return
        if direct:
            self._readHelloNow()
        if not (self._handshakeOver or self._lost):
            # Armed only now: a hello read at once and answered (or refused)
            # needs no deadline armed and cancelled on the way to the first
            # message.
            self._startDeadline()

    def _readHelloNow(self) -> None:
        """
        A client sends its hello (with the messages written so far) as it
        connects, so by the time the link is accepted it is usually here:
        read it now, not after another turn of the reactor (its timed calls,
        an C{epoll_wait}, the dispatch).  Nothing there costs one C{recv}
        that finds nothing.  An end of file or an error this read meets is
        met again by the reactor's next read (the socket stays readable),
        which ends the link as usual.
        """
        transport = self.transport
        assert transport is not None
        try:
            transport.doRead()  # type: ignore[attr-defined]
        except Exception:
            # Within the listening port's accept: what escapes must end this
            # link, not the port.
            _log.failure(
                "channel {channel}: reading the new link from pid {peerPid} "
                "failed; closing it",
                channel=self.port.name,
                peerPid=self.peerAddress.pid,
            )
            transport.abortConnection()  # type: ignore[attr-defined]

    def _startDeadline(self) -> None:
        self._deadline = self.port.clock.callLater(
            self.port.handshakeTimeout, self._handshakeExpired
        )

    def _stopDeadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _handshakeExpired(self) -> None:
        self._deadline = None
        if not self._deadlineRechecked and unreadBytes(self.transport):
            # What the client sent waits unread: this process was late (it
            # was suspended, or short of CPU), and the reactor runs its timed
            # calls before it reads.  Judge once that is read; a peer that
            # sends too slowly still gets no more than that one read.
            self._deadlineRechecked = True
            self._deadline = self.port.clock.callLater(0, self._handshakeExpired)
            return
        self.refuse(
            f"no hello within {self.port.handshakeTimeout:g} seconds of connecting"
        )

    def _logRefusal(self, reason: str) -> None:
        _log.warn(
            "channel {channel}: closing link from pid {peerPid} uid {peerUid}: "
            "{reason}",
            channel=self.port.name,
            peerPid=self.peerAddress.pid,
            peerUid=self.peerAddress.uid,
            reason=reason,
        )

    def refuse(self, reason: str) -> None:
        """
        Close this link because the peer broke the rules, and log why.  In
        the middle of a batch, the C{ERROR} frame goes after the
        acknowledgement of what was delivered before the fault.
        """
        if self.session.closing:
            return
        self._logRefusal(reason)
        frame = self.session.refuse(reason)
        if frame is not None:
            assert self.transport is not None
            self.transport.write(frame)
            self.transport.loseConnection()

    def dataReceived(self, data: bytes | memoryview) -> None:
        session = self.session
        if session.closing:
            return
        application = self.application
        # The message the link resumed after, when this read opened it: the
        # link's debug line is written once its first messages are
        # delivered, not before.
        openedAfter = -1
        if application is None:
            application = self._handshake(data)
            if application is None:
                return
            data = b""
            openedAfter = session.sequence
        try:
            frames = session.receive(data)
        except _wire.ProtocolError as e:
            if openedAfter >= 0:
                self._logLinkUp(openedAfter)
            self.refuse(str(e))
            if session.outbox is None:
                return
            # The batch this read's hello began (see _open): its welcome,
            # then the refusal, leave below.
            frames = []
            openedAfter = -1
        delivered = 0
        payloadBytes = 0
        try:
            for kind, body in frames:
                if session.closing:
                    # The application closed the connection: what follows
                    # is not delivered, nor acknowledged.
                    break
                if kind == _DATA:
                    delivered += 1
                    payloadBytes += len(body)
                    application.dataReceived(body)
                else:
                    refusal = session.control(kind, body)
                    if refusal is not None:
                        self.refuse(refusal)
        except Exception:
            _log.failure(
                "channel {channel}: the application's dataReceived raised; "
                "closing the link from pid {peerPid}",
                channel=self.port.name,
                peerPid=self.peerAddress.pid,
            )
            session.abandon()
            self.transport.abortConnection()  # type: ignore[union-attr]
        if openedAfter >= 0:
            self._logLinkUp(openedAfter)
        out, ending = session.endBatch(delivered, payloadBytes)
        transport = self.transport
        if transport is None:
            return
        if ending == NO_END:
            # The acknowledgement and any replies leave now, in one send.
            if out:
                sendAtEndOfRead(transport, out)
            else:
                pushToKernel(transport)
            return
        if out:
            sendNow(transport, out)
        if ending == END_GOODBYE_ABORT:
            self._endAfterGoodbye(abort=True)
        else:
            transport.loseConnection()

    def _handshake(self, data: bytes | memoryview) -> IProtocol | None:
        """
        Run the handshake as far as C{data} takes it.

        @return: the application's protocol once the link is open.
        """
        session = self.session
        transport = self.transport
        assert transport is not None
        while True:
            try:
                event = session.nextHandshakeEvent(data)
            except _wire.ProtocolError as e:
                self.refuse(str(e))
                return None
            data = b""
            if event is None:
                return None
            if isinstance(event, Authenticated):
                transport.write(event.reply)
                continue
            self._handshakeOver = True
            self._stopDeadline()
            if isinstance(event, Refused):
                if event.authentication:
                    self.port.authenticationFailed()
                self._logRefusal(event.reason)
                transport.write(event.frame)
                transport.loseConnection()
                return None
            if isinstance(event, StatusQueried):
                transport.write(
                    _wire.encodeFrame(
                        _wire.STATUS, json.dumps(self.port.status()).encode("utf-8")
                    )
                )
                transport.loseConnection()
                return None
            return self._open(event.hello)

    def _open(self, hello: _wire.Hello) -> IProtocol | None:
        """
        Take a client that said hello: build its application protocol,
        welcome it, and connect the two.
        """
        assert self.transport is not None
        acrossMachines = self.port.acrossMachines
        if hello.flags & _wire.FLAG_TERM:
            # A client across machines fences its hosts: answered only by
            # a host whose term is at least the highest it has seen.
            if acrossMachines is None:
                self.refuse("this process does not host across machines")
                return None
            if acrossMachines.term < hello.lowestTerm:
                self.refuse(
                    f"this host's term {acrossMachines.term} is lower than "
                    f"term {hello.lowestTerm}, which the client has seen"
                )
                return None
        if self.peerAddress.pid is None:
            self.peerAddress = ChannelAddress(
                self.port.name,
                self.peerAddress.path,
                None,
                hello.pid,
                None,
                identity=self.peerAddress.identity,
            )
        application = self.port.factory.buildProtocol(self.peerAddress)
        if application is None:
            self.refuse("the host's factory refused the connection")
            return None
        term = self.term
        clientId = hello.clientId
        previous = term.links.get(clientId)
        if previous is not None:
            # The client gave up on its old link (it would not say hello
            # again otherwise); one logical connection has one live link.
            previous.closeQuietly()
        term.links[clientId] = self
        # The welcome begins the batch of this read, and leaves with the
        # acknowledgement of the messages read with the hello, after they
        # are delivered, in one send (straight to the kernel: through
        # Twisted's buffer it would cost a watch for writability).
        self.session.welcomeInBatch(_process.pid, acrossMachines)
        self.application = application
        application.makeConnection(_LinkTransport(self))
        return application

    def _logLinkUp(self, resumedAfter: int) -> None:
        _log.debug(
            "channel {channel}: link up from pid {peerPid}, resuming after "
            "message {resumeAfter}",
            channel=self.port.name,
            peerPid=self.peerAddress.pid,
            resumeAfter=resumedAfter,
        )

    def pauseReading(self) -> None:
        """
        The application stops reading this client.  The client hears a ping
        every second meanwhile, so that it does not take the silence for a
        frozen host.
        """
        if self.transport is None or self._keepAlive is not None:
            return
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        self._keepAlive = LoopingCall(self._ping)
        self._keepAlive.clock = self.port.clock
        self._keepAlive.start(KEEPALIVE_INTERVAL, now=True)

    def resumeReading(self) -> None:
        """
        The application reads this client again.
        """
        keepAlive, self._keepAlive = self._keepAlive, None
        if keepAlive is None:
            return
        keepAlive.stop()
        if self.transport is not None and not self._lost:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _ping(self) -> None:
        if self.transport is not None and not self.session.closing:
            self.transport.write(_wire.encodeFrame(_wire.PING))

    def closeByApplication(self, abort: bool) -> None:
        """
        The host's application ends this client's connection: tell the
        client not to come back, then close (after the batch under way, if
        any, and its acknowledgement).
        """
        if self.transport is None:
            return
        goodbye = self.session.close(abort)
        if goodbye is None:
            return
        self.transport.write(goodbye)
        self._endAfterGoodbye(abort)

    def _endAfterGoodbye(self, abort: bool) -> None:
        """
        Close the link once its goodbye is written; an abort is told to the
        application as one.
        """
        transport = self.transport
        assert transport is not None
        if not abort:
            transport.loseConnection()
            return
        self._aborted = True
        # The client must read the goodbye, or it would take the end for a
        # lost link and come back; an abort drops what the socket holds,
        # and over TCP it resets the connection, which drops what the client
        # has not read yet.  So once the kernel has taken everything, the
        # close is a graceful one; only a client that is not reading is cut
        # off.
        pushToKernel(transport)
        if bufferedBytes(transport):
            transport.abortConnection()  # type: ignore[attr-defined]
        else:
            transport.loseConnection()

    def closeQuietly(self) -> None:
        """
        Close the link without telling the client anything: it will
        reconnect and resend what was not acknowledged.
        """
        if self.transport is not None:
            self.session.closeQuietly()
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self._lost = True
        producer, self.producer = self.producer, None
        if producer is not None:
            self.port.budget.forget(producer)
        keepAlive, self._keepAlive = self._keepAlive, None
        if keepAlive is not None:
            keepAlive.stop()
        self._stopDeadline()
        term = self.term
        term.allLinks.discard(self)
        clientId = self.session.clientId
        if clientId is not None and term.links.get(clientId) is self:
            del term.links[clientId]
            term.lastSeen(clientId)
        application, self.application = self.application, None
        if self._aborted and not reason.check(error.ConnectionAborted):
            reason = Failure(error.ConnectionAborted())
        waiters, self._closedWaiters = self._closedWaiters, []
        for waiter in waiters:
            waiter.callback(None)
        if application is not None:
            application.connectionLost(reason)


_AnyLink = TypeVar("_AnyLink", bound=_HostLink)


def _readyToHost() -> None:
    """
    Do while standing by what a process's first takeover would otherwise do
    for the first time, in the milliseconds a failover is judged by (each
    candidate's first term is a cold one): probe Twisted's edge (its first
    use would be the adoption of the published socket), allocate the
    buffer links read into, and have zope.interface compute the
    declarations of the link and its factory classes (Twisted asks whether
    they provide L{ILoggingContext}, for their log prefix, as the port
    starts and at each accept: about 60 microseconds the first time, a
    lookup after).
    """
    twistedEdge()
    reserveReadBuffer()
    ILoggingContext.implementedBy(_HostLinkFactory)
    ILoggingContext.implementedBy(_HostLink)


class _HostLinkFactory(Factory):
    def __init__(self, port: ChannelPort, term: _HostingTerm) -> None:
        self.port = port
        self.term = term
        self.noisy = False

    def buildProtocol(self, addr: IAddress | None) -> _HostLink:
        return _HostLink(self.port, self.term)


@implementer(IListeningPort)
class ChannelPort:
    """
    A process's candidacy to host a channel, returned by
    L{ChannelEndpoint.listen}.

    While L{role} is C{"host"}, this process accepts the channel's links and
    gives each one a protocol from the factory; while it is C{"standby"}, it
    waits, and takes over the instant the host goes away.

    To run something in exactly one process of the channel::

        port = await endpoint.listen(factory)
        while True:
            await port.whenHosting()
            job.start()
            await port.whenNotHosting()
            job.stop()

    @ivar name: the channel's name.
    @ivar factory: the factory that builds a protocol for each link.
    @ivar role: C{"host"}, C{"standby"} or, after L{stopListening},
        C{"stopped"}.
    @ivar transportKind: C{"unix"} or C{"tcp"}: what it listens on.

    It coordinates: the election is a L{HostElection}, publishing the
    socket and checking that it stays published is
    L{twisted_channel._publishing}, each link is a L{_HostLink} driving a
    L{HostSession}, the waiters and observers of the role are a
    L{RoleWaiters}, failed authentications a L{FailureLimit}, trying the
    election again after a failed bind an L{ElectionRetry}, withdrawing
    at the reactor's shutdown a L{ShutdownHandover}.  L{role} changes only
    as the table L{twisted_channel._states.PORT} allows.  What it keeps
    itself is what ties those together for one term: the term, the
    L{Publication} (the listening port and what checks that clients can
    still find it), and the L{StandbySocket} a standby holds ready to
    publish.
    """

    def __init__(
        self,
        reactor: Any,
        name: str,
        paths: ChannelPaths,
        factory: IProtocolFactory,
        maxMessageSize: int,
        handshakeTimeout: float = HANDSHAKE_TIMEOUT,
        maxBufferSize: int = 64 * 1024 * 1024,
        maxHostBufferSize: int = 128 * 1024 * 1024,
        transport: str = "unix",
    ) -> None:
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.name = name
        self.paths = paths
        self.factory = factory
        self.maxMessageSize = maxMessageSize
        self.maxBufferSize = maxBufferSize
        #: The unsent bytes of all this host's links, against
        #: C{maxHostBufferSize}.
        self.budget = HostBudget(maxHostBufferSize, reactor, name)
        self.handshakeTimeout = handshakeTimeout
        self.transportKind = transport
        self.secret: bytes | None = None
        #: Across machines, while this process hosts there: its term,
        #: machine and address, which its welcome tells a client across
        #: machines (which it refuses while C{None}, or while its term is
        #: lower than one the client has seen).
        self.acrossMachines: _wire.HostTerm | None = None
        self._authFailures = FailureLimit(AUTH_FAILURE_LIMIT, AUTH_FAILURE_WINDOW)
        self.role = STOPPED
        # The socket (over TCP: the port and its port file) this standby
        # will publish if it wins.
        self._standbySocket: StandbySocket | StandbyPort = (
            StandbyPort(paths.port)
            if transport == "tcp"
            else StandbySocket(paths.socket)
        )
        self._election = HostElection(
            reactor,
            paths.lock,
            self._elected,
            prepare=self._standbySocket.publish,
            discard=self._standbySocket.withdraw,
        )
        # What this host published, while it hosts.
        self._publication: Publication | None = None
        self._term: _HostingTerm | None = None
        self._roleWaiters = RoleWaiters(name)
        self._electionRetry = ElectionRetry(reactor, self._retryElection)
        self._shutdownHandover = ShutdownHandover(reactor, name, self._handOver)
        self._factoryStarted = False

    def __repr__(self) -> str:
        return f"<ChannelPort {self.name!r} {self.role} at {self.paths.socket!r}>"

    @property
    def hosting(self) -> bool:
        """
        Whether this process hosts the channel now.
        """
        return self.role == HOST

    def getHost(self) -> ChannelAddress:
        """
        This candidate's address; its C{role} says whether it hosts.
        """
        if self.transportKind == "tcp":
            tcpPort = None
            if self._publication is not None:
                listening = self._publication.listeningPort
                tcpPort = listening.getHost().port  # type: ignore[attr-defined]
            return ChannelAddress(
                self.name,
                self.paths.port,
                self.role,
                _process.pid,
                os.getuid(),
                LOOPBACK,
                tcpPort,
            )
        return ChannelAddress(
            self.name,
            self.paths.socket,
            self.role,
            _process.pid,
            os.getuid(),
        )

    def startListening(self) -> None:
        """
        Stand as a candidate: host now if nobody does, else stand by.

        @raise UnsafeDirectoryError: if the runtime directory or the files
            in it are not safe to use.
        @raise ChannelLockMismatchError: if the lock file is of another
            format or locking mechanism than this process's.
        @raise OSError: if they cannot be created.
        @raise error.CannotListenError: if this process won the election but
            could not bind the socket.
        """
        if self.role != STOPPED:
            return
        prepareDirectory(self.paths.directory)
        if not self._factoryStarted:
            self.factory.doStart()
            self._factoryStarted = True
        self.role = PORT[self.role, STARTED]
        try:
            if self._election.tryNow():
                self._becomeHost()
            else:
                self._standBy()
        except BaseException:
            self._election.release()
            self._standbySocket.discard()
            self.role = PORT[self.role, START_FAILED]
            raise
        self._shutdownHandover.arm()
        if self.role == STANDBY:
            _log.debug(
                "channel {channel}: pid {pid} stands by",
                channel=self.name,
                pid=_process.pid,
            )

    def _handOver(self) -> Deferred[Any] | None:
        """
        Withdraw at the reactor's shutdown, unless withdrawn already.
        """
        if self.role == STOPPED:
            return None
        return self.stopListening()

    def standAgain(self) -> None:
        """
        A standby tries the lock again at once; used when a client of this
        process lost its link, in case the lock is free and the background
        wait has not woken yet.
        """
        if self.role == STANDBY and not self._electionRetry.pending:
            try:
                if self._election.tryNow():
                    self._elected()
            except Exception:
                _log.failure("channel {channel}: election failed", channel=self.name)

    def _standBy(self) -> None:
        """
        Wait for the lock in the background, with a socket (over TCP: a
        port and its port file) ready to publish if it is won: the moment of
        the win is the one when the dead host's exit and its clients compete
        for the CPU, and a rename is all that is then left to do.
        """
        self._standbySocket.prepare()
        _readyToHost()
        self._election.waitInBackground()
        # Last, the collection that would otherwise fall due during the
        # takeover: the young generations' (0.2 ms on a candidate here, where
        # an idle standby allocates nothing until it wins, so the count it
        # reaches is the same each time), or the process's first full one.
        collectBeforeWaiting()

    def _elected(self, prepared: object = None) -> None:
        if self.role != STANDBY:
            if isinstance(prepared, (PublishedSocket, PublishedPort)):
                self._standbySocket.withdraw(prepared)
            self._election.release()
            return
        if isinstance(prepared, Exception):
            _log.warn(
                "channel {channel}: could not bind at once ({error}); "
                "trying in the reactor thread",
                channel=self.name,
                error=prepared,
            )
            prepared = None
        try:
            self._becomeHost(prepared)
        except Exception:
            _log.failure(
                "channel {channel}: won the election but could not host; "
                "trying again in {delay} s",
                channel=self.name,
                delay=self._electionRetry.later(),
            )

    def _retryElection(self) -> None:
        if self.role != STANDBY:
            return
        try:
            if self._election.tryNow():
                self._elected()
            else:
                self._standBy()
        except Exception:
            _log.failure("channel {channel}: election failed", channel=self.name)
            self._electionRetry.later()

    def _becomeHost(self, prepared: object = None) -> None:
        """
        Called holding the lock: bind the socket and start accepting links.
        """
        term = _HostingTerm(time.time())
        socketPort: IListeningPort
        publishedEarlier = False
        try:
            if self.transportKind == "tcp":
                # Published on the election thread, clients may be queued on
                # it already; published here, none had the time to.
                publishedEarlier = isinstance(prepared, PublishedPort)
                if not isinstance(prepared, PublishedPort):
                    prepared = self._standbySocket.publish()
                assert isinstance(prepared, PublishedPort)
                try:
                    # The reactor's port listens on a duplicate, and shuts
                    # nothing down but closes it when it stops.
                    socketPort = self.reactor.adoptStreamPort(
                        prepared.listening.fileno(),
                        socket.AF_INET,
                        _HostLinkFactory(self, term),
                    )
                except BaseException:
                    self._standbySocket.withdraw(prepared)
                    raise
                prepared.listening.close()
                self.secret = prepared.secret
            else:
                unixPort = HostSocketPort(
                    os.fsencode(self.paths.socket),
                    _HostLinkFactory(self, term),
                    backlog=128,
                    mode=0o600,
                    reactor=self.reactor,
                )
                # Published on the election thread, clients may be queued on
                # it already; published here, none had the time to.
                publishedEarlier = isinstance(prepared, PublishedSocket)
                if not isinstance(prepared, PublishedSocket):
                    prepared = self._standbySocket.publish()
                assert isinstance(prepared, PublishedSocket)
                unixPort.adopt(prepared)
                try:
                    unixPort.startListening()
                except BaseException:
                    # As over TCP: no client may queue on a socket that
                    # nobody accepts on.  (Withdrawn already if the port
                    # fell back to a socket of its own: this does no harm.)
                    self._standbySocket.withdraw(prepared)
                    raise
                socketPort = unixPort
        except BaseException:
            self._election.release()
            raise
        self._publication = Publication(
            self.reactor, self.name, self.paths, socketPort, self.secret
        )
        self._term = term
        self.role = PORT[self.role, ELECTED]
        self._electionRetry.succeeded()
        self._publication.start()
        address = self.getHost()
        _log.info(
            "channel {channel}: pid {pid} hosts at {path}",
            channel=self.name,
            pid=_process.pid,
            path=address.path,
            role=HOST,
        )
        self._roleWaiters.announce(self.role, address)
        publication = self._publication
        if (
            publishedEarlier
            and self.role == HOST
            and publication is not None
            and publication.listeningPort is socketPort
        ):
            # The clients that found the socket published on the election
            # thread are queued on it already: accept them now, as the next
            # turn of the reactor would (an epoll_wait that returns at once,
            # then its dispatch), one turn sooner.  Unless a role observer
            # stopped the port meanwhile.
            socketPort.doRead()  # type: ignore[attr-defined]

    def whenHosting(self) -> Deferred[ChannelAddress]:
        """
        A Deferred that fires with this port's address when this process
        hosts the channel: at once if it does now, else when it takes over.
        It never fires if the port stops first.
        """
        if self.role == HOST:
            return succeed(self.getHost())
        return self._roleWaiters.whenHosting()

    def whenNotHosting(self) -> Deferred[ChannelAddress]:
        """
        A Deferred that fires with this port's address when this process is
        not (or no longer) the host: at once if it does not host now.
        """
        if self.role != HOST:
            return succeed(self.getHost())
        return self._roleWaiters.whenNotHosting()

    def addRoleObserver(self, observer: Callable[[str], None]) -> None:
        """
        Call C{observer} with the new role (C{"host"}, C{"standby"} or
        C{"stopped"}) each time this process starts or stops hosting.
        """
        self._roleWaiters.addObserver(observer)

    def removeRoleObserver(self, observer: Callable[[str], None]) -> None:
        """
        Stop calling an observer added with L{addRoleObserver}.
        """
        self._roleWaiters.removeObserver(observer)

    def stopListening(self) -> Deferred[Any]:
        """
        Withdraw from the channel.

        A host stops accepting, removes its socket, gives up the lock (a
        standby takes over at once) and closes its links; their clients
        fail over to the new host and resend what this one had not
        acknowledged.  A standby just stops waiting.

        @return: a Deferred that fires when all of that is done.
        """
        self._electionRetry.cancel()
        self._shutdownHandover.disarm()
        wasHosting = self.role == HOST
        wasStandingBy = self.role == STANDBY
        self.role = PORT[self.role, WITHDRAWN]
        if not wasHosting:
            self._election.release()
            self._standbySocket.discard()
            if wasStandingBy:
                # A change of role, as a host's stop is.
                self._roleWaiters.announce(self.role, self.getHost())
            self._stopFactory()
            return succeed(None)
        publication, self._publication = self._publication, None
        term, self._term = self._term, None
        assert publication is not None and term is not None
        publication.stop()
        secret, self.secret = self.secret, None
        if secret is not None:
            # Clients stop finding this host before it stops listening.
            removePortFile(self.paths.port, secret)

        def portClosed(result: object) -> Deferred[Any]:
            # Only once the socket file is gone may the lock go: the next
            # host binds a fresh socket at the same path.
            self._election.release()
            _log.info(
                "channel {channel}: pid {pid} stopped hosting",
                channel=self.name,
                pid=_process.pid,
                role=STOPPED,
            )
            closing = []
            for link in list(term.allLinks):
                closing.append(link.whenClosed())
                link.closeQuietly()
            self._roleWaiters.announce(self.role, self.getHost())
            return DeferredList(closing)

        def factoryStopped(result: object) -> None:
            self._stopFactory()

        closed: Deferred[Any] = publication.listeningPort.stopListening() or succeed(
            None
        )
        closed.addBoth(portClosed)
        closed.addBoth(factoryStopped)
        return closed

    def authenticationFailed(self) -> None:
        """
        Count a failed authentication, for L{acceptingLinks}.
        """
        self._authFailures.failed(self.clock.seconds())

    def acceptingLinks(self) -> bool:
        """
        Whether new TCP links are served now: after
        L{AUTH_FAILURE_LIMIT} failed authentications within
        L{AUTH_FAILURE_WINDOW} seconds, new links are closed at once until
        the window has passed, so guessing costs an attacker time.
        """
        now = self.clock.seconds()
        limit = self._authFailures
        if limit.accepting(now):
            return True
        if limit.warningDue(now):
            _log.warn(
                "channel {channel}: {count} failed authentications in "
                "{window} s; refusing new links for a while",
                channel=self.name,
                count=limit.recent(now),
                window=limit.window,
            )
        return False

    def buildLink(self, linkType: type[_AnyLink]) -> _AnyLink | None:
        """
        A link of this host's term for a connection it did not accept on
        its own socket (across machines: a verified TLS connection to its
        machine's port), or C{None} while it does not host.

        @param linkType: a subclass of L{_HostLink}, built with this port
            and its term.
        """
        term = self._term
        if term is None or self.role != HOST:
            return None
        return linkType(self, term)

    def closeLinks(self) -> None:
        """
        Close every link of this host, handshake done or not, without a last
        word: their clients connect again and resend what was not
        acknowledged.  Nothing more is read from them, not even what their
        sockets already hold: a host across machines that stepped down must
        deliver nothing after.
        """
        term = self._term
        if term is not None:
            for link in list(term.allLinks):
                link.closeQuietly()

    def _stopFactory(self) -> None:
        if self._factoryStarted:
            self._factoryStarted = False
            self.factory.doStop()

    def status(self) -> dict[str, Any]:
        """
        What the host reports to a status query.
        """
        term = self._term
        return {
            "name": self.name,
            "hosted": self.role == HOST,
            "pid": _process.pid,
            "since": term.started if term else None,
            "path": self.getHost().path,
            "transport": self.transportKind,
            "links": len(term.links) if term else 0,
            "messages": term.messages if term else 0,
            "bytes": term.bytes if term else 0,
        }
