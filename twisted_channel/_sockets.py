"""
What the channel asks of Twisted beyond its public interfaces, and the one
probe that finds out whether the Twisted in use offers it: how much a
socket transport holds, sending it now, sending without it when it holds
nothing, sending what it holds without joining it, reading without its
layers, the epoll reactor handing a link's reads over without the legacy
logging context, how much waits unread in the kernel, a Unix
listening port made without running its constructor's code (its fields
taken from a port the constructor made once), started on a socket
bound and listening beforehand and accepting with a loop of the channel's
(L{LinkAcceptingPort}), a Unix transport made over a socket the
channel connected itself, and, for links under Twisted's TLS layer,
reading and writing its records with pyOpenSSL's C{SSL_read},
C{SSL_write} and C{BIO_read} on buffers of the channel's (probed apart, by
L{probeTLS}, where pyOpenSSL is installed).

They rely on L{twisted.internet.abstract.FileDescriptor}'s buffering, on
L{twisted.internet.tcp.Connection}'s socket (the TCP and Unix transports of
every POSIX reactor, asyncio's included), on
L{twisted.internet.epollreactor.EPollReactor}'s dispatch of ready
descriptors and on L{twisted.internet.unix.Port}.  L{twistedEdge} probes
each, once, against real instances of those classes over a socket pair;
what the Twisted in use lacks is named in one warning, and the channel goes
without it, through Twisted's public interface.  Nothing else in the
package touches Twisted's private attributes.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import select
import shutil
import socket
import struct
import sys
import tempfile
import termios
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from twisted.internet import abstract, main, tcp, unix
from twisted.internet.address import UNIXAddress
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IReactorFDSet,
    IReadDescriptor,
    IWriteDescriptor,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python import context, log
from twisted.python.failure import Failure
from zope.interface import implementer

_log = Logger()


#: Where a field of a port made by C{unix.Port}'s constructor comes from:
#: one of its arguments (path, factory, backlog, mode, reactor, by their
#: position), a new empty list each time, or a value of its own.
_NEW_LIST = 5
_OWN_VALUE = 6
#: The types of the values a port's field may share with the template's:
#: those nobody changes in place.
_IMMUTABLE = (type(None), bool, int, float, str, bytes)

#: C{unix.Port}'s constructor's fields, in the order it sets them: each its
#: name, its source (an argument's position, L{_NEW_LIST} or
#: L{_OWN_VALUE}) and, for the last, its value.
UnixPortTemplate = tuple[tuple[str, int, object], ...]


@dataclass(frozen=True)
class TwistedEdge:
    """
    What L{probeTwisted} found in the Twisted in use.

    @ivar bufferAccounting: a socket transport's unsent bytes can be
        counted (C{FileDescriptor.dataBuffer}, C{offset} and
        C{_tempDataLen}): the host's per-link cap, L{pushToKernel}.
    @ivar sendImmediately: a socket transport says whether its writing side
        was shut (C{FileDescriptor._writeDisconnected}): L{sendNow},
        L{sendSequenceNow}.
    @ivar unjoinedWrites: the TCP and Unix transports write with
        L{FileDescriptor.doWrite<twisted.internet.abstract.FileDescriptor.doWrite>},
        which, its buffer empty, only does its bookkeeping, and what a
        L{writeUnjoined} transport sends from its buffer arrives whole and in
        order: L{writeUnjoined}.
    @ivar plainReads: the read methods L{readDirectly} knows it may stand
        in for (C{tcp.Connection.doRead}; C{unix._SendmsgMixin.doRead}, which
        also reads ancillary data for descriptor passing, which links never
        use), found to be the TCP and Unix transports' reads; empty when
        they read otherwise, or have no C{socket} and C{bufferSize}.
    @ivar adoptListeningSocket: a Unix listening port, started as
        C{unix.Port.startListening} leaves it but on a socket bound and
        listening beforehand, accepts on it: L{startListeningOn}.
    @ivar unixPortTemplate: what C{unix.Port}'s constructor leaves in a
        new port, field by field (one of its arguments, a new empty list,
        or a value of its own), found by making one port with it; a port
        L{newUnixPort} fills from it holds what one the constructor makes
        does.  L{None} where it does not.
    @ivar unixTransportOver: the reactor's Unix stream transport
        (C{unix.Server}) can be made over a connected socket itself, as
        C{adoptStreamConnection} makes it over a duplicate:
        L{connectUnixLink}.
    @ivar directDispatch: the epoll reactor hands each ready descriptor to
        C{_doReadOrWrite} inside C{log.callWithLogger}, from its
        C{_poller} and C{_selectables}, and a C{doIteration} of the
        channel's that does the same without the logging context for the
        links that read directly serves every descriptor as the reactor's
        own does: L{readDirectly} gives it to the reactor.  False where
        there is no epoll (nothing is lacking then).
    @ivar directAccept: a Unix listening port's accept loop
        (C{tcp.Port.doRead}) may be stood in for by L{LinkAcceptingPort}'s,
        which makes the same transports with less on the way: the sockets'
        C{_accept} gives a descriptor and the peer's name, and a link made
        from them is what Twisted's loop makes.
    @ivar missing: the names of what was not found, for the warning.
    """

    bufferAccounting: bool
    sendImmediately: bool
    unjoinedWrites: bool
    plainReads: tuple[object, ...]
    adoptListeningSocket: bool
    missing: tuple[str, ...]
    directDispatch: bool = False
    unixTransportOver: bool = False
    unixPortTemplate: UnixPortTemplate | None = None
    directAccept: bool = False


@implementer(IReactorFDSet)
class _ProbeReactor:
    """
    Enough of a reactor for a transport the probe makes and never runs:
    it watches nothing.
    """

    def addReader(self, reader: IReadDescriptor) -> None:
        pass

    def addWriter(self, writer: IWriteDescriptor) -> None:
        pass

    def removeReader(self, reader: IReadDescriptor) -> None:
        pass

    def removeWriter(self, writer: IWriteDescriptor) -> None:
        pass

    def removeAll(self) -> list[IReadDescriptor | IWriteDescriptor]:
        return []

    def getReaders(self) -> list[IReadDescriptor]:
        return []

    def getWriters(self) -> list[IWriteDescriptor]:
        return []


@contextmanager
def _probeConnection() -> Iterator[tuple[tcp.Connection, socket.socket]]:
    """
    A real L{tcp.Connection} over one end of a Unix socket pair, marked
    connected, and the other end.
    """
    one, other = socket.socketpair()
    try:
        connection = tcp.Connection(one, Protocol(), _ProbeReactor())
        connection.connected = True
        yield connection, other
    finally:
        one.close()
        other.close()


def _probeBufferAccounting(missing: list[str]) -> bool:
    """
    Whether L{bufferedBytes} counts what a transport holds: write more
    than the kernel takes, flush what it takes, and compare the count with
    what reached the other end.
    """
    with _probeConnection() as (connection, other):
        names = ("dataBuffer", "offset", "_tempDataLen")
        lacking = [n for n in names if not hasattr(connection, n)]
        if lacking:
            missing.extend(f"FileDescriptor.{name}" for name in lacking)
            return False
        connection.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        total = 256 * 1024
        connection.write(b"x" * (total // 2))
        connection.write(b"y" * (total // 2))
        before = _countBuffered(connection)
        connection.doWrite()
        after = _countBuffered(connection)
        taken = _unread(other.fileno())
        if before != total or after != total - taken or not 0 < taken < total:
            missing.append("FileDescriptor.dataBuffer/offset/_tempDataLen counts")
            return False
    return True


def _probeSendImmediately(missing: list[str]) -> bool:
    """
    Whether a transport says, as L{sendNow} asks, that its writing side is
    shut.
    """
    with _probeConnection() as (connection, other):
        if getattr(connection, "_writeDisconnected", None) is not False:
            missing.append("FileDescriptor._writeDisconnected")
            return False
    return True


def _probeUnjoinedWrites(missing: list[str]) -> bool:
    """
    Whether L{writeUnjoined} may stand in for the transports' C{doWrite}:
    they use L{abstract.FileDescriptor}'s, and a transport holding more than
    the kernel takes, written through L{writeUnjoined}, delivers every byte
    once, in order, and counts what it still holds.
    """
    for writes in (tcp.Server, unix.Server):
        if writes.doWrite is not abstract.FileDescriptor.doWrite:
            missing.append(f"{writes.__module__}.{writes.__qualname__}.doWrite")
            return False
    with _probeConnection() as (connection, other):
        if not hasattr(connection, "_tempDataBuffer"):
            missing.append("FileDescriptor._tempDataBuffer")
            return False
        connection.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        other.setblocking(False)
        doWrite = _unjoinedDoWrite(connection)
        pieces = [bytes([n]) * (n * 1100 + 1) for n in range(1, 12)]
        connection.write(pieces[0])
        connection.writeSequence(pieces[1:])
        expected = b"".join(pieces)
        received = bytearray()
        for _ in range(len(expected)):
            if doWrite() is not None:
                break
            try:
                received += other.recv(65536)
            except BlockingIOError:
                pass
            if len(received) == len(expected):
                break
        if received != expected or _countBuffered(connection):
            missing.append("FileDescriptor.doWrite of a buffer sent unjoined")
            return False
    return True


def _probeReadDirectly(missing: list[str]) -> tuple[object, ...]:
    """
    The read methods of the TCP and Unix transports, if they are those that
    L{readDirectly} knows it may stand in for; otherwise none.
    """
    found = True
    sendmsgRead = getattr(getattr(unix, "_SendmsgMixin", None), "doRead", None)
    if sendmsgRead is None:
        missing.append("unix._SendmsgMixin.doRead")
        found = False
    for reads, plain in (
        (tcp.Server, tcp.Connection.doRead),
        (unix.Server, sendmsgRead),
    ):
        if plain is not None and reads.doRead is not plain:
            missing.append(f"{reads.__module__}.{reads.__qualname__}.doRead")
            found = False
    with _probeConnection() as (connection, other):
        if connection.getHandle() is not connection.socket or not isinstance(
            getattr(connection, "bufferSize", None), int
        ):
            missing.append("tcp.Connection.socket/bufferSize")
            found = False
    return (tcp.Connection.doRead, sendmsgRead) if found else ()


class _ProbeFactory(Factory):
    """
    Gives each connection a plain protocol, and keeps them.
    """

    noisy = False

    def __init__(self) -> None:
        self.built: list[Protocol] = []

    def buildProtocol(self, addr: object) -> Protocol:
        protocol = Protocol()
        self.built.append(protocol)
        return protocol


@contextmanager
def _probeListeningSocket() -> Iterator[socket.socket]:
    """
    A Unix socket bound and listening: to an abstract name the kernel
    picks, where there are such (Linux), else in a temporary directory.
    """
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    directory = None
    try:
        try:
            listening.bind("")
        except OSError:
            directory = tempfile.mkdtemp()
            listening.bind(os.path.join(directory, "probe"))
        listening.listen(1)
        listening.setblocking(False)
        yield listening
    finally:
        listening.close()
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def _probeAdoptListeningSocket(missing: list[str]) -> bool:
    """
    Whether a Unix listening port started by L{startListeningOn} on a
    socket bound and listening beforehand accepts on it as one Twisted
    started does: a connection is accepted, and given a protocol and a
    connected transport.
    """
    name = "unix.Port accepting on a socket it did not bind"
    factory = _ProbeFactory()
    try:
        with (
            _probeListeningSocket() as listening,
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client,
        ):
            port = unix.Port(b"\0probe", factory, reactor=_ProbeReactor())
            _startOn(port, listening)
            client.connect(listening.getsockname())
            port.doRead()
            connected: list[bool] = []
            for protocol in factory.built:
                transport = protocol.transport
                if isinstance(transport, tcp.Connection):
                    transport.socket.close()
                    connected.append(bool(transport.connected))
                else:
                    connected.append(False)
            if connected != [True] or port.fileno() != listening.fileno():
                missing.append(name)
                return False
    except Exception:
        missing.append(name)
        return False
    return True


#: The fields of a transport that differ between two links accepted on
#: one port, whoever made them.
_PER_LINK = frozenset(("socket", "fileno", "protocol", "sessionno", "logstr", "repstr"))


def _probeDirectAccept(missing: list[str]) -> bool:
    """
    Whether L{LinkAcceptingPort}'s accept loop may stand in for Twisted's
    (C{tcp.Port.doRead}, which Unix ports use): on a port started on a
    listening socket, a link accepted by each holds the same fields of the
    same values but for those that differ per link, names the same peer
    over a non-blocking socket, and the port counts its sessions and scales
    its accepts as Twisted's loop does.
    """
    name = "tcp.Port.doRead's accept loop, for Unix ports"
    factory = _ProbeFactory()
    try:
        if (
            unix.Port.doRead is not tcp.Port.doRead
            or unix.Port.transport is not unix.Server
        ):
            missing.append(name)
            return False
        with (
            _probeListeningSocket() as listening,
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first,
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as second,
        ):
            port = unix.Port(b"\0probe", factory, reactor=_ProbeReactor())
            _startOn(port, listening)
            first.connect(listening.getsockname())
            unix.Port.doRead(port)
            second.connect(listening.getsockname())
            _acceptLinks(port)
            # Nothing waits now: nothing is made.
            _acceptLinks(port)
            transports = [protocol.transport for protocol in factory.built]
            for transport in transports:
                if isinstance(transport, tcp.Connection):
                    transport.socket.close()
            if len(transports) != 2:
                missing.append(name)
                return False
            theirs, ours = transports
            if not (
                type(ours) is type(theirs)
                and vars(ours).keys() == vars(theirs).keys()
                and all(
                    value == vars(ours)[field]
                    for field, value in vars(theirs).items()
                    if field not in _PER_LINK
                )
                and ours.getPeer() == theirs.getPeer()  # type: ignore[union-attr]
                and ours.sessionno == 1  # type: ignore[union-attr]
                and ours.socket.gettimeout() == 0.0  # type: ignore[union-attr]
                and (port.sessionno, port.numberAccepts) == (2, 1)
            ):
                missing.append(name)
                return False
    except Exception:
        missing.append(name)
        return False
    return True


def _unixPortTemplate() -> UnixPortTemplate | None:
    """
    What C{unix.Port}'s constructor leaves in a port, field by field, found
    by making one with arguments that are objects of their own (the path,
    the backlog and the mode made at run time): a field that is one of them
    is that argument.  L{None} if a field is of a value that could be
    changed in place (other than an empty list).
    """
    arguments = (
        os.fsencode("/probe/template.sock"),
        _ProbeFactory(),
        int("1000003"),
        int("1000019"),
        _ProbeReactor(),
    )
    made = unix.Port(*arguments)
    template: list[tuple[str, int, object]] = []
    for name, value in vars(made).items():
        sources = [i for i, argument in enumerate(arguments) if value is argument]
        if sources:
            template.append((name, sources[0], None))
        elif type(value) is list and not value:
            template.append((name, _NEW_LIST, None))
        elif type(value) in _IMMUTABLE:
            template.append((name, _OWN_VALUE, value))
        else:
            return None
    return tuple(template)


def _fillUnixPort(
    port: unix.Port, template: UnixPortTemplate, arguments: tuple[object, ...]
) -> None:
    fields = vars(port)
    for name, source, value in template:
        if source < _NEW_LIST:
            fields[name] = arguments[source]
        elif source == _NEW_LIST:
            fields[name] = []
        else:
            fields[name] = value


def _probeUnixPortTemplate(missing: list[str]) -> UnixPortTemplate | None:
    """
    What C{unix.Port}'s constructor leaves in a port (L{_unixPortTemplate}),
    if a port filled from it with other arguments holds what one the
    constructor makes with those does: the same attributes, of the same
    values.
    """
    name = "unix.Port's constructor's attributes"
    try:
        template = _unixPortTemplate()
        arguments = (b"/probe/s.sock", _ProbeFactory(), 7, 0o640, _ProbeReactor())
        made = unix.Port(*arguments)
        filled = unix.Port.__new__(unix.Port)
        if template is not None:
            _fillUnixPort(filled, template, arguments)
        if template is None or vars(made) != vars(filled):
            missing.append(name)
            return None
    except Exception:
        missing.append(name)
        return None
    return template


class _WatchingProbeReactor(_ProbeReactor):
    """
    A probe's reactor that records what it was asked to watch for reading.
    """

    def __init__(self) -> None:
        self.readers: list[IReadDescriptor] = []

    def addReader(self, reader: IReadDescriptor) -> None:
        self.readers.append(reader)


def _probeUnixTransportOver(missing: list[str]) -> bool:
    """
    Whether L{connectUnixLink} may make the reactor's Unix transport over a
    connected socket itself: C{unix.Server(socket, protocol, peer, None, 0,
    reactor)}, as C{adoptStreamConnection} calls it, keeps that socket,
    reads from it once connected, and names the peer given.
    """
    one, other = socket.socketpair()
    try:
        reactor = _WatchingProbeReactor()
        try:
            transport = unix.Server(one, Protocol(), "probe", None, 0, reactor)
            found = (
                transport.socket is one
                and transport.fileno() == one.fileno()
                and reactor.readers == [transport]
                and bool(transport.connected)
                and transport.getPeer() == UNIXAddress("probe")
            )
        except Exception:
            found = False
        if not found:
            missing.append("unix.Server over a connected socket")
        return found
    finally:
        one.close()
        other.close()


@implementer(IReadDescriptor)
class _ProbeReader:
    """
    A descriptor the probe's reactor watches: one end of a socket pair.

    @ivar system: the legacy logging context's C{system} while it last
        read (what C{log.callWithLogger} sets).
    @ivar lost: itself, once its connection was lost with
        L{ConnectionDone}.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.system: object = None
        self.lost: list[_ProbeReader] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "twisted-channel probe"

    def doRead(self) -> None:
        self.sock.recv(64)
        self.system = context.get(log.ILogContext)["system"]

    def connectionLost(self, reason: Failure) -> None:
        if reason.check(ConnectionDone):
            self.lost.append(self)


def _probeDirectDispatch(missing: list[str]) -> bool:
    """
    Whether L{_directDoPoll} may stand in for the epoll reactor's
    C{doIteration}: on a reactor of its own, over socket pairs, Twisted's
    dispatch reads a ready descriptor inside the logging context that names
    it, and L{_directDoPoll}'s reads a direct reader's without it and any
    other descriptor as Twisted's does.
    """
    epoll = _epollReactorClass()
    if epoll is None:
        # No epoll on this platform: nothing is lacking.
        return False
    name = (
        "EPollReactor.doIteration/_poller/_selectables/_doReadOrWrite/"
        "_disconnectSelectable"
    )
    if epoll.doIteration is not epoll.doPoll:  # type: ignore[attr-defined]
        missing.append(name)
        return False
    reactor: typing.Any = epoll()
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        if not (
            isinstance(getattr(reactor, "_selectables", None), dict)
            and callable(getattr(getattr(reactor, "_poller", None), "poll", None))
            and callable(getattr(reactor, "_doReadOrWrite", None))
            and callable(getattr(reactor, "_disconnectSelectable", None))
        ):
            missing.append(name)
            return False
        plain = _ProbeReader(pairs[0][0])
        direct = _ProbeReader(pairs[1][0])
        delivered: list[bytes] = []
        direct.doRead = _directReader(  # type: ignore[method-assign,assignment]
            direct.sock,
            memoryview(bytearray(64)),
            _NO_TARGET,
            lambda data: delivered.append(bytes(data)),
        )
        reactor.addReader(plain)
        pairs[0][1].send(b"p")
        reactor.doIteration(0)
        theirs = plain.system
        plain.system = None
        reactor.addReader(direct)
        pairs[0][1].send(b"p")
        pairs[1][1].send(b"d")
        dispatch = _directDoPoll(reactor)
        dispatch(0)
        if theirs != plain.logPrefix() or plain.system != theirs or delivered != [b"d"]:
            missing.append(name)
            return False
        # The direct reader's peer ends its stream (a read alone, no hang-up
        # yet): it is disconnected as the reactor's own dispatch disconnects
        # a descriptor whose read ends.
        pairs[1][1].shutdown(socket.SHUT_WR)
        dispatch(0)
        if direct not in direct.lost or direct in reactor.getReaders():
            missing.append(name)
            return False
    finally:
        reactor.removeAll()
        reactor.waker.connectionLost(None)
        reactor._poller.close()
        for pair in pairs:
            for sock in pair:
                sock.close()
    return True


def probeTwisted() -> TwistedEdge:
    """
    Find out what the Twisted in use offers of what the channel asks beyond
    its public interfaces, with real instances of its classes.

    @return: what was found; L{TwistedEdge.missing} is empty when all was.
    """
    missing: list[str] = []
    bufferAccounting = _probeBufferAccounting(missing)
    return TwistedEdge(
        bufferAccounting=bufferAccounting,
        sendImmediately=bufferAccounting and _probeSendImmediately(missing),
        unjoinedWrites=bufferAccounting and _probeUnjoinedWrites(missing),
        plainReads=_probeReadDirectly(missing),
        adoptListeningSocket=_probeAdoptListeningSocket(missing),
        directDispatch=_probeDirectDispatch(missing),
        unixTransportOver=_probeUnixTransportOver(missing),
        unixPortTemplate=_probeUnixPortTemplate(missing),
        directAccept=_probeDirectAccept(missing),
        missing=tuple(missing),
    )


_found: TwistedEdge | None = None


def twistedEdge() -> TwistedEdge:
    """
    What the Twisted in use offers, probed on the first call; when it lacks
    anything, one warning names it.
    """
    global _found
    found = _found
    if found is None:
        found = _found = probeTwisted()
        if found.missing:
            from twisted import __version__

            _log.warn(
                "twisted-channel: Twisted {twistedVersion} lacks {missing}; "
                "going without (over Twisted's public interface: no per-link "
                "buffer cap, no immediate sends or direct reads, a host "
                "binds its socket in place instead of by rename)",
                twistedVersion=__version__,
                missing=", ".join(found.missing),
            )
    return found


def _countBuffered(transport: abstract.FileDescriptor) -> int:
    # FileDescriptor keeps a buffer flushed in part and a list of writes not
    # yet joined to it; it has no public accessor for their size.
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def _unread(fileno: int) -> int:
    answer = fcntl.ioctl(fileno, termios.FIONREAD, b"\0\0\0\0")
    count: int = struct.unpack("i", answer)[0]
    return count


def socketTransport(transport: object) -> object:
    """
    The transport of the socket under C{transport}'s layers (a link across
    machines: Twisted's TLS layer, and the verification above it, are
    L{ProtocolWrapper}s), or C{transport} itself.
    """
    while isinstance(transport, ProtocolWrapper):
        transport = transport.transport
    return transport


def bufferedBytes(transport: object) -> int:
    """
    How many bytes C{transport} (or, under TLS, its socket's transport)
    holds that the kernel has not taken yet; 0 for a transport that is not
    one of Twisted's, or when the Twisted in use cannot tell.
    """
    if not isinstance(transport, abstract.FileDescriptor):
        transport = socketTransport(transport)
        if not isinstance(transport, abstract.FileDescriptor) or not (
            transport.connected
        ):
            # Under TLS, a link gone with its socket holds nothing (the
            # layers above say nothing of it: they stay "connected").
            return 0
    edge = _found or twistedEdge()
    if not edge.bufferAccounting:
        return 0
    # _countBuffered, inlined (as in pushToKernel and sendNow): these run on
    # every hop of a round trip.
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def pushToKernel(transport: object) -> None:
    """
    Hand what C{transport} buffered to the kernel now, instead of on the
    reactor's next iteration.

    Call it only at the end of handling a read: a reply then leaves in the
    same iteration as the request arrived, which takes a reactor iteration
    off every hop of a round trip.  Any error is left for the reactor to
    find, as it would have on its own.  Under TLS, what the TLS layer
    wrote to its socket's transport goes.
    """
    if not isinstance(transport, abstract.FileDescriptor):
        transport = socketTransport(transport)
    if (
        not isinstance(transport, abstract.FileDescriptor)
        or not transport.connected
        or transport.disconnecting
        or not (_found or twistedEdge()).bufferAccounting
        or not (len(transport.dataBuffer) - transport.offset + transport._tempDataLen)
    ):
        return
    transport.doWrite()


def _sendHoldingNothing(transport: typing.Any, data: bytes) -> None:
    """
    Hand C{data} to the kernel through the socket of C{transport}, a
    connected TCP or Unix transport that holds nothing, and leave to it
    what the kernel does not take (unjoined), or any error (the transport
    finds it itself when it writes).
    """
    try:
        sent = transport.socket.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        # The transport finds the error itself when it tries.
        transport.write(data)
        return
    if sent < len(data):
        writeUnjoined(transport)
        transport.write(data[sent:])


def sendNow(transport: object, data: bytes) -> None:
    """
    Write C{data} to C{transport}, handing it straight to the kernel when
    the transport holds nothing: a write through Twisted would ask the
    reactor to watch for writability, send on its next iteration and stop
    watching (two C{epoll_ctl} calls and an iteration).  What the kernel
    does not take, or any error, is left to the transport as usual.  Under
    TLS (and what stands above it), the records it makes go to the kernel
    at once, together (L{writeEagerly}), else through L{pushToKernel}.
    """
    if (
        not isinstance(transport, tcp.Connection)
        or not (_found or twistedEdge()).sendImmediately
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
        or len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    ):
        if isinstance(transport, ProtocolWrapper):
            _writeThroughLayers(transport, [data])
            return
        writeUnjoined(transport)
        transport.write(data)  # type: ignore[attr-defined]
        return
    _sendHoldingNothing(transport, data)


def sendAtEndOfRead(transport: object, data: bytes) -> None:
    """
    L{sendNow} then L{pushToKernel}, in one call: what the handling of a
    read ends with when it has something to send (a host's replies and
    acknowledgement, a client's answers).  When the transport holds
    nothing, C{data} goes to the kernel at once; when it holds something,
    C{data} goes after it and all of it is handed to the kernel now.
    """
    if (
        not isinstance(transport, tcp.Connection)
        or not (_found or twistedEdge()).sendImmediately
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
    ):
        sendNow(transport, data)
        pushToKernel(transport)
        return
    if len(transport.dataBuffer) - transport.offset + transport._tempDataLen:
        writeUnjoined(transport)
        transport.write(data)
        # Any error is left for the reactor to find, as in pushToKernel.
        transport.doWrite()
        return
    # _sendHoldingNothing's first send, inlined: this is the last step of
    # every hop of a round trip, and the kernel nearly always takes it all.
    try:
        sent = transport.socket.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        # The transport finds the error itself when it tries.
        transport.write(data)
        return
    if sent < len(data):
        writeUnjoined(transport)
        transport.write(data[sent:])


#: The most buffers one C{sendmsg} is given (Linux's IOV_MAX is 1024).
_MOST_BUFFERS = 512


def sendSequenceNow(transport: object, chunks: list[bytes]) -> None:
    """
    Write C{chunks} to C{transport} as L{sendNow} writes one: when the
    transport holds nothing, hand them to the kernel in one C{sendmsg},
    without joining them (a large payload is not copied into a frame nor
    into Twisted's buffer).  What the kernel does not take, or any error,
    is left to the transport, which joins it as usual.  Under TLS, as
    L{sendNow}.
    """
    if (
        not isinstance(transport, tcp.Connection)
        or not (_found or twistedEdge()).sendImmediately
        or not transport.connected
        or transport.disconnecting
        or transport._writeDisconnected
        or _countBuffered(transport)
    ):
        if isinstance(transport, ProtocolWrapper):
            _writeThroughLayers(transport, chunks)
            return
        writeUnjoined(transport)
        transport.writeSequence(chunks)  # type: ignore[attr-defined]
        return
    offered = chunks[:_MOST_BUFFERS]
    try:
        sent = transport.socket.sendmsg(offered)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        # The transport finds the error itself when it tries.
        transport.writeSequence(chunks)
        return
    for index, chunk in enumerate(offered):
        if sent < len(chunk):
            rest = [chunk[sent:]] if sent else [chunk]
            rest.extend(chunks[index + 1 :])
            writeUnjoined(transport)
            transport.writeSequence(rest)
            return
        sent -= len(chunk)
    if len(chunks) > len(offered):
        writeUnjoined(transport)
        transport.writeSequence(chunks[len(offered) :])


#: The most bytes one unjoined C{doWrite} offers the kernel: what a Unix
#: socket's default buffer takes, and more, without building a list of
#: every buffered piece when the peer is slow.
_MOST_BYTES = 1 << 20


#: Pieces held that add up to less than this are left to Twisted to join.
_JOINED_UNDER = 64 * 1024


def _unjoinedDoWrite(
    transport: abstract.FileDescriptor,
) -> Callable[[], BaseException | int | None]:
    """
    The C{doWrite} that L{writeUnjoined} gives C{transport}.
    """
    plainClass = type(transport)
    sendmsg = transport.socket.sendmsg  # type: ignore[attr-defined]

    def doWrite() -> BaseException | int | None:
        pieces = transport._tempDataBuffer
        if transport._tempDataLen < _JOINED_UNDER or getattr(
            transport, "_sendmsgQueue", None
        ):
            # Little to join (Twisted's one send then costs less than a
            # sendmsg and, once all is sent, the empty send Twisted's
            # bookkeeping makes), or descriptors to pass: as Twisted does.
            return plainClass.doWrite(transport)  # type: ignore[no-any-return]
        head = transport.dataBuffer
        offset = transport.offset
        offered: list[bytes | memoryview] = []
        size = 0
        if offset < len(head):
            offered.append(memoryview(head)[offset:] if offset else head)
            size = len(head) - offset
        for piece in pieces:
            if len(offered) == _MOST_BUFFERS or size >= _MOST_BYTES:
                break
            offered.append(piece)
            size += len(piece)
        try:
            sent = sendmsg(offered)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                return None
            return main.CONNECTION_LOST
        # Drop what was sent: Twisted's buffer becomes the first piece not
        # sent whole (the offset what of it was), its list the pieces after.
        if offset < len(head):
            if sent < len(head) - offset:
                transport.offset = offset + sent
                return None
            sent -= len(head) - offset
        taken = 0
        for piece in pieces:
            if sent < len(piece):
                break
            sent -= len(piece)
            taken += 1
        if taken == len(pieces):
            transport.dataBuffer = b""
            transport.offset = 0
            transport._tempDataBuffer = []
            transport._tempDataLen = 0
            # Everything left: Twisted stops writing, resumes a producer or
            # ends a closing connection, as it does when it has sent all.
            return plainClass.doWrite(transport)  # type: ignore[no-any-return]
        transport.dataBuffer = pieces[taken]
        transport.offset = sent
        transport._tempDataBuffer = pieces[taken + 1 :]
        transport._tempDataLen -= sum(map(len, pieces[: taken + 1]))
        return None

    return doWrite


def writeUnjoined(transport: object) -> bool:
    """
    Have C{transport} send what it buffers without joining it (done by
    L{sendNow} and L{sendSequenceNow} the first time they leave data to a
    transport, so that a link that never waits for the kernel, an idle one
    above all, does not carry the C{doWrite} of its own): Twisted's
    C{doWrite} joins every piece written while the kernel's buffer was full
    into one C{bytes} (a copy of each large message) before it sends any;
    this sends the pieces as they are, with one C{sendmsg}, and keeps in
    the transport's buffer only what the kernel did not take.  Everything
    else (stopping watching for writability, a producer, a closing
    connection) is left to Twisted's C{doWrite}, called once the buffer is
    empty.

    @return: whether it could; a transport it does not know, or any
        transport when the Twisted in use writes otherwise than the probe
        expects, is left as it is.
    """
    if not isinstance(transport, tcp.Connection) or not (
        (_found or twistedEdge()).unjoinedWrites
    ):
        return False
    if "doWrite" not in vars(transport):
        # An attribute of the instance, found before the class's method by
        # the reactor's lookup of doWrite (and by pushToKernel's call).
        transport.doWrite = _unjoinedDoWrite(transport)  # type: ignore[method-assign]
    return True


def unreadBytes(transport: object) -> int:
    """
    How many bytes the kernel holds for C{transport} (under TLS, for its
    socket) that it has not read yet; 0 if it cannot tell (a transport
    with no socket).
    """
    try:
        return _unread(socketTransport(transport).getHandle().fileno())  # type: ignore[attr-defined]
    except Exception:
        return 0


class ReadTarget(typing.Protocol):
    """
    Where a link's reads may go instead of the shared read buffer: a
    L{twisted_channel._wire.FrameDecoder}.
    """

    #: Whether L{readTarget} has a view to offer.
    largeUnderWay: bool
    #: Whether that view runs to the end of the large message.
    lastPiece: bool

    def readTarget(self) -> memoryview | None:
        """
        A view to read into directly, or None.
        """

    def received(self, count: int) -> None:
        """
        C{count} bytes were read into the view L{readTarget} gave.
        """


#: The size of the buffer every direct read goes into: larger than
#: Twisted's 64 KiB reads, so that a read takes what a Unix socket's default
#: buffer holds at once.
READ_BUFFER_SIZE = 256 * 1024

_readBuffer: memoryview | None = None

#: Whether sockets read into several buffers at once (not on every
#: platform): else the frames after a large message wait for the next read.
_SCATTER = hasattr(socket.socket, "recvmsg_into")


def _sharedReadBuffer() -> memoryview:
    # One buffer for every link of the process: each read's frames are
    # copied out of it (and any incomplete frame kept aside) before the next
    # read, all on the reactor's thread; a buffer per link would cost 256
    # KiB per idle link.
    global _readBuffer
    if _readBuffer is None:
        _readBuffer = memoryview(bytearray(READ_BUFFER_SIZE))
    return _readBuffer


def reserveReadBuffer() -> None:
    """
    Allocate the buffer every direct read goes into now, if it is not yet:
    a standby does it before it may have to host, since the first link's
    read would otherwise pay for 256 KiB of fresh, zeroed memory (about 30
    microseconds of CPU) in the milliseconds a failover is judged by.
    """
    _sharedReadBuffer()


class _NoTarget:
    """
    Where a reader with no frame decoder reads: always its buffer.
    """

    largeUnderWay = False
    lastPiece = False

    def readTarget(self) -> memoryview | None:
        return None

    def received(self, count: int) -> None:
        pass


_NO_TARGET = _NoTarget()


def readDirectly(
    transport: object,
    dataReceived: Callable[[bytes | memoryview], None],
    target: ReadTarget | None = None,
) -> bool:
    """
    Have the reactor hand what C{transport} reads straight to
    C{dataReceived}, with one C{recv_into}, instead of through the
    transport's general read (for Unix sockets a C{recvmsg} that looks for
    passed descriptors) and the endpoint's wrapping protocol: fewer calls
    on every hop of a round trip.  The transport ends the connection as it
    would have, on end of file or an error.

    C{dataReceived} is given a view of a buffer that the next read reuses:
    it must copy what it keeps before it returns.  When C{target} offers a
    view of its own (the rest of a large message), the read goes straight
    there, and C{dataReceived} is given C{b""}; when that view runs to the
    message's end, what follows it is read, in the same call, into the
    buffer, and C{dataReceived} is given that.

    Under Twisted's TLS layer (and what stands above it: a link across
    machines), once its handshake is done, the socket is read as above and
    what it brings is decrypted straight into a buffer that C{dataReceived}
    is given a view of, all the records of one read together
    (L{_readThroughTLS}); C{target} is not used there.

    An epoll reactor (Twisted's own, its dispatch unchanged) is given, the
    first time, a dispatch that hands such a transport's reads over without
    the legacy logging context (L{_directDoPoll}).

    @return: whether it could; a transport it does not know, or any
        transport when the Twisted in use reads otherwise than the probe
        expects, is left as it is.
    """
    if isinstance(transport, ProtocolWrapper):
        return _readThroughTLS(transport, dataReceived)
    if (
        not isinstance(transport, tcp.Connection)
        or type(transport).doRead not in (_found or twistedEdge()).plainReads
    ):
        return False
    # An attribute of the instance, found before the class's method by the
    # reactor's lookup of doRead.  The closure holds the socket, not its
    # bound recv_into: a bound method is one more object for every idle link.
    transport.doRead = _directReader(  # type: ignore[method-assign]
        transport.socket, _sharedReadBuffer(), target or _NO_TARGET, dataReceived
    )
    _dispatchDirectly(transport.reactor)
    return True


def _directReader(
    sock: socket.socket,
    buffer: memoryview,
    target: ReadTarget,
    dataReceived: Callable[[bytes | memoryview], None],
) -> Callable[[], ConnectionDone | ConnectionLost | None]:
    """
    The C{doRead} that L{readDirectly} gives a transport: read C{sock} into
    C{buffer} (or C{target}'s view) and hand what was read to
    C{dataReceived}.
    """

    def doRead() -> ConnectionDone | ConnectionLost | None:
        into = target.readTarget() if target.largeUnderWay else None
        try:
            if into is None:
                count = sock.recv_into(buffer)
            elif target.lastPiece and _SCATTER:
                # The rest of the large message into its place, and what
                # follows it into the buffer, in one call.
                count = sock.recvmsg_into([into, buffer])[0]
            else:
                count = sock.recv_into(into)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not count:
            return main.CONNECTION_DONE
        if into is None:
            dataReceived(buffer[:count])
        else:
            rest = len(into)
            if count > rest:
                target.received(rest)
                dataReceived(buffer[: count - rest])
            else:
                target.received(count)
                dataReceived(b"")
        return None

    return doRead


def _ignore(data: bytes | memoryview) -> None:
    pass


# What every reader L{_directReader} makes runs: how the reactor's dispatch
# (L{_directDoPoll}) knows a link's transport, without a mark on it that
# would cost memory on every idle link.
_DIRECT_READ = _directReader(
    typing.cast(socket.socket, None), memoryview(b""), _NO_TARGET, _ignore
).__code__


@dataclass(frozen=True)
class TLSEdge:
    """
    What L{probeTLS} found of Twisted's TLS layer and pyOpenSSL.

    @ivar read: pyOpenSSL's C{SSL_read} binding, which decrypts into any
        buffer (C{Connection.recv_into} decrypts into a buffer of its own
        and copies out of it), or C{None} when not found.
    @ivar fromBuffer: cffi's C{from_buffer}, for a pointer into a buffer.
    @ivar getError: C{SSL_get_error}.
    @ivar wantRead: C{SSL_ERROR_WANT_READ}.
    @ivar bioRead: pyOpenSSL's C{BIO_read} binding, which takes the records
        the TLS layer made out of its memory BIO into any buffer
        (C{Connection.bio_read} takes them into new bytes), or C{None}.
    @ivar write: pyOpenSSL's C{SSL_write} binding, which encrypts from
        any buffer given a pointer into it, or C{None}.
    @ivar missing: the names of what was not found, for the warning.
    @ivar errorQueued: C{ERR_peek_error}: whether OpenSSL's error queue (one
        per thread) holds an error.
    @ivar error: pyOpenSSL's C{SSL.Error}, which a connection's
        C{_raise_ssl_error} raises with what it takes off that queue.
    """

    read: typing.Any
    fromBuffer: typing.Any
    getError: typing.Any
    wantRead: int
    missing: tuple[str, ...]
    bioRead: typing.Any = None
    write: typing.Any = None
    errorQueued: typing.Any = None
    error: type[Exception] = Exception


class _KeepingTransport:
    """
    What a TLS layer the probe makes is connected to: it keeps what the
    layer writes.
    """

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.written.extend(data)

    def loseConnection(self) -> None:
        pass

    def abortConnection(self) -> None:
        pass


def probeTLS() -> TLSEdge:
    """
    Find out whether L{_readThroughTLS} may stand in for the reads of
    Twisted's TLS layer (L{twisted.protocols.tls.TLSMemoryBIOProtocol}),
    and L{_TLSFlush} for its C{_flushSendBIO}: a client's TLS layer, made
    with C{_flushSendBIO} replaced on the instance and connected to a
    transport that keeps what it writes, has the attributes its own reads
    use, with their values before a handshake, and its own reads test them
    as expected (and end on an error with C{_tlsShutdownFinished}); its
    first record (its hello) is left in its memory BIO (its writes go
    through C{_flushSendBIO}) and pyOpenSSL's C{BIO_read} takes it into a
    buffer of ours; C{SSL_read} and C{SSL_write}, given a pointer into a
    buffer of ours, ask for more (its handshake under way), which the
    connection's C{_raise_ssl_error} (what takes an error off OpenSSL's
    queue) raises as pyOpenSSL's C{WantReadError}; and C{ERR_peek_error}
    is there.
    """
    missing: list[str] = []
    try:
        from OpenSSL import SSL
        from twisted.internet.ssl import CertificateOptions
        from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
    except ImportError as e:
        return TLSEdge(None, None, None, 0, (f"pyOpenSSL ({e})",))
    lib = getattr(SSL, "_lib", None)
    ffi = getattr(SSL, "_ffi", None)
    functions = (
        "SSL_read",
        "SSL_write",
        "SSL_get_error",
        "SSL_ERROR_WANT_READ",
        "BIO_read",
        "ERR_peek_error",
    )
    if lib is None or ffi is None or not hasattr(ffi, "from_buffer"):
        return TLSEdge(None, None, None, 0, ("OpenSSL.SSL._lib/_ffi",))
    lacking = [name for name in functions if not hasattr(lib, name)]
    if lacking:
        return TLSEdge(
            None, None, None, 0, tuple(f"OpenSSL.SSL._lib.{n}" for n in lacking)
        )
    names = set(TLSMemoryBIOProtocol._flushReceiveBIO.__code__.co_names)
    if not {"_lostTLSConnection", "_aborted", "recv", "_tlsShutdownFinished"} <= names:
        missing.append("TLSMemoryBIOProtocol._flushReceiveBIO's loop")
    if not {"_lostTLSConnection", "send", "_flushSendBIO"} <= set(
        TLSMemoryBIOProtocol._write.__code__.co_names
    ) or not {"disconnecting", "_producer", "_write"} <= set(
        TLSMemoryBIOProtocol.write.__code__.co_names
    ):
        missing.append("TLSMemoryBIOProtocol.write/_write")
    factory = TLSMemoryBIOFactory(
        CertificateOptions(), True, Factory.forProtocol(Protocol)
    )
    layer: typing.Any = factory.buildProtocol(None)
    layer._flushSendBIO = lambda: None
    transport = _KeepingTransport()
    layer.makeConnection(transport)
    expected = {
        "_handshakeDone": False,
        "_lostTLSConnection": False,
        "_aborted": False,
        "_appSendBuffer": [],
    }
    for name, value in expected.items():
        if getattr(layer, name, None) != value:
            missing.append(f"TLSMemoryBIOProtocol.{name}")
    connection = getattr(layer, "_tlsConnection", None)
    ssl = getattr(connection, "_ssl", None)
    fromSSL = getattr(connection, "_from_ssl", None)
    if (
        ssl is None
        or fromSSL is None
        or not callable(getattr(connection, "bio_write", None))
    ):
        missing.append("TLSMemoryBIOProtocol._tlsConnection._ssl/_from_ssl/bio_write")
    else:
        buffer = bytearray(1 << 16)
        pointer = ffi.from_buffer(buffer)
        count = lib.BIO_read(fromSSL, pointer, len(buffer))
        if transport.written or count < 6 or buffer[0] != 0x16:
            missing.append("TLSMemoryBIOProtocol's records taken by BIO_read")
        count = lib.SSL_read(ssl, pointer, len(buffer))
        if count > 0 or lib.SSL_get_error(ssl, count) != lib.SSL_ERROR_WANT_READ:
            missing.append("SSL_read into a buffer of ours")
        try:
            getattr(connection, "_raise_ssl_error")(ssl, count)  # noqa: B009
        except SSL.WantReadError:
            pass
        except Exception:
            missing.append("Connection._raise_ssl_error")
        else:
            missing.append("Connection._raise_ssl_error")
        count = lib.SSL_write(ssl, ffi.from_buffer(b"probe"), 5)
        if count > 0 or lib.SSL_get_error(ssl, count) != lib.SSL_ERROR_WANT_READ:
            missing.append("SSL_write from a buffer of ours")
    factory.unregisterProtocol(layer)
    if missing:
        return TLSEdge(None, None, None, 0, tuple(missing))
    return TLSEdge(
        lib.SSL_read,
        ffi.from_buffer,
        lib.SSL_get_error,
        lib.SSL_ERROR_WANT_READ,
        (),
        lib.BIO_read,
        lib.SSL_write,
        lib.ERR_peek_error,
        SSL.Error,
    )


_tlsFound: TLSEdge | None = None


def tlsEdge() -> TLSEdge:
    """
    What L{probeTLS} finds, probed on the first call (the first link under
    TLS); when it lacks anything, one warning names it.
    """
    global _tlsFound
    found = _tlsFound
    if found is None:
        found = _tlsFound = probeTLS()
        if found.missing:
            _log.warn(
                "twisted-channel: links under TLS read through Twisted's TLS "
                "layer, record by record (lacking {missing})",
                missing=", ".join(found.missing),
            )
    return found


#: The plaintext of one read under TLS is decrypted into this buffer (shared
#: by the process's links, as the read buffer is): a read of up to
#: L{READ_BUFFER_SIZE} bytes, and a record left from the read before.
_PLAIN_BUFFER_SIZE = READ_BUFFER_SIZE + 32 * 1024

_plainBuffer: tuple[memoryview, typing.Any] | None = None


def _readThroughTLS(
    transport: ProtocolWrapper, dataReceived: Callable[[bytes | memoryview], None]
) -> bool:
    """
    L{readDirectly} for a transport under Twisted's TLS layer.
    """
    layer = _tlsLayer(transport)
    if layer is None:
        return False
    sock = layer.transport
    if (
        not isinstance(sock, tcp.Connection)
        or type(sock).doRead not in (_found or twistedEdge()).plainReads
        or not getattr(layer, "_handshakeDone", False)
    ):
        return False
    edge = _tlsFound or tlsEdge()
    if edge.read is None:
        return False
    global _plainBuffer
    if _plainBuffer is None:
        plain = bytearray(_PLAIN_BUFFER_SIZE)
        _plainBuffer = (memoryview(plain), edge.fromBuffer(plain))
    sock.doRead = _tlsReader(  # type: ignore[method-assign]
        sock, layer, _sharedReadBuffer(), _plainBuffer, edge, dataReceived
    )
    _dispatchDirectly(sock.reactor)
    return True


def _isTLSLayer(layer: object) -> bool:
    try:
        from twisted.protocols.tls import TLSMemoryBIOProtocol
    except ImportError:
        return False
    return isinstance(layer, TLSMemoryBIOProtocol)


def _tlsReader(
    sock: tcp.Connection,
    layer: typing.Any,
    buffer: memoryview,
    plainBuffer: tuple[memoryview, typing.Any],
    edge: TLSEdge,
    dataReceived: Callable[[bytes | memoryview], None],
) -> Callable[[], ConnectionDone | ConnectionLost | None]:
    """
    The C{doRead} that L{_readThroughTLS} gives the socket's transport
    C{sock} under the TLS layer C{layer}: what Twisted's read and the
    layer's C{dataReceived} do, but read into C{buffer} (not into new
    bytes), and decrypted with C{SSL_read} into the plaintext buffer (not
    into a buffer of pyOpenSSL's, then copied into new bytes for each
    record, which the layer above then joins), handed on as one view.  Any
    answer the TLS layer owes the peer is sent as it sends it; the end of
    TLS (a close_notify) is left to the layer's own reads, which find it
    again and handle it as always; an error (a corrupted record) is taken
    off OpenSSL's error queue at once and ends the layer, as its own reads
    end it on an error, before the plaintext before it is handed on
    (anything run then must find the queue as it was, and a write then
    must not end the layer with another reason); while writes wait in the
    layer (a handshake under way), the layer reads as always.
    """
    recvInto = sock.socket.recv_into
    plain, plainPointer = plainBuffer
    plainSize = len(plain)
    connection = layer._tlsConnection
    ssl = connection._ssl
    bioWrite = connection.bio_write
    read = edge.read
    wantRead = edge.wantRead
    getError = edge.getError
    errorQueued = edge.errorQueued
    raiseError = connection._raise_ssl_error
    Error = edge.error
    plainRead = type(sock).doRead

    def doRead() -> ConnectionDone | ConnectionLost | None:
        if layer._appSendBuffer or layer._lostTLSConnection:
            return plainRead(sock)
        try:
            count = recvInto(buffer)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not count:
            return main.CONNECTION_DONE
        bioWrite(buffer[:count])
        filled = 0
        while True:
            got = read(ssl, plainPointer + filled, plainSize - filled)
            if got <= 0:
                break
            filled += got
            if filled == plainSize:
                if not layer._aborted:
                    dataReceived(plain)
                filled = 0
                if layer._lostTLSConnection or layer._aborted:
                    return None
        # Asked now: what dataReceived runs may call OpenSSL (a write of
        # this link's resets what SSL_get_error reads).
        error = getError(ssl, got)
        if error != wantRead and errorQueued():
            # An error (a corrupted record), taken off OpenSSL's error queue
            # (one per thread) before dataReceived runs anything that would
            # find it there, or clear it (a handshake step does: the layer's
            # own read would then find nothing to say but an unexpected
            # EOF); and the layer ended with it, as its own read ends on an
            # error, before a write dataReceived makes on this link (which
            # cannot be encrypted any more) ends it with another reason.
            # Its protocol learns it after what came before the error.
            try:
                raiseError(ssl, got)
            except Error:
                layer._tlsShutdownFinished(Failure())
        if filled and not layer._aborted:
            dataReceived(plain[:filled])
        if layer._lostTLSConnection:
            return None
        if error != wantRead:
            # The peer's close_notify: found again by the layer's own reads,
            # and handled as they handle it.
            layer._flushReceiveBIO()
        else:
            layer._flushSendBIO()
        return None

    return doRead


# What every reader L{_tlsReader} makes runs (see L{_DIRECT_READ}).
_TLS_READ = next(
    code
    for code in _tlsReader.__code__.co_consts
    if getattr(code, "co_name", None) == "doRead"
)


@functools.cache
def _epollReactorClass() -> type | None:
    """
    Twisted's epoll reactor, where the platform has epoll (looked for once:
    every new link asks).
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:
        return None
    return EPollReactor


def _directDoPoll(reactor: typing.Any) -> Callable[[float | None], None]:
    """
    The C{doIteration} that L{_dispatchDirectly} gives an epoll reactor:
    its own C{doPoll}, except that a descriptor that is a link reading
    directly (its C{doRead} made by L{_directReader}) is served without
    C{log.callWithLogger}'s logging context, and a read alone (the event of
    nearly every round trip) without the call of C{_doReadOrWrite}, whose
    work for it (read; on an end or an error, log it and disconnect) is
    done here.  That context (a copy and an update of a dictionary and
    eight Python calls on every read) only names, for
    C{twisted.python.log}'s legacy C{msg}, the transport that was reading;
    an error that escapes is logged as the reactor's own dispatch logs it.
    """
    poll = reactor._poller.poll
    selectables = reactor._selectables
    doReadOrWrite = reactor._doReadOrWrite
    disconnect = reactor._disconnectSelectable
    readable = select.EPOLLIN

    def doPoll(timeout: float | None) -> None:
        if timeout is None:
            timeout = -1
        try:
            ready = poll(timeout, len(selectables))
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            raise
        for fd, event in ready:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            doRead: typing.Any = getattr(selectable, "doRead", None)
            code = getattr(doRead, "__code__", None)
            if (
                code is not _DIRECT_READ
                and code is not _TLS_READ
                and code is not _DIRECT_ACCEPT
            ):
                log.callWithLogger(selectable, doReadOrWrite, selectable, fd, event)
                continue
            try:
                if event != readable or selectable.fileno() == -1:
                    doReadOrWrite(selectable, fd, event)
                    continue
                # What _doReadOrWrite does for a read alone.
                try:
                    why = doRead()
                except BaseException:
                    why = sys.exc_info()[1]
                    log.err()
                if why:
                    disconnect(selectable, why, True)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.err(system=selectable.logPrefix())

    return doPoll


def _dispatchDirectly(reactor: object) -> None:
    """
    Give C{reactor}, if it is Twisted's epoll reactor with its own
    C{doPoll}, the dispatch of L{_directDoPoll} (once).
    """
    if "doIteration" in getattr(reactor, "__dict__", {"doIteration": None}):
        # Given already (every link after the first), or replaced by
        # someone else, or a reactor without attributes of its own.
        return
    epoll = _epollReactorClass()
    cls = type(reactor)
    if (
        epoll is None
        or not (_found or twistedEdge()).directDispatch
        or not isinstance(reactor, epoll)
        or cls.doIteration is not epoll.doPoll  # type: ignore[attr-defined]
        or cls.doPoll is not epoll.doPoll  # type: ignore[attr-defined]
    ):
        return
    reactor.doIteration = _directDoPoll(reactor)  # type: ignore[attr-defined]


#: What L{_EagerWrite.sendView} keeps is copied in pieces of this size.
_KEPT_PIECE = 64 * 1024


class _EagerWrite:
    """
    The C{write} of a socket transport under a TLS layer (see
    L{writeEagerly}): each write goes to the kernel at once while the
    transport holds nothing; between L{hold} and L{release} (a write of the
    channel's to the TLS layer, which may make several records), the
    records are kept and sent together, with one C{sendmsg}.
    """

    __slots__ = ("_connection", "_socket", "_buffered", "_bufferedSequence", "_held")

    def __init__(self, connection: tcp.Connection) -> None:
        self._connection = connection
        self._socket = connection.socket
        self._buffered = type(connection).write
        self._bufferedSequence = type(connection).writeSequence
        self._held: list[bytes] | None = None

    def _sendIfIdle(self, data: bytes | memoryview) -> int:
        """
        Send as much of C{data} as the kernel takes now, if the transport
        holds nothing and may write.

        @return: how much was sent: none while the transport holds
            anything (what is written must follow it), or on an error, which
            the transport finds itself when it tries.
        """
        connection = self._connection
        if (
            not connection.connected
            or connection.disconnecting
            or connection._writeDisconnected
            or len(connection.dataBuffer) - connection.offset + connection._tempDataLen
        ):
            return 0
        try:
            return self._socket.send(data)
        except OSError:
            return 0

    def __call__(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            held.append(data)
            return
        sent = self._sendIfIdle(data)
        if sent < len(data):
            self._buffered(self._connection, data[sent:] if sent else data)  # type: ignore[no-untyped-call]

    def sendView(self, data: memoryview) -> None:
        """
        Write C{data}, a view of a buffer that is reused once this returns:
        as a write, but what is kept is copied.
        """
        if self._held is not None:
            self._held.append(bytes(data))
            return
        sent = self._sendIfIdle(data)
        if sent == len(data):
            return
        data = data[sent:]
        # Copied in pieces: a copy of up to a megabyte in one piece would be
        # memory fresh from the system, faulted in page by page, each time.
        # All copied before any is written, and written in one call: the
        # transport may pause its producer as it takes them, and whatever
        # that makes write (to this link or another) reuses the buffer and
        # must come after all of them.
        pieces = [
            bytes(data[start : start + _KEPT_PIECE])
            for start in range(0, len(data), _KEPT_PIECE)
        ]
        self._bufferedSequence(self._connection, pieces)  # type: ignore[no-untyped-call]

    def hold(self) -> None:
        """
        Keep what is written until L{release}.
        """
        self._held = []

    def release(self) -> None:
        """
        Send what was kept since L{hold}, in one system call.
        """
        held, self._held = self._held, None
        if not held:
            return
        if len(held) == 1:
            self(held[0])
        else:
            sendSequenceNow(self._connection, held)


#: The records taken out of a TLS layer's memory BIO at once go into a
#: buffer this large (shared by the process's links): a channel write of
#: 1 MiB and its records' overhead.
_RECORDS_BUFFER_SIZE = (1 << 20) + (64 << 10)

_recordsBuffer: tuple[memoryview, typing.Any] | None = None


class _TLSFlush:
    """
    The C{_flushSendBIO} that L{writeEagerly} gives Twisted's TLS layer:
    every record in the layer's memory BIO taken into one buffer (not 32
    KiB at a time into new bytes) and handed to the socket's transport's
    eager write, which sends it at once while it holds nothing, and keeps
    (a copy of) what the kernel does not take.  While L{holding} (a write
    of the channel's, which may make many records), it does nothing: the
    records are taken, and sent, together once the write is done.
    """

    __slots__ = (
        "holding",
        "_bioRead",
        "_fromSSL",
        "_eager",
        "_buffer",
        "ssl",
        "sslWrite",
        "fromBuffer",
        "layerWrite",
    )

    def __init__(self, layer: typing.Any, eager: _EagerWrite) -> None:
        from twisted.protocols.tls import TLSMemoryBIOProtocol

        global _recordsBuffer
        edge = _tlsFound or tlsEdge()
        if _recordsBuffer is None:
            records = bytearray(_RECORDS_BUFFER_SIZE)
            _recordsBuffer = (memoryview(records), edge.fromBuffer(records))
        self.holding = False
        #: What L{writeRecords} writes with: the layer's C{SSL}, C{SSL_write},
        #: cffi's C{from_buffer}, and the layer's own C{write}.
        self.ssl = layer._tlsConnection._ssl
        self.sslWrite = edge.write
        self.fromBuffer = edge.fromBuffer
        self.layerWrite: typing.Any = TLSMemoryBIOProtocol.write
        self._bioRead = edge.bioRead
        self._fromSSL = layer._tlsConnection._from_ssl
        self._eager = eager
        self._buffer = _recordsBuffer

    def __call__(self) -> None:
        if self.holding:
            return
        view, pointer = self._buffer
        size = len(view)
        while True:
            count = self._bioRead(self._fromSSL, pointer, size)
            if count <= 0:
                return
            self._eager.sendView(view[:count])
            if count < size:
                return


def writeRecords(layer: typing.Any, spans: list[bytes | memoryview]) -> None:
    """
    Write C{spans} to C{layer}, Twisted's TLS layer, as its C{write} would
    write each in turn, but, when its records are taken out by L{_TLSFlush}
    (L{writeEagerly}) and it is neither closing nor holding writes back
    (its handshake done), encrypting each span with C{SSL_write} called
    straight from here, a record a call (pyOpenSSL's contexts allow partial
    writes), instead of through the layer's C{write} (for each record, its
    C{_write}, pyOpenSSL's C{send} and its error check, and a flush).
    Should C{SSL_write} refuse, what is left goes through the layer's own
    C{write}, which finds the same and handles it as always.

    @param layer: a L{twisted.protocols.tls.TLSMemoryBIOProtocol}.
    @param spans: what to write, in order; each but the last a multiple of
        16 KiB long makes the same records as their concatenation.
    """
    flush = vars(layer).get("_flushSendBIO")
    if (
        not isinstance(flush, _TLSFlush)
        or layer.disconnecting
        or layer._lostTLSConnection
        or layer._appSendBuffer
        or not layer._handshakeDone
    ):
        write: typing.Any
        if isinstance(flush, _TLSFlush):
            write = flush.layerWrite
        else:
            from twisted.protocols.tls import TLSMemoryBIOProtocol

            write = TLSMemoryBIOProtocol.write
        for span in spans:
            write(layer, span)
        return
    ssl = flush.ssl
    sslWrite = flush.sslWrite
    fromBuffer = flush.fromBuffer
    for index, span in enumerate(spans):
        length = len(span)
        pointer = fromBuffer(span)
        done = 0
        while done < length:
            # One record a call: pyOpenSSL's contexts allow partial writes.
            written = sslWrite(ssl, pointer + done, length - done)
            if written <= 0:
                flush.layerWrite(layer, memoryview(span)[done:])
                for rest in spans[index + 1 :]:
                    flush.layerWrite(layer, rest)
                return
            done += written
    flush()


def _tlsLayer(transport: object) -> typing.Any:
    """
    Twisted's TLS layer among C{transport}'s layers, or C{None}.
    """
    while isinstance(transport, ProtocolWrapper):
        if _isTLSLayer(transport):
            return transport
        transport = transport.transport
    return None


def writeEagerly(transport: object) -> bool:
    """
    Have what a TLS layer writes to C{transport}, its socket's transport (or
    the transport above it), go to the kernel at once when the transport
    holds nothing, as
    L{sendNow} sends: a write through Twisted would ask the reactor to
    watch for writability and, once L{pushToKernel} or the reactor sent
    it, stop watching (two C{epoll_ctl} calls for each write).  The records
    of one L{sendNow} or L{sendSequenceNow} to the TLS layer go together,
    with one C{sendmsg}.  What the kernel does not take, or any error, is
    left to the transport's own C{write}.

    Given the transport above Twisted's TLS layer, the layer's records are
    also taken out of its memory BIO into one buffer, not into new bytes
    each, and those of one L{sendNow} or L{sendSequenceNow} all at once,
    then sent (L{_TLSFlush}).

    @return: whether it could; a transport it does not know, or any
        transport when the Twisted in use lacks what L{sendNow} needs, is
        left as it is.
    """
    layer = _tlsLayer(transport)
    if layer is not None:
        transport = layer.transport
    if not isinstance(transport, tcp.Connection) or not (
        (_found or twistedEdge()).sendImmediately
    ):
        return False
    # An attribute of the instance, found before the class's method.
    eager = transport.write = _EagerWrite(transport)  # type: ignore[method-assign]
    if layer is not None and (_tlsFound or tlsEdge()).bioRead is not None:
        layer._flushSendBIO = _TLSFlush(layer, eager)
    return True


def _writeThroughLayers(transport: ProtocolWrapper, chunks: list[bytes]) -> None:
    """
    Write C{chunks} to C{transport} (a TLS layer, and what stands above
    it) and hand what it makes of them to the kernel now: with one
    C{sendmsg} if its socket's transport writes eagerly (L{writeEagerly}),
    else with L{pushToKernel}.
    """
    layer = _tlsLayer(transport)
    flush = None if layer is None else vars(layer).get("_flushSendBIO")
    if isinstance(flush, _TLSFlush):
        flush.holding = True
        try:
            if len(chunks) == 1:
                transport.write(chunks[0])
            else:
                transport.writeSequence(chunks)
        finally:
            flush.holding = False
            flush()
        return
    eager = vars(socketTransport(transport)).get("write")
    if isinstance(eager, _EagerWrite):
        eager.hold()
        try:
            if len(chunks) == 1:
                transport.write(chunks[0])
            else:
                transport.writeSequence(chunks)
        finally:
            eager.release()
        return
    if len(chunks) == 1:
        transport.write(chunks[0])
    else:
        transport.writeSequence(chunks)
    pushToKernel(transport)


def readInLargePieces(transport: object) -> bool:
    """
    Have Twisted's own reads of C{transport} (a link under TLS, which reads
    through Twisted: L{readDirectly} cannot stand in for them) take up to
    L{READ_BUFFER_SIZE} bytes at once, as the channel's direct reads do,
    instead of 64 KiB: one read of the socket, one batch of frames and one
    acknowledgement for several large messages.  The socket's write buffer
    then pauses a producer above that size too (C{bufferSize} is both).

    @return: whether it could (a TCP or Unix transport under C{transport}'s
        layers).
    """
    transport = socketTransport(transport)
    if not isinstance(transport, tcp.Connection):
        return False
    transport.bufferSize = READ_BUFFER_SIZE
    return True


def _startOn(port: unix.Port, listening: socket.socket) -> None:
    # What unix.Port.startListening does with a socket bound beforehand,
    # less what was done to it already (its chmod and listen) and its
    # legacy log line, formatted eagerly.
    tcp._reservedFD.reserve()
    factory = port.factory
    assert factory is not None
    factory.doStart()
    port.connected = True
    port.socket = listening
    port.fileno = listening.fileno  # type: ignore[method-assign]
    port.numberAccepts = 100
    port.startReading()


def newUnixPort(
    port: unix.Port,
    path: bytes,
    factory: object,
    backlog: int,
    mode: int,
    reactor: object,
) -> bool:
    """
    Give C{port}, a new instance of a subclass of C{unix.Port} whose
    constructor has not run, what C{unix.Port(path, factory, backlog, mode,
    reactor)} would have: the constructor's code (C{tcp.Port}'s binding,
    C{UNIXAddress}'s conversion of the path) costs about 40 microseconds
    cold, in every C{listen()} and takeover, for fields known beforehand.
    They are taken from the template the probe found (L{TwistedEdge}), so
    that each Twisted release gets the fields its own constructor leaves.

    @param path: a filesystem path, as bytes.
    @param reactor: the port's reactor; with L{None}, the constructor runs
        (it takes the global reactor).
    @return: whether it could; where the probe found no template (a
        constructor that leaves what a template cannot repeat), C{port} is
        left alone and the caller runs the constructor.
    """
    template = (_found or twistedEdge()).unixPortTemplate
    # Without a reactor the constructor takes the global one.
    if reactor is None or template is None:
        return False
    _fillUnixPort(port, template, (path, factory, backlog, mode, reactor))
    return True


def startListeningOn(port: unix.Port, listening: socket.socket) -> bool:
    """
    Start C{port}, not listening yet, on C{listening}: a Unix socket bound,
    given its file's mode and listening already, rather than binding a
    socket of its own.

    @return: whether it could; when the Twisted in use starts its ports
        otherwise (the probe said so, once), C{port} and C{listening} are
        left alone.
    """
    if not (_found or twistedEdge()).adoptListeningSocket:
        return False
    _startOn(port, listening)
    return True


class LinkAcceptingPort(unix.Port):
    """
    A Unix listening port whose accept loop is the channel's
    (L{_acceptLinks}) where the probe found it may be
    (L{TwistedEdge.directAccept}), and whose accepts the epoll reactor's
    dispatch (L{_directDoPoll}) hands over without the legacy logging
    context, as it does a link's reads.  Its factory is given no address:
    the channel's host links do not look at it.
    """

    def startReading(self) -> None:
        # Before the first accept, which may come before any link reads.
        _dispatchDirectly(self.reactor)
        super().startReading()  # type: ignore[no-untyped-call]

    def doRead(self) -> None:
        """
        Accept what waits, as C{tcp.Port.doRead} would.
        """
        if (_found or twistedEdge()).directAccept:
            _acceptLinks(self)
        else:
            log.callWithLogger(self, tcp.Port.doRead, self)


# How the reactor's dispatch (L{_directDoPoll}) knows a channel's port.
_DIRECT_ACCEPT = LinkAcceptingPort.doRead.__code__


def _acceptLinks(port: unix.Port) -> None:
    """
    What C{tcp.Port.doRead} does for a Unix port, less what costs the
    host's first message about 50 microseconds cold and serves nothing
    here: its log-buffering context manager and the logger it makes, its
    generator, the socket's C{accept} converting the family and type to
    their C{enum}s for each new socket, and the C{UNIXAddress} made for the
    factory.  Up to C{numberAccepts} links are accepted, each made into
    the port's transport, and that number scaled as Twisted's loop scales
    it.  An error other than having nothing to accept is left to
    Twisted's loop, which goes on from there as it does.  A lasting one
    (too many descriptors, no memory) it meets again, and deals with as it
    does (its reserved descriptor, its log lines); a connection aborted
    while queued was used up by the failed accept, so its line ("Could not
    accept new connection (ECONNABORTED)") is written here, as Twisted's
    loop writes it; one refused by the firewall (C{EPERM}) Twisted passes
    over silently, and so does this.  Anything raised on the way is
    logged, as Twisted's loop logs it.
    """
    accept = port.socket._accept  # type: ignore[union-attr]
    factory = port.factory
    assert factory is not None
    limit = port.numberAccepts
    accepted = 0
    try:
        while accepted < limit:
            try:
                descriptor, peer = accept()
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ECONNABORTED:
                    # Twisted's loop will not meet this one.
                    _log.info(
                        "Could not accept new connection ({acceptError})",
                        acceptError="ECONNABORTED",
                    )
                log.callWithLogger(port, tcp.Port.doRead, port)
                return
            accepted += 1
            link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, descriptor)
            protocol = factory.buildProtocol(None)
            if protocol is None:
                link.close()
                continue
            session = port.sessionno
            port.sessionno = session + 1
            protocol.makeConnection(
                port.transport(link, protocol, peer, port, session, port.reactor)
            )
        port.numberAccepts = limit + 20 if accepted == limit else max(1, accepted)
    except BaseException:
        log.deferr()


class _BuildsOne(Factory):
    """
    The factory of one adopted connection: its protocol is what C{build}
    makes.
    """

    noisy = False

    def __init__(self, build: Callable[[], Protocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._build()


def connectUnixLink(
    reactor: typing.Any,
    link: socket.socket,
    peer: str,
    build: Callable[[], Protocol],
) -> None:
    """
    Hand C{link}, a connected non-blocking Unix stream socket, to
    C{reactor} (a POSIX reactor's), with the protocol C{build} makes: the
    reactor's transport is made over C{link} itself, which it owns from
    then on.  C{IReactorSocket.adoptStreamConnection} makes the same
    transport over a duplicate and asks the kernel for both ends' names
    four times (seven system calls in all, the original's close
    included), on a client's way to its first message and at each
    failover; this needs none of them.  Where the Twisted in use cannot
    (L{twistedEdge} says so), it goes through C{adoptStreamConnection},
    and C{link} is closed.

    @param peer: the path C{link} is connected to: the transport's
        C{getPeer()}.
    """
    if twistedEdge().unixTransportOver:
        protocol = build()
        transport = unix.Server(link, protocol, peer, None, 0, reactor)
        # What adoptStreamConnection names it by, without asking the kernel.
        transport.repstr = f"<{type(protocol).__name__} #0 to {peer}>"
        protocol.makeConnection(transport)
        return
    try:
        reactor.adoptStreamConnection(link.fileno(), socket.AF_UNIX, _BuildsOne(build))
    finally:
        link.close()
