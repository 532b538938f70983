"""
The messages a client has written and no host has acknowledged yet.
"""

from __future__ import annotations

from collections import deque
from itertools import repeat, starmap


class PendingWrites:
    """
    An ordered store of a client's unacknowledged messages.

    Each message gets the next sequence number when it is appended.  A host
    acknowledges cumulatively; on a new link the host says how far it
    already got, and everything after that is sent again, in order.

    This class does no I/O: the client transport decides when to send.

    @ivar footprint: what holding them costs in memory, as the buffer cap
        counts it: each payload plus L{MESSAGE_OVERHEAD}.
    @ivar messages: the payloads held, oldest first.  A writer may append
        to it directly, adding to L{footprint}, as L{append} does.
    """

    #: Bytes of bookkeeping per message held (the bytes object's header and
    #: its slot in the queue), so that a cap on L{footprint} bounds memory
    #: for small messages too.
    MESSAGE_OVERHEAD = 64

    def __init__(self) -> None:
        self.messages: deque[bytes] = deque()
        self._firstSequence = 1
        self.footprint = 0

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def byteCount(self) -> int:
        """
        The total size of the payloads held: their footprint without the
        overhead of each (kept apart, a write would count twice).
        """
        return self.footprint - len(self.messages) * self.MESSAGE_OVERHEAD

    @property
    def firstSequence(self) -> int:
        """
        The sequence number of the oldest message held, or of the next
        message to be appended when none is held.
        """
        return self._firstSequence

    @property
    def nextSequence(self) -> int:
        """
        The sequence number the next appended message will get.
        """
        return self._firstSequence + len(self.messages)

    def append(self, payload: bytes) -> int:
        """
        Hold C{payload} until it is acknowledged, and return its sequence
        number.
        """
        self.messages.append(payload)
        self.footprint += len(payload) + self.MESSAGE_OVERHEAD
        return self._firstSequence + len(self.messages) - 1

    def acknowledge(self, sequence: int) -> int:
        """
        Forget every message up to and including C{sequence}, and return how
        many were forgotten.  Acknowledgements of messages already forgotten
        change nothing.

        @raise ValueError: if C{sequence} acknowledges a message never
            appended (a host that does this is broken or lying).
        """
        count = sequence - self._firstSequence + 1
        if count <= 0:
            return 0
        messages = self.messages
        if count > len(messages):
            raise ValueError(
                f"acknowledgement of message {sequence}, but the newest message "
                f"is {self.nextSequence - 1}"
            )
        if count == 1:
            # One message per acknowledgement: a round trip's.
            dropped = len(messages.popleft())
        elif count == len(messages):
            dropped = self.byteCount
            messages.clear()
        else:
            # Popped, measured and summed without a Python loop.
            dropped = sum(map(len, starmap(messages.popleft, repeat((), count))))
        self.footprint -= dropped + count * self.MESSAGE_OVERHEAD
        self._firstSequence += count
        return count

    def resumeAfter(self, sequence: int) -> list[bytes]:
        """
        A new link's host already has every message up to C{sequence}:
        forget those, and return the rest, in order, to be sent on it.
        """
        self.acknowledge(sequence)
        return list(self.messages)

    def clear(self) -> int:
        """
        Forget every message, and return how many there were.
        """
        count = len(self.messages)
        self.messages.clear()
        self._firstSequence += count
        self.footprint = 0
        return count
