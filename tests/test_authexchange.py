"""
Pure tests of the loopback TCP challenge and response
(L{twisted_channel._authexchange}): no reactor, no transport, no socket.
"""

from __future__ import annotations

import pytest

from twisted_channel import _wire
from twisted_channel._auth import NONCE_SIZE, PROOF_SIZE, clientProof, hostProof
from twisted_channel._authexchange import (
    AuthenticationFailedError,
    AuthenticationRefusedError,
    ClientAuthExchange,
    FailureLimit,
    HostAuthExchange,
)

SECRET = b"s" * 32
HOST_NONCE = b"h" * NONCE_SIZE
CLIENT_NONCE = b"c" * NONCE_SIZE


def decodeOne(frame: bytes) -> tuple[int, bytes]:
    [decoded] = _wire.FrameDecoder(_wire.MAX_CONTROL_BODY).feed(frame)
    return decoded


def test_bothSidesAgree() -> None:
    """
    A host and a client that know the same secret finish the exchange:
    the client's answer satisfies the host, the host's proof the client.
    """
    host = HostAuthExchange(SECRET)
    client = ClientAuthExchange(SECRET)
    answer = client.receive(*decodeOne(host.challenge))
    assert not client.done
    proof = host.receive(*decodeOne(answer))
    assert client.receive(*decodeOne(proof)) == b""
    assert client.done


def test_framesAreTheDocumentedOnes() -> None:
    """
    With given nonces, the frames are exactly the challenge, the client's
    nonce and HMAC, and the host's HMAC.
    """
    host = HostAuthExchange(SECRET, HOST_NONCE)
    assert host.challenge == _wire.encodeFrame(_wire.CHALLENGE, HOST_NONCE)
    client = ClientAuthExchange(SECRET, CLIENT_NONCE)
    answer = client.receive(_wire.CHALLENGE, HOST_NONCE)
    assert answer == _wire.encodeFrame(
        _wire.AUTH, CLIENT_NONCE + clientProof(SECRET, HOST_NONCE, CLIENT_NONCE)
    )
    assert host.receive(*decodeOne(answer)) == _wire.encodeFrame(
        _wire.AUTH_OK, hostProof(SECRET, CLIENT_NONCE, HOST_NONCE)
    )


def test_hostRefusesAnotherFirstFrame() -> None:
    host = HostAuthExchange(SECRET)
    with pytest.raises(AuthenticationFailedError, match="not an authentication"):
        host.receive(_wire.HELLO, b"")


def test_hostRefusesAWrongLength() -> None:
    host = HostAuthExchange(SECRET)
    with pytest.raises(
        AuthenticationFailedError, match=f"it must be {NONCE_SIZE + PROOF_SIZE}"
    ):
        host.receive(_wire.AUTH, b"\0" * 10)


def test_hostRefusesAClientWithoutTheSecret() -> None:
    host = HostAuthExchange(SECRET, HOST_NONCE)
    impostor = ClientAuthExchange(b"x" * 32)
    answer = impostor.receive(_wire.CHALLENGE, HOST_NONCE)
    with pytest.raises(AuthenticationFailedError, match="does not know the secret"):
        host.receive(*decodeOne(answer))


def test_clientRefusesAHostWithoutTheSecret() -> None:
    client = ClientAuthExchange(SECRET)
    client.receive(_wire.CHALLENGE, HOST_NONCE)
    with pytest.raises(AuthenticationFailedError, match="could not prove"):
        client.receive(_wire.AUTH_OK, b"x" * PROOF_SIZE)
    assert not client.done


def test_clientRefusesAProofReplayedFromAnotherExchange() -> None:
    """
    The client's fresh nonce makes a host proof recorded from an earlier
    exchange useless.
    """
    host = HostAuthExchange(SECRET, HOST_NONCE)
    first = ClientAuthExchange(SECRET)
    recorded = host.receive(*decodeOne(first.receive(_wire.CHALLENGE, HOST_NONCE)))
    second = ClientAuthExchange(SECRET)
    second.receive(_wire.CHALLENGE, HOST_NONCE)
    with pytest.raises(AuthenticationFailedError):
        second.receive(*decodeOne(recorded))


def test_clientRefusesAShortChallenge() -> None:
    with pytest.raises(AuthenticationFailedError, match="challenge is 3 bytes"):
        ClientAuthExchange(SECRET).receive(_wire.CHALLENGE, b"abc")


@pytest.mark.parametrize(
    "frames",
    [
        [(_wire.AUTH_OK, b"x" * PROOF_SIZE)],
        [(_wire.WELCOME, b"")],
        [(_wire.CHALLENGE, HOST_NONCE), (_wire.CHALLENGE, HOST_NONCE)],
    ],
)
def test_clientRefusesFramesOutOfOrder(frames: list[tuple[int, bytes]]) -> None:
    client = ClientAuthExchange(SECRET)
    *before, (kind, body) = frames
    for frame in before:
        client.receive(*frame)
    with pytest.raises(AuthenticationFailedError, match=f"kind {kind} during"):
        client.receive(kind, body)


def test_clientReportsTheHostsRefusal() -> None:
    client = ClientAuthExchange(SECRET)
    with pytest.raises(AuthenticationRefusedError, match="too many failures"):
        client.receive(_wire.ERROR, b"too many failures")


def test_failureLimit() -> None:
    """
    Past the limit of failures within the window, links are refused until
    the oldest failure is a window old; the warning is due once a window.
    """
    limit = FailureLimit(3, 10.0)
    for now in (0.0, 1.0, 2.0):
        assert limit.accepting(now)
        limit.failed(now)
    assert not limit.accepting(2.0)
    assert limit.recent(2.0) == 3
    assert limit.warningDue(2.0)
    assert not limit.warningDue(5.0)
    assert not limit.accepting(9.9)
    assert limit.accepting(10.5)
    assert limit.recent(10.5) == 2
    for now in (11.0, 11.5):
        limit.failed(now)
    assert not limit.accepting(11.5)
    assert limit.warningDue(12.1)
