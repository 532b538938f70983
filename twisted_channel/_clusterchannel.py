"""
The channel across machines, made of the one-machine channel and the
election across machines, without changing either.

On every machine the candidates run the one-machine channel as it is: the
lock elects a local host, which serves the channel's Unix socket.  The
local host also campaigns in etcd (L{MachineElection}); while it hosts
across machines it accepts links from anywhere on a TLS port at its
advertised address and splices each, byte for byte, to its own channel
socket.  A client dials through a relay of its own: a private Unix socket
(in a private directory) that a plain one-machine client connection uses,
and that splices each link to the TLS port of the host named in etcd
(L{HostFinder}), checking the host's certificate names the machine the key
names.  The link protocol runs end to end between the client and the host,
so buffering, resends, acknowledgements and timeouts are the one-machine
channel's.  When the host steps down, it cuts every spliced link at once,
before anything else.

This module owns the splices, the relay, the TLS port and the options of
C{coordinator=}; L{ClusterSettings} checks them at parse time.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from ._address import HOST, STANDBY, ChannelAddress
from ._campaign import DEFAULT_LEASE_TTL, HostRecord, readNumberFile, writeNumberFile
from ._cluster import HostFinder, MachineElection, electionKey
from ._collection import collectFirstFull
from ._etcd import Coordinator, EtcdClient, parseCoordinator
from ._sockets import pushToKernel, sendNow
from ._wire import HostTerm

_log = Logger()


@dataclass(frozen=True)
class ClusterSettings:
    """
    Checked settings of a channel across machines.
    """

    coordinator: Coordinator
    advertise: str | None
    port: int
    interface: str | None
    leaseTTL: int
    credentials: Any
    insecure: bool
    #: The TLS policy for C{etcds://} members (L{EtcdTLSPolicy}) when
    #: C{etcdCaCerts=} is given; else C{None} (the system's trust roots).
    etcdTLS: Any = None
    #: etcd's user and password (C{etcdUser=}, C{etcdPasswordFile=}), or
    #: C{None}; left out of the repr, so that it is never logged.
    etcdAuth: tuple[str, str] | None = field(default=None, repr=False)

    @classmethod
    def check(
        cls,
        coordinator: str | None,
        advertise: str | None = None,
        port: int | None = None,
        interface: str | None = None,
        leaseTTL: int | None = None,
        certKey: str | None = None,
        privateKey: str | None = None,
        caCerts: str | None = None,
        insecure: bool = False,
        etcdCaCerts: str | None = None,
        etcdCertKey: str | None = None,
        etcdPrivateKey: str | None = None,
        etcdUser: str | None = None,
        etcdPasswordFile: str | None = None,
    ) -> ClusterSettings | None:
        """
        @return: the settings, or C{None} if no option of a channel across
            machines was given.
        @raise ValueError: naming what is wrong.
        """
        given = {
            "advertise": advertise,
            "port": port,
            "interface": interface,
            "leaseTTL": leaseTTL,
            "certKey": certKey,
            "privateKey": privateKey,
            "caCerts": caCerts,
            "etcdCaCerts": etcdCaCerts,
            "etcdCertKey": etcdCertKey,
            "etcdPrivateKey": etcdPrivateKey,
            "etcdUser": etcdUser,
            "etcdPasswordFile": etcdPasswordFile,
        }
        if coordinator is None:
            stray = [k for k, v in given.items() if v is not None]
            if insecure:
                stray.append("insecure")
            if stray:
                raise ValueError(
                    ", ".join(f"{k}=" for k in stray)
                    + " only make sense with coordinator=etcd://HOST:PORT"
                )
            return None
        parsed = parseCoordinator(coordinator)
        from ._campaign import Campaign

        ttl = DEFAULT_LEASE_TTL if leaseTTL is None else leaseTTL
        Campaign(ttl)
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536
        ):
            raise ValueError(f"port must be a TCP port (0 to 65535), not {port!r}")
        credentials = None
        if insecure:
            if certKey or privateKey or caCerts:
                raise ValueError(
                    "insecure= is plain TCP: leave out certKey=, privateKey= and "
                    "caCerts="
                )
        else:
            if certKey is None or caCerts is None:
                raise ValueError(
                    "a channel across machines needs certKey= and caCerts= (and "
                    "privateKey= unless certKey= holds the key) for mutual TLS, "
                    "or insecure=yes for plain TCP"
                )
            from ._tls import loadCredentials

            credentials = loadCredentials(certKey, privateKey, caCerts)
        return cls(
            parsed,
            advertise,
            port or 0,
            interface,
            ttl,
            credentials,
            bool(insecure),
            _etcdTLS(parsed, etcdCaCerts, etcdCertKey, etcdPrivateKey),
            _etcdAuth(etcdUser, etcdPasswordFile),
        )

    def etcdClient(self, reactor: Any, timeout: float | None = None) -> EtcdClient:
        """
        A client of the coordinator with these settings' credentials.

        @param timeout: seconds a request may take (default: a quarter of
            the lease, so that a renewal fails before the lease can end).
        """
        return EtcdClient(
            reactor,
            self.coordinator,
            timeout=self.leaseTTL / 4 if timeout is None else timeout,
            contextFactory=self.etcdTLS,
            user=None if self.etcdAuth is None else self.etcdAuth[0],
            password=None if self.etcdAuth is None else self.etcdAuth[1],
        )

    @property
    def identity(self) -> str:
        """
        This machine's identity: its certificate's, else its advertised
        address.
        """
        if self.credentials is not None:
            return str(self.credentials.identity)
        return self.advertise or "127.0.0.1"


def _etcdTLS(
    coordinator: Coordinator,
    caCerts: str | None,
    certKey: str | None,
    privateKey: str | None,
) -> Any:
    """
    The TLS policy of C{etcds://} from C{etcdCaCerts=}, C{etcdCertKey=} and
    C{etcdPrivateKey=}, or C{None} for the system's trust roots.

    @raise ValueError: for an option that does not fit the coordinator or
        the others, or a file that is wrong.
    """
    given = [
        name
        for name, value in (
            ("etcdCaCerts", caCerts),
            ("etcdCertKey", certKey),
            ("etcdPrivateKey", privateKey),
        )
        if value is not None
    ]
    if not given:
        return None
    if not coordinator.secure:
        raise ValueError(
            ", ".join(f"{name}=" for name in given)
            + f" only make sense with etcd over TLS: coordinator={coordinator} "
            "should be etcds://..."
        )
    if privateKey is not None and certKey is None:
        raise ValueError("etcdPrivateKey= needs etcdCertKey= (the client certificate)")
    if caCerts is None:
        raise ValueError(
            "etcdCertKey= needs etcdCaCerts= (the authority that signed etcd's "
            "certificate)"
        )
    from ._etcd import EtcdTLSPolicy

    return EtcdTLSPolicy.fromFiles(caCerts, certKey, privateKey)


def _etcdAuth(user: str | None, passwordFile: str | None) -> tuple[str, str] | None:
    """
    etcd's user and the password read from C{etcdPasswordFile=} (its one
    line, without the line's end), or C{None}.

    @raise ValueError: for one without the other, or a file that cannot be
        read or holds no password (never saying the password).
    """
    if user is None and passwordFile is None:
        return None
    if user is None:
        raise ValueError("etcdPasswordFile= needs etcdUser= (whose password it is)")
    if passwordFile is None:
        raise ValueError(
            "etcdUser= needs etcdPasswordFile=: the password is read from a "
            "file, never taken from the endpoint string"
        )
    if not user:
        raise ValueError("etcdUser= is empty")
    try:
        with open(passwordFile, "rb") as f:
            data = f.read(64 * 1024 + 1)
    except OSError as e:
        raise ValueError(
            f"etcdPasswordFile={passwordFile!r} cannot be read: {e.strerror}"
        ) from None
    try:
        password = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"etcdPasswordFile={passwordFile!r} is not UTF-8 text"
        ) from None
    if password.endswith("\n"):
        password = password[:-1].removesuffix("\r")
    if not password or len(data) > 64 * 1024 or "\n" in password:
        raise ValueError(
            f"etcdPasswordFile={passwordFile!r} holds no password: it must "
            "hold one line, the password"
        )
    return user, password


def _socketTransport(transport: Any) -> Any:
    """
    The transport of the socket under C{transport}'s layers (TLS, and the
    verification above it).
    """
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    return transport


class _Half(Protocol):
    """
    One end of a splice: what it reads, its partner writes, with each end's
    reading paused while the other's transport is full.

    Each chunk goes to the kernel as soon as it is read, not on the
    reactor's next iteration (L{sendNow}, L{pushToKernel}): a message
    crosses two splices and the TLS link, and every hop would otherwise
    cost a round trip an iteration in each direction.  What the kernel does
    not take stays with the transport, whose producer pause holds back the
    other end as before.

    @ivar socketTransport: the transport of this end's socket, under TLS.
    """

    partner: _Half | None = None
    #: Called with this end when its connection ends.
    onLost: Any = None
    socketTransport: Any = None

    def __init__(self, onMade: Any = None) -> None:
        self._onMade = onMade

    def connectionMade(self) -> None:
        # Over TCP (through TLS, whose wrappers pass the call on): a splice
        # passes on small writes that must not wait for the peer's delayed
        # acknowledgement of the last ones (Nagle's algorithm); a Unix
        # socket has no such method.
        noDelay = getattr(self.transport, "setTcpNoDelay", None)
        if noDelay is not None:
            noDelay(True)
        self.socketTransport = _socketTransport(self.transport)
        if self._onMade is not None:
            self._onMade(self)

    def join(self, partner: _Half) -> None:
        self.partner = partner
        partner.partner = self
        mine, theirs = self.transport, partner.transport
        mine.registerProducer(theirs, True)  # type: ignore[union-attr]
        theirs.registerProducer(mine, True)  # type: ignore[union-attr]
        mine.resumeProducing()  # type: ignore[union-attr]
        theirs.resumeProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        partner = self.partner
        if partner is not None and partner.transport is not None:
            transport = partner.socketTransport
            if transport is partner.transport:
                sendNow(transport, data)
            else:
                partner.transport.write(data)
                pushToKernel(transport)

    def cut(self) -> None:
        """
        End both ends at once.
        """
        partner, self.partner = self.partner, None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        if partner is not None:
            partner.partner = None
            if partner.transport is not None:
                partner.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.onLost is not None:
            self.onLost(self)
        partner, self.partner = self.partner, None
        if partner is not None:
            partner.partner = None
            if partner.transport is not None:
                partner.transport.loseConnection()


#: A host's first bytes on each link it splices: its term, so that the
#: client's relay knows which host it reached at a machine's address (which
#: stays the same across a takeover on that machine).
_TERM = struct.Struct(">Q")


class _HostEnd(_Half):
    """
    A relay's end of a link to a host: the host's first bytes say its term;
    C{onTerm} is called with this end once they have come.

    @ivar term: the host's term, once it said it.
    """

    term: int | None = None

    def __init__(self, onTerm: Any) -> None:
        super().__init__()
        self._onTerm = onTerm
        self._early = b""

    def dataReceived(self, data: bytes) -> None:
        if self.term is not None:
            super().dataReceived(data)
            return
        self._early += data
        if len(self._early) >= _TERM.size:
            (self.term,) = _TERM.unpack_from(self._early)
            self._early = self._early[_TERM.size :]
            self._onTerm(self)

    def join(self, partner: _Half) -> None:
        super().join(partner)
        early, self._early = self._early, b""
        if early:
            super().dataReceived(early)


class _Accepted(_Half):
    """
    A link accepted by a splicer: reading waits until its partner is
    connected.
    """

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]
        super().connectionMade()


class _HalfFactory(Factory):
    """
    Builds the dialed end of a splice; C{onMade} is called with it once
    connected (over TLS: once the handshake verified the peer).
    """

    noisy = False

    def __init__(self, onMade: Any) -> None:
        self._onMade = onMade

    def buildProtocol(self, addr: Any) -> _Half:
        return _Half(self._onMade)


class _SpliceFactory(Factory):
    """
    Accepts links and splices each to a connection C{dial} opens (called
    with the accepted end; a Deferred firing with the connected partner, or
    failing).
    """

    noisy = False

    def __init__(self, dial: Any, accepting: Any) -> None:
        self._dial = dial
        self._accepting = accepting
        self.live: set[_Half] = set()

    def buildProtocol(self, addr: Any) -> _Half | None:
        if not self._accepting():
            return None
        return _Accepted(self._made)

    def _made(self, accepted: _Half) -> None:
        self.live.add(accepted)
        accepted.onLost = self.live.discard

        def joined(partner: _Half) -> None:
            if accepted.transport is None or not accepted.connected:
                partner.transport.loseConnection()  # type: ignore[union-attr]
                return
            accepted.join(partner)

        def failed(reason: Failure) -> None:
            self.live.discard(accepted)
            if accepted.transport is not None:
                accepted.transport.loseConnection()

        d = self._dial(accepted)
        d.addCallbacks(joined, failed)

    def cutAll(self, joinedOnly: bool = False) -> None:
        """
        End every link at once (with C{joinedOnly}, those already spliced
        to a partner, leaving those whose dial is under way).
        """
        self.cutWhere(lambda partner: partner is not None or not joinedOnly)

    def cutWhere(self, predicate: Any) -> None:
        """
        End at once every link for whose partner (C{None} while its dial is
        under way) C{predicate} is true.
        """
        for half in list(self.live):
            if predicate(half.partner):
                self.live.discard(half)
                half.cut()


@implementer(IListeningPort)
class ClusterPort:
    """
    A candidate host of a channel across machines: the one-machine port
    (local election and socket), its campaign in etcd while it hosts
    locally, and its TLS port, which accepts links only while it hosts
    across machines.

    @ivar role: C{"host"} (across machines), C{"standby"} or C{"stopped"}.
    @ivar term: while hosting, the fencing term; else C{None}.
    """

    def __init__(
        self, reactor: Any, local: Any, settings: ClusterSettings, name: str
    ) -> None:
        self.reactor = reactor
        self.local = local
        self.settings = settings
        self.name = name
        self.role = "stopped"
        self.term: int | None = None
        self.client = settings.etcdClient(reactor)
        self._splices = _SpliceFactory(self._dialLocal, self._accepting)
        self._serverFactory: Any = None
        self._listening: Any = None
        self._election: MachineElection | None = None
        #: Links accepted while this process may be about to host, each
        #: waiting (up to L{HOST_WAIT}) for it to host: a Deferred and its
        #: timer.
        self._held: list[tuple[Deferred[None], Any]] = []
        self._warming: Any = None
        self._record: HostRecord | None = None
        self._hostingWaiters: list[Deferred[ChannelAddress]] = []
        self._notHostingWaiters: list[Deferred[ChannelAddress]] = []

    def startListening(self) -> None:
        """
        Stand as a candidate: locally first, then, as the local host, in
        etcd.
        """
        self.role = STANDBY
        if self.settings.insecure:
            _log.warn(
                "channel {channel}: insecure=yes: links between machines are "
                "plain TCP, unauthenticated and unencrypted; anyone who can "
                "reach {address} can join the channel",
                channel=self.name,
                address=self.settings.advertise,
            )
        self._serverFactory = self._buildServerFactory()
        self._warmEtcd()
        self.local.startListening()
        self.local.addRoleObserver(self._localRole)
        if self.local.role == HOST:
            self._localRole(HOST)

    def _warmEtcd(self) -> None:
        """
        While this process is a local standby, read the election key every
        L{WARM_INTERVAL} seconds over two connections to etcd, which the
        HTTP client then keeps open (and its code loaded): a takeover's two
        requests (the lease's renewal and the key's rewrite) go at once
        instead of after a connection's set-up each.
        """
        self._warming = self.reactor.callLater(WARM_INTERVAL, self._warmEtcd)
        if self._election is None:
            key = electionKey(self.name)
            for _ in range(2):
                self.client.get(key).addErrback(
                    lambda f: _log.debug("etcd not warmed: {f}", f=f.value)
                )

    def _buildServerFactory(self) -> Any:
        """
        The factory of the TLS port, built as a candidate starts (with its
        TLS context) rather than in the milliseconds of a takeover.
        """
        credentials = self.settings.credentials
        if credentials is None:
            return self._splices
        from ._tls import VerifiedTLSFactory, tlsFactory

        options = credentials.serverOptions()
        options.getContext()
        return tlsFactory(
            options, False, VerifiedTLSFactory(self.reactor, self._splices)
        )

    @property
    def _portFile(self) -> str:
        return str(self.local.paths.lock) + ".port"

    def _listen(self) -> Deferred[Any]:
        """
        Listen on this machine's TLS port: C{port=}, else the one its
        earlier local hosts used (from the port file beside the lock), so
        that a takeover on this machine keeps its address and a client's
        relay can dial it again at once; else an ephemeral one, recorded.
        The socket is bound with C{SO_REUSEPORT}, so that a local heir can
        bind it while its dead predecessor's socket is not yet closed.
        """
        settings = self.settings
        interface = settings.interface or settings.advertise or "127.0.0.1"
        wanted = settings.port or readPortFile(self._portFile)
        try:
            try:
                listening = _listenReusable(interface, wanted)
            except OSError:
                if settings.port or not wanted:
                    raise
                # Someone else took it meanwhile: a new address.
                listening = _listenReusable(interface, 0)
            try:
                port = self.reactor.adoptStreamPort(
                    listening.fileno(), socket.AF_INET, self._serverFactory
                )
            finally:
                listening.close()
        except Exception:
            return fail()
        if not settings.port and port.getHost().port != wanted:
            try:
                writePortFile(self._portFile, port.getHost().port)
            except OSError as e:
                _log.warn("could not record the TLS port for a local heir: {e}", e=e)
        return succeed(port)

    def _accepting(self) -> bool:
        election = self._election
        return self.role == HOST or (election is not None and election.contending)

    def _localRole(self, role: str) -> None:
        if role == HOST and self._election is None and self.role != "stopped":
            self._listen().addCallbacks(self._campaign, self._cannotListen)
        elif role != HOST and self._election is not None:
            election, self._election = self._election, None
            self._releaseHeld()
            election.stop()
            self._stopListeningTLS()

    def _cannotListen(self, reason: Failure) -> None:
        _log.failure(
            "channel {channel}: cannot listen for other machines",
            reason,
            channel=self.name,
        )

    def _campaign(self, listening: Any) -> None:
        if self.role == "stopped":
            listening.stopListening()
            return
        self._listening = listening
        port = listening.getHost().port
        host = self.settings.advertise or listening.getHost().host
        self._record = HostRecord(f"{host}:{port}", self.settings.identity, os.getpid())
        self._election = MachineElection(
            self.reactor,
            self.client,
            self.local.paths.lock + ".etcd",
            electionKey(self.name),
            self._record,
            self._hosting,
            self._notHosting,
            leaseTTL=self.settings.leaseTTL,
            onFollowing=self._releaseHeld,
        )
        self._election.start()

    def _hosting(self, term: int) -> None:
        self.term = term
        # What this host's welcome tells clients across machines, and the
        # term their hellos are checked against.
        record = self._record
        assert record is not None  # elected only once it campaigns
        self.local.acrossMachines = HostTerm(term, record.identity, record.address)
        self.role = HOST
        _log.info(
            "channel {channel}: pid {pid} hosts across machines, term {term}",
            channel=self.name,
            pid=os.getpid(),
            term=term,
        )
        held, self._held = self._held, []
        for waiting, timer in held:
            timer.cancel()
            waiting.callback(None)
        self._announce(self._hostingWaiters)

    def _releaseHeld(self) -> None:
        """
        Give up the links held for a hosting that will not come (soon).
        """
        held, self._held = self._held, []
        for waiting, timer in held:
            if timer.active():
                timer.cancel()
            waiting.errback(ConnectionRefusedError("not hosting across machines"))

    def _notHosting(self, term: int, reason: str) -> None:
        # First of all: no link may deliver once another can be elected,
        # neither through a splice nor from what a splice already wrote to
        # this process's channel socket.  Clients on this machine use relays
        # too; any link not spliced just connects again and resends.
        self._splices.cutAll()
        self.local.closeLinks()
        self._releaseHeld()
        self.local.acrossMachines = None
        self.term = None
        if self.role == HOST:
            self.role = STANDBY
        _log.info(
            "channel {channel}: pid {pid} stops hosting across machines "
            "(term {term}): {reason}",
            channel=self.name,
            pid=os.getpid(),
            term=term,
            reason=reason,
        )
        self._announce(self._notHostingWaiters)

    def _announce(self, waiters: list[Deferred[ChannelAddress]]) -> None:
        pending, waiters[:] = waiters[:], []
        for waiter in pending:
            waiter.callback(self.getHost())

    def _dialLocal(self, accepted: _Half) -> Deferred[_Half]:
        """
        Splice a link accepted from another machine to this process's own
        channel socket: now if it hosts; once it does if it may be about to
        (a local heir renewing the lease and rewriting the key: the client's
        relay dialed the machine's unchanged address without waiting for
        etcd to name the heir), giving up after L{HOST_WAIT} seconds or when
        another machine hosts; else not at all.  Nothing reaches the channel
        before this process hosts, and the link's first bytes are its term.
        """
        if self.role == HOST:
            return self._spliceLocal(accepted)
        if not self._accepting():
            return fail(ConnectionRefusedError("not hosting across machines"))
        waiting: Deferred[None] = Deferred()

        def tooLong() -> None:
            self._held.remove((waiting, timer))
            waiting.errback(ConnectionRefusedError("not hosting in time"))

        timer = self.reactor.callLater(HOST_WAIT, tooLong)
        self._held.append((waiting, timer))

        def hosting(_: None) -> Deferred[_Half]:
            if not accepted.connected or self.role != HOST:
                return fail(ConnectionRefusedError("link gone or not hosting"))
            return self._spliceLocal(accepted)

        return waiting.addCallback(hosting)

    def _spliceLocal(self, accepted: _Half) -> Deferred[_Half]:
        """
        Connect to this process's own channel socket for a link accepted
        from another machine, from a socket bound to a name of its own (in
        Linux's abstract namespace) under which the host's end of the link
        finds the peer machine's verified identity for its C{getPeer()};
        tell the link this host's term.
        """
        peer = accepted.transport.getPeer()  # type: ignore[union-attr]
        name = b"\0twisted-channel-splice-" + os.urandom(12).hex().encode()
        spliced = self.local.splicedPeers
        spliced[name] = getattr(peer, "identity", None)

        def connected(dialed: _Half) -> None:
            # Forgotten when the host's end took it, else when it ends.
            dialed.onLost = lambda _: spliced.pop(name, None)
            if self.term is None:
                made.errback(ConnectionRefusedError("no longer hosting"))
                dialed.transport.loseConnection()  # type: ignore[union-attr]
                return
            accepted.transport.write(_TERM.pack(self.term))  # type: ignore[union-attr]
            pushToKernel(accepted.socketTransport)
            made.callback(dialed)

        made: Deferred[_Half] = Deferred()
        dialing = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                dialing.bind(name)
            except OSError:
                # No abstract namespace (not Linux): the link works, but the
                # host's end shows the splice's pid instead of the peer.
                spliced.pop(name, None)
            # A connect to a listening Unix socket completes at once or
            # fails at once (EAGAIN when its backlog is full).
            dialing.setblocking(False)
            dialing.connect(self.local.paths.socket)
            self.reactor.adoptStreamConnection(
                dialing.fileno(), socket.AF_UNIX, _HalfFactory(connected)
            )
        except OSError:
            spliced.pop(name, None)
            made.errback()
        finally:
            dialing.close()
        return made

    def _stopListeningTLS(self) -> Deferred[Any]:
        self._splices.cutAll()
        listening, self._listening = self._listening, None
        if listening is None:
            return succeed(None)
        return Deferred.fromCoroutine(_stop(listening))

    def getHost(self) -> ChannelAddress:
        """
        This candidate's address, with its role and, while it hosts, its
        fencing term.
        """
        return ChannelAddress(
            self.name, self.local.paths.socket, self.role, os.getpid(), term=self.term
        )

    def whenHosting(self) -> Deferred[ChannelAddress]:
        """
        A Deferred that fires when this process hosts across machines.
        """
        waiter: Deferred[ChannelAddress] = Deferred()
        if self.role == HOST:
            waiter.callback(self.getHost())
        else:
            self._hostingWaiters.append(waiter)
        return waiter

    def whenNotHosting(self) -> Deferred[ChannelAddress]:
        """
        A Deferred that fires when this process stops hosting.
        """
        waiter: Deferred[ChannelAddress] = Deferred()
        if self.role != HOST:
            waiter.callback(self.getHost())
        else:
            self._notHostingWaiters.append(waiter)
        return waiter

    def stopListening(self) -> Deferred[Any]:
        """
        Stop standing: hand over (the key deleted, the lease revoked, so
        that another machine is elected at once), then stop the local port.
        """
        wasHost = self.role == HOST
        self.role = "stopped"
        election, self._election = self._election, None
        try:
            self.local.removeRoleObserver(self._localRole)
        except ValueError:
            pass  # startListening failed before observing
        self._splices.cutAll()
        self._releaseHeld()
        if self._warming is not None and self._warming.active():
            self._warming.cancel()
        done: Deferred[Any] = succeed(None) if election is None else election.stop()

        async def rest() -> None:
            await done
            await self._stopListeningTLS()
            await self.local.stopListening()
            await self.client.close()
            if wasHost:
                self._announce(self._notHostingWaiters)

        return Deferred.fromCoroutine(rest())


async def _stop(listening: Any) -> None:
    await listening.stopListening()


class _Relay:
    """
    A client's way to the host across machines: a private Unix socket whose
    links are spliced to the TLS port of the host named in etcd.
    """

    def __init__(self, reactor: Any, settings: ClusterSettings, name: str) -> None:
        self.reactor = reactor
        self.settings = settings
        self.directory = tempfile.mkdtemp(prefix="tc-relay-")
        os.chmod(self.directory, 0o700)
        self.client = settings.etcdClient(reactor)
        self.finder = HostFinder(reactor, self.client, electionKey(name), self._changed)
        self.splices = _SpliceFactory(self._dialHost, lambda: True)
        self._listening: Any = None
        self._atShutdown: Any = None
        self.host: tuple[HostRecord, int] | None = None
        self._hostWaiters: list[Deferred[None]] = []
        #: A dial started when a link to the host ended, for the channel's
        #: client to take when it connects again: the host etcd named then,
        #: and the dial.
        self._spare: tuple[tuple[HostRecord, int], Deferred[_Half]] | None = None
        self._clientOptions: dict[str, Any] = {}
        self._closed = False

    def start(self, name: str) -> None:
        path = os.path.join(self.directory, name + ".sock")
        self._listening = self.reactor.listenUNIX(path, self.splices, mode=0o600)
        # A process that stops its reactor without closing the connection
        # (stdin closed, a signal) must not leave the relay's directory.
        self._atShutdown = self.reactor.addSystemEventTrigger(
            "after", "shutdown", shutil.rmtree, self.directory, True
        )
        self.finder.start()

    def _changed(self, host: tuple[HostRecord, int] | None) -> None:
        self.host = host

        # Links to a host older than the one etcd names end now: a host cut
        # off from this client may have stepped down without its close
        # reaching us, and staying would be going back to a lower term.  The
        # channel's client connects again at once, to the new host, and
        # resends what was not acknowledged.  A link to the host etcd now
        # names stays (the relay dialed its machine's address again before
        # etcd's news came); links still waiting for their dial are left to
        # it.
        def stale(partner: Any) -> bool:
            return partner is not None and (host is None or partner.term < host[1])

        if any(stale(half.partner) for half in self.splices.live):
            _log.info(
                "the host across machines changed (now {host}); relinking",
                host="none" if host is None else f"{host[0].address} term {host[1]}",
            )
            self.splices.cutWhere(stale)
        waiters, self._hostWaiters = self._hostWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _dialHost(self, accepted: _Half) -> Deferred[_Half]:
        return Deferred.fromCoroutine(self._dialSoon())

    def _hostLost(self, lost: _Half) -> None:
        """
        A link to a host ended: if the host's end went first (not the
        client's, nor a cut of ours), dial the host etcd names now (the same
        address, if a standby on its machine takes over) while the
        channel's client notices and connects again, and keep the dial for
        it (for up to L{HOST_WAIT} seconds).
        """
        host = self.host
        if (
            self._closed
            or lost.partner is None
            or self._spare is not None
            or host is None
        ):
            return
        dialing = self._dial(host)
        spare = (host, dialing)
        self._spare = spare

        def unused() -> None:
            if self._spare is spare:
                self._spare = None
                _discard(dialing)

        timer = self.reactor.callLater(HOST_WAIT, unused)

        def settled(result: Any) -> Any:
            if not isinstance(result, Failure):
                return result
            # Failed before a link took it: forgotten (a link that took it
            # dials again itself).
            if self._spare is spare:
                self._spare = None
                if timer.active():
                    timer.cancel()
                return None
            return result

        dialing.addBoth(settled)

    def _takeSpare(self) -> Deferred[_Half] | None:
        """
        The spare dial, if there is one to the host etcd names now.
        """
        spare, self._spare = self._spare, None
        if spare is None or spare[0] != self.host:
            if spare is not None:
                _discard(spare[1])
            return None
        return spare[1]

    async def _dialSoon(self) -> _Half:
        """
        Dial the host etcd names; if there is none, or it cannot be reached
        (it died, or stepped down), dial again when etcd names another, and
        meanwhile the same address again after 2 ms, doubling (a local heir
        of the host takes over at its machine's address, before etcd names
        it); give up after L{HOST_WAIT} seconds.  The link is held
        meanwhile, so that its first message goes the moment a new host can
        take it, not at the client's next retry.
        """
        deadline = self.reactor.seconds() + HOST_WAIT
        retry = RETRY_FIRST
        spare = self._takeSpare()
        if spare is not None:
            try:
                half = await spare
            except Exception as e:
                _log.debug("cannot reach the host: {error}", error=e)
            else:
                if half is not None and half.connected:
                    return half
        while True:
            host = self.host
            if host is not None:
                try:
                    return await self._dial(host)
                except Exception as e:
                    _log.debug("cannot reach the host: {error}", error=e)
            left = deadline - self.reactor.seconds()
            if left <= 0:
                raise ConnectionRefusedError("no reachable host across machines")
            if self.host is host:
                await self._changedOrAfter(min(retry, left))
                retry *= 2

    def _changedOrAfter(self, delay: float) -> Deferred[None]:
        """
        A Deferred that fires when etcd names another host, or after
        C{delay} seconds.
        """
        waiter: Deferred[None] = Deferred()
        self._hostWaiters.append(waiter)

        def later() -> None:
            if waiter in self._hostWaiters:
                self._hostWaiters.remove(waiter)
                waiter.callback(None)

        timer = self.reactor.callLater(delay, later)

        def settled(result: None) -> None:
            if timer.active():
                timer.cancel()

        return waiter.addCallback(settled)

    def _dial(self, host: tuple[HostRecord, int]) -> Deferred[_Half]:
        from twisted.internet.endpoints import TCP4ClientEndpoint

        record, _ = host
        address, _, port = record.address.rpartition(":")
        made: Deferred[_Half] = Deferred()

        def fail(reason: object) -> None:
            if not made.called:
                made.errback(ConnectionRefusedError(str(reason)))

        def told(half: _HostEnd) -> None:
            # Never a host of a lower term than one this client has seen.
            highest = self.finder.view.highestTerm
            assert half.term is not None
            if half.term < highest:
                _log.warn(
                    "refusing a host at {address} of term {term}, lower than "
                    "the term {highest} already seen",
                    address=record.address,
                    term=half.term,
                    highest=highest,
                )
                half.transport.abortConnection()  # type: ignore[union-attr]
                fail(f"host of a lower term ({half.term})")
            elif not made.called:
                half.onLost = self._hostLost
                made.callback(half)

        factory: Any = Factory.forProtocol(lambda: _HostEnd(told))
        factory.noisy = False
        endpoint: Any = TCP4ClientEndpoint(
            self.reactor, address, int(port), timeout=HOST_WAIT
        )
        credentials = self.settings.credentials
        if credentials is not None:
            from ._tls import VerifiedTLSFactory, tlsFactory

            verified = VerifiedTLSFactory(
                self.reactor, factory, expectedIdentity=record.identity
            )
            verified.onRefused = fail
            options = self._clientOptions.get(record.identity)
            if options is None:
                options = credentials.clientOptions(record.identity)
                self._clientOptions[record.identity] = options
            factory = tlsFactory(options, True, verified)
        connecting = endpoint.connect(factory)
        connecting.addErrback(fail)

        def tooLong() -> None:
            # Connected but no verified peer: abort what was opened.
            if made.called:
                return
            connecting.cancel()
            if connecting.called and not isinstance(connecting.result, BaseException):
                protocol = connecting.result
                if getattr(protocol, "transport", None) is not None:
                    protocol.transport.abortConnection()
            fail("no verified connection in time")

        timer = self.reactor.callLater(HOST_WAIT, tooLong)

        def settled(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return made.addBoth(settled)

    def close(self) -> None:
        self._closed = True
        spare, self._spare = self._spare, None
        if spare is not None:
            _discard(spare[1])
        self.finder.stop()
        self.splices.cutAll()
        listening, self._listening = self._listening, None
        self.client.close()
        if listening is None:
            self._removeDirectory()
            return
        # The directory goes once the port has stopped: the port removes
        # its socket file as it stops, and fails loudly if it is gone.
        stopped: Deferred[None] = maybeDeferred(listening.stopListening)
        stopped.addBoth(lambda _: self._removeDirectory())

    def _removeDirectory(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        trigger, self._atShutdown = self._atShutdown, None
        if trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):
                # Closed while the reactor shuts down: the trigger ran.
                pass


#: Seconds a relay holds a link while it looks for a reachable host, and a
#: host a link while it may be about to host; under the channel client's
#: 2 s deadline for a new link's handshake.
HOST_WAIT = 1.0
#: Seconds before a relay dials an unreachable host's address again, the
#: first time (then doubling).
RETRY_FIRST = 0.002
#: Seconds between a local standby's reads that keep its connections to
#: etcd open: under the 240 s for which Twisted's HTTP client keeps an idle
#: connection, and etcd's 5 minutes.
WARM_INTERVAL = 60.0


def _discard(dialing: Deferred[_Half]) -> None:
    """
    Abort the link a dial made, or will make, that nobody took.
    """

    def abort(half: _Half | None) -> None:
        if half is not None and half.transport is not None:
            half.transport.abortConnection()  # type: ignore[attr-defined]

    dialing.addCallbacks(abort, lambda _: None)


def _listenReusable(interface: str, port: int) -> socket.socket:
    """
    A TCP socket listening at C{interface} and C{port}, with
    C{SO_REUSEPORT} (where the platform has it) so that a local heir can bind
    the port of a dead predecessor whose socket is not yet closed; the
    kernel refuses processes of another user.
    """
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening.bind((interface, port))
        listening.listen(128)
        listening.setblocking(False)
    except BaseException:
        listening.close()
        raise
    return listening


def writePortFile(path: str, port: int) -> None:
    """
    Record this machine's TLS port for its local heirs.
    """
    writeNumberFile(path, port, ".port-")


def readPortFile(path: str) -> int:
    """
    The TLS port a local predecessor recorded, or 0 if there is none or the
    file does not hold one.
    """
    return readNumberFile(path, "port", 65536) or 0


def connectAcrossMachines(
    reactor: Any,
    name: str,
    settings: ClusterSettings,
    connectLocal: Any,
    protocolFactory: Any,
    candidate: ClusterPort | None = None,
) -> Deferred[IProtocol]:
    """
    Connect the application's protocol to the channel's host across
    machines, through a relay of this process's own.

    @param connectLocal: given the relay's directory and a factory,
        connects a one-machine client to it and returns its Deferred.
    @param candidate: this process's candidacy for the endpoint's
        C{serverFactory}, already standing, stopped when the connection
        ends (as on one machine).
    @return: a Deferred firing with the application's protocol.
    """
    relay = _Relay(reactor, settings, name)
    relay.start(name)
    # The process's first full collection, which its imports would
    # otherwise bring due seconds from now, in a takeover as likely as
    # anywhere: the relay is this client's path to every new host.
    collectFirstFull()

    class Closing(WrappingFactory):
        protocol = _ClosingWrapper

    wrapping = Closing(protocolFactory)  # type: ignore[no-untyped-call]
    wrapping.relay = relay  # type: ignore[attr-defined]
    wrapping.candidate = candidate  # type: ignore[attr-defined]
    d: Deferred[Any] = connectLocal(relay.directory, wrapping)

    def failed(reason: Failure) -> Failure:
        relay.close()
        _stopCandidate(candidate)
        return reason

    # The application gets its own protocol, whose transport is the
    # channel's.
    return d.addCallbacks(lambda wrapper: wrapper.wrappedProtocol, failed)


def _stopCandidate(candidate: ClusterPort | None) -> None:
    if candidate is not None:
        candidate.stopListening().addErrback(
            lambda f: _log.failure("could not stop the candidate host", f)
        )


class _ClosingWrapper(ProtocolWrapper):
    """
    The application's protocol, seen by the channel's client: when the
    connection ends, the relay is closed, and the candidacy of a
    C{serverFactory} stopped.

    The application's protocol is connected to the channel's transport
    itself, not to this wrapper: its writes, one call per message, go
    straight to the channel's client.
    """

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(transport)

    def __conform__(self, interface: Any) -> Any:
        # The channel's client tells an IChannelLinkObserver of its links:
        # the application's protocol, if it is one (or adapts to one).
        return interface(self.wrappedProtocol, None)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        try:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
        finally:
            self.factory.relay.close()
            _stopCandidate(self.factory.candidate)


async def hostAcrossMachines(
    reactor: Any,
    name: str,
    coordinator: str,
    timeout: float,
    *,
    etcdCaCerts: str | None = None,
    etcdCertKey: str | None = None,
    etcdPrivateKey: str | None = None,
    etcdUser: str | None = None,
    etcdPasswordFile: str | None = None,
) -> dict[str, Any]:
    """
    What etcd says of channel C{name}'s host across machines: for
    C{twisted-channel status NAME --coordinator ...}.  The election key and
    the machines' candidate keys are read at once (one range, one
    revision).

    @return: C{name}, C{coordinator}, C{hosted}, while hosted the host's
        C{term}, C{identity} (its machine), C{address} and C{pid}; and
        C{standbys}, the other machines campaigning (each its
        C{identity}, C{address} and C{pid}), by identity.  A candidate key
        that holds no record is left out and counted in
        C{unreadableStandbys}.
    @param etcdCaCerts: as the endpoint's C{etcdCaCerts=}; so are the
        other C{etcd...} parameters (etcd's TLS and its user).
    @raise ValueError: for a bad coordinator or etcd credentials.
    @raise EtcdError: if etcd cannot be asked.
    """
    from ._campaign import HostRecord as Record
    from ._cluster import candidatesPrefix

    parsed = parseCoordinator(coordinator)
    auth = _etcdAuth(etcdUser, etcdPasswordFile)
    client = EtcdClient(
        reactor,
        parsed,
        timeout=timeout,
        contextFactory=_etcdTLS(parsed, etcdCaCerts, etcdCertKey, etcdPrivateKey),
        user=None if auth is None else auth[0],
        password=None if auth is None else auth[1],
    )
    key = electionKey(name)
    candidates = candidatesPrefix(name)
    try:
        found, _ = await client.getPrefix(key.rsplit(b"/", 1)[0] + b"/")
    finally:
        await client.close()
    answer: dict[str, Any] = {
        "name": name,
        "coordinator": str(client.coordinator),
        "hosted": False,
    }
    current = next((kv for kv in found if kv.key == key), None)
    host = None
    if current is not None:
        try:
            host = Record.decode(current.value)
        except ValueError as e:
            answer["error"] = f"the election key holds no host record: {e}"
        else:
            answer.update(
                hosted=True,
                term=current.modRevision,
                identity=host.identity,
                address=host.address,
                pid=host.pid,
            )
    standbys = []
    unreadable = 0
    for kv in found:
        if not kv.key.startswith(candidates):
            continue
        try:
            record = Record.decode(kv.value)
        except ValueError:
            unreadable += 1
            continue
        if host is not None and record.identity == host.identity:
            continue  # the host's own machine
        standbys.append(
            {"identity": record.identity, "address": record.address, "pid": record.pid}
        )
    answer["standbys"] = standbys
    if unreadable:
        answer["unreadableStandbys"] = unreadable
    return answer
