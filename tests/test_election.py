"""
The lock election in one process: two elections exclude each other (flock
belongs to the open file description), a waiting standby wins the moment
the holder lets go, and its early work is handed over or undone.
"""

from __future__ import annotations

import os
import threading

import pytest_twisted
from twisted.internet.defer import Deferred

from twisted_channel._election import HostElection


def lockPath(directory: str) -> str:
    return os.path.join(directory, "jobs.lock")


@pytest_twisted.ensureDeferred
async def test_standbyWinsWhenHolderReleases(channelDirectory: str) -> None:
    from twisted.internet import reactor

    won: Deferred[object] = Deferred()
    preparedOn: list[str] = []

    def prepare() -> str:
        preparedOn.append(threading.current_thread().name)
        return "bound early"

    holder = HostElection(reactor, lockPath(channelDirectory), lambda p: None)
    standby = HostElection(
        reactor, lockPath(channelDirectory), won.callback, prepare=prepare
    )
    assert holder.tryNow()
    assert not standby.tryNow()
    standby.waitInBackground()
    assert standby.waiting
    holder.release()
    result = await won.addTimeout(5, reactor)
    assert result == "bound early"
    assert standby.holding
    assert preparedOn and preparedOn[0].startswith("twisted-channel election")
    assert not holder.tryNow()
    standby.release()
    assert holder.tryNow()
    holder.release()


@pytest_twisted.ensureDeferred
async def test_cancelledWaitGivesBack(channelDirectory: str) -> None:
    from twisted.internet import reactor, task

    discarded: list[object] = []
    elected: list[object] = []
    holder = HostElection(reactor, lockPath(channelDirectory), lambda p: None)
    standby = HostElection(
        reactor,
        lockPath(channelDirectory),
        elected.append,
        prepare=lambda: "made",
        discard=discarded.append,
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


def test_prepareErrorIsHandedOver(channelDirectory: str) -> None:
    """
    What prepare raises reaches onElected instead of being lost on the
    thread (checked without a reactor: _won is called directly).
    """
    received: list[object] = []

    class Reactor:
        def callFromThread(self, f: object, *args: object) -> None:
            f(*args)  # type: ignore[operator]

    def failing() -> object:
        raise OSError("no room")

    holder = HostElection(Reactor(), lockPath(channelDirectory), lambda p: None)
    standby = HostElection(
        Reactor(), lockPath(channelDirectory), received.append, prepare=failing
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
