"""
How a client finds its host, and finds it again: L{Reconnection}, which
owns for one client connection the reconnection strategy
(L{ChannelReconnectingFactory}), the connector it drives (each attempt one
link, to the socket or to the port in the port file, read afresh), the
watch on the channel's files that cuts a backoff short when a host
publishes itself, leaving a host early once the lock file's record says it
died, the health of the last link, which chooses between reconnecting
at once and backing off, and the one timer armed for the next of the
connection's deadlines (L{ClientDeadlines}: when to give up looking for a
host, when to take a silent host for frozen and leave it).

The connection (L{twisted_channel._client.ChannelClientTransport}) tells
it when a link comes up or is lost; what a link carries (the sessions,
the resend, the deadlines, the application) stays the connection's.
"""

from __future__ import annotations

import functools
import random
import socket
import typing
from errno import ECONNREFUSED, ENOENT
from os import strerror
from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IDelayedCall,
    IStreamClientEndpoint,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import Factory, ReconnectingClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._address import CLIENT
from ._auth import LOOPBACK, readPortFile
from ._clientsession import GIVE_UP, STALLED, ClientDeadlines
from ._election import readLockRecord
from ._sockets import connectUnixLink, unreadBytes
from ._states import CLOSED, CONNECTED, CONNECTING
from ._watch import stopWatching, watchFor

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._client import ChannelClientTransport, _ClientLink

_log = Logger()

#: A client's end of a Unix link, not yet connected.
_unixSocket = functools.partial(
    socket.socket,
    socket.AF_UNIX,
    socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
)

#: Seconds a link must have been up (or it must have carried an
#: acknowledgement) for its loss to be taken as a host's end, reconnecting at
#: once, rather than as a host that drops us, backing off.
HEALTHY_LINK = 0.5


class ChannelReconnectingFactory(ReconnectingClientFactory):
    """
    The channel's reconnection strategy: a L{ReconnectingClientFactory} that
    starts again after milliseconds, not a second, because a standby takes
    over within a millisecond of the host's death.

    Endpoints never tell a factory that a connection failed or was lost, so
    the channel calls L{clientConnectionFailed} and L{clientConnectionLost}
    itself, with a L{_LinkConnector} whose C{connect} looks for the current
    host again.
    """

    initialDelay = 0.002
    factor = 2.0
    maxDelay = 0.25  # type: ignore[assignment]
    jitter = 0.2
    delay = initialDelay
    noisy = False

    def __init__(self, connection: ChannelClientTransport) -> None:
        self.connection = connection
        self.clock = connection.reactor
        # The next attempt, held here rather than in the base class's
        # private _callID, which this class's retry() never sets.
        self.nextAttempt: IDelayedCall | None = None

    def retry(self, connector: IConnector | None = None) -> None:
        """
        Connect again after the current delay, with jitter that stays
        between zero and C{maxDelay} (L{ReconnectingClientFactory}'s own can
        go negative or past it).
        """
        if not self.continueTrying:
            return
        if connector is None:
            connector = self.connector
        if connector is None:
            raise ValueError("no connector to retry")
        self.retries += 1
        if self.maxRetries is not None and self.retries > self.maxRetries:
            return
        wait = self.delay
        if self.jitter:
            wait = random.uniform(wait * (1 - self.jitter), wait * (1 + self.jitter))
        wait = min(max(wait, 0.0), self.maxDelay)
        target = connector

        def reconnect() -> None:
            self.nextAttempt = None
            target.connect()

        self.nextAttempt = self.clock.callLater(wait, reconnect)  # type: ignore[union-attr]
        self.delay = min(self.delay * self.factor, self.maxDelay)

    def cancelRetry(self) -> None:
        """
        Forget the attempt L{retry} scheduled, if it is still to come.
        """
        nextAttempt, self.nextAttempt = self.nextAttempt, None
        if nextAttempt is not None and nextAttempt.active():
            nextAttempt.cancel()

    def stopTrying(self) -> None:
        """
        Stop reconnecting: cancel the next attempt and any under way.
        """
        self.cancelRetry()
        super().stopTrying()  # type: ignore[no-untyped-call]


class LinkOpener(typing.Protocol):
    """
    The L{IConnector} a L{Reconnection} drives, which also says whether an
    attempt is under way.
    """

    @property
    def attempting(self) -> bool:
        """
        Whether a connection attempt is under way.
        """

    def connect(self) -> None:
        """
        Open a link to the host, unless an attempt is under way.
        """

    def settled(self, link: _ClientLink) -> None:
        """
        C{link} was welcomed, or lost: if an attempt of this connector's
        made it, that attempt is over.
        """


class ConnectionsConnector:
    """
    What a connector of a client connection's links does whatever dials
    them: its disconnect and destination are the connection's.
    """

    _connection: ChannelClientTransport

    def disconnect(self) -> None:
        link = self._connection.link
        if link is not None and link.transport is not None:
            link.transport.loseConnection()

    def getDestination(self) -> IAddress:
        return self._connection.getPeer()


@implementer(IConnector)
class _LinkConnector(ConnectionsConnector):
    """
    What the reconnection strategy drives: each C{connect} opens one link to
    the channel's socket, or over loopback TCP to the port its port file
    names.
    """

    def __init__(
        self,
        connection: ChannelClientTransport,
        reconnection: Reconnection,
        linkType: Callable[..., _ClientLink],
    ) -> None:
        """
        @param linkType: what builds a link: called with the connection,
            the secret read for it (or C{None}), this connector and, as
            C{portPid}, the pid the port file named (or C{None}).
        """
        self._connection = connection
        self._reconnection = reconnection
        self._linkType = linkType
        self._attempt: Deferred[Any] | None = None
        # A real reactor's Unix link is connected here, at once, and adopted
        # (see _connectAtOnce): not on a memory reactor, which only records
        # attempts.
        self._adopts = connection.transportKind != "tcp" and isinstance(
            connection.reactor, PosixReactorBase
        )
        self._soon: IDelayedCall | None = None
        # The link an attempt made, until it is welcomed or lost: a second
        # link meanwhile (a host appearing, a retry) would say hello with
        # the same client id, the host would close the first for it, and
        # each lost link would dial another while one is in its handshake.
        self._handshaking: _ClientLink | None = None

    @property
    def dialsAtEndOfTurn(self) -> bool:
        """
        Whether its attempts are Unix dials made at the end of the reactor
        turn (L{_connectAtOnce}), which fail or make a link at once.
        """
        return self._adopts

    def connect(self) -> None:
        connection = self._connection
        if connection.state == CLOSED or self.attempting:
            return
        candidate = connection.candidate
        if candidate is not None:
            candidate.standAgain()
        if self._adopts:
            # At the end of this reactor turn, as Twisted's connector would:
            # what the application writes meanwhile leaves with the hello.
            self._soon = connection.reactor.callLater(0, self._connectAtOnce)
            return
        self._connectThroughEndpoint()

    def _connectAtOnce(self) -> None:
        """
        Connect the link's Unix socket here and hand it to the reactor
        (L{connectUnixLink}): a Unix C{connect} to a listening socket
        completes, or fails, at once, so Twisted's connector, its
        endpoint's wrapping and its own turn of the reactor are not needed.
        No host (nothing listens, or no socket) is an attempt that failed;
        anything else (a full backlog) goes the way of Twisted's connector.
        """
        self._soon = None
        connection = self._connection
        if connection.state == CLOSED:
            return
        try:
            link = _unixSocket()
        except OSError:
            # Out of descriptors, say: Twisted's connector reports it as a
            # failed attempt, which is retried.
            self._connectThroughEndpoint()
            return
        path = connection.address.path
        built: _ClientLink | None = None

        def buildLink() -> _ClientLink:
            nonlocal built
            built = self.linked(self._linkType(connection, None, self))
            return built

        try:
            result = link.connect_ex(path)
            if result == 0:
                # The reactor's transport owns the socket from here on.
                connectUnixLink(connection.reactor, link, path, buildLink)
                return
        except Exception as e:
            if built is not None:
                self._startFailed(built, link)
                return
            if not isinstance(e, OSError):
                raise
            result = None
        link.close()
        if result in (ECONNREFUSED, ENOENT):
            self._reconnection.attemptFailed(
                Failure(error.getConnectError((result, strerror(result))))
            )
            return
        self._connectThroughEndpoint()

    def _startFailed(self, link: _ClientLink, dialed: socket.socket) -> None:
        """
        C{link} was made over C{dialed}, and then its start failed (an
        error escaped its C{connectionMade}, say): logged, and the link
        dropped, so that the search goes on, its give-up deadline armed,
        rather than wait for a handshake that will never end.
        """
        _log.failure(
            "channel {channel}: a link failed to start",
            channel=self._connection.address.name,
        )
        transport = link.transport
        if transport is not None:
            # Its end, reported at the next turn, is a failed attempt.
            transport.abortConnection()  # type: ignore[attr-defined]
            return
        dialed.close()
        self.settled(link)
        self._reconnection.attemptFailed(
            Failure(error.ConnectError(string="the link failed to start"))
        )

    def _connectThroughEndpoint(self) -> None:
        # Such an attempt may take seconds: the give-up deadline runs
        # meanwhile (see Reconnection.start).
        self._reconnection.armDeadline()
        connection = self._connection
        endpoint: IStreamClientEndpoint
        if connection.transportKind == "tcp":
            # Read afresh each time: a host that died left a stale file, and
            # its successor writes a new port and secret.
            try:
                portFile = readPortFile(connection.address.path)
            except (OSError, ValueError) as e:
                if not isinstance(e, FileNotFoundError):
                    _log.warn(
                        "channel {channel}: cannot use the port file: {error}",
                        channel=connection.address.name,
                        error=e,
                    )
                self._reconnection.strategy.clientConnectionFailed(self, Failure(e))  # type: ignore[no-untyped-call]
                return
            secret: bytes | None = portFile.secret
            portPid: int | None = portFile.pid
            endpoint = TCP4ClientEndpoint(
                connection.reactor, LOOPBACK, portFile.port, timeout=5
            )
        else:
            secret = portPid = None
            endpoint = UNIXClientEndpoint(
                connection.reactor, connection.address.path, timeout=5
            )
        attempt = endpoint.connect(
            _LinkFactory(self._linkType, connection, secret, self, portPid)
        )
        self._attempt = attempt

        def connected(link: _ClientLink) -> None:
            self._attempt = None

        def failed(reason: Failure) -> None:
            self._attempt = None
            self._reconnection.attemptFailed(reason)

        attempt.addCallbacks(connected, failed)

    def linked(self, link: _ClientLink) -> _ClientLink:
        """
        An attempt made C{link}: the attempt lasts until it is L{settled}.
        """
        self._handshaking = link
        return link

    def settled(self, link: _ClientLink) -> None:
        if self._handshaking is link:
            self._handshaking = None

    @property
    def attempting(self) -> bool:
        """
        Whether a connection attempt is under way: connecting, or its link
        not yet welcomed.
        """
        return (
            self._attempt is not None
            or self._soon is not None
            or self._handshaking is not None
        )

    def stopConnecting(self) -> None:
        soon, self._soon = self._soon, None
        if soon is not None:
            soon.cancel()
            return
        attempt, self._attempt = self._attempt, None
        link, self._handshaking = self._handshaking, None
        if attempt is None and link is None:
            raise error.NotConnectingError()
        if attempt is not None:
            attempt.cancel()
        if link is not None:
            link.abort()


class _LinkFactory(Factory):
    """
    Builds the link of one connection attempt, with the secret and pid read
    for it from the port file (over loopback TCP) and the connector that
    made it.

    @ivar built: whether it built the link.
    """

    noisy = False

    def __init__(
        self,
        linkType: Callable[..., _ClientLink],
        connection: ChannelClientTransport,
        secret: bytes | None,
        connector: _LinkConnector,
        portPid: int | None = None,
    ) -> None:
        self._linkType = linkType
        self._connection = connection
        self._secret = secret
        self._connector = connector
        self._portPid = portPid
        self.built = False

    def buildProtocol(self, addr: IAddress | None) -> _ClientLink:
        self.built = True
        return self._connector.linked(
            self._linkType(
                self._connection, self._secret, self._connector, portPid=self._portPid
            )
        )


class Reconnection:
    """
    Finding a client connection's host, and finding it again when a link
    is lost.

    It opens links with its L{connector}, driven by its L{strategy}; from
    the start, and again whenever the connection has no host, it watches
    the channel's socket or port file, so that a host publishing itself
    cuts a backoff short.  While linked, the watch stays on if the lock
    file can be read: a standby taking over from a host that died tells a
    linked client to leave the dead host before the kernel closes the
    link.  A link lost after being healthy (up for L{HEALTHY_LINK}
    seconds, or acknowledged) is followed by an attempt at once; one lost
    sooner backs off, so that a host that drops us is not a busy loop.

    Its L{deadlines} say when to give up looking for a host (the
    connection ends, L{ChannelClientTransport.hostUnreachable}) and when a
    linked host that leaves messages unacknowledged is taken for frozen
    (the link is dropped, and another host looked for); one timer is armed
    for the next of them.

    @ivar deadlines: the give-up and stall deadlines.
    @ivar connector: what opens each link.
    @ivar hostsSeen: how many links hosts have welcomed.
    """

    #: Whether the channel's files tell of a host publishing itself (not
    #: across machines, where etcd does).
    watchesFiles = True

    def __init__(
        self,
        connection: ChannelClientTransport,
        linkType: Callable[..., _ClientLink],
        lockPath: str | None,
        deadlines: ClientDeadlines,
    ) -> None:
        """
        @param connection: the connection whose links these are.
        @param linkType: what builds a link (see L{_LinkConnector}).
        @param lockPath: the channel's lock file, whose record tells a
            linked client that its host died before the kernel closes the
            link (see L{hostAppeared}); without it, the close is awaited.
        @param deadlines: the connection's deadlines, whose timer this
            arms.
        """
        self._connection = connection
        self._reactor = connection.reactor
        self._path = connection.address.path
        self._lockPath = lockPath
        # Made when first needed (see strategy): not on the way to the
        # first message.
        self._strategy: ChannelReconnectingFactory | None = None
        self._started = False
        self.connector = self.newConnector(linkType)
        self.hostsSeen = 0
        self._linkUpAt = 0.0
        self._watching = False
        self._appearedDuringAttempt = False
        self.deadlines = deadlines
        # The one timer armed for the next deadline, and its time.
        self._deadlineCall: IDelayedCall | None = None
        self._deadlineAt: float | None = None

    @property
    def strategy(self) -> ChannelReconnectingFactory:
        """
        When to try again, made when first needed (an attempt failed, a
        link was lost, the connection ended).  Once L{start}ed, it has the
        L{connector}, so that its C{stopTrying} also stops an attempt under
        way.
        """
        strategy = self._strategy
        if strategy is None:
            strategy = self._strategy = ChannelReconnectingFactory(self._connection)
            if self._started:
                strategy.connector = self.connector
        return strategy

    def newConnector(self, linkType: Callable[..., _ClientLink]) -> LinkOpener:
        """
        What opens each link: to the channel's socket, or over loopback TCP.

        @param linkType: what builds a link (see L{_LinkConnector}).
        """
        return _LinkConnector(self._connection, self, linkType)

    def start(self, now: float) -> None:
        """
        Start looking for a host at C{now}: make the first attempt.  The
        watch begins only once it is known to be needed, off the path of
        the first message: when that attempt fails (L{startWatching}), or
        once a host welcomed the link (L{linkUp}).

        So does the timer of the give-up deadline when the attempt is a
        Unix dial at the end of this turn and the deadline falls well after
        that link's handshake deadline: the dial fails at once (the timer
        is armed then, for the same time), or its link is welcomed (no
        timer was needed) or lost (armed then), and meanwhile the link's
        own deadline guards against a host that never answers.  That timer,
        armed and cancelled, was on the way to every first message.
        """
        self.deadlines.lookForHost(now)
        self._started = True
        strategy = self._strategy
        if strategy is not None:
            # So that stopTrying() also cancels an attempt under way.
            strategy.connector = self.connector
        connector = self.connector
        connector.connect()
        if not (
            isinstance(connector, _LinkConnector)
            and connector.dialsAtEndOfTurn
            and self.deadlines.outlastsHandshake()
        ):
            self.armDeadline()

    def startWatching(self) -> bool:
        """
        Watch for a host from now on, if not watching yet.

        @return: whether the watch began just now: a host may have been
            published between the attempt that just failed and the watch,
            unseen by either, so the caller tries again at once.
        """
        if self._watching or not self.watchesFiles:
            return False
        self._watching = watchFor(self._reactor, self._path, self.hostAppeared)
        return self._watching

    def linkUp(self, now: float) -> int:
        """
        A host welcomed a link, at C{now}.  With a lock file to read, the
        watch goes on while it lasts (begun now if the first attempt
        succeeded); without one, nothing is watched.

        @return: how many links hosts have welcomed, this one included.
        """
        self.deadlines.linked()
        # A host seen during the handshake was this one.
        self._appearedDuringAttempt = False
        if self._lockPath is None:
            if self._watching:
                self._watching = False
                stopWatching(self._path, self.hostAppeared)
        elif self.startWatching():
            # A host that died, and a successor published, between the
            # link's connect and now went unseen by the watch: the lock
            # file's record says so.
            self._leaveIfSucceeded()
        self._linkUpAt = now
        self.hostsSeen += 1
        return self.hostsSeen

    def linkLost(self, reason: Failure, acknowledged: bool, now: float) -> None:
        """
        The welcomed link was lost at C{now} and the connection goes on:
        watch for a host, and try again, at once if the link was healthy.

        @param acknowledged: whether the host acknowledged anything on it.
        """
        self.deadlines.lookForHost(now)
        self.armDeadline()
        if self.watchesFiles and not self._watching:
            self._watching = watchFor(self._reactor, self._path, self.hostAppeared)
        strategy = self.strategy
        strategy.connector = self.connector
        if acknowledged or now - self._linkUpAt >= HEALTHY_LINK:
            # The first attempt goes at once: a standby has usually taken
            # over by the time the kernel reports the old host's end.
            strategy.resetDelay()  # type: ignore[no-untyped-call]
            self.connector.connect()
        else:
            # A link that dies as soon as it is up (a host that refuses us
            # after its welcome, say) must not become a busy loop: the
            # backoff goes on growing.
            strategy.clientConnectionLost(self.connector, reason)  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        """
        The connection ended: no more deadlines, watching or attempts.
        """
        self.deadlines.stop()
        self.armDeadline()
        if self._watching:
            self._watching = False
            stopWatching(self._path, self.hostAppeared)
        self.strategy.stopTrying()

    def armDeadline(self) -> None:
        """
        Arm the one timer for the deadlines' next, if it moved.
        """
        at = self.deadlines.next()
        if at == self._deadlineAt:
            return
        call, self._deadlineCall = self._deadlineCall, None
        if call is not None and call.active():
            call.cancel()
        self._deadlineAt = at
        if at is not None:
            self._deadlineCall = self._reactor.callLater(
                max(0.0, at - self._reactor.seconds()), self._deadlineDue
            )

    def _deadlineDue(self) -> None:
        self._deadlineCall = None
        self._deadlineAt = None
        connection = self._connection
        deadlines = self.deadlines
        now = self._reactor.seconds()
        link = connection.link
        verdict = deadlines.due(
            now, link is not None and bool(connection.pending), connection.readingPaused
        )
        if verdict is GIVE_UP:
            connection.hostUnreachable()
            return
        if verdict is STALLED:
            assert link is not None
            if deadlines.mayRecheck and unreadBytes(link.transport):
                # The host did send: this process was late, not the host (it
                # was suspended, or short of CPU), and the reactor runs its
                # timed calls before it reads.  Judge once that is read.
                deadlines.recheck(now)
            else:
                _log.warn(
                    "channel {channel}: host pid {hostPid} acknowledged nothing "
                    "for {idle:.1f} s with {pending} message(s) waiting; dropping "
                    "the link",
                    channel=connection.address.name,
                    hostPid=link.hostAddress.pid,
                    idle=now - deadlines.lastProgress,
                    pending=len(connection.pending),
                )
                deadlines.stalled()
                link.abort()
        self.armDeadline()

    def hostAppeared(self) -> None:
        """
        A host just published its socket or port file: connect now rather
        than at the next retry.

        Linked to a host that has just died, leave it now: the kernel
        closes a dead process's sockets only after it has freed its memory,
        milliseconds after a standby took over.
        """
        state = self._connection.state
        if state == CONNECTED:
            self._leaveIfSucceeded()
            return
        if state != CONNECTING:
            return
        if self.connector.attempting:
            # That attempt may have gone to the old host's stale socket;
            # if it fails, try again at once.
            self._appearedDuringAttempt = True
            return
        self.strategy.cancelRetry()
        self.connector.connect()

    def _leaveIfSucceeded(self) -> None:
        link = self._connection.link
        if link is None or self._lockPath is None:
            return
        record = readLockRecord(self._lockPath)
        hostPid = link.hostAddress.pid
        # Only a host that died: one that handed over gracefully still sends
        # its last acknowledgements, and leaving early would resend those
        # messages.
        if (
            record is None
            or hostPid is None
            or record.diedPid != hostPid
            or record.hostPid == hostPid
        ):
            return
        _log.info(
            "channel {channel}: host pid {hostPid} died and pid {newPid} took "
            "over; moving there",
            channel=self._connection.address.name,
            hostPid=hostPid,
            newPid=record.hostPid,
            role=CLIENT,
        )
        link.abort()

    def attemptFailed(self, reason: Failure) -> None:
        """
        An attempt of the L{connector} failed: its dial, or its link, lost
        before a host welcomed it while the connection has no link.  What
        follows is decided here, for every connector.

        Nothing, if the attempt was cancelled or the connection is closed.
        Otherwise the timer of the give-up deadline is armed, since no link
        guards the search any more (see L{start}); then, unless another
        attempt is under way (a second link would say hello with the same
        client id, and the host would close the first for it), an attempt
        at once if a host appeared while this one was under way, or if the
        failure just began the watch (a host published between the attempt
        and the watch went unseen by both: the one a lost link reached may
        have died, and a standby taken over, meanwhile); else the
        strategy's backoff.

        @param reason: why the attempt failed.
        """
        if reason.check(error.ConnectingCancelledError) or self._connection.closed:
            return
        self.armDeadline()
        connector = self.connector
        if connector.attempting:
            return
        if self.hostAppearedMeanwhile() or self.startWatching():
            connector.connect()
            return
        self.strategy.clientConnectionFailed(connector, reason)  # type: ignore[no-untyped-call]

    def hostAppearedMeanwhile(self) -> bool:
        """
        Whether a host appeared while the failed attempt was under way.
        """
        appeared, self._appearedDuringAttempt = self._appearedDuringAttempt, False
        return appeared
