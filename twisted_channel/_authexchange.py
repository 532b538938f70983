"""
The loopback TCP transport's challenge and response, without any I/O: the
host's side and the client's side, each fed the peer's frames and returning
the frame to send and, when it is over, whether the peer proved it knows
the secret.

The exchange, before the hello (see L{twisted_channel._auth})::

    host   → client   CHALLENGE  host nonce
    client → host     AUTH       client nonce + client proof
    host   → client   AUTH_OK    host proof

The host's link, the client's link and the blocking status query all run
these two classes; none of them checks a nonce or a proof itself.
"""

from __future__ import annotations

from collections import deque

from . import _wire
from ._auth import (
    NONCE_SIZE,
    PROOF_SIZE,
    clientProof,
    hostProof,
    newNonce,
    proofMatches,
)


class AuthenticationFailedError(Exception):
    """
    The peer did not prove that it knows the secret, or broke the exchange.
    The message says how, for the log line (and, on the host, the C{ERROR}
    frame) that closes the link.
    """


class AuthenticationRefusedError(Exception):
    """
    The host ended the exchange with an C{ERROR} frame; the message is the
    host's reason.
    """


class HostAuthExchange:
    """
    The host's side of the exchange: send L{challenge}, then feed the
    client's first frame to L{receive}.

    @ivar challenge: the C{CHALLENGE} frame, the first the host sends.
    """

    def __init__(self, secret: bytes, nonce: bytes | None = None) -> None:
        """
        @param secret: the term's secret, from the port file.
        @param nonce: the host's nonce; a fresh random one by default.
        """
        self._secret = secret
        self._nonce = newNonce() if nonce is None else nonce
        self.challenge = _wire.encodeFrame(_wire.CHALLENGE, self._nonce)

    def receive(self, kind: int, body: bytes) -> bytes:
        """
        Judge the client's answer to the challenge.

        @return: the C{AUTH_OK} frame that proves the host knows the secret,
            to send before anything else.
        @raise AuthenticationFailedError: if C{kind}/C{body} is not an C{AUTH}
            frame with a valid proof.
        """
        if kind != _wire.AUTH:
            raise AuthenticationFailedError(
                f"first frame is of kind {kind}, not an authentication"
            )
        if len(body) != NONCE_SIZE + PROOF_SIZE:
            raise AuthenticationFailedError(
                f"authentication is {len(body)} bytes long; it must be "
                f"{NONCE_SIZE + PROOF_SIZE}"
            )
        clientNonce, proof = body[:NONCE_SIZE], body[NONCE_SIZE:]
        if not proofMatches(clientProof(self._secret, self._nonce, clientNonce), proof):
            raise AuthenticationFailedError(
                "authentication failed: the peer does not know the secret"
            )
        return _wire.encodeFrame(
            _wire.AUTH_OK, hostProof(self._secret, clientNonce, self._nonce)
        )


class ClientAuthExchange:
    """
    The client's side of the exchange: feed each frame from the host to
    L{receive} until L{done}.

    @ivar done: whether the host proved it knows the secret; the client
        may say hello.
    """

    def __init__(self, secret: bytes, nonce: bytes | None = None) -> None:
        """
        @param secret: the secret from the port file read for this link.
        @param nonce: the client's nonce; a fresh random one by default.
        """
        self._secret = secret
        self._nonce = newNonce() if nonce is None else nonce
        self._hostNonce: bytes | None = None
        self.done = False

    def receive(self, kind: int, body: bytes) -> bytes:
        """
        Take the host's next frame.

        @return: what to send in answer: the C{AUTH} frame after the
            challenge, nothing after the host's proof (L{done} is then
            true).
        @raise AuthenticationRefusedError: if the host sent an C{ERROR} frame.
        @raise AuthenticationFailedError: if the host's proof is wrong, or the
            frame is not the one the exchange expects.
        """
        if kind == _wire.CHALLENGE and self._hostNonce is None:
            if len(body) != NONCE_SIZE:
                raise AuthenticationFailedError(f"challenge is {len(body)} bytes long")
            self._hostNonce = body
            return _wire.encodeFrame(
                _wire.AUTH,
                self._nonce + clientProof(self._secret, body, self._nonce),
            )
        if kind == _wire.AUTH_OK and self._hostNonce is not None and not self.done:
            expected = hostProof(self._secret, self._nonce, self._hostNonce)
            if not proofMatches(expected, body):
                raise AuthenticationFailedError(
                    "the host could not prove it knows the secret"
                )
            self.done = True
            return b""
        if kind == _wire.ERROR:
            raise AuthenticationRefusedError(body.decode("utf-8", "replace"))
        raise AuthenticationFailedError(
            f"unexpected frame of kind {kind} during authentication"
        )


class FailureLimit:
    """
    How many authentications failed lately, so that a host can refuse new
    links for a while when guessing is under way: after C{limit} failures
    within C{window} seconds, L{accepting} is false until the oldest of
    them is C{window} seconds old.  Times are given, not read: this class
    has no clock.
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._failures: deque[float] = deque()
        self._warned = float("-inf")

    def failed(self, now: float) -> None:
        """
        Count a failed authentication at C{now}.
        """
        self._failures.append(now)

    def recent(self, now: float) -> int:
        """
        How many authentications failed within the window before C{now}.
        """
        failures = self._failures
        while failures and failures[0] < now - self.window:
            failures.popleft()
        return len(failures)

    def accepting(self, now: float) -> bool:
        """
        Whether new links are served at C{now}.
        """
        return self.recent(now) < self.limit

    def warningDue(self, now: float) -> bool:
        """
        Whether to log, at C{now}, that links are refused: once a window.
        """
        if now - self._warned > self.window:
            self._warned = now
            return True
        return False
