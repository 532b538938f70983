"""
The names the multi-process tests used before L{twisted_channel.testing}
existed, kept as thin aliases of it while tests move over.
"""

from __future__ import annotations

from twisted_channel.testing import ChannelProcesses, ChildProcess, childEnvironment
from twisted_channel.testing import readRecords as _readRecords

Child = ChildProcess
_childEnvironment = childEnvironment


class Children(ChannelProcesses):
    """
    L{ChannelProcesses} under its old name.
    """

    @property
    def all(self) -> list[ChildProcess]:
        return self.children

    def worker(self, mode: str, name: str, *extra: str) -> ChildProcess:
        return self.recorder(mode, name, *extra)


def readRecords(path: str) -> list[tuple[int, str, int]]:
    """
    The numbered messages a recording host received: (host pid, sender
    tag, number).
    """
    return [(r.pid, r.tag, r.number) for r in _readRecords(path)]
