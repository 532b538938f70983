"""
Unit tests for the C{channel:} endpoint string, parsed through Twisted's
plugin system, and for the interfaces the endpoint's objects provide.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from zope.interface.verify import verifyObject

from twisted_channel import (
    DEFAULT_MAX_BUFFER_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_TIMEOUT,
    ChannelAddress,
    ChannelEndpoint,
)
from twisted_channel._directory import NAME_RULE
from twisted_channel._parser import ChannelEndpointParser

Parse = Callable[[Any, Any], Any]
PARSERS = pytest.mark.parametrize(
    "parse", [serverFromString, clientFromString], ids=["server", "client"]
)


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


@PARSERS
def test_plainName(parse: Parse, reactor: MemoryReactorClock) -> None:
    """
    C{channel:NAME} is a L{ChannelEndpoint} with the default options, in the
    default runtime directory.
    """
    endpoint = parse(reactor, "channel:jobs")
    assert isinstance(endpoint, ChannelEndpoint)
    assert endpoint.name == "jobs"
    assert endpoint.timeout == DEFAULT_TIMEOUT
    assert endpoint.maxMessageSize == DEFAULT_MAX_MESSAGE_SIZE
    assert endpoint.maxBufferSize == DEFAULT_MAX_BUFFER_SIZE
    runtime = os.environ["XDG_RUNTIME_DIR"]
    assert endpoint.paths.directory == os.path.join(runtime, "twisted-channel")
    assert endpoint.paths.socket == os.path.join(
        runtime, "twisted-channel", "jobs.sock"
    )
    assert endpoint.paths.lock == os.path.join(runtime, "twisted-channel", "jobs.lock")
    assert endpoint.serverFactory is None


@PARSERS
def test_nothingCreated(parse: Parse, reactor: MemoryReactorClock) -> None:
    """
    Parsing creates nothing on disk.
    """
    endpoint = parse(reactor, "channel:jobs")
    assert not os.path.exists(endpoint.paths.directory)


@PARSERS
def test_allOptions(parse: Parse, reactor: MemoryReactorClock) -> None:
    """
    Every option is taken into account.
    """
    endpoint = parse(
        reactor,
        "channel:jobs.v2_x-y:dir=/tmp/somewhere:timeout=2.5"
        ":maxMessageSize=1M:maxBufferSize=32M",
    )
    assert endpoint.name == "jobs.v2_x-y"
    assert endpoint.paths.directory == "/tmp/somewhere"
    assert endpoint.paths.socket == "/tmp/somewhere/jobs.v2_x-y.sock"
    assert endpoint.timeout == 2.5
    assert endpoint.maxMessageSize == 1024 * 1024
    assert endpoint.maxBufferSize == 32 * 1024 * 1024


@PARSERS
def test_relativeDirectory(
    parse: Parse, reactor: MemoryReactorClock, tmp_path: Any, monkeypatch: Any
) -> None:
    """
    A relative C{dir=} is made absolute.
    """
    monkeypatch.chdir(tmp_path)
    endpoint = parse(reactor, "channel:jobs:dir=run")
    assert endpoint.paths.directory == str(tmp_path / "run")


@PARSERS
@pytest.mark.parametrize(
    "option, expected",
    [
        ("timeout=0", 0.0),
        ("timeout=30", 30.0),
        ("timeout=0.25", 0.25),
    ],
)
def test_timeout(
    parse: Parse, reactor: MemoryReactorClock, option: str, expected: float
) -> None:
    """
    C{timeout=} is seconds; 0 (wait for ever) is allowed.
    """
    endpoint = parse(reactor, f"channel:jobs:{option}")
    assert endpoint.timeout == expected
    assert isinstance(endpoint.timeout, float)


@PARSERS
@pytest.mark.parametrize(
    "text, expected",
    [
        ("1M", 1024**2),
        ("16777216", 16777216),
        ("16M", 16 * 1024**2),
        ("16MiB", 16 * 1024**2),
        ("16mb", 16 * 1024**2),
        ("512K", 512 * 1024),
        ("1", 1),
    ],
)
def test_maxMessageSize(
    parse: Parse, reactor: MemoryReactorClock, text: str, expected: int
) -> None:
    """
    Sizes are bytes, with optional binary K, M or G suffixes.
    """
    endpoint = parse(reactor, f"channel:jobs:maxMessageSize={text}")
    assert endpoint.maxMessageSize == expected
    assert endpoint.maxBufferSize == DEFAULT_MAX_BUFFER_SIZE


@PARSERS
def test_maxBufferSize(parse: Parse, reactor: MemoryReactorClock) -> None:
    """
    C{maxBufferSize=} sets the buffer cap; a gigabyte is written C{1G}.
    """
    endpoint = parse(reactor, "channel:jobs:maxBufferSize=1G")
    assert endpoint.maxBufferSize == 1024**3
    endpoint = parse(reactor, "channel:jobs:maxMessageSize=1K:maxBufferSize=1K")
    assert endpoint.maxBufferSize == endpoint.maxMessageSize == 1024


@PARSERS
def test_failover(parse: Parse, reactor: MemoryReactorClock) -> None:
    """
    C{failover=} is C{resend} by default, or C{close}.
    """
    assert parse(reactor, "channel:jobs").failover == "resend"
    assert parse(reactor, "channel:jobs:failover=resend").failover == "resend"
    assert parse(reactor, "channel:jobs:failover=close").failover == "close"


def test_failoverChecked(reactor: MemoryReactorClock) -> None:
    with pytest.raises(ValueError, match="failover must be 'resend' or 'close'"):
        ChannelEndpoint(reactor, "jobs", failover="sometimes")


@PARSERS
def test_bytesDescription(parse: Parse, reactor: MemoryReactorClock) -> None:
    """
    A description given as UTF-8 bytes is parsed like the text.
    """
    endpoint = parse(reactor, b"channel:jobs:timeout=3:dir=/tmp/b")
    assert endpoint.name == "jobs"
    assert endpoint.timeout == 3.0
    assert endpoint.paths.directory == "/tmp/b"


@PARSERS
@pytest.mark.parametrize("length", [1, 99, 100])
def test_longestNames(parse: Parse, reactor: MemoryReactorClock, length: int) -> None:
    """
    Names of up to 100 characters are valid.
    """
    name = "n" * length
    assert parse(reactor, f"channel:{name}").name == name


@PARSERS
def test_longNameShortensSocketPath(parse: Parse, reactor: MemoryReactorClock) -> None:
    """
    A 100-character name in a long directory still gets a socket path that
    fits in a Unix socket address, distinct for distinct names.
    """
    directory = "/tmp/" + "d" * 50
    first = parse(reactor, f"channel:{'a' * 100}:dir={directory}")
    second = parse(reactor, f"channel:{'a' * 99}b:dir={directory}")
    for endpoint in (first, second):
        assert len(endpoint.paths.socket.encode()) <= 107
        assert os.path.dirname(endpoint.paths.socket) == directory
        assert endpoint.paths.socket.endswith(".sock")
        assert endpoint.paths.lock == os.path.join(directory, endpoint.name + ".lock")
    assert first.paths.socket != second.paths.socket


@PARSERS
def test_tooLongDirectory(parse: Parse, reactor: MemoryReactorClock) -> None:
    """
    A directory so long that no socket fits in it is refused.
    """
    with pytest.raises(ValueError, match="too long"):
        parse(reactor, "channel:jobs:dir=/tmp/" + "d" * 120)


BAD = [
    ("channel", "needs a name"),
    ("channel:", "channel name is empty"),
    ("channel:a/b", "contains '/'"),
    ("channel:..", "starts with '.'"),
    ("channel:.hidden", "starts with '.'"),
    ("channel:-x", "starts with '-'"),
    ("channel:a\x00b", "contains '\\\\x00'"),
    ("channel:" + "a" * 101, "is 101 characters long"),
    ("channel:jöbs", "contains 'ö'"),
    ("channel:a b", "contains ' '"),
    ("channel:jobs:bogus=1", "unknown channel endpoint option 'bogus'"),
    ("channel:jobs:Timeout=1", "unknown channel endpoint option 'Timeout'"),
    ("channel:jobs:timeout=x", "timeout='x' is not a number of seconds"),
    ("channel:jobs:timeout=", "timeout='' is not a number of seconds"),
    ("channel:jobs:timeout=-1", "timeout must be a finite number of seconds, 0 or"),
    ("channel:jobs:timeout=nan", "timeout must be a finite number"),
    ("channel:jobs:timeout=inf", "timeout must be a finite number"),
    ("channel:jobs:maxMessageSize=1Q", "maxMessageSize='1Q' is not a size"),
    ("channel:jobs:maxMessageSize=0", "maxMessageSize must be from 1 to"),
    ("channel:jobs:maxMessageSize=-5", "maxMessageSize='-5' is not a size"),
    ("channel:jobs:maxMessageSize=", "maxMessageSize='' is not a size"),
    ("channel:jobs:maxBufferSize=1.5M", "maxBufferSize='1.5M' is not a size"),
    ("channel:jobs:maxBufferSize=0", "maxBufferSize must be from 1 to"),
    ("channel:jobs:maxMessageSize=5G", "maxMessageSize must be from 1 to"),
    ("channel:jobs:maxBufferSize=1K", r"maxBufferSize \(1024\) must be at least"),
    ("channel:jobs:maxMessageSize=100M", "must be at least maxMessageSize"),
    ("channel:jobs:", "one name then key=value options; unexpected ''"),
    ("channel:jobs:other", "unexpected 'other'"),
    ("channel:jobs:dir=", "dir= is empty"),
    ("channel:jobs:failover=never", "failover='never': use failover=resend"),
    ("channel:jobs:failover=", "failover='': use failover=resend"),
    ("channel:jobs:failover=Close", "failover='Close'"),
    ("channel:jobs:dir=/tmp/a\x00b", "NUL"),
    (b"channel:j\xffobs", "name is not valid UTF-8"),
    (b"channel:jobs:dir=/tmp/\xff", "option dir is not valid UTF-8"),
    (b"channel:a/b", "contains '/'"),
    (b"channel:jobs:timeout=nan", "timeout must be a finite number"),
]


@PARSERS
@pytest.mark.parametrize("description, message", BAD)
def test_badDescriptions(
    parse: Parse, reactor: MemoryReactorClock, description: str | bytes, message: str
) -> None:
    """
    Every malformed description raises L{ValueError} saying what is wrong.
    """
    with pytest.raises(ValueError, match=message):
        parse(reactor, description)


@PARSERS
@pytest.mark.parametrize(
    "description",
    ["channel:", "channel:a/b", "channel:..", "channel:" + "x" * 101, "channel:é"],
)
def test_nameErrorsStateTheRule(
    parse: Parse, reactor: MemoryReactorClock, description: str
) -> None:
    """
    A bad name's message quotes the naming rule in full.
    """
    with pytest.raises(ValueError) as caught:
        parse(reactor, description)
    assert NAME_RULE in str(caught.value)


def test_unknownOptionListsKnownOnes(reactor: MemoryReactorClock) -> None:
    """
    The message for an unknown option lists the known ones.
    """
    with pytest.raises(ValueError) as caught:
        serverFromString(reactor, "channel:jobs:colour=blue")
    for option in ("dir=", "timeout=", "maxMessageSize=", "maxBufferSize="):
        assert option in str(caught.value)


# Interfaces


def test_endpointInterfaces(reactor: MemoryReactorClock) -> None:
    """
    The endpoint is both a client and a server endpoint.
    """
    endpoint = serverFromString(reactor, "channel:jobs")
    assert verifyObject(IStreamClientEndpoint, endpoint)
    assert verifyObject(IStreamServerEndpoint, endpoint)


def test_parserInterfaces() -> None:
    """
    The parser is a plugin for both kinds of endpoint string.
    """
    parser = ChannelEndpointParser()
    assert verifyObject(IPlugin, parser)
    assert verifyObject(IStreamServerEndpointStringParser, parser)
    assert verifyObject(IStreamClientEndpointStringParserWithReactor, parser)
    assert parser.prefix == "channel"


@pytest.mark.parametrize(
    "interface",
    [IStreamServerEndpointStringParser, IStreamClientEndpointStringParserWithReactor],
)
def test_pluginDiscovered(interface: Any) -> None:
    """
    Twisted's plugin system finds exactly one C{channel} parser.
    """
    found = [
        p for p in getPlugins(interface) if getattr(p, "prefix", None) == "channel"
    ]
    assert len(found) == 1
    assert isinstance(found[0], ChannelEndpointParser)


def test_addressInterface() -> None:
    """
    L{ChannelAddress} is an L{IAddress}, compared by value.
    """
    address = ChannelAddress("jobs", "/tmp/jobs.sock", "host", 12, 0)
    assert verifyObject(IAddress, address)
    assert address == ChannelAddress("jobs", "/tmp/jobs.sock", "host", 12, 0)
    assert ChannelAddress("jobs", "/p").role is None


def test_directConstructionChecks(reactor: MemoryReactorClock) -> None:
    """
    L{ChannelEndpoint} checks its arguments like the parser does.
    """
    with pytest.raises(ValueError, match="timeout must be a number"):
        ChannelEndpoint(reactor, "jobs", timeout="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be a number"):
        ChannelEndpoint(reactor, "jobs", timeout=True)
    with pytest.raises(ValueError, match="maxMessageSize must be a whole number"):
        ChannelEndpoint(reactor, "jobs", maxMessageSize=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel name must be a string"):
        ChannelEndpoint(reactor, b"jobs")  # type: ignore[arg-type]
    endpoint = ChannelEndpoint(reactor, "jobs", timeout=1)
    assert endpoint.timeout == 1.0
