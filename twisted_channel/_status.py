"""
Ask a channel's host how it is doing, in the channel's own wire protocol.

A status query is a link whose L{_wire.Hello} carries
L{_wire.FLAG_STATUS_QUERY}: the host answers with one C{STATUS} frame of
JSON (L{ChannelPort.status}) and closes the link, without building an
application protocol, so the application's links are not disturbed.  Over
the loopback TCP transport the query first goes through the same
challenge and response as any link, with the secret from the port file.

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
from ._auth import LOOPBACK, readPortFile
from ._authexchange import (
    AuthenticationFailedError,
    AuthenticationRefusedError,
    ClientAuthExchange,
)
from ._credentials import peerCredentials
from ._directory import (
    ChannelPaths,
    UnsafeDirectoryError,
    channelPaths,
    prepareDirectory,
)

#: Seconds to wait for a host's answer.
DEFAULT_STATUS_TIMEOUT = 2.0

_NOBODY = (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK)


class StatusError(Exception):
    """
    Something accepted the query but did not answer it as a host does.

    @ivar pid: the host's process id, if known.
    """

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


def notHosted(name: str, path: str, transport: str) -> dict[str, Any]:
    """
    The status of a channel nobody hosts.
    """
    return {
        "name": name,
        "hosted": False,
        "pid": None,
        "since": None,
        "path": path,
        "transport": transport,
        "links": 0,
        "messages": 0,
        "bytes": 0,
    }


def queryStatus(
    name: str,
    directory: str | None = None,
    timeout: float = DEFAULT_STATUS_TIMEOUT,
    transport: str | None = None,
) -> dict[str, Any]:
    """
    Ask the host of channel C{name} for its status.

    Nothing is created: a missing runtime directory, socket or port file,
    or nobody listening, means the channel is not hosted.

    @param transport: C{"unix"} or C{"tcp"}; by default, whichever the
        runtime directory holds (the socket if both).
    @return: a dict with at least C{name}, C{hosted} (bool), C{pid} (int or
        None), C{since} (when the host started hosting, in seconds since the
        epoch, or None), C{path} (the socket, or the TCP port file),
        C{transport}, C{links}, C{messages} and C{bytes} (what the host
        received and relayed during its present term).
    @raise ValueError: if the name or directory is not valid
        (L{twisted_channel.UnsafeDirectoryError} if it is not safe).
    @raise StatusError: if something accepted the query but did not answer
        as a host within C{timeout} seconds.
    """
    if transport not in (None, "unix", "tcp"):
        raise ValueError(f"transport must be 'unix' or 'tcp', not {transport!r}")
    paths = channelPaths(name, directory)
    if transport is None:
        if os.path.lexists(paths.socket) or not os.path.lexists(paths.port):
            transport = "unix"
        else:
            transport = "tcp"
    path = paths.socket if transport == "unix" else paths.port
    if not os.path.lexists(paths.directory):
        return notHosted(name, path, transport)
    # Only checks, since it exists: nothing is created.
    prepareDirectory(paths.directory)
    if transport == "unix":
        status = _queryUnix(paths, timeout)
    else:
        status = _queryTCP(paths, timeout)
    if status is None:
        return notHosted(name, path, transport)
    status.setdefault("transport", transport)
    return status


def _queryUnix(paths: ChannelPaths, timeout: float) -> dict[str, Any] | None:
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
            if e.errno in _NOBODY:
                return None
            raise StatusError(
                f"cannot connect to {paths.socket!r}: {os.strerror(e.errno or 0)}"
            ) from None
        peerPid, peerUid = peerCredentials(sock)
        if peerUid is not None and peerUid != os.getuid():
            raise StatusError(
                f"the socket {paths.socket!r} is served by uid {peerUid}, "
                "not by this user; refusing it",
                peerPid,
            )
        frames = _Frames(sock, peerPid, timeout)
        return frames.ask()
    finally:
        sock.close()


def _queryTCP(paths: ChannelPaths, timeout: float) -> dict[str, Any] | None:
    try:
        portFile = readPortFile(paths.port)
    except FileNotFoundError:
        return None
    except UnsafeDirectoryError:
        raise
    except ValueError as e:
        raise StatusError(str(e)) from None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect((LOOPBACK, portFile.port))
        except TimeoutError:
            raise StatusError(
                f"nobody accepted the query on port {portFile.port} within "
                f"{timeout:g} s (is the host frozen?)",
                portFile.pid,
            ) from None
        except OSError as e:
            if e.errno in _NOBODY:
                # A port file a killed host left.
                return None
            raise StatusError(
                f"cannot connect to port {portFile.port}: {os.strerror(e.errno or 0)}",
                portFile.pid,
            ) from None
        frames = _Frames(sock, portFile.pid, timeout)
        exchange = ClientAuthExchange(portFile.secret)
        while not exchange.done:
            kind, body = frames.next()
            if kind == _wire.AUTH_OK:
                try:
                    exchange.receive(kind, body)
                except AuthenticationFailedError:
                    raise StatusError(
                        f"the process on port {portFile.port} could not prove it "
                        "is the host (the port file may be stale)"
                    ) from None
                continue
            try:
                frames.send(exchange.receive(kind, body))
            except (AuthenticationFailedError, AuthenticationRefusedError):
                frames.unexpected(kind, body)
        return frames.ask()
    finally:
        sock.close()


class _Frames:
    """
    Frames read from, and written to, a blocking socket.
    """

    def __init__(self, sock: socket.socket, pid: int | None, timeout: float) -> None:
        self.sock = sock
        self.pid = pid
        self.timeout = timeout
        self.who = f"the host (pid {pid})" if pid else "the host"
        self.decoder = _wire.FrameDecoder(_wire.MAX_CONTROL_BODY)
        self.frames: list[tuple[int, bytes]] = []

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise StatusError(f"{self.who} dropped the link: {e}", self.pid) from None

    def next(self) -> tuple[int, bytes]:
        while not self.frames:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise StatusError(
                    f"{self.who} did not answer within {self.timeout:g} s "
                    "(is it frozen?)",
                    self.pid,
                ) from None
            except OSError as e:
                raise StatusError(
                    f"{self.who} dropped the link: {e}", self.pid
                ) from None
            if not data:
                raise StatusError(
                    f"{self.who} closed the link without answering", self.pid
                )
            try:
                self.frames.extend(self.decoder.feed(data))
            except _wire.ProtocolError as e:
                raise StatusError(
                    f"{self.who} answered with garbage: {e}", self.pid
                ) from None
        return self.frames.pop(0)

    def unexpected(self, kind: int, body: bytes) -> None:
        if kind == _wire.ERROR:
            reason = body.decode("utf-8", "replace")
            raise StatusError(f"{self.who} refused the query: {reason}", self.pid)
        raise StatusError(
            f"{self.who} answered with a frame of kind {kind}, not a status",
            self.pid,
        )

    def ask(self) -> dict[str, Any]:
        """
        Send the status query and read the answer.
        """
        hello = _wire.Hello(
            os.urandom(16),
            os.getpid(),
            _wire.MAX_CONTROL_BODY,
            flags=_wire.FLAG_STATUS_QUERY,
        )
        self.send(_wire.encodeHello(hello))
        kind, body = self.next()
        if kind != _wire.STATUS:
            self.unexpected(kind, body)
        try:
            status = json.loads(body.decode("utf-8"))
        except ValueError as e:
            raise StatusError(
                f"{self.who} answered with garbage: {e}", self.pid
            ) from None
        if not isinstance(status, dict):
            raise StatusError(f"{self.who} answered with {status!r}", self.pid)
        return status
