"""
This process's pid, asked of the kernel once rather than at each use (a
system call each time: the C library no longer keeps it), and again in a
child after a fork.  Read it as C{_process.pid}, never imported by name,
which would keep the parent's after a fork.
"""

from __future__ import annotations

import os

#: This process's pid.
pid = os.getpid()


def _forked() -> None:
    global pid
    pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
