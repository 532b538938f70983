"""
Tests for L{twisted_channel._scheduling}: the election thread's request to
run as soon as it is woken.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest
from twisted.internet.testing import MemoryReactorClock

from twisted_channel import _scheduling
from twisted_channel._election import HostElection
from twisted_channel._scheduling import SHORT_SLICE, askForShortSlice, sliceOf

T = TypeVar("T")


def onAThreadOfItsOwn(function: Callable[[], T]) -> T:
    """
    Run C{function} on a new thread, so that what it asks of the scheduler
    stays there, and return what it returned.
    """
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(function()))
    thread.start()
    thread.join(10)
    assert results, "the thread did not finish"
    return results[0]


def customSlicesWork() -> bool:
    def ask() -> bool:
        return askForShortSlice() and sliceOf() == SHORT_SLICE

    return onAThreadOfItsOwn(ask)


needsCustomSlices = pytest.mark.skipif(
    not customSlicesWork(),
    reason="this system has no custom scheduler slices (Linux 6.12 or later)",
)


@needsCustomSlices
def test_electionThreadAsksForAShortSlice(channelDirectory: str) -> None:
    """
    The thread that waits for the lock runs with a short slice; the thread
    that made the election is left as it was.
    """
    reactor = MemoryReactorClock()
    path = os.path.join(channelDirectory, "jobs.lock")
    holder = HostElection(reactor, path, lambda prepared: None)
    standby = HostElection(reactor, path, lambda prepared: None)
    assert holder.tryNow()
    before = sliceOf()
    standby.waitInBackground()
    attempt = standby._waiting
    assert attempt is not None and attempt.thread is not None
    threadId = attempt.thread.native_id
    assert threadId is not None
    for _ in range(1000):
        if sliceOf(threadId) == SHORT_SLICE:
            break
        threading.Event().wait(0.005)
    assert sliceOf(threadId) == SHORT_SLICE
    assert sliceOf() == before
    standby.cancel()
    holder.release()
    attempt.thread.join(5)


@needsCustomSlices
def test_niceValueIsKept() -> None:
    def niceAfterAsking() -> int:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, 5)
        assert askForShortSlice()
        return os.getpriority(os.PRIO_PROCESS, me)

    assert onAThreadOfItsOwn(niceAfterAsking) == 5


@needsCustomSlices
def test_otherPoliciesAreLeftAlone() -> None:
    """
    A thread the application put under another policy than C{SCHED_OTHER}
    does not ask.
    """

    def askUnderBatch() -> tuple[bool, int | None, int | None]:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        before = sliceOf()
        return askForShortSlice(), before, sliceOf()

    asked, before, after = onAThreadOfItsOwn(askUnderBatch)
    assert not asked
    assert after == before


def test_nothingIsAskedElsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_scheduling.platform, "machine", lambda: "sparc64")
    assert not askForShortSlice()
    assert sliceOf() is None
    monkeypatch.setattr(_scheduling.sys, "platform", "darwin")
    assert not askForShortSlice()


def test_askingNeverRaises(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The thread that asks is the one that waits for the lock: whatever goes
    wrong in asking, it goes on to wait.
    """

    def broken() -> None:
        raise RuntimeError("no C library")

    monkeypatch.setattr(_scheduling, "_syscalls", broken)
    assert not askForShortSlice()
