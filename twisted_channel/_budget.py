"""
A host's budget of memory for what its application writes to clients:
the unsent host-to-client bytes of all its links together
(C{maxHostBufferSize=}), on top of each link's own cap (C{maxBufferSize=}).

A write that would pass the budget raises L{ChannelBufferFullError}, as
one past a link's cap does.  While the links hold more than half of it,
a producer registered on a link that holds unsent bytes is paused, until
that link has sent them all: slow or frozen clients stop their own
producers, and the others go on.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from ._interfaces import ChannelBufferFullError
from ._sockets import bufferedBytes

#: Seconds between the checks of whether links whose producers the budget
#: paused have sent what they held.
RECHECK_INTERVAL = 0.05


class HostBudget:
    """
    The unsent bytes of one host's links, against its C{maxHostBufferSize}.

    Only links that held bytes after a write are looked at: a link whose
    client reads hands everything to the kernel at once and holds nothing.

    @ivar limit: the budget, in bytes.
    @ivar holding: the socket transports that held unsent bytes after a
        write (empty: any write up to L{limit} fits, which a writer may test
        before calling L{admit}).
    """

    def __init__(self, limit: int, clock: IReactorTime, name: str) -> None:
        self.limit = limit
        self._clock = clock
        self._name = name
        self.holding: dict[Any, None] = {}
        self._paused: set[BudgetedProducer] = set()
        self._recheck: LoopingCall | None = None

    def held(self) -> int:
        """
        The unsent bytes the links hold now.
        """
        total = 0
        for transport in list(self.holding):
            count = bufferedBytes(transport)
            if not count or not getattr(transport, "connected", False):
                # Sent, or gone with its link (and its buffer with it).
                del self.holding[transport]
                continue
            total += count
        return total

    def admit(self, size: int) -> None:
        """
        Check that a write of C{size} bytes fits.

        @raise ChannelBufferFullError: if it would pass the budget.
        """
        if not self.holding:
            if size <= self.limit:
                return
            held = 0
        else:
            held = self.held()
            if held + size <= self.limit:
                return
        raise ChannelBufferFullError(
            f"channel {self._name!r}: the host's links already hold {held} "
            f"unsent bytes; another {size} would pass "
            f"maxHostBufferSize={self.limit} (clients are not reading: "
            "register producers, which are paused before this happens)"
        )

    def wrote(self, transport: Any, producer: BudgetedProducer | None) -> None:
        """
        A write went to C{transport}, whose registered producer is
        C{producer}: pause it if its link holds bytes while the links hold
        more than half the budget.
        """
        if not bufferedBytes(transport):
            return
        self.holding[transport] = None
        if producer is None or producer.budgetPaused:
            return
        if self.held() * 2 > self.limit:
            producer.pauseForBudget()
            self._paused.add(producer)
            if self._recheck is None:
                self._recheck = LoopingCall(self._releaseDrained)
                self._recheck.clock = self._clock
                self._recheck.start(RECHECK_INTERVAL, now=False)

    def forget(self, producer: BudgetedProducer) -> None:
        """
        C{producer} is unregistered, or its link is gone.
        """
        self._paused.discard(producer)

    def _releaseDrained(self) -> None:
        for producer in list(self._paused):
            if not bufferedBytes(producer.transport):
                self._paused.discard(producer)
                producer.resumeAfterBudget()
        if not self._paused and self._recheck is not None:
            recheck, self._recheck = self._recheck, None
            recheck.stop()


@implementer(IPushProducer)
class BudgetedProducer:
    """
    What a link's socket transport is given in place of the producer an
    application registers on the link: it passes the socket's pauses and
    resumptions on, and adds the budget's.  A pull producer is asked for
    more only when neither holds it back.
    """

    def __init__(
        self, producer: Any, streaming: bool, transport: Any, budget: HostBudget
    ) -> None:
        self.producer = producer
        self.streaming = streaming
        self.transport = transport
        self._budget = budget
        self.budgetPaused = False
        self._socketPaused = False
        # A pull producer's request for more, held back by the budget.
        self._pullWanted = False

    def pauseProducing(self) -> None:
        self._socketPaused = True
        if not self.budgetPaused:
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        self._socketPaused = False
        if self.budgetPaused:
            self._pullWanted = not self.streaming
            return
        self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self._budget.forget(self)
        self.producer.stopProducing()

    def pauseForBudget(self) -> None:
        self.budgetPaused = True
        if self.streaming and not self._socketPaused:
            self.producer.pauseProducing()

    def resumeAfterBudget(self) -> None:
        self.budgetPaused = False
        if self.streaming:
            if not self._socketPaused:
                self.producer.resumeProducing()
        elif self._pullWanted:
            self._pullWanted = False
            self.producer.resumeProducing()
