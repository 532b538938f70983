"""
Clients learn at once that a host appeared: the directory watch, and what
the client does when told.
"""

from __future__ import annotations

import os
import sys

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from twisted_channel import _client
from twisted_channel._credentials import PeerCredentials
from twisted_channel._watch import stopWatching, watchFor

from ._support.clientlinks import makeClient


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
