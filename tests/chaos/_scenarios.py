"""
The other faults, one function each.  Every scenario states what must
happen, checks it (raising L{HarnessError} if not) and returns its figures:

- no message lost that a client wrote before the fault, apart from those
  of a client that itself died;
- no process hangs (every wait is bounded);
- the channel has exactly one host afterwards, the one answering at the
  socket.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.chaos._harness import (
    Cluster,
    Delivery,
    HarnessError,
    StreamEnd,
    account,
    memoryOf,
    removeDirectory,
    shortDirectory,
    waitUntil,
)

#: Messages per second each streaming client writes in the scenarios.
RATE = "400"


@dataclass
class ScenarioResult:
    """
    What one scenario checked and measured.
    """

    name: str
    promise: str
    delivery: Delivery
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _stream(*extra: str) -> tuple[str, ...]:
    return ("--rate", RATE, *extra)


def _checked(
    name: str,
    promise: str,
    cluster: Cluster,
    ends: dict[str, StreamEnd],
    started: float,
    figures: dict[str, Any] | None = None,
    allowGaveUp: tuple[str, ...] = (),
) -> ScenarioResult:
    """
    Account for the senders in C{ends}, check the promises and that every
    sender that did not die closed cleanly (but those in C{allowGaveUp}).
    """
    for tag, end in ends.items():
        if end.died or tag in allowGaveUp:
            continue
        if end.reason != "ConnectionDone" or end.undelivered:
            raise HarnessError(f"{name}: sender {tag} ended with {end}")
    delivery = account(cluster.records(), ends)
    delivery.assertPromisesKept(name)
    return ScenarioResult(
        name, promise, delivery, figures or {}, time.monotonic() - started
    )


def _start(cluster: Cluster, standbys: int = 1, *extra: str) -> list[Any]:
    """
    Start C{standbys + 1} candidates at once; return them, host first, once
    each has said its role.
    """
    candidates = [cluster.candidate(None, *extra) for _ in range(standbys + 1)]
    for candidate in candidates:
        candidate.waitFor(lambda line: line.startswith("ROLE "), 30)
    host = cluster.waitForHost()
    return [host] + [c for c in candidates if c is not host]


def _clients(cluster: Cluster, tags: tuple[str, ...], *extra: str) -> list[Any]:
    """
    Start streaming clients at once, and wait until each has a link.
    """
    clients = [cluster.client(tag, *_stream(*extra)) for tag in tags]
    for client in clients:
        client.waitFor(lambda line: line.startswith("LINK"), 30)
    return clients


def _scenario(
    run: Callable[[Cluster, float], ScenarioResult],
    reactor: str,
    recordDirectory: str | None = None,
    directory: str | None = None,
) -> ScenarioResult:
    own = directory is None
    directory = directory or shortDirectory()
    cluster = Cluster(directory, recordDirectory, reactor)
    try:
        return run(cluster, time.monotonic())
    finally:
        cluster.close()
        if own:
            removeDirectory(directory)


# Graceful stop


def stopListening(reactor: str = "default") -> ScenarioResult:
    """
    The host calls C{stopListening()} while two clients stream: a standby
    takes over, and nothing is lost or delivered twice.
    """

    def run(cluster: Cluster, started: float) -> ScenarioResult:
        host, standby, _ = _start(cluster, 2)
        _clients(cluster, ("a", "b"))
        cluster.waitForRecords(200)
        at = time.monotonic_ns()
        host.send("stop")
        host.waitFor(lambda line: line == "STOPPED", 10)
        failover = cluster.failover(host, at)
        cluster.waitForRecords(200)
        ends = cluster.finish(30)
        cluster.assertOneHost()
        if host.role() != "stopped":
            raise HarnessError(f"the old host's role is {host.role()}")
        result = _checked(
            "stopListening",
            "a graceful handover loses nothing and delivers nothing twice",
            cluster,
            ends,
            started,
            {"handover_ms": round(failover.firstMessageMs, 1)},
        )
        if result.delivery.duplicated:
            raise HarnessError(
                f"stopListening: {result.delivery.duplicated} delivered twice"
            )
        return result

    return _scenario(run, reactor)


def sigterm(reactor: str = "default") -> ScenarioResult:
    """
    The host gets SIGTERM (its reactor stops and the process exits) while
    clients stream: a standby takes over and nothing is lost.
    """

    def run(cluster: Cluster, started: float) -> ScenarioResult:
        host, *_ = _start(cluster, 2)
        _clients(cluster, ("a", "b"))
        cluster.waitForRecords(200)
        at = cluster.signal(host, signal.SIGTERM)
        failover = cluster.failover(host, at)
        code = host.wait(10)
        cluster.waitForRecords(200)
        ends = cluster.finish(30)
        cluster.assertOneHost()
        return _checked(
            "SIGTERM",
            "the host exits, a standby takes over, nothing is lost",
            cluster,
            ends,
            started,
            {"handover_ms": round(failover.firstMessageMs, 1), "exit_code": code},
        )

    return _scenario(run, reactor)


# Frozen host


FREEZE = 3.5


def frozenHost(reactor: str = "default") -> ScenarioResult:
    """
    The host is frozen with SIGSTOP for longer than the clients' timeout,
    then resumed (SIGCONT).  What the README's delivery promise defines:

    - the frozen host keeps the lock, so no standby takes over;
    - a client with C{timeout=1} and unacknowledged messages drops the
      silent link after C{max(timeout, 2)} s, finds no working link, and
      gives up after C{timeout} s more with C{ChannelUnreachableError},
      counting its unacknowledged messages; every message the host had
      acknowledged was delivered;
    - a client with C{timeout=0} waits for the host to thaw: nothing lost;
    - a client started during the freeze with C{timeout=1} gives up with
      all its messages counted undelivered;
    - thawed, the same process hosts again and serves new clients.
    """

    def run(cluster: Cluster, started: float) -> ScenarioResult:
        host, standby = _start(cluster, 1)
        quick = cluster.client("quick", *_stream("--timeout", "1"))
        patient = cluster.client("patient", *_stream("--timeout", "0"))
        for child in (quick, patient):
            child.waitFor(lambda line: line.startswith("LINK"), 30)
        cluster.waitForRecords(200)
        frozenAt = time.monotonic()
        cluster.signal(host, signal.SIGSTOP)
        try:
            late = cluster.client("late", "--count", "50", "--timeout", "1")
            lateEnd = cluster.ended("late", FREEZE + 10)
            quickEnd = cluster.ended("quick", FREEZE + 10)
            gaveUpAfter = time.monotonic() - frozenAt
            quick.waitFor(lambda line: line.startswith("UNLINK "), 1)
            time.sleep(max(0.0, FREEZE - (time.monotonic() - frozenAt)))
            if standby.role() != "standby" or host.role() != "host":
                raise HarnessError("a standby took over from a frozen host")
            if not late.exited() and late.wait(5) != 0:
                raise HarnessError("the late client did not exit cleanly")
        finally:
            cluster.signal(host, signal.SIGCONT)
        if lateEnd != StreamEnd("late", 50, "ChannelUnreachableError", 50):
            raise HarnessError(f"the late client ended with {lateEnd}")
        if quickEnd.reason != "ChannelUnreachableError" or not quickEnd.undelivered:
            raise HarnessError(f"the quick client ended with {quickEnd}")
        # Its link stalls for max(timeout, 2) = 2 s, then timeout = 1 s.
        if not 2.0 <= gaveUpAfter <= 6.0:
            raise HarnessError(f"the quick client gave up after {gaveUpAfter:.1f} s")
        cluster.waitForRecords(100)
        ends = cluster.finish(30, only=["patient"])
        ends["quick"] = quickEnd
        cluster.client("after", "--count", "20")
        afterEnd = cluster.ended("after", 20)
        if afterEnd != StreamEnd("after", 20, "ConnectionDone", 0):
            raise HarnessError(f"a client after the thaw ended with {afterEnd}")
        ends["after"] = afterEnd
        if cluster.assertOneHost() != host.pid:
            raise HarnessError("the thawed host is no longer the host")
        result = _checked(
            "SIGSTOP/SIGCONT",
            "no takeover while frozen; timeout>0 clients give up counting "
            "their unacknowledged messages, timeout=0 clients lose nothing; "
            "the thawed host hosts again",
            cluster,
            ends,
            started,
            allowGaveUp=("quick",),
        )
        result.figures.update(
            {
                "frozen_s": FREEZE,
                "timeout1_gave_up_after_s": round(gaveUpAfter, 2),
                "timeout1_reported_undelivered": quickEnd.undelivered,
                "of_which_delivered_after_thaw": result.delivery.deliveredAnyway,
            }
        )
        return result

    return _scenario(run, reactor)


# A client killed in the middle of a large message

BIG = 8 * 1024 * 1024

_RAW_HALF = """
import os, socket, sys, time
from twisted_channel import _wire
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(_wire.encodeHello(_wire.Hello(os.urandom(16), os.getpid(), 1 << 24)))
reply = b""
while len(reply) < 5 or len(reply) < 4 + int.from_bytes(reply[:4], "big"):
    reply += s.recv(4096)
assert reply[4] == _wire.WELCOME, reply
size = int(sys.argv[2])
body = b"raw:1 " + b"x" * (size - 6)
frame = _wire.frameHeader(_wire.DATA, size) + body
s.sendall(frame[: len(frame) // 2])
print("HALF", flush=True)
time.sleep(60)
"""


def largeMessageClientKilled(reactor: str = "default") -> ScenarioResult:
    """
    A client writing 8 MiB messages is SIGKILLed while writing them, and a
    raw client is killed with half of an 8 MiB frame sent: the host
    delivers no partial message, stays host, frees the partial frame's
    buffer, and the other clients lose nothing.
    """

    def run(cluster: Cluster, started: float) -> ScenarioResult:
        host, _ = _start(cluster, 1)
        small = cluster.client("small", *_stream())
        big = cluster.client("big", "--rate", "6", "--size", str(BIG))
        for child in (small, big):
            child.waitFor(lambda line: line.startswith("LINK"), 30)
        waitUntil(
            lambda: sum(r.tag == "big" for r in cluster.records()) >= 3,
            30,
            "three large messages",
            poll=0.05,
        )
        time.sleep(0.07)  # some way into the next one
        cluster.signal(big, signal.SIGKILL)
        big.wait(10)
        before = memoryOf(host.pid)["rss"]
        raw = cluster.children.start(
            [
                sys.executable,
                "-c",
                _RAW_HALF,
                cluster.socketPath,
                str(BIG),
            ]
        )
        raw.waitFor(lambda line: line == "HALF", 20)
        # Give the host time to read the half frame it was sent.
        time.sleep(0.5)
        holding = memoryOf(host.pid)["rss"]
        cluster.signal(raw, signal.SIGKILL)
        raw.wait(10)
        cluster.waitForRecords(100)
        released = memoryOf(host.pid)["rss"]
        ends = cluster.finish(30, only=["small"])
        ends["big"] = StreamEnd("big", None, "died")
        if cluster.assertOneHost() != host.pid:
            raise HarnessError("the host changed")
        records = cluster.records()
        bad = [r for r in records if r.tag == "big" and r.length != BIG]
        if bad or any(r.tag == "raw" for r in records):
            raise HarnessError(f"a partial message was delivered: {bad[:3]}")
        result = _checked(
            "client killed mid-message",
            "no partial message delivered; the host goes on; others lose nothing",
            cluster,
            ends,
            started,
        )
        result.figures.update(
            {
                "large_messages_delivered": sum(r.tag == "big" for r in records),
                "host_rss_before_half_frame_kib": before,
                "host_rss_holding_half_frame_kib": holding,
                "host_rss_after_kill_kib": released,
            }
        )
        return result

    return _scenario(run, reactor)


# A standby killed as it wins


def _firstToHost(cluster: Cluster, hopefuls: list[Any]) -> Any:
    """
    Wait (polling every half millisecond) for one of C{hopefuls} to say it
    hosts, and return it.
    """
    winner: list[Any] = []

    def won() -> bool:
        winner[:] = [c for c in hopefuls if c.role() == "host"]
        return bool(winner)

    waitUntil(won, 10, "a standby to win", poll=0.0005)
    return winner[0]


def standbyKilledWinning(reactor: str = "default", rounds: int = 3) -> ScenarioResult:
    """
    The host and a standby are killed together; and the host is killed,
    then the standby that wins is killed the moment it says it hosts.  Each
    time another standby takes over, and the clients lose nothing.
    """

    def run(cluster: Cluster, started: float) -> ScenarioResult:
        _start(cluster, 3)
        _clients(cluster, ("a", "b"))
        cluster.waitForRecords(100)
        takeovers = []
        for _ in range(rounds):
            # Host and a standby together.
            cluster.waitForStandbys(3)
            host = cluster.waitForHost()
            standby = cluster.standbys()[0]
            at = cluster.signal(host)
            cluster.signal(standby)
            cluster.candidate(None)
            cluster.candidate(None)
            takeovers.append(cluster.failover(host, at).firstMessageMs)
            cluster.waitForRecords(50)
            # The winner, as soon as it says so.
            cluster.waitForStandbys(3)
            host = cluster.waitForHost()
            hopefuls = cluster.standbys()
            at = cluster.signal(host)
            winner = _firstToHost(cluster, hopefuls)
            cluster.signal(winner)
            cluster.candidate(None)
            cluster.candidate(None)
            takeovers.append(cluster.failover(winner, at).firstMessageMs)
            cluster.waitForRecords(50)
        ends = cluster.finish(30)
        cluster.assertOneHost()
        result = _checked(
            "standby killed as it wins",
            "another standby takes over; nothing is lost",
            cluster,
            ends,
            started,
        )
        result.figures.update(
            {
                "files_left_behind": len(cluster.strayFilesAfterCleanUp()),
                "double_kills": 2 * rounds,
                "kill_to_next_host_first_message_max_ms": round(max(takeovers), 1),
            }
        )
        return result

    return _scenario(run, reactor)


# The socket file deleted


def _isSocket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def socketDeleted(reactor: str = "default") -> ScenarioResult:
    """
    The socket file is deleted under a live host, and later replaced by a
    regular file.  What must happen:

    - the host's existing links go on (they never depended on the file):
      their clients lose nothing, and nobody else takes over (the host
      still holds the lock);
    - the host notices within about a second (it checks its socket every
      second) and publishes its socket again; new clients are served;
    - a regular file put in the socket's place is not replaced (the channel
      never removes what it did not make): meanwhile new clients cannot
      connect, and give up after their timeout counting their messages;
      once the file is gone, the host publishes its socket again.
    """

    def run(cluster: Cluster, started: float) -> ScenarioResult:
        host, standby = _start(cluster, 1)
        _clients(cluster, ("a",))
        cluster.waitForRecords(100)
        os.unlink(cluster.socketPath)
        deletedAt = time.monotonic()
        republished = waitUntil(
            lambda: _isSocket(cluster.socketPath), 5, "the socket published again"
        )
        cluster.client("new", "--count", "10", "--timeout", "5")
        newEnd = cluster.ended("new", 20)
        if newEnd != StreamEnd("new", 10, "ConnectionDone", 0):
            raise HarnessError(f"a new client after the deletion ended {newEnd}")
        # Replaced by a regular file: not touched.
        os.unlink(cluster.socketPath)
        with open(cluster.socketPath, "wb") as f:
            f.write(b"not a socket")
        cluster.client("blocked", "--count", "10", "--timeout", "1")
        blockedEnd = cluster.ended("blocked", 15)
        if blockedEnd != StreamEnd("blocked", 10, "ChannelUnreachableError", 10):
            raise HarnessError(f"a client facing a planted file ended {blockedEnd}")
        with open(cluster.socketPath, "rb") as f:
            if f.read() != b"not a socket":
                raise HarnessError("the planted file was changed")
        os.unlink(cluster.socketPath)
        waitUntil(lambda: _isSocket(cluster.socketPath), 5, "the socket again")
        cluster.client("after", "--count", "10")
        afterEnd = cluster.ended("after", 20)
        ends = cluster.finish(30, only=["a"])
        ends["new"] = newEnd
        ends["after"] = afterEnd
        if host.role() != "host" or standby.role() != "standby":
            raise HarnessError("the roles changed when the socket was deleted")
        if cluster.assertOneHost() != host.pid:
            raise HarnessError("the host changed")
        result = _checked(
            "socket file deleted",
            "existing links go on and lose nothing; the host publishes its "
            "socket again within about a second; a planted file is left alone "
            "(new clients wait for its removal); nothing lost",
            cluster,
            ends,
            started,
        )
        result.figures.update(
            {
                "deleted_to_republished_ms": round(republished * 1000),
                "client_facing_a_planted_file": blockedEnd.reason,
                "outage_s": round(time.monotonic() - deletedAt, 1),
            }
        )
        return result

    return _scenario(run, reactor)


# The filesystem full or read-only


def mountProblem() -> str | None:
    """
    Why a small tmpfs or a read-only bind mount cannot be made here (tests
    run as root, so mode bits would not stop a write), or L{None} if they
    can.
    """
    if os.getuid() != 0:
        return "mounting a small tmpfs or a read-only bind mount needs root"
    probe = shortDirectory()
    try:
        for command in (
            ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", probe],
            ["umount", probe],
            ["mount", "--bind", probe, probe],
            ["mount", "-o", "remount,bind,ro", probe],
            ["umount", probe],
        ):
            done = subprocess.run(command, capture_output=True, timeout=20)
            if done.returncode != 0:
                subprocess.run(["umount", probe], capture_output=True, timeout=20)
                return f"{' '.join(command[:3])} failed: {done.stderr.decode().strip()}"
        return None
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run mount: {e}"
    finally:
        os.rmdir(probe)


def _unmount(directory: str) -> None:
    for attempt in (["umount", directory], ["umount", "-l", directory]):
        if subprocess.run(attempt, capture_output=True, timeout=20).returncode == 0:
            return


class ReadOnly:
    """
    Make a directory read-only while processes have files in it open for
    writing: bind-mount it on itself, read-only (a remount of its own
    filesystem would fail, busy).  Paths looked up from then on are on the
    read-only mount; descriptors opened before keep working.  Undone on
    exit.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.mounted = False

    def __enter__(self) -> ReadOnly:
        for command in (
            ["mount", "--bind", self.directory, self.directory],
            ["mount", "-o", "remount,bind,ro", self.directory],
        ):
            subprocess.run(command, check=True, capture_output=True, timeout=20)
            self.mounted = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            self.mounted = False
            _unmount(self.directory)


class SmallFilesystem:
    """
    A small tmpfs mounted on a fresh directory, unmounted on exit.
    """

    def __init__(self, size: str = "256k", inodes: int = 64) -> None:
        self.directory = shortDirectory("tc-fs-")
        options = f"size={size},nr_inodes={inodes},mode=0700"
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", self.directory],
            check=True,
            capture_output=True,
            timeout=20,
        )

    def __enter__(self) -> SmallFilesystem:
        return self

    def __exit__(self, *exc: object) -> None:
        _unmount(self.directory)
        removeDirectory(self.directory)

    def fill(self) -> int:
        """
        Use every byte and every inode; return how many files it took.
        """
        files = 0
        try:
            with open(os.path.join(self.directory, "ballast"), "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
        while True:
            try:
                os.close(
                    os.open(
                        os.path.join(self.directory, f"inode{files}"),
                        os.O_CREAT | os.O_WRONLY,
                    )
                )
            except OSError:
                return files
            files += 1


def diskFull(reactor: str = "default", mustFailOver: bool = False) -> ScenarioResult:
    """
    The filesystem holding the runtime directory is full (no byte, no
    inode left) when the host is killed.  What must happen:

    - the clients lose nothing: they buffer while no host is reachable;
    - a standby hosts as soon as it can publish its socket: at once if the
      code frees the dead host's socket first (C{mustFailOver} asserts
      that), else (the socket is bound under a temporary name, which needs
      a free inode) once one file is removed, within about a second, since
      standbys try again every second;
    - a client started afterwards is served, and there is one host.
    """
    recordDirectory = shortDirectory()
    try:
        with SmallFilesystem() as filesystem:

            def run(cluster: Cluster, started: float) -> ScenarioResult:
                host, *_ = _start(cluster, 2)
                _clients(cluster, ("a",))
                cluster.waitForRecords(100)
                files = filesystem.fill()
                at = cluster.signal(host)
                try:
                    failover = cluster.failover(host, at, 1.5)
                    whileFull = True
                except HarnessError:
                    if mustFailOver:
                        raise
                    whileFull = False
                if not whileFull:
                    freedAt = time.monotonic_ns()
                    os.unlink(os.path.join(filesystem.directory, "inode0"))
                    failover = cluster.failover(host, at, 10)
                cluster.client("new", "--count", "10")
                newEnd = cluster.ended("new", 20)
                cluster.waitForRecords(100)
                ends = cluster.finish(30, only=["a"])
                ends["new"] = newEnd
                cluster.assertOneHost()
                result = _checked(
                    "disk full",
                    "nothing lost; a standby hosts once it can publish its "
                    "socket (at once, or once one inode is freed)",
                    cluster,
                    ends,
                    started,
                )
                result.figures["filler_files"] = files
                result.figures["failover_while_full"] = whileFull
                if whileFull:
                    result.figures["failover_ms"] = round(failover.firstMessageMs, 1)
                else:
                    result.figures["freed_to_first_message_ms"] = round(
                        (failover.firstAt - freedAt) / 1e6, 1
                    )
                return result

            return _scenario(
                run, reactor, recordDirectory, directory=filesystem.directory
            )
    finally:
        removeDirectory(recordDirectory)


READ_ONLY = 1.5


def readOnly(reactor: str = "default") -> ScenarioResult:
    """
    The runtime directory is made read-only, and then the host is killed.
    What the code does:

    - existing links go on while the host lives;
    - after its death no standby can host (the dead host's socket cannot be
      removed, nor a new one bound): the channel has no host, clients
      buffer their writes, and standbys try again every second (logging
      why);
    - a new candidate cannot even open the lock file, and fails to listen
      with the C{OSError} (EROFS) that says so;
    - once the directory is writable again, a standby hosts within about a
      second and the clients (whose C{timeout} outlasts the outage) lose
      nothing.
    """

    def run(cluster: Cluster, started: float) -> ScenarioResult:
        host, *_ = _start(cluster, 2)
        _clients(cluster, ("a",))
        cluster.waitForRecords(100)
        with ReadOnly(cluster.directory):
            cluster.waitForRecords(100)
            cluster.signal(host)
            host.wait(10)
            deadAt = time.monotonic()
            refused = cluster.candidate(None)
            error = refused.waitFor(lambda line: line.startswith("ERROR"), 20)
            if "Read-only file system" not in error:
                raise HarnessError(f"a new candidate said {error!r}")
            count = cluster.recordCount()
            time.sleep(max(0.0, READ_ONLY - (time.monotonic() - deadAt)))
            if cluster.hosts():
                raise HarnessError("a standby hosts in a read-only directory")
            if cluster.recordCount() != count:
                raise HarnessError("messages delivered with no host")
            writableAt = time.monotonic_ns()
        newHost = cluster.waitForHost(10)
        first = newHost.waitFor(lambda line: line.startswith("FIRST "), 10)
        recovery = (int(first.split()[1]) - writableAt) / 1e6
        ends = cluster.finish(30, only=["a"])
        cluster.assertOneHost()
        result = _checked(
            "read-only directory",
            "no host while read-only (clients buffer); a standby hosts about "
            "a second after it is writable; nothing lost",
            cluster,
            ends,
            started,
        )
        result.figures.update(
            {
                "read_only_s": READ_ONLY,
                "new_candidate_error": error.split(":")[0].split()[-1],
                "writable_to_first_message_ms": round(recovery, 1),
            }
        )
        return result

    recordDirectory = shortDirectory()
    try:
        return _scenario(run, reactor, recordDirectory)
    finally:
        removeDirectory(recordDirectory)


#: Every scenario, by name, in the order the soak runs them.
SCENARIOS: dict[str, Callable[[str], ScenarioResult]] = {
    "stopListening": stopListening,
    "sigterm": sigterm,
    "frozenHost": frozenHost,
    "largeMessageClientKilled": largeMessageClientKilled,
    "standbyKilledWinning": standbyKilledWinning,
    "socketDeleted": socketDeleted,
    "diskFull": diskFull,
    "readOnly": readOnly,
}
