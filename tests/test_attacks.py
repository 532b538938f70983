"""
Hostile peers and a hostile filesystem, with real processes: slow-loris
peers, a flood of connections, planted symbolic links, unsafe directories,
names that try to escape, and writers faster than their readers.

A peer of another user id is refused too: that is
C{tests/test_processes.py::test_peerOfAnotherUserIsRefused}.

The host's handshake deadline is 10 s by default; these tests give the
candidates a shorter one (the worker's C{--handshake-timeout}, which sets
L{ChannelPort}'s C{handshakeTimeout}), except the soak-only test of the
default.  With C{TC_COUNT_FILE} set, the number of hostile inputs each test
tried is appended there.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import selectors
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tests.chaos._harness import (
    Cluster,
    HarnessError,
    account,
    descriptorsOf,
    memoryOf,
    removeDirectory,
    shortDirectory,
    waitUntil,
)
from twisted_channel import _wire
from twisted_channel.testing import RECORDER

pytestmark = pytest.mark.timeout(180)

SOAK = bool(os.environ.get("TC_SOAK"))
DEADLINE = 2.0

_attacks: dict[str, int] = {}


def _count(name: str, number: int = 1) -> None:
    _attacks[name] = _attacks.get(name, 0) + number


@pytest.fixture(scope="module", autouse=True)
def _reportAttacks() -> Iterator[None]:
    """
    Append how many hostile inputs each test tried to C{$TC_COUNT_FILE}.
    """
    yield
    path = os.environ.get("TC_COUNT_FILE")
    if path:
        with open(path, "a") as f:
            for name, count in sorted(_attacks.items()):
                f.write(json.dumps({"kind": "attack", "name": name, "count": count}))
                f.write("\n")


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    name = request.config.getoption("reactor", "default")
    directory = shortDirectory()
    # The record is kept elsewhere: the tests check what is created here.
    records = shortDirectory()
    group = Cluster(
        directory, records, reactorName="asyncio" if name == "asyncio" else "default"
    )
    try:
        yield group
    finally:
        group.close()
        removeDirectory(directory)
        removeDirectory(records)


def _hostAndClient(
    cluster: Cluster, deadline: float | None = DEADLINE
) -> tuple[object, object]:
    extra = [] if deadline is None else ["--handshake-timeout", str(deadline)]
    host = cluster.candidate(None, *extra)
    host.waitFor(lambda line: line == "ROLE host", 30)
    client = cluster.client("a", "--rate", "300")
    client.waitFor(lambda line: line.startswith("LINK"), 30)
    cluster.waitForRecords(50)
    return host, client


def _refusedAt(
    sock: socket.socket, opened: float, timeout: float
) -> tuple[float, bytes]:
    """
    Read until the host closes C{sock}; return when (seconds after
    C{opened}) and what it sent.
    """
    sock.settimeout(timeout)
    reply = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return time.monotonic() - opened, reply


def _errorReason(reply: bytes) -> str:
    frames = _wire.FrameDecoder(1 << 20).feed(reply)
    assert frames and frames[-1][0] == _wire.ERROR, frames
    return frames[-1][1].decode()


# Slow-loris


def _slowLoris(cluster: Cluster, deadline: float, silent: int, trickling: int) -> None:
    host, _ = _hostAndClient(cluster, None if deadline == 10.0 else deadline)
    before = descriptorsOf(host.pid)  # type: ignore[attr-defined]
    hello = _wire.encodeHello(_wire.Hello(os.urandom(16), os.getpid(), 1 << 20))
    opened = time.monotonic()
    sockets = []
    for _ in range(silent + trickling):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(cluster.socketPath)
        sockets.append(sock)
    _count("slow-loris peers", silent + trickling)
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:
        # One byte of a valid hello a second: bytes do not buy time.
        for byte in hello:
            if stop.wait(1.0):
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return

    threads = [
        threading.Thread(target=trickle, args=(s,), daemon=True)
        for s in sockets[silent:]
    ]
    for thread in threads:
        thread.start()
    served = cluster.recordCount()
    try:
        for sock in sockets:
            at, reply = _refusedAt(sock, opened, deadline + 10)
            assert deadline - 0.5 <= at <= deadline + 3, at
            assert "no hello within" in _errorReason(reply)
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
    # The host served its client all the while, and freed every slot.
    assert cluster.recordCount() - served > 100 * deadline
    waitUntil(
        lambda: descriptorsOf(host.pid) <= before,  # type: ignore[attr-defined]
        5,
        "the host to close the slow-loris descriptors",
    )
    ends = cluster.finish(30)
    account(cluster.records(), ends).assertPromisesKept("slow-loris")
    assert ends["a"].reason == "ConnectionDone"
    assert cluster.assertOneHost() == host.pid  # type: ignore[attr-defined]


def test_slowLorisPeersAreDroppedAtTheDeadline(cluster: Cluster) -> None:
    """
    Peers that connect and send nothing, or one byte of a hello a second,
    are closed with an ERROR frame at the handshake deadline (not later
    for the trickling ones); the host serves its client meanwhile and
    closes every descriptor they held.
    """
    _slowLoris(cluster, DEADLINE, silent=20, trickling=5)


@pytest.mark.skipif(not SOAK, reason="soak only (TC_SOAK=1): waits the default 10 s")
def test_slowLorisWithTheDefaultDeadline(cluster: Cluster) -> None:
    """
    The same with the default deadline of 10 s.
    """
    _slowLoris(cluster, 10.0, silent=50, trickling=10)


# Connection floods


def _flood(path: str, count: int, timeout: float) -> list[socket.socket]:
    """
    Open C{count} connections to C{path} at once (non-blocking connects,
    retried while the listen queue is full); return them.
    """
    needed = count + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    sockets: list[socket.socket] = []
    deadline = time.monotonic() + timeout
    try:
        while len(sockets) < count:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            while True:
                code = sock.connect_ex(path)
                if code == 0:
                    break
                if code not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    sock.close()
                    raise OSError(code, os.strerror(code))
                if time.monotonic() > deadline:
                    sock.close()
                    raise HarnessError(
                        f"only {len(sockets)} connections in {timeout} s"
                    )
                time.sleep(0.001)
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _closedByPeer(sockets: list[socket.socket], timeout: float) -> int:
    """
    Wait until the host closed each of C{sockets}; return how many it did.
    """
    open_ = set(sockets)
    deadline = time.monotonic() + timeout
    # epoll, not select(): descriptors past 1023 are likely here.
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        while open_ and time.monotonic() < deadline:
            for key, _ in selector.select(0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if sock.recv(65536):
                        continue
                except OSError:
                    pass
                open_.discard(sock)
                selector.unregister(sock)
    return len(sockets) - len(open_)


def test_floodOfAThousandConnections(cluster: Cluster) -> None:
    """
    A thousand connections opened at once, none of which says hello: the
    host accepts them all, keeps delivering its client's messages and
    serves a new client meanwhile, then drops them at the handshake
    deadline and frees their descriptors.
    """
    host, _ = _hostAndClient(cluster)
    before = descriptorsOf(host.pid)  # type: ignore[attr-defined]
    served = cluster.recordCount()
    started = time.monotonic()
    sockets = _flood(cluster.socketPath, 1000, 20)
    _count("flood connections", len(sockets))
    try:
        opened = time.monotonic() - started
        cluster.client("during", "--count", "20")
        during = cluster.ended("during", 20)
        assert (during.reason, during.undelivered) == ("ConnectionDone", 0)
        # The first client streams at a steady rate while the flood lasts;
        # how many it got through by now depends on how long opening the
        # flood took, so wait for them, no longer than the flood's deadline.
        waitUntil(
            lambda: cluster.recordCount() > served + 100,
            DEADLINE,
            "the host to go on delivering its client's messages",
        )
        dropped = _closedByPeer(sockets, DEADLINE + 20)
    finally:
        for sock in sockets:
            sock.close()
    assert dropped == len(sockets)
    waitUntil(
        lambda: descriptorsOf(host.pid) <= before + 1,  # type: ignore[attr-defined]
        10,
        "the host to close the flood's descriptors",
    )
    ends = cluster.finish(30, only=["a"])
    ends["during"] = during
    account(cluster.records(), ends).assertPromisesKept("flood")
    assert cluster.assertOneHost() == host.pid  # type: ignore[attr-defined]
    print(f"1000 connections opened in {opened:.2f} s")


def test_floodPastTheHostsDescriptorLimit(cluster: Cluster) -> None:
    """
    A host limited to 200 descriptors is flooded with 1,000 connections:
    those it cannot hold are accepted and closed at once (Twisted's
    reserved descriptor), and its existing link is served all the while.
    """
    host, _ = _hostAndClient(cluster)
    pid = host.pid  # type: ignore[attr-defined]
    hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (200, hard))
    served = cluster.recordCount()
    sockets = _flood(cluster.socketPath, 1000, 30)
    _count("flood connections past the descriptor limit", len(sockets))
    try:
        cluster.waitForRecords(100)
        dropped = _closedByPeer(sockets, DEADLINE + 20)
    finally:
        for sock in sockets:
            sock.close()
    assert dropped == len(sockets)
    assert cluster.recordCount() > served + 100
    ends = cluster.finish(30)
    account(cluster.records(), ends).assertPromisesKept("flood past the limit")
    assert cluster.assertOneHost() == pid


# The filesystem


def _snapshot(path: str) -> tuple[object, ...]:
    info = os.lstat(path)
    content = b""
    if stat.S_ISREG(info.st_mode):
        with open(path, "rb") as f:
            content = f.read()
    return (
        info.st_ino,
        info.st_mode,
        info.st_uid,
        info.st_size,
        info.st_mtime_ns,
        content,
    )


def _refused(cluster: Cluster, mode: str = "candidate") -> str:
    """
    Start a worker that must fail to listen (or connect); return its error.
    """
    if mode == "candidate":
        child = cluster.candidate(None)
    else:
        child = cluster.client("refused", "--count", "1", "--timeout", "2")
    line = child.waitFor(lambda line: line.startswith("ERROR"), 20)
    assert child.wait(10) in (0, 2)
    return line


@pytest.mark.parametrize("which", ["sock", "lock"])
@pytest.mark.parametrize("target", ["file", "dangling", "directory"])
def test_symlinkPlantedInTheDirectory(
    cluster: Cluster, which: str, target: str
) -> None:
    """
    A symbolic link at the socket or lock path, to a file, a directory or
    nowhere outside the runtime directory: the candidate refuses to listen,
    naming the link, and neither the link nor what it points to changes
    (nothing is created at a dangling link's target).
    """
    outside = shortDirectory("tc-out-")
    try:
        destination = os.path.join(outside, "victim")
        if target == "file":
            with open(destination, "wb") as f:
                f.write(b"precious")
        elif target == "directory":
            os.mkdir(destination)
        link = os.path.join(cluster.directory, f"{cluster.name}.{which}")
        os.symlink(destination, link)
        before = [_snapshot(link)] + (
            [_snapshot(destination)] if target != "dangling" else []
        )
        error = _refused(cluster)
        _count("symbolic links planted")
        assert "UnsafeDirectoryError" in error
        assert "symbolic link" in error or "not a socket" in error, error
        assert link.split("/")[-1] in error
        after = [_snapshot(link)] + (
            [_snapshot(destination)] if target != "dangling" else []
        )
        assert after == before
        assert os.path.exists(destination) is (target != "dangling")
        assert os.listdir(outside) == ([] if target == "dangling" else ["victim"])
    finally:
        removeDirectory(outside)


def test_directoryOfAnotherUser(cluster: Cluster) -> None:
    """
    A runtime directory owned by another user (uid 65534) is refused by
    candidates and clients alike, and nothing is created in it.
    """
    if os.getuid() != 0:
        pytest.skip("needs root to give the directory to uid 65534")
    os.chown(cluster.directory, 65534, 65534)
    try:
        for mode in ("candidate", "client"):
            error = _refused(cluster, mode)
            _count("directory of another user")
            assert "UnsafeDirectoryError" in error
            assert "belongs to uid 65534" in error, error
        assert os.listdir(cluster.directory) == []
    finally:
        os.chown(cluster.directory, 0, 0)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o722])
def test_directoryWritableByOthers(cluster: Cluster, mode: int) -> None:
    """
    A runtime directory writable by group or others (sticky or not) is
    refused, and nothing is created in it.
    """
    os.chmod(cluster.directory, mode)
    try:
        error = _refused(cluster)
        _count("directory writable by others")
        assert "UnsafeDirectoryError" in error
        assert "writable by group or others" in error, error
        assert os.listdir(cluster.directory) == []
    finally:
        os.chmod(cluster.directory, 0o700)


ESCAPES = ["../x", "/etc/passwd", "..", "a/b", ".hidden", "-x", "x y", "x" * 101]


@pytest.mark.parametrize("name", ESCAPES)
def test_nameThatTriesToEscape(cluster: Cluster, name: str) -> None:
    """
    A name that tries to leave the runtime directory (or is otherwise not a
    name) is refused with the naming rule, in the endpoint string too, and
    nothing is created anywhere.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString, serverFromString

    # Where the channel's files would land if the name were used as a path.
    escaped = [
        os.path.normpath(os.path.join(cluster.directory, name + suffix))
        for suffix in (".sock", ".lock", ".port")
    ]
    existed = {path: os.path.lexists(path) for path in escaped}
    passwd = _snapshot("/etc/passwd")
    child = cluster.children.start(
        [sys.executable, "-m", RECORDER, "candidate", "--dir", cluster.directory]
        + [f"--name={name}", "--record", os.devnull]
    )
    line = child.waitFor(lambda line: line.startswith("ERROR"), 20)
    assert child.wait(10) == 2
    assert "ValueError" in line and "channel name" in line, line
    for parse in (serverFromString, clientFromString):
        with pytest.raises(ValueError, match="channel name"):
            parse(reactor, f"channel:{name.replace(':', '')}:dir={cluster.directory}")
    _count("names that try to escape", 3)
    assert os.listdir(cluster.directory) == []
    assert {path: os.path.lexists(path) for path in escaped} == existed
    assert _snapshot("/etc/passwd") == passwd


# Backpressure


def _rssSampler(
    pid: int, samples: list[int], stop: threading.Event
) -> threading.Thread:
    def sample() -> None:
        while not stop.is_set():
            rss = memoryOf(pid)["rss"]
            if rss:
                samples.append(rss)
            stop.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    return thread


def test_writePastTheCapFailsLoudly(cluster: Cluster) -> None:
    """
    With no host, a client that writes past C{maxBufferSize} with no
    producer gets C{ChannelBufferFullError} at the cap, having buffered no
    more; what it buffered is delivered once a host comes.
    """
    cap = 1 << 20
    client = cluster.client(
        "w",
        "--max-buffer",
        str(cap),
        "--max-message",
        "65536",
        "--size",
        "65536",
        "--count",
        "100",
    )
    full = client.waitFor(lambda line: line.startswith("FULL"), 20)
    _, written, buffered = full.split()
    # Up to the cap, counting any per-message bookkeeping, and no further.
    assert cap // 65536 - 1 <= int(written) <= cap // 65536, full
    assert int(buffered) <= cap
    cluster.candidate(None).waitFor(lambda line: line == "ROLE host", 30)
    end = cluster.ended("w", 30)
    assert (end.sent, end.reason, end.undelivered) == (
        int(written),
        "ConnectionDone",
        0,
    )
    account(cluster.records(), {"w": end}).assertPromisesKept("cap")


def test_producerIsPausedAndMemoryStaysUnderTheCap(cluster: Cluster) -> None:
    """
    A push producer writing 64 KiB messages as fast as it may, with an
    8 MiB cap: with no host, it is paused at the high-water mark; with a
    host, it runs; with the host frozen (a stalled reader), it is paused
    again; thawed, it resumes.  The client's memory never passes its idle
    size plus the cap (up to half of it unacknowledged, and as much again
    in the link's send buffer) plus a margin, and all 2,048 messages
    (128 MiB) arrive.
    """
    cap = 8 << 20
    count = 2048
    idle = cluster.client("idle")
    producer = cluster.client(
        "p",
        "--producer",
        "--max-buffer",
        str(cap),
        "--max-message",
        "65536",
        "--size",
        "65536",
        "--count",
        str(count),
        "--timeout",
        "60",
    )
    samples: list[int] = []
    stop = threading.Event()
    sampler = _rssSampler(producer.pid, samples, stop)
    host = None
    try:
        producer.waitFor(lambda line: line == "PAUSED 1", 20)
        time.sleep(0.5)
        host = cluster.candidate(None)
        host.waitFor(lambda line: line == "ROLE host", 30)
        producer.waitFor(lambda line: line.startswith("RESUMED"), 20)
        cluster.waitForRecords(200, 30)
        cluster.signal(host, signal.SIGSTOP)
        pausesBefore = sum(x.startswith("PAUSED") for x in producer.collect())
        time.sleep(2.0)
        cluster.signal(host, signal.SIGCONT)
        end = cluster.ended("p", 120)
    finally:
        stop.set()
        sampler.join(5)
        if host is not None:
            cluster.signal(host, signal.SIGCONT)
    idleRss = memoryOf(idle.pid)["rss"]
    peak = max(samples)
    _count("backpressure: messages from a fast writer", count)
    assert (end.sent, end.reason, end.undelivered) == (count, "ConnectionDone", 0)
    assert pausesBefore >= 1
    records = cluster.records()
    account(records, {"p": end}).assertPromisesKept("producer")
    assert all(r.length == 65536 for r in records)
    margin = 8 << 10  # KiB
    assert peak - idleRss < cap // 1024 + margin, (peak, idleRss)
    print(f"producer client: idle {idleRss} KiB, peak {peak} KiB, cap {cap >> 10} KiB")


def _hostFlood(
    cluster: Cluster, producer: bool, count: int, size: int, cap: int
) -> dict[str, int]:
    """
    The host's protocol writes C{count} messages of C{size} bytes to a
    client frozen with SIGSTOP (with a link cap of C{cap} bytes); another
    client is served meanwhile; after the thaw, the frozen client gets
    every message the host's protocol could write.  Return the host's
    memory figures (KiB) and how many messages were written.
    """
    host = cluster.candidate(None, "--max-buffer", str(cap))
    host.waitFor(lambda line: line == "ROLE host", 30)
    before = memoryOf(host.pid)["rss"]
    request = f"flood {count} {size} {int(producer)}"
    reader = cluster.client(
        "r", "--request", request, "--report-every", "1", "--timeout", "0"
    )
    # Once the host has the request (a link is up before its first write
    # leaves the client), the client stops reading.
    host.waitFor(lambda line: line.startswith("FIRST"), 30)
    cluster.signal(reader, signal.SIGSTOP)
    try:
        time.sleep(1.5)
        frozen = memoryOf(host.pid)
        cluster.client("o", "--count", "20")
        otherEnd = cluster.ended("o", 30)
        assert (otherEnd.reason, otherEnd.undelivered) == ("ConnectionDone", 0)
    finally:
        cluster.signal(reader, signal.SIGCONT)
    full = [line for line in host.collect() if line.startswith("HOSTFULL")]
    written = int(full[0].split()[1]) if full else count
    reader.waitFor(lambda line: line == f"RECEIVED {written} {written * size}", 60)
    _count("backpressure: messages written to a frozen reader", written)
    return {
        "before": before,
        "frozen": frozen["rss"],
        "peak": frozen["hwm"],
        "written": written,
    }


def test_hostWritingToAFrozenClientWithAProducer(cluster: Cluster) -> None:
    """
    A host protocol that streams 128 MiB to a frozen client through a
    registered push producer is paused once the link's send buffer is
    full: the host holds little, and everything arrives after the thaw.
    """
    figures = _hostFlood(cluster, True, 2048, 65536, 64 << 20)
    assert figures["written"] == 2048
    assert figures["peak"] - figures["before"] < 16 << 10, figures
    print(f"host, producer: {figures}")


def test_hostWritingToAFrozenClientWithoutAProducer(cluster: Cluster) -> None:
    """
    A host protocol that writes 64 MiB to a frozen client without a
    producer, on a link capped at 16 MiB: its write past the cap raises
    C{ChannelBufferFullError}, the host holds no more than the cap, and
    what was written arrives after the thaw.
    """
    cap = 16 << 20
    figures = _hostFlood(cluster, False, 1024, 65536, cap)
    # The kernel's socket buffers take some before the host's own.
    assert cap // 65536 - 8 <= figures["written"] <= cap // 65536 + 64, figures
    assert figures["peak"] - figures["before"] < (cap >> 10) + (16 << 10), figures
    print(f"host, no producer: {figures}")
