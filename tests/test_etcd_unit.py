"""
The etcd client's sans-IO parts: the coordinator= value, the decoder of the
gateway's JSON lines with its limit, and the checked decoding of etcd's
objects.  No etcd and no reactor here; tests/test_etcd.py runs the client
against a real etcd.
"""

from __future__ import annotations

import base64

import pytest

from twisted_channel._etcd import (
    Coordinator,
    EtcdProtocolError,
    JSONLines,
    KeyValue,
    _txnResult,
    parseCoordinator,
)


def test_coordinatorMembers() -> None:
    """
    Members are HOST:PORT, separated by commas; the port defaults to 2379;
    IPv6 addresses go in brackets; etcds:// is etcd over TLS.
    """
    assert parseCoordinator("etcd://10.0.0.5:2379,10.0.0.6:2380,db") == Coordinator(
        False, (("10.0.0.5", 2379), ("10.0.0.6", 2380), ("db", 2379))
    )
    secure = parseCoordinator("etcds://[::1]:4001")
    assert secure.secure and secure.members == (("[::1]", 4001),)
    assert secure.urls == ["https://[::1]:4001"]
    assert str(parseCoordinator("etcd://a:1,b:2")) == "etcd://a:1,b:2"


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("10.0.0.5:2379", "use etcd://"),
        ("http://a:1", "use etcd://"),
        ("etcd://", "is not HOST:PORT"),
        ("etcd://a:1,,b:2", "is not HOST:PORT"),
        ("etcd://a:99999", "out of range"),
        ("etcd://a:0", "out of range"),
        ("etcd://a:1/x", "is not HOST:PORT"),
        ("etcd://a:1,a:1", "named twice"),
    ],
)
def test_coordinatorMistakes(text: str, complaint: str) -> None:
    """
    A wrong coordinator= value raises ValueError saying what is wrong.
    """
    with pytest.raises(ValueError, match=complaint):
        parseCoordinator(text)


def test_linesInPieces() -> None:
    """
    Objects split anywhere across reads come out whole, in order; empty
    lines are skipped; a last object without a newline comes out at the
    end.
    """
    decoder = JSONLines()
    stream = b'{"a": 1}\n\n{"b": [1, 2]}\n{"c": "x"}'
    objects = []
    for i in range(len(stream)):
        objects += decoder.feed(stream[i : i + 1])
    objects += decoder.end()
    assert objects == [{"a": 1}, {"b": [1, 2]}, {"c": "x"}]


@pytest.mark.parametrize(
    "data, complaint",
    [
        (b"{nope}\n", "not JSON"),
        (b"[1, 2]\n", "a JSON list where an object belongs"),
        (b'"text"\n', "a JSON str"),
        (b"\xff\xfe\n", "not JSON"),
        (b"[" * 100000 + b"\n", "not JSON"),
    ],
)
def test_garbageLines(data: bytes, complaint: str) -> None:
    """
    A line that is not a JSON object is refused, and the decoder stays
    refused.
    """
    decoder = JSONLines()
    with pytest.raises(EtcdProtocolError, match=complaint):
        decoder.feed(data)
    with pytest.raises(EtcdProtocolError):
        decoder.feed(b'{"a": 1}\n')


def test_lineTooLong() -> None:
    """
    A line past the limit is refused as soon as the buffer passes it, before
    its end arrives, so a peer cannot make the client hold unbounded data.
    """
    decoder = JSONLines(maxLineLength=100)
    assert decoder.feed(b'{"a": "' + b"x" * 50) == []
    with pytest.raises(EtcdProtocolError, match="longer than 100 bytes"):
        decoder.feed(b"x" * 60)
    complete = JSONLines(maxLineLength=100)
    with pytest.raises(EtcdProtocolError, match="longer than 100 bytes"):
        complete.feed(b'{"a": "' + b"x" * 200 + b'"}\n')


def _kv(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "key": base64.b64encode(b"k").decode(),
        "value": base64.b64encode(b"v").decode(),
        "create_revision": "7",
        "mod_revision": "9",
        "version": "2",
        "lease": "123",
    }
    base.update(fields)
    return base


def test_keyValue() -> None:
    """
    etcd's 64-bit integers arrive as strings, bytes as base64, and zero
    values are left out.
    """
    assert KeyValue.decode(_kv()) == KeyValue(b"k", b"v", 7, 9, 2, 123)
    assert KeyValue.decode({"key": "aw=="}) == KeyValue(b"k", b"", 0, 0, 0, 0)


@pytest.mark.parametrize(
    "fields, complaint",
    [
        ({"key": "***"}, "not base64"),
        ({"key": 5}, "not a str"),
        ({"mod_revision": "nine"}, "not an integer"),
        ({"mod_revision": True}, "not an integer"),
        ({"lease": [1]}, "not an integer"),
        ({"version": str(2**70)}, "out of 64-bit range"),
    ],
)
def test_keyValueGarbage(fields: dict[str, object], complaint: str) -> None:
    """
    A mistyped field is refused with EtcdProtocolError naming it.
    """
    with pytest.raises(EtcdProtocolError, match=complaint):
        KeyValue.decode(_kv(**fields))


def test_transactionOutcome() -> None:
    """
    A failed conditional write reports the key as it is; a missing header
    revision is refused.
    """
    failed = {
        "header": {"revision": "12"},
        "responses": [{"response_range": {"kvs": [_kv()], "count": "1"}}],
    }
    result = _txnResult(failed)
    assert not result.succeeded and result.revision == 12
    assert result.current is not None and result.current.lease == 123
    won = _txnResult({"header": {"revision": "13"}, "succeeded": True})
    assert won.succeeded and won.revision == 13 and won.current is None
    with pytest.raises(EtcdProtocolError, match="no revision"):
        _txnResult({"succeeded": True})
    with pytest.raises(EtcdProtocolError, match="succeeded='yes'"):
        _txnResult({"header": {"revision": "1"}, "succeeded": "yes"})


@pytest.mark.parametrize(
    "prefix, end",
    [
        (b"/a/", b"/a0"),
        (b"a", b"b"),
        (b"a\xff", b"b"),
        (b"\xff\xff", b"\0"),
    ],
)
def test_prefixEnd(prefix: bytes, end: bytes) -> None:
    """
    The end of the range of keys starting with a prefix: its last byte
    below 0xff incremented; all keys when it is only 0xff bytes.
    """
    from twisted_channel._etcd import _prefixEnd

    assert _prefixEnd(prefix) == end
