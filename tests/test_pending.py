"""
Unit tests for L{twisted_channel._pending.PendingWrites}.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from twisted_channel import PendingWrites


def test_empty() -> None:
    """
    A new store holds nothing and numbers its first message 1.
    """
    pending = PendingWrites()
    assert len(pending) == 0
    assert not pending
    assert pending.byteCount == 0
    assert pending.firstSequence == 1
    assert pending.nextSequence == 1


def test_appendNumbersMessages() -> None:
    """
    Each appended message gets the next sequence number, and its size is
    counted.
    """
    pending = PendingWrites()
    assert pending.append(b"a") == 1
    assert pending.append(b"bb") == 2
    assert pending.append(b"") == 3
    assert len(pending) == 3
    assert pending.byteCount == 3
    assert pending.firstSequence == 1
    assert pending.nextSequence == 4


def test_acknowledge() -> None:
    """
    An acknowledgement is cumulative: it forgets every message up to and
    including its sequence number, and says how many.
    """
    pending = PendingWrites()
    for payload in (b"a", b"bb", b"ccc", b"dddd"):
        pending.append(payload)
    assert pending.acknowledge(2) == 2
    assert pending.firstSequence == 3
    assert pending.byteCount == 7
    assert pending.resumeAfter(2) == [b"ccc", b"dddd"]
    assert pending.acknowledge(4) == 2
    assert len(pending) == 0
    assert pending.byteCount == 0
    assert pending.firstSequence == pending.nextSequence == 5


def test_staleAcknowledgementsIgnored() -> None:
    """
    Acknowledging messages already forgotten (or sequence 0) changes nothing.
    """
    pending = PendingWrites()
    for payload in (b"a", b"bb", b"ccc"):
        pending.append(payload)
    pending.acknowledge(2)
    assert pending.acknowledge(2) == 0
    assert pending.acknowledge(1) == 0
    assert pending.acknowledge(0) == 0
    assert pending.acknowledge(-10) == 0
    assert pending.firstSequence == 3
    assert pending.byteCount == 3
    assert pending.resumeAfter(0) == [b"ccc"]


def test_acknowledgeBeyondNewest() -> None:
    """
    Acknowledging a message never appended raises L{ValueError} naming both
    numbers, and forgets nothing.
    """
    pending = PendingWrites()
    pending.append(b"a")
    pending.append(b"b")
    with pytest.raises(
        ValueError, match="acknowledgement of message 3, but the newest"
    ):
        pending.acknowledge(3)
    with pytest.raises(ValueError, match="newest message is 2"):
        pending.resumeAfter(10)
    assert len(pending) == 2
    assert pending.byteCount == 2
    assert pending.firstSequence == 1


def test_acknowledgeWhenEmpty() -> None:
    """
    With nothing held, any acknowledgement of a new message is refused.
    """
    pending = PendingWrites()
    with pytest.raises(ValueError):
        pending.acknowledge(1)
    pending.append(b"x")
    pending.acknowledge(1)
    with pytest.raises(ValueError, match="message 2, but the newest message is 1"):
        pending.acknowledge(2)


def test_resumeAfter() -> None:
    """
    L{PendingWrites.resumeAfter} forgets what the new host has and returns
    the rest in order, keeping it until acknowledged.
    """
    pending = PendingWrites()
    for i in range(1, 6):
        pending.append(b"m%d" % i)
    assert pending.resumeAfter(0) == [b"m1", b"m2", b"m3", b"m4", b"m5"]
    assert pending.resumeAfter(3) == [b"m4", b"m5"]
    assert len(pending) == 2
    assert pending.resumeAfter(5) == []
    assert len(pending) == 0


def test_clear() -> None:
    """
    L{PendingWrites.clear} forgets everything but keeps numbering.
    """
    pending = PendingWrites()
    for payload in (b"a", b"bb", b"ccc"):
        pending.append(payload)
    pending.acknowledge(1)
    assert pending.clear() == 2
    assert len(pending) == 0
    assert pending.byteCount == 0
    assert pending.firstSequence == 4
    assert pending.append(b"d") == 4
    assert pending.clear() == 1
    assert pending.clear() == 0
    assert pending.nextSequence == 5


class PendingWritesMachine(RuleBasedStateMachine):
    """
    L{PendingWrites} against a model: a list of (sequence, payload) pairs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pending = PendingWrites()
        self.model: list[tuple[int, bytes]] = []
        self.next = 1

    @rule(payload=st.binary(max_size=20))
    def append(self, payload: bytes) -> None:
        assert self.pending.append(payload) == self.next
        self.model.append((self.next, payload))
        self.next += 1

    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        sequence = data.draw(st.integers(-2, self.next - 1), label="sequence")
        before = len(self.model)
        self.model = [(s, p) for s, p in self.model if s > sequence]
        assert self.pending.acknowledge(sequence) == before - len(self.model)

    @rule(beyond=st.integers(0, 5))
    def acknowledgeBeyond(self, beyond: int) -> None:
        with pytest.raises(ValueError):
            self.pending.acknowledge(self.next + beyond)

    @rule(data=st.data())
    def resumeAfter(self, data: st.DataObject) -> None:
        sequence = data.draw(st.integers(0, self.next - 1), label="sequence")
        self.model = [(s, p) for s, p in self.model if s > sequence]
        assert self.pending.resumeAfter(sequence) == [p for _, p in self.model]

    @precondition(lambda self: self.model)
    @rule()
    def clear(self) -> None:
        assert self.pending.clear() == len(self.model)
        self.model = []

    @invariant()
    def agrees(self) -> None:
        pending = self.pending
        assert len(pending) == len(self.model)
        assert pending.byteCount == sum(len(p) for _, p in self.model)
        assert pending.nextSequence == self.next
        if self.model:
            assert pending.firstSequence == self.model[0][0]
        else:
            assert pending.firstSequence == self.next
        assert pending.resumeAfter(0) == [p for _, p in self.model]


PendingWritesMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, deadline=None
)
test_pendingWritesMachine = PendingWritesMachine.TestCase


def test_footprintCountsBookkeeping() -> None:
    """
    The footprint the buffer cap counts is each payload plus a fixed
    overhead per message, and it falls back to zero as messages go.
    """
    pending = PendingWrites()
    overhead = PendingWrites.MESSAGE_OVERHEAD
    for payload in (b"", b"a", b"bb" * 50):
        pending.append(payload)
    assert pending.footprint == 101 + 3 * overhead
    pending.acknowledge(2)
    assert pending.footprint == 100 + overhead
    pending.clear()
    assert pending.footprint == 0
