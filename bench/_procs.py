"""
The parent's side of the benchmark's children: a private workspace under
C{/tmp} in which children are started (with L{twisted_channel.testing}'s
harness), and which kills and reaps every one of them, by pid, when a
measurement ends, also when it fails.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from bench._common import repositoryRoot
from twisted_channel.testing import (
    RECORDER,
    ChannelProcesses,
    ChildFailedError,
    ChildProcess,
    privateDirectory,
)

__all__ = ["Child", "ChildFailedError", "Workspace", "workspace"]

Child = ChildProcess


class Workspace:
    """
    A private directory and the children started in it.

    @ivar directory: the directory, also the channels' C{dir=}.
    @ivar limit: seconds a child started by L{start} lives at most: it is
        told so (C{--limit}, for its own alarm), and killed by the harness
        a little later if it is still there.
    """

    def __init__(self, directory: str, limit: int) -> None:
        self.directory = directory
        self.limit = limit
        self.processes = ChannelProcesses(directory, lifetime=limit + 30)
        self._count = 0

    @property
    def children(self) -> list[Child]:
        return self.processes.children

    def _label(self, what: str) -> str:
        self._count += 1
        return f"{self._count:03d}-{what}"

    def start(
        self,
        kind: str,
        *arguments: object,
        limit: int | None = None,
        module: str = "bench._children",
    ) -> Child:
        """
        Start C{python -m MODULE KIND --dir DIR --limit SECONDS ...}, with
        the repository on its C{PYTHONPATH} (for C{bench}).
        """
        seconds = limit or self.limit
        command = [
            sys.executable,
            *("-m", module, kind, "--dir", self.directory),
            *("--limit", str(seconds), *[str(a) for a in arguments]),
        ]
        return self.processes.start(
            command,
            label=self._label(kind),
            environment=_pythonPath(),
            lifetime=seconds + 30,
        )

    def recorder(self, mode: str, name: str, *arguments: object) -> Child:
        """
        Start the recording candidate or streaming client of
        L{twisted_channel.testing.recorder} on channel C{name}.
        """
        return self.start(mode, "--name", name, *arguments, module=RECORDER)

    def spawn(
        self,
        label: str,
        command: list[str],
        environment: dict[str, str] | None = None,
        group: bool = False,
    ) -> Child:
        """
        Start any command in this workspace (see L{ChildProcess}); it must
        bound its own lifetime, and is killed and reaped with the others.
        """
        return self.processes.start(
            command, label=self._label(label), environment=environment, group=group
        )

    def reapAll(self) -> None:
        self.processes.reapAll()

    def path(self, name: str) -> str:
        return self.processes.path(name)


def _pythonPath() -> dict[str, str]:
    previous = os.environ.get("PYTHONPATH")
    root = repositoryRoot()
    return {"PYTHONPATH": root + (os.pathsep + previous if previous else "")}


@contextmanager
def workspace(limit: int = 300) -> Iterator[Workspace]:
    """
    A fresh L{Workspace}: every child started in it is killed and reaped,
    and the directory removed, when the block ends.
    """
    with privateDirectory(prefix="tcb") as directory:
        space = Workspace(directory, limit)
        try:
            yield space
        finally:
            space.reapAll()
