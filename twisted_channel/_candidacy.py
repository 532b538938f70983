"""
What a candidate arranges around its election, beside the election
itself: handing over when the reactor shuts down (L{ShutdownHandover}),
and trying the election again, after doubling delays, when winning it did
not end in hosting (L{ElectionRetry}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger()

#: Seconds the reactor's shutdown waits for a host to hand over (its links
#: to close with their last acknowledgements).
SHUTDOWN_HANDOVER_TIMEOUT = 1.0

#: Seconds a standby waits before trying again when it won the lock but
#: could not bind the socket: at first briefly (on a full file system, the
#: dead host's socket frees its inode only once the kernel has closed it,
#: a few milliseconds after the lock was won), then up to a second.
FIRST_RETRY_DELAY = 0.01
MAX_RETRY_DELAY = 1.0


class ShutdownHandover:
    """
    Withdraw a candidate when the reactor stops, so that a standby takes
    over at once and the links close with their last acknowledgements,
    rather than when the process has finished exiting.  The reactor waits
    for the handover, but at most L{SHUTDOWN_HANDOVER_TIMEOUT} seconds: a
    client that stopped reading would hold a link open.
    """

    def __init__(
        self,
        reactor: Any,
        name: str,
        withdraw: Callable[[], Deferred[Any] | None],
    ) -> None:
        """
        @param reactor: the reactor whose shutdown is awaited; one without
            system event triggers (a test's) is not.
        @param name: the channel's name, for the log.
        @param withdraw: what withdraws the candidate: returns a Deferred
            that fires when it is done, or C{None} if there was nothing to
            withdraw.
        """
        self._reactor = reactor
        self._name = name
        self._withdraw = withdraw
        self._trigger: object | None = None

    def arm(self) -> None:
        """
        Withdraw at the reactor's shutdown, unless that is arranged already.
        """
        if self._trigger is None:
            addTrigger = getattr(self._reactor, "addSystemEventTrigger", None)
            if addTrigger is not None:
                self._trigger = addTrigger("before", "shutdown", self._shuttingDown)

    def disarm(self) -> None:
        """
        Not at the reactor's shutdown after all: the candidate withdrew.
        """
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            self._reactor.removeSystemEventTrigger(trigger)

    def _shuttingDown(self) -> Deferred[Any] | None:
        self._trigger = None
        withdrawn = self._withdraw()
        if withdrawn is None:
            return None
        withdrawn.addTimeout(SHUTDOWN_HANDOVER_TIMEOUT, self._reactor)
        withdrawn.addErrback(
            lambda failure: _log.failure(
                "channel {channel}: handing over at shutdown",
                failure,
                channel=self._name,
            )
        )
        return withdrawn


class ElectionRetry:
    """
    Trying the election again later, after a delay that starts at
    L{FIRST_RETRY_DELAY} and doubles with each failure up to
    L{MAX_RETRY_DELAY}, until L{succeeded} starts it over.

    @ivar delay: the delay of the next retry.
    """

    def __init__(self, clock: IReactorTime, retry: Callable[[], None]) -> None:
        """
        @param retry: what tries the election again.
        """
        self._clock = clock
        self._retry = retry
        self._call: IDelayedCall | None = None
        self.delay = FIRST_RETRY_DELAY

    @property
    def pending(self) -> bool:
        """
        Whether a retry is to come.
        """
        return self._call is not None

    def later(self) -> float:
        """
        Retry after the current delay, and double it for the next time.

        @return: the delay.
        """
        delay = self.delay
        self.delay = min(delay * 2, MAX_RETRY_DELAY)
        self._call = self._clock.callLater(delay, self._due)
        return delay

    def succeeded(self) -> None:
        """
        The election ended in hosting: the next failure starts over.
        """
        self.delay = FIRST_RETRY_DELAY

    def cancel(self) -> None:
        """
        Forget the retry to come, if any.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _due(self) -> None:
        self._call = None
        self._retry()
