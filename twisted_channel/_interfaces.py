"""
Interfaces and errors the channel defines.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from zope.interface import Interface


class IChannelLinkObserver(Interface):
    """
    Optionally provided by a client protocol that wants to know when the
    channel moves to another host.

    The protocol's C{connectionLost} is called only when the logical
    connection ends; these methods tell about the links beneath it.
    """

    def linkEstablished(host: object) -> None:
        """
        A link to a host is up (the first one, or one after a failover).

        @param host: the host's L{ChannelAddress}, with its pid.
        """

    def linkLost(reason: Failure) -> None:
        """
        The link to the host is gone; the channel is looking for a host and
        buffers writes meanwhile.  Called at the reactor turn after the link
        was lost, once the next attempt is under way (so that nothing done
        here delays it), and always before the next L{linkEstablished} and
        before the protocol's C{connectionLost}.
        """


class ChannelUnreachableError(ConnectionLost):
    """
    No host could be reached for the endpoint's C{timeout}, so the logical
    connection was given up.

    @ivar undelivered: how many written messages no host acknowledged.  If
        the host was frozen rather than dead, some of them may still be
        delivered when it thaws (they waited in its socket); a dead host
        took none of them.
    """

    def __init__(self, name: str, timeout: float, undelivered: int) -> None:
        self.name = name
        self.timeout = timeout
        self.undelivered = undelivered
        super().__init__(
            f"no host of channel {name!r} could be reached for {timeout:g} "
            f"seconds; {undelivered} written message(s) were not acknowledged"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class ChannelHostLostError(ConnectionLost):
    """
    With C{failover=close}, the host of a client's connection was lost (it
    died, froze, or handed over gracefully after its last
    acknowledgements), so the connection ended instead of moving to the
    next host.

    @ivar hostPid: the lost host's pid, where known.
    @ivar undelivered: how many written messages no host acknowledged;
        the lost host may have received some of them.
    """

    def __init__(self, name: str, hostPid: int | None, undelivered: int) -> None:
        self.name = name
        self.hostPid = hostPid
        self.undelivered = undelivered
        who = "the host" if hostPid is None else f"the host (pid {hostPid})"
        super().__init__(
            f"{who} of channel {name!r} was lost and failover=close; "
            f"{undelivered} written message(s) were not acknowledged"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class ChannelClosedError(Exception):
    """
    A write was made on a channel connection that is closing or closed.
    """


class ChannelBufferFullError(Exception):
    """
    A write would make a client hold more unacknowledged bytes than its
    C{maxBufferSize}, or a host hold more unsent bytes than its
    C{maxBufferSize} for one link or its C{maxHostBufferSize} for all of
    them.  Nothing was buffered; register a producer to be paused before
    the cap is reached.
    """
