"""
An etcd v3 client for Twisted without threads, over etcd's HTTP/JSON
gateway (the C{/v3/...} paths every etcd 3.4+ member serves on its client
port) through C{treq}.

This module owns what the channel asks of etcd and nothing else: the
C{coordinator=} value (L{parseCoordinator}), the sans-IO decoder of the
gateway's answers (L{JSONLines}: one JSON object per line, with a limit on a
line's length), the checked decoding of those objects into L{KeyValue},
L{Lease}, L{TxnResult} and L{WatchEvent}, and L{EtcdClient}: lease grant,
keep-alive and revoke, the transactions of an election (create a key under
a lease if absent, replace it if our lease still holds it, delete it if it
is still ours), reads with their revisions, and a watch.  Every request has
a deadline; a member that refuses, times out, answers "unavailable" or
answers garbage is logged and the next member is tried, so one dead member
of three costs a request one connection attempt.  An answer that is not
what etcd sends (bad JSON, a missing or mistyped field, a line over the
limit) is refused with L{EtcdProtocolError}, never an exception from deep
inside.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionClosed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

_log = Logger()

T = TypeVar("T")

#: etcd's client port when C{coordinator=} names a host without one.
DEFAULT_PORT = 2379
#: The longest line (one JSON object) accepted from etcd, in bytes.  The
#: channel's own values are a few hundred bytes; etcd refuses requests over
#: 1.5 MiB by default, so nothing it could rightly send us is longer.
MAX_LINE_LENGTH = 2 * 1024 * 1024
#: Seconds one request may take, over every member tried, by default.
DEFAULT_REQUEST_TIMEOUT = 2.0

#: gRPC status codes (carried in the gateway's C{code}) that say "ask
#: another member": UNAVAILABLE (no leader, stopping) and DEADLINE_EXCEEDED.
_RETRY_ELSEWHERE = {4, 14}
#: How a request fails when the network or the peer lets it down.
_NETWORK_ERRORS = (
    ConnectError,
    ConnectingCancelledError,
    ConnectionClosed,
    # The TLS handshake failed while the request was being sent.
    RequestTransmissionFailed,
    ResponseFailed,
)
_JSON_HEADERS = Headers({b"Content-Type": [b"application/json"]})
#: gRPC NOT_FOUND: a lease that is already gone.
_NOT_FOUND = 5
#: gRPC UNAUTHENTICATED: etcd's "invalid auth token" (expired, or from a
#: member that restarted: etcd's default "simple" tokens live in one
#: member's memory).
_UNAUTHENTICATED = 16
#: gRPC INVALID_ARGUMENT: etcd also says so of a token made before the
#: users or roles last changed, and of a request with no token.
_INVALID_ARGUMENT = 3
_TOKEN_REFUSALS = ("auth store is old", "user name is empty", "invalid auth token")

_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]{1,5}))?")


class EtcdError(Exception):
    """
    etcd refused a request.

    @ivar code: the gRPC status code etcd answered with, or C{None}.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailableError(EtcdError):
    """
    No member of the cluster answered a request within its deadline.
    """


class EtcdProtocolError(EtcdError):
    """
    An answer that is not what etcd's JSON gateway sends.
    """


@dataclass(frozen=True)
class Coordinator:
    """
    The etcd cluster named by a C{coordinator=} value.

    @ivar secure: C{True} for C{etcds://} (etcd's client port over TLS).
    @ivar members: each member's host and port, in the order given.
    """

    secure: bool
    members: tuple[tuple[str, int], ...]

    @property
    def urls(self) -> list[str]:
        """
        The base URL of each member's gateway.
        """
        scheme = "https" if self.secure else "http"
        return [f"{scheme}://{host}:{port}" for host, port in self.members]

    def __str__(self) -> str:
        scheme = "etcds" if self.secure else "etcd"
        return f"{scheme}://" + ",".join(f"{h}:{p}" for h, p in self.members)


def parseCoordinator(text: str) -> Coordinator:
    """
    Parse C{etcd://HOST[:PORT][,HOST[:PORT]...]} (or C{etcds://} for etcd
    over TLS); a port left out is 2379, an IPv6 address goes in brackets.

    @raise ValueError: naming what is wrong.
    """
    if not isinstance(text, str):
        raise ValueError(f"coordinator= must be a string, not {text!r}")
    scheme, separator, rest = text.partition("://")
    if not separator or scheme not in ("etcd", "etcds"):
        raise ValueError(
            f"coordinator={text!r}: use etcd://HOST:PORT[,HOST:PORT...] "
            "(or etcds:// for etcd over TLS)"
        )
    members = []
    for part in rest.split(","):
        match = _HOST_PORT.fullmatch(part.strip())
        if match is None:
            raise ValueError(
                f"coordinator={text!r}: {part!r} is not HOST:PORT "
                "(an IPv6 address goes in brackets)"
            )
        host, port = match.group(1), int(match.group(2) or DEFAULT_PORT)
        if not 0 < port < 65536:
            raise ValueError(f"coordinator={text!r}: port {port} is out of range")
        if (host, port) in members:
            raise ValueError(f"coordinator={text!r}: {host}:{port} is named twice")
        members.append((host, port))
    return Coordinator(scheme == "etcds", tuple(members))


class JSONLines:
    """
    A sans-IO decoder of the gateway's answers: JSON objects, one a line
    (the streaming calls), or one object with no newline (the others).

    After it raised once, it raises again: what follows a bad line cannot
    be trusted to start a new object.

    @ivar maxLineLength: the longest line accepted, in bytes.
    """

    def __init__(self, maxLineLength: int = MAX_LINE_LENGTH) -> None:
        self.maxLineLength = maxLineLength
        self._buffer = bytearray()
        self._broken: EtcdProtocolError | None = None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """
        Take the next bytes of the answer.

        @return: the objects completed by these bytes, in order.
        @raise EtcdProtocolError: for a line that is not a JSON object, or
            longer than L{maxLineLength}.
        """
        if self._broken is not None:
            raise self._broken
        self._buffer += data
        objects = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if line.strip():
                objects.append(self._decode(line))
        if len(self._buffer) > self.maxLineLength:
            self._fail(
                f"a line longer than {self.maxLineLength} bytes "
                f"({len(self._buffer)} so far)"
            )
        return objects

    def end(self) -> list[dict[str, Any]]:
        """
        The answer ended: decode what is left (an object with no newline).

        @raise EtcdProtocolError: if that is not a JSON object.
        """
        if self._broken is not None:
            raise self._broken
        line, self._buffer = bytes(self._buffer), bytearray()
        return [self._decode(line)] if line.strip() else []

    def _decode(self, line: bytes) -> dict[str, Any]:
        if len(line) > self.maxLineLength:
            self._fail(f"a line longer than {self.maxLineLength} bytes ({len(line)})")
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as e:
            self._fail(f"a line that is not JSON ({e}): {line[:80]!r}")
        if not isinstance(value, dict):
            self._fail(f"a JSON {type(value).__name__} where an object belongs")
        result: dict[str, Any] = value
        return result

    def _fail(self, reason: str) -> Any:
        self._broken = EtcdProtocolError(f"etcd sent {reason}")
        raise self._broken


# Decoding etcd's objects.  The gateway writes 64-bit integers as strings,
# bytes as base64, and leaves out every field that has its zero value.


def _field(obj: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = obj.get(name, default)
    # bool is an int to isinstance: a flag must be a bool and nothing else
    # may be one.
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise EtcdProtocolError(
            f"etcd sent {name}={value!r}, not a {kind.__name__}: {str(obj)[:200]}"
        )
    return value


def _object(obj: dict[str, Any], name: str) -> dict[str, Any]:
    value: dict[str, Any] = _field(obj, name, dict, {})
    return value


def _integer(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise EtcdProtocolError(f"etcd sent {name}={value!r}, not an integer")
    try:
        number = int(value)
    except ValueError:
        raise EtcdProtocolError(f"etcd sent {name}={value!r}, not an integer") from None
    if not -(2**63) <= number < 2**64:
        raise EtcdProtocolError(f"etcd sent {name}={value!r}, out of 64-bit range")
    return number


def _bytes(obj: dict[str, Any], name: str) -> bytes:
    value = _field(obj, name, str, "")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EtcdProtocolError(
            f"etcd sent {name}={value[:80]!r}, not base64"
        ) from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class KeyValue(NamedTuple):
    """
    A key as etcd holds it.

    @ivar createRevision: the cluster's revision when the key was created.
    @ivar modRevision: the cluster's revision at its latest change.
    @ivar lease: the lease it is attached to, or 0.
    """

    key: bytes
    value: bytes
    createRevision: int
    modRevision: int
    version: int
    lease: int

    @classmethod
    def decode(cls, obj: dict[str, Any]) -> KeyValue:
        """
        @raise EtcdProtocolError: if C{obj} is not etcd's C{KeyValue}.
        """
        return cls(
            _bytes(obj, "key"),
            _bytes(obj, "value"),
            _integer(obj, "create_revision"),
            _integer(obj, "mod_revision"),
            _integer(obj, "version"),
            _integer(obj, "lease"),
        )


class Lease(NamedTuple):
    """
    A lease etcd granted: its id and its time to live in seconds.
    """

    id: int
    ttl: int


class TxnResult(NamedTuple):
    """
    The outcome of a conditional write.

    @ivar succeeded: whether the condition held and the write was made.
    @ivar revision: the cluster's revision after the transaction (the
        written key's C{modRevision} if it succeeded).
    @ivar current: when it did not succeed, the key as it is (C{None} if
        absent).
    """

    succeeded: bool
    revision: int
    current: KeyValue | None


class WatchEvent(NamedTuple):
    """
    A change to a watched key: C{kind} is C{"PUT"} or C{"DELETE"}.
    """

    kind: str
    kv: KeyValue


def _revision(answer: dict[str, Any]) -> int:
    revision = _integer(_object(answer, "header"), "revision")
    if revision <= 0:
        raise EtcdProtocolError(f"etcd sent no revision: {str(answer)[:200]}")
    return revision


def _prefixEnd(prefix: bytes) -> bytes:
    """
    The end of etcd's range of every key starting with C{prefix}: the
    prefix with its last byte below 0xff incremented (and what follows it
    dropped).
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _firstKey(rangeAnswer: dict[str, Any]) -> KeyValue | None:
    kvs = _field(rangeAnswer, "kvs", list, [])
    if not kvs:
        return None
    if not isinstance(kvs[0], dict):
        raise EtcdProtocolError(f"etcd sent kvs={kvs!r:.200}")
    return KeyValue.decode(kvs[0])


def _txnResult(answer: dict[str, Any]) -> TxnResult:
    succeeded: bool = _field(answer, "succeeded", bool, False)
    current = None
    if not succeeded:
        responses = _field(answer, "responses", list, [])
        for response in responses:
            if isinstance(response, dict) and "response_range" in response:
                current = _firstKey(_object(response, "response_range"))
    return TxnResult(succeeded, _revision(answer), current)


class _StreamReader(Protocol):
    """
    Reads an HTTP body through a L{JSONLines} decoder, handing each object to
    C{onObject}; C{finished} fires when the body ends (with the objects of a
    last line that had no newline), or fails on garbage, which also drops
    the connection.
    """

    def __init__(
        self, decoder: JSONLines, onObject: Callable[[dict[str, Any]], None]
    ) -> None:
        self._decoder = decoder
        self._onObject = onObject
        self.finished: Deferred[None] = Deferred(self._cancel)

    def _cancel(self, _: object) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        try:
            for obj in self._decoder.feed(data):
                self._onObject(obj)
        except Exception:
            failure = Failure()
            self._cancel(None)
            if not self.finished.called:
                self.finished.errback(failure)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self.finished.called:
            return
        if not reason.check(ResponseDone):
            self.finished.errback(reason)
            return
        try:
            for obj in self._decoder.end():
                self._onObject(obj)
        except Exception:
            self.finished.errback()
            return
        self.finished.callback(None)


class _TryElsewhereError(Exception):
    """
    This member could not answer; another may.
    """


class EtcdWatch:
    """
    A running watch on one key; L{EtcdClient.watch} makes it.

    @ivar done: fires with C{None} when the watch ends (cancelled, the
        stream closed, or etcd cancelled it) and fails if it could not start
        or etcd sent garbage.  Either way no more events come.
    """

    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()
        self._running: Deferred[Any] | None = None
        self._cancelled = False

    def cancel(self) -> None:
        """
        Stop watching; C{done} fires with C{None}.
        """
        self._cancelled = True
        if self._running is not None:
            self._running.cancel()


class EtcdClient:
    """
    A client of one etcd cluster through its members' JSON gateways.

    Requests go to the member that last answered; a member that fails is
    logged and the next is tried, all within the request's deadline.

    @param reactor: provides C{IReactorTime} and C{IReactorTCP} (and
        C{IReactorSSL} for C{etcds://}).
    @param coordinator: a L{Coordinator} or a C{coordinator=} value.
    @param timeout: seconds each request may take, over all members tried.
    @param maxLineLength: the longest line accepted from etcd, in bytes.
    @param contextFactory: the TLS policy for C{etcds://} members, such as
        an L{EtcdTLSPolicy} (default: Twisted's, verifying against the
        system's trust roots).
    @param user: an etcd user to authenticate as (etcd with
        C{auth enable}), with C{password}: every request carries the token
        etcd's C{/v3/auth/authenticate} gave; a token etcd refuses (expired,
        made before the users or roles changed, or by another member) is
        renewed by authenticating again, once, and the request retried.
        Neither the password nor the token is ever logged.
    @param password: C{user}'s password.
    """

    def __init__(
        self,
        reactor: Any,
        coordinator: Coordinator | str,
        *,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        maxLineLength: int = MAX_LINE_LENGTH,
        contextFactory: IPolicyForHTTPS | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        import treq.client

        if (user is None) != (password is None):
            raise ValueError("an etcd user needs a password, and a password a user")
        if isinstance(coordinator, str):
            coordinator = parseCoordinator(coordinator)
        if not timeout > 0:
            raise ValueError(f"timeout must be above 0 seconds, not {timeout!r}")
        self.coordinator = coordinator
        self.timeout = timeout
        self.maxLineLength = maxLineLength
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._urls = coordinator.urls
        self._current = 0
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.retryAutomatically = False
        agentArguments: dict[str, Any] = {"pool": self._pool}
        if contextFactory is not None:
            agentArguments["contextFactory"] = contextFactory
        self._http = treq.client.HTTPClient(Agent(reactor, **agentArguments))
        self._watches: set[EtcdWatch] = set()
        self._credentials = None if user is None else (user, password)
        #: The token etcd gave for C{user}, or C{None} before authenticating.
        self._token: str | None = None
        #: The members whose last request or watch failed: a member's failures
        #: are one warning until it answers again, not one per attempt (a
        #: candidate asks again and again while etcd is away).
        self._failing: set[str] = set()

    def __repr__(self) -> str:
        return f"<EtcdClient {self.coordinator}>"

    @property
    def currentMember(self) -> str:
        """
        The URL of the member requests go to first.
        """
        return self._urls[self._current]

    # Requests.

    def _call(
        self, path: str, body: dict[str, Any], decode: Callable[[dict[str, Any]], T]
    ) -> Deferred[T]:
        return Deferred.fromCoroutine(self._callAny(path, body, decode))

    async def _callAny(
        self, path: str, body: dict[str, Any], decode: Callable[[dict[str, Any]], T]
    ) -> T:
        deadline = self._clock.seconds() + self.timeout
        count = len(self._urls)
        problems = []
        for step in range(count):
            index = (self._current + step) % count
            remaining = deadline - self._clock.seconds()
            if remaining <= 0:
                break
            # Leave the members after this one some of the time, so that one
            # that swallows packets cannot use up the whole deadline.
            budget = remaining if step == count - 1 else remaining / (count - step)
            budget = max(budget, min(remaining, 0.25))
            url = self._urls[index]
            try:
                answer = await self._callOne(url, path, body, budget, decode)
            except _TryElsewhereError as e:
                problems.append(f"{url}: {e}")
                self._memberFailed(
                    url,
                    "etcd member {member} failed {path}: {problem}; "
                    "trying the next member",
                    path=path,
                    problem=str(e),
                )
                continue
            self._memberAnswered(url)
            self._current = index
            return answer
        self._current = (self._current + 1) % count
        raise EtcdUnavailableError(
            f"no etcd member answered {path} within {self.timeout} s: "
            + ("; ".join(problems) or "no time left")
        )

    def _memberFailed(self, url: str, format: str, **fields: Any) -> None:
        """
        Log that the member at C{url} failed: a warning if it answered
        last time, else a debug line.
        """
        log = _log.debug if url in self._failing else _log.warn
        self._failing.add(url)
        log(format, member=url, **fields)

    def _memberAnswered(self, url: str) -> None:
        """
        The member at C{url} answered: say so if it had failed.
        """
        if url in self._failing:
            self._failing.discard(url)
            _log.info("etcd member {member} answers again", member=url)

    async def _callOne(
        self,
        url: str,
        path: str,
        body: dict[str, Any],
        budget: float,
        decode: Callable[[dict[str, Any]], T],
    ) -> T:
        if self._credentials is None:
            return await self._callOnce(url, path, body, budget, decode)
        deadline = self._clock.seconds() + budget

        def left() -> float:
            return max(deadline - self._clock.seconds(), 0.001)

        if self._token is None:
            await self._authenticate(url, left())
        try:
            return await self._callOnce(url, path, body, left(), decode)
        except EtcdError as e:
            if not _tokenRefused(e):
                raise
            _log.info(
                "etcd member {member} refused the auth token for {path} "
                "({reason}); authenticating again",
                member=url,
                path=path,
                reason=str(e),
            )
        await self._authenticate(url, left())
        return await self._callOnce(url, path, body, left(), decode)

    async def _authenticate(self, url: str, budget: float) -> None:
        """
        Get a token for the client's user from the member at C{url}.

        @raise EtcdError: if etcd refuses the user or the password.
        """
        assert self._credentials is not None
        user, password = self._credentials
        self._token = None

        def token(answer: dict[str, Any]) -> str:
            value: str = _field(answer, "token", str, "")
            if not value:
                raise EtcdProtocolError("etcd gave no auth token")
            return value

        self._token = await self._callOnce(
            url,
            "/v3/auth/authenticate",
            {"name": user, "password": password},
            budget,
            token,
        )

    def _headers(self, path: str) -> Headers:
        if self._token is None or path == "/v3/auth/authenticate":
            return _JSON_HEADERS
        headers = _JSON_HEADERS.copy()
        headers.setRawHeaders(b"Authorization", [self._token.encode("ascii")])
        return headers

    async def _callOnce(
        self,
        url: str,
        path: str,
        body: dict[str, Any],
        budget: float,
        decode: Callable[[dict[str, Any]], T],
    ) -> T:
        objects: list[dict[str, Any]] = []
        attempt = Deferred.fromCoroutine(self._exchange(url, path, body, objects))
        late: list[bool] = []

        def tooLate() -> None:
            late.append(True)
            attempt.cancel()

        timer = self._clock.callLater(budget, tooLate)
        try:
            status = await attempt
        except (CancelledError, *_NETWORK_ERRORS) as e:
            # A request cancelled at its deadline fails in whatever way the
            # HTTP client was at (connecting, waiting, reading).
            if late:
                raise _TryElsewhereError(f"no answer within {budget:.2f} s") from None
            raise _TryElsewhereError(
                f"connection failed ({e.__class__.__name__})"
            ) from e
        except EtcdProtocolError as e:
            raise _TryElsewhereError(str(e)) from e
        finally:
            if timer.active():
                timer.cancel()
        if len(objects) != 1:
            raise _TryElsewhereError(f"{len(objects)} JSON objects where one belongs")
        [answer] = objects
        if status != 200 or "error" in answer:
            error = answer.get("error")
            if isinstance(error, dict):  # the streaming calls' shape
                answer = error
            try:
                code = _integer(answer, "code") or _integer(answer, "grpc_code")
            except EtcdProtocolError as e:
                raise _TryElsewhereError(str(e)) from e
            message = str(answer.get("message", answer.get("error", "")))[:500]
            if code in _RETRY_ELSEWHERE or status >= 500 and not code:
                raise _TryElsewhereError(f"unavailable (code {code}: {message})")
            raise EtcdError(f"etcd refused {path}: {message} (code {code})", code)
        # A member that answers garbage may be broken alone: the others are
        # asked too.  Each call here may be repeated without harm (a lease
        # granted twice expires unused; the writes are conditional).
        try:
            if "result" in answer:  # the streaming calls wrap their answers
                answer = _object(answer, "result")
            return decode(answer)
        except EtcdProtocolError as e:
            raise _TryElsewhereError(str(e)) from e

    async def _exchange(
        self,
        url: str,
        path: str,
        body: dict[str, Any],
        objects: list[dict[str, Any]],
        onObject: Callable[[dict[str, Any]], None] | None = None,
        started: Callable[[object], None] | None = None,
    ) -> int:
        response = await self._http.post(
            url + path,
            data=json.dumps(body).encode("ascii"),
            headers=self._headers(path),
            unbuffered=True,
        )
        reader = _StreamReader(
            JSONLines(self.maxLineLength),
            objects.append if onObject is None else onObject,
        )
        response.deliverBody(reader)
        if started is not None:
            started(reader.finished)
        await reader.finished
        return int(response.code)

    # Leases.

    def grantLease(self, ttl: int) -> Deferred[Lease]:
        """
        Ask for a lease of C{ttl} seconds.

        @return: a Deferred firing with the L{Lease} granted.
        """

        def granted(answer: dict[str, Any]) -> Lease:
            lease = Lease(_integer(answer, "ID"), _integer(answer, "TTL"))
            if lease.id == 0 or lease.ttl <= 0:
                raise EtcdProtocolError(f"etcd granted no lease: {str(answer)[:200]}")
            return lease

        return self._call("/v3/lease/grant", {"TTL": ttl}, granted)

    def keepAlive(self, leaseID: int) -> Deferred[int]:
        """
        Renew a lease once.

        @return: a Deferred firing with the lease's time to live in seconds
            from now, 0 if the lease is gone (expired or revoked).
        """

        def renewed(answer: dict[str, Any]) -> int:
            return max(_integer(answer, "TTL"), 0)

        return self._call("/v3/lease/keepalive", {"ID": str(leaseID)}, renewed)

    def revokeLease(self, leaseID: int) -> Deferred[None]:
        """
        Revoke a lease, deleting every key attached to it.  A lease already
        gone counts as revoked.
        """

        def notFound(failure: Failure) -> None:
            failure.trap(EtcdError)
            if getattr(failure.value, "code", None) == _NOT_FOUND:
                return None
            return failure  # type: ignore[return-value]

        return (
            self._call("/v3/lease/revoke", {"ID": str(leaseID)}, _revision)
            .addCallback(lambda _: None)
            .addErrback(notFound)
        )

    # Keys.

    def get(self, key: bytes) -> Deferred[tuple[KeyValue | None, int]]:
        """
        Read one key.

        @return: a Deferred firing with the key (C{None} if absent) and the
            cluster's revision at the read.
        """

        def read(answer: dict[str, Any]) -> tuple[KeyValue | None, int]:
            return _firstKey(answer), _revision(answer)

        return self._call("/v3/kv/range", {"key": _b64(key)}, read)

    def getPrefix(self, prefix: bytes) -> Deferred[tuple[list[KeyValue], int]]:
        """
        Read every key that starts with C{prefix} (not empty).

        @return: a Deferred firing with the keys, in etcd's order (by key),
            and the cluster's revision at the read.
        """
        if not prefix:
            raise ValueError("a prefix to read must not be empty")

        def read(answer: dict[str, Any]) -> tuple[list[KeyValue], int]:
            kvs = _field(answer, "kvs", list, [])
            if not all(isinstance(kv, dict) for kv in kvs):
                raise EtcdProtocolError(f"etcd sent kvs={kvs!r:.200}")
            return [KeyValue.decode(kv) for kv in kvs], _revision(answer)

        return self._call(
            "/v3/kv/range",
            {"key": _b64(prefix), "range_end": _b64(_prefixEnd(prefix))},
            read,
        )

    def put(self, key: bytes, value: bytes, lease: int) -> Deferred[int]:
        """
        Write C{value} to C{key}, attached to C{lease} (the key goes when
        the lease does).

        @return: a Deferred firing with the cluster's revision after it.
        """
        return self._call(
            "/v3/kv/put",
            {"key": _b64(key), "value": _b64(value), "lease": str(lease)},
            _revision,
        )

    def _txn(
        self, key: bytes, compare: dict[str, Any], success: dict[str, Any]
    ) -> Deferred[TxnResult]:
        return self._call(
            "/v3/kv/txn",
            {
                "compare": [dict(compare, key=_b64(key))],
                "success": [success],
                "failure": [{"request_range": {"key": _b64(key)}}],
            },
            _txnResult,
        )

    def createIfAbsent(
        self, key: bytes, value: bytes, lease: int
    ) -> Deferred[TxnResult]:
        """
        Create C{key} with C{value}, attached to C{lease}, if it does not
        exist: the campaign of an election.

        @return: a Deferred firing with the L{TxnResult}; if it succeeded,
            its C{revision} is the new key's creation revision.
        """
        return self._txn(
            key,
            {"target": "CREATE", "result": "EQUAL", "create_revision": "0"},
            {
                "request_put": {
                    "key": _b64(key),
                    "value": _b64(value),
                    "lease": str(lease),
                }
            },
        )

    def replaceIfLease(
        self, key: bytes, value: bytes, lease: int
    ) -> Deferred[TxnResult]:
        """
        Write C{value} to C{key} if the key exists attached to C{lease}:
        how the heir of a lease takes the key over with a new revision.
        """
        return self._txn(
            key,
            {"target": "LEASE", "result": "EQUAL", "lease": str(lease)},
            {
                "request_put": {
                    "key": _b64(key),
                    "value": _b64(value),
                    "lease": str(lease),
                }
            },
        )

    def deleteIfRevision(self, key: bytes, modRevision: int) -> Deferred[TxnResult]:
        """
        Delete C{key} if its latest change is still C{modRevision}: giving
        up an election without touching a successor's key.
        """
        return self._txn(
            key,
            {"target": "MOD", "result": "EQUAL", "mod_revision": str(modRevision)},
            {"request_delete_range": {"key": _b64(key)}},
        )

    # Watching.

    def watch(
        self,
        key: bytes,
        startRevision: int,
        onEvents: Callable[[list[WatchEvent], int], None],
    ) -> EtcdWatch:
        """
        Watch C{key} for changes from C{startRevision} on.

        @param onEvents: called with each batch of events and the revision
            etcd was at when it sent them.
        @return: an L{EtcdWatch}; it starts on the first member that takes
            it within the client's timeout, and runs until cancelled, until
            the stream ends, or until etcd cancels it (for example because
            C{startRevision} was compacted), when its C{done} fires.
        """
        watch = EtcdWatch()
        self._watches.add(watch)
        request = {
            "create_request": {"key": _b64(key), "start_revision": str(startRevision)}
        }

        def onObject(obj: dict[str, Any]) -> None:
            if "error" in obj:
                error = _object(obj, "error")
                raise EtcdError(
                    f"etcd ended the watch: {str(error.get('message'))[:300]}",
                    _integer(error, "grpc_code"),
                )
            result = _object(obj, "result")
            revision = _revision(result)
            events = []
            for raw in _field(result, "events", list, []):
                if not isinstance(raw, dict):
                    raise EtcdProtocolError(f"etcd sent an event {raw!r:.200}")
                kind = _field(raw, "type", str, "PUT")
                if kind not in ("PUT", "DELETE"):
                    raise EtcdProtocolError(f"etcd sent an event of type {kind!r}")
                events.append(WatchEvent(kind, KeyValue.decode(_object(raw, "kv"))))
            if events:
                onEvents(events, revision)
            if _field(result, "canceled", bool, False):
                raise _WatchCancelledError(
                    str(result.get("cancel_reason", ""))
                    or f"compacted at {_integer(result, 'compact_revision')}"
                )

        async def run() -> None:
            problems = []
            for step in range(len(self._urls)):
                if watch._cancelled:
                    return
                url = self._urls[(self._current + step) % len(self._urls)]
                try:
                    await self._watchAuthorized(watch, url, request, onObject)
                except _TryElsewhereError as e:
                    problems.append(f"{url}: {e}")
                    self._memberFailed(
                        url,
                        "etcd member {member} failed a watch: {problem}",
                        problem=str(e),
                    )
                    continue
                except CancelledError:
                    if watch._cancelled:
                        return
                    raise
                except _WatchCancelledError as e:
                    _log.info("etcd cancelled a watch: {reason}", reason=str(e))
                return
            raise EtcdUnavailableError(
                "no etcd member took the watch: " + "; ".join(problems)
            )

        def finished(result: object) -> object:
            self._watches.discard(watch)
            if isinstance(result, Failure):
                if result.check(EtcdProtocolError):
                    _log.failure("etcd sent garbage on a watch", result)
                watch.done.errback(result)
            else:
                watch.done.callback(None)
            return None

        Deferred.fromCoroutine(run()).addBoth(finished)
        return watch

    async def _watchAuthorized(
        self,
        watch: EtcdWatch,
        url: str,
        request: dict[str, Any],
        onObject: Callable[[dict[str, Any]], None],
    ) -> None:
        """
        L{_watchOn}, with the client's token if it has a user: etcd cancels
        a watch whose token it refuses ("permission denied", before any
        event), so that is renewed once and the watch started again.
        """
        if self._credentials is None:
            return await self._watchOn(watch, url, request, onObject)
        if self._token is None:
            await self._authenticate(url, self.timeout)
        try:
            return await self._watchOn(watch, url, request, onObject)
        except _WatchCancelledError as e:
            if watch._cancelled or "permission denied" not in str(e):
                raise
            _log.info(
                "etcd member {member} refused a watch ({reason}); authenticating again",
                member=url,
                reason=str(e),
            )
        await self._authenticate(url, self.timeout)
        return await self._watchOn(watch, url, request, onObject)

    async def _watchOn(
        self,
        watch: EtcdWatch,
        url: str,
        request: dict[str, Any],
        onObject: Callable[[dict[str, Any]], None],
    ) -> None:
        timers: list[Any] = []
        streaming = False

        def headArrived(finished: object) -> None:
            # Until the answer's head arrives the request's deadline applies;
            # the stream itself may then stay quiet for ever.
            nonlocal streaming
            streaming = True
            for timer in timers:
                if timer.active():
                    timer.cancel()

        exchange = Deferred.fromCoroutine(
            self._exchange(url, "/v3/watch", request, [], onObject, headArrived)
        )
        watch._running = exchange
        if not streaming and not exchange.called:
            timers.append(self._clock.callLater(self.timeout, exchange.cancel))
        try:
            await exchange
        except CancelledError:
            if watch._cancelled or streaming:
                raise
            raise _TryElsewhereError(f"no answer within {self.timeout} s") from None
        except _NETWORK_ERRORS as e:
            if watch._cancelled or streaming:
                # Events may have come: going on elsewhere from the start
                # revision would repeat them.  The watcher starts again from
                # the revision it reached.
                raise
            raise _TryElsewhereError(e.__class__.__name__) from e
        finally:
            headArrived(exchange)

    def close(self) -> Deferred[None]:
        """
        Cancel every watch and close the connections.

        @return: a Deferred that fires when they are closed.
        """
        for watch in list(self._watches):
            watch.cancel()
        return self._pool.closeCachedConnections()  # type: ignore[no-any-return]


@implementer(IPolicyForHTTPS)
class EtcdTLSPolicy:
    """
    How an L{EtcdClient} speaks TLS to C{etcds://} members: their
    certificates verified against C{authorities} (and the member's address
    or name), and, if given, a client certificate for etcd's
    C{--client-cert-auth}.

    @param authorities: C{twisted.internet.ssl.Certificate}s.
    @param clientCertificate: a C{twisted.internet.ssl.PrivateCertificate}
        or C{None}.
    """

    def __init__(self, authorities: list[Any], clientCertificate: Any = None) -> None:
        self.authorities = authorities
        self.clientCertificate = clientCertificate

    @classmethod
    def fromFiles(
        cls,
        caCerts: str,
        certKey: str | None = None,
        privateKey: str | None = None,
    ) -> EtcdTLSPolicy:
        """
        Load the authorities (and a client certificate) from PEM files, the
        endpoint's C{etcdCaCerts=}, C{etcdCertKey=} and C{etcdPrivateKey=}.

        @raise ValueError: naming the option and the file that is wrong.
        """
        from ._tls import loadAuthorities, loadCredentials

        if certKey is None:
            return cls(loadAuthorities(caCerts, "etcdCaCerts"))
        credentials = loadCredentials(certKey, privateKey, caCerts, prefix="etcd")
        return cls(credentials.authorities, credentials.certificate)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """
        TLS options for the member at C{hostname}: verified against the
        authorities, presenting the client certificate if there is one.
        """
        from twisted.internet.ssl import optionsForClientTLS, trustRootFromCertificates

        return optionsForClientTLS(
            hostname.decode("ascii"),
            trustRoot=trustRootFromCertificates(self.authorities),
            clientCertificate=self.clientCertificate,
        )


def _tokenRefused(error: EtcdError) -> bool:
    """
    Whether etcd refused a request for its auth token (renewed by
    authenticating again), not for what the request asked.
    """
    if error.code not in (_UNAUTHENTICATED, _INVALID_ARGUMENT):
        return False
    return error.code == _UNAUTHENTICATED or any(
        reason in str(error) for reason in _TOKEN_REFUSALS
    )


class _WatchCancelledError(Exception):
    """
    etcd cancelled a watch.
    """


__all__: Sequence[str] = [
    "Coordinator",
    "EtcdClient",
    "EtcdError",
    "EtcdProtocolError",
    "EtcdTLSPolicy",
    "EtcdUnavailableError",
    "EtcdWatch",
    "JSONLines",
    "KeyValue",
    "Lease",
    "TxnResult",
    "WatchEvent",
    "parseCoordinator",
]
