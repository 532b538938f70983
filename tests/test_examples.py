"""
The examples in C{examples/}, run as a user runs them: three C{twistd -y}
daemons each, the host killed with C{SIGKILL} while they work.

Who hosts is asked from the outside, with the channel's status query.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from twisted_channel import ChannelEndpoint
from twisted_channel._status import queryStatus

pytestmark = pytest.mark.timeout(90)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: How to run twistd with this interpreter (C{python -m twisted.scripts.twistd}
#: does nothing: that module has no C{__main__} block).
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]


@dataclass
class Daemons:
    root: Path
    directory: Path
    processes: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, tac: Path, environment: dict[str, str]) -> subprocess.Popen[bytes]:
        index = len(self.processes)
        work = self.root / f"d{index}"
        work.mkdir(mode=0o700)
        log = work / "twistd.log"
        env = dict(os.environ)
        env.update(environment)
        with open(work / "output", "wb") as output:
            process = subprocess.Popen(
                [*TWISTD, "-n", "--pidfile=", "-l", str(log), "-y", str(tac)],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.processes.append((process, log))
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        for candidate, log in self.processes:
            if candidate is process:
                try:
                    return log.read_text(errors="replace")
                except FileNotFoundError:
                    return ""
        raise AssertionError(f"pid {process.pid} is not one of the daemons")

    def describe(self) -> str:
        parts = []
        for process, log in self.processes:
            output = (log.parent / "output").read_text(errors="replace")
            text = log.read_text(errors="replace") if log.exists() else ""
            parts.append(f"--- pid {process.pid} ({process.poll()})\n{output}{text}")
        return "\n".join(parts)

    def hostPid(self, name: str) -> int | None:
        status = queryStatus(name, str(self.directory))
        return status["pid"] if status["hosted"] else None

    def waitFor(self, what: str, check: Callable[[], object], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s\n{self.describe()}")
            time.sleep(0.05)

    def stopAll(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for process, _ in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture
def daemons() -> Iterator[Daemons]:
    root = Path(tempfile.mkdtemp(prefix="tc-", dir="/tmp"))
    os.chmod(root, 0o700)
    directory = root / "rt"
    directory.mkdir(mode=0o700)
    group = Daemons(root, directory)
    try:
        yield group
    finally:
        group.stopAll()
        shutil.rmtree(root, ignore_errors=True)


def killHost(daemons: Daemons, name: str) -> subprocess.Popen[bytes]:
    """
    Find the host by asking the channel, and SIGKILL it.
    """
    daemons.waitFor("host", lambda: daemons.hostPid(name) is not None, 20)
    pid = daemons.hostPid(name)
    (host,) = [p for p, _ in daemons.processes if p.pid == pid]
    host.send_signal(signal.SIGKILL)
    host.wait(10)
    return host


def test_jobQueue(daemons: Daemons) -> None:
    """
    examples/jobqueue.tac under three twistd: the host hands out 30 jobs to
    the others; when it is killed, another takes over and every job gets
    done, with the right result.
    """
    results = daemons.root / "results.txt"
    environment = {
        "JOBQUEUE_DIR": str(daemons.directory),
        "JOBQUEUE_JOBS": "30",
        "JOBQUEUE_RESULTS": str(results),
        "JOBQUEUE_WORK": "0.03",
    }
    for _ in range(3):
        daemons.start(EXAMPLES / "jobqueue.tac", environment)

    def done() -> dict[int, list[tuple[int, int]]]:
        found: dict[int, list[tuple[int, int]]] = {}
        if results.exists():
            for line in results.read_text().splitlines():
                job, result, pid = map(int, line.split())
                found.setdefault(job, []).append((result, pid))
        return found

    daemons.waitFor("six jobs done", lambda: len(done()) >= 6, 30)
    killed = killHost(daemons, "jobqueue")
    daemons.waitFor("all 30 jobs done", lambda: len(done()) == 30, 30)
    survivors = [p for p, _ in daemons.processes if p is not killed]
    newHost = daemons.hostPid("jobqueue")
    assert newHost in {p.pid for p in survivors}
    for job, outcomes in done().items():
        # Each result is recorded once, by the host that received it.
        assert outcomes == [(job * job, outcomes[0][1])]
    workers = {pid for outcomes in done().values() for _, pid in outcomes}
    assert len(workers) >= 2
    for process in survivors:
        daemons.waitFor(
            "the end of the queue",
            lambda p=process: "all 30 jobs are done" in daemons.log(p),
            10,
        )
        assert process.poll() is None


def counterConfig(daemons: Daemons, increments: int) -> Path:
    directory = daemons.directory
    path = daemons.root / "counter.ini"
    path.write_text(
        "[counter]\n"
        f"listen = channel:counter:dir={directory}\n"
        f"connect = channel:counter:dir={directory}:timeout=0\n"
        f"state = {daemons.root / 'counter.json'}\n"
        f"increments = {increments}\n"
        "interval = 0.01\n"
    )
    return path


def test_sharedCounter(daemons: Daemons) -> None:
    """
    examples/counter.tac, configured by endpoint strings in a file, under
    three twistd: the host is killed mid-way; every addition of the
    survivors is counted, and none twice.
    """
    config = counterConfig(daemons, 60)
    state = daemons.root / "counter.json"
    for _ in range(3):
        daemons.start(EXAMPLES / "counter.tac", {"COUNTER_CONFIG": str(config)})

    def load() -> dict[str, object]:
        try:
            loaded: dict[str, object] = json.loads(state.read_text())
        except (FileNotFoundError, ValueError):
            return {"value": 0, "seen": {}}
        return loaded

    daemons.waitFor("40 additions", lambda: load()["value"] >= 40, 30)  # type: ignore[operator]
    killed = killHost(daemons, "counter")
    survivors = [p for p, _ in daemons.processes if p is not killed]

    def survivorsDone() -> bool:
        seen = load()["seen"]
        assert isinstance(seen, dict)
        counts = {int(token.split("-")[0]): n for token, n in seen.items()}
        return all(counts.get(p.pid) == 60 for p in survivors)

    daemons.waitFor("all the survivors' additions", survivorsDone, 30)
    final = load()
    seen = final["seen"]
    assert isinstance(seen, dict)
    # Counted exactly once each: no addition skipped, none counted twice.
    assert final["value"] == sum(seen.values())
    assert daemons.hostPid("counter") in {p.pid for p in survivors}
    for process in survivors:
        daemons.waitFor(
            "the last addition",
            lambda p=process: "made its 60 additions" in daemons.log(p),
            10,
        )


def test_shippedCounterConfigurationParses() -> None:
    """
    The endpoint strings in examples/counter.ini are valid.
    """
    from twisted.internet.endpoints import clientFromString, serverFromString

    config = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    assert config.read(EXAMPLES / "counter.ini")
    settings = config["counter"]
    server = serverFromString(object(), settings["listen"])
    client = clientFromString(object(), settings["connect"])
    assert isinstance(server, ChannelEndpoint) and server.name == "counter"
    assert isinstance(client, ChannelEndpoint) and client.timeout == 0
    assert settings.getint("increments") > 0
