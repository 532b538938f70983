"""
How a client finds the host across machines: the election key's record and
term, refused when unreadable, never a term lower than one seen (sans IO),
and followed through a real etcd as hosts come, are replaced by garbage,
change and go.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, capturedLogs

from twisted_channel._campaign import HostRecord
from twisted_channel._cluster import HostFinder, HostView
from twisted_channel._etcd import EtcdClient, KeyValue

from .etcd import EtcdCluster

pytestmark = pytest.mark.timeout(60)

A = HostRecord("10.0.0.1:4433", "a", 100)
B = HostRecord("10.0.0.2:4433", "b", 200)


def _kv(record: bytes, term: int) -> KeyValue:
    return KeyValue(b"/c/host", record, term - 3, term, 2, 77)


def test_viewFollowsTerms() -> None:
    """
    A record is taken with its term; a higher term replaces it; a lower one
    is ignored (logged), and so is the same term again; a deletion leaves
    no host, and the highest term is kept.
    """
    view = HostView()
    assert view.consider(_kv(A.encode(), 10))
    assert view.host == (A, 10)
    assert view.consider(_kv(B.encode(), 12))
    assert view.host == (B, 12)
    with capturedLogs() as events:
        assert not view.consider(_kv(A.encode(), 11))
    assert events and "lower than" in events[0]["log_format"]
    assert not view.consider(_kv(B.encode(), 12))
    assert view.host == (B, 12)
    assert view.consider(None)
    assert view.host is None and view.highestTerm == 12
    assert not view.consider(None)
    assert not view.consider(_kv(A.encode(), 9))
    assert view.host is None


def test_viewRefusesGarbage() -> None:
    """
    A value that is not a host record is refused with a warning: no host,
    and no crash; a good record after it is taken.
    """
    view = HostView()
    view.consider(_kv(A.encode(), 10))
    with capturedLogs() as events:
        assert view.consider(_kv(b"\x00garbage", 11))
    assert view.host is None
    assert [e["log_level"] for e in events] == [LogLevel.warn]
    assert view.consider(_kv(B.encode(), 12))
    assert view.host == (B, 12)


@pytest_twisted.ensureDeferred
async def test_finderFollowsTheKey(etcdServer: EtcdCluster) -> None:
    """
    Through a real etcd: no host, a host, garbage written over it, another
    host, then the lease revoked (the key goes with it): each change is
    told, with etcd's revision as the term.
    """
    from twisted.internet import reactor

    client = EtcdClient(reactor, etcdServer.coordinator)
    key = b"/test/finder/host"
    seen: list[Any] = []
    changed: list[Deferred[None]] = [Deferred()]

    def onChange(host: Any) -> None:
        seen.append(host)
        waiter, changed[0] = changed[0], Deferred()
        waiter.callback(None)

    told = [0]

    async def nextChange() -> Any:
        # The change may have been told before this is called: the watch's
        # event and the write's answer race.
        while len(seen) <= told[0]:
            await changed[0].addTimeout(10, reactor)
        told[0] += 1
        return seen[told[0] - 1]

    finder = HostFinder(reactor, client, key, onChange)
    try:
        finder.start()
        lease = await client.grantLease(10)
        created = await client.createIfAbsent(key, A.encode(), lease.id)
        assert await nextChange() == (A, created.revision)
        garbage = await client.replaceIfLease(key, b"{not a record", lease.id)
        assert garbage.succeeded
        assert await nextChange() is None
        second = await client.replaceIfLease(key, B.encode(), lease.id)
        assert await nextChange() == (B, second.revision)
        await client.revokeLease(lease.id)
        assert await nextChange() is None
        assert finder.view.highestTerm == second.revision
    finally:
        finder.stop()
        await client.close()
