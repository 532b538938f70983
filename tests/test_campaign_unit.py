"""
The campaign for a channel's host through etcd, sans IO: what it asks of
etcd, when it renews, when a leader that cannot renew steps down (before
etcd could let another win), how a lease is inherited, and the checked host
record.  Times are plain numbers; tests/test_campaign.py runs it against a
real etcd.
"""

from __future__ import annotations

import os

import pytest

from twisted_channel._campaign import (
    Campaign,
    Create,
    DeleteKey,
    Elected,
    GrantLease,
    HostRecord,
    KeepAlive,
    ReadKey,
    Replace,
    RevokeLease,
    SteppedDown,
    WatchKey,
    readLeaseFile,
    writeLeaseFile,
)
from twisted_channel._etcd import KeyValue, Lease, TxnResult, WatchEvent


def _kv(lease: int, modRevision: int) -> KeyValue:
    return KeyValue(b"/c/jobs/host", b"x", modRevision, modRevision, 1, lease)


def _leader(ttl: int = 6, at: float = 100.0) -> Campaign:
    campaign = Campaign(ttl)
    assert campaign.start(at) == [GrantLease(ttl)]
    assert campaign.leaseGranted(Lease(7, ttl), at) == [Create(7)]
    assert campaign.keyWritten(TxnResult(True, 40, None)) == [Elected(40, 7)]
    return campaign


def test_winsWithFreshLease() -> None:
    """
    A lease, then the key created under it: the key's revision is the term.
    """
    campaign = _leader()
    assert campaign.state == "leading" and campaign.term == 40
    assert campaign.lease == 7


def test_renewsAndStepsDownBeforeExpiry() -> None:
    """
    A leader renews every TTL/6 and reads its key; if no renewal is
    confirmed, it steps down at 2/3 of the TTL after the last confirmed
    sending, well before etcd (which counts from its own later receipt)
    could expire the lease.
    """
    campaign = _leader(ttl=6, at=100.0)
    assert campaign.wakeAt == 101.0
    assert campaign.tick(101.0) == [KeepAlive(7), ReadKey()]
    assert campaign.keepAliveAnswered(6, 101.0) == []
    assert campaign.keyRead(_kv(7, 40), 41) == []
    assert campaign.wakeAt == 102.0
    # From here on etcd answers nothing: renewals are asked again and again.
    now = 102.0
    while campaign.state == "leading":
        actions = campaign.tick(now)
        if campaign.state != "leading":
            break
        assert actions in ([], [KeepAlive(7), ReadKey()])
        wake = campaign.wakeAt
        assert wake is not None
        now = wake
    assert now == 101.0 + 6 * 2 / 3
    assert actions == [
        SteppedDown(40, actions[0].reason),
        RevokeLease(7),
        GrantLease(6),
    ]  # type: ignore[union-attr]
    assert "renew deadline" in actions[0].reason  # type: ignore[union-attr]
    assert campaign.term is None and campaign.lease is None


def test_lostLeaseStepsDown() -> None:
    """
    A renewal answered with TTL 0 (the lease expired or was revoked) makes
    the leader step down at once and campaign with a new lease.
    """
    campaign = _leader()
    campaign.tick(101.0)
    actions = campaign.keepAliveAnswered(0, 101.0)
    assert actions == [SteppedDown(40, "lease expired"), GrantLease(6)]
    assert campaign.state == "granting"


def test_keyNoLongerOurs() -> None:
    """
    A key deleted or rewritten by someone else makes the leader step down,
    then campaign again with its lease.
    """
    campaign = _leader()
    actions = campaign.keyRead(_kv(9, 55), 55)
    assert actions[0] == SteppedDown(40, "the election key is no longer ours")
    assert actions[1:] == [Create(7)]
    assert campaign.keyWritten(TxnResult(False, 56, _kv(9, 55))) == [WatchKey(57)]
    assert campaign.state == "following"


def test_followsThenWins() -> None:
    """
    A campaigner that finds the key taken watches it from the next
    revision; when it is deleted, it campaigns again and wins with a higher
    term.
    """
    campaign = Campaign(6)
    campaign.start(0.0)
    campaign.leaseGranted(Lease(8, 6), 0.0)
    assert campaign.keyWritten(TxnResult(False, 40, _kv(7, 40))) == [WatchKey(41)]
    assert campaign.watched([WatchEvent("PUT", _kv(7, 41))], 41) == []
    assert campaign.watched([WatchEvent("DELETE", _kv(0, 42))], 42) == [Create(8)]
    assert campaign.keyWritten(TxnResult(True, 43, None)) == [Elected(43, 8)]


def test_staleNewsIgnoredByTheLeader() -> None:
    """
    A follower's watch goes on once it leads, and a watch started again
    from an older revision repeats changes: a deletion from before the
    leader's own write, or a read asked before it, is not news (stepping
    down for it, the leader would find its own key and lead again with the
    same term).  A change after its write is.
    """
    campaign = Campaign(6)
    campaign.start(0.0)
    campaign.leaseGranted(Lease(8, 6), 0.0)
    assert campaign.keyWritten(TxnResult(False, 40, _kv(7, 40))) == [WatchKey(41)]
    assert campaign.keyRead(None, 42) == [Create(8)]
    assert campaign.keyWritten(TxnResult(True, 43, None)) == [Elected(43, 8)]
    assert campaign.watched([WatchEvent("DELETE", _kv(0, 42))], 43) == []
    assert campaign.keyRead(None, 42) == []
    assert campaign.watched([WatchEvent("PUT", _kv(8, 43))], 43) == []
    assert campaign.state == "leading" and campaign.term == 43
    actions = campaign.watched([WatchEvent("DELETE", _kv(0, 44))], 44)
    assert actions[0] == SteppedDown(43, "the election key is no longer ours")


def test_followerKeepsItsLease() -> None:
    """
    A follower renews its lease (so that it can win at once) but holds no
    step-down deadline.
    """
    campaign = Campaign(6)
    campaign.start(0.0)
    campaign.leaseGranted(Lease(8, 6), 0.0)
    campaign.keyWritten(TxnResult(False, 40, _kv(7, 40)))
    assert campaign.tick(1.0) == [KeepAlive(8)]
    assert campaign.keepAliveAnswered(6, 1.0) == []
    assert campaign.tick(10.0) == [KeepAlive(8)]
    assert campaign.state == "following"


def test_repeatedCreateCounts() -> None:
    """
    A create that etcd applied but whose answer was lost, asked again, finds
    the key under our own lease: that is a win, with the key's revision.
    """
    campaign = Campaign(6)
    campaign.start(0.0)
    campaign.leaseGranted(Lease(8, 6), 0.0)
    assert campaign.keyWritten(TxnResult(False, 44, _kv(8, 43))) == [Elected(43, 8)]


def test_inheritsLease() -> None:
    """
    A local heir renews the lease its predecessor recorded and takes the
    key over with a write under it: a new, higher term, with no waiting for
    the lease to expire.
    """
    campaign = Campaign(6)
    assert campaign.start(0.0, inheritedLease=7) == [Replace(7), KeepAlive(7)]
    assert campaign.keepAliveAnswered(5, 0.0) == []
    assert campaign.keyWritten(TxnResult(True, 50, None)) == [Elected(50, 7)]


def test_inheritsLeaseRewriteAnsweredFirst() -> None:
    """
    The key's rewrite under an inherited lease may be answered before the
    lease's renewal: the heir leads only once the renewal is confirmed,
    its renew deadline counted from the renewal's sending.
    """
    campaign = Campaign(6)
    campaign.start(0.0, inheritedLease=7)
    assert campaign.keyWritten(TxnResult(True, 50, None)) == []
    assert campaign.state == "inheriting" and campaign.term is None
    assert campaign.keepAliveAnswered(5, 0.0) == [Elected(50, 7)]
    assert campaign.wakeAt == 1.0
    assert campaign.tick(4.0) == [
        SteppedDown(50, "no lease renewal confirmed within the renew deadline"),
        RevokeLease(7),
        GrantLease(6),
    ]


def test_inheritedLeaseGoneRewriteAnsweredFirst() -> None:
    """
    A rewrite answered before the renewal says the inherited lease is
    gone makes no leader: a fresh lease and a create follow.
    """
    campaign = Campaign(6)
    campaign.start(0.0, inheritedLease=7)
    assert campaign.keyWritten(TxnResult(True, 50, None)) == []
    assert campaign.keepAliveAnswered(0, 0.0) == [GrantLease(6)]
    assert campaign.state == "granting" and campaign.term is None
    assert campaign.leaseGranted(Lease(9, 6), 0.1) == [Create(9)]


def test_inheritanceBothFail() -> None:
    """
    When the renewal and the rewrite of an inheritance both fail, both are
    asked again.
    """
    campaign = Campaign(6)
    campaign.start(0.0, inheritedLease=7)
    assert campaign.requestFailed(KeepAlive(7), 0.0, "unavailable") == []
    assert campaign.requestFailed(Replace(7), 0.0, "unavailable") == []
    assert campaign.tick(1.0) == [KeepAlive(7), Replace(7)]


def test_inheritedLeaseGone() -> None:
    """
    An inherited lease that expired meanwhile is replaced by a fresh one.
    """
    campaign = Campaign(6)
    campaign.start(0.0, inheritedLease=7)
    assert campaign.keepAliveAnswered(0, 0.0) == [GrantLease(6)]
    assert campaign.leaseGranted(Lease(9, 6), 0.1) == [Create(9)]


def test_retryAfterFailure() -> None:
    """
    A request etcd could not take is asked again after the retry delay.
    """
    campaign = Campaign(6)
    campaign.start(0.0)
    assert campaign.requestFailed(GrantLease(6), 0.0, "unavailable") == []
    assert campaign.wakeAt == 1.0
    assert campaign.tick(0.5) == []
    assert campaign.tick(1.0) == [GrantLease(6)]


def test_stop() -> None:
    """
    A leader that stops steps down, deletes its key (only if still its own
    revision) and revokes its lease; one that abandons leaves both to a
    local heir.
    """
    campaign = _leader()
    assert campaign.stop() == [
        SteppedDown(40, "stopped"),
        DeleteKey(40),
        RevokeLease(7),
    ]
    heir = _leader()
    assert heir.abandon() == [SteppedDown(40, "handed to a local heir")]
    assert heir.state == "stopped" and heir.wakeAt is None


def test_leaseTTLChecked() -> None:
    """
    The TTL is whole seconds, at least 2 (etcd's shortest is about 1.5 s).
    """
    for wrong in (1, 0, -3, 2.5, True, "5"):
        with pytest.raises(ValueError, match="leaseTTL"):
            Campaign(wrong)  # type: ignore[arg-type]


def test_hostRecord() -> None:
    """
    The election key's value round-trips; anything else is refused with a
    ValueError naming what is wrong.
    """
    record = HostRecord("10.0.0.8:4433", "m1", 1234)
    assert HostRecord.decode(record.encode()) == record
    for garbage, complaint in [
        (b"\xff", "not JSON"),
        (b"[]", "wrong fields"),
        (b'{"address": "x", "identity": "m", "pid": 1}', "not HOST:PORT"),
        (b'{"address": "a:1", "identity": "m", "pid": 0}', "not a process id"),
        (b'{"address": "a:1", "identity": 5, "pid": 3}', "address or identity"),
        (b'{"address": "a:1", "identity": "m", "pid": 3, "x": 1}', "wrong fields"),
        (b" " * 5000, "5000 bytes"),
    ]:
        with pytest.raises(ValueError, match=complaint):
            HostRecord.decode(garbage)


def test_leaseFile(tmp_path: object) -> None:
    """
    The lease file is written whole (by rename) and read back; a file that
    holds no lease is ignored.
    """
    path = os.path.join(str(tmp_path), "jobs.lease")
    assert readLeaseFile(path) is None
    writeLeaseFile(path, 1234567890123)
    assert readLeaseFile(path) == 1234567890123
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path, "wb") as f:
        f.write(b"garbage")
    assert readLeaseFile(path) is None


def test_unreadableLeaseFile(tmp_path: object) -> None:
    """
    A lease file that cannot be read (here a directory stands in its place)
    is no lease: the heir campaigns afresh, and the file is named in the
    log.
    """
    from twisted.logger import globalLogPublisher

    path = os.path.join(str(tmp_path), "jobs.lease")
    os.mkdir(path)
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert readLeaseFile(path) is None
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any(
        event.get("path") == path and event.get("what") == "lease" for event in events
    )


def test_etcdAwayLoggedOnce() -> None:
    """
    While etcd stays away, the first failed request is a warning that says
    the candidate waits without hosting, the next ones are only debug; the
    first answer after them is logged with their count.
    """
    from twisted.logger import LogLevel, capturedLogs

    campaign = Campaign(6)
    campaign.start(0.0)
    with capturedLogs() as events:
        for attempt in range(5):
            campaign.requestFailed(GrantLease(6), float(attempt), "no member answered")
        campaign.answered()
        campaign.answered()
    levels = [event["log_level"] for event in events]
    assert levels == [LogLevel.warn] + [LogLevel.debug] * 4 + [LogLevel.info]
    assert "waiting without hosting" in events[0]["log_format"].format(**events[0])
    assert events[-1]["failures"] == 5
    assert campaign.failures == 0
