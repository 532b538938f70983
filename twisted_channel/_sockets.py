"""
What the channel asks of Twisted's socket transports beyond their public
interfaces: how much they hold, sending it now, sending without them when
they hold nothing, reading without their layers, and how much waits
unread in the kernel.

They rely on L{twisted.internet.abstract.FileDescriptor}'s buffering and on
L{twisted.internet.tcp.Connection}'s socket (the TCP and Unix transports of
every POSIX reactor, asyncio's included); any other transport is used
through its public interface only.
"""

from __future__ import annotations

import fcntl
import struct
import termios
from collections.abc import Callable

from twisted.internet import main, tcp, unix
from twisted.internet.error import ConnectionDone, ConnectionLost

# The read methods readDirectly knows it may stand in for: the Unix one
# reads ancillary data for descriptor passing, which links never use.
_PLAIN_READS = (
    tcp.Connection.doRead,
    getattr(unix._SendmsgMixin, "doRead", tcp.Connection.doRead),
)


def bufferedBytes(transport: object) -> int:
    """
    How many bytes C{transport} holds that the kernel has not taken yet.
    """
    # FileDescriptor keeps a buffer flushed in part and a list of writes not
    # yet joined to it; it has no public accessor for their size.
    dataBuffer = getattr(transport, "dataBuffer", b"")
    offset: int = getattr(transport, "offset", 0)
    pending: int = getattr(transport, "_tempDataLen", 0)
    return len(dataBuffer) - offset + pending


def pushToKernel(transport: object) -> None:
    """
    Hand what C{transport} buffered to the kernel now, instead of on the
    reactor's next iteration.

    Call it only at the end of handling a read: a reply then leaves in the
    same iteration as the request arrived, which takes a reactor iteration
    off every hop of a round trip.  Any error is left for the reactor to
    find, as it would have on its own.
    """
    if not getattr(transport, "connected", False) or getattr(
        transport, "disconnecting", True
    ):
        return
    if not bufferedBytes(transport):
        return
    doWrite = getattr(transport, "doWrite", None)
    if doWrite is not None:
        doWrite()


def sendNow(transport: object, data: bytes) -> None:
    """
    Write C{data} to C{transport}, handing it straight to the kernel when
    the transport holds nothing: a write through Twisted would ask the
    reactor to watch for writability, send on its next iteration and stop
    watching (two C{epoll_ctl} calls and an iteration).  What the kernel
    does not take, or any error, is left to the transport as usual.
    """
    if (
        not isinstance(transport, tcp.Connection)
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
        or bufferedBytes(transport)
    ):
        transport.write(data)  # type: ignore[attr-defined]
        return
    try:
        sent = transport.socket.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        # The transport finds the error itself when it tries.
        transport.write(data)
        return
    if sent < len(data):
        transport.write(data[sent:])


def unreadBytes(transport: object) -> int:
    """
    How many bytes the kernel holds for C{transport} that it has not read
    yet; 0 if it cannot tell (a transport with no socket).
    """
    try:
        fileno = transport.getHandle().fileno()  # type: ignore[attr-defined]
        answer = fcntl.ioctl(fileno, termios.FIONREAD, b"\0\0\0\0")
    except Exception:
        return 0
    count: int = struct.unpack("i", answer)[0]
    return count


def readDirectly(transport: object, dataReceived: Callable[[bytes], None]) -> bool:
    """
    Have the reactor hand what C{transport} reads straight to
    C{dataReceived}, with one C{recv}, instead of through the transport's
    general read (for Unix sockets a C{recvmsg} that looks for passed
    descriptors) and the endpoint's wrapping protocol: fewer calls on every
    hop of a round trip.  The transport ends the connection as it would
    have, on end of file or an error.

    @return: whether it could; a transport it does not know is left as it
        is.
    """
    if not isinstance(transport, tcp.Connection) or (
        type(transport).doRead not in _PLAIN_READS
    ):
        return False
    receive = transport.socket.recv
    size = transport.bufferSize

    def doRead() -> ConnectionDone | ConnectionLost | None:
        try:
            data = receive(size)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        dataReceived(data)
        return None

    # An attribute of the instance, found before the class's method by the
    # reactor's lookup of doRead.
    transport.doRead = doRead  # type: ignore[method-assign]
    return True
