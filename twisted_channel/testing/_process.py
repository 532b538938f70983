"""
One child process for tests, benchmarks and demos: started with a command
line, its standard output read line by line on a thread, its standard error
kept, every wait bounded by a deadline, and always ended and reaped by its
own pid, never by a name.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

#: How much of a child's standard error is kept, and shown when it fails.
STDERR_KEPT = 64 * 1024

#: Seconds a failed wait, once the child's output has ended, gives it to be
#: seen to exit and for its standard error to be read.
OUTPUT_END_GRACE = 2.0

#: Where a child finds its runtime directory when the parent's environment
#: names none: a path that cannot exist, so that no child ever uses the
#: user's real one by mistake.
NO_RUNTIME_DIRECTORY = "/nonexistent-twisted-channel-test"


class ChildFailedError(AssertionError):
    """
    A child did not do what it should have, in time: no matching line
    before its deadline, no exit when one was due, or an C{ERROR} line.

    An C{AssertionError}, so that a test that waits for a child fails (and
    does not error) when the child does not deliver; the message includes
    the child's last lines and standard error.
    """


def childEnvironment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    The environment a child gets: this process's, unbuffered Python output,
    a runtime directory that cannot exist unless one is set already (see
    L{NO_RUNTIME_DIRECTORY}), then C{extra}.

    @param extra: variables added to (or replacing) the others.
    @return: a new dictionary.
    """
    environment = dict(os.environ)
    environment.setdefault("XDG_RUNTIME_DIR", NO_RUNTIME_DIRECTORY)
    environment["PYTHONUNBUFFERED"] = "1"
    environment.update(extra or {})
    return environment


class ChildProcess:
    """
    One running child process.

    Its standard output is read on a thread, one line at a time, into
    L{lines}; its standard error on another, keeping the last
    L{STDERR_KEPT} bytes.  Two ways to wait for a line: L{waitFor} looks at
    every line the child ever printed (seen before or new), L{next} (and
    L{expect}, L{result}) at lines not looked at by them before, in order,
    like a parser reading a stream.

    The child is bounded in time: unless C{lifetime} is L{None}, a timer
    kills it (C{SIGKILL}, by its pid) if it still runs C{lifetime} seconds
    after it started.  L{reap} ends it and waits for it; use it in a
    C{finally} block, use the child as a context manager (its block's end
    reaps it), or start children in a L{ChannelProcesses}, which reaps them
    all when its block ends.

    @ivar arguments: the command line.
    @ivar label: a short name for messages.
    @ivar pid: the child's process id.
    @ivar process: the L{subprocess.Popen} running it.
    @ivar lines: every line of standard output read so far (see
        L{collect}), without its line end.
    """

    def __init__(
        self,
        arguments: Sequence[str],
        cwd: str | None = None,
        label: str | None = None,
        environment: Mapping[str, str] | None = None,
        group: bool = False,
        lifetime: float | None = 600.0,
    ) -> None:
        """
        Start the child.

        @param arguments: the command line, its program first.
        @param cwd: the directory it starts in.
        @param label: a short name for messages (default: its pid).
        @param environment: variables added to L{childEnvironment}'s.
        @param group: start the child in a new session (its process group's
            id is its pid) and kill the whole group when it is reaped: for
            children that start children of their own.
        @param lifetime: seconds after which the child is killed if it still
            runs, or L{None} for no limit.
        """
        self.arguments = list(arguments)
        self.group = group
        self.process = subprocess.Popen(
            self.arguments,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=childEnvironment(environment),
            start_new_session=group,
        )
        self.pid = self.process.pid
        self.label = label or f"pid {self.pid}"
        self.startedAt = time.monotonic()
        self.lines: list[str] = []
        self._seen = 0
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: deque[bytes] = deque()
        self._stderrSize = 0
        self._lock = threading.Lock()
        self._outputEnded = False
        self._killedAtDeadline = False
        threading.Thread(target=self._readOutput, daemon=True).start()
        self._errorReader = threading.Thread(target=self._readErrors, daemon=True)
        self._errorReader.start()
        self._timer: threading.Timer | None = None
        if lifetime is not None:
            self._timer = threading.Timer(lifetime, self._lifetimeOver)
            self._timer.daemon = True
            self._timer.start()

    def __repr__(self) -> str:
        return f"<ChildProcess {self.label} pid {self.pid}>"

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.reap()

    # Reading

    def _readOutput(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        for raw in stdout:
            self._queue.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self._queue.put(None)

    def _readErrors(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        for raw in stderr:
            with self._lock:
                self._stderr.append(raw)
                self._stderrSize += len(raw)
                while self._stderrSize > STDERR_KEPT and len(self._stderr) > 1:
                    self._stderrSize -= len(self._stderr.popleft())

    @property
    def stderr(self) -> str:
        """
        The last L{STDERR_KEPT} bytes of the child's standard error so far.
        """
        with self._lock:
            data = b"".join(self._stderr)
        return data.decode("utf-8", "replace")

    def _pull(self, timeout: float) -> bool:
        """
        Move one line from the reader to L{lines}; False on timeout, or once
        standard output has ended.
        """
        try:
            if timeout <= 0:
                line = self._queue.get_nowait()
            else:
                line = self._queue.get(timeout=timeout)
        except queue.Empty:
            return False
        if line is None:
            self._queue.put(None)
            self._outputEnded = True
            return False
        self.lines.append(line)
        return True

    def outputEnded(self) -> bool:
        """
        Whether the child's standard output has ended (it exited, or closed
        it) and every line of it is in L{lines}.
        """
        self.collect()
        return self._outputEnded

    def collect(self) -> list[str]:
        """
        Every line read so far.

        @return: L{lines}, brought up to date.
        """
        while self._pull(0):
            pass
        return self.lines

    def _outputOver(self) -> None:
        """
        The child's output ended: a child ends it by exiting, so give it a
        moment to be seen to exit, and its standard error to be read, so
        that the failure says how it ended.
        """
        try:
            self.process.wait(OUTPUT_END_GRACE)
        except subprocess.TimeoutExpired:
            pass
        self._errorReader.join(OUTPUT_END_GRACE)

    def _failure(self, what: str) -> ChildFailedError:
        end = self.process.poll()
        status = "still running" if end is None else f"exit status {end}"
        if self._killedAtDeadline:
            status += ", killed at the end of its lifetime"
        return ChildFailedError(
            f"{self} {what} ({status}); last lines: {self.lines[-10:]}; "
            f"stderr: {self.stderr[-3000:]}"
        )

    def waitFor(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> str:
        """
        Wait for a line, printed before or to come, that satisfies
        C{predicate}.

        @param predicate: called with each line (without its end).
        @param timeout: seconds to wait at most.
        @return: the first such line.
        @raise ChildFailedError: if none comes within C{timeout} seconds, or
            the child's output ends without one.
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
            # Over once the output has ended, not once the child has
            # exited: what it printed last may still be in the pipe, or
            # with the thread that reads it, which a loaded machine can
            # keep off the CPU for longer than a pull waits.
            if not self._pull(min(remaining, 0.1)) and self._outputEnded:
                if index >= len(self.lines):
                    self._outputOver()
                    break
        raise self._failure(f"printed no matching line within {timeout} s")

    def take(self, predicate: Callable[[str], bool]) -> str | None:
        """
        The next line not looked at before by L{take} or L{next} that
        satisfies C{predicate}, if one was read already; lines looked at
        that do not match are passed over for good.

        @param predicate: called with each line.
        @return: the line, or L{None}.
        @raise ChildFailedError: if a line passed over starts with
            C{ERROR}: the child reported a failure.
        """
        self.collect()
        while self._seen < len(self.lines):
            line = self.lines[self._seen]
            self._seen += 1
            if line.startswith("ERROR"):
                raise self._failure(f"reported {line!r}")
            if predicate(line):
                return line
        return None

    def next(
        self, predicate: Callable[[str], bool], timeout: float, what: str = ""
    ) -> str:
        """
        Wait for the next line that satisfies C{predicate} (see L{take}).

        @param predicate: called with each line.
        @param timeout: seconds to wait at most.
        @param what: what the line is, for the error message.
        @return: the line.
        @raise ChildFailedError: if none comes within C{timeout} seconds or
            before the child's output ends, or the child reports an error.
        """
        deadline = time.monotonic() + timeout
        while True:
            line = self.take(predicate)
            if line is not None:
                return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Over once the output has ended (see L{waitFor}).
            if not self._pull(min(remaining, 0.05)) and self._outputEnded:
                line = self.take(predicate)
                if line is not None:
                    return line
                self._outputOver()
                break
        raise self._failure(f"gave no {what or 'expected'} line within {timeout} s")

    def expect(self, word: str, timeout: float) -> list[str]:
        """
        Wait for the next line whose first word is C{word} (see L{next}).

        @return: the line's other words.
        """
        line = self.next(lambda line: line.split(" ", 1)[0] == word, timeout, word)
        return line.split()[1:]

    def result(self, timeout: float) -> dict[str, Any]:
        """
        Wait for the next C{RESULT <json object>} line (see L{next}).

        @return: the object.
        """
        line = self.next(lambda line: line.startswith("RESULT "), timeout, "RESULT")
        value: dict[str, Any] = json.loads(line.split(" ", 1)[1])
        return value

    def role(self) -> str | None:
        """
        The role a channel candidate said it has last (its last C{ROLE}
        line), if it said any.
        """
        roles = [line.split()[1] for line in self.collect() if line.startswith("ROLE ")]
        return roles[-1] if roles else None

    def waitForRole(self, role: str, timeout: float = 20.0) -> None:
        """
        Wait until a channel candidate says it has C{role} (a line C{ROLE
        <role>}, printed before or to come; see L{waitFor}).

        @param role: C{"host"}, C{"standby"} or C{"stopped"}.
        @raise ChildFailedError: if it does not within C{timeout} seconds.
        """
        self.waitFor(lambda line: line == f"ROLE {role}", timeout)

    # Talking and ending

    def send(self, command: str) -> None:
        """
        Write C{command} and a line end to the child's standard input.

        @raise OSError: if the child is no longer reading it.
        """
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(command.encode("utf-8") + b"\n")
        stdin.flush()

    def closeInput(self) -> None:
        """
        Close the child's standard input: children that watch it take its
        end as the order to leave.
        """
        stdin = self.process.stdin
        if stdin is not None:
            try:
                stdin.close()
            except OSError:
                pass

    def exited(self) -> bool:
        """
        Whether the child has exited.
        """
        return self.process.poll() is not None

    def kill(self, signum: int = signal.SIGKILL) -> int:
        """
        Send C{signum} to the child, by its pid, unless it was reaped
        already.

        @return: the C{CLOCK_MONOTONIC} time, in nanoseconds, taken just
            before the signal was sent.
        """
        at = time.monotonic_ns()
        # While the child is not reaped, its pid is still its own (a zombie
        # keeps it), so this signal cannot reach another process.
        if self.process.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass
        return at

    def wait(self, timeout: float = 20.0) -> int:
        """
        Wait for the child to exit by itself.

        @return: its exit status (negative: the signal that ended it).
        @raise ChildFailedError: if it has not within C{timeout} seconds.
        """
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._failure(f"did not exit within {timeout} s") from None

    def _lifetimeOver(self) -> None:
        if self.process.poll() is None:
            self._killedAtDeadline = True
            self._killAll()

    def _killAll(self) -> None:
        if self.group:
            # The group's id is the child's pid, which the kernel does not
            # hand out again while any member of the group lives, so this
            # reaches only what the child started, also after it exited.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.kill(signal.SIGKILL)

    def reap(self, grace: float = 0.0) -> int | None:
        """
        End the child if it still runs, and wait for it; close its pipes.

        @param grace: seconds the child is given to leave by itself after
            its standard input is closed, before it is killed; 0 kills it at
            once.
        @return: its exit status, or L{None} if the kernel did not let it go
            within 10 s (never seen).
        """
        if self._timer is not None:
            self._timer.cancel()
        if grace > 0 and self.process.poll() is None:
            self.closeInput()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self._killAll()
        try:
            status: int | None = self.process.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - kernel trouble
            status = None
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return status
