"""
The states of the channel's two long-lived objects, as explicit transition
tables: a client's logical connection (C{ChannelClientTransport.state}) and
a candidate's port (C{ChannelPort.role}).

Each change of state is a lookup in its table, C{TABLE[state, event]}: a
change the table does not name raises C{KeyError} with the state and the
event, instead of leaving the object in a state nobody designed.  A lookup
is a dictionary subscript, not a call, so it costs the failover path
nothing worth measuring.  C{docs/design.md} draws the same tables, and a
test checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ._address import HOST, STANDBY

# A client's logical connection.

#: No link to a host now; writes are held.
CONNECTING: Final = "connecting"
#: A host welcomed the link; writes go out.
CONNECTED: Final = "connected"
#: The connection has ended; C{connectionLost} was called.
CLOSED: Final = "closed"

#: A host welcomed a link, which the connection kept.
WELCOMED: Final = "welcomed"
#: The welcomed link closed; another host is looked for.
LINK_LOST: Final = "link lost"
#: The connection ends: C{loseConnection} once all is acknowledged,
#: C{abortConnection}, the host's goodbye, no host within the timeout, an
#: application error, or a host that takes smaller messages than those held.
FINISHED: Final = "finished"

CONNECTION: Final[Mapping[tuple[str, str], str]] = {
    (CONNECTING, WELCOMED): CONNECTED,
    (CONNECTED, LINK_LOST): CONNECTING,
    (CONNECTING, FINISHED): CLOSED,
    (CONNECTED, FINISHED): CLOSED,
}

# A candidate's port.

#: Not a candidate: before C{startListening} and after C{stopListening}.
STOPPED: Final = "stopped"

#: C{startListening}: the process stands as a candidate.
STARTED: Final = "started"
#: The lock was won and the socket published: the process hosts.
ELECTED: Final = "elected"
#: C{startListening} failed (an unsafe directory, a lock file of another
#: kind, a socket that cannot be bound).
START_FAILED: Final = "start failed"
#: C{stopListening}, or the reactor stopping.
WITHDRAWN: Final = "withdrawn"

PORT: Final[Mapping[tuple[str, str], str]] = {
    (STOPPED, STARTED): STANDBY,
    (STANDBY, ELECTED): HOST,
    (STANDBY, START_FAILED): STOPPED,
    (STANDBY, WITHDRAWN): STOPPED,
    (HOST, WITHDRAWN): STOPPED,
    (STOPPED, WITHDRAWN): STOPPED,
}
