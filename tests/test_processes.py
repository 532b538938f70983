"""
The channel's promises, checked with real processes over real sockets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator

import pytest

from twisted_channel._election import ROBUST_MUTEX
from twisted_channel._temporary import temporaryPrefix
from twisted_channel._wire import CHALLENGE, ERROR, FrameDecoder
from twisted_channel.testing import (
    ChannelProcesses,
    ChildProcess,
    Record,
    readRecords,
    waitUntil,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["unix", "tcp"])
def children(
    channelDirectory: str, request: pytest.FixtureRequest
) -> Iterator[ChannelProcesses]:
    """
    The children of one test, over each transport in turn, running the
    reactor the suite runs under (pytest --reactor=...).
    """
    reactorName = request.config.getoption("reactor", "default")
    group = ChannelProcesses(
        channelDirectory,
        "asyncio" if reactorName == "asyncio" else "default",
        request.param,
    )
    try:
        yield group
    finally:
        group.reapAll()


def rawConnection(children: ChannelProcesses, name: str) -> socket.socket:
    """
    A plain socket connected to the host of channel C{name}.
    """
    if children.transportKind == "tcp":
        with open(children.channelFile(name)) as f:
            port = json.load(f)["port"]
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    else:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(5)
        raw.connect(children.channelFile(name))
    return raw


def listeningLoopbackPorts(pid: int) -> set[int]:
    """
    The loopback TCP ports process C{pid} listens on, seen from outside
    it: the listening entries of C{/proc/net/tcp} whose socket is one of
    the process's descriptors (C{/proc/PID/fd}).
    """
    inodes = set()
    descriptors = f"/proc/{pid}/fd"
    for descriptor in os.listdir(descriptors):
        try:
            target = os.readlink(os.path.join(descriptors, descriptor))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            address, port = fields[1].split(":")
            # 0A is LISTEN; the address is 127.0.0.1 in the kernel's order.
            loopback = address in ("0100007F", "7F000001")
            if fields[3] == "0A" and loopback and fields[9] in inodes:
                ports.add(int(port, 16))
    return ports


def heldReady(children: ChannelProcesses, name: str, candidate: ChildProcess) -> object:
    """
    What standby C{candidate} holds ready to publish, checked from outside
    it: over Unix, the device and inode of the socket it bound under its
    temporary name; over TCP, the port its temporary port file names, which
    it must be listening on already.
    """
    prefix = temporaryPrefix(children.channelFile(name)) + f"{candidate.pid}-"
    [path] = [
        os.path.join(children.directory, entry)
        for entry in os.listdir(children.directory)
        if os.path.join(children.directory, entry).startswith(prefix)
    ]
    info = os.lstat(path)
    assert stat.S_IMODE(info.st_mode) == 0o600
    if children.transportKind != "tcp":
        assert stat.S_ISSOCK(info.st_mode)
        return (info.st_dev, info.st_ino)
    assert stat.S_ISREG(info.st_mode)
    with open(path) as f:
        content = json.load(f)
    assert content["pid"] == candidate.pid
    assert content["port"] in listeningLoopbackPorts(candidate.pid)
    port: int = content["port"]
    return port


def published(children: ChannelProcesses, name: str, host: ChildProcess) -> object:
    """
    What the host of channel C{name} published, in the terms of
    L{heldReady}.
    """
    path = children.channelFile(name)
    if children.transportKind != "tcp":
        info = os.lstat(path)
        return (info.st_dev, info.st_ino)
    with open(path) as f:
        content = json.load(f)
    assert content["pid"] == host.pid
    port: int = content["port"]
    return port


def hostOf(candidates: list[ChildProcess]) -> list[ChildProcess]:
    return [c for c in candidates if c.role() == "host"]


def assertDeliveredInOrder(records: list[Record], senders: dict[str, int]) -> None:
    """
    Every sender's messages 1..count arrived at some host; within each
    host's life, each sender's messages are in order and none twice.
    """
    seen: dict[str, set[int]] = defaultdict(set)
    perHost: dict[tuple[int, str], list[int]] = defaultdict(list)
    for pid, tag, number, _, _ in records:
        seen[tag].add(number)
        perHost[(pid, tag)].append(number)
    for tag, count in senders.items():
        missing = set(range(1, count + 1)) - seen[tag]
        assert not missing, f"{tag}: {len(missing)} lost, e.g. {sorted(missing)[:5]}"
    for (pid, tag), numbers in perHost.items():
        assert numbers == sorted(numbers), f"{tag} out of order at host {pid}"
        assert len(numbers) == len(set(numbers)), f"{tag} duplicated at host {pid}"


def test_twentyRacingCandidatesElectOneHost(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    Twenty processes that listen on one name at once: exactly one hosts, and
    it stays so.
    """
    record = os.path.join(channelDirectory, "record")
    candidates = [children.candidate("race", record) for _ in range(20)]
    for candidate in candidates:
        candidate.waitFor(lambda line: line.startswith("ROLE "), 60)
    time.sleep(0.5)
    hosts = hostOf(candidates)
    assert len(hosts) == 1, [c.role() for c in candidates]
    assert sum(c.role() == "standby" for c in candidates) == 19


def test_writesBeforeAnyHostArriveInOrder(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    A client writes 100 messages before any host exists; once one starts,
    all arrive, in order, one dataReceived each.
    """
    record = os.path.join(channelDirectory, "record")
    client = children.client("early", "early", 100, "--slice", "100")
    client.waitFor(lambda line: line == "SENT 100")
    assert not os.path.exists(children.channelFile("early"))
    time.sleep(0.3)
    host = children.candidate("early", record)
    host.waitFor(lambda line: line == "ROLE host")
    client.waitFor(lambda line: line.startswith("CLOSED"))
    assert client.collect()[-1] == "CLOSED ConnectionDone 0"
    records = readRecords(record)
    assert [(r.pid, r.tag) for r in records] == [(host.pid, "early")] * 100
    assert [r.number for r in records] == list(range(1, 101))


def test_hostKilledWhileTwoClientsStream(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    The host is SIGKILLed while two clients stream 10,000 numbered messages
    each: every message reaches some host, in order per sender within each
    host's life, none twice within one host's life.
    """
    record = os.path.join(channelDirectory, "record")
    candidates = [children.candidate("kill", record) for _ in range(3)]
    for candidate in candidates:
        candidate.waitFor(lambda line: line.startswith("ROLE "))
    first = hostOf(candidates)
    assert len(first) == 1
    clients = [
        children.client("kill", tag, 10000, "--slice", "20", "--interval", "0.005")
        for tag in ("a", "b")
    ]
    waitUntil(lambda: len(readRecords(record)) > 2000, 30, "2,000 messages")
    first[0].kill()
    first[0].wait()
    survivors = [c for c in candidates if c is not first[0]]
    waitUntil(lambda: len(hostOf(survivors)) == 1, 10, "a new host")
    for client in clients:
        client.waitFor(lambda line: line.startswith("CLOSED"), 60)
        assert client.collect()[-1] == "CLOSED ConnectionDone 0"
        assert any(line.startswith("UNLINK ") for line in client.collect())
    records = readRecords(record)
    assertDeliveredInOrder(records, {"a": 10000, "b": 10000})
    assert {r.pid for r in records} == {first[0].pid, hostOf(survivors)[0].pid}


@pytest.mark.skipif(
    not ROBUST_MUTEX,
    reason="with flock a standby wins only once the dead host's memory is freed",
)
def test_clientLeavesDeadHostBeforeTheKernelClosesItsLink(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    A host holding 600 MiB is SIGKILLed.  The kernel frees that memory
    before it closes the dead host's sockets; meanwhile a standby has taken
    over, and the streaming client leaves its link to the dead host for the
    new one at once (its link ends with ConnectionAborted, its own doing,
    not with the kernel's close).  Nothing is lost.

    A race the client wins only if it and the standby get the CPU in time:
    the kernel closes the link 55 to 125 ms after the kill (measured beside
    two busy loops), and the standby publishing then the client seeing it
    must both fit in that time.  Publishing is a rename on either transport:
    of the socket the standby bound and listens on since it stood by, or
    over TCP of the port file naming the port it listens on since then
    (before, a TCP standby bound, listened, and wrote its port file only
    once it had won, up to 80 ms after the kill under that load).  A
    machine loaded enough to keep them off the CPU longer sees the kernel
    close the link first (C{UNLINK ConnectionLost}), losing nothing still.
    """
    record = os.path.join(channelDirectory, "record")
    heavy = children.recorder(
        "candidate", "heavy", "--record", record, "--ballast", "600"
    )
    heavy.waitFor(lambda line: line == "ROLE host", 60)
    standby = children.candidate("heavy", record)
    standby.waitFor(lambda line: line == "ROLE standby")
    client = children.client("heavy", "h", 3000, "--slice", "10", "--interval", "0.002")
    client.waitFor(lambda line: line == f"LINK {heavy.pid}")
    waitUntil(lambda: len(readRecords(record)) > 300, 30, "300 messages")
    heavy.kill()
    standby.waitFor(lambda line: line == "ROLE host")
    heavy.wait()
    client.waitFor(lambda line: line.startswith("CLOSED"), 60)
    assert client.collect()[-1] == "CLOSED ConnectionDone 0"
    unlinks = [line for line in client.collect() if line.startswith("UNLINK ")]
    assert unlinks == ["UNLINK ConnectionAborted"]
    assert f"LINK {standby.pid}" in client.collect()
    assertDeliveredInOrder(readRecords(record), {"h": 3000})


def test_standbyPublishesWhatItHeldReady(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    A standby holds ready, while it waits, what it publishes when it wins:
    a socket bound and listening under a temporary name, or over TCP a
    loopback port bound and listening and the port file naming it under a
    temporary name.  The host SIGKILLed, the standby publishes that very
    socket (that very port); so does the next standby after a graceful
    handover.  A standby that stops listening leaves neither its file nor,
    over TCP, its port; nor does a host that stops.
    """
    record = os.path.join(channelDirectory, "record")
    host = children.candidate("held", record)
    host.waitFor(lambda line: line == "ROLE host")
    first = children.candidate("held", record)
    first.waitFor(lambda line: line == "ROLE standby")
    firstReady = heldReady(children, "held", first)
    host.kill()
    host.wait()
    first.waitFor(lambda line: line == "ROLE host", 10)
    assert published(children, "held", first) == firstReady
    second = children.candidate("held", record)
    second.waitFor(lambda line: line == "ROLE standby")
    secondReady = heldReady(children, "held", second)
    client = children.client("held", "a", 20)
    client.waitFor(lambda line: line.startswith("CLOSED"), 20)
    assert client.collect()[-1] == "CLOSED ConnectionDone 0"
    first.send("stop")
    first.waitFor(lambda line: line == "STOPPED")
    second.waitFor(lambda line: line == "ROLE host", 10)
    assert published(children, "held", second) == secondReady
    third = children.candidate("held", record)
    third.waitFor(lambda line: line == "ROLE standby")
    thirdReady = heldReady(children, "held", third)
    third.send("stop")
    third.waitFor(lambda line: line == "STOPPED")
    if children.transportKind == "tcp":
        assert thirdReady not in listeningLoopbackPorts(third.pid)
        assert listeningLoopbackPorts(third.pid) == set()
        assert listeningLoopbackPorts(first.pid) == set()
    client = children.client("held", "b", 20)
    client.waitFor(lambda line: line.startswith("CLOSED"), 20)
    assert client.collect()[-1] == "CLOSED ConnectionDone 0"
    assert {r.pid for r in readRecords(record)} == {first.pid, second.pid}
    second.send("stop")
    second.waitFor(lambda line: line == "STOPPED")
    assert sorted(os.listdir(channelDirectory)) == ["held.lock", "record"]


def test_staleSocketOfKilledHostDoesNotBlock(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    A killed host leaves its socket file behind; the next candidate hosts
    within a second anyway.
    """
    record = os.path.join(channelDirectory, "record")
    host = children.candidate("stale", record)
    host.waitFor(lambda line: line == "ROLE host")
    host.kill()
    host.wait()
    left = os.lstat(children.channelFile("stale")).st_mode
    assert (
        stat.S_ISSOCK(left) if children.transportKind == "unix" else stat.S_ISREG(left)
    )
    start = time.monotonic()
    successor = children.candidate("stale", record)
    successor.waitFor(lambda line: line == "ROLE host", 10)
    assert time.monotonic() - start < 1.0 + 1.0  # interpreter start-up included
    client = children.client("stale", "s", 10)
    client.waitFor(lambda line: line.startswith("CLOSED"))
    assert client.collect()[-1] == "CLOSED ConnectionDone 0"
    assert [r.number for r in readRecords(record)] == list(range(1, 11))


def test_stopListeningHandsOver(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    A host that stops listening hands the channel to a standby; its clients
    fail over and lose nothing.
    """
    record = os.path.join(channelDirectory, "record")
    first = children.candidate("handover", record)
    first.waitFor(lambda line: line == "ROLE host")
    second = children.candidate("handover", record)
    second.waitFor(lambda line: line == "ROLE standby")
    client = children.client(
        "handover", "h", 4000, "--slice", "20", "--interval", "0.002"
    )
    waitUntil(lambda: len(readRecords(record)) > 500, 30, "500 messages")
    first.send("stop")
    first.waitFor(lambda line: line == "STOPPED")
    assert first.role() == "stopped"
    second.waitFor(lambda line: line == "ROLE host", 5)
    client.waitFor(lambda line: line.startswith("CLOSED"), 60)
    assert client.collect()[-1] == "CLOSED ConnectionDone 0"
    records = readRecords(record)
    assertDeliveredInOrder(records, {"h": 4000})
    assert {r.pid for r in records} == {first.pid, second.pid}


def test_garbageFromRawClientDoesNotHurtOthers(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    A raw client that sends garbage is disconnected; the host survives and
    other clients go on.
    """
    record = os.path.join(channelDirectory, "record")
    host = children.candidate("garbage", record)
    host.waitFor(lambda line: line == "ROLE host")
    client = children.client(
        "garbage", "g", 2000, "--slice", "10", "--interval", "0.002"
    )
    waitUntil(lambda: len(readRecords(record)) > 100, 30, "100 messages")
    for garbage in (
        b"GET / HTTP/1.1\r\n\r\n",
        b"\xff" * 64,
        b"\x00\x00\x00\x02\x01\x00",
        os.urandom(4096),
    ):
        raw = rawConnection(children, "garbage")
        raw.sendall(garbage)
        reply = b""
        try:
            while True:
                chunk = raw.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        raw.close()
        kinds = [kind for kind, _ in FrameDecoder(1 << 20).feed(reply)]
        expected = [ERROR] if children.transportKind == "unix" else [CHALLENGE, ERROR]
        assert kinds == expected, f"expected an ERROR frame, got {reply!r}"
    client.waitFor(lambda line: line.startswith("CLOSED"), 60)
    assert client.collect()[-1] == "CLOSED ConnectionDone 0"
    assert not host.exited()
    assert host.role() == "host"
    assertDeliveredInOrder(readRecords(record), {"g": 2000})


def test_clientGivesUpAfterTimeoutWithCount(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    With no host for C{timeout} seconds, the client's connection ends and
    says how many messages were never delivered.
    """
    client = children.client("nobody", "n", 7, "--timeout", "0.5", "--slice", "7")
    client.waitFor(lambda line: line.startswith("CLOSED"), 10)
    assert client.collect()[-1] == "CLOSED ChannelUnreachableError 7"


def test_sigtermedHostHandsOver(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    SIGTERM stops the host's reactor; the standby takes over and the
    client goes on.
    """
    record = os.path.join(channelDirectory, "record")
    first = children.candidate("term", record)
    first.waitFor(lambda line: line == "ROLE host")
    second = children.candidate("term", record)
    second.waitFor(lambda line: line == "ROLE standby")
    client = children.client("term", "t", 2000, "--slice", "20", "--interval", "0.002")
    waitUntil(lambda: len(readRecords(record)) > 200, 30, "200 messages")
    first.kill(signal.SIGTERM)
    first.wait()
    second.waitFor(lambda line: line == "ROLE host", 5)
    client.waitFor(lambda line: line.startswith("CLOSED"), 60)
    assert client.collect()[-1] == "CLOSED ConnectionDone 0"
    assertDeliveredInOrder(readRecords(record), {"t": 2000})


def test_standbysHoldTheirSocketsReady(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    Each standby holds its socket (over TCP: its port file) ready under a
    temporary name that names its pid; one killed leaves it, and the host
    removes it within about a second; the winner of a failover publishes
    its own; processes that stop gracefully leave nothing but the lock
    file.
    """

    def readyOf() -> set[str]:
        prefix = "." + os.path.basename(children.channelFile("ready")) + "~"
        return {
            name.split("~", 1)[1].split("-", 1)[0]
            for name in os.listdir(channelDirectory)
            if name.startswith(prefix)
        }

    record = os.path.join(channelDirectory, "record")
    host = children.candidate("ready", record)
    host.waitFor(lambda line: line == "ROLE host")
    standbys = [children.candidate("ready", record) for _ in range(3)]
    for standby in standbys:
        standby.waitFor(lambda line: line == "ROLE standby")
    assert readyOf() == {str(standby.pid) for standby in standbys}
    doomed = standbys.pop()
    doomed.kill()
    doomed.wait()
    waitUntil(lambda: str(doomed.pid) not in readyOf(), 5, "the host to clean up")
    host.kill()
    host.wait()
    waitUntil(
        lambda: any(standby.role() == "host" for standby in standbys),
        10,
        "a standby to take over",
    )
    [winner] = [standby for standby in standbys if standby.role() == "host"]
    assert readyOf() == {str(standby.pid) for standby in standbys} - {str(winner.pid)}
    client = children.client("ready", "r", 20)
    client.waitFor(lambda line: line.startswith("CLOSED"), 20)
    assert client.collect()[-1] == "CLOSED ConnectionDone 0"
    for standby in standbys:
        standby.kill(signal.SIGTERM)
        assert standby.wait() == 0
    assert sorted(os.listdir(channelDirectory)) == ["ready.lock", "record"]


def test_frozenHostIsGivenUpOnWithCount(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    A host frozen with SIGSTOP keeps the lock, so nobody can take over; a
    client with unacknowledged messages drops the silent link, cannot get a
    welcome anywhere, and gives up after its timeout, saying how many
    messages were not delivered.  Resumed, the host serves new clients.
    """
    record = os.path.join(channelDirectory, "record")
    host = children.candidate("frozen", record)
    host.waitFor(lambda line: line == "ROLE host")
    standby = children.candidate("frozen", record)
    standby.waitFor(lambda line: line == "ROLE standby")
    streaming = children.client(
        "frozen", "s", 100000, "--timeout", "1", "--slice", "10", "--interval", "0.01"
    )
    streaming.waitFor(lambda line: line.startswith("LINK"))
    host.kill(signal.SIGSTOP)
    try:
        client = children.client("frozen", "f", 50, "--timeout", "1", "--slice", "50")
        client.waitFor(lambda line: line.startswith("CLOSED"), 20)
        assert client.collect()[-1] == "CLOSED ChannelUnreachableError 50"
        # The streaming client's link was up: it notices the silence after
        # its stall timeout (2 s), then gives up after its timeout (1 s).
        closed = streaming.waitFor(lambda line: line.startswith("CLOSED"), 20)
        assert closed.startswith("CLOSED ChannelUnreachableError ")
        assert int(closed.split()[-1]) > 0
        assert any(line.startswith("UNLINK ") for line in streaming.collect())
        assert standby.role() == "standby"
    finally:
        host.kill(signal.SIGCONT)
    later = children.client("frozen", "l", 10)
    later.waitFor(lambda line: line.startswith("CLOSED"), 20)
    assert later.collect()[-1] == "CLOSED ConnectionDone 0"


def test_clientGivesUpOnAFrozenHostAtItsTimeout(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    A client whose timeout falls well after a link's handshake deadline
    dials a host frozen with SIGSTOP (the kernel accepts its link, nobody
    answers): the link is dropped when its handshake deadline falls, and
    the client gives up once its timeout has passed since it connected,
    not before, saying how many messages were not delivered.  (Its give-up
    timer is armed only once that first link is lost.)
    """
    record = os.path.join(channelDirectory, "record")
    host = children.candidate("numb", record)
    host.waitFor(lambda line: line == "ROLE host")
    host.kill(signal.SIGSTOP)
    try:
        started = time.monotonic()
        client = children.client("numb", "n", 5, "--timeout", "5", "--slice", "5")
        client.waitFor(lambda line: line.startswith("CLOSED"), 30)
        assert time.monotonic() - started >= 5
        assert client.collect()[-1] == "CLOSED ChannelUnreachableError 5"
    finally:
        host.kill(signal.SIGCONT)


def _asNobody(*arguments: str) -> list[str]:
    # The resolved interpreter, not a virtualenv's link to it: a virtualenv
    # in a 0700 directory is out of another user's reach.  The script it
    # runs needs the standard library only.
    return [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        os.path.realpath(sys.executable),
        *arguments,
    ]


def _canRunAsNobody() -> bool:
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(_asNobody("-c", "pass"), capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(
    not _canRunAsNobody(),
    reason="needs root, setpriv and an interpreter uid 65534 can run, to run "
    "a client as another user",
)
def test_peerOfAnotherUserIsRefused(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    A process of another uid that reaches the socket (the test opens the
    directory and socket modes for it) is refused by SO_PEERCRED before
    its hello is read; the host goes on serving its own user's clients.
    """
    if children.transportKind == "tcp":
        pytest.skip("SO_PEERCRED is for Unix sockets; TCP peers prove a secret")
    record = os.path.join(channelDirectory, "record")
    host = children.candidate("peers", record)
    host.waitFor(lambda line: line == "ROLE host")
    socketPath = os.path.join(channelDirectory, "peers.sock")
    os.chmod(channelDirectory, 0o711)
    os.chmod(socketPath, 0o666)
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.settimeout(5)\n"
        f"s.connect({socketPath!r})\n"
        "reply = b''\n"
        "while True:\n"
        "    chunk = s.recv(4096)\n"
        "    if not chunk: break\n"
        "    reply += chunk\n"
        "sys.stdout.write(reply[5:].decode('utf-8', 'replace') + '\\n')\n"
    )
    stranger = children.start(_asNobody("-c", script))
    assert stranger.wait(20) == 0, stranger.stderr
    line = stranger.waitFor(lambda line: "uid" in line)
    assert "uid 65534" in line
    client = children.client("peers", "p", 20)
    client.waitFor(lambda line: line.startswith("CLOSED"))
    assert client.collect()[-1] == "CLOSED ConnectionDone 0"
    assert host.role() == "host"


def test_hostPublishesAgainWhenItsFileIsDeleted(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    The socket (or port) file deleted under a live host: links already up go
    on, and within about a second the host publishes itself again, so new
    clients find it.
    """
    record = os.path.join(channelDirectory, "record")
    host = children.candidate("deleted", record)
    host.waitFor(lambda line: line == "ROLE host")
    streaming = children.client(
        "deleted", "s", 1500, "--slice", "10", "--interval", "0.005"
    )
    streaming.waitFor(lambda line: line.startswith("LINK"))
    published = children.channelFile("deleted")
    os.unlink(published)
    waitUntil(lambda: os.path.exists(published), 5, "the host to publish again")
    newcomer = children.client("deleted", "n", 20)
    newcomer.waitFor(lambda line: line.startswith("CLOSED"), 20)
    assert newcomer.collect()[-1] == "CLOSED ConnectionDone 0"
    streaming.waitFor(lambda line: line.startswith("CLOSED"), 60)
    assert streaming.collect()[-1] == "CLOSED ConnectionDone 0"
    assert not any(line.startswith("UNLINK ") for line in streaming.collect())
    assertDeliveredInOrder(readRecords(record), {"s": 1500, "n": 20})
    assert {r.pid for r in readRecords(record)} == {host.pid}


@pytest.mark.skipif(not ROBUST_MUTEX, reason="only flock here: nothing to meet")
@pytest.mark.parametrize("first", ["mutex", "flock"])
def test_candidateOfAnotherLockMechanismRefusesToTakePart(
    children: ChannelProcesses, first: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A candidate process that elects with the other mechanism than the
    host's (forced with the test-only variable _TWISTED_CHANNEL_LOCK) fails
    to listen, with an error naming the lock file, what it found and what
    it expected, and never hosts; the host goes on serving.
    """
    names = {"mutex": "a robust mutex", "flock": "flock"}
    second = "flock" if first == "mutex" else "mutex"

    def electWith(kind: str) -> None:
        if kind == "flock":
            monkeypatch.setenv("_TWISTED_CHANNEL_LOCK", "flock")
        else:
            monkeypatch.delenv("_TWISTED_CHANNEL_LOCK", raising=False)

    record = os.path.join(children.directory, "record")
    electWith(first)
    host = children.candidate("mech", record)
    host.waitFor(lambda line: line == "ROLE host")
    electWith(second)
    refused = children.candidate("mech", os.devnull)
    line = refused.waitFor(lambda line: line.startswith("ERROR "))
    assert os.path.join(children.directory, "mech.lock") in line
    assert (
        f"found format 2 with {names[first]}, expected format 2 with {names[second]}"
    ) in line
    client = children.client("mech", "c", 20)
    client.waitFor(lambda line: line.startswith("CLOSED"))
    assert "CLOSED ConnectionDone 0" in client.lines
    assert [r.number for r in readRecords(record)] == list(range(1, 21))
    assert not any(line.startswith("ROLE") for line in refused.collect())
    assert host.role() == "host"


def test_handoverLeavesNothingBehind(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    The real-process test CI runs on every Python and Twisted it supports
    (.ci/run):
    a host stopped by SIGTERM hands over to its standby while a client
    streams, nothing is lost, and once the last candidate stops listening
    nothing of the channel is left but its lock file: every port removed
    its socket (or port) file and closed its socket, on the Twisted in use.
    """
    record = os.path.join(channelDirectory, "record")
    first = children.candidate("edge", record)
    first.waitFor(lambda line: line == "ROLE host")
    second = children.candidate("edge", record)
    second.waitFor(lambda line: line == "ROLE standby")
    client = children.client("edge", "e", 1000, "--slice", "20", "--interval", "0.002")
    waitUntil(lambda: len(readRecords(record)) > 100, 30, "100 messages")
    first.kill(signal.SIGTERM)
    assert first.wait() == 0
    second.waitFor(lambda line: line == "ROLE host", 5)
    client.waitFor(lambda line: line.startswith("CLOSED"), 60)
    assert client.collect()[-1] == "CLOSED ConnectionDone 0"
    assertDeliveredInOrder(readRecords(record), {"e": 1000})
    second.send("stop")
    second.waitFor(lambda line: line == "STOPPED")
    assert sorted(os.listdir(channelDirectory)) == ["edge.lock", "record"]
