"""
What the channel asks of Twisted's socket transports beyond their public
interfaces: how much they hold, sending it now, and sending without them
when they hold nothing.

Both rely on L{twisted.internet.abstract.FileDescriptor}'s buffering (used
by the TCP and Unix transports of every POSIX reactor, asyncio's included);
on any other transport they do nothing.
"""

from __future__ import annotations


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
    from twisted.internet.tcp import Connection

    if (
        not isinstance(transport, Connection)
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
