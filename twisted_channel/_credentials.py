"""
Who is at the other end of a Unix socket, as the kernel tells it.
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class PeerCredentials:
    """
    The process and user ids of a connected peer.

    Either may be L{None} where the platform does not report it.
    """

    pid: int | None
    uid: int | None


_UCRED = struct.Struct("3i")


def peerCredentials(handle: socket.socket) -> PeerCredentials:
    """
    Ask the kernel who is at the other end of the connected Unix socket
    C{handle}.

    On Linux this is C{SO_PEERCRED} (pid, uid).  Elsewhere both are L{None}:
    the channel then relies on its directory's permissions alone.
    """
    peerCredentialsOption = getattr(socket, "SO_PEERCRED", None)
    if peerCredentialsOption is not None and sys.platform.startswith("linux"):
        try:
            raw = handle.getsockopt(
                socket.SOL_SOCKET, peerCredentialsOption, _UCRED.size
            )
        except OSError:
            return PeerCredentials(None, None)
        pid, uid, _gid = _UCRED.unpack(raw)
        return PeerCredentials(pid or None, uid)
    return PeerCredentials(None, None)  # pragma: no cover - not on Linux
