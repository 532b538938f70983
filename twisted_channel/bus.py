"""
A machine-local message bus on a channel: each message one participant
publishes reaches every other participant, with no broker to start.

The process that hosts the channel runs a L{BusServerFactory}, which relays
each message from one link to every other link.  Every participant runs a
L{BusProtocol}, usually through L{joinBus}, and writes only the callback::

    from twisted_channel.bus import joinBus

    def received(message):
        print(message.sender, message.data)

    bus = await joinBus(reactor, "events", received)
    bus.publish(b"hello")
    ...
    await bus.close()

By default every participant is also a candidate host, so whichever process
joins first hosts the relay and the others take over if it goes.

B{The delivery guarantee.}  A participant I{joins} when its first link to a
host is up (L{BusProtocol.whenJoined} fires).  While both a sender and a
receiver stay on the bus, the receiver gets every message the sender
publishes after the receiver joined: exactly once, in the order the sender
published them, and also across the death of any number of hosts
(C{SIGKILL} included).  It may get some messages published a little before
it joined; it never gets a message twice or out of order.

B{How.}  The channel acknowledges each message to the host, but not the
host's relays to the other participants: a host that dies can take relays
with it, and a participant that is between hosts misses what the new host
relays meanwhile.  So the bus numbers each sender's messages.  A receiver
holds back what arrives after a gap and asks the sender for the missing
ones (a I{NAK}); the sender keeps its recent messages (C{historySize} and
C{historyBytes}) and publishes them again.  After every change of host
each participant announces how far it has published, so that a loss at the
end of a stream is noticed too, and asks the others to do the same.
Duplicates (a message the dead host had relayed, resent by the channel to
the new one) are recognised and dropped.  A participant that reads too
slowly for the host (more than the channel's C{maxBufferSize} waiting to be
sent to it) has relays dropped, and recovers them the same way.

B{What can be lost}, and is then reported to the receiver's
C{onLost(sender, first, last)} callback (by default, a log line), never
skipped silently:

 - messages that the sender no longer holds when the receiver asks for
   them (more than C{historySize} messages or C{historyBytes} bytes
   published since): the sender answers that they are gone;
 - messages of a sender that has left the bus (closed, or died) that a
   receiver had not received: the receiver waits C{gapTimeout} seconds for
   them, then gives up.  A sender that dies can also take the I{last}
   messages of its stream with it unnoticed, since nobody else knows they
   existed.

After a reported loss the messages held back behind it are delivered.
Participants compare publication times on C{CLOCK_MONOTONIC} to know
where a newcomer starts, so all of them must share one clock: one machine,
one time namespace.
"""

from __future__ import annotations

import os
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ._endpoint import DEFAULT_TIMEOUT, ChannelEndpoint
from ._interfaces import (
    ChannelBufferFullError,
    ChannelClosedError,
    IChannelLinkObserver,
)

__all__ = [
    "DEFAULT_GAP_TIMEOUT",
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_HISTORY_SIZE",
    "ENVELOPE_OVERHEAD",
    "BusClientFactory",
    "BusMessage",
    "BusProtocol",
    "BusRelay",
    "BusServerFactory",
    "joinBus",
]

_log = Logger()

#: How many of its own messages a participant keeps for resending.
DEFAULT_HISTORY_SIZE = 100_000
#: How many bytes of its own messages a participant keeps for resending.
DEFAULT_HISTORY_BYTES = 64 * 1024 * 1024
#: Seconds a receiver waits for the missing messages of a sender before it
#: reports them lost and goes on.
DEFAULT_GAP_TIMEOUT = 10.0
#: Seconds between two requests for the same missing messages.
RETRY_INTERVAL = 0.25

# Envelope kinds: the first byte of every message on a bus.
_MESSAGE = 0x4D  # 'M': sender, sequence, publication time, previous time, data
_HEAD = 0x48  # 'H': sender, last sequence, its publication time
_SYNC = 0x53  # 'S': sender, time it joined: "tell me your heads"
_NAK = 0x4E  # 'N': requester, target, first, last, since
_GONE = 0x47  # 'G': sender, target, first, last: "I no longer hold these"

_MESSAGE_HEADER = struct.Struct(">B8sQQQ")
_HEAD_BODY = struct.Struct(">B8sQQ")
_SYNC_BODY = struct.Struct(">B8sQ")
_NAK_BODY = struct.Struct(">B8s8sQQQ")
_GONE_BODY = struct.Struct(">B8s8sQQ")

#: Bytes the bus adds to each published message.
ENVELOPE_OVERHEAD = _MESSAGE_HEADER.size


@dataclass(frozen=True)
class BusMessage:
    """
    One message received from the bus.

    @ivar sender: the sending participant's id, 16 hexadecimal digits (see
        L{BusProtocol.id}).
    @ivar sequence: the message's number among the sender's messages, from 1.
    @ivar data: what the sender published.
    """

    sender: str
    sequence: int
    data: bytes


class BusRelay(Protocol):
    """
    The host's end of one participant's link: what arrives is relayed to
    every other participant.
    """

    def __init__(self, server: BusServerFactory) -> None:
        self.server = server
        self.factory = server

    def connectionMade(self) -> None:
        self.server.links.add(self)

    def dataReceived(self, data: bytes) -> None:
        self.server.relay(self, data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.server.links.discard(self)


class BusServerFactory(Factory):
    """
    Serves a channel as a bus: each message received on one link is written
    to every other link, unchanged and in the order received.

    It does not look inside messages, so any client may use it; the
    participants' L{BusProtocol} does the numbering, the gap detection and
    the resending.

    @ivar links: the links connected now.
    @ivar relayed: how many messages were relayed (counting each copy).
    @ivar dropped: how many copies were not relayed because the participant
        reads too slowly (more than the channel's C{maxBufferSize} waits to
        be sent to it) or accepts smaller messages; it asks the sender for
        them again when it notices the gap.
    """

    noisy = False

    def __init__(self) -> None:
        self.links: set[BusRelay] = set()
        self.relayed = 0
        self.dropped = 0

    def buildProtocol(self, addr: IAddress | None) -> BusRelay:
        return BusRelay(self)

    def relay(self, origin: BusRelay, data: bytes) -> None:
        """
        Write C{data} to every link but C{origin}.
        """
        for link in list(self.links):
            if link is origin or link.transport is None:
                continue
            try:
                link.transport.write(data)
            except (ValueError, ChannelBufferFullError) as e:
                # Too large for that participant, or it reads too slowly: it
                # will see the gap and ask the sender again.
                self.dropped += 1
                _log.warn("bus: not relayed to a participant: {reason}", reason=str(e))
            else:
                self.relayed += 1


@dataclass
class _Sender:
    """
    What a receiver knows about one sender.

    @ivar next: the sequence number of the next message to deliver, or
        L{None} while the receiver does not know where to start.
    @ivar known: the highest sequence number the sender is known to have
        published.
    @ivar held: messages received after a gap, by sequence number.
    """

    next: int | None = None
    known: int = 0
    held: dict[int, bytes] = field(default_factory=dict)
    lastRequest: float = float("-inf")
    gapSince: float | None = None

    def hasGap(self) -> bool:
        return self.next is None or self.known >= self.next


def _defaultLost(sender: str, first: int, last: int) -> None:
    start = "the start" if first == 0 else str(first)
    _log.warn(
        "bus: messages {start} to {last} of participant {sender} are lost",
        start=start,
        last=last,
        sender=sender,
    )


@implementer(IChannelLinkObserver)
class BusProtocol(Protocol):
    """
    A participant of a bus, on a channel served by L{BusServerFactory}.

    Connect it through the channel's client endpoint (L{joinBus} does); each
    message another participant publishes is passed to C{onMessage} as a
    L{BusMessage}.  See the module's documentation for what is promised.

    @param onMessage: called with each L{BusMessage}, in order per sender.
    @param onLost: called with C{(sender, first, last)} when messages
        C{first} to C{last} of C{sender} cannot be had (C{first} is 0 when
        the start of the loss is not known); by default, a log line.
    @param clock: for timers; by default the global reactor.
    @param historySize: how many of its own messages this participant keeps
        for others that missed them.
    @param historyBytes: how many bytes of them it keeps.
    @param gapTimeout: seconds to wait for missing messages before
        reporting them lost.

    @ivar id: this participant's random 8-byte id.
    @ivar published: how many messages this participant published.
    @ivar received: how many messages were passed to C{onMessage}.
    @ivar lost: how many messages were reported lost (where known).
    @ivar duplicates: how many messages received twice were dropped.
    @ivar requested: how many times this participant asked a sender for
        messages it missed.
    @ivar resent: how many of its own messages it published again because
        another participant missed them.
    @ivar port: the candidacy L{joinBus} made for this participant, if any;
        withdrawn when the connection ends.
    @ivar closeReason: why the connection ended, once it has.
    """

    def __init__(
        self,
        onMessage: Callable[[BusMessage], object],
        onLost: Callable[[str, int, int], object] | None = None,
        clock: IReactorTime | None = None,
        historySize: int = DEFAULT_HISTORY_SIZE,
        historyBytes: int = DEFAULT_HISTORY_BYTES,
        gapTimeout: float = DEFAULT_GAP_TIMEOUT,
    ) -> None:
        if historySize < 1 or historyBytes < 1:
            raise ValueError("historySize and historyBytes must be at least 1")
        self.onMessage = onMessage
        self.onLost = onLost if onLost is not None else _defaultLost
        self._clock = clock
        self.historySize = historySize
        self.historyBytes = historyBytes
        self.gapTimeout = gapTimeout
        self.id = os.urandom(8)
        self.published = 0
        self.received = 0
        self.lost = 0
        self.duplicates = 0
        self.requested = 0
        self.resent = 0
        self._lastTime = 0
        # (sequence, publication time, previous publication time, envelope)
        self._history: deque[tuple[int, int, int, bytes]] = deque()
        self._historyBytes = 0
        self._trimmedTime = 0
        self._joined: int | None = None
        self._senders: dict[bytes, _Sender] = {}
        self._retry: IDelayedCall | None = None
        self._joinWaiters: list[Deferred[BusProtocol]] = []
        self._closeWaiters: list[Deferred[None]] = []
        self._closed = False
        self._finished = False
        self.closeReason: Failure | None = None
        self.port: IListeningPort | None = None
        self._monotonic: Callable[[], int] = time.monotonic_ns

    def __repr__(self) -> str:
        return f"<BusProtocol {self.id.hex()} published={self.published}>"

    @property
    def clock(self) -> IReactorTime:
        """
        The clock of this participant's timers.
        """
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        assert self._clock is not None
        return self._clock

    @property
    def joined(self) -> bool:
        """
        Whether a link to a host has been up: messages published from then
        on reach this participant.
        """
        return self._joined is not None

    def whenJoined(self) -> Deferred[BusProtocol]:
        """
        A Deferred that fires with this protocol once it has joined the bus
        (its first link to a host is up).
        """
        if self._joined is not None:
            return succeed(self)
        waiter: Deferred[BusProtocol] = Deferred()
        self._joinWaiters.append(waiter)
        return waiter

    # Publishing

    def publish(self, data: bytes) -> int:
        """
        Send C{data} to every other participant.  It is buffered if no host
        is reachable now.

        @return: the message's sequence number.
        @raise ValueError: if it is over the channel's message size limit
            less L{ENVELOPE_OVERHEAD}.
        @raise twisted_channel.ChannelClosedError: after L{close}.
        """
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        assert self.transport is not None, "not connected to a channel"
        now = max(self._monotonic(), self._lastTime)
        sequence = self.published + 1
        envelope = (
            _MESSAGE_HEADER.pack(_MESSAGE, self.id, sequence, now, self._lastTime)
            + data
        )
        self.transport.write(envelope)
        self.published = sequence
        self._history.append((sequence, now, self._lastTime, envelope))
        self._historyBytes += len(envelope)
        self._lastTime = now
        self._trimHistory()
        return sequence

    def _trimHistory(self) -> None:
        history = self._history
        while len(history) > 1 and (
            len(history) > self.historySize or self._historyBytes > self.historyBytes
        ):
            _, published, _, envelope = history.popleft()
            self._historyBytes -= len(envelope)
            self._trimmedTime = published

    def close(self) -> Deferred[None]:
        """
        Leave the bus once every message published so far is acknowledged
        by a host, and withdraw the candidacy in L{port}, if any.

        @return: a Deferred that fires when all that is done.
        """
        waiter = self.whenClosed()
        if not self._closed and self.transport is not None:
            self.transport.loseConnection()
        return waiter

    def whenClosed(self) -> Deferred[None]:
        """
        A Deferred that fires when this participant's connection has ended
        (L{closeReason} says why) and its candidacy, if any, is withdrawn.
        """
        waiter: Deferred[None] = Deferred()
        if self._finished:
            waiter.callback(None)
        else:
            self._closeWaiters.append(waiter)
        return waiter

    def _send(self, envelope: bytes) -> None:
        if self.transport is None or self._closed:
            return
        try:
            self.transport.write(envelope)
        except ChannelBufferFullError as e:
            # A resend or an announcement can wait: whoever needs it asks
            # again.
            _log.warn("bus: not sent now: {reason}", reason=str(e))
        except ChannelClosedError:
            # Leaving: nobody needs this participant's announcements now.
            pass

    # Links

    def linkEstablished(self, host: object) -> None:
        """
        A link to a host is up: announce how far this participant has
        published, ask the others to do the same, and ask again for what is
        still missing.
        """
        if self._joined is None:
            self._joined = self._monotonic()
            waiters, self._joinWaiters = self._joinWaiters, []
            for waiter in waiters:
                waiter.callback(self)
        self._send(_HEAD_BODY.pack(_HEAD, self.id, self.published, self._lastTime))
        self._send(_SYNC_BODY.pack(_SYNC, self.id, self._joined))
        for senderId, sender in self._senders.items():
            if sender.hasGap():
                self._request(senderId, sender, force=True)

    def linkLost(self, reason: Failure) -> None:
        """
        The link to the host is gone; the channel looks for the next one.
        """

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = True
        self.closeReason = reason
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        port, self.port = self.port, None
        withdrawn: Deferred[Any] = succeed(None)
        if port is not None:
            withdrawn = port.stopListening() or succeed(None)

        def finished(result: object) -> None:
            self._finished = True
            waiters, self._closeWaiters = self._closeWaiters, []
            for waiter in waiters:
                waiter.callback(None)

        withdrawn.addBoth(finished)

    # Receiving

    def dataReceived(self, data: bytes) -> None:
        kind = data[0] if data else None
        try:
            if kind == _MESSAGE:
                _, sender, sequence, published, previous = _MESSAGE_HEADER.unpack_from(
                    data
                )
                if sender != self.id:
                    self._message(
                        sender, sequence, published, previous, data[ENVELOPE_OVERHEAD:]
                    )
            elif kind == _HEAD:
                _, sender, sequence, published = _HEAD_BODY.unpack(data)
                if sender != self.id:
                    self._head(sender, sequence, published)
            elif kind == _SYNC:
                _SYNC_BODY.unpack(data)
                self._send(
                    _HEAD_BODY.pack(_HEAD, self.id, self.published, self._lastTime)
                )
            elif kind == _NAK:
                _, requester, target, first, last, since = _NAK_BODY.unpack(data)
                if target == self.id:
                    self._resend(requester, first, last, since)
            elif kind == _GONE:
                _, sender, target, first, last = _GONE_BODY.unpack(data)
                if target == self.id:
                    self._gone(sender, first, last)
            else:
                raise struct.error(f"unknown envelope kind {kind}")
        except struct.error as e:
            _log.warn(
                "bus: dropping a message that is not a bus envelope ({reason})",
                reason=str(e),
            )

    def _joinedAt(self) -> int:
        if self._joined is None:
            self._joined = self._monotonic()
        return self._joined

    def _message(
        self,
        senderId: bytes,
        sequence: int,
        published: int,
        previous: int,
        data: bytes,
    ) -> None:
        sender = self._senders.get(senderId)
        if sender is None:
            sender = self._senders[senderId] = _Sender()
        if sequence > sender.known:
            sender.known = sequence
        if sender.next is None:
            joined = self._joinedAt()
            if sequence == 1 or published < joined or previous < joined:
                # Nothing before this one was published after we joined.
                sender.next = sequence
            else:
                sender.held[sequence] = data
                self._request(senderId, sender)
                return
        if sequence < sender.next or sequence in sender.held:
            self.duplicates += 1
            return
        sender.held[sequence] = data
        self._deliver(senderId, sender)
        if sender.hasGap():
            self._request(senderId, sender)

    def _head(self, senderId: bytes, sequence: int, published: int) -> None:
        sender = self._senders.get(senderId)
        if sender is None:
            sender = self._senders[senderId] = _Sender()
        if sequence > sender.known:
            sender.known = sequence
        if sender.next is None and (sequence == 0 or published < self._joinedAt()):
            sender.next = sequence + 1
            self._deliver(senderId, sender)
        if sender.hasGap():
            self._request(senderId, sender)
        elif sender.next is not None and not sender.held:
            sender.gapSince = None

    def _deliver(self, senderId: bytes, sender: _Sender) -> None:
        held = sender.held
        assert sender.next is not None
        hexId = senderId.hex()
        while sender.next in held:
            sequence = sender.next
            data = held.pop(sequence)
            sender.next = sequence + 1
            self.received += 1
            try:
                self.onMessage(BusMessage(hexId, sequence, data))
            except Exception:
                _log.failure("bus: the message callback raised")
        if not sender.hasGap():
            sender.gapSince = None

    def _missing(self, sender: _Sender) -> tuple[int, int]:
        """
        The first run of missing sequence numbers, as C{(first, last)};
        C{first} is 0 while the start is not known.
        """
        first = 0 if sender.next is None else sender.next
        last = min(sender.held) - 1 if sender.held else sender.known
        return first, last

    def _request(self, senderId: bytes, sender: _Sender, force: bool = False) -> None:
        now = self.clock.seconds()
        newGap = sender.gapSince is None
        if newGap:
            sender.gapSince = now
        if force or newGap or now - sender.lastRequest >= RETRY_INTERVAL:
            sender.lastRequest = now
            first, last = self._missing(sender)
            since = self._joinedAt() if sender.next is None else 0
            self.requested += 1
            self._send(_NAK_BODY.pack(_NAK, self.id, senderId, first, last, since))
        self._scheduleRetry()

    def _scheduleRetry(self) -> None:
        if self._retry is None and not self._closed:
            self._retry = self.clock.callLater(RETRY_INTERVAL, self._retryGaps)

    def _retryGaps(self) -> None:
        self._retry = None
        now = self.clock.seconds()
        for senderId, sender in list(self._senders.items()):
            if not sender.hasGap():
                continue
            if sender.gapSince is not None and now - sender.gapSince >= self.gapTimeout:
                first, last = self._missing(sender)
                self._giveUp(senderId, sender, first, last)
            else:
                self._request(senderId, sender)

    def _giveUp(self, senderId: bytes, sender: _Sender, first: int, last: int) -> None:
        if sender.next is not None:
            first = max(first, sender.next)
        if last >= first:
            self.lost += last - first + 1 if first else 0
            try:
                self.onLost(senderId.hex(), first, last)
            except Exception:
                _log.failure("bus: the loss callback raised")
        if sender.next is None or last + 1 > sender.next:
            sender.next = last + 1
        for sequence in [s for s in sender.held if s < sender.next]:
            del sender.held[sequence]
        sender.gapSince = None
        sender.lastRequest = float("-inf")
        self._deliver(senderId, sender)
        if sender.hasGap():
            self._request(senderId, sender)

    def _gone(self, senderId: bytes, first: int, last: int) -> None:
        sender = self._senders.get(senderId)
        if sender is None or (sender.next is not None and last < sender.next):
            return
        self._giveUp(senderId, sender, first, last)

    def _resend(self, requester: bytes, first: int, last: int, since: int) -> None:
        """
        Another participant misses messages C{first} to C{last} of ours (or,
        with C{since}, those published since then): publish them again, and
        say which are gone.
        """
        last = min(last, self.published)
        history = self._history
        oldest = history[0][0] if history else self.published + 1
        if since:
            if self._trimmedTime >= since and oldest > 1:
                self._send(_GONE_BODY.pack(_GONE, self.id, requester, 0, oldest - 1))
            entries = [entry for entry in history if entry[1] >= since]
            if not entries and self.published:
                # Nothing since then: say where to start.
                self._send(
                    _HEAD_BODY.pack(_HEAD, self.id, self.published, self._lastTime)
                )
                return
        else:
            if first < oldest:
                self._send(
                    _GONE_BODY.pack(
                        _GONE, self.id, requester, first, min(last, oldest - 1)
                    )
                )
                first = oldest
            if first > last:
                return
            entries = [history[s - oldest] for s in range(first, last + 1)]
        for entry in entries:
            if entry[0] > last:
                break
            self.resent += 1
            self._send(entry[3])


class BusClientFactory(Factory):
    """
    Builds a L{BusProtocol} for the channel's client endpoint::

        factory = BusClientFactory(lambda message: print(message.data))
        bus = await clientFromString(reactor, "channel:events").connect(factory)
        bus.publish(b"hello")

    Its arguments are those of L{BusProtocol}.
    """

    noisy = False

    def __init__(
        self,
        onMessage: Callable[[BusMessage], object],
        onLost: Callable[[str, int, int], object] | None = None,
        clock: IReactorTime | None = None,
        **options: Any,
    ) -> None:
        self.onMessage = onMessage
        self.onLost = onLost
        self.clock = clock
        self.options = options

    def buildProtocol(self, addr: IAddress | None) -> BusProtocol:
        protocol = BusProtocol(self.onMessage, self.onLost, self.clock, **self.options)
        protocol.factory = self
        return protocol


def joinBus(
    reactor: Any,
    name: str,
    onMessage: Callable[[BusMessage], object],
    *,
    directory: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    candidate: bool = True,
    onLost: Callable[[str, int, int], object] | None = None,
    transport: str | None = None,
    **options: Any,
) -> Deferred[BusProtocol]:
    """
    Join the bus on channel C{name}.

    @param candidate: whether this process also stands as a candidate host
        of the bus (the default): then no other process is needed, and the
        relay moves to another participant if this one goes.  With C{False},
        some other process must host it (for example one running
        C{strports.service("channel:NAME", BusServerFactory())}).
    @param directory: the channel's runtime directory, as in
        L{ChannelEndpoint}.
    @param timeout: seconds without any host after which the connection
        fails, as in L{ChannelEndpoint}; C{0} waits for ever.
    @param transport: C{"unix"} or C{"tcp"}, as in L{ChannelEndpoint}.
    @param onLost: see L{BusProtocol}.
    @param options: C{historySize}, C{historyBytes}, C{gapTimeout}: see
        L{BusProtocol}.

    @return: a Deferred that fires with the L{BusProtocol} at once (its
        C{publish} buffers until a host is reached; its
        L{BusProtocol.whenJoined} says when messages start arriving), or
        fails if the name or directory is not valid or safe.  When the
        protocol's connection ends (L{BusProtocol.close}), this process's
        candidacy is withdrawn too, handing the relay to another candidate.
    """
    try:
        endpoint = ChannelEndpoint(
            reactor, name, directory=directory, timeout=timeout, transport=transport
        )
    except Exception as e:
        return fail(e)
    factory = BusClientFactory(onMessage, onLost, reactor, **options)

    def connect(port: IListeningPort | None) -> Deferred[BusProtocol]:
        def connected(protocol: BusProtocol) -> BusProtocol:
            protocol.port = port
            return protocol

        def failed(reason: Failure) -> Failure:
            if port is not None:
                port.stopListening()
            return reason

        connecting: Deferred[Any] = endpoint.connect(factory)
        return connecting.addCallbacks(connected, failed)

    if candidate:
        return endpoint.listen(BusServerFactory()).addCallback(connect)
    return connect(None)
