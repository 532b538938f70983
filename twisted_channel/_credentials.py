"""
Who is at the other end of a Unix socket, as the kernel tells it.
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import NamedTuple


class PeerCredentials(NamedTuple):
    """
    The process and user ids of a connected peer.

    Either may be L{None} where the platform does not report it.
    L{peerCredentials} answers with a plain C{(pid, uid)} tuple, which
    costs no Python call on the way to a link's first message; this names
    its fields, for whoever builds one.
    """

    pid: int | None
    uid: int | None


_UCRED = struct.Struct("3i")
_NOT_REPORTED: tuple[int | None, int | None] = (None, None)

_SO_PEERCRED: int | None = (
    getattr(socket, "SO_PEERCRED", None) if sys.platform.startswith("linux") else None
)


def peerCredentials(handle: socket.socket) -> tuple[int | None, int | None]:
    """
    Ask the kernel who is at the other end of the connected Unix socket
    C{handle}.

    On Linux this is C{SO_PEERCRED}.  Elsewhere both are L{None}: the
    channel then relies on its directory's permissions alone.

    @return: the peer's C{(pid, uid)}, as L{PeerCredentials} names them.
    """
    if _SO_PEERCRED is None:  # pragma: no cover - not on Linux
        return _NOT_REPORTED
    try:
        raw = handle.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _UCRED.size)
    except OSError:
        return _NOT_REPORTED
    pid, uid, _gid = _UCRED.unpack(raw)
    return (pid or None, uid)
