"""
The election of a channel's host among machines through etcd: which
machine's local leader hosts, and its fencing term.

This module owns the campaign and nothing of the channel's sockets:
L{Campaign}, a sans-IO state machine fed etcd's answers and the time, which
says what to ask etcd next, when to wake, and when the host must step down;
L{CampaignDriver}, which runs one against an L{EtcdClient}; L{HostRecord},
the checked value of the election key; and the lease file by which a local
standby inherits the lease of a local leader that died.

The election key C{<prefix>/<name>/host} is created, if absent, under the
campaigner's lease; the winner's term is the key's revision at its latest
write (C{mod_revision}): etcd's revisions strictly increase, so every new
host, on this machine or another, gets a higher term than all before it.

A leader renews its lease every C{ttl / 6} seconds and steps down at
C{renewDeadline = 2/3} of the TTL after the sending of the last renewal
etcd confirmed, unless a later one was confirmed: etcd counts a renewal's
TTL from when it processed it, which is after the sending, so the lease
outlives the step-down by at least a third of the TTL, the margin for a
clock that runs slow and for the step-down itself.  (Kubernetes' leader
election renews within 10 s of a 15 s lease: the same two thirds.)  It also
reads its key at each renewal, and steps down if the key is no longer the
one it wrote.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple

from twisted.logger import Logger

from ._etcd import EtcdClient, EtcdError, KeyValue, Lease, TxnResult, WatchEvent

_log = Logger()

#: The lease TTL by default, in seconds: see docs/cluster.md for why.
DEFAULT_LEASE_TTL = 5
#: The share of the TTL, counted from the sending of the last confirmed
#: renewal, after which a leader that could not renew steps down.
RENEW_DEADLINE = 2 / 3
#: Renewals per TTL.
RENEWALS_PER_TTL = 6
#: The largest election key value accepted, in bytes.
MAX_RECORD = 4096


class HostRecord(NamedTuple):
    """
    What the election key says about its host.

    @ivar address: C{HOST:PORT} where other machines reach the host.
    @ivar identity: the host machine's name (its certificate's identity).
    @ivar pid: the host process's id on its machine.
    """

    address: str
    identity: str
    pid: int

    def encode(self) -> bytes:
        """
        The record as the election key's value: JSON.
        """
        return json.dumps(
            {"address": self.address, "identity": self.identity, "pid": self.pid},
            sort_keys=True,
        ).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes) -> HostRecord:
        """
        @raise ValueError: naming what is wrong, for anything but a record
            L{encode} could have written.
        """
        if len(data) > MAX_RECORD:
            raise ValueError(f"host record of {len(data)} bytes (most {MAX_RECORD})")
        try:
            fields = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ValueError(f"host record is not JSON: {data[:80]!r}") from None
        if not isinstance(fields, dict) or set(fields) != {
            "address",
            "identity",
            "pid",
        }:
            raise ValueError(f"host record has the wrong fields: {data[:200]!r}")
        address, identity, pid = fields["address"], fields["identity"], fields["pid"]
        if not isinstance(address, str) or not isinstance(identity, str):
            raise ValueError(f"host record's address or identity: {data[:200]!r}")
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"host record's address is not HOST:PORT: {address!r}")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"host record's pid is not a process id: {pid!r}")
        return cls(address, identity, pid)


# What a campaign asks of etcd (and of its driver).


class GrantLease(NamedTuple):
    """
    Ask etcd for a lease of C{ttl} seconds.
    """

    ttl: int


class KeepAlive(NamedTuple):
    """
    Renew C{lease} once.
    """

    lease: int


class ReadKey(NamedTuple):
    """
    Read the election key (a leader checks it is still the one it wrote).
    """


class Create(NamedTuple):
    """
    Create the election key under C{lease} if it does not exist.
    """

    lease: int


class Replace(NamedTuple):
    """
    Take the key over with a new revision, if our (inherited) lease holds it.
    """

    lease: int


class WatchKey(NamedTuple):
    """
    Watch the election key for changes from C{fromRevision} on.
    """

    fromRevision: int


class DeleteKey(NamedTuple):
    """
    Delete the election key if its latest change is still C{modRevision}.
    """

    modRevision: int


class RevokeLease(NamedTuple):
    """
    Revoke C{lease} (and with it any key attached to it).
    """

    lease: int


class Elected(NamedTuple):
    """
    This machine hosts from now, with this fencing term, until L{SteppedDown}.
    """

    term: int
    lease: int


class SteppedDown(NamedTuple):
    """
    This machine hosts no more (its host must stop accepting at once).
    """

    term: int
    reason: str


Action = (
    GrantLease
    | KeepAlive
    | ReadKey
    | Create
    | Replace
    | WatchKey
    | DeleteKey
    | RevokeLease
    | Elected
    | SteppedDown
)

IDLE = "idle"
GRANTING = "granting"
INHERITING = "inheriting"
CAMPAIGNING = "campaigning"
FOLLOWING = "following"
LEADING = "leading"
STOPPED = "stopped"


class Campaign:
    """
    One machine's campaign for one election key, sans IO.

    Feed it with the answers to what it asked (and the time they were
    sent, taken by the driver), and call L{tick} at L{wakeAt}; each input
    returns the actions to take, in order.

    @ivar state: one of C{idle}, C{granting}, C{inheriting},
        C{campaigning}, C{following}, C{leading}, C{stopped}.
    @ivar term: while leading, the fencing term; else C{None}.
    @ivar lease: the lease this campaign holds, or C{None}.
    @ivar renewedAt: when the last renewal etcd confirmed was sent: etcd
        keeps the lease at least the TTL after it.
    """

    def __init__(self, ttl: int = DEFAULT_LEASE_TTL, retryDelay: float = 0.0) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 2:
            raise ValueError(
                f"leaseTTL must be a whole number of seconds, 2 or more, not {ttl!r}"
            )
        self.ttl = ttl
        self.retryDelay = retryDelay or ttl / RENEWALS_PER_TTL
        self.state = IDLE
        self.term: int | None = None
        self.lease: int | None = None
        self.renewedAt: float | None = None
        #: Requests failed in a row since etcd last answered.
        self.failures = 0
        self._stepDownAt: float | None = None
        self._nextRenewal: float | None = None
        self._retryAt: float | None = None
        self._retry: list[Action] = []
        #: While inheriting: the answer to the key's rewrite, if it came
        #: before the renewal's.
        self._written: TxnResult | None = None

    def __repr__(self) -> str:
        return f"<Campaign {self.state} term={self.term} lease={self.lease}>"

    @property
    def wakeAt(self) -> float | None:
        """
        When L{tick} must next be called, or C{None}.
        """
        times = [
            t
            for t in (self._stepDownAt, self._nextRenewal, self._retryAt)
            if t is not None
        ]
        return min(times) if times else None

    def start(self, now: float, inheritedLease: int | None = None) -> list[Action]:
        """
        Begin campaigning: with a fresh lease, or with the lease a local
        predecessor held (from the lease file), which spares waiting for it
        to expire.  An inherited lease is renewed and the key rewritten
        under it at once, both requests in flight together: the campaign
        leads only once both are answered (the renewal's sending starts the
        renew deadline, as always), so a dead lease cannot make a leader,
        and a takeover costs one round trip to etcd instead of two.  The
        rewrite goes first: it is the slower of the two (etcd writes it to
        disk).
        """
        assert self.state == IDLE, self.state
        if inheritedLease:
            self.state = INHERITING
            self.lease = inheritedLease
            self._written = None
            return [Replace(inheritedLease), KeepAlive(inheritedLease)]
        self.state = GRANTING
        return [GrantLease(self.ttl)]

    def _renewed(self, sentAt: float, ttl: int) -> None:
        self.renewedAt = sentAt
        self._nextRenewal = sentAt + self.ttl / RENEWALS_PER_TTL
        self._stepDownAt = sentAt + min(ttl, self.ttl) * RENEW_DEADLINE

    def leaseGranted(self, lease: Lease, sentAt: float) -> list[Action]:
        """
        The answer to L{GrantLease}, asked at C{sentAt}.
        """
        if self.state != GRANTING:
            return [RevokeLease(lease.id)]
        self.lease = lease.id
        self._renewed(sentAt, lease.ttl)
        self.state = CAMPAIGNING
        return [Create(lease.id)]

    def keepAliveAnswered(self, ttl: int, sentAt: float) -> list[Action]:
        """
        The answer to L{KeepAlive}, asked at C{sentAt}: the lease's time to
        live, 0 if it is gone.
        """
        if self.state in (IDLE, STOPPED):
            return []
        if ttl <= 0:
            # The lease is gone: whatever it held is someone else's now.
            actions = self._stepDown("lease expired") if self.state == LEADING else []
            self.lease = None
            self._written = None
            self._nextRenewal = self._stepDownAt = None
            self.state = GRANTING
            return actions + [GrantLease(self.ttl)]
        self._renewed(sentAt, ttl)
        if self.state == INHERITING:
            self.state = CAMPAIGNING
            written, self._written = self._written, None
            if written is not None:
                return self.keyWritten(written)
        return []

    def keyWritten(self, result: TxnResult) -> list[Action]:
        """
        The answer to L{Create} or L{Replace}.
        """
        if self.state == INHERITING:
            # Kept until the inherited lease's renewal is confirmed.
            self._written = result
            return []
        if self.state != CAMPAIGNING:
            return []
        assert self.lease is not None
        if result.succeeded:
            return self._lead(result.revision)
        current = result.current
        if current is not None and current.lease == self.lease:
            # Our own earlier write, repeated after a timeout: it counted.
            return self._lead(current.modRevision)
        if current is None:
            return [Create(self.lease)]
        self.state = FOLLOWING
        return [WatchKey(result.revision + 1)]

    def _lead(self, term: int) -> list[Action]:
        assert self.lease is not None
        self.state = LEADING
        self.term = term
        return [Elected(term, self.lease)]

    def keyRead(self, current: KeyValue | None, revision: int) -> list[Action]:
        """
        The answer to L{ReadKey}, or a change seen by the watch (a deleted
        key reads as C{None}).
        """
        if self.state == LEADING:
            assert self.term is not None
            if revision < self.term:
                # Asked before this leader's own write: not news.
                return []
            if current is None or current.modRevision != self.term:
                assert self.lease is not None
                return self._stepDown("the election key is no longer ours") + [
                    Create(self.lease)
                ]
            return []
        if self.state == FOLLOWING and current is None and self.lease is not None:
            self.state = CAMPAIGNING
            return [Create(self.lease)]
        return []

    def watched(self, events: list[WatchEvent], revision: int) -> list[Action]:
        """
        Changes to the key seen by the watch; the last one counts.
        """
        last = events[-1]
        if self.state == LEADING and last.kv.modRevision < (self.term or 0):
            # A change from before this leader's own write, which a watch
            # started again from an older revision repeats (a follower's
            # watch goes on once it leads): not news, and stepping down for
            # it would make this process lead again with the same term.
            return []
        return self.keyRead(None if last.kind == "DELETE" else last.kv, revision)

    def requestFailed(self, action: Action, now: float, reason: str) -> list[Action]:
        """
        A request failed (etcd unavailable, garbage, refused): ask again
        after L{retryDelay}.  A leader's renewals are retried by L{tick}, and
        its deadline stands.

        The first failure after an answer is logged as a warning, the
        following ones (as many as etcd stays away) only at debug level.
        """
        if self.state in (IDLE, STOPPED):
            return []
        self.failures += 1
        if self.failures == 1:
            _log.warn(
                "etcd could not take {action}: {reason}; "
                "{what} while it stays away, asking every {delay:.2f} s",
                action=type(action).__name__,
                reason=reason,
                what=(
                    "the host steps down at its renew deadline"
                    if self.state == LEADING
                    else "waiting without hosting"
                ),
                delay=self.retryDelay,
            )
        else:
            _log.debug(
                "etcd could not take {action} ({failures} failures in a row): {reason}",
                action=type(action).__name__,
                failures=self.failures,
                reason=reason,
            )
        if self.state == LEADING:
            return []
        # Two requests may be in flight (an inheritance's renewal and
        # rewrite): each failed one is asked again.
        # (Actions are tuples: KeepAlive(7) == Replace(7), hence the types.)
        if not any(type(a) is type(action) and a == action for a in self._retry):
            self._retry.append(action)
        self._retryAt = now + self.retryDelay
        return []

    def answered(self) -> None:
        """
        etcd answered a request: a streak of failures, if any, is over.
        """
        if self.failures:
            _log.info(
                "etcd answers again, after {failures} failed requests",
                failures=self.failures,
            )
            self.failures = 0

    def tick(self, now: float) -> list[Action]:
        """
        The time is C{now} (at or after L{wakeAt}): step down at the renew
        deadline, renew when due, ask again what failed.
        """
        actions: list[Action] = []
        if self.state == LEADING and self._stepDownAt is not None:
            if now >= self._stepDownAt:
                actions += self._stepDown(
                    "no lease renewal confirmed within the renew deadline"
                )
                assert self.lease is not None
                # Revoked, if etcd can still be reached, so that another
                # machine need not wait for it to expire.
                actions.append(RevokeLease(self.lease))
                self.state = GRANTING
                self.lease = None
                self._nextRenewal = self._stepDownAt = None
                return actions + [GrantLease(self.ttl)]
        if self._retryAt is not None and now >= self._retryAt:
            self._retryAt = None
            actions += self._retry
            self._retry = []
        if self._nextRenewal is not None and now >= self._nextRenewal:
            assert self.lease is not None
            # Until answered, the next renewal is a retry interval away.
            self._nextRenewal = now + self.retryDelay
            actions.append(KeepAlive(self.lease))
            if self.state == LEADING:
                actions.append(ReadKey())
        if self.state != LEADING:
            # A follower holds no deadline: it hosts nothing.
            self._stepDownAt = None
        return actions

    def _stepDown(self, reason: str) -> list[Action]:
        assert self.term is not None
        term, self.term = self.term, None
        self.state = CAMPAIGNING
        _log.warn("stepping down from term {term}: {reason}", term=term, reason=reason)
        return [SteppedDown(term, reason)]

    def stop(self) -> list[Action]:
        """
        Give up: a leader steps down and deletes its key (so that the others
        campaign at once), and the lease is revoked.
        """
        actions: list[Action] = []
        if self.state == LEADING:
            assert self.term is not None
            term = self.term
            actions += self._stepDown("stopped") + [DeleteKey(term)]
        if self.lease is not None:
            actions.append(RevokeLease(self.lease))
        self.state = STOPPED
        self.lease = None
        self._stepDownAt = self._nextRenewal = self._retryAt = None
        return actions

    def abandon(self) -> list[Action]:
        """
        Stop without giving anything back, leaving the lease to a local heir
        (which reads it from the lease file): a leader steps down, its key
        and lease stay.
        """
        actions = (
            self._stepDown("handed to a local heir") if self.state == LEADING else []
        )
        self.state = STOPPED
        self._stepDownAt = self._nextRenewal = self._retryAt = None
        return actions


class CampaignDriver:
    """
    Runs a L{Campaign} against etcd through an L{EtcdClient}.

    @param onElected: called with (term, lease) when this machine becomes
        the host.
    @param onSteppedDown: called with (term, reason) when it stops being
        the host; the caller must stop accepting at once.
    @param candidateKey: if given, where this machine says it campaigns:
        the record is written there under each lease the campaign holds,
        so that it goes with the lease (for C{twisted-channel status}).
    @param onFollowing: if given, called (perhaps more than once) when the
        campaign follows another machine's host: this machine will not host
        until that one's key is gone.
    """

    def __init__(
        self,
        reactor: Any,
        client: EtcdClient,
        key: bytes,
        record: HostRecord,
        campaign: Campaign,
        onElected: Callable[[int, int], None],
        onSteppedDown: Callable[[int, str], None],
        candidateKey: bytes | None = None,
        onFollowing: Callable[[], None] | None = None,
    ) -> None:
        self._reactor = reactor
        self.client = client
        self.key = key
        self.record = record
        self.campaign = campaign
        self._onElected = onElected
        self._onSteppedDown = onSteppedDown
        self._onFollowing = onFollowing
        self._timer: Any = None
        self._watch: Any = None
        self.candidateKey = candidateKey
        # The lease the candidate key was written (or is being written)
        # under.
        self._announced: int | None = None

    def start(self, inheritedLease: int | None = None) -> None:
        """
        Start campaigning (see L{Campaign.start}).
        """
        self._run(self.campaign.start(self._reactor.seconds(), inheritedLease))

    def stop(self) -> Any:
        """
        Step down, delete the key, revoke the lease.

        @return: a Deferred firing when etcd has been told (or could not be).
        """
        from twisted.internet.defer import gatherResults

        self._cancelTimers()
        pending = self._run(self.campaign.stop())
        return gatherResults(pending).addBoth(lambda _: None)

    def abandon(self) -> None:
        """
        Step down and stop, leaving key and lease for a local heir.
        """
        self._cancelTimers()
        self._run(self.campaign.abandon())

    def _cancelTimers(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _schedule(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        wakeAt = self.campaign.wakeAt
        if wakeAt is not None and self.campaign.state != STOPPED:
            delay = max(0.0, wakeAt - self._reactor.seconds())
            self._timer = self._reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._run(self.campaign.tick(self._reactor.seconds()))

    def _run(self, actions: list[Action]) -> list[Any]:
        pending = []
        for action in actions:
            d = self._do(action)
            if d is not None:
                pending.append(d)
        self._schedule()
        return pending

    def _answer(self, action: Action, feed: Callable[[Any], list[Action]]) -> Any:
        def ok(result: Any) -> None:
            self.campaign.answered()
            self._run(feed(result))

        def failed(failure: Any) -> None:
            if not failure.check(EtcdError):
                _log.failure("unexpected failure of an etcd request", failure)
            self._run(
                self.campaign.requestFailed(
                    action, self._reactor.seconds(), str(failure.value)
                )
            )

        return lambda d: d.addCallbacks(ok, failed)

    def _announce(self, lease: int) -> None:
        """
        Write the candidate key under C{lease}, once per lease; a failure
        is tried again with the lease's next use (its next renewal).
        """
        if self.candidateKey is None or self._announced == lease:
            return
        self._announced = lease

        def failed(failure: Any) -> None:
            if self._announced == lease:
                self._announced = None
            _log.debug(
                "could not say this machine campaigns: {reason}",
                reason=failure.getErrorMessage(),
            )

        self.client.put(self.candidateKey, self.record.encode(), lease).addErrback(
            failed
        )

    def _do(self, action: Action) -> Any:
        c, client, now = self.campaign, self.client, self._reactor.seconds()
        # Not while inheriting: the candidate key already names this machine
        # under the inherited lease (with the dead predecessor's pid, until
        # the next renewal), and a third request would compete with the
        # takeover's two.
        if isinstance(action, (KeepAlive, Create, Replace)) and c.state not in (
            STOPPED,
            INHERITING,
        ):
            self._announce(action.lease)
        if isinstance(action, GrantLease):
            return self._answer(action, lambda lease: c.leaseGranted(lease, now))(
                client.grantLease(action.ttl)
            )
        if isinstance(action, KeepAlive):
            return self._answer(action, lambda ttl: c.keepAliveAnswered(ttl, now))(
                client.keepAlive(action.lease)
            )
        if isinstance(action, ReadKey):
            return self._answer(action, lambda answer: c.keyRead(*answer))(
                client.get(self.key)
            )
        if isinstance(action, Create):
            return self._answer(action, c.keyWritten)(
                client.createIfAbsent(self.key, self.record.encode(), action.lease)
            )
        if isinstance(action, Replace):
            return self._answer(action, c.keyWritten)(
                client.replaceIfLease(self.key, self.record.encode(), action.lease)
            )
        if isinstance(action, WatchKey):
            if self._watch is not None:
                self._watch.cancel()

            def onEvents(events: list[WatchEvent], revision: int) -> None:
                self._run(c.watched(events, revision))

            watch = client.watch(self.key, action.fromRevision, onEvents)
            self._watch = watch
            if self._onFollowing is not None:
                self._onFollowing()

            def ended(result: object) -> None:
                if self._watch is watch:
                    self._watch = None
                    if c.state == "following":
                        # Read the key to learn what the watch would have
                        # said, then watch again from there.
                        self._run([ReadKey(), WatchKey(action.fromRevision)])

            watch.done.addBoth(ended)
            return None
        if isinstance(action, DeleteKey):
            return client.deleteIfRevision(self.key, action.modRevision).addErrback(
                lambda f: _log.failure("could not delete the election key", f)
            )
        if isinstance(action, RevokeLease):
            return client.revokeLease(action.lease).addErrback(
                lambda f: _log.failure("could not revoke the lease", f)
            )
        if isinstance(action, Elected):
            _log.info("elected host with term {term}", term=action.term)
            self._onElected(action.term, action.lease)
            return None
        if isinstance(action, SteppedDown):
            self._onSteppedDown(action.term, action.reason)
            return None
        raise AssertionError(action)  # pragma: no cover


def writeNumberFile(path: str, number: int, prefix: str) -> None:
    """
    Record C{number} in C{path} for a local heir: written to a temporary
    file (mode 0600, its name starting with C{prefix}) beside it and renamed
    into place, so that a reader finds the old number or the new one.
    """
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=prefix)
    try:
        os.write(fd, b"%d\n" % number)
        os.close(fd)
        os.rename(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def readNumberFile(path: str, what: str, limit: int) -> int | None:
    """
    The number a local predecessor recorded in C{path} with
    L{writeNumberFile}.

    @param what: what the number is, for the log line about a file that
        holds none.
    @return: the number, or C{None} if there is no such file, it cannot be
        read, or it does not hold a number from 1 to C{limit - 1} (then it
        is ignored and logged).
    """
    try:
        with open(path, "rb") as f:
            text = f.read(64).strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        _log.warn(
            "ignoring a {what} file that cannot be read: {path}: {e}",
            what=what,
            path=path,
            e=e,
        )
        return None
    if not text.isdigit() or not 0 < int(text) < limit:
        _log.warn(
            "ignoring a {what} file that holds no {what}: {path}", what=what, path=path
        )
        return None
    return int(text)


def writeLeaseFile(path: str, lease: int) -> None:
    """
    Record the lease a local leader campaigns with, for a local heir.
    """
    writeNumberFile(path, lease, ".lease-")


def readLeaseFile(path: str) -> int | None:
    """
    The lease a local predecessor recorded, or C{None} if there is none or
    the file does not hold one (it is then ignored and logged).
    """
    return readNumberFile(path, "lease", 2**63)
