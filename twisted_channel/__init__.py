"""
twisted-channel: a self-hosting inter-process channel for Twisted.

Several processes of one user on one machine share a named channel.  The
first that can host it does so inside itself, elected by a file lock; the
others connect to it.  When the host dies or stops, a standby takes over
and every client goes on, resending what the old host had not
acknowledged.

Use it through endpoint strings (C{channel:NAME[:key=value]...}) with
C{serverFromString} / C{clientFromString}, or through L{ChannelEndpoint}.

The public names are those in C{__all__}; every other module is private.
"""

from ._address import ChannelAddress
from ._client import ChannelClientTransport
from ._directory import UnsafeDirectoryError
from ._election import ChannelLockMismatchError
from ._endpoint import (
    DEFAULT_MAX_BUFFER_SIZE,
    DEFAULT_MAX_HOST_BUFFER_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_TIMEOUT,
    ChannelEndpoint,
)
from ._host import ChannelPort
from ._interfaces import (
    ChannelBufferFullError,
    ChannelClosedError,
    ChannelHostLostError,
    ChannelUnreachableError,
    IChannelLinkObserver,
)
from ._pending import PendingWrites
from ._reconnection import ChannelReconnectingFactory

__version__ = "0.1.0"

__all__ = [
    "ChannelAddress",
    "ChannelBufferFullError",
    "ChannelClientTransport",
    "ChannelClosedError",
    "ChannelEndpoint",
    "ChannelHostLostError",
    "ChannelLockMismatchError",
    "ChannelPort",
    "ChannelReconnectingFactory",
    "ChannelUnreachableError",
    "DEFAULT_MAX_BUFFER_SIZE",
    "DEFAULT_MAX_HOST_BUFFER_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_TIMEOUT",
    "IChannelLinkObserver",
    "PendingWrites",
    "UnsafeDirectoryError",
]
