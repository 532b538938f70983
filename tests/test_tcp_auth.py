"""
The loopback TCP transport's authentication, against real hosts and
hostile peers: a wrong secret, a replayed handshake, silence, a huge
handshake, a flood of failures, a stale port taken by an impostor, and the
port file's mode.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from twisted_channel import _wire
from twisted_channel._auth import (
    NONCE_SIZE,
    PortFile,
    clientProof,
    hostProof,
    writePortFile,
)
from twisted_channel.testing import ChannelProcesses, ChildProcess, readRecords

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def children(channelDirectory: str) -> Iterator[ChannelProcesses]:
    group = ChannelProcesses(channelDirectory, transport="tcp")
    try:
        yield group
    finally:
        group.reapAll()


def startHost(children: ChannelProcesses, name: str) -> tuple[ChildProcess, str]:
    record = os.path.join(children.directory, "record")
    host = children.candidate(name, record)
    host.waitFor(lambda line: line == "ROLE host")
    return host, record


def portFileOf(children: ChannelProcesses, name: str) -> dict[str, object]:
    with open(children.channelFile(name)) as f:
        content: dict[str, object] = json.load(f)
    return content


def connectRaw(children: ChannelProcesses, name: str) -> socket.socket:
    port = portFileOf(children, name)["port"]
    assert isinstance(port, int)
    return socket.create_connection(("127.0.0.1", port), timeout=15)


def readFrames(raw: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """
    Read until C{count} frames came or the host closed the connection.
    """
    decoder = _wire.FrameDecoder(1 << 20)
    frames: list[tuple[int, bytes]] = []
    while len(frames) < count:
        try:
            chunk = raw.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        frames.extend(decoder.feed(chunk))
    return frames


def readUntilClosed(raw: socket.socket) -> list[tuple[int, bytes]]:
    return readFrames(raw, 1 << 30)


def challenge(raw: socket.socket) -> bytes:
    [(kind, nonce)] = readFrames(raw, 1)
    assert kind == _wire.CHALLENGE
    assert len(nonce) == NONCE_SIZE
    return nonce


def errorReason(frames: list[tuple[int, bytes]]) -> str:
    assert frames and frames[-1][0] == _wire.ERROR, frames
    return frames[-1][1].decode()


def goodClientDelivers(
    children: ChannelProcesses, name: str, tag: str, record: str
) -> None:
    client = children.client(name, tag, 50)
    client.waitFor(lambda line: line.startswith("CLOSED"), 30)
    assert client.collect()[-1] == "CLOSED ConnectionDone 0"
    numbers = [r.number for r in readRecords(record) if r.tag == tag]
    assert numbers == list(range(1, 51))


def test_portFileIsPrivate(children: ChannelProcesses) -> None:
    """
    The port file is this user's, mode 0600, and names the port the host
    listens on; the listening port's address says the same.
    """
    startHost(children, "private")
    path = children.channelFile("private")
    info = os.lstat(path)
    assert stat.S_ISREG(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.getuid()
    content = portFileOf(children, "private")
    assert len(bytes.fromhex(str(content["secret"]))) >= 32
    with socket.create_connection(("127.0.0.1", int(str(content["port"]))), 5):
        pass


def test_otherUserCannotReadPortFile(children: ChannelProcesses) -> None:
    """
    Another user cannot read the secret: not through the directory (0700),
    and not through the file itself (0600) even with the directory opened.
    """
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    startHost(children, "secretive")
    path = children.channelFile("secretive")
    os.chmod(children.directory, 0o711)
    probe = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            os.path.realpath(sys.executable),
            "-c",
            f"open({path!r}).read()",
        ],
        capture_output=True,
        timeout=30,
    )
    if b"No such file or directory" in probe.stderr and b"python" in probe.stderr:
        pytest.skip("uid 65534 cannot run this interpreter")
    assert probe.returncode != 0
    assert b"PermissionError" in probe.stderr


def test_wrongSecretIsRefused(children: ChannelProcesses) -> None:
    """
    A peer that does not know the secret gets an ERROR, never reaches the
    application, and good clients go on.
    """
    host, record = startHost(children, "wrong")
    raw = connectRaw(children, "wrong")
    hostNonce = challenge(raw)
    clientNonce = os.urandom(NONCE_SIZE)
    raw.sendall(
        _wire.encodeFrame(
            _wire.AUTH,
            clientNonce + clientProof(b"not the secret" * 3, hostNonce, clientNonce),
        )
        + _wire.encodeHello(_wire.Hello(b"x" * 16, 1, 1000))
        + _wire.encodeFrame(_wire.DATA, b"intruder:1")
    )
    assert "authentication failed" in errorReason(readUntilClosed(raw))
    raw.close()
    goodClientDelivers(children, "wrong", "good", record)
    assert all(r.tag != "intruder" for r in readRecords(record))


def test_replayedHandshakeIsRefused(children: ChannelProcesses) -> None:
    """
    A handshake recorded from a genuine client is useless later: the host's
    nonce is new each time.
    """
    host, record = startHost(children, "replay")
    secret = bytes.fromhex(str(portFileOf(children, "replay")["secret"]))
    genuine = connectRaw(children, "replay")
    hostNonce = challenge(genuine)
    clientNonce = os.urandom(NONCE_SIZE)
    recorded = _wire.encodeFrame(
        _wire.AUTH, clientNonce + clientProof(secret, hostNonce, clientNonce)
    )
    genuine.sendall(recorded)
    [(kind, proof)] = readFrames(genuine, 1)
    assert kind == _wire.AUTH_OK
    assert proof == hostProof(secret, clientNonce, hostNonce)
    genuine.close()
    replayed = connectRaw(children, "replay")
    challenge(replayed)
    replayed.sendall(recorded)
    assert "authentication failed" in errorReason(readUntilClosed(replayed))
    replayed.close()
    goodClientDelivers(children, "replay", "good", record)


def test_hugeHandshakeIsRefused(children: ChannelProcesses) -> None:
    """
    A peer that announces a huge authentication frame is refused at once,
    before the host buffers it.
    """
    host, record = startHost(children, "huge")
    raw = connectRaw(children, "huge")
    challenge(raw)
    raw.sendall(_wire.frameHeader(_wire.AUTH, 10 * 1024 * 1024) + b"\0" * 1024)
    assert "over the limit of 4096" in errorReason(readUntilClosed(raw))
    raw.close()
    goodClientDelivers(children, "huge", "good", record)


def test_silentPeerIsDroppedAfterDeadline(children: ChannelProcesses) -> None:
    """
    A peer that connects and says nothing is served nothing and dropped
    after the handshake deadline (10 s); others are served meanwhile.
    """
    host, record = startHost(children, "silent")
    raw = connectRaw(children, "silent")
    challenge(raw)
    started = time.monotonic()
    goodClientDelivers(children, "silent", "good", record)
    frames = readUntilClosed(raw)
    waited = time.monotonic() - started
    assert "no hello within 10 seconds" in errorReason(frames)
    assert 8 < waited < 14
    raw.close()


def test_floodOfFailuresIsRateLimited(children: ChannelProcesses) -> None:
    """
    After 20 failed authentications in 10 s, new links are closed without a
    challenge for a while; links already up go on.
    """
    host, record = startHost(children, "flood")
    streaming = children.client(
        "flood", "s", 3000, "--slice", "10", "--interval", "0.005"
    )
    streaming.waitFor(lambda line: line.startswith("LINK"))
    failures = 0
    while failures < 20:
        try:
            raw = connectRaw(children, "flood")
        except OSError:
            continue
        try:
            challenge(raw)
            raw.sendall(_wire.encodeFrame(_wire.AUTH, b"\0" * 64))
            frames = readUntilClosed(raw)
        except OSError:
            # A reset under load is still a refusal, but not one the host
            # is sure to have counted: try again.
            continue
        finally:
            raw.close()
        assert "authentication failed" in errorReason(frames)
        failures += 1
    # Refused without a challenge: closed at once (or, under load, reset
    # before the connection is even complete).
    try:
        refused = connectRaw(children, "flood")
    except ConnectionResetError:
        pass
    else:
        try:
            assert readUntilClosed(refused) == []
        except ConnectionResetError:
            pass
        refused.close()
    streaming.waitFor(lambda line: line.startswith("CLOSED"), 60)
    assert streaming.collect()[-1] == "CLOSED ConnectionDone 0"
    numbers = [r.number for r in readRecords(record) if r.tag == "s"]
    assert numbers == list(range(1, 3001))


class Impostor:
    """
    A listener on a port named by a forged port file: it answers the
    challenge protocol without knowing the real secret.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.attempts = 0
        self.dataSeen = False
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while self.running:
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.attempts += 1
            connection.settimeout(2)
            try:
                connection.sendall(_wire.encodeFrame(_wire.CHALLENGE, b"n" * 32))
                frames = readFrames(connection, 1)
                if frames and frames[0][0] == _wire.AUTH:
                    connection.sendall(_wire.encodeFrame(_wire.AUTH_OK, b"p" * 32))
                for kind, _ in readUntilClosed(connection):
                    if kind in (_wire.HELLO, _wire.DATA):
                        self.dataSeen = True
            except OSError:
                pass
            finally:
                connection.close()

    def stop(self) -> None:
        self.running = False
        self.thread.join(5)
        self.listener.close()


def test_impostorOnStalePortIsNotTrusted(children: ChannelProcesses) -> None:
    """
    A port file that points at a process which does not know the secret (a
    stale port someone else took) gets no hello and no message; once a real
    host starts, everything the client wrote reaches it.
    """
    impostor = Impostor()
    try:
        writePortFile(
            children.channelFile("stale"), PortFile(impostor.port, os.urandom(32), 1)
        )
        client = children.client("stale", "c", 20)
        client.waitFor(lambda line: line == "SENT 20")
        deadline = time.monotonic() + 10
        while impostor.attempts < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert impostor.attempts >= 2, "the client should keep re-reading and retrying"
        assert not impostor.dataSeen
        host, record = startHost(children, "stale")
        client.waitFor(lambda line: line.startswith("CLOSED"), 30)
        assert client.collect()[-1] == "CLOSED ConnectionDone 0"
        assert [r.number for r in readRecords(record)] == list(range(1, 21))
        assert not impostor.dataSeen
    finally:
        impostor.stop()
