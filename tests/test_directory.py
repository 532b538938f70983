"""
Unit tests for L{twisted_channel._directory}: names, paths, and the checks
on the runtime directory and the files in it.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from twisted_channel import UnsafeDirectoryError
from twisted_channel._directory import (
    UncreatableDirectoryError,
    channelPaths,
    checkName,
    defaultDirectory,
    openLockFile,
    prepareDirectory,
    removeStaleSocket,
)

asRoot = pytest.mark.skipif(os.getuid() != 0, reason="needs root to chown")


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# prepareDirectory


def test_unsafeDirectoryErrorIsValueError() -> None:
    """
    L{UnsafeDirectoryError} is a L{ValueError}.
    """
    assert issubclass(UnsafeDirectoryError, ValueError)


def test_prepareCreates(tmp_path: Path) -> None:
    """
    A missing directory is created with mode 0700, parents included.
    """
    target = tmp_path / "a" / "run"
    prepareDirectory(str(target))
    assert target.is_dir()
    assert mode(target) == 0o700
    assert target.stat().st_uid == os.getuid()


def test_prepareCreatesUnderRestrictiveUmask(tmp_path: Path) -> None:
    """
    The mode is 0700 whatever the umask lets through.
    """
    old = os.umask(0o077)
    try:
        prepareDirectory(str(tmp_path / "run"))
    finally:
        os.umask(old)
    assert mode(tmp_path / "run") == 0o700


def test_prepareAcceptsExisting(tmp_path: Path) -> None:
    """
    An existing directory of this user that only it can write is used as it
    is, and its mode is left alone.
    """
    for allowed in (0o700, 0o755, 0o711):
        target = tmp_path / f"d{allowed:o}"
        target.mkdir()
        os.chmod(target, allowed)
        prepareDirectory(str(target))
        assert mode(target) == allowed


@pytest.mark.parametrize("unsafe", [0o770, 0o720, 0o702, 0o777, 0o1777])
def test_prepareRefusesWritableByOthers(tmp_path: Path, unsafe: int) -> None:
    """
    A directory writable by group or others is refused, with its mode in the
    message.
    """
    target = tmp_path / "run"
    target.mkdir()
    os.chmod(target, unsafe)
    with pytest.raises(UnsafeDirectoryError) as caught:
        prepareDirectory(str(target))
    message = str(caught.value)
    assert "writable by group or others" in message
    assert f"{unsafe:04o}" in message
    assert "make it 0700" in message
    assert mode(target) == unsafe


def test_prepareRefusesFile(tmp_path: Path) -> None:
    """
    A regular file where the directory should be is refused.
    """
    target = tmp_path / "run"
    target.write_bytes(b"")
    with pytest.raises(UnsafeDirectoryError, match="is not a directory"):
        prepareDirectory(str(target))
    assert target.is_file()


def test_prepareFollowsSafeSymlink(tmp_path: Path) -> None:
    """
    A symbolic link to a safe directory is accepted.
    """
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    prepareDirectory(str(link))


def test_prepareRefusesSymlinkToUnsafe(tmp_path: Path) -> None:
    """
    A symbolic link is judged by what it points to.
    """
    real = tmp_path / "real"
    real.mkdir()
    os.chmod(real, 0o777)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UnsafeDirectoryError, match="writable by group or others"):
        prepareDirectory(str(link))
    target = tmp_path / "file"
    target.write_bytes(b"")
    fileLink = tmp_path / "fileLink"
    fileLink.symlink_to(target)
    with pytest.raises(UnsafeDirectoryError, match="is not a directory"):
        prepareDirectory(str(fileLink))


@asRoot
def test_prepareRefusesOtherOwner(tmp_path: Path) -> None:
    """
    A directory belonging to another user is refused, naming both uids.
    """
    target = tmp_path / "run"
    target.mkdir(mode=0o700)
    os.chown(target, 65534, 65534)
    with pytest.raises(UnsafeDirectoryError) as caught:
        prepareDirectory(str(target))
    assert f"belongs to uid 65534, not to this process's uid {os.getuid()}" in str(
        caught.value
    )


def test_prepareCannotCreate(tmp_path: Path) -> None:
    """
    When a parent is a file the directory cannot be created, and an
    L{OSError} says so.
    """
    parent = tmp_path / "file"
    parent.write_bytes(b"")
    wanted = str(parent / "run")
    with pytest.raises(UncreatableDirectoryError) as raised:
        prepareDirectory(wanted)
    assert isinstance(raised.value, OSError)
    assert raised.value.errno == errno.ENOTDIR
    assert str(raised.value) == (
        f"channel directory {wanted!r} cannot be created: not a directory"
    )


# removeStaleSocket


def test_removeMissingSocket(channelDirectory: str) -> None:
    """
    Nothing at the socket path is fine.
    """
    removeStaleSocket(os.path.join(channelDirectory, "none.sock"))


def test_removeStaleSocket(channelDirectory: str) -> None:
    """
    A socket left by a dead host is removed.
    """
    path = os.path.join(channelDirectory, "jobs.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path)
    finally:
        s.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    removeStaleSocket(path)
    assert not os.path.lexists(path)


def test_removeStaleSocketRefusesFile(channelDirectory: str) -> None:
    """
    A regular file at the socket path is refused and left in place.
    """
    path = os.path.join(channelDirectory, "jobs.sock")
    with open(path, "wb") as f:
        f.write(b"precious")
    with pytest.raises(UnsafeDirectoryError, match="exists and is not a socket"):
        removeStaleSocket(path)
    with open(path, "rb") as f:
        assert f.read() == b"precious"


def test_removeStaleSocketRefusesSymlink(channelDirectory: str) -> None:
    """
    A symbolic link at the socket path is refused, even to a socket, and
    neither it nor its target is removed.
    """
    target = os.path.join(channelDirectory, "real.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(target)
    finally:
        s.close()
    path = os.path.join(channelDirectory, "jobs.sock")
    os.symlink(target, path)
    with pytest.raises(UnsafeDirectoryError, match="not a socket; refusing"):
        removeStaleSocket(path)
    assert os.path.islink(path)
    assert stat.S_ISSOCK(os.lstat(target).st_mode)


def test_removeStaleSocketRefusesDirectory(channelDirectory: str) -> None:
    """
    A directory at the socket path is refused.
    """
    path = os.path.join(channelDirectory, "jobs.sock")
    os.mkdir(path)
    with pytest.raises(UnsafeDirectoryError):
        removeStaleSocket(path)
    assert os.path.isdir(path)


# openLockFile


def test_openLockFileCreates(tmp_path: Path) -> None:
    """
    The lock file is created with mode 0600 and opened for reading and
    writing.
    """
    path = tmp_path / "jobs.lock"
    descriptor, info = openLockFile(str(path))
    try:
        # Made here: a new empty regular file, which needs no look.
        assert info is None
        assert mode(path) == 0o600
        assert os.write(descriptor, b"x") == 1
        assert stat.S_ISREG(os.fstat(descriptor).st_mode)
    finally:
        os.close(descriptor)


def test_openLockFileExisting(tmp_path: Path) -> None:
    """
    An existing lock file is opened, not truncated.
    """
    path = tmp_path / "jobs.lock"
    path.write_bytes(b"keep")
    descriptor, info = openLockFile(str(path))
    try:
        assert info is not None and info.st_size == 4
        assert os.read(descriptor, 10) == b"keep"
    finally:
        os.close(descriptor)


def test_openLockFileRefusesSymlink(tmp_path: Path) -> None:
    """
    A symbolic link at the lock path is not followed, whether or not its
    target exists.
    """
    target = tmp_path / "target"
    target.write_bytes(b"other")
    path = tmp_path / "jobs.lock"
    path.symlink_to(target)
    with pytest.raises(UnsafeDirectoryError, match="is a symbolic link"):
        openLockFile(str(path))
    assert target.read_bytes() == b"other"

    dangling = tmp_path / "dangling.lock"
    missing = tmp_path / "missing"
    dangling.symlink_to(missing)
    with pytest.raises(UnsafeDirectoryError, match="refusing to follow it"):
        openLockFile(str(dangling))
    assert not missing.exists()


def test_openLockFileRefusesFifo(tmp_path: Path) -> None:
    """
    Something that opens but is not a regular file is refused.
    """
    path = tmp_path / "jobs.lock"
    os.mkfifo(path)
    with pytest.raises(UnsafeDirectoryError, match="is not a regular file"):
        openLockFile(str(path))


def test_openLockFileRefusesDirectory(tmp_path: Path) -> None:
    """
    A directory at the lock path is not a regular file.
    """
    path = tmp_path / "jobs.lock"
    path.mkdir()
    with pytest.raises(UnsafeDirectoryError):
        openLockFile(str(path))


# Names and paths


@pytest.mark.parametrize("name", ["a", "_", "0", "A.b-c_9", "jobs..x", "x" * 100])
def test_goodNames(name: str) -> None:
    assert checkName(name) == name


@pytest.mark.parametrize(
    "name, message",
    [
        ("", "is empty"),
        ("x" * 101, "101 characters"),
        (".x", "starts with '.'"),
        ("-x", "starts with '-'"),
        ("a/b", "contains '/'"),
        ("a\nb", "contains '\\\\n'"),
        ("jobs\n", "contains '\\\\n'"),
        ("a~b", "contains '~'"),
        ("ａ", "contains"),
    ],
)
def test_badNames(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        checkName(name)


def test_defaultDirectory(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The default directory is under C{$XDG_RUNTIME_DIR}, else in the temporary
    directory with the uid in its name.
    """
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/5")
    assert defaultDirectory() == "/run/user/5/twisted-channel"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert defaultDirectory().endswith(f"twisted-channel-{os.getuid()}")


def test_channelPaths() -> None:
    paths = channelPaths("jobs", "/tmp/x")
    assert paths.directory == "/tmp/x"
    assert paths.socket == "/tmp/x/jobs.sock"
    assert paths.lock == "/tmp/x/jobs.lock"


def test_channelPathsRefuseBadDirectories() -> None:
    with pytest.raises(ValueError, match="NUL"):
        channelPaths("jobs", "/tmp/\0x")
    with pytest.raises(ValueError, match="empty"):
        channelPaths("jobs", "")
    with pytest.raises(ValueError, match="too long"):
        channelPaths("jobs", "/" + "d" * 200)
