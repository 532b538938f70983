"""
The parent's side of the children: start them with C{sys.executable}, read
their report lines, wait for them with deadlines, and always kill and reap
them, by pid, when a measurement ends (also when it fails).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench._common import repositoryRoot


class ChildFailedError(RuntimeError):
    """
    A child did not report what it should have, in time.
    """


class Child:
    """
    One child process, its stdout read line by line on a thread and its
    stderr kept in a file.
    """

    def __init__(
        self,
        arguments: list[str],
        cwd: str,
        label: str,
        environment: dict[str, str] | None = None,
        group: bool = False,
    ) -> None:
        """
        @param environment: variables added to this process's environment.
        @param group: start the child in a process group of its own (its id
            is the child's pid), and kill the whole group when it is reaped:
            for children that start children of their own (Node's cluster).
        """
        self.label = label
        self.arguments = arguments
        self.group = group
        self._errPath = os.path.join(cwd, f"{label}.err")
        env = dict(os.environ)
        root = repositoryRoot()
        previous = env.get("PYTHONPATH")
        env["PYTHONPATH"] = root + (os.pathsep + previous if previous else "")
        env.update(environment or {})
        with open(self._errPath, "wb") as err:
            self.process = subprocess.Popen(
                arguments,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=cwd,
                env=env,
                start_new_session=group,
            )
        self.pid = self.process.pid
        self.lines: list[str] = []
        self._seen = 0
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def __repr__(self) -> str:
        return f"<Child {self.label} pid {self.pid}>"

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        for raw in stdout:
            self._queue.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._queue.put(None)

    def stderr(self) -> str:
        try:
            with open(self._errPath, "rb") as f:
                return f.read()[-3000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _pull(self, timeout: float) -> bool:
        """
        Move one line from the reader to L{lines}; False on timeout or EOF.
        """
        try:
            line = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return False
        if line is None:
            self._queue.put(None)
            return False
        self.lines.append(line)
        return True

    def poll(self) -> list[str]:
        """
        Every line read so far.
        """
        while self._pull(0):
            pass
        return self.lines

    def take(self, predicate: Callable[[str], bool]) -> str | None:
        """
        The next line not looked at before that satisfies C{predicate}, if
        one was read already; lines looked at and not matching are passed
        over for good.

        @raise ChildFailedError: if the child reported an error.
        """
        self.poll()
        while self._seen < len(self.lines):
            line = self.lines[self._seen]
            self._seen += 1
            if line.startswith("ERROR"):
                raise ChildFailedError(f"{self}: {line}; stderr: {self.stderr()}")
            if predicate(line):
                return line
        return None

    def next(
        self, predicate: Callable[[str], bool], timeout: float, what: str = ""
    ) -> str:
        """
        Wait for the next line that satisfies C{predicate} (see L{take}).

        @raise ChildFailedError: if none comes within C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            line = self.take(predicate)
            if line is not None:
                return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not self._pull(min(remaining, 0.05)) and self.exited():
                line = self.take(predicate)
                if line is not None:
                    return line
                break
        raise ChildFailedError(
            f"{self} gave no {what or 'expected'} line within {timeout} s "
            f"(exit status {self.process.poll()}); last lines: "
            f"{self.lines[-5:]}; stderr: {self.stderr()}"
        )

    def expect(self, word: str, timeout: float) -> list[str]:
        """
        The fields of the next line starting with C{word}.
        """
        line = self.next(lambda line: line.split(" ", 1)[0] == word, timeout, word)
        return line.split()[1:]

    def result(self, timeout: float) -> dict[str, Any]:
        line = self.next(lambda line: line.startswith("RESULT "), timeout, "RESULT")
        value: dict[str, Any] = json.loads(line.split(" ", 1)[1])
        return value

    def send(self, command: str) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(command.encode("ascii") + b"\n")
        stdin.flush()

    def exited(self) -> bool:
        return self.process.poll() is not None

    def wait(self, timeout: float) -> int:
        """
        Wait for the child to exit by itself.

        @raise ChildFailedError: if it has not within C{timeout} seconds.
        """
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ChildFailedError(
                f"{self} did not exit within {timeout} s; stderr: {self.stderr()}"
            ) from None

    def kill(self) -> int:
        """
        SIGKILL the child now (by its pid); return the monotonic time, in
        nanoseconds, taken just before the signal was sent.
        """
        t = time.monotonic_ns()
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        return t

    def reap(self) -> None:
        """
        Kill the child if it still runs (with its process group, if it has
        one), wait for it, close its pipes.
        """
        if self.group:
            # The group's id is the child's pid, which the kernel does not
            # hand out again while any member of the group lives, so this
            # reaches only what the child started, also after it exited.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.process.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - kernel trouble
            pass
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass


class Workspace:
    """
    A private directory under C{/tmp} and the children started in it.
    """

    def __init__(self, directory: str, limit: int) -> None:
        self.directory = directory
        self.limit = limit
        self.children: list[Child] = []
        self._count = 0

    def start(
        self,
        kind: str,
        *arguments: object,
        limit: int | None = None,
        module: str = "bench._children",
    ) -> Child:
        """
        Start C{python -m MODULE KIND --dir DIR --limit SECONDS ...}.
        """
        self._count += 1
        command = [
            sys.executable,
            "-m",
            module,
            kind,
            "--dir",
            self.directory,
            "--limit",
            str(limit or self.limit),
            *[str(a) for a in arguments],
        ]
        child = Child(command, self.directory, f"{self._count:03d}-{kind}")
        self.children.append(child)
        return child

    def spawn(
        self,
        label: str,
        command: list[str],
        environment: dict[str, str] | None = None,
        group: bool = False,
    ) -> Child:
        """
        Start any command in this workspace (see L{Child}); it must bound
        its own lifetime, and is killed and reaped with the others.
        """
        self._count += 1
        child = Child(
            command, self.directory, f"{self._count:03d}-{label}", environment, group
        )
        self.children.append(child)
        return child

    def reapAll(self) -> None:
        for child in self.children:
            child.reap()

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)


@contextmanager
def workspace(limit: int = 300) -> Iterator[Workspace]:
    """
    A fresh L{Workspace}: every child started in it is killed and reaped,
    and the directory removed, when the block ends.
    """
    directory = tempfile.mkdtemp(prefix="tcb", dir="/tmp")
    os.chmod(directory, 0o700)
    space = Workspace(directory, limit)
    try:
        yield space
    finally:
        space.reapAll()
        shutil.rmtree(directory, ignore_errors=True)
