"""
The record the recording candidate keeps (see
L{twisted_channel.testing.recorder}): one line per message a host received,
and the reading of it.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class MalformedRecordError(ValueError):
    """
    A record line that the recording candidate does not write.
    """


class Record(NamedTuple):
    """
    One message as a host received it: the line C{<pid> <head> <stamp>
    <length>}, its head split into the sender's tag and number when it is
    C{TAG:NUMBER}.

    @ivar pid: the host's process id.
    @ivar tag: the sender's tag (the head up to its last C{:}), or the whole
        head when it is not C{TAG:NUMBER}.
    @ivar number: the message's number, or -1 when the head is not
        C{TAG:NUMBER} (a request, such as C{flood ...}).
    @ivar stamp: when the host received it, C{CLOCK_MONOTONIC} nanoseconds
        (comparable across processes of one machine).
    @ivar length: the message's length in bytes.
    """

    pid: int
    tag: str
    number: int
    stamp: int
    length: int

    @property
    def numbered(self) -> bool:
        """
        Whether the message was a numbered one, C{TAG:NUMBER}.
        """
        return self.number >= 0


def parseRecord(line: bytes) -> Record:
    """
    Parse one record line (without its end).

    @raise MalformedRecordError: if it is not C{<pid> <head> <stamp>
        <length>}.
    """
    fields = line.split()
    if len(fields) != 4 or not all(f.isdigit() for f in fields[::2] + fields[3:]):
        raise MalformedRecordError(f"malformed record line {line[:100]!r}")
    head = fields[1].decode("utf-8", "replace")
    tag, colon, number = head.rpartition(":")
    if not colon or not number.isdigit():
        tag, numbered = head, -1
    else:
        numbered = int(number)
    return Record(int(fields[0]), tag, numbered, int(fields[2]), int(fields[3]))


class RecordReader:
    """
    Reads a record file as it grows: each L{read} returns the records
    written since the last.

    A last line without its end is being written (a line that crosses a
    page boundary shows its first part before its end): it is left for the
    next L{read}.
    """

    def __init__(self, path: str) -> None:
        """
        @param path: the record file (it need not exist yet).
        """
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[Record]:
        """
        The complete records written since the last call, in file order.

        @raise MalformedRecordError: on a line the recorder does not write.
        """
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        end = data.rfind(b"\n") + 1
        self._partial = data[end:]
        return [parseRecord(line) for line in data[:end].splitlines()]


def readRecords(path: str, numberedOnly: bool = True) -> list[Record]:
    """
    Every complete record in C{path}, in the order the hosts wrote them.

    @param path: the record file; a missing one holds no record.
    @param numberedOnly: leave out messages that are not C{TAG:NUMBER}.
    @raise MalformedRecordError: on a line the recorder does not write.
    """
    if not os.path.exists(path):
        return []
    records = RecordReader(path).read()
    if numberedOnly:
        return [record for record in records if record.numbered]
    return records
