"""
Who is told when a candidate's role changes: the Deferreds that
C{ChannelPort.whenHosting} and C{whenNotHosting} returned, and the role
observers (L{RoleWaiters}); and who is told when a client connection's
link comes up or is lost: the Deferreds that
C{ChannelClientTransport.whenConnected} returned, and the protocol, if it
is an L{IChannelLinkObserver} (L{LinkWaiters}).  The port and the
connection decide when things change (L{_states}); this only keeps the
list of those waiting, and tells them.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._address import HOST, ChannelAddress
from ._interfaces import ChannelClosedError, IChannelLinkObserver

_log = Logger()


class RoleWaiters:
    """
    The parties waiting for a port's role to change.
    """

    def __init__(self, name: str) -> None:
        """
        @param name: the channel's name, for log lines.
        """
        self._name = name
        self._hosting: list[Deferred[ChannelAddress]] = []
        self._notHosting: list[Deferred[ChannelAddress]] = []
        self._observers: list[Callable[[str], None]] = []

    def whenHosting(self) -> Deferred[ChannelAddress]:
        """
        A Deferred fired by the next L{announce} of C{"host"}.
        """
        waiter: Deferred[ChannelAddress] = Deferred()
        self._hosting.append(waiter)
        return waiter

    def whenNotHosting(self) -> Deferred[ChannelAddress]:
        """
        A Deferred fired by the next L{announce} of any other role.
        """
        waiter: Deferred[ChannelAddress] = Deferred()
        self._notHosting.append(waiter)
        return waiter

    def addObserver(self, observer: Callable[[str], None]) -> None:
        """
        Call C{observer} with the role at each L{announce}.
        """
        self._observers.append(observer)

    def removeObserver(self, observer: Callable[[str], None]) -> None:
        """
        Stop calling C{observer}.

        @raise ValueError: if it was not added.
        """
        self._observers.remove(observer)

    def announce(self, role: str, address: ChannelAddress) -> None:
        """
        The port's role is now C{role}: fire the waiters for it with
        C{address}, then call each observer.  What an observer raises is
        logged, and the others are still called.
        """
        waiters = self._hosting if role == HOST else self._notHosting
        pending = waiters[:]
        del waiters[:]
        for waiter in pending:
            waiter.callback(address)
        for observer in self._observers[:]:
            try:
                observer(role)
            except Exception:
                _log.failure(
                    "channel {channel}: role observer {observer} raised",
                    channel=self._name,
                    observer=observer,
                )


class LinkWaiters:
    """
    The parties waiting for a client connection's link: the Deferreds of
    C{whenConnected}, and the application's protocol if it is an
    L{IChannelLinkObserver}.  What the observer raises is logged: a bug
    there must not cost the link.
    """

    def __init__(self, name: str, protocol: IProtocol) -> None:
        """
        @param name: the channel's name, for log lines.
        @param protocol: the connection's protocol, told of its links if it
            is (or adapts to) an L{IChannelLinkObserver}.
        """
        self._name = name
        self._protocol = protocol
        self._connected: list[Deferred[ChannelAddress]] = []

    @property
    def observed(self) -> bool:
        """
        Whether the connection's protocol is told of its links.
        """
        return IChannelLinkObserver(self._protocol, None) is not None

    def whenConnected(self) -> Deferred[ChannelAddress]:
        """
        A Deferred fired by the next L{linkEstablished}, or failed by
        L{closed}.
        """
        waiter: Deferred[ChannelAddress] = Deferred()
        self._connected.append(waiter)
        return waiter

    def linkEstablished(self, host: ChannelAddress) -> None:
        """
        A link to C{host} is up: fire the waiters, then tell the observer.
        """
        waiters, self._connected = self._connected, []
        for waiter in waiters:
            waiter.callback(host)
        observer = IChannelLinkObserver(self._protocol, None)
        if observer is None:
            return
        try:
            observer.linkEstablished(host)
        except Exception:
            self._observerRaised("linkEstablished")

    def linkLost(self, reason: Failure) -> None:
        """
        The link is gone, for C{reason}: tell the observer.
        """
        observer = IChannelLinkObserver(self._protocol, None)
        if observer is None:
            return
        try:
            observer.linkLost(reason)
        except Exception:
            self._observerRaised("linkLost")

    def closed(self, reason: Failure) -> None:
        """
        The connection ended, for C{reason}: fail the waiters with
        L{ChannelClosedError}.
        """
        waiters, self._connected = self._connected, []
        for waiter in waiters:
            waiter.errback(
                ChannelClosedError(
                    f"channel {self._name!r} closed: {reason.getErrorMessage()}"
                )
            )

    def _observerRaised(self, method: str) -> None:
        _log.failure(
            "channel {channel}: the application's {method} raised",
            channel=self._name,
            method=method,
        )
