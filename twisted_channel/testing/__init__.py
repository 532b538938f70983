"""
Testing code that uses channels with real processes, in the spirit of
C{twisted.internet.testing}.

A channel's promises (one host, failover, nothing lost) hold between
processes, so they are tested with real child processes over real sockets,
in a private directory:

 - L{ChildProcess}: one child, its output read line by line, every wait
   bounded, always killed and reaped by its pid;
 - L{ChannelProcesses}: the children of one test in one channel
   directory, reaped together; it starts the I{recording candidate} and the
   I{streaming client} of L{twisted_channel.testing.recorder} (C{python -m
   twisted_channel.testing.recorder}), or any command;
 - L{readRecords} / L{RecordReader}: what the recording hosts received;
 - L{privateDirectory}, L{waitUntil}.

See the page "Testing your channel code" of the documentation.
"""

from ._channel import RECORDER, ChannelProcesses, privateDirectory, waitUntil
from ._process import ChildFailedError, ChildProcess, childEnvironment
from ._records import (
    MalformedRecordError,
    Record,
    RecordReader,
    parseRecord,
    readRecords,
)

__all__ = [
    "RECORDER",
    "ChannelProcesses",
    "ChildFailedError",
    "ChildProcess",
    "MalformedRecordError",
    "Record",
    "RecordReader",
    "childEnvironment",
    "parseRecord",
    "privateDirectory",
    "readRecords",
    "waitUntil",
]
