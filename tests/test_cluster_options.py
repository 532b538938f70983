"""
The options of a channel across machines in the endpoint string and in
ChannelEndpoint: checked at parse time, a clear ValueError for each mistake.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from twisted_channel import ChannelEndpoint
from twisted_channel._certs import makeCertificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = str(tmp_path_factory.mktemp("certs"))
    makeCertificates(directory, ["a"])
    return directory


def _string(certs: str, extra: str = "") -> str:
    def escaped(path: str) -> str:
        return path.replace(":", "\\:")

    return (
        "channel:jobs:coordinator=etcd\\://10.0.0.5\\:2379,10.0.0.6\\:2379"
        f":advertise=10.0.0.8:leaseTTL=3:port=7000:interface=0.0.0.0"
        f":certKey={escaped(os.path.join(certs, 'a.pem'))}"
        f":privateKey={escaped(os.path.join(certs, 'a.key'))}"
        f":caCerts={escaped(os.path.join(certs, 'ca.pem'))}" + extra
    )


def test_fullString(certs: str) -> None:
    """
    The string of the issue parses into settings: the members, the
    advertised address, the port, the interface, the TTL, and credentials
    naming the machine.
    """
    endpoint: Any = serverFromString(MemoryReactorClock(), _string(certs))
    settings = endpoint.cluster
    assert str(settings.coordinator) == "etcd://10.0.0.5:2379,10.0.0.6:2379"
    assert settings.advertise == "10.0.0.8"
    assert (settings.port, settings.interface, settings.leaseTTL) == (
        7000,
        "0.0.0.0",
        3,
    )
    assert settings.identity == "a" and not settings.insecure


def test_oneMachineUnchanged() -> None:
    """
    Without coordinator= there are no settings across machines.
    """
    assert ChannelEndpoint(MemoryReactorClock(), "jobs").cluster is None


@pytest.mark.parametrize(
    "extra, complaint",
    [
        (":leaseTTL=1", "leaseTTL"),
        (":leaseTTL=soon", "leaseTTL='soon' is not a whole number"),
        (":port=70000", "port='70000' is not a TCP port"),
        (":insecure=maybe", "insecure='maybe'"),
        (":insecure=yes", "insecure= is plain TCP"),
        (":advertise=", "advertise= is empty"),
    ],
)
def test_badValues(certs: str, extra: str, complaint: str) -> None:
    """
    A wrong value raises ValueError at parse time, naming the option.
    """
    with pytest.raises(ValueError, match=complaint):
        serverFromString(MemoryReactorClock(), _string(certs, extra))


def test_mistakes(certs: str, tmp_path: Any) -> None:
    """
    Certificates without a coordinator, a coordinator without certificates
    (unless insecure=yes), a file that is missing: each is a ValueError.
    """
    reactor = MemoryReactorClock()
    pem = os.path.join(certs, "a.pem")
    with pytest.raises(ValueError, match="only make sense with coordinator"):
        ChannelEndpoint(reactor, "jobs", certKey=pem)
    with pytest.raises(ValueError, match="only make sense with coordinator"):
        ChannelEndpoint(reactor, "jobs", advertise="10.0.0.8")
    with pytest.raises(ValueError, match="needs certKey= and caCerts="):
        ChannelEndpoint(reactor, "jobs", coordinator="etcd://a:1")
    with pytest.raises(ValueError, match="use etcd://"):
        ChannelEndpoint(reactor, "jobs", coordinator="http://a:1", insecure=True)
    with pytest.raises(ValueError, match="caCerts=.*cannot be read"):
        ChannelEndpoint(
            reactor,
            "jobs",
            coordinator="etcd://a:1",
            certKey=pem,
            privateKey=os.path.join(certs, "a.key"),
            caCerts=str(tmp_path / "missing.pem"),
        )
    insecure = ChannelEndpoint(reactor, "jobs", coordinator="etcd://a:1", insecure=True)
    assert insecure.cluster is not None and insecure.cluster.insecure
    # connect() stands as a candidate across machines too.
    server = Factory.forProtocol(Protocol)
    across = ChannelEndpoint(
        reactor, "jobs", coordinator="etcd://a:1", insecure=True, serverFactory=server
    )
    assert across.serverFactory is server


def _etcds(certs: str, extra: str, scheme: str = "etcds") -> str:
    return _string(certs, extra).replace("etcd\\://", f"{scheme}\\://", 1)


def _escaped(certs: str, name: str) -> str:
    return os.path.join(certs, name).replace(":", "\\:")


def test_etcdTLS(certs: str) -> None:
    """
    etcdCaCerts=, etcdCertKey= and etcdPrivateKey= with etcds:// give the
    etcd client a TLS policy trusting that authority and presenting that
    certificate; etcdCaCerts= alone trusts the authority, presenting none;
    without any, the system's trust roots (no policy of our own).
    """
    full: Any = serverFromString(
        MemoryReactorClock(),
        _etcds(
            certs,
            f":etcdCaCerts={_escaped(certs, 'ca.pem')}"
            f":etcdCertKey={_escaped(certs, 'a.pem')}"
            f":etcdPrivateKey={_escaped(certs, 'a.key')}",
        ),
    )
    policy = full.cluster.etcdTLS
    assert full.cluster.coordinator.secure
    assert policy.clientCertificate is not None and len(policy.authorities) == 1
    assert full.cluster.etcdClient(MemoryReactorClock())._urls[0].startswith("https://")
    trustOnly: Any = serverFromString(
        MemoryReactorClock(), _etcds(certs, f":etcdCaCerts={_escaped(certs, 'ca.pem')}")
    )
    assert trustOnly.cluster.etcdTLS.clientCertificate is None
    plain: Any = serverFromString(MemoryReactorClock(), _etcds(certs, ""))
    assert plain.cluster.etcdTLS is None


@pytest.mark.parametrize(
    "extra, complaint, scheme",
    [
        (
            ":etcdCaCerts={ca}",
            "etcdCaCerts= only make sense with etcd over TLS.*etcds://",
            "etcd",
        ),
        (
            ":etcdCertKey={pem}:etcdPrivateKey={key}",
            "etcdCertKey=, etcdPrivateKey= only make sense with etcd over TLS",
            "etcd",
        ),
        (":etcdCertKey={pem}", "etcdCertKey= needs etcdCaCerts=", "etcds"),
        (
            ":etcdCaCerts={ca}:etcdPrivateKey={key}",
            "etcdPrivateKey= needs etcdCertKey=",
            "etcds",
        ),
        (":etcdCaCerts={missing}", "etcdCaCerts=.*cannot be read", "etcds"),
        (":etcdCaCerts={key}", "etcdCaCerts=.*holds no PEM certificate", "etcds"),
        (
            ":etcdCaCerts={ca}:etcdCertKey={pem}:etcdPrivateKey={missing}",
            "etcdPrivateKey=.*cannot be read",
            "etcds",
        ),
        (
            ":etcdCaCerts={ca}:etcdCertKey={pem}:etcdPrivateKey={otherKey}",
            "does not match",
            "etcds",
        ),
        (
            ":etcdCaCerts={ca}:etcdCertKey={pem}",
            "etcdCertKey=.*holds no PEM private key",
            "etcds",
        ),
        (":etcdCaCerts=", "etcdCaCerts= is empty", "etcds"),
    ],
)
def test_etcdTLSMistakes(
    certs: str, tmp_path: Any, extra: str, complaint: str, scheme: str
) -> None:
    """
    etcd's TLS options with plain etcd://, a key without its certificate,
    a certificate without the authority to verify etcd by, a missing or
    wrong file, a key that is not the certificate's: each a ValueError at
    parse time, naming the option.
    """
    makeCertificates(str(tmp_path), ["other"])
    names = {
        "ca": _escaped(certs, "ca.pem"),
        "pem": _escaped(certs, "a.pem"),
        "key": _escaped(certs, "a.key"),
        "missing": _escaped(str(tmp_path), "missing.pem"),
        "otherKey": _escaped(str(tmp_path), "other.key"),
    }
    with pytest.raises(ValueError, match=complaint):
        serverFromString(
            MemoryReactorClock(), _etcds(certs, extra.format(**names), scheme)
        )


def test_etcdTLSWithoutCoordinator(certs: str) -> None:
    """
    etcd's TLS options without coordinator= are a ValueError too.
    """
    with pytest.raises(ValueError, match="etcdCaCerts=.*only make sense"):
        ChannelEndpoint(
            MemoryReactorClock(), "jobs", etcdCaCerts=os.path.join(certs, "ca.pem")
        )


def test_etcdUser(certs: str, tmp_path: Any) -> None:
    """
    etcdUser= and etcdPasswordFile= give the etcd client that user and the
    file's one line as the password (without its line end), with etcd://
    or etcds://; the password is in no repr of the settings.
    """
    passwordFile = tmp_path / "password"
    passwordFile.write_text("s3cret: with colons\r\n")
    extra = f":etcdUser=worker:etcdPasswordFile={_escaped(str(tmp_path), 'password')}"
    for scheme in ("etcd", "etcds"):
        endpoint: Any = serverFromString(
            MemoryReactorClock(), _etcds(certs, extra, scheme)
        )
        assert endpoint.cluster.etcdAuth == ("worker", "s3cret: with colons")
        assert "s3cret" not in repr(endpoint.cluster)
        client = endpoint.cluster.etcdClient(MemoryReactorClock())
        assert client._credentials == ("worker", "s3cret: with colons")
    plain: Any = serverFromString(MemoryReactorClock(), _string(certs))
    assert plain.cluster.etcdAuth is None
    assert plain.cluster.etcdClient(MemoryReactorClock())._credentials is None


@pytest.mark.parametrize(
    "content, extra, complaint",
    [
        (None, ":etcdUser=worker", "etcdUser= needs etcdPasswordFile=.*never taken"),
        (
            "Zq9secret\n",
            ":etcdPasswordFile={file}",
            "etcdPasswordFile= needs etcdUser=",
        ),
        (None, ":etcdUser=worker:etcdPasswordFile={file}", "cannot be read"),
        ("", ":etcdUser=worker:etcdPasswordFile={file}", "holds no password"),
        ("\n", ":etcdUser=worker:etcdPasswordFile={file}", "holds no password"),
        ("a\nb\n", ":etcdUser=worker:etcdPasswordFile={file}", "one line"),
        (b"\xff\n", ":etcdUser=worker:etcdPasswordFile={file}", "not UTF-8"),
        ("Zq9secret\n", ":etcdUser=:etcdPasswordFile={file}", "etcdUser= is empty"),
    ],
)
def test_etcdUserMistakes(
    certs: str, tmp_path: Any, content: str | bytes | None, extra: str, complaint: str
) -> None:
    """
    A user without a password file (the password is never taken from the
    string), a password file without a user, a file that is missing, empty,
    of several lines or not text: each a ValueError at parse time, naming
    the option and never the password.
    """
    path = tmp_path / "password"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    string = _string(certs, extra.format(file=_escaped(str(tmp_path), "password")))
    with pytest.raises(ValueError, match=complaint) as raised:
        serverFromString(MemoryReactorClock(), string)
    assert "Zq9secret" not in str(raised.value)


@pytest.mark.parametrize(
    "missing, string, named",
    [
        (["treq"], "insecure=yes", "treq"),
        (["OpenSSL"], "tls", "OpenSSL"),
        (["OpenSSL", "service_identity"], "tls", "OpenSSL, service_identity"),
        (["OpenSSL"], "etcds", "OpenSSL"),
    ],
)
def test_clusterExtraMissing(
    certs: str,
    monkeypatch: pytest.MonkeyPatch,
    missing: list[str],
    string: str,
    named: str,
) -> None:
    """
    Without the C{cluster} extra's packages, a string with C{coordinator=}
    is refused when it is parsed, with a ValueError naming what is missing
    and the extra to install, rather than an ImportError from a module the
    user never named (at parse time for certificates, at C{listen()} for
    etcd's client).  TLS packages are needed only where TLS is used.
    """
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)
    if string == "tls":
        text = _string(certs)
    elif string == "etcds":
        text = "channel:jobs:coordinator=etcds\\://10.0.0.5\\:2379:insecure=yes"
    else:
        text = "channel:jobs:coordinator=etcd\\://10.0.0.5\\:2379:insecure=yes"
    with pytest.raises(ValueError) as raised:
        serverFromString(MemoryReactorClock(), text)
    message = str(raised.value)
    assert f"(no {named})" in message
    assert "pip install 'twisted-channel[cluster]'" in message


def test_insecureNeedsNoTLSPackages(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    C{insecure=yes} with plain C{etcd://} uses no TLS, so it does not ask
    for pyOpenSSL.
    """
    monkeypatch.setitem(sys.modules, "OpenSSL", None)
    monkeypatch.setitem(sys.modules, "service_identity", None)
    endpoint: Any = serverFromString(
        MemoryReactorClock(),
        "channel:jobs:coordinator=etcd\\://10.0.0.5\\:2379:insecure=yes",
    )
    assert endpoint.cluster.insecure
