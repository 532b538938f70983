"""
Who hosts a channel: the process that holds the lock in its lock file.

On Linux the lock is a robust, process-shared pthread mutex that lives in
the lock file, mapped into each candidate's memory.  When a holder dies,
SIGKILL included, the kernel marks the mutex "owner died" and wakes one
waiter while the dead process is still being torn down: the first thing it
does on exit, before it frees the dead process's memory.  C{flock(2)} is
released only after that, when the dead process's descriptors are closed,
which takes 4 ms for an idle Twisted process and grows with the memory it
held (11 ms for 100 MB, measured); the robust mutex wakes a standby in about
0.2 ms whatever the size.  Other platforms use C{flock}: correct, only
slower to fail over.

Either way there is no stale state to clean up and nothing to guess from
process lists or pid files.  A standby waits for the lock in a blocking call
on a thread of its own, which wakes the instant the lock is free.

A robust mutex belongs to the thread that locked it, and the kernel frees
it when that thread ends.  A lock taken without waiting
(L{HostElection.tryNow}) belongs to the reactor thread, which lives as long
as the process hosts; a lock won by waiting is taken and held by a thread
dedicated to it (L{_Attempt}), which lives until the lock is given back.

The lock file also holds a record of the current host (L{LockRecord}): a
number each new host increments, its pid, and the pid of its predecessor if
that one died hosting.  A client reads it (L{readLockRecord}) when a socket
appears while it is still linked to a host, to know whether that host is
dead before the kernel gets round to closing the link.

Processes that share a channel must share a PID namespace: the mutex names
its owner by thread id.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct
import sys
import threading
from collections.abc import Callable
from typing import NamedTuple, Protocol

from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

from ._directory import UnsafeDirectoryError, openLockFile
from ._scheduling import askForShortSlice

_log = Logger()

#: The lock file's header: a magic string, the current term, the pid of
#: the process that began it, and the pid of its predecessor if that one
#: died holding the lock (else 0).
_HEADER = struct.Struct("=8sQQQ")
_MAGIC = b"twchlck1"
#: Where the mutex lives in the file, and the room it has: more than any
#: C library's C{pthread_mutex_t} needs (40 bytes on x86-64 glibc).
_MUTEX_OFFSET = 64
_MUTEX_ROOM = 192
_FILE_SIZE = 4096

_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ROBUST = 1


def _loadPthreads() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        library = ctypes.CDLL(None, use_errno=True)
        names = (
            "pthread_mutexattr_init",
            "pthread_mutexattr_setpshared",
            "pthread_mutexattr_setrobust",
            "pthread_mutexattr_destroy",
            "pthread_mutex_init",
            "pthread_mutex_lock",
            "pthread_mutex_trylock",
            "pthread_mutex_unlock",
            "pthread_mutex_consistent",
            "mmap",
            "munmap",
        )
        for name in names:
            function = getattr(library, name)
            function.restype = ctypes.c_int
            if name in ("pthread_mutexattr_setpshared", "pthread_mutexattr_setrobust"):
                function.argtypes = [ctypes.c_void_p, ctypes.c_int]
            elif name == "pthread_mutex_init":
                function.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            elif name == "mmap":
                function.restype = ctypes.c_void_p
                function.argtypes = [
                    ctypes.c_void_p,
                    ctypes.c_size_t,
                    ctypes.c_int,
                    ctypes.c_int,
                    ctypes.c_int,
                    ctypes.c_long,
                ]
            elif name == "munmap":
                function.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            else:
                function.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    return library


_pthreads = _loadPthreads()

#: Whether this platform elects with a robust mutex (else with C{flock}).
ROBUST_MUTEX = _pthreads is not None


class LockRecord(NamedTuple):
    """
    What the lock file says of the current host.

    @ivar term: how many hosts the channel has had.
    @ivar hostPid: the current (or last) host's pid.
    @ivar diedPid: the pid of the host before it, if it died hosting (else
        0): a client still linked to that process knows it is gone before
        the kernel closes the link.
    """

    term: int
    hostPid: int
    diedPid: int


def _decodeRecord(header: bytes) -> LockRecord | None:
    if len(header) < _HEADER.size or header[:8] != _MAGIC:
        return None
    _, term, hostPid, diedPid = _HEADER.unpack_from(header)
    return LockRecord(term, hostPid, diedPid)


def _nextRecord(previous: LockRecord | None, predecessorDied: bool) -> bytes:
    term = previous.term if previous is not None else 0
    diedPid = previous.hostPid if previous is not None and predecessorDied else 0
    return _HEADER.pack(_MAGIC, term + 1, os.getpid(), diedPid)


class _LockFile(Protocol):
    """
    One thread's handle on the lock.  Only the thread that acquired it may
    release it.
    """

    def acquire(self, blocking: bool) -> bool: ...

    def release(self) -> None: ...

    def beginTerm(self) -> int: ...

    def close(self) -> None: ...


class _MutexLockFile:
    """
    The lock file mapped into memory, holding a robust process-shared
    mutex.
    """

    def __init__(self, path: str) -> None:
        assert _pthreads is not None
        self._path = path
        self._predecessorDied = False
        descriptor = openLockFile(path)
        try:
            # A brief flock makes the first opener initialise the file once;
            # nobody holds flock for longer on this platform.
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            size = os.fstat(descriptor).st_size
            header = os.pread(descriptor, _HEADER.size, 0)
            fresh = header[:8] != _MAGIC
            if fresh:
                if size != 0 and header.strip(b"\0"):
                    raise UnsafeDirectoryError(
                        f"lock file {path!r} is not a twisted-channel lock file "
                        "(unknown header); remove it if no process uses the "
                        "channel"
                    )
                os.ftruncate(descriptor, _FILE_SIZE)
            elif size < _FILE_SIZE:
                raise UnsafeDirectoryError(
                    f"lock file {path!r} was truncated to {size} bytes; "
                    "remove it if no process uses the channel"
                )
            # Mapped with the C library, not Python's mmap, which unmaps when
            # collected (at interpreter exit, say): the kernel can free a
            # dead holder's mutex only while it is still mapped.
            address = _pthreads.mmap(
                None,
                _FILE_SIZE,
                mmap.PROT_READ | mmap.PROT_WRITE,
                mmap.MAP_SHARED,
                descriptor,
                0,
            )
            if address is None or address == ctypes.c_void_p(-1).value:
                error = ctypes.get_errno()
                raise OSError(error, f"cannot map lock file {path!r}")
            self._base: int = address
            self._header = (ctypes.c_char * _HEADER.size).from_address(address)
            self._address = address + _MUTEX_OFFSET
            if fresh:
                self._initialise()
        finally:
            # Explicitly: the mapping keeps the open file alive, so closing
            # the descriptor would not release the flock.
            fcntl.flock(descriptor, fcntl.LOCK_UN)
            os.close(descriptor)

    def _initialise(self) -> None:
        assert _pthreads is not None
        attributes = ctypes.create_string_buffer(64)
        _pthreads.pthread_mutexattr_init(attributes)
        try:
            _check(
                _pthreads.pthread_mutexattr_setpshared(
                    attributes, _PTHREAD_PROCESS_SHARED
                ),
                self._path,
            )
            _check(
                _pthreads.pthread_mutexattr_setrobust(
                    attributes, _PTHREAD_MUTEX_ROBUST
                ),
                self._path,
            )
            _check(_pthreads.pthread_mutex_init(self._address, attributes), self._path)
        finally:
            _pthreads.pthread_mutexattr_destroy(attributes)
        # The magic goes last: until it is there, openers initialise.
        self._header.raw = _HEADER.pack(_MAGIC, 0, 0, 0)

    def acquire(self, blocking: bool) -> bool:
        assert _pthreads is not None
        if blocking:
            result = _pthreads.pthread_mutex_lock(self._address)
        else:
            result = _pthreads.pthread_mutex_trylock(self._address)
            if result == errno.EBUSY:
                return False
        if result == errno.EOWNERDEAD:
            # The previous holder died holding it; its host is gone.
            _check(_pthreads.pthread_mutex_consistent(self._address), self._path)
            self._predecessorDied = True
            return True
        _check(result, self._path)
        self._predecessorDied = False
        return True

    def release(self) -> None:
        assert _pthreads is not None
        _check(_pthreads.pthread_mutex_unlock(self._address), self._path)

    def beginTerm(self) -> int:
        record = _nextRecord(_decodeRecord(self._header.raw), self._predecessorDied)
        self._header.raw = record
        return int(_HEADER.unpack(record)[1])

    def close(self) -> None:
        """
        Unmap the file; only once the mutex is not held through it.
        """
        assert _pthreads is not None
        base, self._base = self._base, 0
        if base:
            _pthreads.munmap(base, _FILE_SIZE)


class _FlockLockFile:
    """
    The lock file with C{flock}: each handle is an open file description of
    its own, so two in one process exclude each other.
    """

    def __init__(self, path: str) -> None:
        self._descriptor = openLockFile(path)

    def acquire(self, blocking: bool) -> bool:
        flags = fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB
        try:
            fcntl.flock(self._descriptor, flags)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        fcntl.flock(self._descriptor, fcntl.LOCK_UN)

    def beginTerm(self) -> int:
        # flock tells no death from a release; it comes too late to matter.
        record = _nextRecord(
            _decodeRecord(os.pread(self._descriptor, _HEADER.size, 0)), False
        )
        os.pwrite(self._descriptor, record, 0)
        return int(_HEADER.unpack(record)[1])

    def close(self) -> None:
        os.close(self._descriptor)


def _check(result: int, path: str) -> None:
    if result == errno.ENOTRECOVERABLE:
        raise OSError(
            result,
            f"the lock in {path!r} is unusable (its holder died and the next "
            "one gave it back inconsistent); remove the file once no process "
            "uses the channel",
        )
    if result != 0:
        raise OSError(result, f"{os.strerror(result)}: lock in {path!r}")


def openLock(path: str, robust: bool = ROBUST_MUTEX) -> _LockFile:
    """
    A new handle on the lock in the lock file C{path}.

    @raise UnsafeDirectoryError: if the file is not safe to use or not a
        lock file.
    @raise OSError: if it cannot be opened or mapped.
    """
    if robust:
        return _MutexLockFile(path)
    return _FlockLockFile(path)


def readLockRecord(path: str) -> LockRecord | None:
    """
    What the lock file C{path} says of the channel's current (or last)
    host, or L{None} if it cannot be read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError:
        return None
    try:
        header = os.pread(descriptor, _HEADER.size, 0)
    except OSError:
        return None
    finally:
        os.close(descriptor)
    return _decodeRecord(header)


def _takeTerm(lock: _LockFile, blocking: bool) -> int | None:
    """
    Take C{lock} and begin a hosting term in its record; return the term,
    or None if the lock was not free (without C{blocking}).  If the term
    cannot begin, the lock is released before the error is raised.
    """
    if not lock.acquire(blocking):
        return None
    try:
        return lock.beginTerm()
    except BaseException:
        lock.release()
        raise


class _Attempt:
    """
    A wait for the lock, made and (once won) held by a thread of its own,
    which gives the lock back when asked.
    """

    def __init__(self, lock: _LockFile) -> None:
        self._lock = lock
        self.won = False
        self.term = 0
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self._giveBack = threading.Event()
        self._givenBack = threading.Event()

    def run(self, onDecided: Callable[[_Attempt], None]) -> None:
        """
        The thread's body: wait for the lock, then hold it until
        L{giveBack}.  C{onDecided} is called on this thread once the lock
        is won or the wait failed.
        """
        lock = self._lock
        # Once woken by a dead host's exit, run before it frees its memory.
        askForShortSlice()
        try:
            try:
                term = _takeTerm(lock, blocking=True)
                self.won = term is not None
                self.term = term or 0
            except BaseException as e:
                self.error = e
            onDecided(self)
            if self.won:
                self._giveBack.wait()
                lock.release()
        finally:
            lock.close()
            self._givenBack.set()

    def giveBack(self, wait: bool = True) -> None:
        """
        Ask the holding thread to release the lock; with C{wait}, return
        once it has.
        """
        self._giveBack.set()
        if wait and threading.current_thread() is not self.thread:
            self._givenBack.wait(5.0)

    def close(self) -> None:
        """
        Close the handle of an attempt whose thread never ran.
        """
        self._lock.close()


class _Holding:
    """
    The lock, taken without waiting by the thread that made this (the
    reactor thread), which holds it for as long as it runs: it alone may
    give it back.
    """

    def __init__(self, lock: _LockFile, term: int) -> None:
        self._lock = lock
        self.term = term
        self._owner = threading.get_ident()

    def giveBack(self) -> None:
        if threading.get_ident() != self._owner:
            raise RuntimeError(
                "the channel's lock must be released by the thread that took "
                "it (the reactor thread)"
            )
        try:
            self._lock.release()
        finally:
            self._lock.close()


class HostElection:
    """
    Take part in the election of one channel's host.

    @ivar lockPath: the channel's lock file.
    @ivar term: the term this election began when it won, while it holds
        the lock.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        lockPath: str,
        onElected: Callable[[object], None],
        prepare: Callable[[], object] | None = None,
        discard: Callable[[object], None] | None = None,
        robust: bool = ROBUST_MUTEX,
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
        @param robust: elect with a robust mutex rather than C{flock}; every
            process of a channel must use the same.
        """
        self._reactor = reactor
        self.lockPath = lockPath
        self._onElected = onElected
        self._prepare = prepare
        self._discard = discard
        self._robust = robust
        self._held: _Attempt | _Holding | None = None
        # The background wait under way, if any.  A wait that is no longer
        # current was cancelled, and gives back the lock if it wins it.
        self._waiting: _Attempt | None = None
        self._waitingLock = threading.Lock()

    @property
    def holding(self) -> bool:
        return self._held is not None

    @property
    def waiting(self) -> bool:
        """
        Whether a background wait for the lock is under way.
        """
        return self._waiting is not None

    @property
    def term(self) -> int | None:
        return self._held.term if self._held is not None else None

    def waitInBackground(self) -> None:
        """
        Wait for the lock on a daemon thread, and call C{onElected} in the
        reactor thread once it is ours.  Does nothing if already holding or
        waiting.
        """
        if self._held is not None or self._waiting is not None:
            return
        # Opened here, so that a file that cannot be used raises at once.
        attempt = _Attempt(openLock(self.lockPath, self._robust))
        thread = threading.Thread(
            target=attempt.run,
            args=(self._decidedInBackground,),
            name=f"twisted-channel election {self.lockPath}",
            daemon=True,
        )
        attempt.thread = thread
        with self._waitingLock:
            self._waiting = attempt
        try:
            thread.start()
        except BaseException:
            self.cancel()
            attempt.close()
            raise

    def tryNow(self) -> bool:
        """
        Take the lock if it is free, without blocking.  The lock then
        belongs to the calling thread (the reactor thread), which must be
        the one to L{release} it.

        @return: whether this election holds the lock.
        @raise OSError: if the lock file cannot be opened.
        """
        if self._held is not None:
            return True
        lock = openLock(self.lockPath, self._robust)
        try:
            term = _takeTerm(lock, blocking=False)
        except BaseException:
            lock.close()
            raise
        if term is None:
            lock.close()
            return False
        self._held = _Holding(lock, term)
        # A background wait still blocked in the kernel gives the lock back
        # when it wins it, now that it is not needed.
        self.cancel()
        return True

    def _decidedInBackground(self, attempt: _Attempt) -> None:
        """
        On the attempt's thread, the moment it won (or failed).
        """
        if attempt.error is not None:
            self._reactor.callFromThread(self._waitFailed, attempt, attempt.error)
            return
        with self._waitingLock:
            cancelled = attempt is not self._waiting
        if cancelled:
            # Give the lock straight back without waiting for the reactor,
            # which may be busy or stopped, so that a real standby wins it.
            attempt.giveBack(wait=False)
            return
        prepared: object = None
        if self._prepare is not None:
            try:
                prepared = self._prepare()
            except Exception as e:
                prepared = e
        self._reactor.callFromThread(self._won, attempt, prepared)

    def _won(self, attempt: _Attempt, prepared: object) -> None:
        if attempt is not self._waiting or self._held is not None:
            if self._discard is not None and not isinstance(prepared, Exception):
                self._discard(prepared)
            attempt.giveBack()
            return
        with self._waitingLock:
            self._waiting = None
        self._held = attempt
        self._onElected(prepared)

    def _waitFailed(self, attempt: _Attempt, error: BaseException) -> None:
        if attempt is self._waiting:
            self._waiting = None
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
        with self._waitingLock:
            self._waiting = None

    def release(self) -> None:
        """
        Give up the lock (and any wait for it).  When this returns, the lock
        is free for the next host.
        """
        self.cancel()
        held, self._held = self._held, None
        if held is not None:
            held.giveBack()
