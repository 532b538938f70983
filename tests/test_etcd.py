"""
The etcd client against a real etcd (tests/etcd.py starts it): leases, the
election's transactions, reads and watches; failover past members that
refuse, stay silent, answer garbage or die; garbage refused and logged,
never a crash.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from twisted_channel._etcd import (
    EtcdClient,
    EtcdError,
    EtcdProtocolError,
    EtcdUnavailableError,
    WatchEvent,
)

from .etcd import EtcdCluster

pytestmark = pytest.mark.timeout(60)


def _closedPort() -> int:
    """
    A loopback port nobody listens on: connecting is refused at once.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


async def _closing(client: EtcdClient) -> None:
    from twisted.internet import reactor

    await client.close()
    # Let the closed connections' last events run before the next test.
    done: Deferred[None] = Deferred()
    reactor.callLater(0, done.callback, None)  # type: ignore[attr-defined]
    await done


def _client(coordinator: str, **kwargs: Any) -> EtcdClient:
    from twisted.internet import reactor

    return EtcdClient(reactor, coordinator, **kwargs)


@pytest_twisted.ensureDeferred
async def test_leases(etcdServer: EtcdCluster) -> None:
    """
    A lease is granted with its TTL, renewed while it lives, and reported
    gone (0) once revoked; revoking it again is no error.
    """
    client = _client(etcdServer.coordinator)
    try:
        lease = await client.grantLease(5)
        assert lease.id > 0 and lease.ttl == 5
        assert 0 < await client.keepAlive(lease.id) <= 5
        await client.revokeLease(lease.id)
        assert await client.keepAlive(lease.id) == 0
        await client.revokeLease(lease.id)
    finally:
        await _closing(client)


@pytest_twisted.ensureDeferred
async def test_electionTransactions(etcdServer: EtcdCluster) -> None:
    """
    The first lease creates the key and its revision is the term; a second
    finds it taken and sees who holds it; only the holder's lease can
    rewrite it (with a higher revision); only its latest revision deletes
    it.
    """
    client = _client(etcdServer.coordinator)
    key = b"/test/transactions/host"
    try:
        first = await client.grantLease(10)
        second = await client.grantLease(10)
        won = await client.createIfAbsent(key, b"first", first.id)
        assert won.succeeded and won.current is None
        lost = await client.createIfAbsent(key, b"second", second.id)
        assert not lost.succeeded and lost.current is not None
        assert lost.current.value == b"first" and lost.current.lease == first.id
        assert lost.current.createRevision == won.revision
        refused = await client.replaceIfLease(key, b"usurper", second.id)
        assert not refused.succeeded
        assert refused.current is not None and refused.current.value == b"first"
        heir = await client.replaceIfLease(key, b"heir", first.id)
        assert heir.succeeded and heir.revision > won.revision
        current, revision = await client.get(key)
        assert current is not None and current.value == b"heir"
        assert current.modRevision == heir.revision and revision >= heir.revision
        stale = await client.deleteIfRevision(key, won.revision)
        assert not stale.succeeded
        assert (await client.deleteIfRevision(key, heir.revision)).succeeded
        assert (await client.get(key))[0] is None
        # A revoked lease takes its key with it.
        again = await client.createIfAbsent(key, b"second", second.id)
        assert again.succeeded and again.revision > heir.revision
        await client.revokeLease(second.id)
        assert (await client.get(key))[0] is None
        await client.revokeLease(first.id)
    finally:
        await _closing(client)


@pytest_twisted.ensureDeferred
async def test_putUnderLeaseAndReadPrefix(etcdServer: EtcdCluster) -> None:
    """
    A key put under a lease is read with its prefix (and only keys with
    that prefix, in key order), and goes when the lease is revoked.
    """
    client = _client(etcdServer.coordinator)
    try:
        lease = await client.grantLease(10)
        revision = await client.put(b"/p/cands/b", b"2", lease.id)
        await client.put(b"/p/cands/a", b"1", lease.id)
        await client.put(b"/p/candsX", b"x", lease.id)
        await client.put(b"/p/cand", b"y", lease.id)
        found, at = await client.getPrefix(b"/p/cands/")
        assert [(kv.key, kv.value) for kv in found] == [
            (b"/p/cands/a", b"1"),
            (b"/p/cands/b", b"2"),
        ]
        assert found[1].modRevision == revision and at > revision
        assert {kv.lease for kv in found} == {lease.id}
        await client.revokeLease(lease.id)
        assert (await client.getPrefix(b"/p/"))[0] == []
        with pytest.raises(ValueError, match="must not be empty"):
            client.getPrefix(b"")
    finally:
        await _closing(client)


@pytest_twisted.ensureDeferred
async def test_refusedRequest(etcdServer: EtcdCluster) -> None:
    """
    A request etcd refuses (an empty key) fails with EtcdError and its
    code; it is not retried elsewhere.
    """
    client = _client(etcdServer.coordinator)
    try:
        with pytest.raises(EtcdError, match="key is not provided") as caught:
            await client.get(b"")
        assert caught.value.code == 3
        assert not isinstance(caught.value, EtcdUnavailableError)
    finally:
        await _closing(client)


@pytest_twisted.ensureDeferred
async def test_watch(etcdServer: EtcdCluster) -> None:
    """
    A watch reports each change to its key, from the revision asked, until
    it is cancelled.
    """
    from twisted.internet import reactor

    client = _client(etcdServer.coordinator)
    key = b"/test/watch/host"
    seen: list[tuple[str, bytes, int]] = []
    arrived: list[Deferred[None]] = [Deferred(), Deferred()]

    def onEvents(events: list[WatchEvent], revision: int) -> None:
        for event in events:
            seen.append((event.kind, event.kv.value, event.kv.modRevision))
            arrived[len(seen) - 1].callback(None)

    try:
        lease = await client.grantLease(10)
        _, revision = await client.get(key)
        watch = client.watch(key, revision + 1, onEvents)
        created = await client.createIfAbsent(key, b"value", lease.id)
        await arrived[0].addTimeout(10, reactor)
        await client.revokeLease(lease.id)
        await arrived[1].addTimeout(10, reactor)
        assert seen[0] == ("PUT", b"value", created.revision)
        assert seen[1][0] == "DELETE" and seen[1][2] > created.revision
        watch.cancel()
        await watch.done.addTimeout(5, reactor)
    finally:
        await _closing(client)


@pytest_twisted.ensureDeferred
async def test_refusingMemberSkipped(etcdServer: EtcdCluster) -> None:
    """
    A member that refuses connections is logged and skipped; the next
    answers, and later requests go to it first.
    """
    [member] = etcdServer.members
    client = _client(f"etcd://127.0.0.1:{_closedPort()},{member.address}")
    try:
        lease = await client.grantLease(5)
        assert lease.ttl == 5
        assert client.currentMember == member.clientURL
        await client.revokeLease(lease.id)
    finally:
        await _closing(client)


class _Listener:
    """
    A loopback TCP server run by the test: silent, or answering every
    request with one fixed HTTP answer (garbage, for etcd).
    """

    def __init__(self, answer: Callable[[bytes], bytes] | None) -> None:
        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol

        respond = answer

        class Answering(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if respond is not None and b"\r\n\r\n" in data:
                    self.transport.write(respond(data))  # type: ignore[union-attr]
                    self.transport.loseConnection()  # type: ignore[union-attr]

        self.port = reactor.listenTCP(  # type: ignore[attr-defined]
            0, Factory.forProtocol(Answering), interface="127.0.0.1"
        )
        self.address = f"127.0.0.1:{self.port.getHost().port}"

    async def stop(self) -> None:
        await self.port.stopListening()


def _http(body: bytes, status: bytes = b"200 OK") -> Callable[[bytes], bytes]:
    return lambda request: (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


GARBAGE = [
    pytest.param(_http(b"{this is not json"), "not JSON", id="bad-json"),
    pytest.param(_http(b"[1, 2, 3]"), "list where an object", id="not-object"),
    pytest.param(_http(b'{"ID": "x", "TTL": "5"}'), "not an integer", id="bad-field"),
    pytest.param(_http(b'{"header": {}}'), "granted no lease", id="missing-fields"),
    pytest.param(
        _http(b'{"a": "' + b"x" * 3_000_000 + b'"}'), "longer than", id="huge-line"
    ),
    pytest.param(_http(b"{}\n{}\n"), "2 JSON objects", id="two-objects"),
    pytest.param(
        _http(b'{"code": 14, "message": "no leader"}', b"503 Service Unavailable"),
        "unavailable",
        id="unavailable",
    ),
    pytest.param(
        lambda request: b"SSH-2.0-OpenSSH\r\n\r\n", "connection failed", id="not-http"
    ),
]


@pytest.mark.parametrize("answer, complaint", GARBAGE)
@pytest_twisted.ensureDeferred
async def test_garbageMemberSkipped(
    etcdServer: EtcdCluster, answer: Callable[[bytes], bytes], complaint: str
) -> None:
    """
    A "member" that answers garbage is refused and logged, and the next
    member answers; with no other member, the request fails with
    EtcdUnavailableError naming the garbage, and nothing else breaks.
    """
    from twisted.logger import globalLogPublisher

    [member] = etcdServer.members
    hostile = _Listener(answer)
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    client = _client(f"etcd://{hostile.address},{member.address}")
    alone = _client(f"etcd://{hostile.address}")
    try:
        lease = await client.grantLease(5)
        assert lease.ttl == 5
        assert client.currentMember == member.clientURL
        with pytest.raises(EtcdUnavailableError, match=complaint):
            await alone.grantLease(5)
        await client.revokeLease(lease.id)
    finally:
        globalLogPublisher.removeObserver(logged.append)
        await _closing(client)
        await _closing(alone)
        await hostile.stop()
    warnings = [e for e in logged if e.get("member") == f"http://{hostile.address}"]
    assert warnings and complaint in warnings[0]["problem"]


@pytest_twisted.ensureDeferred
async def test_failingMemberWarnedOncePerOutage() -> None:
    """
    A member that keeps failing is one warning, then debug lines for as
    long as it fails (a candidate asks again and again while etcd is away:
    that was a warning at every attempt, two a second); once it answers
    again an info line says so, and its next failure is a warning again.
    """
    from twisted.logger import LogLevel, globalLogPublisher

    def closing(body: bytes, status: bytes = b"200 OK") -> Callable[[bytes], bytes]:
        # Each answer on a connection of its own, as the fake member closes
        # it: no request may be sent on a connection it has closed.
        return lambda request: _http(body, status)(request).replace(
            b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1
        )

    unavailable = closing(
        b'{"code": 14, "message": "no leader"}', b"503 Service Unavailable"
    )
    granted = closing(b'{"header": {"revision": "1"}, "ID": "7", "TTL": "5"}')
    answers = iter([unavailable] * 3 + [granted, unavailable])
    member = _Listener(lambda request: next(answers)(request))
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    client = _client(f"etcd://{member.address}")
    try:
        for _ in range(3):
            with pytest.raises(EtcdUnavailableError):
                await client.grantLease(5)
        assert (await client.grantLease(5)).id == 7
        with pytest.raises(EtcdUnavailableError):
            await client.grantLease(5)
    finally:
        globalLogPublisher.removeObserver(logged.append)
        await _closing(client)
        await member.stop()
    levels = [
        event["log_level"]
        for event in logged
        if event.get("member") == f"http://{member.address}"
    ]
    assert levels == [
        LogLevel.warn,
        LogLevel.debug,
        LogLevel.debug,
        LogLevel.info,
        LogLevel.warn,
    ]


@pytest_twisted.ensureDeferred
async def test_silentMemberTimesOut(etcdServer: EtcdCluster) -> None:
    """
    A member that accepts and never answers costs a request part of its
    deadline, not all of it: the next member still answers in time.  Alone,
    it makes the request fail at its deadline.
    """
    from twisted.internet import reactor

    [member] = etcdServer.members
    silent = _Listener(None)
    client = _client(f"etcd://{silent.address},{member.address}", timeout=2.0)
    alone = _client(f"etcd://{silent.address}", timeout=0.5)
    try:
        lease = await client.grantLease(5)
        assert client.currentMember == member.clientURL
        started = reactor.seconds()  # type: ignore[attr-defined]
        with pytest.raises(EtcdUnavailableError, match="no answer within"):
            await alone.keepAlive(lease.id)
        assert 0.4 < reactor.seconds() - started < 2.0  # type: ignore[attr-defined]
        await client.revokeLease(lease.id)
    finally:
        await _closing(client)
        await _closing(alone)
        await silent.stop()


@pytest_twisted.ensureDeferred
async def test_garbageOnWatch(etcdServer: EtcdCluster) -> None:
    """
    A watch stream that turns to garbage ends the watch with
    EtcdProtocolError; the client goes on serving requests.
    """
    from twisted.internet import reactor

    [member] = etcdServer.members
    line = b'{"result": {"header": {"revision": "1"}, "created": true}}\n{oops\n'
    hostile = _Listener(
        lambda request: (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + hex(len(line))[2:].encode()
            + b"\r\n"
            + line
            + b"\r\n"
        )
    )
    client = _client(f"etcd://{hostile.address},{member.address}")
    try:
        watch = client.watch(b"/test/garbage", 1, lambda events, revision: None)
        with pytest.raises(EtcdProtocolError, match="not JSON"):
            await watch.done.addTimeout(10, reactor)
        assert (await client.get(b"/test/garbage"))[0] is None
    finally:
        await _closing(client)
        await hostile.stop()


@pytest_twisted.ensureDeferred
async def test_memberOfThreeKilled(etcdTrio: EtcdCluster) -> None:
    """
    With one member of three killed (the one the client was using), every
    request still succeeds and the key's lease still holds; a watch on the
    dead member ends, and a new one starts on a live member.
    """
    from twisted.internet import reactor

    client = _client(etcdTrio.coordinator, timeout=3.0)
    key = b"/test/trio/host"
    try:
        lease = await client.grantLease(5)
        won = await client.createIfAbsent(key, b"host", lease.id)
        assert won.succeeded
        used = next(m for m in etcdTrio.members if m.clientURL == client.currentMember)
        watch = client.watch(key, won.revision + 1, lambda events, revision: None)
        await _sleep(0.3)
        used.kill()
        await watch.done.addBoth(lambda _: None).addTimeout(10, reactor)
        for _ in range(3):
            assert await client.keepAlive(lease.id) > 0
        assert client.currentMember != used.clientURL
        current, _ = await client.get(key)
        assert current is not None and current.modRevision == won.revision
        seen: list[WatchEvent] = []
        again = client.watch(key, won.revision + 1, lambda e, r: seen.extend(e))
        await client.revokeLease(lease.id)
        for _ in range(100):
            if seen:
                break
            await _sleep(0.05)
        assert [event.kind for event in seen] == ["DELETE"]
        again.cancel()
    finally:
        await _closing(client)


async def _sleep(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds)  # type: ignore[arg-type]
