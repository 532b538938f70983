"""
The bus: its protocol in memory, where links can be cut at will, then real
processes, with and without a host killed mid-stream.

The guarantee tested is the one the bus states (see
L{twisted_channel.bus}): while a sender and a receiver stay on the bus, the
receiver gets every message the sender publishes after the receiver joined,
exactly once and in order, across host deaths; what cannot be had is
reported, never skipped silently.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_channel.bus import (
    BusMessage,
    BusProtocol,
    BusRelay,
    BusServerFactory,
)
from twisted_channel.testing import ChannelProcesses, ChildProcess

PARTICIPANT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "bus_participant.py"
)


# In memory


class _Wire:
    """
    A participant's transport in L{_Network}.
    """

    def __init__(self, network: _Network, index: int) -> None:
        self.network = network
        self.index = index
        self.closed = False

    def write(self, data: bytes) -> None:
        self.network.sent(self.index, data)

    def loseConnection(self) -> None:
        self.closed = True


class _Network:
    """
    Participants and a host that relays to those linked now.

    A participant that is not linked keeps what it writes and sends it when
    it links again, as the channel does; what the host relays while a
    participant is not linked is lost to it, as with a real host that dies.
    """

    def __init__(self, count: int, **options: object) -> None:
        self.clock = Clock()
        self.now = 1000
        self.delivered: list[list[tuple[str, int, bytes]]] = []
        self.lost: list[list[tuple[str, int, int]]] = []
        self.participants: list[BusProtocol] = []
        self.linked: list[bool] = []
        self.backlog: list[list[bytes]] = []
        self.queue: deque[tuple[int, bytes]] = deque()
        for _ in range(count):
            self.add(**options)

    def tick(self) -> int:
        self.now += 1
        return self.now

    def add(self, **options: object) -> int:
        index = len(self.participants)
        delivered: list[tuple[str, int, bytes]] = []
        lost: list[tuple[str, int, int]] = []

        def onMessage(message: BusMessage) -> None:
            delivered.append((message.sender, message.sequence, message.data))

        def onLost(sender: str, first: int, last: int) -> None:
            lost.append((sender, first, last))

        protocol = BusProtocol(onMessage, onLost, self.clock, **options)  # type: ignore[arg-type]
        protocol._monotonic = self.tick
        protocol.makeConnection(_Wire(self, index))  # type: ignore[arg-type]
        self.participants.append(protocol)
        self.delivered.append(delivered)
        self.lost.append(lost)
        self.linked.append(False)
        self.backlog.append([])
        return index

    def sent(self, index: int, data: bytes) -> None:
        if self.linked[index]:
            self.queue.append((index, data))
        else:
            self.backlog[index].append(data)

    def link(self, index: int) -> None:
        self.linked[index] = True
        backlog, self.backlog[index] = self.backlog[index], []
        for data in backlog:
            self.queue.append((index, data))
        self.participants[index].linkEstablished(None)
        self.run()

    def unlink(self, index: int) -> None:
        self.run()
        self.linked[index] = False

    def run(self) -> None:
        while self.queue:
            source, data = self.queue.popleft()
            for index, protocol in enumerate(self.participants):
                if index != source and self.linked[index]:
                    protocol.dataReceived(data)

    def publish(self, index: int, *payloads: bytes) -> None:
        for payload in payloads:
            self.participants[index].publish(payload)
        self.run()

    def data(self, index: int, sender: int) -> list[bytes]:
        senderId = self.participants[sender].id.hex()
        return [data for who, _, data in self.delivered[index] if who == senderId]


def numbered(tag: str, first: int, last: int) -> list[bytes]:
    return [b"%s:%d" % (tag.encode(), n) for n in range(first, last + 1)]


def test_allLinkedEveryoneGetsEveryoneElsesInOrder() -> None:
    network = _Network(3)
    for index in range(3):
        network.link(index)
    for number in range(1, 21):
        for index in range(3):
            network.publish(index, b"%d:%d" % (index, number))
    for receiver in range(3):
        assert len(network.delivered[receiver]) == 40
        for sender in range(3):
            expected = [] if sender == receiver else numbered(str(sender), 1, 20)
            assert network.data(receiver, sender) == expected
        assert network.lost[receiver] == []


def test_aReceiverBetweenHostsGetsWhatItMissedOnce() -> None:
    """
    Relays made while a receiver has no link are asked for again and
    delivered in order, once, whether the loss shows as a gap (more
    messages follow) or only at the end of the stream.
    """
    network = _Network(2)
    network.link(0)
    network.link(1)
    network.publish(0, *numbered("a", 1, 5))
    network.unlink(1)
    network.publish(0, *numbered("a", 6, 10))
    network.link(1)
    # The end of the stream was lost: the receiver's announcement on its new
    # link makes the sender say how far it got.
    assert network.data(1, 0) == numbered("a", 1, 10)
    network.unlink(1)
    network.publish(0, *numbered("a", 11, 15))
    network.link(1)
    network.publish(0, *numbered("a", 16, 20))
    assert network.data(1, 0) == numbered("a", 1, 20)
    assert network.lost[1] == []


def test_aSenderBetweenHostsResendsAndDuplicatesAreDropped() -> None:
    network = _Network(2)
    network.link(0)
    network.link(1)
    network.publish(0, *numbered("a", 1, 3))
    network.unlink(0)
    network.publish(0, *numbered("a", 4, 6))
    network.link(0)
    # The channel resends to a new host what the old one had relayed but not
    # acknowledged: the receiver sees it twice and delivers it once.
    for data in list(network.participants[0]._history)[:3]:
        network.participants[1].dataReceived(data[3])
    assert network.data(1, 0) == numbered("a", 1, 6)


def test_bothBetweenHostsAtOnce() -> None:
    network = _Network(3)
    for index in range(3):
        network.link(index)
    network.publish(0, *numbered("a", 1, 3))
    network.unlink(1)
    network.publish(0, *numbered("a", 4, 6))
    network.unlink(0)
    network.publish(0, *numbered("a", 7, 9))
    network.publish(2, *numbered("c", 1, 3))
    network.link(0)
    network.publish(0, *numbered("a", 10, 12))
    network.link(1)
    assert network.data(1, 0) == numbered("a", 1, 12)
    assert network.data(1, 2) == numbered("c", 1, 3)
    assert network.data(2, 0) == numbered("a", 1, 12)


def test_aLateJoinerStartsWhereItJoined() -> None:
    network = _Network(1)
    network.link(0)
    network.publish(0, *numbered("a", 1, 10))
    late = network.add()
    network.link(late)
    network.publish(0, *numbered("a", 11, 12))
    assert network.data(late, 0) == numbered("a", 11, 12)
    assert network.lost[late] == []


def test_aLateJoinerThatMissesItsFirstMessagesAsksForThemByTime() -> None:
    network = _Network(1)
    network.link(0)
    network.publish(0, *numbered("a", 1, 3))
    late = network.add()
    network.link(late)
    network.unlink(late)
    network.publish(0, *numbered("a", 4, 6))
    network.link(late)
    network.publish(0, b"a:7")
    assert network.data(late, 0) == numbered("a", 4, 7)


def test_whatTheSenderNoLongerHoldsIsReportedLost() -> None:
    network = _Network(2, historySize=3)
    network.link(0)
    network.link(1)
    network.publish(0, *numbered("a", 1, 2))
    network.unlink(1)
    network.publish(0, *numbered("a", 3, 10))
    network.link(1)
    senderId = network.participants[0].id.hex()
    assert network.lost[1] == [(senderId, 3, 7)]
    assert network.data(1, 0) == numbered("a", 1, 2) + numbered("a", 8, 10)
    assert network.participants[1].lost == 5


def test_aSenderThatLeftIsGivenUpOnAfterTheGapTimeout() -> None:
    network = _Network(2, gapTimeout=5.0)
    network.link(0)
    network.link(1)
    network.publish(0, b"a:1")
    network.unlink(1)
    network.publish(0, b"a:2")
    network.link(1)
    network.unlink(1)
    network.publish(0, b"a:3")
    # The sender leaves; the receiver comes back and only ever hears a:4,
    # which was relayed to it before the sender went.
    network.linked[0] = False
    network.linked[1] = True
    a4 = network.participants[0].publish(b"a:4")
    assert a4 == 4
    network.participants[1].dataReceived(network.backlog[0][-1])
    assert network.data(1, 0) == [b"a:1", b"a:2"]
    network.clock.advance(4.9)
    assert network.lost[1] == []
    network.clock.advance(0.5)
    senderId = network.participants[0].id.hex()
    assert network.lost[1] == [(senderId, 3, 3)]
    assert network.data(1, 0) == [b"a:1", b"a:2", b"a:4"]


def test_somethingThatIsNotAnEnvelopeIsDropped() -> None:
    network = _Network(1)
    network.link(0)
    network.participants[0].dataReceived(b"")
    network.participants[0].dataReceived(b"hello")
    network.participants[0].dataReceived(b"M" + b"\0" * 3)
    assert network.delivered[0] == []


def test_publishingSomethingElseThanBytesIsAnError() -> None:
    network = _Network(1)
    with pytest.raises(TypeError):
        network.participants[0].publish("text")  # type: ignore[arg-type]


def test_relayWritesToEveryOtherLink() -> None:
    factory = BusServerFactory()
    written: dict[int, list[bytes]] = {}
    links: list[BusRelay] = []
    for index in range(3):
        relay = factory.buildProtocol(None)

        class Transport:
            def __init__(self, index: int) -> None:
                written[index] = []
                self.index = index

            def write(self, data: bytes) -> None:
                written[self.index].append(data)

        relay.makeConnection(Transport(index))  # type: ignore[arg-type]
        links.append(relay)
    links[1].dataReceived(b"x")
    assert written == {0: [b"x"], 1: [], 2: [b"x"]}
    assert factory.relayed == 2
    links[0].connectionLost(Failure(Exception("gone")))
    links[1].dataReceived(b"y")
    assert written == {0: [b"x"], 1: [], 2: [b"x", b"y"]}


# Real processes


pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def children(
    channelDirectory: str, request: pytest.FixtureRequest
) -> Iterator[ChannelProcesses]:
    reactorName = request.config.getoption("reactor", "default")
    group = ChannelProcesses(
        channelDirectory, "asyncio" if reactorName == "asyncio" else "default"
    )
    try:
        yield group
    finally:
        group.reapAll()


def participant(
    children: ChannelProcesses,
    tag: str,
    expect: int,
    *extra: str,
    candidate: bool = False,
) -> ChildProcess:
    arguments = [
        sys.executable,
        PARTICIPANT,
        "participant",
        "--dir",
        children.directory,
        "--name",
        "bus",
        "--tag",
        tag,
        "--expect",
        str(expect),
        "--reactor",
        children.reactorName,
        *extra,
    ]
    if candidate:
        arguments.append("--candidate")
    return children.start(arguments)


def relay(children: ChannelProcesses) -> ChildProcess:
    return children.start(
        [
            sys.executable,
            PARTICIPANT,
            "relay",
            "--dir",
            children.directory,
            "--name",
            "bus",
            "--reactor",
            children.reactorName,
        ]
    )


def finish(participants: list[ChildProcess], tags: list[str], count: int) -> None:
    """
    Wait for every participant to receive all the others' messages, in
    order, then make each leave and check it does, promptly.
    """
    for child in participants:
        child.waitFor(lambda line: line.startswith("SENT"), 30)
    for child in participants:
        child.waitFor(lambda line: line.startswith("COMPLETE"), 30)
    for child in participants:
        child.send("quit")
    for child, tag in zip(participants, tags, strict=True):
        summary = child.waitFor(lambda line: line.startswith("SUMMARY"), 10)
        expected = ",".join(
            f"{other}={count}" for other in sorted(tags) if other != tag
        )
        assert summary == f"SUMMARY {expected}"
        stats = child.waitFor(lambda line: line.startswith("STATS"), 10)
        print(tag, stats)
        child.waitFor(lambda line: line.startswith("CLOSED"), 15)
        assert child.wait(10) == 0
        lines = child.collect()
        assert not [line for line in lines if line.startswith(("DISORDER", "LOST"))]


def test_fourParticipantsEachGetTheOthersThreeThousand(
    children: ChannelProcesses,
) -> None:
    """
    Four processes, each a candidate host too, each publish 1,000 messages;
    each receives the 3,000 of the others, in order per sender.
    """
    tags = ["p0", "p1", "p2", "p3"]
    participants = [participant(children, tag, 3000, candidate=True) for tag in tags]
    for child in participants:
        child.waitFor(lambda line: line == "JOINED")
    for child in participants:
        child.send("go")
    finish(participants, tags, 1000)


def test_hostsKilledMidStreamLoseNothing(children: ChannelProcesses) -> None:
    """
    The same with the relay in separate processes, whose host is killed
    with SIGKILL twice while the participants publish: nobody hangs, and
    each still gets all 3,000 messages of the others, in order, once.
    """
    relays = [relay(children) for _ in range(3)]
    for child in relays:
        child.waitFor(lambda line: line.startswith("ROLE"))
    tags = ["p0", "p1", "p2", "p3"]
    participants = [
        participant(children, tag, 3000, "--slice", "10", "--interval", "0.004")
        for tag in tags
    ]
    for child in participants:
        child.waitFor(lambda line: line == "JOINED")
    for child in participants:
        child.send("go")
    for threshold in (200, 500):
        participants[0].waitFor(lambda line, t=threshold: line == f"PROGRESS {t}")
        hosts = [child for child in relays if child.role() == "host"]
        assert len(hosts) == 1
        hosts[0].kill(signal.SIGKILL)
        hosts[0].wait()
        relays.remove(hosts[0])
        deadline = time.monotonic() + 10
        while not any(child.role() == "host" for child in relays):
            assert time.monotonic() < deadline, "no relay took over"
            time.sleep(0.01)
    finish(participants, tags, 1000)
