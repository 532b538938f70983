"""
This process's pid, asked of the kernel once rather than at each use (a
system call each time: the C library no longer keeps it), and again in a
child after a fork.  Read it as C{_process.pid}, never imported by name,
which would keep the parent's after a fork.

Also the ids of the client connections this process makes
(L{newClientId}): random bytes drawn once per process, again in a child
after a fork, and a counter.
"""

from __future__ import annotations

import itertools
import os
import struct

#: This process's pid.
pid = os.getpid()

#: The random half of every client id this process makes.
_idPrefix = os.urandom(8)
#: The other half: a count, taken atomically (one C call under the GIL).
_idCount = itertools.count(1)
_ID_COUNT = struct.Struct(">Q")


def newClientId() -> bytes:
    """
    The 16 bytes that name a new client connection to every host: 8 random
    bytes drawn once per process (and again in a child after a fork) and a
    count of this process's connections, so that no two connections share
    an id, in this process or (but for two random 8-byte draws being
    equal) in any other, without asking the kernel for random bytes at
    each connection (a system call on the way to its first message).
    """
    return _idPrefix + _ID_COUNT.pack(next(_idCount))


def _forked() -> None:
    global pid, _idPrefix
    pid = os.getpid()
    # A child's connections must not take ids its parent's will take too.
    _idPrefix = os.urandom(8)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
