"""
The channel across machines with real processes, a real etcd and mutual
TLS on loopback ("machines" are runtime directories): a client streams
while the host is SIGKILLed (a standby on its machine takes over) or stops
gracefully (another machine takes over), and every message arrives, in
order within each host's life.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from twisted_channel._campaign import HostRecord
from twisted_channel._certs import makeCertificates
from twisted_channel._cluster import electionKey
from twisted_channel.testing import ChildProcess

from .etcd import EtcdCluster

pytestmark = pytest.mark.timeout(120)

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_worker.py")
ROGUE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_rogue.py")


class Rig:
    """
    The processes of one test and their files; the channel is named after
    the test, so that no host of an earlier test (whose lease may still
    run) holds its election key.
    """

    def __init__(self, coordinator: str, name: str) -> None:
        self.coordinator = coordinator
        self.name = name
        self.base = tempfile.mkdtemp(prefix="tc-cc-", dir="/tmp")
        os.chmod(self.base, 0o700)
        self.certs = os.path.join(self.base, "certs")
        makeCertificates(self.certs, ["a", "b", "c", "mallory"])
        self.record = os.path.join(self.base, "record")
        self.children: list[ChildProcess] = []

    def directory(self, machine: str) -> str:
        path = os.path.join(self.base, machine)
        if not os.path.isdir(path):
            os.mkdir(path, 0o700)
        return path

    def start(self, mode: str, machine: str, *extra: str) -> ChildProcess:
        child = ChildProcess(
            [
                sys.executable,
                WORKER,
                mode,
                "--coordinator",
                self.coordinator,
                "--dir",
                self.directory(machine),
                "--name",
                self.name,
                "--certs",
                self.certs,
                "--identity",
                machine,
                "--record",
                self.record,
                *extra,
            ],
            label=f"{mode} on {machine}",
            lifetime=120,
        )
        self.children.append(child)
        child.waitFor(lambda line: line.startswith("READY"), 30)
        return child

    def records(self) -> list[tuple[int, str, int]]:
        return [(pid, tag, number) for pid, tag, number, _ in readRecords(self.record)]

    def cleanUp(self) -> None:
        for child in self.children:
            child.reap()
        import shutil

        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def rig(etcdServer: EtcdCluster, request: pytest.FixtureRequest) -> Iterator[Rig]:
    made = Rig(etcdServer.coordinator, request.node.name.replace("_", "-")[:60])
    try:
        yield made
    finally:
        made.cleanUp()


def readRecords(path: str) -> list[tuple[int, str, int, float]]:
    """
    What the recording hosts wrote: (host pid, tag, number, time received).
    """
    found = []
    if os.path.exists(path):
        with open(path, "rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    pid, message, at = line.decode().split()
                    tag, number = message.rsplit(":", 1)
                    found.append((int(pid), tag, int(number), float(at)))
    return found


def _hosting(child: ChildProcess) -> int:
    line = child.waitFor(lambda line: line.startswith("HOSTING"), 30)
    return int(line.split()[1])


def _check(rig: Rig, tag: str, count: int) -> dict[int, list[int]]:
    """
    Every message of C{tag} arrived; within each host's life in order.
    """
    byHost: dict[int, list[int]] = {}
    for pid, recordTag, number in rig.records():
        if recordTag == tag:
            byHost.setdefault(pid, []).append(number)
    received = {n for numbers in byHost.values() for n in numbers}
    assert received == set(range(count)), sorted(set(range(count)) - received)[:20]
    for numbers in byHost.values():
        assert numbers == sorted(numbers)
    return byHost


def test_hostKilledWithLocalStandby(rig: Rig) -> None:
    """
    A client on machine b streams to the host on machine a; the host is
    SIGKILLed; a's standby takes over (a higher term) and nothing is lost.
    """
    a1 = rig.start("candidate", "a")
    term = _hosting(a1)
    a2 = rig.start("candidate", "a")
    b1 = rig.start("candidate", "b")
    client = rig.start("client", "b", "--count", "300", "--interval", "0.005")
    import time

    time.sleep(0.5)
    killed = a1.kill(signal.SIGKILL) / 1e9
    assert _hosting(a2) > term
    client.waitFor(lambda line: line == "DONE", 60)
    byHost = _check(rig, "c", 300)
    assert a1.pid in byHost and a2.pid in byHost
    first = min(at for pid, _, _, at in readRecords(rig.record) if pid == a2.pid)
    took = 1000 * (first - killed)
    print(f"host killed: first message at the local standby {took:.1f} ms")
    assert not any(line.startswith("HOSTING") for line in b1.collect())


#: Host kills in L{test_hostKilledRepeatedly}; docs/cluster.md's figures
#: come from runs with more (C{TC_CLUSTER_KILLS=25}).
KILLS = int(os.environ.get("TC_CLUSTER_KILLS", "4"))


@pytest.mark.timeout(60 + 15 * KILLS)
def test_hostKilledRepeatedly(rig: Rig) -> None:
    """
    A client on machine b streams (one message every 5 ms) to the host on
    machine a, whose host is SIGKILLed again and again, a standby on a
    started before each kill: each time the standby takes over with a higher
    term, machine b never hosts, and no message is lost or out of order
    within a host's life.  The client links to each host in turn, with
    increasing terms, at machine a's one address (its TLS port kept across
    local takeovers).  The client's process has run its first full
    collection by the time it is connected (see L{twisted_channel._collection}).
    Prints the time from each kill to the first message at the new host,
    and the client's full collections during the kills.
    """
    import time

    host = rig.start("candidate", "a")
    term = _hosting(host)
    hosts = [(host.pid, term)]
    b1 = rig.start("candidate", "b")
    client = rig.start(
        "client", "b", "--count", "1000000", "--interval", "0.005", "--collections"
    )
    full = client.waitFor(lambda line: line.startswith("FULL"))
    assert int(full.split()[1]) >= 1
    took = []
    windows: list[tuple[float, float]] = []
    for _ in range(KILLS):
        standby = rig.start("candidate", "a")
        time.sleep(0.3)
        killed = host.kill(signal.SIGKILL) / 1e9
        newTerm = _hosting(standby)
        assert newTerm > term
        term, host = newTerm, standby
        hosts.append((host.pid, term))
        deadline = time.monotonic() + 10
        while True:
            first = [at for pid, _, _, at in readRecords(rig.record) if pid == host.pid]
            if first or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert first, "no message at the new host within 10 s"
        took.append(1000 * (min(first) - killed))
        windows.append((killed, min(first)))
    time.sleep(0.2)
    client.send("stop")
    sent = int(client.waitFor(lambda line: line.startswith("SENT"), 10).split()[1])
    client.waitFor(lambda line: line == "DONE", 60)
    _check(rig, "c", sent)
    assert not any(line.startswith("HOSTING") for line in b1.collect())
    links = [line.split() for line in client.collect() if line.startswith("LINK")]
    assert {
        (identity, address, port) for _, identity, _, _, address, port in links
    } == {("a", "127.0.0.1", links[0][5])}
    linked: list[tuple[int, int]] = []
    for _, _, pid, linkTerm, _, _ in links:
        if not linked or linked[-1] != (int(pid), int(linkTerm)):
            linked.append((int(pid), int(linkTerm)))
    assert linked == hosts
    collected = [
        (float(start), 1000 * float(seconds))
        for _, start, seconds in (
            line.split() for line in client.collect() if line.startswith("COLLECTED")
        )
    ]
    during = [
        ms
        for start, ms in collected
        if any(
            killed <= start + ms / 1000 and start <= first for killed, first in windows
        )
    ]
    took.sort()
    print(
        f"host killed {KILLS} times: first message at the local standby "
        f"median {took[len(took) // 2]:.1f} ms, {took[0]:.1f} to {took[-1]:.1f} ms; "
        + " ".join(f"{t:.1f}" for t in took)
        + f"; the client's full collections: {len(collected)} "
        + f"({', '.join(f'{ms:.1f}' for _, ms in collected) or 'none'} ms), "
        + f"{len(during)} during a takeover"
    )


def test_gracefulHandoverAcrossMachines(rig: Rig) -> None:
    """
    The host, alone on its machine, stops while a client streams; the other
    machine takes over and nothing is lost.
    """
    a1 = rig.start("candidate", "a")
    term = _hosting(a1)
    b1 = rig.start("candidate", "b")
    client = rig.start("client", "b", "--count", "300", "--interval", "0.005")
    import time

    time.sleep(0.5)
    stopped = time.monotonic()
    a1.send("stop")
    assert _hosting(b1) > term
    client.waitFor(lambda line: line == "DONE", 60)
    byHost = _check(rig, "c", 300)
    assert b1.pid in byHost
    first = min(at for pid, _, _, at in readRecords(rig.record) if pid == b1.pid)
    took = 1000 * (first - stopped)
    print(f"graceful: first message at the other machine {took:.1f} ms")


def test_wholeMachineLost(rig: Rig) -> None:
    """
    Every candidate on the host's machine is killed while a client streams:
    the other machine hosts once the lease expires (TTL 2 s) and nothing is
    lost.
    """
    import time

    a1 = rig.start("candidate", "a")
    term = _hosting(a1)
    a2 = rig.start("candidate", "a")
    b1 = rig.start("candidate", "b")
    client = rig.start("client", "b", "--count", "400", "--interval", "0.005")
    time.sleep(0.5)
    killed = time.monotonic()
    a1.kill(signal.SIGKILL)
    a2.kill(signal.SIGKILL)
    assert _hosting(b1) > term
    line = b1.waitFor(lambda line: line.startswith("HOSTING"))
    assert float(line.split()[2]) - killed <= 2 + 1.0
    client.waitFor(lambda line: line == "DONE", 60)
    byHost = _check(rig, "c", 400)
    assert b1.pid in byHost
    first = min(at for pid, _, _, at in readRecords(rig.record) if pid == b1.pid)
    print(f"machine lost: first message at the other machine {first - killed:.3f} s")
    assert first - killed <= 2 + 1.0


def test_portTerm(rig: Rig) -> None:
    """
    The host's port says its term, the one in etcd, also in getHost().
    """
    a1 = rig.start("candidate", "a")
    b1 = rig.start("candidate", "b")
    term = _hosting(a1)
    line = a1.waitFor(lambda line: line.startswith("HOSTING"))
    assert int(line.split()[3]) == term > 0
    assert not any(line.startswith("HOSTING") for line in b1.collect())
    a1.send("stop")
    assert _hosting(b1) > term


def test_roleObserverAcrossMachines(rig: Rig) -> None:
    """
    A port's role observers are told of each change across machines too,
    as on one machine: C{"host"} when it hosts, C{"stopped"} when it stops
    listening; the other machine's candidate is told C{"host"} when it
    takes over.
    """
    a1 = rig.start("candidate", "a")
    _hosting(a1)
    b1 = rig.start("candidate", "b")
    a1.waitFor(lambda line: line == "ROLE host", 30)
    a1.send("stop")
    a1.waitFor(lambda line: line == "ROLE stopped", 30)
    _hosting(b1)
    b1.waitFor(lambda line: line == "ROLE host", 30)
    roles = [line for line in a1.collect() if line.startswith("ROLE ")]
    assert roles == ["ROLE host", "ROLE stopped"]


def test_insecure(rig: Rig) -> None:
    """
    insecure=yes: plain TCP between machines, said loudly in the log; the
    channel works the same (a host handover, nothing lost).
    """
    import time

    a1 = rig.start("candidate", "a", "--insecure")
    term = _hosting(a1)
    b1 = rig.start("candidate", "b", "--insecure")
    client = rig.start(
        "client", "b", "--insecure", "--count", "200", "--interval", "0.005"
    )
    time.sleep(0.3)
    a1.send("stop")
    assert _hosting(b1) > term
    client.waitFor(lambda line: line == "DONE", 60)
    _check(rig, "c", 200)
    assert "insecure=yes: links between machines are plain TCP" in a1.stderr


def _etcd(cluster: EtcdCluster, path: str, body: dict[str, object]) -> Any:
    request = urllib.request.Request(
        cluster.members[0].clientURL + path,
        data=json.dumps(body).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_addressNotItsOwn(rig: Rig, etcdServer: EtcdCluster) -> None:
    """
    The election key names machine a at an address served by another
    machine (a certificate from the same authority, for "mallory"): a
    client refuses it by its TLS identity, not a byte of the
    application reaches it, the client does not fail, and once that
    record's lease expires the real machine a hosts and receives every
    message.
    """
    rogueRecord = os.path.join(rig.base, "rogue")
    rogue = ChildProcess(
        [
            sys.executable,
            ROGUE,
            "--certKey",
            os.path.join(rig.certs, "mallory.pem"),
            "--privateKey",
            os.path.join(rig.certs, "mallory.key"),
            "--record",
            rogueRecord,
        ],
        label="rogue",
        lifetime=120,
    )
    rig.children.append(rogue)
    roguePort = int(rogue.waitFor(lambda line: line.startswith("READY"), 30).split()[1])
    lease = _etcd(etcdServer, "/v3/lease/grant", {"TTL": 3})["ID"]
    key = electionKey(rig.name)
    value = HostRecord(f"127.0.0.1:{roguePort}", "a", 4242).encode()
    put = _etcd(
        etcdServer,
        "/v3/kv/put",
        {
            "key": base64.b64encode(key).decode(),
            "value": base64.b64encode(value).decode(),
            "lease": lease,
        },
    )
    forged = int(put["header"]["revision"])
    a1 = rig.start("candidate", "a")
    client = rig.start("client", "b", "--count", "200", "--interval", "0.005")
    assert _hosting(a1) > forged
    client.waitFor(lambda line: line == "DONE", 60)
    byHost = _check(rig, "c", 200)
    assert list(byHost) == [a1.pid]
    refusals = [
        line
        for line in client.stderr.splitlines()
        if "refused a TLS peer" in line and f"port={roguePort}" in line
    ]
    assert refusals and all("hostname=b'a'" in line for line in refusals), refusals
    assert not any(line.startswith("FAILED") for line in client.collect())
    rogue.send("stop")
    rogue.wait(10)
    assert os.path.getsize(rogueRecord) == 0


def test_hostSeesClientMachine(rig: Rig) -> None:
    """
    On the host, a link from another machine's client has as C{getPeer()}
    the identity its verified certificate names and the client's pid, here
    for clients on machine b and on the host's own machine a.
    """
    a1 = rig.start("candidate", "a")
    _hosting(a1)
    fromB = rig.start("client", "b", "--count", "20", "--tag", "b")
    fromB.waitFor(lambda line: line == "DONE", 30)
    a1.waitFor(lambda line: line.startswith("PEER"), 10)
    fromA = rig.start("client", "a", "--count", "20", "--tag", "a")
    fromA.waitFor(lambda line: line == "DONE", 30)
    a1.waitFor(lambda line: line == f"PEER a {fromA.pid}", 10)
    peers = [line for line in a1.collect() if line.startswith("PEER")]
    assert peers == [f"PEER b {fromB.pid}", f"PEER a {fromA.pid}"]
    _check(rig, "a", 20)
    _check(rig, "b", 20)


def _links(client: ChildProcess) -> list[tuple[str, int, int]]:
    """
    The hosts a client's protocol was told of (its IChannelLinkObserver),
    each as its getPeer() gave it: (machine, pid, term).
    """
    found = []
    for line in client.collect():
        assert not line.startswith("WRONG-PEER"), line
        if line.startswith("LINK"):
            _, identity, pid, term, _, _ = line.split()
            found.append((identity, int(pid), int(term)))
    return found


def test_clientSeesHost(rig: Rig) -> None:
    """
    A client's getPeer() names the host across machines, as the host's
    welcome says it end to end: its machine, pid, advertised address and
    term; its protocol, an IChannelLinkObserver,
    is told of each link as the host moves from a to a's standby (SIGKILL)
    and then to machine b (graceful stop), with terms that only increase.
    """
    import time

    a1 = rig.start("candidate", "a")
    first = _hosting(a1)
    a2 = rig.start("candidate", "a")
    b1 = rig.start("candidate", "b")
    # Streams until told to stop, so that it outlives every change.
    client = rig.start("client", "b", "--count", "100000", "--interval", "0.01")
    line = client.waitFor(lambda line: line.startswith("LINK"), 30)
    _, identity, pid, term, host, port = line.split()
    assert (identity, int(pid), int(term)) == ("a", a1.pid, first)
    assert host == "127.0.0.1" and 0 < int(port) < 65536
    time.sleep(0.3)
    a1.kill(signal.SIGKILL)
    second = _hosting(a2)
    client.waitFor(lambda line: line.startswith(f"LINK a {a2.pid} {second} "), 30)
    time.sleep(0.3)
    a2.send("stop")
    third = _hosting(b1)
    client.waitFor(lambda line: line.startswith(f"LINK b {b1.pid} {third} "), 30)
    time.sleep(0.3)
    client.send("stop")
    sent = int(client.waitFor(lambda line: line.startswith("SENT"), 30).split()[1])
    client.waitFor(lambda line: line == "DONE", 60)
    _check(rig, "c", sent)
    links = _links(client)
    assert links == [("a", a1.pid, first), ("a", a2.pid, second), ("b", b1.pid, third)]
    assert first < second < third
    # Each link up after the first was told after its loss.
    lines = client.collect()
    assert lines.count("UNLINKED") >= 2
    assert lines.index("UNLINKED") > lines.index(next(x for x in lines if "LINK" in x))


def test_statusShowsStandbys(rig: Rig) -> None:
    """
    twisted-channel status --coordinator, with real candidates on machines
    a, b and c: the host on a with its pid and term, and b and c as
    standbys (the second candidate on a is no machine of its own); once b
    stops, only c; once the host stops, a's other candidate or c hosts and
    the other is the standby.
    """
    import subprocess

    def status() -> list[str]:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "twisted_channel",
                "status",
                rig.name,
                "--coordinator",
                rig.coordinator,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode in (0, 1), done.stderr
        return done.stdout.splitlines()

    def standby(child: ChildProcess, machine: str) -> str:
        return f"  standby: machine {machine}, pid {child.pid} at 127.0.0.1:"

    def waitForStatus(check: Any) -> list[str]:
        import time

        deadline = time.monotonic() + 20
        while True:
            lines = status()
            if check(lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.2)

    a1 = rig.start("candidate", "a")
    term = _hosting(a1)
    a2 = rig.start("candidate", "a")
    b1 = rig.start("candidate", "b")
    c1 = rig.start("candidate", "c")
    lines = waitForStatus(lambda lines: len(lines) == 3)
    assert lines[0].startswith(
        f"channel {rig.name}: hosted by pid {a1.pid} on machine a at 127.0.0.1:"
    ) and lines[0].endswith(f", term {term}"), lines
    assert lines[1].startswith(standby(b1, "b")), lines
    assert lines[2].startswith(standby(c1, "c")), lines
    b1.send("stop")
    b1.wait(20)
    lines = waitForStatus(lambda lines: len(lines) == 2)
    assert lines[1:] == [lines[1]] and lines[1].startswith(standby(c1, "c")), lines
    # Whichever of a's other candidate and c wins, the other is the standby.
    a1.send("stop")
    lines = waitForStatus(
        lambda lines: "hosted by" in lines[0] and f"pid {a1.pid} " not in lines[0]
    )
    if f"pid {c1.pid} on machine c" in lines[0]:
        assert len(lines) == 2 and lines[1].startswith(standby(a2, "a")), lines
    else:
        assert f"pid {a2.pid} on machine a" in lines[0], lines
        assert len(lines) == 2 and lines[1].startswith(standby(c1, "c")), lines


def _loggedHosting(child: ChildProcess, timeout: float = 30) -> int:
    """
    The term of the first "hosts across machines" line C{child} logs.
    """
    import re
    import time

    deadline = time.monotonic() + timeout
    pattern = re.compile(rf"pid {child.pid} hosts across machines, term (\d+)")
    while time.monotonic() < deadline:
        found = pattern.search(child.stderr)
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    raise AssertionError(f"{child} did not host within {timeout} s: {child.stderr}")


def test_serverFactoryAcrossMachines(rig: Rig) -> None:
    """
    connect() with a serverFactory across machines, as on one machine: each
    peer (on a and on b) is a client and a candidate host for as long as
    its connection lives. The first hosts and receives both streams (its
    own through its machine's TLS port, like any client's); when its connection ends,
    its candidacy stops, the other machine hosts, and the rest of its own
    stream reaches it. Nothing is lost; in order within each host's life.
    """
    import time

    a = rig.start("peer", "a", "--count", "100000", "--interval", "0.01", "--tag", "a")
    first = _loggedHosting(a)
    b = rig.start("peer", "b", "--count", "100000", "--interval", "0.01", "--tag", "b")
    b.waitFor(lambda line: line.startswith(f"LINK a {a.pid} {first} "), 30)
    time.sleep(0.3)
    a.send("finish")
    sentByA = int(a.waitFor(lambda line: line.startswith("SENT"), 30).split()[1])
    a.waitFor(lambda line: line == "DONE", 60)
    second = _loggedHosting(b)
    assert second > first
    b.waitFor(lambda line: line.startswith(f"LINK b {b.pid} {second} "), 30)
    time.sleep(0.3)
    b.send("finish")
    sentByB = int(b.waitFor(lambda line: line.startswith("SENT"), 30).split()[1])
    b.waitFor(lambda line: line == "DONE", 60)
    byHostA = _check(rig, "a", sentByA)
    assert list(byHostA) == [a.pid]
    byHostB = _check(rig, "b", sentByB)
    assert set(byHostB) == {a.pid, b.pid}
    assert f"pid {b.pid} hosts across machines" not in a.stderr
    links = _links(b)
    assert links[0] == ("a", a.pid, first) and links[-1] == ("b", b.pid, second)
