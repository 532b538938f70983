"""
Property tests of the two sans-IO sessions against each other, in memory:
a client session (L{twisted_channel._clientsession}) and the host sessions
(L{twisted_channel._hostsession}) of successive hosts, with any
interleaving of writes, reads in arbitrary chunks, lost links and new
hosts, over either transport's handshake, keep the README's delivery
promise:

    - within one host's life, each message is delivered exactly once and
      in order;
    - across hosts, at least once and in order;
    - nothing acknowledged is resent to the same host.

No reactor, transport or socket: bytes move between two byte strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_channel import _wire
from twisted_channel._clientsession import (
    ACKNOWLEDGED,
    ClientSession,
    LinkSession,
    Send,
    Welcomed,
)
from twisted_channel._hostsession import (
    OPEN,
    Authenticated,
    DeliveryRecords,
    HelloReceived,
    HostSession,
)

LIMIT = 1 << 17
#: Before any welcome, an eager hello carries messages up to 64 KiB: some
#: payloads are larger, so that some hellos are plain.
SIZES = st.sampled_from([1, 10, 100, 70_000])


def payload(index: int, size: int) -> bytes:
    """
    Message C{index}, C{size} bytes long at least, saying its index.
    """
    head = b"%d:" % index
    return head + b"x" * max(0, size - len(head))


def indexOf(body: bytes) -> int:
    return int(body.split(b":", 1)[0])


@dataclass
class Host:
    """
    One host's life: its delivery records and what its application got.
    """

    records: DeliveryRecords
    live: set[bytes] = field(default_factory=set)
    delivered: list[int] = field(default_factory=list)


@dataclass
class Link:
    """
    One link: the sessions at its two ends and the bytes in flight.
    """

    client: LinkSession
    host: HostSession
    toHost: bytearray = field(default_factory=bytearray)
    toClient: bytearray = field(default_factory=bytearray)


class World:
    """
    A client session, the host of the moment, and the link between them if
    there is one; it checks the promise as bytes move.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        """
        @param secret: over loopback TCP, the secret both ends prove they
            know on each link before the hello; None for Unix sockets.
        """
        self.secret = secret
        self.client = ClientSession(b"c" * 16, 1, LIMIT)
        self.hosts: list[Host] = []
        self.link: Link | None = None
        self.written = 0
        self.acknowledged = 0
        self.newHost()

    @property
    def host(self) -> Host:
        return self.hosts[-1]

    def newHost(self) -> None:
        live: set[bytes] = set()
        self.hosts.append(Host(DeliveryRecords(live), live))
        self.link = None

    def connect(self) -> None:
        if self.link is not None:
            return
        client = self.client.newLink(self.secret)
        host = HostSession(self.host.records, LIMIT, self.secret)
        link = Link(client, host)
        self.link = link
        link.toClient += host.greeting()
        self.clientSends(client.start())

    def lose(self) -> None:
        if self.link is not None and self.link.host.clientId is not None:
            self.host.live.discard(self.link.host.clientId)
        self.link = None

    def write(self, size: int) -> None:
        self.written += 1
        body = payload(self.written, size)
        self.client.pending.append(body)
        link = self.link
        if link is not None and link.client.open:
            # As the client transport does on a link that is up.
            self.clientSends([_wire.frameHeader(_wire.DATA, len(body)), body])

    def clientSends(self, chunks: list[bytes]) -> None:
        assert self.link is not None
        data = b"".join(chunks)
        for kind, body in _wire.FrameDecoder(LIMIT).feed(data):
            if kind == _wire.DATA:
                # What a host acknowledged is never sent to it again.
                assert indexOf(body) > self.acknowledged, (
                    f"message {indexOf(body)} resent after the ack of "
                    f"{self.acknowledged}"
                )
        self.link.toHost += data

    def pumpToHost(self, count: int) -> None:
        link = self.link
        if link is None or not link.toHost:
            return
        data = bytes(link.toHost[:count])
        del link.toHost[:count]
        host = link.host
        while host.state != OPEN:
            event = host.nextHandshakeEvent(data)
            data = b""
            if event is None:
                return
            if isinstance(event, Authenticated):
                link.toClient += event.reply
                continue
            assert isinstance(event, HelloReceived), event
            self.host.live.add(event.hello.clientId)
            link.toClient += host.welcome(2)
        frames = host.receive(data)
        delivered = 0
        for kind, body in frames:
            assert kind == _wire.DATA, kind
            self.host.delivered.append(indexOf(body))
            delivered += 1
        out, ending = host.endBatch(delivered, 0)
        assert not ending
        link.toClient += out

    def pumpToClient(self, count: int) -> None:
        link = self.link
        if link is None or not link.toClient:
            return
        data = bytes(link.toClient[:count])
        del link.toClient[:count]
        for kind, body in link.client.receive(data):
            event = link.client.control(kind, body)
            if event is ACKNOWLEDGED:
                self.acknowledged = self.client.pending.firstSequence - 1
            elif isinstance(event, Send):
                # The next step of the authentication, then the hello.
                self.clientSends(event.chunks)
            else:
                assert isinstance(event, Welcomed), event
                chunks = self.client.resume(link.client, event.welcome)
                # The welcome acknowledges what the host already had.
                self.acknowledged = self.client.pending.firstSequence - 1
                self.clientSends(chunks)

    def settle(self) -> None:
        """
        Let the present host and link run until nothing is in flight.
        """
        self.connect()
        link = self.link
        assert link is not None
        while link.toHost or link.toClient:
            self.pumpToHost(len(link.toHost))
            self.pumpToClient(len(link.toClient))

    def checkPromise(self) -> None:
        previousEnd = 0
        for host in self.hosts:
            delivered = host.delivered
            if not delivered:
                continue
            # Exactly once and in order within one host's life.
            first = delivered[0]
            assert delivered == list(range(first, first + len(delivered)))
            # In order, with no gap, across hosts (at least once).
            assert first <= previousEnd + 1, (previousEnd, delivered)
            previousEnd = max(previousEnd, delivered[-1])
        assert previousEnd == self.written
        assert self.acknowledged == self.written
        assert not self.client.pending


OPERATIONS = st.one_of(
    st.tuples(st.just("write"), SIZES),
    st.tuples(st.just("toHost"), st.integers(1, 200)),
    st.tuples(st.just("toClient"), st.integers(1, 40)),
    st.tuples(st.just("lose"), st.just(0)),
    st.tuples(st.just("connect"), st.just(0)),
    st.tuples(st.just("newHost"), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(OPERATIONS, max_size=60), st.sampled_from([None, b"s" * 32]))
def test_deliveryPromise(
    operations: list[tuple[str, int]], secret: bytes | None
) -> None:
    """
    Over Unix sockets (no secret) and over loopback TCP (a secret proved
    on each link first), the promise holds.
    """
    world = World(secret)
    world.connect()
    for operation, argument in operations:
        if operation == "write":
            world.write(argument)
        elif operation == "toHost":
            world.pumpToHost(argument)
        elif operation == "toClient":
            world.pumpToClient(argument)
        elif operation == "lose":
            world.lose()
        elif operation == "connect":
            world.connect()
        else:
            world.newHost()
    world.settle()
    world.checkPromise()


def test_resendToTheSameHostIsSkipped() -> None:
    """
    A link lost after the host delivered but before its acknowledgement
    arrived: the next link to the same host resends (eagerly), and the
    host recognises and drops the resend.
    """
    world = World()
    world.write(10)
    world.write(10)
    world.connect()
    assert world.link is not None
    world.pumpToHost(len(world.link.toHost))
    world.lose()
    world.settle()
    assert world.host.delivered == [1, 2]
    world.checkPromise()


def test_deliveredButNotAcknowledgedIsDeliveredAgainByTheNextHost() -> None:
    world = World()
    world.write(10)
    world.connect()
    assert world.link is not None
    world.pumpToHost(len(world.link.toHost))
    world.newHost()
    world.settle()
    assert [host.delivered for host in world.hosts] == [[1], [1]]
    world.checkPromise()
