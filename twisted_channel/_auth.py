"""
What the loopback TCP transport adds: a port file that names the host's port
and a secret, and a challenge-response handshake that proves, both ways,
that each end knows the secret.

A loopback port is reachable by every user of the machine, unlike a socket
in a 0700 directory; the secret, readable only by this user, is what keeps
other users out.  Neither end ever sends the secret itself.

The handshake, before the hello::

    host   → client   CHALLENGE  host nonce (32 bytes)
    client → host     AUTH       client nonce (32 bytes) + HMAC(secret,
                                 "client" + host nonce + client nonce)
    host   → client   AUTH_OK    HMAC(secret, "host" + client nonce + host nonce)

Fresh nonces on both sides make a recorded handshake useless, and the
host's proof means a process that took over a stale port cannot pose as the
host.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass

from ._directory import UnsafeDirectoryError
from ._temporary import removedOnFailure, temporaryName

#: The address a TCP host listens on, and its clients connect to.
LOOPBACK = "127.0.0.1"

NONCE_SIZE = 32
SECRET_SIZE = 32
PROOF_SIZE = hashlib.sha256().digest_size


@dataclass(frozen=True)
class PortFile:
    """
    Where a TCP host listens, and the secret its clients must know.
    """

    port: int
    secret: bytes
    pid: int


def newSecret() -> bytes:
    """
    A fresh secret for one hosting term.
    """
    return secrets.token_bytes(SECRET_SIZE)


def newNonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def clientProof(secret: bytes, hostNonce: bytes, clientNonce: bytes) -> bytes:
    """
    What a client sends to prove it knows C{secret}.
    """
    return hmac.new(secret, b"client" + hostNonce + clientNonce, "sha256").digest()


def hostProof(secret: bytes, clientNonce: bytes, hostNonce: bytes) -> bytes:
    """
    What the host sends to prove it knows C{secret}.
    """
    return hmac.new(secret, b"host" + clientNonce + hostNonce, "sha256").digest()


def proofMatches(expected: bytes, received: bytes) -> bool:
    """
    Compare proofs in constant time.
    """
    return hmac.compare_digest(expected, received)


def createPortFile(temporary: str, portFile: PortFile) -> tuple[int, int]:
    """
    Write C{portFile} to a new file at C{temporary}, mode 0600, never
    following a link nor opening a file already there; to be renamed into
    place.

    @return: the device and inode of the file written, by which it is told
        from one put in its place.
    @raise OSError: if it cannot be made; nothing is left at C{temporary}
        then.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(temporary, flags, 0o600)
    with removedOnFailure(temporary):
        try:
            f = os.fdopen(descriptor, "w", encoding="ascii")
        except BaseException:
            # Not taken by a file object: it would leak.
            os.close(descriptor)
            raise
        with f:
            json.dump(
                {
                    "port": portFile.port,
                    "secret": portFile.secret.hex(),
                    "pid": portFile.pid,
                },
                f,
            )
            f.flush()
            info = os.fstat(f.fileno())
    return info.st_dev, info.st_ino


def writePortFile(path: str, portFile: PortFile) -> None:
    """
    Write C{portFile} to C{path} atomically, never readable by anyone else:
    a temporary file is created with mode 0600 (L{createPortFile}), filled,
    and renamed over C{path}.  Its temporary name names this process
    (L{temporaryName}), so that a host removes what a writer killed
    meanwhile left.

    Not synced to disk: the file describes a live process, so after a crash
    of the machine it is stale whatever it holds, and other processes see
    the whole file through the rename alone.  A sync would wait for the
    file system's journal on the takeover's path (from the lock's win to
    the clients' sight of the new host), 0.3 ms when the disk is idle but
    up to 24 ms measured under the load of a shared machine, while the
    clients of a killed host have only until the kernel closes its sockets
    to leave it on their own.
    """
    temporary = temporaryName(path)
    createPortFile(temporary, portFile)
    with removedOnFailure(temporary):
        os.replace(temporary, path)


def readPortFile(path: str) -> PortFile:
    """
    Read the port file a host wrote.

    @raise FileNotFoundError: if there is none (no host now).
    @raise UnsafeDirectoryError: if it is a link, not a regular file, or
        readable or writable by anyone else.
    @raise ValueError: if it is not a port file.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as e:
        if os.path.islink(path):
            raise UnsafeDirectoryError(
                f"port file {path!r} is a symbolic link; refusing to follow it"
            ) from e
        raise
    with os.fdopen(descriptor, "rb") as f:
        info = os.fstat(f.fileno())
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise UnsafeDirectoryError(
                f"port file {path!r} belongs to uid {info.st_uid} with mode "
                f"{info.st_mode & 0o777:04o}; it must be this user's, mode 0600"
            )
        raw = f.read(4096)
    try:
        content = json.loads(raw)
        port = int(content["port"])
        secret = bytes.fromhex(content["secret"])
        pid = int(content["pid"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"port file {path!r} is not a channel port file") from e
    if not 0 < port < 65536 or len(secret) < SECRET_SIZE:
        raise ValueError(f"port file {path!r} names no usable port and secret")
    return PortFile(port, secret, pid)


def removePortFile(path: str, secret: bytes) -> None:
    """
    Remove the port file at C{path} if it is the one holding C{secret}: a
    host never removes what its successor wrote.
    """
    try:
        current = readPortFile(path)
    except (OSError, ValueError):
        return
    if hmac.compare_digest(current.secret, secret):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
