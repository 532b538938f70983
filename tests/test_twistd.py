"""
The channel under C{twistd}: three daemons run C{tests/channel.tac}, which
serves a channel with C{strports.service("channel:NAME:dir=DIR", factory)};
exactly one hosts, and when it is killed another takes over and receives
what clients send.

Who hosts is observed from the outside without looking at the process
list: a client in this process connects through C{clientFromString} and
reads the host's pid from C{transport.whenConnected()}; each daemon's log
says whether it hosted; the tac records what its host received, with its
pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from twisted_channel import ChannelClientTransport

TAC = Path(__file__).resolve().parent / "channel.tac"
#: How to run twistd with this interpreter.  Not C{python -m
#: twisted.scripts.twistd}: that module has no C{__main__} block, so it
#: exits 0 having done nothing.  This is what the C{twistd} script runs.
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]
CHANNEL = "jobs"
#: Seconds to wait for the daemons to start, for a takeover, for a message.
START_TIMEOUT = 20.0
TAKEOVER_TIMEOUT = 5.0
DELIVERY_TIMEOUT = 10.0


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log: Path
    #: Whether the test has signalled it to end.
    ended: bool = False

    def signal(self, number: int) -> int:
        """
        Send this daemon the signal C{number}; return its exit status.
        """
        self.ended = True
        self.process.send_signal(number)
        return self.process.wait(timeout=10)

    @property
    def pid(self) -> int:
        return self.process.pid

    def logText(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def hosted(self) -> bool:
        """
        Whether this daemon's log says it hosted the channel at some time.
        """
        return f"pid {self.pid} hosts at" in self.logText()


@dataclass
class Cluster:
    """
    Daemons running C{channel.tac} on one channel, and what they share.
    """

    root: Path
    directory: Path
    record: Path
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.directory / f"{CHANNEL}.sock"

    def start(self, index: int, *options: str) -> Daemon:
        work = self.root / f"d{index}"
        work.mkdir(mode=0o700)
        log = work / "twistd.log"
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.update(
            TWISTED_CHANNEL_TEST_NAME=CHANNEL,
            TWISTED_CHANNEL_TEST_DIR=str(self.directory),
            TWISTED_CHANNEL_TEST_RECORD=str(self.record),
        )
        with open(work / "output", "wb") as output:
            process = subprocess.Popen(
                [*TWISTD, *options, "-n", "--pidfile=", "-l", str(log), "-y", str(TAC)],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        daemon = Daemon(process, log)
        self.daemons.append(daemon)
        return daemon

    def byPid(self, pid: int | None) -> Daemon:
        for daemon in self.daemons:
            if daemon.pid == pid:
                return daemon
        raise AssertionError(f"pid {pid} is none of {[d.pid for d in self.daemons]}")

    def records(self) -> list[tuple[int, str, str]]:
        try:
            text = self.record.read_text()
        except FileNotFoundError:
            return []
        result = []
        for line in text.splitlines():
            pid, kind, rest = line.split(" ", 2)
            result.append((int(pid), kind, rest))
        return result

    def describe(self) -> str:
        parts = [f"record: {self.records()!r}"]
        for daemon in self.daemons:
            output = (daemon.log.parent / "output").read_text(errors="replace")
            parts.append(
                f"--- pid {daemon.pid} (exit {daemon.process.poll()})\n"
                f"{output}{daemon.logText()}"
            )
        return "\n".join(parts)

    def stopAll(self) -> None:
        """
        End every daemon this test started, by its pid, and reap it.
        """
        for daemon in self.daemons:
            if daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for daemon in self.daemons:
            try:
                daemon.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                daemon.process.kill()
                daemon.process.wait(timeout=5)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="tc-", dir="/tmp"))
    os.chmod(root, 0o700)
    directory = root / "rt"
    directory.mkdir(mode=0o700)
    group = Cluster(root, directory, root / "record")
    try:
        yield group
    finally:
        group.stopAll()
        shutil.rmtree(root, ignore_errors=True)


class Sender(Protocol):
    """
    A client that reports when its connection ends.
    """

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.ended.callback(None)


def channelTransport(protocol: Protocol) -> ChannelClientTransport:
    transport = protocol.transport
    assert isinstance(transport, ChannelClientTransport), transport
    return transport


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


async def waitFor(what: str, check: Any, timeout: float, cluster: Cluster) -> None:
    """
    Check the files every 50 ms until C{check()} is true.
    """
    deadline = time.monotonic() + timeout
    while not check():
        for daemon in cluster.daemons:
            if not daemon.ended and daemon.process.poll() is not None:
                raise AssertionError(
                    f"twistd pid {daemon.pid} exited while waiting for {what}\n"
                    + cluster.describe()
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s\n" + cluster.describe())
        await sleep(0.05)


async def connect(cluster: Cluster) -> Sender:
    """
    A client of the channel, through the endpoint string as a user writes it.
    """
    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString

    endpoint = clientFromString(
        reactor, f"channel:{CHANNEL}:dir={cluster.directory}:timeout=10"
    )
    protocol: Sender = await endpoint.connect(Factory.forProtocol(Sender))
    return protocol


async def sendAndClose(
    cluster: Cluster, client: Sender, message: bytes, timeout: float
) -> None:
    """
    Write C{message} and close once a host has acknowledged it: a clean
    close means it was delivered.
    """
    from twisted.internet import reactor

    assert client.transport is not None
    client.transport.write(message)
    client.transport.loseConnection()
    await client.ended.addTimeout(timeout, reactor)
    reason = client.reason
    assert reason is not None and reason.check(ConnectionDone), (
        reason,
        cluster.describe(),
    )


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_oneOfThreeTwistdsHostsAndAnotherTakesOver(cluster: Cluster) -> None:
    """
    Three C{twistd -y channel.tac}: one hosts; SIGKILL it and one of the
    other two hosts within seconds, and receives a client's message.
    """
    from twisted.internet import reactor

    cluster.start(0)
    cluster.start(1)
    # One under another reactor: the drop-in must not have chosen one, and
    # candidates on different reactors share the channel.
    asyncio = cluster.start(2, "--reactor=asyncio")
    pids = {daemon.pid for daemon in cluster.daemons}

    # Each daemon's factory starts as its endpoint listens; by then it hosts
    # or stands by.
    def allStarted() -> bool:
        return {pid for pid, kind, _ in cluster.records() if kind == "started"} == pids

    await waitFor("start of all three endpoints", allStarted, START_TIMEOUT, cluster)
    assert stat.S_ISSOCK(os.lstat(cluster.socket).st_mode)
    assert "AsyncioSelectorReactor" in asyncio.logText(), cluster.describe()

    client = await connect(cluster)
    host = await channelTransport(client).whenConnected().addTimeout(10, reactor)
    assert host.pid in pids, cluster.describe()
    assert host.path == str(cluster.socket)
    first = cluster.byPid(host.pid)
    assert [d.pid for d in cluster.daemons if d.hosted()] == [first.pid], (
        cluster.describe()
    )

    await sendAndClose(cluster, client, b"before the kill", DELIVERY_TIMEOUT)
    messages = [
        (pid, text) for pid, kind, text in cluster.records() if kind == "message"
    ]
    assert messages == [(first.pid, "before the kill")]

    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    killedAt = time.monotonic()
    survivors = {d.pid for d in cluster.daemons if d is not first}

    # Written before any host is reachable again: buffered, then delivered
    # to whoever takes over.
    client = await connect(cluster)
    channelTransport(client).write(b"after the kill")
    newHost = (
        await channelTransport(client)
        .whenConnected()
        .addTimeout(TAKEOVER_TIMEOUT, reactor)
    )
    assert time.monotonic() - killedAt < TAKEOVER_TIMEOUT
    assert newHost.pid in survivors, cluster.describe()
    second = cluster.byPid(newHost.pid)
    hosts = {d.pid for d in cluster.daemons if d.hosted()}
    assert hosts == {first.pid, second.pid}, cluster.describe()
    assert stat.S_ISSOCK(os.lstat(cluster.socket).st_mode)

    await sendAndClose(cluster, client, b"and one more", DELIVERY_TIMEOUT)
    messages = [
        (pid, text) for pid, kind, text in cluster.records() if kind == "message"
    ]
    assert messages == [
        (first.pid, "before the kill"),
        (second.pid, "after the kill"),
        (second.pid, "and one more"),
    ]
    for daemon in cluster.daemons:
        if daemon is not first:
            assert daemon.process.poll() is None, cluster.describe()


@pytest.mark.timeout(60)
@pytest_twisted.ensureDeferred
async def test_twistdStopsGracefully(cluster: Cluster) -> None:
    """
    A twistd host that is told to stop (SIGTERM: the service stops, and
    with it the channel port) hands over to its standby at once; when the
    last one stops, the socket is gone.
    """
    from twisted.internet import reactor

    cluster.start(0)
    cluster.start(1)
    pids = {daemon.pid for daemon in cluster.daemons}

    def allStarted() -> bool:
        started = {pid for pid, kind, _ in cluster.records() if kind == "started"}
        return started == pids

    await waitFor("start of both endpoints", allStarted, START_TIMEOUT, cluster)
    client = await connect(cluster)
    host = await channelTransport(client).whenConnected().addTimeout(10, reactor)
    first = cluster.byPid(host.pid)
    (other,) = (d for d in cluster.daemons if d is not first)
    await sendAndClose(cluster, client, b"one", DELIVERY_TIMEOUT)

    assert first.signal(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Server Shut Down." in first.logText(), cluster.describe()
    await waitFor("takeover after a graceful stop", other.hosted, 5, cluster)

    client = await connect(cluster)
    newHost = await channelTransport(client).whenConnected().addTimeout(5, reactor)
    assert newHost.pid == other.pid
    await sendAndClose(cluster, client, b"two", DELIVERY_TIMEOUT)
    messages = [
        (pid, text) for pid, kind, text in cluster.records() if kind == "message"
    ]
    assert messages == [(first.pid, "one"), (other.pid, "two")]

    assert other.signal(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert "Server Shut Down." in other.logText(), cluster.describe()
    assert not os.path.lexists(cluster.socket)
