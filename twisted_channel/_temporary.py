"""
The temporary names under which a channel's file is made before it is
renamed into place (a host's socket, a standby's ready socket, a port
file), and whether the process that made one still runs: what tells a
leftover of a dead process from the file of a live one.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from . import _process


def temporaryPrefix(path: str) -> str:
    """
    The prefix of the temporary names a file to be published at C{path}
    is made under: a dot, the file's name, a tilde.
    """
    directory, _, name = path.rpartition(os.sep)
    return f"{directory}{os.sep}.{name}~"


#: The last part of the temporary names: random once per process, then
#: counted up, so that no two of its names are the same and a name is not
#: one a dead process of the same pid left.
_serials = itertools.count(int.from_bytes(os.urandom(4), "big"))


def temporaryName(path: str) -> str:
    """
    A temporary name for a file to be published at C{path}: its prefix,
    this process's pid (which tells whether its maker is alive) and a
    part of its own.
    """
    serial = next(_serials) & 0xFFFFFFFF
    return f"{temporaryPrefix(path)}{_process.pid}-{serial:08x}"


@contextmanager
def removedOnFailure(temporary: str) -> Iterator[None]:
    """
    Remove the file at the temporary name C{temporary} if the block raises:
    what was made there will not be published, and no one else would
    remove it while this process lives.
    """
    try:
        yield
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise


def makerAlive(name: str, prefix: str) -> bool:
    """
    Whether the process that made the temporary file C{name} still runs,
    by the pid in the name.  A zombie (dead, not yet reaped by its parent)
    does not.
    """
    pid = name[len(prefix) :].split("-", 1)[0]
    if not pid.isdigit() or int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        return True
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as stat:
            # The state follows the command name, which is in parentheses
            # and may hold anything, a parenthesis included.
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")
