"""
The two-level election of a channel's host across machines: on each
machine the candidates elect a local leader with the lock file (in
milliseconds, as a one-machine channel does); only the local leader
campaigns in etcd (L{CampaignDriver}); when it dies, the local standby that
wins the lock inherits its lease from the lease file beside the lock and
takes the election key over at once, without waiting for the lease to
expire.

This module owns that composition and the lease file's place, not the
channel's sockets: L{MachineElection} says when this process hosts (with
its fencing term) and when it must stop; L{HostView} and L{HostFinder} say,
for a client, which host to use and its term, from the election key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from ._campaign import (
    CAMPAIGNING,
    DEFAULT_LEASE_TTL,
    GRANTING,
    INHERITING,
    Campaign,
    CampaignDriver,
    HostRecord,
    readLeaseFile,
    writeLeaseFile,
)
from ._election import HostElection
from ._etcd import KeyValue, WatchEvent

_log = Logger()

#: Where the election keys live in etcd: C{<prefix>/<name>/host}.
DEFAULT_KEY_PREFIX = "/twisted-channel"


def electionKey(name: str, prefix: str = DEFAULT_KEY_PREFIX) -> bytes:
    """
    The etcd key of channel C{name}'s election.
    """
    return f"{prefix.rstrip('/')}/{name}/host".encode()


def candidatesPrefix(name: str, prefix: str = DEFAULT_KEY_PREFIX) -> bytes:
    """
    Where the machines campaigning for channel C{name} say so, each under
    its campaign's lease: C{<prefix>/<name>/candidates/<identity>}.
    """
    return f"{prefix.rstrip('/')}/{name}/candidates/".encode()


def candidateKey(key: bytes, identity: str) -> bytes:
    """
    The key where a machine campaigning for election key C{key} says so.
    """
    return key.rsplit(b"/", 1)[0] + b"/candidates/" + identity.encode()


def leasePath(lockPath: str) -> str:
    """
    The lease file beside a lock file: C{DIR/NAME.lease} for C{DIR/NAME.lock}.
    """
    base, _ = os.path.splitext(lockPath)
    return base + ".lease"


class MachineElection:
    """
    One process's candidacy for hosting a channel across machines.

    @param reactor: provides C{IReactorTime}, C{IReactorTCP} and
        C{IReactorFromThreads}.
    @param client: the L{EtcdClient} to campaign through.
    @param lockPath: the machine's local election lock.
    @param key: the election key (L{electionKey}).
    @param record: what the key says about this process when it hosts.
    @param onHosting: called with the fencing term when this process
        becomes the channel's host.
    @param onNotHosting: called with the term and a reason when it stops
        being the host; it must stop accepting at once.
    @param leaseTTL: the lease's TTL in seconds.
    @param onFollowing: if given, called (perhaps more than once) when this
        machine's campaign follows another machine's host.

    @ivar role: C{"standby"} (waiting for the local lock), C{"local leader"}
        (campaigning in etcd), C{"host"}, or C{"stopped"}.
    @ivar term: while hosting, the fencing term; else C{None}.
    """

    def __init__(
        self,
        reactor: Any,
        client: Any,
        lockPath: str,
        key: bytes,
        record: HostRecord,
        onHosting: Callable[[int], None],
        onNotHosting: Callable[[int, str], None],
        leaseTTL: int = DEFAULT_LEASE_TTL,
        onFollowing: Callable[[], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self._onFollowing = onFollowing
        self.client = client
        self.lockPath = lockPath
        self.leasePath = leasePath(lockPath)
        self.key = key
        self.record = record
        self._onHosting = onHosting
        self._onNotHosting = onNotHosting
        self.leaseTTL = leaseTTL
        Campaign(leaseTTL)  # checks the TTL now, not when elected
        self.role = "stopped"
        self.term: int | None = None
        self._local = HostElection(reactor, lockPath, self._locallyElected)
        self._driver: CampaignDriver | None = None

    def start(self) -> None:
        """
        Stand as a candidate: campaign in etcd at once if the local lock is
        free, else wait for it.
        """
        self.role = "standby"
        if self._local.tryNow():
            self._locallyElected(None)
        else:
            self._local.waitInBackground()

    def _locallyElected(self, prepared: object) -> None:
        if self.role != "standby":
            self._local.release()
            return
        self.role = "local leader"
        inherited = readLeaseFile(self.leasePath)
        _log.info(
            "local leader of {key}; campaigning in etcd{inheriting}",
            key=self.key.decode(),
            inheriting=f" with the inherited lease {inherited}" if inherited else "",
        )
        self._driver = CampaignDriver(
            self._reactor,
            self.client,
            self.key,
            self.record,
            Campaign(self.leaseTTL),
            self._elected,
            self._steppedDown,
            candidateKey(self.key, self.record.identity),
            onFollowing=self._onFollowing,
        )
        self._driver.start(inheritedLease=inherited)

    @property
    def contending(self) -> bool:
        """
        Whether this process may become the host without another machine's
        key going first: it leads locally and its campaign is getting a
        lease, inheriting one, or writing the key (not following, hosting
        or stopped).
        """
        driver = self._driver
        return (
            self.role == "local leader"
            and driver is not None
            and driver.campaign.state in (GRANTING, INHERITING, CAMPAIGNING)
        )

    def _elected(self, term: int, lease: int) -> None:
        # Recorded before anything else, so that a local heir finds it if
        # this process dies the next instant.
        try:
            writeLeaseFile(self.leasePath, lease)
        except OSError as e:
            _log.warn("could not record the lease for a local heir: {e}", e=e)
        self.role = "host"
        self.term = term
        self._onHosting(term)

    def _steppedDown(self, term: int, reason: str) -> None:
        if self.role == "host":
            self.role = "local leader"
        self.term = None
        self._onNotHosting(term, reason)

    def stop(self) -> Deferred[None]:
        """
        Stop standing: a host steps down, deletes the key and revokes its
        lease (so that another machine is elected at once); the local lock
        is given back.

        @return: a Deferred that fires when etcd has been told (or could
            not be) and the lock is free.
        """
        driver, self._driver = self._driver, None
        self.role = "stopped"
        done: Deferred[None] = succeed(None) if driver is None else driver.stop()

        def release(result: object) -> None:
            if driver is None:
                # A standby: the lease file is the local leader's.
                self._local.release()
                return
            try:
                os.unlink(self.leasePath)
            except FileNotFoundError:
                pass
            except OSError as e:
                _log.warn("could not remove the lease file: {e}", e=e)
            self._local.release()

        return done.addBoth(release)


class HostView:
    """
    What a client knows of a channel's host across machines, sans IO: fed
    the election key as etcd shows it, it says which host to use and its
    term, refusing a record it cannot read and never going back to a term
    lower than one it has seen (an answer from a member that lags, or a
    replay, cannot send a client back to a deposed host).

    @ivar host: the host's record and term, or C{None} while there is no
        usable one.
    @ivar highestTerm: the highest term seen, 0 before any.
    """

    def __init__(self) -> None:
        self.host: tuple[HostRecord, int] | None = None
        self.highestTerm = 0

    def consider(self, current: KeyValue | None) -> bool:
        """
        The election key is now C{current} (C{None}: deleted, no host).

        @return: whether L{host} changed.
        """
        if current is None:
            changed = self.host is not None
            self.host = None
            return changed
        term = current.modRevision
        if term < self.highestTerm or (
            term == self.highestTerm and self.host is not None
        ):
            if term < self.highestTerm:
                _log.info(
                    "ignoring a host record of term {term}, lower than the "
                    "term {highest} already seen",
                    term=term,
                    highest=self.highestTerm,
                )
            return False
        self.highestTerm = term
        try:
            record = HostRecord.decode(current.value)
        except ValueError as e:
            _log.warn(
                "refusing the election key's value at term {term}: {error}",
                term=term,
                error=str(e),
            )
            changed = self.host is not None
            self.host = None
            return changed
        self.host = (record, term)
        return True


class HostFinder:
    """
    Follows the election key in etcd for a client: reads it, then watches
    it, and calls C{onChange} with L{HostView.host} each time that changes.
    A watch that ends is started again from a fresh read.

    @ivar view: the L{HostView}.
    """

    def __init__(
        self,
        reactor: Any,
        client: Any,
        key: bytes,
        onChange: Callable[[tuple[HostRecord, int] | None], None],
        retryDelay: float = 0.25,
    ) -> None:
        self._reactor = reactor
        self.client = client
        self.key = key
        self._onChange = onChange
        self.retryDelay = retryDelay
        self.view = HostView()
        self._watch: Any = None
        self._retry: Any = None
        self._stopped = False

    def start(self) -> None:
        """
        Read the key and watch it from there.
        """
        self._stopped = False
        self.client.get(self.key).addCallbacks(self._read, self._failed)

    def _consider(self, current: KeyValue | None) -> None:
        if self.view.consider(current):
            self._onChange(self.view.host)

    def _read(self, answer: tuple[KeyValue | None, int]) -> None:
        if self._stopped:
            return
        current, revision = answer
        self._consider(current)

        def onEvents(events: list[WatchEvent], revision: int) -> None:
            last = events[-1]
            self._consider(None if last.kind == "DELETE" else last.kv)

        watch = self.client.watch(self.key, revision + 1, onEvents)
        self._watch = watch
        watch.done.addBoth(lambda _: self._watchEnded(watch))

    def _watchEnded(self, watch: Any) -> None:
        if self._watch is watch and not self._stopped:
            self._watch = None
            self._later()

    def _failed(self, failure: Any) -> None:
        if not self._stopped:
            _log.warn(
                "could not read the election key: {error}",
                error=failure.getErrorMessage(),
            )
            self._later()

    def _later(self) -> None:
        self._retry = self._reactor.callLater(self.retryDelay, self.start)

    def stop(self) -> None:
        """
        Stop following the key.
        """
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
