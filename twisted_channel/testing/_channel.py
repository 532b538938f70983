"""
Channel processes for tests: a private runtime directory, and the group of
child processes started in it (recording candidates, streaming clients, or
any command), reaped together when the test ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType

from ._process import ChildFailedError, ChildProcess

#: The module of the recording candidate and streaming client, run as
#: C{python -m RECORDER MODE ...}.
RECORDER = "twisted_channel.testing.recorder"


@contextmanager
def privateDirectory(prefix: str = "tc-") -> Iterator[str]:
    """
    A new private directory (mode 0700) under C{/tmp}, removed with all it
    holds when the block ends.

    It is under C{/tmp} and short, not under the (often long) temporary
    directory of the test runner, because a Unix socket's path holds at most
    107 bytes.

    @param prefix: the start of its name.
    """
    directory = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(directory, 0o700)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def waitUntil(
    condition: Callable[[], object], timeout: float, what: str, poll: float = 0.005
) -> float:
    """
    Call C{condition} every C{poll} seconds until it returns something true.

    @param what: what is waited for, for the error message.
    @return: the seconds it took.
    @raise ChildFailedError: if it is not true within C{timeout} seconds.
    """
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise ChildFailedError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


class ChannelProcesses:
    """
    The child processes of one test, started in one channel directory, and
    all ended and reaped by L{reapAll}: used as a context manager, when its
    block ends, also on failure.

    L{candidate} and L{client} start the recording candidate and the
    streaming client of L{twisted_channel.testing.recorder} on a channel of
    this directory; L{start} starts any command.

    @ivar directory: the channel's runtime directory (C{dir=}).
    @ivar reactorName: C{"default"} or C{"asyncio"}: the reactor the
        recorders run.
    @ivar transportKind: C{"unix"} or C{"tcp"}: the transport the
        recorders' channels use (given as C{transport}); L{None}: the
        endpoint's default.
    @ivar children: every child started, in order.
    """

    def __init__(
        self,
        directory: str,
        reactorName: str = "default",
        transport: str | None = "unix",
        lifetime: float | None = 600.0,
    ) -> None:
        """
        @param lifetime: seconds after which any child still running is
            killed (see L{ChildProcess}), or L{None} for no limit.
        """
        self.directory = directory
        self.reactorName = reactorName
        self.transportKind = transport
        self.lifetime = lifetime
        self.children: list[ChildProcess] = []

    def __enter__(self) -> ChannelProcesses:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.reapAll()

    def start(
        self,
        arguments: Sequence[str],
        label: str | None = None,
        environment: Mapping[str, str] | None = None,
        group: bool = False,
        lifetime: float | None = None,
    ) -> ChildProcess:
        """
        Start any command, in this directory (see L{ChildProcess}).

        @param lifetime: this child's own limit (default: the group's).
        """
        child = ChildProcess(
            arguments,
            cwd=self.directory,
            label=label,
            environment=environment,
            group=group,
            lifetime=self.lifetime if lifetime is None else lifetime,
        )
        self.children.append(child)
        return child

    def recorder(self, mode: str, name: str, *extra: str) -> ChildProcess:
        """
        Start C{python -m twisted_channel.testing.recorder MODE} on channel
        C{name} of this directory, with this group's reactor and transport.

        @param mode: C{"candidate"} or C{"client"}.
        @param extra: more command-line arguments (a later option replaces
            an earlier one).
        """
        kind = self.transportKind
        transport = [] if kind is None else ["--transport", kind]
        return self.start(
            [sys.executable, "-m", RECORDER, mode, "--dir", self.directory]
            + ["--name", name, "--reactor", self.reactorName, *transport, *extra],
            label=f"{mode} {name}",
        )

    def candidate(self, name: str, record: str, *extra: str) -> ChildProcess:
        """
        Start a recording candidate host of channel C{name}: it records
        every message it receives in the file C{record} (read it with
        L{readRecords}) and prints C{ROLE} lines as its role changes.
        """
        return self.recorder("candidate", name, "--record", record, *extra)

    def client(self, name: str, tag: str, count: int, *extra: str) -> ChildProcess:
        """
        Start a client of channel C{name} that writes C{TAG:1} to
        C{TAG:COUNT}, 100 every millisecond, then closes gracefully.
        """
        return self.recorder(
            "client",
            name,
            *("--tag", tag, "--count", str(count)),
            *("--slice", "100", "--interval", "0.001", *extra),
        )

    def channelFile(self, name: str) -> str:
        """
        The file a host of channel C{name} publishes: its socket, or its
        TCP port file.
        """
        suffix = ".port" if self.transportKind == "tcp" else ".sock"
        return os.path.join(self.directory, name + suffix)

    def path(self, name: str) -> str:
        """
        The path of C{name} in this directory.
        """
        return os.path.join(self.directory, name)

    def reapAll(self, grace: float = 0.0) -> None:
        """
        End every child that still runs, and wait for each (see
        L{ChildProcess.reap}).

        @param grace: seconds every child is given, all at once, to leave by
            itself after its standard input is closed; 0 kills at once.
        """
        if grace > 0:
            for child in self.children:
                child.closeInput()
            deadline = time.monotonic() + grace
            for child in self.children:
                try:
                    child.process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for child in self.children:
            child.reap()
