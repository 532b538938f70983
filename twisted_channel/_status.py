"""
Ask a channel's host how it is doing, in the channel's own wire protocol.

A status query is a link whose L{_wire.Hello} carries
L{_wire.FLAG_STATUS_QUERY}: the host answers with one C{STATUS} frame of
JSON (L{ChannelPort.status}) and closes the link, without building an
application protocol, so the application's links are not disturbed.

This module is blocking on purpose (a plain socket with a timeout): it
serves the command line, which has no reactor running.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from typing import Any

from . import _wire
from ._credentials import peerCredentials
from ._directory import channelPaths, prepareDirectory

#: Seconds to wait for a host's answer.
DEFAULT_STATUS_TIMEOUT = 2.0


class StatusError(Exception):
    """
    A host accepted the query but did not answer it properly.

    @ivar pid: the host's process id, as the kernel reports it, if known.
    """

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


def notHosted(name: str, path: str) -> dict[str, Any]:
    """
    The status of a channel nobody hosts.
    """
    return {
        "name": name,
        "hosted": False,
        "pid": None,
        "since": None,
        "path": path,
        "links": 0,
        "messages": 0,
        "bytes": 0,
    }


def queryStatus(
    name: str,
    directory: str | None = None,
    timeout: float = DEFAULT_STATUS_TIMEOUT,
) -> dict[str, Any]:
    """
    Ask the host of channel C{name} for its status.

    Nothing is created: a missing runtime directory or socket, or a socket
    nobody listens on, means the channel is not hosted.

    @return: a dict with at least C{name}, C{hosted} (bool), C{pid} (int or
        None), C{since} (the time the host started hosting, in seconds since
        the epoch, or None), C{path} (the socket path), C{links},
        C{messages} and C{bytes} (what the host received and relayed during
        its present term).
    @raise ValueError: if the name or directory is not valid
        (L{twisted_channel.UnsafeDirectoryError} if it is not safe).
    @raise StatusError: if a host accepted the query but did not answer
        within C{timeout} seconds, or answered with something else.
    """
    paths = channelPaths(name, directory)
    if not os.path.lexists(paths.directory):
        return notHosted(name, paths.socket)
    # Only checks, since it exists: nothing is created.
    prepareDirectory(paths.directory)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(paths.socket)
        except TimeoutError:
            raise StatusError(
                f"nobody accepted the query at {paths.socket!r} within "
                f"{timeout:g} s (is the host frozen?)"
            ) from None
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                return notHosted(name, paths.socket)
            raise StatusError(
                f"cannot connect to {paths.socket!r}: {os.strerror(e.errno or 0)}"
            ) from None
        credentials = peerCredentials(sock)
        if credentials.uid is not None and credentials.uid != os.getuid():
            raise StatusError(
                f"the socket {paths.socket!r} is served by uid {credentials.uid}, "
                "not by this user; refusing it",
                credentials.pid,
            )
        hello = _wire.Hello(
            os.urandom(16),
            os.getpid(),
            _wire.MAX_CONTROL_BODY,
            flags=_wire.FLAG_STATUS_QUERY,
        )
        return _readStatus(sock, _wire.encodeHello(hello), credentials.pid, timeout)
    finally:
        sock.close()


def _readStatus(
    sock: socket.socket, hello: bytes, pid: int | None, timeout: float
) -> dict[str, Any]:
    who = f"the host (pid {pid})" if pid else "the host"
    decoder = _wire.FrameDecoder(_wire.MAX_CONTROL_BODY)
    try:
        sock.sendall(hello)
        while True:
            data = sock.recv(65536)
            if not data:
                raise StatusError(f"{who} closed the link without answering", pid)
            for kind, body in decoder.feed(data):
                if kind == _wire.STATUS:
                    status = json.loads(body.decode("utf-8"))
                    if not isinstance(status, dict):
                        raise StatusError(f"{who} answered with {status!r}", pid)
                    return status
                if kind == _wire.ERROR:
                    reason = body.decode("utf-8", "replace")
                    raise StatusError(f"{who} refused the query: {reason}", pid)
                raise StatusError(
                    f"{who} answered with a frame of kind {kind}, not a status", pid
                )
    except TimeoutError:
        raise StatusError(
            f"{who} did not answer within {timeout:g} s (is it frozen?)", pid
        ) from None
    except (_wire.ProtocolError, ValueError) as e:
        raise StatusError(f"{who} answered with garbage: {e}", pid) from None
    except OSError as e:
        raise StatusError(f"{who} dropped the link: {e}", pid) from None
