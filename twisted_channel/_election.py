"""
Who hosts a channel: the process that holds the lock on its lock file.

The lock is C{flock(2)} on a descriptor this process keeps open for as long
as it hosts.  The kernel releases it when that descriptor is closed, which
it is when the process dies for any reason, SIGKILL included, so there is
no stale state to clean up and nothing to guess from process lists or pid
files.  Locks taken with C{flock} belong to an open file description, not
to a process, so two elections in one process exclude each other too.

A standby waits for the lock in a blocking C{flock} call on a thread of its
own: the kernel wakes it the instant the holder's descriptor is closed,
which is what makes failover take a millisecond rather than a polling
interval.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable

from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

from ._directory import openLockFile

_log = Logger()


class HostElection:
    """
    Take part in the election of one channel's host.

    @ivar lockPath: the channel's lock file.
    @ivar holding: whether this election holds the lock now.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        lockPath: str,
        onElected: Callable[[object], None],
        prepare: Callable[[], object] | None = None,
        discard: Callable[[object], None] | None = None,
    ) -> None:
        """
        @param onElected: called in the reactor thread when the lock is won
            by L{waitInBackground}, with what C{prepare} returned or raised
            (or L{None} without C{prepare}).
        @param prepare: called on the waiting thread, holding the lock, the
            moment it is won: the work that must not wait for the reactor
            (binding the socket, so that clients can connect at once).
        @param discard: undoes what C{prepare} made if the wait was
            cancelled meanwhile.
        """
        self._reactor = reactor
        self.lockPath = lockPath
        self._onElected = onElected
        self._prepare = prepare
        self._discard = discard
        self._descriptor: int | None = None
        # Each wait gets a token; a wait whose token is no longer current was
        # cancelled, and gives back the lock if it wins it.
        self._waitToken: object | None = None
        self._tokenLock = threading.Lock()

    @property
    def holding(self) -> bool:
        return self._descriptor is not None

    @property
    def waiting(self) -> bool:
        """
        Whether a background wait for the lock is under way.
        """
        return self._waitToken is not None

    def tryNow(self) -> bool:
        """
        Take the lock if it is free, without blocking.

        @return: whether this election holds the lock.
        @raise OSError: if the lock file cannot be opened.
        """
        if self._descriptor is not None:
            return True
        descriptor = openLockFile(self.lockPath)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return False
        except BaseException:
            os.close(descriptor)
            raise
        self._descriptor = descriptor
        # A background wait still blocked in the kernel gives the lock back
        # when it wins it, now that it is not needed.
        self.cancel()
        return True

    def waitInBackground(self) -> None:
        """
        Wait for the lock on a daemon thread, and call C{onElected} in the
        reactor thread once it is ours.  Does nothing if already holding or
        waiting.
        """
        if self._descriptor is not None or self._waitToken is not None:
            return
        token = object()
        with self._tokenLock:
            self._waitToken = token
        descriptor = openLockFile(self.lockPath)
        thread = threading.Thread(
            target=self._wait,
            args=(descriptor, token),
            name=f"twisted-channel election {self.lockPath}",
            daemon=True,
        )
        thread.start()

    def _wait(self, descriptor: int, token: object) -> None:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except BaseException as e:
            os.close(descriptor)
            self._reactor.callFromThread(self._waitFailed, token, e)
            return
        with self._tokenLock:
            cancelled = token is not self._waitToken
        if cancelled:
            # Give the lock straight back without waiting for the reactor,
            # which may be busy or stopped, so that a real standby wins it.
            os.close(descriptor)
            return
        prepared: object = None
        if self._prepare is not None:
            try:
                prepared = self._prepare()
            except Exception as e:
                prepared = e
        self._reactor.callFromThread(self._won, descriptor, token, prepared)

    def _won(self, descriptor: int, token: object, prepared: object) -> None:
        if token is not self._waitToken or self._descriptor is not None:
            if self._discard is not None and not isinstance(prepared, Exception):
                self._discard(prepared)
            os.close(descriptor)
            return
        self._waitToken = None
        self._descriptor = descriptor
        self._onElected(prepared)

    def _waitFailed(self, token: object, error: BaseException) -> None:
        if token is self._waitToken:
            self._waitToken = None
            _log.error(
                "waiting for the lock {lockPath} failed: {error}",
                lockPath=self.lockPath,
                error=error,
            )

    def cancel(self) -> None:
        """
        Stop waiting.  A wait already blocked in the kernel stays there until
        the lock is free, then gives it straight back.
        """
        with self._tokenLock:
            self._waitToken = None

    def release(self) -> None:
        """
        Give up the lock (and any wait for it).
        """
        self.cancel()
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            # Closing the only descriptor of this open file description
            # releases the flock and wakes one waiting standby.
            os.close(descriptor)
