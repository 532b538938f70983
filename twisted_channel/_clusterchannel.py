"""
The channel across machines, made of the one-machine channel and the
election across machines.

On every machine the candidates run the one-machine channel's election: the
lock elects a local host.  The local host also campaigns in etcd
(L{MachineElection}); while it hosts across machines it accepts links from
anywhere on its machine's TLS port, each a link of its channel like one on
its Unix socket, with the channel's own protocol inside TLS
(L{twisted_channel._machinelink}).  A client dials the host etcd names
directly, checking that its certificate names the machine the key names,
and speaks the same protocol, so buffering, resends, acknowledgements and
timeouts are the one-machine channel's.  When the host steps down, it ends
every link at once, before anything else.

This module owns the candidate across machines (L{ClusterPort}: its
campaign, its TLS port, the links it holds while it may be about to host)
and the options of C{coordinator=}; L{ClusterSettings} checks them at parse
time.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._address import HOST, STANDBY, ChannelAddress
from ._campaign import DEFAULT_LEASE_TTL, HostRecord, readNumberFile, writeNumberFile
from ._cluster import MachineElection, electionKey
from ._etcd import Coordinator, EtcdClient, parseCoordinator
from ._machinelink import HOST_WAIT, MachineHostLink, MachineLinkFactory
from ._roles import RoleWaiters
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
        _requireClusterPackages(tls=parsed.secure or not insecure)
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


def _requireClusterPackages(tls: bool) -> None:
    """
    Check that the C{cluster} extra's packages are there: etcd is reached
    through treq, and TLS (between machines, or to etcd with C{etcds://})
    goes through pyOpenSSL and service_identity (C{twisted[tls]}).

    @param tls: whether this channel uses TLS anywhere.
    @raise ValueError: naming the missing modules and the extra to install,
        when the string is parsed, rather than an C{ImportError} from a
        module the user never named at C{listen()} or C{connect()}.
    """
    needed = ["treq"] + (["OpenSSL", "service_identity"] if tls else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            "coordinator= (a channel across machines) needs the cluster extra, "
            f"which is not installed (no {', '.join(missing)}): "
            "pip install 'twisted-channel[cluster]'"
        )


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
        self._serverFactory: Any = None
        self._listening: Any = None
        self._election: MachineElection | None = None
        #: Links accepted while this process may be about to host, each
        #: held (up to L{HOST_WAIT}) until it hosts: the link and its timer.
        self._held: list[tuple[MachineHostLink, Any]] = []
        self._warming: Any = None
        self._record: HostRecord | None = None
        self._hostingWaiters: list[Deferred[ChannelAddress]] = []
        self._notHostingWaiters: list[Deferred[ChannelAddress]] = []
        # Told each role as it changes, as a one-machine port's are (only
        # its observers are used: the waiters above fire when the election
        # decides, which is not always a change of role).
        self._roleObservers = RoleWaiters(name)

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
        links = MachineLinkFactory(self)
        credentials = self.settings.credentials
        if credentials is None:
            return links
        from ._tls import VerifiedTLSFactory, tlsFactory

        options = credentials.serverOptions()
        options.getContext()
        return tlsFactory(options, False, VerifiedTLSFactory(self.reactor, links))

    @property
    def _portFile(self) -> str:
        return str(self.local.paths.lock) + ".port"

    def _listen(self) -> Deferred[Any]:
        """
        Listen on this machine's TLS port: C{port=}, else the one its
        earlier local hosts used (from the port file beside the lock), so
        that a takeover on this machine keeps its address and a client can
        dial it again at once; else an ephemeral one, recorded.
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

    def acceptLink(self) -> MachineHostLink | None:
        """
        A link of this process's channel for a connection to its machine's
        port (over TLS, once the handshake verified the peer): now if it
        hosts; held until it does if it may be about to (a local heir
        renewing the lease and rewriting the key: a client dialed the
        machine's unchanged address again without waiting for etcd to name
        the heir), giving up after L{HOST_WAIT} seconds or when another
        machine hosts; else none (the connection is closed).  Nothing of a
        link reaches the channel before this process hosts, and its hello
        is answered only by a host whose term is at least the highest the
        client has seen.
        """
        if not self._accepting():
            return None
        link: MachineHostLink | None = self.local.buildLink(MachineHostLink)
        if link is None or self.role == HOST:
            return link
        link.hold()
        timer = self.reactor.callLater(HOST_WAIT, self._giveUp, link)
        self._held.append((link, timer))
        return link

    def _giveUp(self, link: MachineHostLink) -> None:
        self._held = [(held, timer) for held, timer in self._held if held is not link]
        link.closeQuietly()

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
        # The application learns that it hosts before any held link
        # delivers to it: a link's first messages are read as it is
        # released.
        self._announce(self._hostingWaiters)
        self._roleObservers.announce(HOST, self.getHost())
        held, self._held = self._held, []
        for link, timer in held:
            timer.cancel()
            if self.role == HOST:
                link.release()
            else:
                link.closeQuietly()

    def _releaseHeld(self) -> None:
        """
        Give up the links held for a hosting that will not come (soon).
        """
        held, self._held = self._held, []
        for link, timer in held:
            if timer.active():
                timer.cancel()
            link.closeQuietly()

    def _notHosting(self, term: int, reason: str) -> None:
        # First of all: no link may deliver once another can be elected, not
        # even what its socket already holds.  Every client, this machine's
        # too, connects again and resends what was not acknowledged.
        self.local.closeLinks()
        self._releaseHeld()
        self.local.acrossMachines = None
        self.term = None
        steppedDown = self.role == HOST
        if steppedDown:
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
        if steppedDown:
            self._roleObservers.announce(STANDBY, self.getHost())

    def _announce(self, waiters: list[Deferred[ChannelAddress]]) -> None:
        pending, waiters[:] = waiters[:], []
        for waiter in pending:
            waiter.callback(self.getHost())

    def _stopListeningTLS(self) -> Deferred[Any]:
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
        # A port stopped already (or never started) has no change to tell.
        changed = self.role != "stopped"
        self.role = "stopped"
        election, self._election = self._election, None
        try:
            self.local.removeRoleObserver(self._localRole)
        except ValueError:
            pass  # startListening failed before observing
        # Links end at once, as when stepping down: their clients find the
        # next host while this one hands over.
        self.local.closeLinks()
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
            if changed:
                self._roleObservers.announce("stopped", self.getHost())

        return Deferred.fromCoroutine(rest())

    def addRoleObserver(self, observer: Callable[[str], None]) -> None:
        """
        Call C{observer} with the new role (C{"host"}, C{"standby"} or
        C{"stopped"}) each time this process starts or stops hosting across
        machines, as L{ChannelPort.addRoleObserver} does on one machine.
        """
        self._roleObservers.addObserver(observer)

    def removeRoleObserver(self, observer: Callable[[str], None]) -> None:
        """
        Stop calling an observer added with L{addRoleObserver}.

        @raise ValueError: if it was not added.
        """
        self._roleObservers.removeObserver(observer)


async def _stop(listening: Any) -> None:
    await listening.stopListening()


#: Seconds between a local standby's reads that keep its connections to
#: etcd open: under the 240 s for which Twisted's HTTP client keeps an idle
#: connection, and etcd's 5 minutes.
WARM_INTERVAL = 60.0


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
