"""
Addresses of channel ports and channel links.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IAddress
from zope.interface import implementer

#: The role of a listening port whose process hosts the channel.
HOST = "host"
#: The role of a listening port whose process waits to take over.
STANDBY = "standby"
#: The role of a client link's own end.
CLIENT = "client"


@implementer(IAddress)
@dataclass(frozen=True)
class ChannelAddress:
    """
    Where a channel lives, and who is at one end of it.

    @ivar name: the channel's name.
    @ivar path: the path of the channel's socket file.
    @ivar role: for a listening port, C{"host"} or C{"standby"}; for the
        host's end of a link, C{"host"}; for a client's end, C{"client"}.
    @ivar pid: the process id at this end, where known: for a peer, as the
        operating system reports it (C{SO_PEERCRED}) or, failing that, as the
        peer said in its handshake.
    @ivar uid: the user id at this end, where the operating system reports it.
    @ivar host: on the loopback TCP transport, the IP address the host
        listens on (then C{path} is the port file's path); across machines,
        in a client's C{getPeer()}, the host's advertised address.
    @ivar port: on the loopback TCP transport, the host's TCP port; across
        machines, in a client's C{getPeer()}, the host's advertised port.
    @ivar term: across machines (C{coordinator=}), the host's fencing term
        while it hosts (a client's C{getPeer()} says it while linked);
        else C{None}.
    @ivar identity: across machines, on the host's end of a link from
        another machine: the client machine's identity as its verified
        certificate names it (C{None} with C{insecure=}, and on one
        machine); C{pid} is then the client's as it said in its handshake.
        In a client's C{getPeer()}: the host's machine, as the host's
        welcome names it (its certificate's, else its advertised address);
        C{pid} is then the host's.
    """

    name: str
    path: str
    role: str | None = None
    pid: int | None = None
    uid: int | None = None
    host: str | None = None
    port: int | None = None
    term: int | None = None
    identity: str | None = None
