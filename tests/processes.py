"""
Child processes for tests: started with ``sys.executable``, read line by
line, bounded in time, and always reaped.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "channel_worker.py")


class Child:
    """
    One child process whose stdout lines are collected by a reader thread.
    """

    def __init__(self, arguments: list[str], cwd: str | None = None) -> None:
        self.arguments = arguments
        self.process = subprocess.Popen(
            arguments,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=_childEnvironment(),
        )
        self.pid = self.process.pid
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._readErrors, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self._queue.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._queue.put(None)

    def _readErrors(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self._stderr.append(raw)

    @property
    def stderr(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def _drain(self, block: bool, timeout: float) -> bool:
        try:
            line = self._queue.get(block, timeout)
        except queue.Empty:
            return False
        if line is None:
            self._queue.put(None)
            return False
        self.lines.append(line)
        return True

    def waitFor(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> str:
        """
        Wait for a line (seen before or new) that satisfies C{predicate}.

        @raise AssertionError: if none comes within C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        index = 0
        while True:
            while index < len(self.lines):
                if predicate(self.lines[index]):
                    return self.lines[index]
                index += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not self._drain(True, min(remaining, 0.1)) and self.exited():
                while self._drain(False, 0):
                    pass
                if index >= len(self.lines):
                    break
        raise AssertionError(
            f"child {self.pid} {self.arguments[2:4]} printed no matching line "
            f"in {timeout} s; lines: {self.lines[-10:]}; stderr: {self.stderr[-2000:]}"
        )

    def collect(self) -> list[str]:
        """
        Every line read so far.
        """
        while self._drain(False, 0):
            pass
        return self.lines

    def role(self) -> str | None:
        roles = [line.split()[1] for line in self.collect() if line.startswith("ROLE ")]
        return roles[-1] if roles else None

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()

    def exited(self) -> bool:
        return self.process.poll() is not None

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signum)

    def wait(self, timeout: float = 20.0) -> int:
        return self.process.wait(timeout)

    def reap(self) -> None:
        """
        End the child if it still runs, and wait for it.
        """
        if self.process.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - kernel trouble
            pass
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


def _childEnvironment() -> dict[str, str]:
    environment = dict(os.environ)
    # A child must never find the user's real runtime directory either.
    environment.setdefault("XDG_RUNTIME_DIR", "/nonexistent-twisted-channel-test")
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


class Children:
    """
    Every child a test starts; the fixture reaps them all, also on failure.
    """

    def __init__(
        self, directory: str, reactorName: str = "default", transport: str = "unix"
    ) -> None:
        self.directory = directory
        self.reactorName = reactorName
        self.transport = transport
        self.all: list[Child] = []

    def worker(self, mode: str, name: str, *extra: str) -> Child:
        child = Child(
            [sys.executable, WORKER, mode, "--dir", self.directory, "--name", name]
            + ["--reactor", self.reactorName, "--transport", self.transport]
            + list(extra),
            cwd=self.directory,
        )
        self.all.append(child)
        return child

    def candidate(self, name: str, record: str) -> Child:
        return self.worker("candidate", name, "--record", record)

    def client(self, name: str, tag: str, count: int, *extra: str) -> Child:
        return self.worker("client", name, "--tag", tag, "--count", str(count), *extra)

    def channelFile(self, name: str) -> str:
        """
        The file a host of channel C{name} publishes: its socket, or its TCP
        port file.
        """
        suffix = ".port" if self.transport == "tcp" else ".sock"
        return os.path.join(self.directory, name + suffix)

    def start(self, arguments: list[str]) -> Child:
        child = Child(arguments, cwd=self.directory)
        self.all.append(child)
        return child

    def reapAll(self) -> None:
        for child in self.all:
            child.reap()


def readRecords(path: str) -> list[tuple[int, str, int]]:
    """
    The lines a recording host wrote: (host pid, sender tag, number).
    """
    records = []
    if not os.path.exists(path):
        return records
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                # Being written: a line that crosses a page boundary shows
                # its first part before its end.
                break
            pid, message = line.decode().split()
            tag, number = message.rsplit(":", 1)
            records.append((int(pid), tag, int(number)))
    return records
