"""
Channel names, the runtime directory, and the files a channel keeps there.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass

NAME_RULE = (
    "a channel name is 1 to 100 characters of A-Z, a-z, 0-9, '.', '_' and '-', "
    "and does not start with '.' or '-'"
)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")

#: The longest path a Unix socket address holds: sun_path is 108 bytes on
#: Linux and 104 on the BSDs, including the NUL.
MAX_SOCKET_PATH = 107 if os.uname().sysname == "Linux" else 103

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UncreatableDirectoryError(OSError):
    """
    The runtime directory is missing and cannot be created (a file where a
    directory should be, no permission, a read-only file system): an
    C{OSError} with the errno of the failure, and a message naming the
    directory and why.
    """

    def __str__(self) -> str:
        # The message alone, without OSError's "[Errno N]".
        return str(self.strerror)


class UnsafeDirectoryError(ValueError):
    """
    The runtime directory, or a file in it, could be changed by someone else
    or is not what the channel expects, so the channel refuses to use it.
    """


def checkName(name: str) -> str:
    """
    Return C{name} if it is a valid channel name.

    @raise ValueError: naming the rule broken.
    """
    if not isinstance(name, str):
        raise ValueError(f"channel name must be a string, not {type(name).__name__}")
    if not name:
        raise ValueError(f"channel name is empty: {NAME_RULE}")
    if len(name) > 100:
        raise ValueError(f"channel name is {len(name)} characters long: {NAME_RULE}")
    if _NAME.fullmatch(name) is None:
        bad = sorted({c for c in name if not re.fullmatch(r"[A-Za-z0-9._-]", c)})
        if bad:
            shown = ", ".join(repr(c) for c in bad)
            raise ValueError(f"channel name {name!r} contains {shown}: {NAME_RULE}")
        raise ValueError(f"channel name {name!r} starts with {name[0]!r}: {NAME_RULE}")
    return name


def defaultDirectory() -> str:
    """
    The runtime directory used when none is given: C{$XDG_RUNTIME_DIR/
    twisted-channel}, or else C{<tempdir>/twisted-channel-<uid>}.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "twisted-channel")
    return os.path.join(tempfile.gettempdir(), f"twisted-channel-{os.getuid()}")


@dataclass(frozen=True)
class ChannelPaths:
    """
    The files of one channel.

    @ivar directory: the runtime directory.
    @ivar socket: the Unix socket the host listens on.
    @ivar lock: the file whose lock makes a process the host.
    @ivar port: the file in which a host on the loopback TCP transport names
        its port and secret.
    """

    directory: str
    socket: str
    lock: str
    port: str


def channelPaths(name: str, directory: str | None) -> ChannelPaths:
    """
    Where the files of the channel C{name} live.

    Nothing is created or checked on disk here; see L{prepareDirectory}.

    @raise ValueError: if the socket path would be too long for a Unix
        socket address.
    """
    checkName(name)
    if directory is None:
        directory = defaultDirectory()
    if "\0" in directory:
        raise ValueError("channel directory contains a NUL character")
    if not directory:
        raise ValueError("channel directory is empty")
    directory = os.path.abspath(directory)
    socketPath = os.path.join(directory, name + ".sock")
    if len(os.fsencode(socketPath)) > MAX_SOCKET_PATH:
        # A long name still gets a socket: its start and a digest of the
        # whole, joined by '~', which no channel name contains.
        digest = hashlib.sha256(name.encode("ascii")).hexdigest()[:20]
        socketPath = os.path.join(directory, f"{name[:24]}~{digest}.sock")
        if len(os.fsencode(socketPath)) > MAX_SOCKET_PATH:
            raise ValueError(
                f"channel directory {directory!r} is too long: a socket in it "
                f"would have a path of {len(os.fsencode(socketPath))} bytes, and "
                f"a Unix socket path holds at most {MAX_SOCKET_PATH}"
            )
    return ChannelPaths(
        directory,
        socketPath,
        os.path.join(directory, name + ".lock"),
        os.path.join(directory, name + ".port"),
    )


def prepareDirectory(directory: str) -> None:
    """
    Create the runtime directory (mode 0700) if it is missing, and make sure
    nobody but this user can change what is in it.

    @raise UnsafeDirectoryError: if it is not a directory, belongs to another
        user, or is writable by group or others.
    @raise UncreatableDirectoryError: if it cannot be created.
    """
    try:
        # Usually there already: one lstat, and makedirs (a stat of the
        # parent, a mkdir that fails, a stat) only when it is missing.
        info = os.lstat(directory)
    except FileNotFoundError:
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except FileExistsError:
            pass
        except OSError as e:
            raise _uncreatable(directory, e) from None
        info = os.lstat(directory)
    except OSError as e:
        # Under a file, or a parent this user may not search.
        raise _uncreatable(directory, e) from None
    if stat.S_ISLNK(info.st_mode):
        # A link is followed only if what it points to passes the same checks.
        info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectoryError(
            f"channel directory {directory!r} is not a directory"
        )
    if info.st_uid != os.getuid():
        raise UnsafeDirectoryError(
            f"channel directory {directory!r} belongs to uid {info.st_uid}, "
            f"not to this process's uid {os.getuid()}"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectoryError(
            f"channel directory {directory!r} is writable by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); make it 0700"
        )


def _uncreatable(directory: str, e: OSError) -> UncreatableDirectoryError:
    """
    Why C{directory} cannot be created, in one line: C{e}'s reason.
    """
    reason = (e.strerror or str(e)).lower()
    return UncreatableDirectoryError(
        e.errno, f"channel directory {directory!r} cannot be created: {reason}"
    )


def checkReplaceableSocket(path: str) -> None:
    """
    Make sure that whatever is at the socket path may be replaced: nothing,
    or a socket (a dead host's).  Called only by the lock holder, so no live
    host's socket can be replaced.

    @raise UnsafeDirectoryError: if something other than a socket is there
        (a symbolic link, a regular file): the channel does not replace what
        it did not make.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise UnsafeDirectoryError(
            f"{path!r} exists and is not a socket; refusing to replace it"
        )


def removeStaleSocket(path: str) -> None:
    """
    Remove what a dead host left at the socket path.  Called only by the
    lock holder, so no live host's socket can be removed.

    @raise UnsafeDirectoryError: if something other than a socket is there
        (a symbolic link, a regular file): the channel does not remove what
        it did not make.
    """
    checkReplaceableSocket(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def openLockFile(path: str) -> tuple[int, os.stat_result | None]:
    """
    Open (creating it with mode 0600) the channel's lock file.

    @return: the open descriptor, and what C{fstat} says of the file; or
        L{None} for it if this call created the file, which is then known to
        be a new, empty regular file.
    @raise UnsafeDirectoryError: if the path is a symbolic link or not a
        regular file.
    """
    flags = os.O_RDWR | _NOFOLLOW | _CLOEXEC
    try:
        try:
            # A new channel's file (one the channel has never had) is made
            # here, and needs no fstat to tell what it is.
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600), None
        except FileExistsError:
            descriptor = os.open(path, flags | os.O_CREAT, 0o600)
    except IsADirectoryError as e:
        raise UnsafeDirectoryError(f"lock file {path!r} is a directory") from e
    except OSError as e:
        if os.path.islink(path):
            raise UnsafeDirectoryError(
                f"lock file {path!r} is a symbolic link; refusing to follow it"
            ) from e
        raise
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        raise UnsafeDirectoryError(f"lock file {path!r} is not a regular file")
    return descriptor, info
