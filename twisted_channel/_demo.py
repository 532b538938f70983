"""
C{twisted-channel demo}: watch a channel survive its host being killed.

The demo starts, on a fresh channel:

 - two I{candidate} processes, which only stand as hosts: the one elected
   hosts the channel and records each message it receives in a shared
   record file (before acknowledging it), the other stands by;
 - C{N} I{worker} processes, pure clients that each stream C{M} numbered
   messages to whoever hosts.

Then it kills the host with C{SIGKILL} C{K} times while the workers stream,
starting a fresh candidate after each kill so that a standby is always
there.  Every sender survives (only hosts are killed), so the channel
promises that nothing a worker wrote is lost: the demo checks it against
the record, and counts duplicates (messages the dead host had delivered but
not yet acknowledged, delivered again by the next).

The children report on their standard output, one line per event, and
leave as soon as their standard input closes, so none outlives the demo,
even if the demo itself is killed.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any

from ._directory import checkName, prepareDirectory

#: Seconds to wait for the first host, and for a worker to finish after the
#: last message it was due to send.
START_TIMEOUT = 20.0
FINISH_TIMEOUT = 60.0


class Interrupted(Exception):  # noqa: N818 - a signal, not an error
    """
    The demo was asked to stop (C{SIGINT} or C{SIGTERM}).
    """


# The children


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _stopWhenInputCloses(reactor: Any) -> None:
    from twisted.internet import stdio
    from twisted.internet.protocol import Protocol

    class Parent(Protocol):
        def connectionLost(self, reason: object = None) -> None:
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Parent())


def runCandidate(options: argparse.Namespace) -> None:
    """
    A candidate host that records every message it receives.
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    from ._endpoint import ChannelEndpoint

    record = os.open(options.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    state = {"first": False}

    class Recorder(Protocol):
        def dataReceived(self, data: bytes) -> None:
            # Written before dataReceived returns, so before the message is
            # acknowledged: the record misses nothing that was.
            os.write(record, data + b"\n")
            if not state["first"]:
                state["first"] = True
                _say(f"FIRST {time.monotonic_ns()}")

    def roleChanged(role: str) -> None:
        _say(f"ROLE {role} {time.monotonic_ns()}")

    def listening(port: Any) -> None:
        port.addRoleObserver(roleChanged)
        roleChanged(port.role)

    def failed(reason: Any) -> None:
        _say(f"ERROR {reason.getErrorMessage()}")
        reactor.stop()

    endpoint = ChannelEndpoint(reactor, options.name, directory=options.dir)
    endpoint.listen(Factory.forProtocol(Recorder)).addCallbacks(listening, failed)
    _stopWhenInputCloses(reactor)
    reactor.run()


def runWorker(options: argparse.Namespace) -> None:
    """
    A pure client that streams C{tag number} messages at a steady rate.
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.task import LoopingCall
    from zope.interface import implementer

    from ._endpoint import ChannelEndpoint
    from ._interfaces import IChannelLinkObserver

    tick = 0.01
    perTick = max(1, round(options.rate * tick))

    @implementer(IChannelLinkObserver)
    class Streamer(Protocol):
        sent = 0

        def connectionMade(self) -> None:
            self.writer = LoopingCall(self.writeSome)
            self.writer.clock = reactor
            self.writer.start(tick)
            self.reporter = LoopingCall(self.report)
            self.reporter.clock = reactor
            self.reporter.start(0.1)

        def acked(self) -> int:
            return self.sent - len(self.transport.pending)  # type: ignore[union-attr]

        def report(self) -> None:
            _say(f"PROGRESS {self.sent} {self.acked()}")

        def writeSome(self) -> None:
            tag = options.tag.encode()
            for _ in range(perTick):
                if self.sent == options.count:
                    self.writer.stop()
                    self.transport.loseConnection()  # type: ignore[union-attr]
                    return
                self.sent += 1
                self.transport.write(b"%s %d" % (tag, self.sent))  # type: ignore[union-attr]

        def linkEstablished(self, host: Any) -> None:
            _say(f"LINK {host.pid}")

        def linkLost(self, reason: Any) -> None:
            _say("UNLINK")

        def connectionLost(self, reason: Any = None) -> None:
            for loop in (self.writer, self.reporter):
                if loop.running:
                    loop.stop()
            self.report()
            undelivered = getattr(reason.value, "undelivered", None)
            if undelivered is None:
                undelivered = len(self.transport.pending)  # type: ignore[union-attr]
            if self.sent == options.count and undelivered == 0:
                _say(f"DONE {self.sent}")
            else:
                _say(f"FAILED {undelivered} {reason.getErrorMessage()}")
            reactor.callLater(0, reactor.stop)

    endpoint = ChannelEndpoint(reactor, options.name, directory=options.dir, timeout=30)
    endpoint.connect(Factory.forProtocol(Streamer))
    _stopWhenInputCloses(reactor)
    reactor.run()


def childMain(arguments: list[str] | None = None) -> None:
    """
    The entry point of the demo's children: C{python -m
    twisted_channel._demo candidate|worker ...}.
    """
    parser = argparse.ArgumentParser(prog="twisted_channel._demo")
    parser.add_argument("mode", choices=["candidate", "worker"])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--record", default=os.devnull)
    parser.add_argument("--tag", default="w")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0)
    options = parser.parse_args(arguments)
    if options.mode == "candidate":
        runCandidate(options)
    else:
        runWorker(options)


# The demo itself


@dataclass
class Process:
    """
    One child of the demo, as the display shows it.
    """

    kind: str
    label: str
    popen: subprocess.Popen[bytes]
    role: str = "starting"
    sent: int = 0
    acked: int = 0
    hostPid: int | None = None
    outcome: str | None = None
    hostedAt: int | None = None
    firstAt: int | None = None
    killed: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Failover:
    """
    One kill of the host, and how long the channel took to recover.
    """

    killedPid: int
    killedAt: int
    newHostPid: int | None = None
    tookOverAfter: float | None = None
    deliveringAfter: float | None = None


@dataclass
class Record:
    """
    What the hosts recorded, read as it grows.
    """

    path: str
    offset: int = 0
    partial: bytes = b""
    lines: int = 0
    seen: dict[str, set[int]] = field(default_factory=dict)

    def update(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        for line in complete:
            tag, _, number = line.decode("ascii", "replace").partition(" ")
            self.lines += 1
            self.seen.setdefault(tag, set()).add(int(number))

    @property
    def unique(self) -> int:
        return sum(len(numbers) for numbers in self.seen.values())


class Demo:
    """
    The demo's state: its children, the record, the failovers.
    """

    def __init__(
        self,
        workers: int,
        messages: int,
        kills: int,
        rate: float,
        directory: str | None,
    ) -> None:
        self.workerCount = workers
        self.messages = messages
        self.kills = kills
        self.rate = rate
        self.private = tempfile.mkdtemp(prefix="tc-demo-")
        os.chmod(self.private, 0o700)
        if directory is None:
            self.directory = self.private
            self.name = "demo"
        else:
            self.directory = os.path.abspath(directory)
            self.name = f"demo-{os.getpid()}-{os.urandom(3).hex()}"
        self.record = Record(os.path.join(self.private, "record"))
        self.processes: list[Process] = []
        self.failovers: list[Failover] = []
        self.events: queue.Queue[tuple[Process, str | None]] = queue.Queue()
        self.started = time.monotonic()

    # Children

    def _spawn(self, kind: str, label: str, *arguments: str) -> Process:
        popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "twisted_channel._demo",
                kind,
                "--dir",
                self.directory,
                "--name",
                self.name,
                *arguments,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        process = Process(kind, label, popen)
        self.processes.append(process)
        assert popen.stdout is not None
        threading.Thread(
            target=self._read, args=(process, popen.stdout), daemon=True
        ).start()
        return process

    def _read(self, process: Process, stream: IO[bytes]) -> None:
        for raw in stream:
            self.events.put((process, raw.decode("utf-8", "replace").strip()))
        self.events.put((process, None))

    def candidate(self) -> Process:
        count = sum(1 for p in self.processes if p.kind == "candidate")
        return self._spawn(
            "candidate", f"candidate {count + 1}", "--record", self.record.path
        )

    def worker(self, index: int) -> Process:
        return self._spawn(
            "worker",
            f"worker {index + 1}",
            "--tag",
            f"w{index + 1}",
            "--count",
            str(self.messages),
            "--rate",
            str(self.rate),
        )

    def reapAll(self) -> None:
        """
        End every child that still runs, and wait for each.
        """
        for process in self.processes:
            stdin = process.popen.stdin
            if stdin is not None:
                try:
                    stdin.close()
                except OSError:
                    pass
        deadline = time.monotonic() + 2.0
        for process in self.processes:
            try:
                process.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in self.processes:
            if process.popen.poll() is None:
                try:
                    process.popen.kill()
                except ProcessLookupError:
                    pass
            process.popen.wait()
            if process.popen.stdout is not None:
                process.popen.stdout.close()

    def cleanUp(self) -> None:
        shutil.rmtree(self.private, ignore_errors=True)

    # Events

    def pump(self, timeout: float) -> None:
        """
        Take in what the children said within C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                process, line = self.events.get(timeout=max(0.0, remaining))
            except queue.Empty:
                break
            self._event(process, line)
            if remaining <= 0:
                break
        self.record.update()

    def _event(self, process: Process, line: str | None) -> None:
        if line is None:
            if process.outcome is None:
                process.outcome = "killed" if process.killed else "exited"
            if process.kind == "candidate" and process.role != "killed":
                process.role = "exited"
            return
        word, _, rest = line.partition(" ")
        values = rest.split()
        if word == "ROLE" and not process.killed:
            process.role = values[0]
            if values[0] == "host":
                process.hostedAt = int(values[1])
                for failover in self.failovers:
                    if failover.newHostPid is None:
                        failover.newHostPid = process.pid
                        failover.tookOverAfter = (
                            process.hostedAt - failover.killedAt
                        ) / 1e9
        elif word == "FIRST":
            process.firstAt = int(values[0])
            for failover in self.failovers:
                if (
                    failover.newHostPid == process.pid
                    and failover.deliveringAfter is None
                ):
                    failover.deliveringAfter = (
                        process.firstAt - failover.killedAt
                    ) / 1e9
        elif word == "PROGRESS":
            process.sent, process.acked = int(values[0]), int(values[1])
        elif word == "LINK":
            process.hostPid = int(values[0])
            process.role = "connected"
        elif word == "UNLINK":
            process.role = "reconnecting"
        elif word == "DONE":
            process.outcome = "done"
            process.role = "done"
        elif word in ("FAILED", "ERROR"):
            process.outcome = f"failed: {rest}"
            process.role = "failed"

    # Queries

    @property
    def host(self) -> Process | None:
        for process in self.processes:
            if process.kind == "candidate" and process.role == "host":
                return process
        return None

    @property
    def workers(self) -> list[Process]:
        return [p for p in self.processes if p.kind == "worker"]

    @property
    def total(self) -> int:
        return self.workerCount * self.messages

    def finished(self) -> bool:
        workers = self.workers
        return bool(workers) and all(p.outcome is not None for p in workers)

    def failoverPending(self) -> bool:
        return any(f.newHostPid is None for f in self.failovers)

    # Steps

    def start(self) -> None:
        self.candidate()
        self.candidate()
        deadline = time.monotonic() + START_TIMEOUT
        while self.host is None:
            if time.monotonic() > deadline:
                raise RuntimeError("no candidate became host")
            for process in self.processes:
                if process.role.startswith("ERROR") or process.outcome:
                    raise RuntimeError(f"{process.label} ended at start")
            self.pump(0.05)
        for index in range(self.workerCount):
            self.worker(index)

    def maybeKill(self) -> None:
        done = len(self.failovers)
        if done >= self.kills or self.failoverPending():
            return
        threshold = (done + 1) * self.total / (self.kills + 1)
        if self.record.unique < threshold:
            return
        host = self.host
        if host is None:
            return
        if not any(
            p.kind == "candidate" and p.role == "standby" for p in self.processes
        ):
            # The fresh candidate is still starting: killing now would time
            # Python's start-up, not the failover.
            return
        killedAt = time.monotonic_ns()
        os.kill(host.pid, signal.SIGKILL)
        host.killed = True
        host.role = "killed"
        self.failovers.append(Failover(host.pid, killedAt))
        # So that a standby is always there for the next kill.
        self.candidate()

    def run(self, onTick: Any = None) -> None:
        self.start()
        lastProgress = time.monotonic()
        lastCount = -1
        while not self.finished():
            self.pump(0.05)
            self.maybeKill()
            if onTick is not None:
                onTick()
            count = self.record.lines + sum(p.acked for p in self.workers)
            if count != lastCount:
                lastCount, lastProgress = count, time.monotonic()
            elif time.monotonic() - lastProgress > FINISH_TIMEOUT:
                raise RuntimeError(f"no progress for {FINISH_TIMEOUT:g} s")
        # Whatever the record still has to say.
        self.pump(0.1)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms"


def render(demo: Demo) -> Any:
    """
    The live view: who hosts, what was sent and delivered, the failovers.
    """
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    host = demo.host
    title = Text.assemble(
        ("channel ", "bold"),
        (demo.name, "bold cyan"),
        f" in {demo.directory}  ·  host: ",
        (f"pid {host.pid}" if host else "none (failing over)", "bold green"),
        f"  ·  kills: {len(demo.failovers)}/{demo.kills}",
    )
    delivered = demo.record.unique
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        "delivered",
        ProgressBar(total=max(demo.total, 1), completed=delivered, width=40),
        f"{delivered}/{demo.total}",
    )
    processes = Table(box=None, header_style="bold")
    for column in ("process", "pid", "state", "sent", "acknowledged", "delivered"):
        processes.add_column(column, justify="right" if column != "process" else "left")
    for process in demo.processes:
        if process.kind == "worker":
            tag = "w" + process.label.split()[-1]
            processes.add_row(
                process.label,
                str(process.pid),
                process.role,
                str(process.sent),
                str(process.acked),
                str(len(demo.record.seen.get(tag, ()))),
            )
        else:
            style = {"host": "bold green", "killed": "red"}.get(process.role, "")
            processes.add_row(
                process.label, str(process.pid), Text(process.role, style), "", "", ""
            )
    failovers = Table(box=None, header_style="bold")
    for column in ("kill", "killed pid", "new host", "took over", "delivering"):
        failovers.add_column(column, justify="right")
    for index, failover in enumerate(demo.failovers, 1):
        failovers.add_row(
            str(index),
            str(failover.killedPid),
            str(failover.newHostPid or "…"),
            _seconds(failover.tookOverAfter),
            _seconds(failover.deliveringAfter),
        )
    parts: list[Any] = [title, bar, processes]
    if demo.failovers:
        parts.append(failovers)
    return Group(*parts)


@dataclass
class Outcome:
    """
    The demo's verdict.
    """

    sent: int
    delivered: int
    duplicated: int
    lost: int
    unfinished: list[str]

    @property
    def ok(self) -> bool:
        return self.lost == 0 and not self.unfinished


def outcome(demo: Demo) -> Outcome:
    """
    Compare what the workers sent with what the hosts recorded.
    """
    sent = sum(p.sent for p in demo.workers)
    delivered = demo.record.unique
    lost = 0
    for index, process in enumerate(demo.workers):
        seen = demo.record.seen.get(f"w{index + 1}", set())
        lost += len(set(range(1, process.sent + 1)) - seen)
    unfinished = [
        f"{p.label}: {p.outcome or 'did not finish'}"
        for p in demo.workers
        if p.outcome != "done"
    ]
    return Outcome(sent, delivered, demo.record.lines - delivered, lost, unfinished)


def summary(demo: Demo, result: Outcome) -> Any:
    """
    The final tables.
    """
    from rich.console import Group
    from rich.table import Table

    table = Table(title="twisted-channel demo: summary", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    table.add_row("workers", str(demo.workerCount))
    table.add_row("messages sent", str(result.sent))
    table.add_row("messages delivered", str(result.delivered))
    table.add_row("duplicated (delivered again by a new host)", str(result.duplicated))
    table.add_row(
        "lost", f"[bold {'green' if result.lost == 0 else 'red'}]{result.lost}[/]"
    )
    table.add_row("hosts killed (SIGKILL)", f"{len(demo.failovers)} of {demo.kills}")
    for line in result.unfinished:
        table.add_row("unfinished", line)
    table.add_row(
        "verdict",
        "[bold green]nothing lost[/]" if result.ok else "[bold red]FAILED[/]",
    )
    times = Table(title="failover times")
    for column in ("from the kill to", "min", "median", "max"):
        times.add_column(
            column, justify="left" if column.startswith("from") else "right"
        )
    for label, values in (
        ("a new host", [f.tookOverAfter for f in demo.failovers]),
        ("its first delivery", [f.deliveringAfter for f in demo.failovers]),
    ):
        known = [v for v in values if v is not None]
        if known:
            times.add_row(
                label,
                _seconds(min(known)),
                _seconds(statistics.median(known)),
                _seconds(max(known)),
            )
    if demo.failovers:
        return Group(table, times)
    return table


@contextmanager
def interruptible() -> Iterator[None]:
    """
    Turn C{SIGINT} and C{SIGTERM} into L{Interrupted} while the demo runs.
    """

    def interrupt(number: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(number).name)

    previous = {
        number: signal.signal(number, interrupt)
        for number in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def runDemo(
    workers: int,
    messages: int,
    kills: int,
    rate: float,
    directory: str | None,
) -> int:
    """
    Run the demo; return the exit status: 0 if nothing was lost, 1 if
    something was (or a worker failed), 130 if interrupted.
    """
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if directory is not None:
        checkName("demo")
        prepareDirectory(os.path.abspath(directory))
    demo = Demo(workers, messages, kills, rate, directory)
    try:
        with interruptible():
            try:
                with Live(render(demo), console=console, refresh_per_second=10) as live:
                    demo.run(lambda: live.update(render(demo)))
                    live.update(render(demo))
            finally:
                # No second signal may stop the reaping.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                demo.reapAll()
    except Interrupted as e:
        print(
            f"twisted-channel demo: interrupted ({e}); "
            f"all {len(demo.processes)} child processes ended",
            file=sys.stderr,
        )
        demo.cleanUp()
        return 130
    except RuntimeError as e:
        print(f"twisted-channel demo: error: {e}", file=sys.stderr)
        demo.cleanUp()
        return 1
    result = outcome(demo)
    console.print()
    console.print(summary(demo, result))
    demo.cleanUp()
    return 0 if result.ok else 1


if __name__ == "__main__":
    childMain()
