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

The children are L{twisted_channel.testing.recorder}'s recording
candidates and streaming clients, started and reaped with
L{twisted_channel.testing}'s harness: they report on their standard output,
one line per event, and leave as soon as their standard input closes, so
none outlives the demo, even if the demo itself is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from ._directory import checkName, prepareDirectory
from .testing import ChannelProcesses, ChildProcess, RecordReader

#: Seconds to wait for the first host, and for a worker to finish after the
#: last message it was due to send.
START_TIMEOUT = 20.0
FINISH_TIMEOUT = 60.0


class Interrupted(Exception):  # noqa: N818 - a signal, not an error
    """
    The demo was asked to stop (C{SIGINT} or C{SIGTERM}).
    """


# The demo itself


@dataclass
class Process:
    """
    One child of the demo, as the display shows it.
    """

    kind: str
    label: str
    child: ChildProcess
    role: str = "starting"
    sent: int = 0
    acked: int = 0
    hostPid: int | None = None
    outcome: str | None = None
    hostedAt: int | None = None
    firstAt: int | None = None
    killed: bool = False

    #: How many of the child's lines the demo has taken in.
    seen: int = 0
    ended: bool = False

    @property
    def pid(self) -> int:
        return self.child.pid


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
    lines: int = 0
    seen: dict[str, set[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reader = RecordReader(self.path)

    def update(self) -> None:
        for record in self.reader.read():
            self.lines += 1
            self.seen.setdefault(record.tag, set()).add(record.number)

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
        # No lifetime: a demo may run as long as its user asks; each child
        # leaves when its standard input closes, that is when the demo ends,
        # however it ends.
        self.children = ChannelProcesses(self.directory, transport=None, lifetime=None)
        self.failovers: list[Failover] = []
        # Whether the workers were told to stop writing until a kill.
        self.workersHeld = False
        self.started = time.monotonic()

    # Children

    def _spawn(self, kind: str, label: str, mode: str, *arguments: str) -> Process:
        child = self.children.recorder(mode, self.name, *arguments)
        process = Process(kind, label, child)
        self.processes.append(process)
        return process

    def candidate(self) -> Process:
        count = sum(1 for p in self.processes if p.kind == "candidate")
        return self._spawn(
            "candidate",
            f"candidate {count + 1}",
            "candidate",
            *("--record", self.record.path),
        )

    def worker(self, index: int) -> Process:
        return self._spawn(
            "worker",
            f"worker {index + 1}",
            "client",
            *("--tag", f"w{index + 1}", "--count", str(self.messages)),
            *("--rate", str(self.rate), "--interval", "0.01", "--progress", "0.1"),
        )

    def reapAll(self) -> None:
        """
        End every child that still runs (each is given 2 s to leave once
        its standard input is closed), and wait for each.
        """
        self.children.reapAll(grace=2.0)

    def cleanUp(self) -> None:
        shutil.rmtree(self.private, ignore_errors=True)

    # Events

    def pump(self, timeout: float) -> None:
        """
        Take in what the children said, waiting up to C{timeout} seconds
        for something to be said.
        """
        deadline = time.monotonic() + timeout
        while True:
            heard = False
            for process in self.processes:
                if process.ended:
                    continue
                ended = process.child.outputEnded()
                lines = process.child.lines
                while process.seen < len(lines):
                    self._event(process, lines[process.seen])
                    process.seen += 1
                    heard = True
                if ended:
                    process.ended = True
                    self._event(process, None)
                    heard = True
            if heard or time.monotonic() >= deadline:
                break
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
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
        if word == "ELECTED":
            process.hostedAt = int(values[0])
        elif word == "ROLE" and not process.killed:
            process.role = values[0]
            if values[0] == "host" and process.hostedAt is not None:
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
        elif word == "WROTE":
            process.sent = int(values[0])
        elif word == "CLOSED":
            reason, undelivered = values[0], int(values[1])
            if process.sent == self.messages and undelivered == 0:
                process.outcome = "done"
                process.role = "done"
            else:
                process.outcome = f"failed: {reason}, {undelivered} undelivered"
                process.role = "failed"
        elif word == "ERROR":
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
            # Python's start-up, not the failover.  The workers wait with
            # it, or on a loaded machine they could finish first and the
            # kill never happen.
            self._holdWorkers(True)
            return
        # Writing again before the kill, so that it falls while they stream.
        self._holdWorkers(False)
        killedAt = host.child.kill()
        host.killed = True
        host.role = "killed"
        self.failovers.append(Failover(host.pid, killedAt))
        # So that a standby is always there for the next kill.
        self.candidate()

    def _holdWorkers(self, hold: bool) -> None:
        """
        Tell the workers still writing to stop writing (C{hold}), or to
        write again at their rate from where they stopped; nothing if they
        are already so.
        """
        if hold == self.workersHeld:
            return
        self.workersHeld = hold
        for worker in self.workers:
            if worker.outcome is None:
                try:
                    worker.child.send("hold" if hold else "release")
                except OSError:
                    pass  # It has just ended: the next pump says how.

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
