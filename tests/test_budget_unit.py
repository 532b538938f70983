"""
The host-wide budget (C{maxHostBufferSize=}) with stand-in socket
transports and a fake clock: writes past it are refused, and producers of
links that hold bytes are paused while the links hold more than half of it,
until their own link has sent what it held.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from twisted_channel import ChannelBufferFullError, _budget
from twisted_channel._budget import RECHECK_INTERVAL, BudgetedProducer, HostBudget


class Socket:
    """
    A link's socket transport holding C{held} unsent bytes.
    """

    connected = True

    def __init__(self, held: int = 0) -> None:
        self.held = held


class Producer:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


@pytest.fixture(autouse=True)
def heldBytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        _budget, "bufferedBytes", lambda transport: getattr(transport, "held", 0)
    )


def test_writesPastTheBudgetAreRefused() -> None:
    budget = HostBudget(1000, Clock(), "jobs")
    budget.admit(1000)
    with pytest.raises(ChannelBufferFullError, match="maxHostBufferSize=1000"):
        budget.admit(1001)
    first = Socket(600)
    budget.wrote(first, None)
    budget.admit(400)
    with pytest.raises(ChannelBufferFullError, match="already hold 600 unsent"):
        budget.admit(401)
    # What a link has sent counts no more.
    first.held = 0
    budget.admit(1000)


def test_linksThatGoAwayCountNoMore() -> None:
    budget = HostBudget(1000, Clock(), "jobs")
    gone = Socket(900)
    budget.wrote(gone, None)
    gone.connected = False
    budget.admit(1000)


def budgeted(budget: HostBudget, socket: Socket, streaming: bool = True) -> Any:
    producer = Producer()
    return producer, BudgetedProducer(producer, streaming, socket, budget)


def test_producersOfHoldingLinksPausedOverHalfUntilTheirLinkDrains() -> None:
    clock = Clock()
    budget = HostBudget(1000, clock, "jobs")
    frozenSocket, readingSocket = Socket(), Socket()
    frozen, frozenProxy = budgeted(budget, frozenSocket)
    reading, readingProxy = budgeted(budget, readingSocket)
    frozenSocket.held = 400
    budget.wrote(frozenSocket, frozenProxy)
    assert frozen.calls == []
    frozenSocket.held = 501
    budget.wrote(frozenSocket, frozenProxy)
    assert frozen.calls == ["pause"]
    # A link that sends at once holds nothing: its producer goes on.
    budget.wrote(readingSocket, readingProxy)
    assert reading.calls == []
    # One that holds bytes now is paused too, and resumed once it drained.
    readingSocket.held = 10
    budget.wrote(readingSocket, readingProxy)
    assert reading.calls == ["pause"]
    readingSocket.held = 0
    clock.advance(RECHECK_INTERVAL)
    assert reading.calls == ["pause", "resume"]
    assert frozen.calls == ["pause"]
    frozenSocket.held = 0
    clock.advance(RECHECK_INTERVAL)
    assert frozen.calls == ["pause", "resume"]
    assert clock.getDelayedCalls() == []


def test_socketAndBudgetPausesCombine() -> None:
    """
    A producer paused by both its socket and the budget is resumed only
    when both let it.
    """
    clock = Clock()
    budget = HostBudget(100, clock, "jobs")
    socket = Socket()
    producer, proxy = budgeted(budget, socket)
    proxy.pauseProducing()
    socket.held = 90
    budget.wrote(socket, proxy)
    assert producer.calls == ["pause"]
    proxy.resumeProducing()
    assert producer.calls == ["pause"]
    socket.held = 0
    clock.advance(RECHECK_INTERVAL)
    assert producer.calls == ["pause", "resume"]


def test_pullProducerAskedOnlyWhenTheBudgetLetsIt() -> None:
    clock = Clock()
    budget = HostBudget(100, clock, "jobs")
    socket = Socket()
    producer, proxy = budgeted(budget, socket, streaming=False)
    socket.held = 90
    budget.wrote(socket, proxy)
    assert producer.calls == []
    # The socket drained and asks for more: held back.
    proxy.resumeProducing()
    assert producer.calls == []
    socket.held = 0
    clock.advance(RECHECK_INTERVAL)
    assert producer.calls == ["resume"]


def test_stoppedProducerForgotten() -> None:
    clock = Clock()
    budget = HostBudget(100, clock, "jobs")
    socket = Socket(90)
    producer, proxy = budgeted(budget, socket)
    budget.wrote(socket, proxy)
    proxy.stopProducing()
    assert producer.calls == ["pause", "stop"]
    socket.held = 0
    clock.advance(RECHECK_INTERVAL)
    assert producer.calls == ["pause", "stop"]
    assert clock.getDelayedCalls() == []
