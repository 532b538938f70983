"""
The cluster soak's checks (tests/cluster_soak.py), over made-up records:
each finds what it is there to find.  The soak itself runs in
tests/test_cluster_netns.py.
"""

from __future__ import annotations

from .cluster_soak import Interval, Record, check

HOSTS = [Interval(0.0, 1.0, 5, 100, "m0"), Interval(1.5, 3.0, 7, 200, "m1")]


def _stream(tag: str, count: int, split: int) -> list[Record]:
    """
    C{count} messages of C{tag}, the first C{split} at the first host, the
    rest at the second.
    """
    return [
        Record(100, tag, n, 0.1 + n * 0.001, 5)
        if n < split
        else Record(200, tag, n, 1.6 + n * 0.001, 7)
        for n in range(count)
    ]


def test_allHold() -> None:
    """
    Every message received once, in order, each host within its interval:
    no failure; a message received again by the later host is counted, not
    a failure.
    """
    records = _stream("m0.1", 10, 5) + [Record(200, "m0.1", 4, 1.55, 7)]
    records.sort(key=lambda r: (r.pid, r.at))
    lines, failures = check(records, {"m0.1": 10}, HOSTS)
    assert failures == []
    assert any("lost: 0, received again by a later host: 1" in ln for ln in lines)


def test_lost() -> None:
    """
    A message a client sent and no host received is lost; for a client
    killed with its machine, a hole before its last message received is.
    """
    records = [r for r in _stream("m0.1", 10, 5) if r.number != 3]
    records += [r for r in _stream("m1.1", 6, 3) if r.number != 1]
    _, failures = check(records, {"m0.1": 10, "m1.1": None}, HOSTS)
    assert failures == [
        "client m0.1: 1 lost, first [3]",
        "client m1.1: 1 lost, first [1]",
    ]
    _, failures = check(_stream("m0.1", 10, 5), {"m0.1": 12}, HOSTS)
    assert failures == ["client m0.1: 2 lost, first [10, 11]"]


def test_outOfOrder() -> None:
    """
    Within one host's life, a message after a later one is out of order.
    """
    records = _stream("m0.1", 10, 5)
    records[1], records[2] = records[2], records[1]
    _, failures = check(records, {"m0.1": 10}, HOSTS)
    assert failures == ["out of order at host 100 term 5: m0.1:1 after 2"]


def test_twoHosts() -> None:
    """
    Overlapping hosting intervals, two hosts receiving at once, a host
    receiving outside its interval, terms going back: each is a failure.
    """
    overlapping = [HOSTS[0], Interval(0.9, 3.0, 7, 200, "m1")]
    _, failures = check(_stream("m0.1", 10, 5), {"m0.1": 10}, overlapping)
    assert len(failures) == 1 and "hosting intervals overlap" in failures[0]

    records = _stream("m0.1", 10, 5) + [Record(100, "m1.1", 0, 1.7, 5)]
    _, failures = check(records, {"m0.1": 10, "m1.1": 1}, HOSTS)
    assert any("two hosts received messages at once" in f for f in failures)
    assert any("outside its hosting interval" in f for f in failures)

    backwards = [HOSTS[0], Interval(1.5, 3.0, 4, 200, "m1")]
    records = [r._replace(term=4) if r.pid == 200 else r for r in _stream("a", 10, 5)]
    _, failures = check(records, {"a": 10}, backwards)
    assert failures == [
        f"term not above the one before: {backwards[0]} then {backwards[1]}"
    ]
