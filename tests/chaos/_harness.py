"""
The chaos harness's machinery: a cluster of recorder processes on one
channel (started with L{twisted_channel.testing}, whose record of what the
hosts received it reads), and the accounting that turns that record into
figures.

Every wait here is bounded, every child is reaped by pid (never by name),
and every directory is a short one under ``/tmp`` with mode 0700.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twisted_channel._directory import channelPaths
from twisted_channel._temporary import temporaryPrefix as _temporaryPrefix
from twisted_channel.testing import ChannelProcesses, Record, readRecords
from twisted_channel.testing import ChildProcess as Child

#: The channel every chaos cluster uses.
NAME = "chaos"


class HarnessError(AssertionError):
    """
    A process did not do what it should have, in time, or a figure broke
    a promise.
    """


def shortDirectory(prefix: str = "tc-") -> str:
    """
    A new private directory under /tmp (mode 0700), short enough for Unix
    socket paths.
    """
    directory = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(directory, 0o700)
    return directory


def removeDirectory(directory: str) -> None:
    """
    Remove a directory made by L{shortDirectory}, whatever is in it.
    """
    shutil.rmtree(directory, ignore_errors=True)


def waitUntil(
    condition: Callable[[], object], timeout: float, what: str, poll: float = 0.005
) -> float:
    """
    Poll C{condition} until it is true; return the seconds it took.

    @raise HarnessError: if it is not true within C{timeout} seconds.
    """
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise HarnessError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def memoryOf(pid: int) -> dict[str, int]:
    """
    The resident set size now (C{rss}) and at its peak (C{hwm}) of process
    C{pid}, in KiB, from C{/proc}.
    """
    figures = {"rss": 0, "hwm": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    figures["rss"] = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    figures["hwm"] = int(line.split()[1])
    except OSError:
        pass
    return figures


def descriptorsOf(pid: int) -> int:
    """
    How many file descriptors process C{pid} has open.
    """
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def hostStatus(socketPath: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """
    Ask whoever listens at C{socketPath} for the channel's status, as a
    client with the status-query flag does; L{None} if nobody answers.
    """
    from twisted_channel import _wire

    hello = _wire.encodeHello(
        _wire.Hello(os.urandom(16), os.getpid(), 4096, 1, _wire.FLAG_STATUS_QUERY)
    )
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(timeout)
    try:
        raw.connect(socketPath)
        raw.sendall(hello)
        reply = b""
        while True:
            chunk = raw.recv(65536)
            if not chunk:
                break
            reply += chunk
    except OSError:
        return None
    finally:
        raw.close()
    try:
        frames = _wire.FrameDecoder(1 << 20).feed(reply)
    except _wire.ProtocolError:
        return None
    for kind, body in frames:
        if kind == _wire.STATUS:
            status: dict[str, Any] = json.loads(body)
            return status
    return None


# Accounting


@dataclass
class StreamEnd:
    """
    How one sender's stream ended.

    @ivar sent: the last number it wrote (all of 1..sent were written), or
        L{None} if it died before saying.
    @ivar reason: the class name of its connection's end, or C{"died"}.
    @ivar undelivered: how many messages it reported unacknowledged.
    """

    tag: str
    sent: int | None
    reason: str
    undelivered: int = 0

    @property
    def died(self) -> bool:
        return self.sent is None


@dataclass
class Delivery:
    """
    The accounting of one run's messages.

    @ivar sent: messages written by senders that did not die (all promised),
        plus those of senders that died up to the last one delivered.
    @ivar delivered: distinct messages that reached a host.
    @ivar duplicated: deliveries beyond the first of a message (allowed
        across a host's death: at least once).
    @ivar duplicatedWithinHost: deliveries of a message twice by one host
        (never allowed).
    @ivar lost: promised messages that reached no host (never allowed).
    @ivar outOfOrder: steps, within one host's life and one sender, from a
        message to any but the next (never allowed).
    @ivar notPromised: messages a client wrote but reported undelivered when
        it gave up (C{ChannelUnreachableError}), which are not promised;
        C{deliveredAnyway} of them reached a host all the same.
    """

    sent: int = 0
    delivered: int = 0
    duplicated: int = 0
    duplicatedWithinHost: int = 0
    lost: int = 0
    outOfOrder: int = 0
    phantom: int = 0
    notPromised: int = 0
    deliveredAnyway: int = 0
    senders: int = 0
    sendersDied: int = 0
    lostExamples: list[str] = field(default_factory=list)
    orderExamples: list[str] = field(default_factory=list)

    def assertPromisesKept(self, what: str = "") -> None:
        """
        @raise HarnessError: if a message was lost, reordered, delivered
            twice by one host, or invented.
        """
        broken = []
        if self.lost:
            broken.append(f"{self.lost} lost (e.g. {self.lostExamples[:5]})")
        if self.outOfOrder:
            broken.append(
                f"{self.outOfOrder} out of order (e.g. {self.orderExamples[:5]})"
            )
        if self.duplicatedWithinHost:
            broken.append(f"{self.duplicatedWithinHost} duplicated within one host")
        if self.phantom:
            broken.append(f"{self.phantom} never written yet delivered")
        if broken:
            raise HarnessError(f"{what}: " + "; ".join(broken))


def account(records: Iterable[Record], ends: dict[str, StreamEnd]) -> Delivery:
    """
    Count what the senders in C{ends} wrote against what the hosts
    recorded.

    A sender that died is promised nothing it wrote after its last message
    that reached a host, but everything before that must have arrived: a
    client resends in order, so the messages delivered of any sender are
    always 1..n.
    """
    byTag: dict[str, list[int]] = defaultdict(list)
    byHost: dict[tuple[int, str], list[int]] = defaultdict(list)
    for record in records:
        byTag[record.tag].append(record.number)
        byHost[(record.pid, record.tag)].append(record.number)
    result = Delivery()
    for tag, end in sorted(ends.items()):
        numbers = byTag.get(tag, [])
        distinct = set(numbers)
        result.senders += 1
        result.delivered += len(distinct)
        result.duplicated += len(numbers) - len(distinct)
        if end.died:
            result.sendersDied += 1
            promised = max(distinct, default=0)
        else:
            assert end.sent is not None
            promised = end.sent - end.undelivered
            result.notPromised += end.undelivered
            result.deliveredAnyway += len(
                [n for n in distinct if promised < n <= end.sent]
            )
            result.phantom += len([n for n in distinct if n > end.sent])
        result.sent += end.sent if end.sent is not None else promised
        missing = [n for n in range(1, promised + 1) if n not in distinct]
        result.lost += len(missing)
        result.lostExamples.extend(f"{tag}:{n}" for n in missing[:3])
    for (pid, tag), numbers in byHost.items():
        if tag not in ends:
            continue
        result.duplicatedWithinHost += len(numbers) - len(set(numbers))
        for before, after in zip(numbers, numbers[1:], strict=False):
            if after != before + 1:
                result.outOfOrder += 1
                if len(result.orderExamples) < 10:
                    result.orderExamples.append(f"{tag} at {pid}: {before}->{after}")
    return result


# The cluster


@dataclass
class Failover:
    """
    One host's death and the next host's start.

    @ivar killed: the dead host's pid; C{killedAt} when it was signalled.
    @ivar host: the next host's pid; C{electedAt} when it became host and
        C{firstAt} when its protocol received its first message (all
        C{CLOCK_MONOTONIC} nanoseconds, comparable across processes).
    """

    killed: int
    killedAt: int
    host: int
    electedAt: int
    firstAt: int

    @property
    def electedMs(self) -> float:
        return (self.electedAt - self.killedAt) / 1e6

    @property
    def firstMessageMs(self) -> float:
        return (self.firstAt - self.killedAt) / 1e6


def _stamp(line: str) -> int:
    return int(line.split()[1])


class Cluster:
    """
    The worker processes of one channel, started with C{sys.executable}.

    @ivar record: the file every candidate records received messages in.
    @ivar streams: for each sender tag, the process that writes it.
    """

    def __init__(
        self,
        directory: str,
        recordDirectory: str | None = None,
        reactorName: str = "default",
        name: str = NAME,
        transport: str = "unix",
        lifetime: float = 600.0,
    ) -> None:
        """
        @param lifetime: seconds after which any process of the cluster
            still running is killed (see L{ChildProcess}).
        """
        from twisted_channel._directory import channelPaths

        self.directory = directory
        self.name = name
        self.reactorName = reactorName
        self.transportKind = transport
        self.children = ChannelProcesses(
            directory, reactorName, transport, lifetime=lifetime
        )
        self.record = os.path.join(recordDirectory or directory, "record")
        self.socketPath = channelPaths(name, directory).socket
        self.candidates: list[Child] = []
        self.streams: dict[str, Child] = {}
        self.dead: set[int] = set()
        self._tags = 0

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def worker(self, mode: str, *extra: str) -> Child:
        """
        Start one recorder process (see L{twisted_channel.testing.recorder}).
        """
        return self.children.recorder(mode, self.name, *extra)

    def newTag(self, prefix: str) -> str:
        self._tags += 1
        return f"{prefix}{self._tags}"

    def candidate(self, stream: str | None = None, *extra: str) -> Child:
        """
        Start a candidate host, recording what it receives; with C{stream},
        it also streams messages tagged so.
        """
        arguments = ["--record", self.record, *extra]
        if stream:
            arguments += ["--stream", stream]
        child = self.worker("candidate", *arguments)
        self.candidates.append(child)
        if stream:
            self.streams[stream] = child
        return child

    def client(self, tag: str, *extra: str) -> Child:
        """
        Start a pure client streaming messages tagged C{tag}.
        """
        child = self.worker("client", "--tag", tag, *extra)
        self.streams[tag] = child
        return child

    def alive(self, child: Child) -> bool:
        return child.pid not in self.dead and not child.exited()

    def hosts(self) -> list[Child]:
        """
        The live candidates that last said they host.
        """
        return [c for c in self.candidates if self.alive(c) and c.role() == "host"]

    def standbys(self) -> list[Child]:
        return [c for c in self.candidates if self.alive(c) and c.role() == "standby"]

    def waitForHost(self, timeout: float = 10.0) -> Child:
        """
        Wait until exactly one live candidate hosts, and return it.
        """
        found: list[Child] = []

        def one() -> bool:
            found[:] = self.hosts()
            return len(found) == 1

        waitUntil(one, timeout, "exactly one host")
        return found[0]

    def waitForStandbys(self, count: int, timeout: float = 20.0) -> None:
        waitUntil(lambda: len(self.standbys()) >= count, timeout, f"{count} standby(s)")

    def signal(self, child: Child, signum: int = signal.SIGKILL) -> int:
        """
        Send C{signum} to C{child}; return when, in monotonic nanoseconds.
        Killing signals mark it dead.
        """
        at = time.monotonic_ns()
        os.kill(child.pid, signum)
        if signum in (signal.SIGKILL, signal.SIGTERM):
            self.dead.add(child.pid)
        return at

    def failover(self, killed: Child, killedAt: int, timeout: float = 10.0) -> Failover:
        """
        Wait for the next host after C{killed} and for its first message.
        """
        host = self.waitForHost(timeout)
        elected = host.waitFor(lambda line: line.startswith("ELECTED "), timeout)
        first = host.waitFor(lambda line: line.startswith("FIRST "), timeout)
        return Failover(killed.pid, killedAt, host.pid, _stamp(elected), _stamp(first))

    def assertOneHost(self, timeout: float = 10.0) -> int:
        """
        Exactly one live candidate hosts, and (over a Unix socket) it is the
        one answering at the socket; return its pid.
        """
        host = self.waitForHost(timeout)
        if self.transportKind != "unix":
            return host.pid
        status = hostStatus(self.socketPath)
        if status is None or status.get("pid") != host.pid or not status["hosted"]:
            raise HarnessError(
                f"candidate {host.pid} says it hosts, but the socket answers {status}"
            )
        return host.pid

    def finish(
        self, timeout: float = 60.0, only: Iterable[str] | None = None
    ) -> dict[str, StreamEnd]:
        """
        Tell every live sender to stop and close gracefully; wait for each
        to close, and say how each stream ended (those of dead senders
        too).
        """
        tags = list(self.streams if only is None else only)
        for tag in tags:
            child = self.streams[tag]
            if self.alive(child):
                try:
                    child.send("finish")
                except OSError:
                    pass
        ends: dict[str, StreamEnd] = {}
        deadline = time.monotonic() + timeout
        for tag in tags:
            child = self.streams[tag]
            if not self.alive(child) and child.pid in self.dead:
                ends[tag] = StreamEnd(tag, None, "died")
                continue
            left = max(0.1, deadline - time.monotonic())
            closed = child.waitFor(lambda line: line.startswith("CLOSED "), left)
            wrote = child.waitFor(lambda line: line.startswith("WROTE "), 1)
            _, reason, undelivered = closed.split()
            ends[tag] = StreamEnd(tag, int(wrote.split()[1]), reason, int(undelivered))
        return ends

    def ended(self, tag: str, timeout: float = 30.0) -> StreamEnd:
        """
        Wait for the sender C{tag} to close by itself, and say how.
        """
        child = self.streams[tag]
        closed = child.waitFor(lambda line: line.startswith("CLOSED "), timeout)
        wrote = child.waitFor(lambda line: line.startswith("WROTE "), 1)
        _, reason, undelivered = closed.split()
        return StreamEnd(tag, int(wrote.split()[1]), reason, int(undelivered))

    def records(self) -> list[Record]:
        return readRecords(self.record)

    def strayFiles(self) -> list[str]:
        """
        What the runtime directory holds besides the channel's own files,
        the record and the sockets (over TCP, port files) live standbys
        hold ready (named after their pid): what a dead process left
        behind.
        """
        paths = channelPaths(self.name, self.directory)
        own = {
            os.path.basename(path)
            for path in (paths.socket, paths.lock, paths.port, self.record)
        }
        prefixes = [
            os.path.basename(_temporaryPrefix(published))
            for published in (paths.socket, paths.port)
        ]
        ready = tuple(
            f"{prefix}{child.pid}-"
            for prefix in prefixes
            for child in self.candidates
            if self.alive(child)
        )
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return sorted(
            name for name in names if name not in own and not name.startswith(ready)
        )

    def strayFilesAfterCleanUp(self, timeout: float = 3.0) -> list[str]:
        """
        L{strayFiles}, once the host has had the time to remove what dead
        processes left: it does at each check of its socket, every second.
        """
        deadline = time.monotonic() + timeout
        stray = self.strayFiles()
        while stray and time.monotonic() < deadline:
            time.sleep(0.05)
            stray = self.strayFiles()
        return stray

    def recordCount(self) -> int:
        """
        How many lines the record holds now (cheaply, without parsing).
        """
        try:
            with open(self.record, "rb") as f:
                return sum(
                    chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b"")
                )
        except FileNotFoundError:
            return 0

    def waitForRecords(self, more: int, timeout: float = 20.0) -> None:
        """
        Wait until the hosts recorded C{more} messages more than now.
        """
        target = self.recordCount() + more
        waitUntil(
            lambda: self.recordCount() >= target,
            timeout,
            f"{more} more messages",
            poll=0.02,
        )

    def close(self) -> None:
        """
        Kill and reap every process this cluster started.
        """
        for child in self.children.children:
            try:
                if not child.exited():
                    os.kill(child.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.children.reapAll()


def runPython(script: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """
    Run a short script with this interpreter, bounded in time.
    """
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
