"""
The lock election: two elections exclude each other (also in one process),
a waiting standby wins the moment the holder lets go or dies, its early work
is handed over or undone, and the lock file records who hosts and whether
the previous host died.  Each test runs with the robust mutex (where the
platform has one) and with flock.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from twisted_channel import ChannelLockMismatchError, _election
from twisted_channel._directory import UnsafeDirectoryError
from twisted_channel._election import (
    _FILE_SIZE,
    _IDENTITY,
    _MAGIC,
    _MAGIC_1,
    FLOCK,
    LOCK_FORMAT_VERSION,
    MUTEX,
    ROBUST_MUTEX,
    HostElection,
    _header,
    _takeTerm,
    readLockRecord,
)

pytestmark = pytest.mark.timeout(60)

KINDS = [
    pytest.param(
        True,
        id="robust-mutex",
        marks=pytest.mark.skipif(
            not ROBUST_MUTEX, reason="no robust process-shared mutexes here"
        ),
    ),
    pytest.param(False, id="flock"),
]


@pytest.fixture(params=KINDS)
def robust(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


class CallingReactor:
    """
    Runs what a thread hands to the reactor at once, on that thread; sets
    C{done}, if given, afterwards.
    """

    def __init__(self, done: threading.Event | None = None) -> None:
        self.done = done

    def callFromThread(self, f: object, *args: object) -> None:
        f(*args)  # type: ignore[operator]
        if self.done is not None:
            self.done.set()


def lockPath(directory: str) -> str:
    return os.path.join(directory, "jobs.lock")


def mechanism(robust: bool) -> int:
    return MUTEX if robust else FLOCK


@pytest_twisted.ensureDeferred
async def test_standbyWinsWhenHolderReleases(
    channelDirectory: str, robust: bool
) -> None:
    from twisted.internet import reactor

    won: Deferred[object] = Deferred()
    preparedOn: list[str] = []

    def prepare() -> str:
        preparedOn.append(threading.current_thread().name)
        return "bound early"

    path = lockPath(channelDirectory)
    holder = HostElection(reactor, path, lambda p: None, robust=robust)
    standby = HostElection(reactor, path, won.callback, prepare=prepare, robust=robust)
    assert holder.tryNow()
    assert holder.term == 1
    assert readLockRecord(path) == (1, os.getpid(), 0)
    assert not standby.tryNow()
    standby.waitInBackground()
    assert standby.waiting
    holder.release()
    assert holder.term is None
    result = await won.addTimeout(5, reactor)
    assert result == "bound early"
    assert standby.holding
    assert not standby.waiting
    assert standby.term == 2
    # A release is not a death: the new term names no dead predecessor.
    assert readLockRecord(path) == (2, os.getpid(), 0)
    assert preparedOn and preparedOn[0].startswith("twisted-channel election")
    assert not holder.tryNow()
    standby.release()
    assert holder.tryNow()
    holder.release()


@pytest_twisted.ensureDeferred
async def test_cancelledWaitGivesBack(channelDirectory: str, robust: bool) -> None:
    from twisted.internet import reactor, task

    discarded: list[object] = []
    elected: list[object] = []
    path = lockPath(channelDirectory)
    holder = HostElection(reactor, path, lambda p: None, robust=robust)
    standby = HostElection(
        reactor,
        path,
        elected.append,
        prepare=lambda: "made",
        discard=discarded.append,
        robust=robust,
    )
    assert holder.tryNow()
    standby.waitInBackground()
    standby.cancel()
    holder.release()
    # The cancelled thread gives the lock straight back.
    for _ in range(100):
        if holder.tryNow():
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert holder.holding
    # Cancelled before it won: nothing was made, nothing elected.
    assert elected == [] and discarded == []
    holder.release()


def test_prepareErrorIsHandedOver(channelDirectory: str, robust: bool) -> None:
    """
    What prepare raises reaches onElected instead of being lost on the
    thread (checked without a reactor: _won is called directly).
    """
    received: list[object] = []

    def failing() -> object:
        raise OSError("no room")

    path = lockPath(channelDirectory)
    holder = HostElection(CallingReactor(), path, lambda p: None, robust=robust)
    standby = HostElection(
        CallingReactor(), path, received.append, prepare=failing, robust=robust
    )
    assert holder.tryNow()
    standby.waitInBackground()
    holder.release()
    for _ in range(500):
        if received:
            break
        threading.Event().wait(0.01)
    [error] = received
    assert isinstance(error, OSError)
    standby.release()
    assert holder.tryNow()
    holder.release()


#: A process that takes the lock (at once, or by waiting for it after a
#: first holder here lets go), says so, and then waits to be killed or, told
#: to on its standard input, exits the normal way, holding it.
HOLDER = """
import sys, threading
from twisted_channel._election import HostElection
class Reactor:
    def callFromThread(self, f, *args):
        f(*args)
path, robust, how = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
won = threading.Event()
election = HostElection(Reactor(), path, lambda p: won.set(), robust=robust)
if how == "waiting":
    first = HostElection(Reactor(), path, print, robust=robust)
    assert first.tryNow()
    election.waitInBackground()
    first.release()
    won.wait(10)
    print("held" if election.holding else "refused", flush=True)
else:
    print("held" if election.tryNow() else "refused", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("how", ["at once", "waiting"])
@pytest.mark.parametrize("end", ["SIGKILL", "exit"])
def test_standbyWinsWhenHolderProcessEnds(
    channelDirectory: str, robust: bool, how: str, end: str
) -> None:
    """
    A real process holding the lock is SIGKILLed, or exits without
    releasing it (the interpreter tears down its objects first): the
    standby here wins.  With the robust mutex, which tells a death from a
    release, the record names the host that ended.
    """
    path = lockPath(channelDirectory)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path, "1" if robust else "0", how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "held"
        record = readLockRecord(path)
        assert record is not None and record.hostPid == holder.pid
        won = threading.Event()

        standby = HostElection(CallingReactor(won), path, lambda p: None, robust=robust)
        assert not standby.tryNow()
        standby.waitInBackground()
        if end == "SIGKILL":
            os.kill(holder.pid, signal.SIGKILL)
        else:
            holder.stdin.write("exit\n")
            holder.stdin.flush()
        assert won.wait(10), "the standby did not win"
        assert standby.holding
        record = readLockRecord(path)
        assert record is not None
        # Terms: the holder's first host (when it waited), the holder, us.
        expectedTerm = 2 if how == "at once" else 3
        assert (record.term, record.hostPid) == (expectedTerm, os.getpid())
        assert record.diedPid == (holder.pid if robust else 0)
        standby.release()
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(10)
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


def test_twoHoldersInOneProcessExclude(channelDirectory: str, robust: bool) -> None:
    """
    Two elections in one process, driven from one thread, exclude each
    other: each lock is held by a thread of its own.
    """
    path = lockPath(channelDirectory)
    first = HostElection(object(), path, lambda p: None, robust=robust)  # type: ignore[arg-type]
    second = HostElection(object(), path, lambda p: None, robust=robust)  # type: ignore[arg-type]
    assert first.tryNow()
    assert first.tryNow()
    assert not second.tryNow()
    first.release()
    first.release()
    assert second.tryNow()
    second.release()


needsMutex = pytest.mark.skipif(
    not ROBUST_MUTEX, reason="no robust process-shared mutexes here"
)


@needsMutex
def test_aFileMadeToHostAtOnceIsHeldBeforeItIsSeen(channelDirectory: str) -> None:
    """
    A handle that makes the lock file to take the lock at once (C{claim},
    as L{HostElection.tryNow} asks) holds it from before the header lets
    any other process use it, and writes the first term with the header:
    another handle finds it held, and the record names this process.
    """
    path = lockPath(channelDirectory)
    lock = _election.openLock(path, claim=True)
    other = _election.openLock(path)
    try:
        assert readLockRecord(path) == (1, os.getpid(), 0)
        assert not other.acquire(blocking=False)
        assert _takeTerm(lock, blocking=False) == 1
        assert readLockRecord(path) == (1, os.getpid(), 0)
        assert not other.acquire(blocking=False)
        lock.release()
        assert _takeTerm(other, blocking=False) == 2
        other.release()
    finally:
        lock.close()
        other.close()


@needsMutex
def test_aFileMadeAlreadyIsNotClaimed(channelDirectory: str) -> None:
    """
    A handle asked to claim a lock file made already takes the lock only
    as any other would: not while another holds it.
    """
    path = lockPath(channelDirectory)
    holder = HostElection(object(), path, lambda p: None)  # type: ignore[arg-type]
    assert holder.tryNow()
    lock = _election.openLock(path, claim=True)
    try:
        assert _takeTerm(lock, blocking=False) is None
    finally:
        lock.close()
    holder.release()
    assert readLockRecord(path) == (1, os.getpid(), 0)


def test_aFileMadeAlreadyIsOpenedWithoutFlock(
    channelDirectory: str, robust: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A lock file at its full size with a header of this format is only
    checked: its header is written last, so it is ready, and no C{flock}
    is taken to make it (with the C{flock} mechanism, only the election's
    own).
    """
    path = lockPath(channelDirectory)
    first = HostElection(object(), path, lambda p: None, robust=robust)  # type: ignore[arg-type]
    assert first.tryNow()
    first.release()
    flocks: list[int] = []
    flock = fcntl.flock

    def recordingFlock(descriptor: int, operation: int) -> None:
        flocks.append(operation)
        flock(descriptor, operation)

    monkeypatch.setattr(_election.fcntl, "flock", recordingFlock)
    second = HostElection(object(), path, lambda p: None, robust=robust)  # type: ignore[arg-type]
    assert second.tryNow()
    assert readLockRecord(path) == (2, os.getpid(), 0)
    second.release()
    if robust:
        assert flocks == []
    else:
        assert flocks == [fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_UN]


@pytest.mark.parametrize(
    "content, error, what",
    [
        (
            b"#!/bin/sh\nrm -rf /\n",
            ChannelLockMismatchError,
            "not a twisted-channel lock file",
        ),
        (
            _header(MUTEX) + b"\0" * 100,
            UnsafeDirectoryError,
            "truncated to 140 bytes",
        ),
    ],
)
def test_foreignLockFileIsRefused(
    channelDirectory: str,
    robust: bool,
    content: bytes,
    error: type[Exception],
    what: str,
) -> None:
    """
    A lock file that is not one of ours, or was cut short, is refused with
    an error naming it, and left as it is.
    """
    path = lockPath(channelDirectory)
    content = content.replace(_header(MUTEX), _header(mechanism(robust)))
    with open(path, "wb") as f:
        f.write(content)
    election = HostElection(object(), path, lambda p: None, robust=robust)  # type: ignore[arg-type]
    with pytest.raises(error, match=what) as caught:
        election.tryNow()
    assert path in str(caught.value)
    with pytest.raises(error, match=what):
        election.waitInBackground()
    assert not election.waiting
    with open(path, "rb") as f:
        assert f.read() == content


def test_emptyLockFileIsMadeOne(channelDirectory: str) -> None:
    """
    An empty file (left by an interrupted first opener, or by an earlier
    version, which used flock alone) becomes a lock file.
    """
    path = lockPath(channelDirectory)
    open(path, "wb").close()
    assert readLockRecord(path) is None
    election = HostElection(object(), path, lambda p: None)  # type: ignore[arg-type]
    assert election.tryNow()
    assert readLockRecord(path) == (1, os.getpid(), 0)
    election.release()


def test_unreadableRecordIsNone(channelDirectory: str) -> None:
    path = lockPath(channelDirectory)
    assert readLockRecord(path) is None
    os.symlink("/etc/passwd", path)
    assert readLockRecord(path) is None


class FailingRecordLock:
    """
    A lock whose record cannot be written: it records what is done to it.
    """

    def __init__(self, free: bool) -> None:
        self.free = free
        self.calls: list[str] = []

    def acquire(self, blocking: bool) -> bool:
        self.calls.append(f"acquire blocking={blocking}")
        return self.free or blocking

    def release(self) -> None:
        self.calls.append("release")

    def beginTerm(self) -> int:
        self.calls.append("beginTerm")
        raise OSError(28, "No space left on device")


def test_termThatCannotBeginGivesTheLockBack() -> None:
    """
    A lock taken whose record cannot be written is released before the
    error is raised, waiting or not; a lock not free is not touched.
    """
    for blocking in (True, False):
        lock = FailingRecordLock(free=True)
        with pytest.raises(OSError, match="No space"):
            _takeTerm(lock, blocking)
        assert lock.calls == [f"acquire blocking={blocking}", "beginTerm", "release"]
    busy = FailingRecordLock(free=False)
    assert _takeTerm(busy, blocking=False) is None
    assert busy.calls == ["acquire blocking=False"]


# The lock file's header: format and mechanism


#: What each mechanism is called in errors.
NAMES = {MUTEX: "a robust mutex", FLOCK: "flock"}

needsBoth = pytest.mark.skipif(
    not ROBUST_MUTEX, reason="only flock here: no other mechanism to meet"
)


def test_headerSaysFormatAndMechanism(channelDirectory: str, robust: bool) -> None:
    """
    A new lock file's header names this package's lock format and the
    mechanism its processes elect with, before the record.
    """
    path = lockPath(channelDirectory)
    election = HostElection(object(), path, lambda p: None, robust=robust)  # type: ignore[arg-type]
    assert election.tryNow()
    with open(path, "rb") as f:
        content = f.read()
    assert len(content) == _FILE_SIZE
    assert _IDENTITY.unpack_from(content) == (
        _MAGIC,
        LOCK_FORMAT_VERSION,
        mechanism(robust),
    )
    assert readLockRecord(path) == (1, os.getpid(), 0)
    election.release()


@needsBoth
@pytest.mark.parametrize("held", [True, False], ids=["held", "free"])
def test_anotherMechanismIsRefused(
    channelDirectory: str, robust: bool, held: bool
) -> None:
    """
    A lock file whose processes elect with the other mechanism is refused,
    whether one of them holds it now or not, with an error naming the file,
    what it found and what it expected; the lock stays with its holder and
    the file as it was.
    """
    path = lockPath(channelDirectory)
    other = HostElection(object(), path, lambda p: None, robust=not robust)  # type: ignore[arg-type]
    assert other.tryNow()
    if not held:
        other.release()
    with open(path, "rb") as f:
        before = f.read(64)
    ours = HostElection(object(), path, lambda p: None, robust=robust)  # type: ignore[arg-type]
    with pytest.raises(ChannelLockMismatchError) as caught:
        ours.tryNow()
    refused = caught.value
    assert refused.path == path
    assert refused.found == f"format 2 with {NAMES[mechanism(not robust)]}"
    assert refused.expected == f"format 2 with {NAMES[mechanism(robust)]}"
    assert all(part in str(refused) for part in (path, refused.found, "expected"))
    with pytest.raises(ChannelLockMismatchError):
        ours.waitInBackground()
    assert not ours.holding and not ours.waiting
    assert other.holding == held
    with open(path, "rb") as f:
        assert f.read(64) == before
    other.release()


@pytest.mark.parametrize(
    "version, mechanismFound, found",
    [
        (3, None, "format 3 (a newer version of twisted-channel)"),
        (2, 7, "format 2 with an unknown mechanism (7)"),
    ],
)
def test_aHeaderNotUnderstoodIsRefused(
    channelDirectory: str,
    robust: bool,
    version: int,
    mechanismFound: int | None,
    found: str,
) -> None:
    """
    A header of another version of the format (a future one, say), or with
    a mechanism this version does not know, is refused and left alone.
    """
    path = lockPath(channelDirectory)
    content = _IDENTITY.pack(_MAGIC, version, mechanismFound or mechanism(robust))
    content += b"\1" * (_FILE_SIZE - len(content))
    with open(path, "wb") as f:
        f.write(content)
    election = HostElection(object(), path, lambda p: None, robust=robust)  # type: ignore[arg-type]
    with pytest.raises(ChannelLockMismatchError) as caught:
        election.tryNow()
    assert caught.value.found == found
    # A client reads the record of its own format only.
    assert (readLockRecord(path) is None) == (version != LOCK_FORMAT_VERSION)
    with open(path, "rb") as f:
        assert f.read() == content


def _earlierFormatFile(path: str) -> None:
    """
    Make C{path} a lock file of format 1, as the version before this one
    made it on Linux: its magic and a record, and a robust mutex at the
    same place, free.
    """
    election = HostElection(object(), path, lambda p: None, robust=ROBUST_MUTEX)  # type: ignore[arg-type]
    assert election.tryNow()
    election.release()
    with open(path, "r+b") as f:
        f.write(_MAGIC_1 + struct.pack("=QQQ", 7, 12345, 0) + b"\0" * 8)


def test_unusedEarlierFormatIsMadeThisOne(channelDirectory: str, robust: bool) -> None:
    """
    A lock file of the format before versions, which nobody holds (left
    by an earlier version of the package), does not block anyone: it is
    made a lock file of this format, with this process's mechanism.
    """
    path = lockPath(channelDirectory)
    if robust:
        _earlierFormatFile(path)
    else:
        # Where the earlier version elected with flock: a record only.
        with open(path, "wb") as f:
            f.write(_MAGIC_1 + struct.pack("=QQQ", 7, 12345, 0))
    election = HostElection(object(), path, lambda p: None, robust=robust)  # type: ignore[arg-type]
    assert election.tryNow()
    assert readLockRecord(path) == (1, os.getpid(), 0)
    with open(path, "rb") as f:
        assert _IDENTITY.unpack_from(f.read()) == (_MAGIC, 2, mechanism(robust))
    election.release()


#: A process of the earlier format, hosting: it holds the robust mutex of a
#: format-1 lock file (with the same C library calls as that version), says
#: so and waits to be killed.
EARLIER_HOST = """
import ctypes, mmap, os, sys
from twisted_channel._election import _pthreads, _FILE_SIZE, _MUTEX_OFFSET
descriptor = os.open(sys.argv[1], os.O_RDWR)
base = _pthreads.mmap(None, _FILE_SIZE, mmap.PROT_READ | mmap.PROT_WRITE,
                      mmap.MAP_SHARED, descriptor, 0)
assert _pthreads.pthread_mutex_lock(base + _MUTEX_OFFSET) == 0
print("held", flush=True)
sys.stdin.readline()
"""


@needsBoth
def test_earlierFormatInUseIsRefusedThenTakenOver(
    channelDirectory: str, robust: bool
) -> None:
    """
    While a real process of the earlier format holds its lock file's mutex,
    the file is refused and left alone (never a second host); once that
    process is killed, the file is made one of this format and the lock
    taken.
    """
    path = lockPath(channelDirectory)
    _earlierFormatFile(path)
    holder = subprocess.Popen(
        [sys.executable, "-c", EARLIER_HOST, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with open(path, "rb") as f:
            before = f.read()
        election = HostElection(object(), path, lambda p: None, robust=robust)  # type: ignore[arg-type]
        with pytest.raises(ChannelLockMismatchError) as caught:
            election.tryNow()
        assert caught.value.found == (
            "format 1 (an earlier version of twisted-channel), held by a "
            "running process"
        )
        with open(path, "rb") as f:
            assert f.read() == before
        holder.kill()
        holder.wait(10)
        assert election.tryNow()
        assert readLockRecord(path) == (1, os.getpid(), 0)
        election.release()
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(10)
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


#: A process of the earlier format electing with flock, hosting: it holds
#: the flock of a format-1 lock file for as long as it runs.
EARLIER_FLOCK_HOST = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(descriptor, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()
"""


def test_earlierFormatHeldWithFlockIsRefused(
    channelDirectory: str, robust: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A lock file of the earlier format whose flock a real process holds for
    longer than making a lock file takes is refused, not waited for.
    """
    monkeypatch.setattr(_election, "_MAKING_PATIENCE", 0.2)
    path = lockPath(channelDirectory)
    with open(path, "wb") as f:
        f.write(_MAGIC_1 + struct.pack("=QQQ", 7, 12345, 0))
    holder = subprocess.Popen(
        [sys.executable, "-c", EARLIER_FLOCK_HOST, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        election = HostElection(object(), path, lambda p: None, robust=robust)  # type: ignore[arg-type]
        with pytest.raises(ChannelLockMismatchError, match="held with flock"):
            election.tryNow()
        assert not election.holding
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(10)
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


def test_aFileBeingMadeIsWaitedFor(channelDirectory: str, robust: bool) -> None:
    """
    An opener that finds another making the file (its brief flock held,
    no header yet) waits for the header, then checks it: here, one made
    for the other mechanism.
    """
    path = lockPath(channelDirectory)
    maker = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(maker, fcntl.LOCK_EX)
        os.ftruncate(maker, _FILE_SIZE)

        def finish() -> None:
            os.pwrite(maker, _header(mechanism(not robust)), 0)
            fcntl.flock(maker, fcntl.LOCK_UN)

        timer = threading.Timer(0.2, finish)
        started = time.monotonic()
        timer.start()
        election = HostElection(object(), path, lambda p: None, robust=robust)  # type: ignore[arg-type]
        try:
            with pytest.raises(ChannelLockMismatchError) as caught:
                election.tryNow()
        finally:
            timer.join()
        assert time.monotonic() - started >= 0.2
        assert caught.value.found == f"format 2 with {NAMES[mechanism(not robust)]}"
    finally:
        os.close(maker)
