"""
Mutual TLS between the machines of a channel.

This module owns the TLS side of links between machines: loading the
C{certKey=}, C{privateKey=} and C{caCerts=} PEM files (L{loadCredentials},
whose errors name the file), the server's and client's TLS options (TLS 1.2
or later, each side's certificate verified against C{caCerts}, the host's
also against the identity the client expects), the identity a peer's
certificate names, and L{VerifiedTLSFactory}, which builds the application's
protocol only once the handshake has verified the peer: a peer whose
certificate is not signed by C{caCerts} is refused and logged and never
gets a byte of the application, nor makes it see a connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IProtocolFactory,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

_log = Logger()

#: Seconds a peer has to complete the TLS handshake.
HANDSHAKE_TIMEOUT = 10.0

#: The most plaintext one TLS record carries.
RECORD_SIZE = 1 << 14

#: A write whose chunks average less than this is joined whole, as Twisted
#: joins it: cutting many small chunks into records one by one costs more.
_JOINED_UNDER = 4096


def recordSpans(
    chunks: Iterable[bytes | memoryview], size: int = RECORD_SIZE
) -> Iterator[bytes | memoryview]:
    """
    Cut the concatenation of C{chunks} into spans of whole records of
    C{size} bytes (the last one shorter), without joining it whole: the
    records that lie inside one chunk are one C{memoryview} of it (a chunk
    that is not C{bytes} is copied first, since it could change while the
    TLS layer holds it); only a record that spans chunks is joined.  The
    TLS layer makes records of C{size} bytes of each span in turn: the same
    records as of the whole.

    @param chunks: what one write hands the TLS layer, in order.
    @param size: the plaintext of one TLS record.
    @return: the spans, in order, each a multiple of C{size} bytes long but
        the last.
    """
    pending: list[bytes | memoryview] = []
    pendingLength = 0
    for chunk in chunks:
        view = memoryview(chunk if type(chunk) is bytes else bytes(chunk))
        offset = 0
        length = len(view)
        if pendingLength:
            take = min(size - pendingLength, length)
            pending.append(view[:take])
            pendingLength += take
            offset = take
            if pendingLength < size:
                continue
            yield b"".join(pending)
            pending = []
            pendingLength = 0
        whole = (length - offset) // size * size
        if whole:
            yield view[offset : offset + whole]
            offset += whole
        if offset < length:
            pending.append(view[offset:])
            pendingLength = length - offset
    if pendingLength:
        yield pending[0] if len(pending) == 1 else b"".join(pending)


class TLSCredentials:
    """
    A machine's certificate with its key, and the authorities whose
    certificates it accepts from peers.

    @ivar certificate: a C{twisted.internet.ssl.PrivateCertificate}.
    @ivar authorities: C{twisted.internet.ssl.Certificate}s (C{caCerts}).
    @ivar identity: the identity this machine's certificate names.
    """

    def __init__(self, certificate: Any, authorities: list[Any]) -> None:
        self.certificate = certificate
        self.authorities = authorities
        self.identity = certificateIdentity(certificate.original)

    def serverOptions(self) -> Any:
        """
        TLS options for a host: present our certificate, require the
        client's, and verify it against the authorities.
        """
        from twisted.internet.ssl import CertificateOptions, TLSVersion

        return CertificateOptions(
            privateKey=self.certificate.privateKey.original,
            certificate=self.certificate.original,
            verify=True,
            caCerts=[authority.original for authority in self.authorities],
            requireCertificate=True,
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )

    def clientOptions(self, identity: str) -> Any:
        """
        TLS options for a client of the host whose certificate must name
        C{identity} and be signed by the authorities; we present ours.
        """
        from twisted.internet.ssl import (
            TLSVersion,
            optionsForClientTLS,
            trustRootFromCertificates,
        )

        return optionsForClientTLS(
            identity,
            trustRoot=trustRootFromCertificates(self.authorities),
            clientCertificate=self.certificate,
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
        )


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{option}={path!r} cannot be read: {e.strerror}") from None


def loadCredentials(
    certKey: str, privateKey: str | None, caCerts: str, prefix: str = ""
) -> TLSCredentials:
    """
    Load a machine's TLS credentials from PEM files, as Twisted's C{ssl:}
    endpoints take them: C{certKey} holds the certificate (and the key, if
    C{privateKey} is C{None}); C{caCerts} holds one or more authorities'
    certificates.

    @param prefix: what the options are called after, in errors: C{""} for
        C{certKey=}, C{privateKey=} and C{caCerts=}; C{"etcd"} for
        C{etcdCertKey=}, C{etcdPrivateKey=} and C{etcdCaCerts=}.
    @raise ValueError: naming the file and what is wrong with it.
    """
    from OpenSSL.crypto import FILETYPE_PEM
    from OpenSSL.crypto import Error as OpenSSLError
    from twisted.internet.error import VerifyError
    from twisted.internet.ssl import Certificate, KeyPair, PrivateCertificate

    certOption, keyOption, caOption = (
        _optionName(prefix, o) for o in ("certKey", "privateKey", "caCerts")
    )
    certificateData = _read(certOption, certKey)
    keyData = certificateData if privateKey is None else _read(keyOption, privateKey)
    if privateKey is None:
        keyOption = certOption
    try:
        certificate = Certificate.loadPEM(certificateData)
    except (OpenSSLError, ValueError):
        raise ValueError(f"{certOption}={certKey!r} holds no PEM certificate") from None
    try:
        key = KeyPair.load(keyData, format=FILETYPE_PEM)
    except (OpenSSLError, ValueError):
        raise ValueError(
            f"{keyOption}={privateKey or certKey!r} holds no PEM private key "
            "(or it is encrypted)"
        ) from None
    try:
        private = PrivateCertificate.fromCertificateAndKeyPair(certificate, key)
    except (OpenSSLError, ValueError, VerifyError):
        raise ValueError(
            f"the private key in {privateKey or certKey!r} does not match "
            f"the certificate in {certKey!r}"
        ) from None
    authorities = loadAuthorities(caCerts, caOption)
    if certificateIdentity(private.original) is None:
        raise ValueError(f"{certOption}={certKey!r}: the certificate names no identity")
    return TLSCredentials(private, authorities)


def _optionName(prefix: str, option: str) -> str:
    return prefix + option[0].upper() + option[1:] if prefix else option


def loadAuthorities(caCerts: str, option: str = "caCerts") -> list[Any]:
    """
    The certificates of the authorities in the PEM file C{caCerts}.

    @raise ValueError: naming the file (as C{option}) if it holds none.
    """
    from cryptography import x509
    from twisted.internet.ssl import Certificate

    data = _read(option, caCerts)
    try:
        loaded = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{option}={caCerts!r} holds no PEM certificate") from None
    from cryptography.hazmat.primitives.serialization import Encoding

    return [Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in loaded]


def certificateIdentity(x509: Any) -> str | None:
    """
    The identity a certificate (a pyOpenSSL C{X509}) names: its first DNS
    or IP subject alternative name, else its subject's common name.
    """
    from cryptography import x509 as cx509

    certificate = x509.to_cryptography()
    try:
        names = certificate.extensions.get_extension_for_class(
            cx509.SubjectAlternativeName
        ).value
    except cx509.ExtensionNotFound:
        pass
    else:
        for name in names:
            if isinstance(name, (cx509.DNSName, cx509.IPAddress)):
                return str(name.value)
    common = certificate.subject.get_attributes_for_oid(cx509.oid.NameOID.COMMON_NAME)
    if common:
        value = common[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def certificateNames(x509: Any, identity: str) -> bool:
    """
    Whether a certificate (a pyOpenSSL C{X509}) names C{identity}, a host
    name or an IP address, by its subject alternative names.
    """
    import ipaddress

    from service_identity import VerificationError
    from service_identity.cryptography import (
        verify_certificate_hostname,
        verify_certificate_ip_address,
    )

    certificate = x509.to_cryptography()
    try:
        try:
            address = ipaddress.ip_address(identity)
        except ValueError:
            verify_certificate_hostname(certificate, identity)
        else:
            verify_certificate_ip_address(certificate, str(address))
    except VerificationError:
        return False
    return True


@implementer(IAddress)
class VerifiedPeer:
    """
    The address of a peer whose certificate was verified.

    @ivar host: its IP address.
    @ivar port: its port.
    @ivar identity: what its certificate names (see L{certificateIdentity}).
    """

    def __init__(self, host: str, port: int, identity: str) -> None:
        self.host = host
        self.port = port
        self.identity = identity

    def __repr__(self) -> str:
        return f"VerifiedPeer({self.host!r}, {self.port}, {self.identity!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifiedPeer):
            return NotImplemented
        return (self.host, self.port, self.identity) == (
            other.host,
            other.port,
            other.identity,
        )

    def __hash__(self) -> int:
        return hash((self.host, self.port, self.identity))


@implementer(IHandshakeListener)
class _VerifiedProtocol(ProtocolWrapper):
    """
    Stands between the TLS layer and the application: the application's
    protocol is connected only when the handshake has verified the peer,
    and its transport's C{getPeer()} is the L{VerifiedPeer}.
    """

    factory: VerifiedTLSFactory
    peer: VerifiedPeer | None = None
    _timer: Any = None
    _refusal: str | None = None
    #: What was received during a batch (see L{startBatch}), or C{None}.
    _batch: list[bytes] | None = None

    @property
    def _tls(self) -> Any:
        # The TLS layer's transport: it has getPeerCertificate and
        # abortConnection, which ITransport does not promise.
        return self.transport

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        self.connected = 1
        self.transport = transport
        self.factory.registerProtocol(self)  # type: ignore[no-untyped-call]
        self._timer = self.factory.reactor.callLater(
            self.factory.handshakeTimeout, self._tooSlow
        )

    def _tooSlow(self) -> None:
        self._timer = None
        _log.warn(
            "refused a TLS peer {peer}: no handshake within {timeout} s",
            peer=self._tls.getPeer(),
            timeout=self.factory.handshakeTimeout,
        )
        self._tls.abortConnection()

    def handshakeCompleted(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        address = self._tls.getPeer()
        certificate = self._tls.getPeerCertificate()
        identity = None if certificate is None else certificateIdentity(certificate)
        if identity is None:
            self._refusal = "its certificate names no identity"
            self._tls.abortConnection()
            return
        expected = self.factory.expectedIdentity
        if expected is not None and not certificateNames(certificate, expected):
            # Checked here too, whatever the TLS options did: some Twisted
            # releases finish the handshake before they check the name.
            self._refusal = f"its certificate does not name {expected!r}"
            self._tls.abortConnection()
            return
        self.peer = VerifiedPeer(
            getattr(address, "host", "?"), getattr(address, "port", 0), identity
        )
        protocol = self.factory.wrappedFactory.buildProtocol(self.peer)
        if protocol is None:
            self._tls.loseConnection()
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)

    def getPeer(self) -> Any:
        return self.peer if self.peer is not None else self._tls.getPeer()

    def logPrefix(self) -> str:
        return "VerifiedTLS"

    def startBatch(self) -> None:
        """
        Hold what is received until L{endBatch}, to hand it on as one
        chunk.
        """
        self._batch = []

    def endBatch(self) -> None:
        """
        Hand on, as one chunk, what was received since L{startBatch}.
        """
        batch, self._batch = self._batch, None
        if batch and self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(b"".join(batch))

    def dataReceived(self, data: bytes) -> None:
        if self._batch is not None:
            self._batch.append(data)
        elif self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        # The connection may end in the middle of a read (the peer's TLS
        # close follows its last data): what came first goes first.
        self.endBatch()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.factory.unregisterProtocol(self)  # type: ignore[no-untyped-call]
        if self.wrappedProtocol is None:
            _log.warn(
                "refused a TLS peer {peer}: {reason}",
                peer=self._tls.getPeer(),
                reason=self._refusal or reason.getErrorMessage(),
            )
            self.factory.refused += 1
            if self.factory.onRefused is not None:
                self.factory.onRefused(self._refusal or reason.getErrorMessage())
            return
        if not reason.check(ConnectionDone, ConnectionLost):
            # A verified peer's records that do not decrypt (corrupted or
            # forged), or another TLS error: said, as a refusal is, since
            # the link's protocol only hands the reason on.
            _log.warn(
                "a TLS link with {peer} ended: {reason}",
                peer=self.peer,
                reason=reason.getErrorMessage(),
            )
        self.wrappedProtocol.connectionLost(reason)


def tlsFactory(options: Any, isClient: bool, wrapped: IProtocolFactory) -> Any:
    """
    TLS over TCP for a link between machines: Twisted's TLS layer without
    its write aggregation.

    Twisted's default TLS transport holds each write until the reactor's
    next iteration, to make one record of many small writes.  A link
    writes once per batch (the messages of a reactor turn, a batch's
    acknowledgement and replies), so that buys nothing there and costs an
    iteration on every hop of a round trip; the link hands each write to
    the kernel itself (L{twisted_channel._sockets.sendNow}).

    Reading, Twisted's TLS layer hands on one record (16 KiB at most) at a
    time; under a L{VerifiedTLSFactory}, the records of one read from the
    socket are handed on together, as one chunk (one batch of frames for
    the link, and one acknowledgement).  Once a link's handshake is done,
    its reads go through L{twisted_channel._sockets.readDirectly}, which
    decrypts each read into one buffer, and its writes through
    L{twisted_channel._sockets.writeEagerly}, which takes the records of a
    write out of the TLS layer at once, into one buffer.

    @param options: the server's or the client's TLS options (see
        L{TLSCredentials}).
    @param isClient: whether this end dials.
    @param wrapped: the factory of the protocol under TLS.
    @return: a factory for C{listenTCP}, C{connectTCP} or a TCP endpoint.
    """
    from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

    from ._sockets import tlsEdge, writeRecords

    # Probed now, before any link: not in the first link's milliseconds.
    tlsEdge()

    class BatchingTLSProtocol(TLSMemoryBIOProtocol):
        def writeSequence(self, iovec: Iterable[bytes]) -> None:
            # Twisted joins the whole sequence (a batch: up to 1 MiB) and
            # then copies each record's plaintext out of it again; for large
            # chunks only the records that span chunks are joined here.
            # Small ones cost less joined at once.
            chunks = iovec if isinstance(iovec, list) else list(iovec)
            if sum(map(len, chunks)) < len(chunks) * _JOINED_UNDER:
                writeRecords(self, [b"".join(chunks)])
                return
            writeRecords(self, list(recordSpans(chunks)))

        def write(self, data: bytes) -> None:
            writeRecords(self, [data])

        def dataReceived(self, data: bytes) -> None:
            verified = self.wrappedProtocol
            if not isinstance(verified, _VerifiedProtocol):
                super().dataReceived(data)  # type: ignore[no-untyped-call]
                return
            verified.startBatch()
            try:
                super().dataReceived(data)  # type: ignore[no-untyped-call]
            finally:
                verified.endBatch()

    class UnbufferedTLSFactory(TLSMemoryBIOFactory):
        protocol = BatchingTLSProtocol
        noisy = False

    return UnbufferedTLSFactory(options, isClient, wrapped)


class VerifiedTLSFactory(WrappingFactory):
    """
    Wraps an application's factory for use under TLS (a C{ssl:} server
    endpoint, or C{wrapClientTLS}): the application's protocol is connected
    only once the handshake verified the peer's certificate.

    @ivar refused: how many peers were refused (for tests and status).
    @ivar expectedIdentity: for a client, the identity the host's
        certificate must name (checked again after the handshake), or
        C{None}.
    """

    protocol = _VerifiedProtocol
    noisy = False

    def __init__(
        self,
        reactor: Any,
        wrappedFactory: IProtocolFactory,
        handshakeTimeout: float = HANDSHAKE_TIMEOUT,
        expectedIdentity: str | None = None,
    ) -> None:
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]
        self.reactor = reactor
        self.expectedIdentity = expectedIdentity
        #: Called with the reason when a peer is refused, if set.
        self.onRefused: Callable[[str], None] | None = None
        self.handshakeTimeout = handshakeTimeout
        self.refused = 0

    def buildProtocol(self, addr: IAddress | None) -> ProtocolWrapper:
        """
        A protocol that will build the application's, with the peer's
        L{VerifiedPeer} address, once the handshake verified it.
        """
        return self.protocol(self, None)  # type: ignore[arg-type]
