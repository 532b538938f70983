"""
Clients learn at once that a host appeared: the directory watch, and what
the client does when told.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from twisted_channel import (
    ChannelAddress,
    ChannelClientTransport,
    _client,
    _election,
    _reconnection,
)
from twisted_channel._address import HOST
from twisted_channel._client import _ClientLink
from twisted_channel._credentials import PeerCredentials
from twisted_channel._watch import stopWatching, watchFor

from ._support.clientlinks import (
    HOST_PID,
    SOCKET,
    LinkTransport,
    Recorder,
    RecordingFactory,
    makeClient,
    openLink,
    welcome,
)


@pytest.fixture(autouse=True)
def noPeerCredentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        _client, "peerCredentials", lambda handle: PeerCredentials(None, None)
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
@pytest_twisted.ensureDeferred
async def test_renameIntoPlaceIsSeen(channelDirectory: str) -> None:
    """
    A file renamed to the watched path calls back; other names do not.
    """
    from twisted.internet import reactor

    path = os.path.join(channelDirectory, "jobs.sock")
    seen: Deferred[None] = Deferred()
    calls: list[str] = []

    def appeared() -> None:
        calls.append("jobs")
        if not seen.called:
            seen.callback(None)

    assert watchFor(reactor, path, appeared)
    try:
        other = os.path.join(channelDirectory, "other.tmp")
        open(other, "w").close()
        os.rename(other, os.path.join(channelDirectory, "other.sock"))
        temporary = os.path.join(channelDirectory, ".tmp")
        open(temporary, "w").close()
        os.rename(temporary, path)
        await seen.addTimeout(5, reactor)
        assert calls == ["jobs"]
    finally:
        stopWatching(path, appeared)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
@pytest_twisted.ensureDeferred
async def test_watchesOutliveARemovedDirectory(tmp_path: Path) -> None:
    """
    Twisted's C{INotify} closes itself, every watch with it, when a watched
    directory is removed: the clients waiting on other directories are
    still told of a new host, and later watches are still made.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    gone, kept, later = (tmp_path / name for name in ("gone", "kept", "later"))
    for directory in (gone, kept, later):
        directory.mkdir()
    seen: dict[str, Deferred[None]] = {"kept": Deferred(), "later": Deferred()}

    def appearedIn(name: str) -> Callable[[], None]:
        def appeared() -> None:
            if not seen[name].called:
                seen[name].callback(None)

        return appeared

    def ignored() -> None:
        pass

    keptAppeared, laterAppeared = appearedIn("kept"), appearedIn("later")
    watches = [
        (str(gone / "jobs.sock"), ignored),
        (str(kept / "jobs.sock"), keptAppeared),
    ]
    for path, callback in watches:
        assert watchFor(reactor, path, callback)
    try:
        gone.rmdir()
        # Twisted's INotify reads the removal and closes itself meanwhile.
        await deferLater(reactor, 0.2, lambda: None)
        watches.append((str(later / "jobs.sock"), laterAppeared))
        assert watchFor(reactor, *watches[-1])
        for directory in (kept, later):
            temporary = directory / ".tmp"
            temporary.touch()
            os.rename(temporary, directory / "jobs.sock")
        for arrival in seen.values():
            await arrival.addTimeout(5, reactor)
    finally:
        for path, callback in watches:
            stopWatching(path, callback)


def test_testReactorsAreNotWatched() -> None:
    """
    Only the installed reactor gets an inotify descriptor.
    """
    client, _, reactor = makeClient()
    assert not watchFor(reactor, "/tmp/x.sock", lambda: None)


def test_hostAppearingCancelsTheBackoff() -> None:
    """
    Told that a host appeared, a client waiting for its next retry connects
    now; one with an attempt under way tries again at once if it fails.
    """
    client, _, reactor = makeClient(timeout=0)
    client.startConnecting()
    reactor.unixClients[-1][1].clientConnectionFailed(None, ConnectionRefusedError())
    [retry] = reactor.getDelayedCalls()
    attempts = len(reactor.unixClients)
    client.reconnection.hostAppeared()
    assert not retry.active()
    assert len(reactor.unixClients) == attempts + 1
    client.reconnection.hostAppeared()
    assert client.reconnection.hostAppearedMeanwhile()
    assert not client.reconnection.hostAppearedMeanwhile()


def watchedClient(
    monkeypatch: pytest.MonkeyPatch, lockPath: str
) -> tuple[ChannelClientTransport, MemoryReactorClock, list[str]]:
    """
    A client with a lock file to read, on a memory reactor, whose watches
    are recorded (the real watch is only for the installed reactor).
    """
    watches: list[str] = []

    def recordWatch(reactor: object, path: str, callback: object) -> bool:
        watches.append(path)
        return True

    monkeypatch.setattr(_reconnection, "watchFor", recordWatch)
    monkeypatch.setattr(
        _reconnection, "stopWatching", lambda path, callback: watches.remove(path)
    )
    reactor = MemoryReactorClock()
    protocol = Recorder()
    client = ChannelClientTransport(
        reactor,
        ChannelAddress("jobs", SOCKET, HOST),
        protocol,
        RecordingFactory(),
        5.0,
        1000,
        4000,
        lockPath=lockPath,
    )
    protocol.makeConnection(client)
    return client, reactor, watches


def writeLockRecord(path: str, term: int, hostPid: int, diedPid: int) -> None:
    with open(path, "wb") as f:
        f.write(
            _election._IDENTITY.pack(
                _election._MAGIC, _election.LOCK_FORMAT_VERSION, _election.MUTEX
            )
            + _election._RECORD.pack(term, hostPid, diedPid)
        )


def test_watchBeginsOnceAHostWelcomed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """
    A first attempt that reaches a host is made without a watch (it is off
    the path of the first message); the watch begins when the host
    welcomes the link, and stays on while the link lasts.
    """
    lockPath = str(tmp_path / "jobs.lock")
    writeLockRecord(lockPath, 1, HOST_PID, 0)
    client, reactor, watches = watchedClient(monkeypatch, lockPath)
    client.startConnecting()
    assert watches == []
    link, transport = openLink(client)
    welcome(link)
    assert watches == [SOCKET]
    assert client.link is link
    assert not transport.disconnecting


def test_hostThatDiedBeforeTheWatchIsLeft(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """
    A host that died, and a successor that took over, between the first
    attempt and the watch went unseen by the watch: the lock file's record,
    read as the watch begins, tells the client to leave that host.
    """
    lockPath = str(tmp_path / "jobs.lock")
    writeLockRecord(lockPath, 2, HOST_PID + 1, HOST_PID)
    client, reactor, watches = watchedClient(monkeypatch, lockPath)
    client.startConnecting()
    link, transport = openLink(client)
    welcome(link)
    assert watches == [SOCKET]
    assert transport.disconnected


def test_watchBeginsAfterAFailedFirstAttempt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """
    When the first attempt finds no host, the watch begins and the client
    tries again at once, since a host published between the attempt and the
    watch would go unseen; after that it backs off, watching.
    """
    client, reactor, watches = watchedClient(monkeypatch, str(tmp_path / "j.lock"))
    client.startConnecting()
    assert watches == []
    assert len(reactor.unixClients) == 1
    reactor.unixClients[-1][1].clientConnectionFailed(None, ConnectionRefusedError())
    assert watches == [SOCKET]
    assert len(reactor.unixClients) == 2
    deadlines = len(reactor.getDelayedCalls())
    reactor.unixClients[-1][1].clientConnectionFailed(None, ConnectionRefusedError())
    assert watches == [SOCKET]
    assert len(reactor.unixClients) == 2
    assert len(reactor.getDelayedCalls()) == deadlines + 1


def test_watchBeginsAfterAFirstLinkLostBeforeItsWelcome(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """
    A first attempt whose link is lost before the host welcomes it (the
    host died during the handshake) begins the watch and tries again at
    once, as a failed dial does: the host's successor may have published
    itself before the watch began.  A second such loss backs off, watching.
    """
    client, reactor, watches = watchedClient(monkeypatch, str(tmp_path / "j.lock"))
    client.startConnecting()
    assert watches == []
    first = reactor.unixClients[-1][1].buildProtocol(None)
    first.makeConnection(LinkTransport())
    first.connectionLost(Failure(ConnectionDone()))
    assert watches == [SOCKET]
    assert len(reactor.unixClients) == 2
    assert client.link is None
    deadlines = len(reactor.getDelayedCalls())
    second = reactor.unixClients[-1][1].buildProtocol(None)
    second.makeConnection(LinkTransport())
    second.connectionLost(Failure(ConnectionDone()))
    assert watches == [SOCKET]
    assert len(reactor.unixClients) == 2
    assert len(reactor.getDelayedCalls()) == deadlines + 1


def test_oneLinkAtATimeThroughAFailover(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """
    While the link to the next host is in its handshake, news of that host
    dials no second link: the host would close the first for the second
    (one live link per client id), and each lost link would then dial
    another while one was in its handshake, a loop that fails AMP calls.
    A link welcomed after another was is dropped, and its end dials
    nothing.
    """
    lockPath = str(tmp_path / "jobs.lock")
    writeLockRecord(lockPath, 1, HOST_PID, 0)
    client, reactor, watches = watchedClient(monkeypatch, lockPath)
    client.startConnecting()
    first = reactor.unixClients[-1][1].buildProtocol(None)
    firstTransport = LinkTransport()
    first.makeConnection(firstTransport)
    welcome(first._wrappedProtocol)
    reactor.advance(_reconnection.HEALTHY_LINK)
    writeLockRecord(lockPath, 2, HOST_PID + 1, HOST_PID)
    client.reconnection.hostAppeared()
    assert firstTransport.disconnecting
    first.connectionLost(Failure(ConnectionAborted()))
    attempts = len(reactor.unixClients)
    # The attempt connects; its hello is on its way.
    second = reactor.unixClients[-1][1].buildProtocol(None)
    second.makeConnection(LinkTransport())
    assert client.reconnection.connector.attempting
    client.reconnection.hostAppeared()
    client.reconnection.hostAppeared()
    assert len(reactor.unixClients) == attempts
    welcome(second._wrappedProtocol)
    assert client.link is second._wrappedProtocol
    assert not client.reconnection.connector.attempting
    # A stray link (made before this fix's guard, or by a test) welcomed
    # now is dropped; its end retries nothing.
    stray = _ClientLink(client, None, client.reconnection.connector)
    strayTransport = LinkTransport()
    stray.makeConnection(strayTransport)
    welcome(stray)
    assert strayTransport.disconnecting
    calls = list(reactor.getDelayedCalls())
    stray.connectionLost(Failure(ConnectionDone()))
    assert list(reactor.getDelayedCalls()) == calls
    assert len(reactor.unixClients) == attempts
    assert client.link is second._wrappedProtocol
