"""
A private certificate authority and one certificate per machine, for trying
the multi-machine channel's mutual TLS (C{twisted-channel certs DIR --hosts
a,b,c}).

This module owns only the making of those files, with C{cryptography}:
C{DIR/ca.pem} (the authority's certificate, the C{caCerts=} of every
machine), C{DIR/ca.key}, and for each host C{DIR/HOST.pem} and
C{DIR/HOST.key} (its C{certKey=} and C{privateKey=}).  Private keys are
written with mode 0600.  A real deployment uses its own authority.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re

#: How long the certificates made here are valid.
VALIDITY = datetime.timedelta(days=365)

_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")


def checkHost(text: str) -> str:
    """
    A machine's name as it goes in its certificate: a DNS name or an IP
    address.

    @raise ValueError: for anything else.
    """
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOST.fullmatch(text) or ".." in text:
        raise ValueError(
            f"{text!r} is not a host name or an IP address (letters, digits, "
            "'.' and '-')"
        )
    return text


def _writePrivate(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def makeCertificates(directory: str, hosts: list[str]) -> list[str]:
    """
    Make a private authority and a certificate for each host in
    C{directory} (created if needed).  Each host's certificate names it as
    its subject's common name and in its subject alternative names (as a
    DNS name, or as an IP address), and serves both as a server's and as a
    client's.

    @return: the paths written.
    @raise ValueError: for a bad host name, none, or one named twice.
    @raise FileExistsError: if a file to write exists (nothing is
        overwritten).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names = [checkHost(h) for h in hosts]
    if not names:
        raise ValueError("name at least one host")
    if len(set(names)) != len(names):
        raise ValueError("a host is named twice")
    targets = ["ca.pem", "ca.key"] + [
        f"{n}{s}" for n in names for s in (".pem", ".key")
    ]
    os.makedirs(directory, exist_ok=True)
    for target in targets:
        if os.path.lexists(os.path.join(directory, target)):
            raise FileExistsError(f"{os.path.join(directory, target)} exists")

    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(minutes=5)

    def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    caKey = ec.generate_private_key(ec.SECP256R1())
    caName = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "twisted-channel private CA")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(caName)
        .issuer_name(caName)
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(caKey.public_key()),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )
    written = []
    for name, data, private in [
        ("ca.pem", ca.public_bytes(serialization.Encoding.PEM), False),
        ("ca.key", pem(caKey), True),
    ]:
        path = os.path.join(directory, name)
        (_writePrivate if private else _write)(path, data)
        written.append(path)
    for host in names:
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            alternative: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            alternative = x509.DNSName(host)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(caName)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.SubjectAlternativeName([alternative]), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()),
                critical=False,
            )
            .sign(caKey, hashes.SHA256())
        )
        certificatePath = os.path.join(directory, host + ".pem")
        keyPath = os.path.join(directory, host + ".key")
        _write(certificatePath, certificate.public_bytes(serialization.Encoding.PEM))
        _writePrivate(keyPath, pem(key))
        written += [certificatePath, keyPath]
    return written


def commandCerts(options: argparse.Namespace) -> int:
    """
    C{twisted-channel certs DIR --hosts a,b,c}.

    @raise ValueError: for a bad host, or a file that exists (nothing is
        written then).
    """
    hosts = [h.strip() for h in options.hosts.split(",") if h.strip()]
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise ValueError(
            "making certificates needs cryptography: "
            "pip install 'twisted-channel[cluster]'"
        ) from None
    try:
        written = makeCertificates(options.directory, hosts)
    except FileExistsError as e:
        raise ValueError(f"{e}; nothing was written") from None
    for path in written:
        print(path)
    return 0
