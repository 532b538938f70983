"""
The lock election: two elections exclude each other (also in one process),
a waiting standby wins the moment the holder lets go or dies, its early work
is handed over or undone, and the lock file records who hosts and whether
the previous host died.  Each test runs with the robust mutex (where the
platform has one) and with flock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from twisted_channel._directory import UnsafeDirectoryError
from twisted_channel._election import (
    ROBUST_MUTEX,
    HostElection,
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


@pytest.mark.skipif(not ROBUST_MUTEX, reason="no robust process-shared mutexes here")
@pytest.mark.parametrize(
    "content, what",
    [
        (b"#!/bin/sh\nrm -rf /\n", "not a twisted-channel lock file"),
        (b"twchlck1" + b"\0" * 100, "truncated to 108 bytes"),
    ],
)
def test_foreignLockFileIsRefused(
    channelDirectory: str, content: bytes, what: str
) -> None:
    """
    A lock file that is not one of ours, or was cut short, is refused with
    an error naming it, and left as it is.
    """
    path = lockPath(channelDirectory)
    with open(path, "wb") as f:
        f.write(content)
    election = HostElection(object(), path, lambda p: None)  # type: ignore[arg-type]
    with pytest.raises(UnsafeDirectoryError, match=what) as caught:
        election.tryNow()
    assert path in str(caught.value)
    with pytest.raises(UnsafeDirectoryError, match=what):
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
