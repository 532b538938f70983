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

The lock file begins with a header that says what it is: a magic string,
the format's version and the mechanism (robust mutex or C{flock}) that its
processes elect with.  A process that finds another format or another
mechanism refuses to take part (L{ChannelLockMismatchError}) rather than
lock in a way the others do not see, which would elect a second host.  A
lock file of the format before versions had a header (C{twchlck1}, which
did not say its mechanism) is made one of this format when no process
holds it, and refused while one does (L{_openChecked}).

The header is followed by a record of the current host (L{LockRecord}): a
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
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

from . import _process
from ._directory import UnsafeDirectoryError, openLockFile
from ._scheduling import askForShortSlice

_log = Logger()

#: The lock file's header: a magic string, the format's version and the
#: mechanism; then the record: the current term, the pid of the process that
#: began it, and the pid of its predecessor if that one died holding the
#: lock (else 0).
_IDENTITY = struct.Struct("=8sII")
_RECORD = struct.Struct("=QQQ")
_HEADER_SIZE = _IDENTITY.size + _RECORD.size
_MAGIC = b"twchlock"
#: The version of the lock file's format that this package reads and writes.
LOCK_FORMAT_VERSION = 2
#: The magic of the format before versions (1): a record after it, no word
#: of the mechanism.
_MAGIC_1 = b"twchlck1"

#: The mechanisms, as the header records them.
MUTEX = 1
FLOCK = 2
_MECHANISMS = {MUTEX: "a robust mutex", FLOCK: "flock"}

#: Where the mutex lives in the file, and the room it has: more than any
#: C library's C{pthread_mutex_t} needs (40 bytes on x86-64 glibc).
_MUTEX_OFFSET = 64
_MUTEX_ROOM = 192
_FILE_SIZE = 4096

#: Seconds an opener waits for a lock file that another process is making
#: (an instant's work) before it takes the file as held by a process of
#: the format before versions, with C{flock}, for as long as it hosts.
_MAKING_PATIENCE = 2.0

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
#: Tests force C{flock} on Linux, to run one process per mechanism, with the
#: environment variable C{_TWISTED_CHANNEL_LOCK=flock}; it is not a setting
#: for applications: every process of a channel must elect the same way.
ROBUST_MUTEX = (
    _pthreads is not None and os.environ.get("_TWISTED_CHANNEL_LOCK") != "flock"
)


class ChannelLockMismatchError(UnsafeDirectoryError):
    """
    The channel's lock file was made by, or is in use by, processes that
    elect the host otherwise than this one: another version of the lock
    file's format, or another locking mechanism (a robust mutex or
    C{flock}).  This process refuses to take part, since a lock the others
    do not see would make it a second host.

    @ivar path: the lock file.
    @ivar found: what the file says, or what holds it.
    @ivar expected: what this process would have needed.
    """

    def __init__(self, path: str, found: str, expected: str) -> None:
        self.path = path
        self.found = found
        self.expected = expected
        super().__init__(
            f"lock file {path!r}: found {found}, expected {expected}; every "
            "process of a channel must run a version of twisted-channel with "
            "the same lock format and elect with the same mechanism"
        )


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


def _describe(mechanism: int) -> str:
    return f"format {LOCK_FORMAT_VERSION} with {_MECHANISMS[mechanism]}"


def _identify(header: bytes) -> tuple[int, int] | None:
    """
    The format version and mechanism a header of this format's magic
    records; None for any other header (empty, another magic, cut short).
    """
    if len(header) < _IDENTITY.size or header[:8] != _MAGIC:
        return None
    _, version, mechanism = _IDENTITY.unpack_from(header)
    return version, mechanism


def _checkIdentity(path: str, header: bytes, mechanism: int) -> None:
    """
    Make sure the header of the lock file C{path} is one of this format
    with C{mechanism}.

    @raise ChannelLockMismatchError: if it is anything else.
    """
    expected = _describe(mechanism)
    identity = _identify(header)
    if identity is None:
        if header[:8] == _MAGIC_1:
            found = "format 1 (an earlier version of twisted-channel)"
        else:
            found = (
                f"an unknown header {header[:8]!r} (not a twisted-channel lock file)"
            )
        raise ChannelLockMismatchError(path, found, expected)
    version, theirs = identity
    if version != LOCK_FORMAT_VERSION:
        newer = "newer" if version > LOCK_FORMAT_VERSION else "earlier"
        raise ChannelLockMismatchError(
            path, f"format {version} (a {newer} version of twisted-channel)", expected
        )
    if theirs != mechanism:
        found = (
            _describe(theirs)
            if theirs in _MECHANISMS
            else f"format {version} with an unknown mechanism ({theirs})"
        )
        raise ChannelLockMismatchError(path, found, expected)


#: The record of a lock file before any term.
_NO_TERM = _RECORD.pack(0, 0, 0)


def _header(mechanism: int, record: bytes = _NO_TERM) -> bytes:
    """
    The header of a new lock file, with C{record} (by default, before any
    term).
    """
    return _IDENTITY.pack(_MAGIC, LOCK_FORMAT_VERSION, mechanism) + record


def _decodeRecord(header: bytes) -> LockRecord | None:
    identity = _identify(header)
    if identity is None or identity[0] != LOCK_FORMAT_VERSION:
        return None
    if len(header) < _HEADER_SIZE:
        return None
    return LockRecord(*_RECORD.unpack_from(header, _IDENTITY.size))


def _nextRecord(previous: LockRecord | None, predecessorDied: bool) -> bytes:
    """
    The record of a new term, after C{previous}: to be written at offset
    C{_IDENTITY.size}.
    """
    term = previous.term if previous is not None else 0
    diedPid = previous.hostPid if previous is not None and predecessorDied else 0
    return _RECORD.pack(term + 1, _process.pid, diedPid)


#: What C{mmap} returns when it fails.
_MAP_FAILED = ctypes.c_void_p(-1).value


def _mapLockFile(descriptor: int, path: str) -> int:
    """
    Map the lock file open at C{descriptor}, shared, for its mutex.

    Mapped with the C library, not Python's mmap, which unmaps when
    collected (at interpreter exit, say): the kernel can free a dead
    holder's mutex only while it is still mapped.

    @return: the address of the mapping (C{_FILE_SIZE} bytes).
    @raise OSError: if it cannot be mapped.
    """
    assert _pthreads is not None
    address = _pthreads.mmap(
        None,
        _FILE_SIZE,
        mmap.PROT_READ | mmap.PROT_WRITE,
        mmap.MAP_SHARED,
        descriptor,
        0,
    )
    if address is None or address == _MAP_FAILED:
        error = ctypes.get_errno()
        raise OSError(error, f"cannot map lock file {path!r}")
    return int(address)


def _earlierFormatHeld(descriptor: int, path: str) -> bool:
    """
    Whether a process holds a lock file of format 1 (C{twchlck1}) through
    its robust mutex.  Called holding the file's C{flock}, which a host of
    format 1 that elects with C{flock} holds for as long as it hosts.

    A standby of format 1 waits only while a host holds the lock (it takes
    a free one at once), so a free lock means that no process of format 1
    takes part.
    """
    size = os.fstat(descriptor).st_size
    if size < _FILE_SIZE:
        # Only a record: written with flock, which we hold.
        return False
    if _pthreads is None:
        # Its mutex cannot be looked at here: assume the worst.
        return True
    address = _mapLockFile(descriptor, path)
    try:
        mutex = address + _MUTEX_OFFSET
        result = _pthreads.pthread_mutex_trylock(mutex)
        if result == errno.EBUSY:
            return True
        if result == errno.EOWNERDEAD:
            _pthreads.pthread_mutex_consistent(mutex)
            result = 0
        if result == 0:
            _pthreads.pthread_mutex_unlock(mutex)
        # Anything else (never initialised, not recoverable): nobody can
        # hold it.
        return False
    finally:
        _pthreads.munmap(address, _FILE_SIZE)


def _openChecked(
    path: str, mechanism: int, make: Callable[[int], bytes | None] | None = None
) -> int:
    """
    Open the lock file C{path} for electing with C{mechanism}: make it a lock
    file of this format if it is not one yet (empty, or of format 1 and
    held by nobody), else check that it is one, with the same mechanism.

    A file made already (its header, written last, names this format) is
    only checked, without a C{flock}.  Otherwise a brief C{flock} makes one
    opener at a time make or check the file.  It is busy for long only
    where a host elects with C{flock} itself; the header is then complete,
    and read without it.

    @param make: writes what the mechanism keeps in a new file (the mutex),
        given the descriptor, before the header is written; returns the
        record to write with it, if it began a term (else L{None}).
    @return: the open descriptor.
    @raise ChannelLockMismatchError: if the file is of another format or
        mechanism, or of format 1 and in use.
    @raise UnsafeDirectoryError: if it is not a regular file, or was cut
        short.
    """
    descriptor, info = openLockFile(path)
    made = False
    try:
        if info is not None and info.st_size >= _FILE_SIZE:
            header = os.pread(descriptor, _HEADER_SIZE, 0)
            if _identify(header) is not None:
                _checkIdentity(path, header, mechanism)
                return descriptor
        deadline: float | None = None
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                header = os.pread(descriptor, _HEADER_SIZE, 0)
                if header.strip(b"\0") and header[:8] != _MAGIC_1:
                    _checkIdentity(path, header, mechanism)
                    break
                # Being made by another opener, or held by a host of format
                # 1 that elects with flock.
                if deadline is None:
                    deadline = time.monotonic() + _MAKING_PATIENCE
                elif time.monotonic() > deadline:
                    raise ChannelLockMismatchError(
                        path,
                        "format 1 (an earlier version of twisted-channel), held "
                        "with flock by a running process",
                        _describe(mechanism),
                    ) from None
                time.sleep(0.002)
                continue
            try:
                made = _makeOrCheck(descriptor, path, mechanism, make)
            finally:
                # Explicitly: a mapping of the file keeps it open, so closing
                # the descriptor would not release the flock.
                fcntl.flock(descriptor, fcntl.LOCK_UN)
            break
        # A file made here was made its full size, under the flock.
        if not made and os.fstat(descriptor).st_size < _FILE_SIZE:
            raise UnsafeDirectoryError(
                f"lock file {path!r} was truncated to "
                f"{os.fstat(descriptor).st_size} bytes; remove it if no process "
                "uses the channel"
            )
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _makeOrCheck(
    descriptor: int,
    path: str,
    mechanism: int,
    make: Callable[[int], bytes | None] | None,
) -> bool:
    """
    Holding the lock file's C{flock}: make it a lock file of this format,
    if it is empty or of format 1 and unused, else check its header.

    @return: whether it made it.
    """
    header = os.pread(descriptor, _HEADER_SIZE, 0)
    if header[:8] == _MAGIC_1:
        if _earlierFormatHeld(descriptor, path):
            raise ChannelLockMismatchError(
                path,
                "format 1 (an earlier version of twisted-channel), held by a "
                "running process",
                _describe(mechanism),
            )
        _log.info(
            "lock file {lockPath} of format 1, which nobody holds, is made one "
            "of format {version}",
            lockPath=path,
            version=LOCK_FORMAT_VERSION,
        )
        os.pwrite(descriptor, b"\0" * _HEADER_SIZE, 0)
        header = b""
    if header.strip(b"\0"):
        _checkIdentity(path, header, mechanism)
        return False
    # Not cut to nothing first: a process of format 1 may have it mapped.
    os.ftruncate(descriptor, _FILE_SIZE)
    record = make(descriptor) if make is not None else None
    # The header goes last: until it is there, openers make the file.
    os.pwrite(descriptor, _header(mechanism, record or _NO_TERM), 0)
    return True


class _LockFile(Protocol):
    """
    One thread's handle on the lock.  Only the thread that acquired it may
    release it.
    """

    def acquire(self, blocking: bool) -> bool: ...

    def release(self) -> None: ...

    def beginTerm(self) -> int: ...

    def close(self) -> None: ...


#: The attributes every lock file's mutex is made with (process-shared,
#: robust), made once per process: the same for every file, and never
#: destroyed, so that each new lock file costs one C call instead of six.
_attributes: ctypes.Array[ctypes.c_char] | None = None


def _mutexAttributes(path: str) -> ctypes.Array[ctypes.c_char]:
    """
    The process's mutex attributes, made on first use.

    @param path: the lock file being made, named if they cannot be.
    @raise OSError: if the C library refuses them.
    """
    global _attributes
    if _attributes is not None:
        return _attributes
    assert _pthreads is not None
    attributes = ctypes.create_string_buffer(64)
    _check(_pthreads.pthread_mutexattr_init(attributes), path)
    try:
        _check(
            _pthreads.pthread_mutexattr_setpshared(attributes, _PTHREAD_PROCESS_SHARED),
            path,
        )
        _check(
            _pthreads.pthread_mutexattr_setrobust(attributes, _PTHREAD_MUTEX_ROBUST),
            path,
        )
    except BaseException:
        _pthreads.pthread_mutexattr_destroy(attributes)
        raise
    # Two threads making their first lock file at once each make a set; the
    # one kept is as good as the other.
    _attributes = attributes
    return attributes


class _MutexLockFile:
    """
    The lock file mapped into memory, holding a robust process-shared
    mutex.
    """

    def __init__(self, path: str, claim: bool = False) -> None:
        """
        @param claim: if this makes the file, take the lock in it before
            any other process can see it, and begin the first term (see
            L{openLock}).
        """
        assert _pthreads is not None
        self._path = path
        self._predecessorDied = False
        self._base = 0
        # The term begun while making the file, until beginTerm hands it on.
        self._claimedTerm = 0
        make = self._initialiseClaimed if claim else self._initialise
        try:
            descriptor = _openChecked(path, MUTEX, make)
            try:
                if not self._base:
                    self._map(descriptor)
            finally:
                os.close(descriptor)
        except BaseException:
            if self._claimedTerm:
                # Not left held in memory about to be unmapped.
                self._claimedTerm = 0
                _pthreads.pthread_mutex_unlock(self._address)
            self.close()
            raise

    def _map(self, descriptor: int) -> None:
        assert _pthreads is not None
        address = _mapLockFile(descriptor, self._path)
        self._base = address
        self._address = address + _MUTEX_OFFSET

    def _initialise(self, descriptor: int) -> None:
        """
        Make the mutex in a new lock file, which C{descriptor} holds.
        """
        assert _pthreads is not None
        self._map(descriptor)
        _check(
            _pthreads.pthread_mutex_init(self._address, _mutexAttributes(self._path)),
            self._path,
        )

    def _initialiseClaimed(self, descriptor: int) -> bytes:
        """
        Make the mutex in a new lock file and take it, before the header
        that lets other processes use it is written: nobody else can hold
        it.  The first term is this process's.

        @return: the first term's record, written with the header.
        """
        assert _pthreads is not None
        self._initialise(descriptor)
        _check(_pthreads.pthread_mutex_trylock(self._address), self._path)
        self._claimedTerm = 1
        return _RECORD.pack(1, _process.pid, 0)

    def acquire(self, blocking: bool) -> bool:
        assert _pthreads is not None
        if self._claimedTerm:
            return True
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
        term, self._claimedTerm = self._claimedTerm, 0
        if term:
            return term
        header = ctypes.string_at(self._base, _HEADER_SIZE)
        record = _nextRecord(_decodeRecord(header), self._predecessorDied)
        ctypes.memmove(self._base + _IDENTITY.size, record, len(record))
        return int(_RECORD.unpack(record)[0])

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
        self._descriptor = _openChecked(path, FLOCK)

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
        header = os.pread(self._descriptor, _HEADER_SIZE, 0)
        record = _nextRecord(_decodeRecord(header), False)
        os.pwrite(self._descriptor, record, _IDENTITY.size)
        return int(_RECORD.unpack(record)[0])

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


def openLock(path: str, robust: bool = ROBUST_MUTEX, claim: bool = False) -> _LockFile:
    """
    A new handle on the lock in the lock file C{path}.

    @param claim: with a robust mutex, if this call makes the file, take
        the lock before the file's header lets other processes use it, and
        write the first term's record with the header: the handle's
        C{acquire} then returns at once, and its C{beginTerm} that term.
        For the calling thread only, which is to take the lock at once.

    @raise ChannelLockMismatchError: if the file is of another format or
        mechanism (see L{_openChecked}).
    @raise UnsafeDirectoryError: if the file is not safe to use.
    @raise OSError: if it cannot be opened or mapped.
    """
    if robust:
        return _MutexLockFile(path, claim)
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
        header = os.pread(descriptor, _HEADER_SIZE, 0)
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
        lock = openLock(self.lockPath, self._robust, claim=True)
        try:
            term = _takeTerm(lock, blocking=False)
        except BaseException:
            lock.close()
            raise
        if term is None:
            lock.close()
            return False
        self._held = _Holding(lock, term)
        if self._waiting is not None:
            # A background wait still blocked in the kernel gives the lock
            # back when it wins it, now that it is not needed.
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
