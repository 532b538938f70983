"""
The parts of Twisted's stream transports that mean nothing on a channel
but that Twisted's own protocols call or read: kept here, once, for both
channel transports (the client's logical connection and the host's end of a
link), so that a protocol written for C{tcp:} or C{unix:} runs unchanged.
"""

from __future__ import annotations

import dataclasses

from ._address import ChannelAddress

#: What a channel address over a Unix socket gives as C{host}: the channel
#: never leaves the machine, and twisted.web turns C{getHost().host} into
#: the host name of a request that has no C{Host} header.
LOCAL_HOST = "localhost"


def streamAddress(address: ChannelAddress) -> ChannelAddress:
    """
    C{address} with the C{host} and C{port} a stream transport's address
    has, filled in where it has none (over a Unix socket): C{"localhost"}
    and port C{0}, since twisted.web formats both into URLs.
    """
    if address.host is not None and address.port is not None:
        return address
    return dataclasses.replace(
        address,
        host=LOCAL_HOST if address.host is None else address.host,
        port=0 if address.port is None else address.port,
    )


class SocketOptions:
    """
    C{setTcpNoDelay}, C{setTcpKeepAlive} and their getters, as harmless
    calls: each message leaves at the end of the reactor turn that wrote
    it whatever they say, and a channel notices a dead peer by its own
    means.  The values set are kept and read back, as a TCP transport's
    are.
    """

    _tcpNoDelay = False
    _tcpKeepAlive = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        Remember C{enabled}; the channel never delays a message anyway.
        """
        self._tcpNoDelay = bool(enabled)

    def getTcpNoDelay(self) -> bool:
        """
        @return: what L{setTcpNoDelay} was last given (C{False} at first).
        """
        return self._tcpNoDelay

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """
        Remember C{enabled}; the channel watches its links by itself.
        """
        self._tcpKeepAlive = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        """
        @return: what L{setTcpKeepAlive} was last given (C{False} at first).
        """
        return self._tcpKeepAlive
