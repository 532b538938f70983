"""
Publishing a host: binding its Unix socket under a temporary name and
renaming it into place, the socket a standby holds ready to publish the
moment it wins (L{StandbySocket}); over loopback TCP, the port, secret and
port file a standby holds ready likewise (L{StandbyPort}); the clean-up of
what dead processes left, the port that removes its socket only if it is
still the one it bound, and
L{Publication}, which checks once a second while it hosts that clients
can still find it (its socket file, or over loopback TCP its port file)
and publishes it again if not.

Every function here is called holding the lock (or, for what a standby
holds ready, under a name no one else uses): the file system is the only shared
state, and a host never removes a file it did not make.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from twisted.internet import tcp
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import _process
from ._auth import (
    LOOPBACK,
    PortFile,
    createPortFile,
    newSecret,
    proofMatches,
    readPortFile,
    removePortFile,
    writePortFile,
)
from ._directory import (
    MAX_SOCKET_PATH,
    ChannelPaths,
    UnsafeDirectoryError,
    checkReplaceableSocket,
    removeStaleSocket,
)
from ._sockets import LinkAcceptingPort, newUnixPort, startListeningOn
from ._temporary import (
    makerAlive,
    removedOnFailure,
    temporaryName,
    temporaryPrefix,
)

_log = Logger()

#: Seconds between a host's checks that its socket or port file is still
#: the one it published.
PUBLISH_CHECK_INTERVAL = 1.0


#: What a standby holds ready, and what it is once published.
_Ready = TypeVar("_Ready")
_Published = TypeVar("_Published")


class HostSocketPort(LinkAcceptingPort):
    """
    A Unix listening port that, when it closes, removes its socket file only
    if the file there is still the one it bound: a host never removes a
    socket it did not make, and does not fail if its own was deleted.

    @ivar socketPath: where its socket is published, kept here rather than
        read back from Twisted's port, whose name for it differs between
        versions.
    """

    _identity: tuple[int, int] | None = None
    _adopted: PublishedSocket | None = None

    def __init__(
        self,
        socketPath: bytes,
        factory: IProtocolFactory,
        backlog: int,
        mode: int,
        reactor: object,
    ) -> None:
        if not newUnixPort(self, socketPath, factory, backlog, mode, reactor):
            super().__init__(socketPath, factory, backlog, mode, reactor)
        self.socketPath = socketPath

    def adopt(self, published: PublishedSocket) -> None:
        """
        Listen on C{published}, already bound and published, rather than
        on a socket of its own, once started.
        """
        self._adopted = published

    def startListening(self) -> None:
        """
        Start accepting: on the socket adopted, if any, as it is (its mode
        given and listening already); where the Twisted in use cannot (the
        probe said so, once), the adopted socket is withdrawn and one bound
        in its place.
        """
        published, self._adopted = self._adopted, None
        if published is not None:
            if startListeningOn(self, published.listening):
                self._identity = published.identity
                return
            withdrawUnixSocket(published, os.fsdecode(self.socketPath))
        super().startListening()  # type: ignore[no-untyped-call]
        info = os.lstat(self.socketPath)
        self._identity = (info.st_dev, info.st_ino)

    def connectionLost(self, reason: Failure) -> None:
        if self._identity is not None:
            unlinkIfSame(self.socketPath, self._identity)
        # Not unix.Port's, which removes whatever file is at the path.
        tcp.Port.connectionLost(self, reason)


def unlinkIfSame(path: str | bytes, identity: tuple[int, int]) -> None:
    """
    Remove the file at C{path} if it is still the one with C{identity}
    (device, inode): a host never removes a socket it did not make.
    """
    try:
        info = os.lstat(path)
    except OSError:
        return
    if (info.st_dev, info.st_ino) == identity:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class PublishedSocket:
    """
    A listening Unix socket, and the device and inode of its file.
    """

    listening: socket.socket
    identity: tuple[int, int]


@dataclass(frozen=True)
class ReadySocket:
    """
    A listening Unix socket that a standby bound under a temporary name, to
    publish by a mere rename the moment it wins the lock.
    """

    listening: socket.socket
    temporary: str
    identity: tuple[int, int]


def removeLeftovers(
    path: str, remove: Callable[[str], None] = removeStaleSocket
) -> None:
    """
    Remove the temporary files that processes of this channel left behind
    when they died: hosts killed between bind (or write) and rename,
    standbys killed with their L{ReadySocket} or L{ReadyPort}.  Those of
    live standbys stay.  Called by the lock holder only, so no host is
    publishing meanwhile; not while it takes over, when every moment
    counts, but at each check of its published socket or port file.

    @param path: the published socket, or port file.
    @param remove: removes one leftover, if it is of the kind published
        at C{path} (L{removeStaleSocket}, L{removeStalePortFile}), and
        raises L{UnsafeDirectoryError} if not.
    """
    directory, _ = os.path.split(path)
    prefix = os.path.basename(temporaryPrefix(path))
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and not makerAlive(name, prefix):
            try:
                remove(os.path.join(directory, name))
            except (OSError, ValueError):
                pass


def removeStalePortFile(path: str) -> None:
    """
    Remove a port file a dead process left under a temporary name.

    @raise UnsafeDirectoryError: if something other than a regular file is
        there (a symbolic link, say): the channel does not remove what it
        did not make.
    """
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise UnsafeDirectoryError(
            f"{path!r} is not a regular file; refusing to remove it"
        )
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


#: A stream socket made not blocking (where the kernel can, as it is made:
#: one system call less).
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_NONBLOCKING_STREAM = socket.SOCK_STREAM | _SOCK_NONBLOCK


def listeningAt(name: str) -> tuple[socket.socket, tuple[int, int]]:
    """
    A Unix socket bound at C{name} and listening, mode 0600, not blocking;
    and the device and inode of its file.
    """
    listening = socket.socket(socket.AF_UNIX, _NONBLOCKING_STREAM)
    try:
        if not _SOCK_NONBLOCK:
            listening.setblocking(False)
        listening.bind(name)
        os.chmod(name, 0o600)
        listening.listen(128)
        info = os.lstat(name)
    except BaseException:
        listening.close()
        raise
    return listening, (info.st_dev, info.st_ino)


def readySocket(path: str) -> ReadySocket:
    """
    Bind and listen, under a temporary name, a socket to publish at C{path}
    by renaming it: what a standby holds ready, and how a host publishes.
    """
    temporary = temporaryName(path)
    with removedOnFailure(temporary):
        listening, identity = listeningAt(temporary)
    return ReadySocket(listening, temporary, identity)


def discardReadySocket(ready: ReadySocket) -> None:
    """
    Close a L{ReadySocket} that will not be published, and remove its
    file.
    """
    ready.listening.close()
    try:
        os.unlink(ready.temporary)
    except OSError:
        pass


def publishReadySocket(ready: ReadySocket, path: str) -> PublishedSocket | None:
    """
    Rename C{ready} into place at C{path}, if its file is still the one it
    bound; otherwise discard it and return None.  Called holding the lock.
    """
    try:
        info = os.lstat(ready.temporary)
        if (info.st_dev, info.st_ino) != ready.identity:
            raise FileNotFoundError(ready.temporary)
        os.rename(ready.temporary, path)
    except OSError:
        discardReadySocket(ready)
        return None
    return PublishedSocket(ready.listening, ready.identity)


def listeningUnixSocket(path: str, ready: ReadySocket | None = None) -> PublishedSocket:
    """
    A Unix socket listening at C{path}, published there only once it
    listens: it is bound under a temporary name and renamed into place, so
    a client never finds a socket that refuses it, and the rename tells
    watching clients that a host is ready.  The rename also replaces a
    stale socket a dead host left.  With C{ready}, a standby's socket bound
    beforehand, only the rename is left to do (if that fails, a new socket
    is bound as without it).

    Where that cannot be done (no inode left for the temporary name, or a
    name too long for a socket address), the dead host's socket is removed
    and the new one bound in its place directly.
    """
    try:
        checkReplaceableSocket(path)
    except BaseException:
        if ready is not None:
            discardReadySocket(ready)
        raise
    if ready is not None:
        published = publishReadySocket(ready, path)
        if published is not None:
            return published
    try:
        ready = readySocket(path)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG) and (
            len(os.fsencode(temporaryName(path))) <= MAX_SOCKET_PATH
        ):
            raise
        return listeningInPlace(path)
    try:
        os.rename(ready.temporary, path)
    except BaseException:
        discardReadySocket(ready)
        raise
    return PublishedSocket(ready.listening, ready.identity)


def listeningInPlace(path: str) -> PublishedSocket:
    """
    Free the dead host's inode (or its name) and bind at C{path} directly:
    where no temporary name can be had.  Called holding the lock.
    """
    removeStaleSocket(path)
    return PublishedSocket(*listeningAt(path))


def withdrawUnixSocket(published: PublishedSocket, path: str) -> None:
    """
    Close a socket made by L{listeningUnixSocket} and remove its file, if
    the file at C{path} is still that socket.
    """
    unlinkIfSame(path, published.identity)
    published.listening.close()


@dataclass(frozen=True)
class ReadyPort:
    """
    What a loopback TCP standby holds ready to publish the moment it wins
    the lock: a socket bound to an ephemeral loopback port and listening,
    the secret of its term to come, and the port file naming both, written
    under a temporary name, so that a rename publishes it.

    The port is reachable before it is published, as any loopback port is,
    but nobody is served there before the rename: no client knows the port
    before the file names it, and whoever connects anyway waits in the
    kernel's queue, unread, until this process hosts (and then must prove
    it knows the secret).
    """

    listening: socket.socket
    port: int
    secret: bytes
    temporary: str
    identity: tuple[int, int]


@dataclass(frozen=True)
class PublishedPort:
    """
    A loopback TCP socket listening, and the secret its port file names.
    """

    listening: socket.socket
    port: int
    secret: bytes


def listeningOnLoopback() -> socket.socket:
    """
    A TCP socket bound to an ephemeral loopback port and listening, not
    blocking.
    """
    listening = socket.socket(socket.AF_INET, _NONBLOCKING_STREAM)
    try:
        if not _SOCK_NONBLOCK:
            listening.setblocking(False)
        listening.bind((LOOPBACK, 0))
        listening.listen(128)
    except BaseException:
        listening.close()
        raise
    return listening


def readyPort(path: str) -> ReadyPort:
    """
    Bind and listen a loopback port, make a secret, and write the port file
    naming both under a temporary name, to publish at C{path} by renaming
    it: what a TCP standby holds ready, and how a TCP host publishes.
    """
    listening = listeningOnLoopback()
    try:
        port = listening.getsockname()[1]
        secret = newSecret()
        temporary = temporaryName(path)
        identity = createPortFile(temporary, PortFile(port, secret, _process.pid))
    except BaseException:
        listening.close()
        raise
    return ReadyPort(listening, port, secret, temporary, identity)


def discardReadyPort(ready: ReadyPort) -> None:
    """
    Close a L{ReadyPort} that will not be published, and remove its port
    file.
    """
    ready.listening.close()
    unlinkIfSame(ready.temporary, ready.identity)


def listeningTCPPort(path: str, ready: ReadyPort | None = None) -> PublishedPort:
    """
    A loopback port listening, published by the port file at C{path}
    (replacing the dead host's): C{ready}'s, renamed into place, if its
    file is still the one it wrote; otherwise a new one, made and renamed
    the same way.  Called holding the lock.
    """
    if ready is not None:
        try:
            info = os.lstat(ready.temporary)
            if (info.st_dev, info.st_ino) != ready.identity:
                raise FileNotFoundError(ready.temporary)
            os.rename(ready.temporary, path)
        except OSError:
            discardReadyPort(ready)
        else:
            return PublishedPort(ready.listening, ready.port, ready.secret)
    ready = readyPort(path)
    try:
        os.rename(ready.temporary, path)
    except BaseException:
        discardReadyPort(ready)
        raise
    return PublishedPort(ready.listening, ready.port, ready.secret)


def withdrawTCPPort(published: PublishedPort, path: str) -> None:
    """
    Remove the port file at C{path} if it still names C{published}, and
    close its socket.
    """
    removePortFile(path, published.secret)
    published.listening.close()


class _HeldReady(Generic[_Ready, _Published]):
    """
    What a standby holds ready to publish at C{path} the moment it wins the
    lock: the moment of the win is the one when the dead host's exit and
    its clients compete for the CPU, and a rename is all that is then left
    to do.  The reactor thread makes it and discards it; whichever thread
    wins the lock publishes it (hence its lock).

    @ivar ready: what is held ready, if anything.
    """

    def __init__(self, path: str) -> None:
        """
        @param path: where it is published.
        """
        self._path = path
        self.ready: _Ready | None = None
        self._lock = threading.Lock()

    def _make(self, path: str) -> _Ready:
        raise NotImplementedError()

    def _publish(self, path: str, ready: _Ready | None) -> _Published:
        raise NotImplementedError()

    def _withdraw(self, published: object, path: str) -> None:
        raise NotImplementedError()

    def _discard(self, ready: _Ready) -> None:
        raise NotImplementedError()

    def prepare(self) -> None:
        """
        Make it ready, unless it is held already; if that cannot be done,
        the winner makes it when it wins, as it would have anyway.
        """
        with self._lock:
            if self.ready is None:
                try:
                    self.ready = self._make(self._path)
                except OSError:
                    pass

    def publish(self) -> _Published:
        """
        Publish at the path what is held ready if it can be, else a new one.
        Called holding the lock; on the election thread the moment it is
        won, so that clients connect (and queue in the kernel) before the
        reactor thread even wakes.
        """
        with self._lock:
            ready, self.ready = self.ready, None
        return self._publish(self._path, ready)

    def withdraw(self, published: object) -> None:
        """
        Withdraw what L{publish} returned: the election's wait was cancelled
        after it, or the port stopped meanwhile.
        """
        self._withdraw(published, self._path)

    def discard(self) -> None:
        """
        Close what is held ready, if anything, and remove its file: the
        standby stops.
        """
        with self._lock:
            ready, self.ready = self.ready, None
        if ready is not None:
            self._discard(ready)


class StandbySocket(_HeldReady[ReadySocket, PublishedSocket]):
    """
    The socket a Unix standby holds ready: a L{ReadySocket}, bound and
    listening under a temporary name (L{readySocket}), published by
    L{listeningUnixSocket}.
    """

    def _make(self, path: str) -> ReadySocket:
        return readySocket(path)

    def _publish(self, path: str, ready: ReadySocket | None) -> PublishedSocket:
        return listeningUnixSocket(path, ready)

    def _withdraw(self, published: object, path: str) -> None:
        assert isinstance(published, PublishedSocket)
        withdrawUnixSocket(published, path)

    def _discard(self, ready: ReadySocket) -> None:
        discardReadySocket(ready)


class StandbyPort(_HeldReady[ReadyPort, PublishedPort]):
    """
    What a loopback TCP standby holds ready: a L{ReadyPort}, a port bound
    and listening, its secret and the port file naming both under a
    temporary name (L{readyPort}), published by L{listeningTCPPort}.
    """

    def _make(self, path: str) -> ReadyPort:
        return readyPort(path)

    def _publish(self, path: str, ready: ReadyPort | None) -> PublishedPort:
        return listeningTCPPort(path, ready)

    def _withdraw(self, published: object, path: str) -> None:
        assert isinstance(published, PublishedPort)
        withdrawTCPPort(published, path)

    def _discard(self, ready: ReadyPort) -> None:
        discardReadyPort(ready)


class Publication:
    """
    What one host published so that clients find it, for as long as it
    hosts: its listening port and, over loopback TCP, the port file with
    its secret.  Every L{PUBLISH_CHECK_INTERVAL} seconds it makes sure
    they are still there: a socket file or port file deleted or replaced
    under the host is published again (links already up never depended on
    the file), and the temporary sockets dead processes left are removed.

    @ivar listeningPort: the port the host accepts links on; a new one
        once the socket file was published again.
    @ivar secret: over loopback TCP, the secret in the port file; else
        C{None}.
    """

    def __init__(
        self,
        reactor: Any,
        name: str,
        paths: ChannelPaths,
        listeningPort: IListeningPort,
        secret: bytes | None,
    ) -> None:
        """
        @param reactor: the reactor the port listens with, whose clock
            times the checks.
        @param name: the channel's name, for the log.
        @param paths: the channel's files.
        """
        self._reactor = reactor
        self._name = name
        self._paths = paths
        self.listeningPort = listeningPort
        self.secret = secret
        # The next check, while checking.
        self._next: IDelayedCall | None = None

    def start(self) -> None:
        """
        Check every L{PUBLISH_CHECK_INTERVAL} seconds from now on.
        """
        if self._next is None:
            self._next = self._reactor.callLater(
                PUBLISH_CHECK_INTERVAL, self._checkThenWait
            )

    def stop(self) -> None:
        """
        Check no more: the host is withdrawing.
        """
        pending, self._next = self._next, None
        if pending is not None:
            pending.cancel()

    def _checkThenWait(self) -> None:
        self._next = None
        self.check()
        self.start()

    def check(self) -> None:
        """
        Publish again what was removed or replaced, and remove what dead
        processes left; a failure is logged and tried again at the next
        check.
        """
        try:
            if self.secret is not None:
                self._checkPortFile(self.secret)
                removeLeftovers(self._paths.port, removeStalePortFile)
            else:
                self._checkSocketFile()
                removeLeftovers(self._paths.socket)
        except Exception:
            _log.failure(
                "channel {channel}: could not publish the host again; "
                "trying again in {interval} s",
                channel=self._name,
                interval=PUBLISH_CHECK_INTERVAL,
            )

    def _checkSocketFile(self) -> None:
        oldPort = self.listeningPort
        assert isinstance(oldPort, HostSocketPort)
        path = self._paths.socket
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        if info is not None and (info.st_dev, info.st_ino) == oldPort._identity:
            return
        _log.warn(
            "channel {channel}: the socket {path} was removed or replaced under "
            "its host; publishing it again",
            channel=self._name,
            path=path,
        )
        published = listeningUnixSocket(path)
        newPort = HostSocketPort(
            os.fsencode(path),
            oldPort.factory,  # type: ignore[arg-type]
            backlog=128,
            mode=0o600,
            reactor=self._reactor,
        )
        newPort.adopt(published)
        newPort.startListening()
        self.listeningPort = newPort
        # The old port no longer owns the file, so closing it removes nothing.
        oldPort.stopListening()  # type: ignore[no-untyped-call]

    def _checkPortFile(self, secret: bytes) -> None:
        path = self._paths.port
        try:
            current = readPortFile(path)
        except (OSError, ValueError):
            current = None
        if current is not None and proofMatches(current.secret, secret):
            return
        _log.warn(
            "channel {channel}: the port file {path} was removed or replaced "
            "under its host; writing it again",
            channel=self._name,
            path=path,
        )
        port = self.listeningPort.getHost().port  # type: ignore[attr-defined]
        writePortFile(path, PortFile(port, secret, os.getpid()))
