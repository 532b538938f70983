"""
Who is told when a candidate's role changes: the Deferreds that
C{ChannelPort.whenHosting} and C{whenNotHosting} returned, and the role
observers.  The port decides when the role changes (L{_states.PORT}); this
only keeps the list of those waiting, and tells them.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ._address import HOST, ChannelAddress

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
