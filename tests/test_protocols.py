"""
Twisted's own protocols over a channel, host and client in this process
over real sockets, over both of the channel's transports: twisted.web
(static files through the producer path, a resource answering through a
Deferred, keep-alive, a request without a Host header, Agent and treq),
AMP both ways, the line and string receivers, the wrappers of
twisted.protocols.policies, and an IRC client and server.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.protocols import amp, basic, policies
from twisted.python.failure import Failure
from twisted.web import resource, server, static
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.iweb import IAgentEndpointFactory
from twisted.words.protocols import irc
from zope.interface import implementer

pytestmark = pytest.mark.timeout(120)

#: Larger than the host's per-link cap in these tests, so that only the
#: producer path can serve it.
LARGE = 6 * 1024 * 1024


async def within(waiter: Deferred[Any], seconds: float = 20.0) -> Any:
    from twisted.internet import reactor

    return await waiter.addTimeout(seconds, reactor)


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


class Channel:
    """
    One channel of a test: endpoint strings for it, and every port and
    connection pool it opened, closed at the end.
    """

    def __init__(self, directory: str, kind: str) -> None:
        self.directory = directory
        self.kind = kind
        self.ports: list[Any] = []
        self.pools: list[HTTPConnectionPool] = []
        self.clients: list[Protocol] = []

    def description(self, name: str, options: str = "") -> str:
        return f"channel:{name}:dir={self.directory}:transport={self.kind}{options}"

    async def serve(self, name: str, factory: Any, options: str = "") -> Any:
        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString

        port = await serverFromString(reactor, self.description(name, options)).listen(
            factory
        )
        self.ports.append(port)
        return port

    async def connect(self, name: str, factory: Any, options: str = "") -> Any:
        from twisted.internet import reactor

        protocol = await clientFromString(
            reactor, self.description(name, options)
        ).connect(factory)
        self.clients.append(protocol)
        return protocol

    def agent(self, name: str, persistent: bool = False, options: str = "") -> Agent:
        from twisted.internet import reactor

        pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.pools.append(pool)
        return Agent.usingEndpointFactory(
            reactor, ChannelEndpointFactory(self.description(name, options)), pool
        )

    async def close(self) -> None:
        for pool in self.pools:
            await within(pool.closeCachedConnections())
        for protocol in self.clients:
            transport = protocol.transport
            if transport is not None and not transport.disconnected:  # type: ignore[attr-defined]
                transport.abortConnection()  # type: ignore[attr-defined]
        for port in self.ports:
            await within(port.stopListening())


@implementer(IAgentEndpointFactory)
class ChannelEndpointFactory:
    """
    Every URL goes to one channel: an HTTP client's way to a channel.
    """

    def __init__(self, description: str) -> None:
        self.description = description

    def endpointForURI(self, uri: Any) -> Any:
        from twisted.internet import reactor

        return clientFromString(reactor, self.description)


@pytest_twisted.async_yield_fixture(params=["unix", "tcp"])
async def channel(
    request: pytest.FixtureRequest, channelDirectory: str
) -> AsyncIterator[Channel]:
    result = Channel(channelDirectory, request.param)
    try:
        yield result
    finally:
        await result.close()


# twisted.web


class Later(resource.Resource):
    """
    Answers through a Deferred, after the reactor has turned.
    """

    isLeaf = True

    def render_GET(self, request: server.Request) -> Any:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        def answer(_: object) -> None:
            request.write(b"later: " + request.uri)
            request.finish()

        deferLater(reactor, 0.01, lambda: None).addCallback(answer)
        return server.NOT_DONE_YET


class WhereAmI(resource.Resource):
    """
    Says the host name and the URL twisted.web makes of the request.
    """

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        return request.getRequestHostname() + b" " + request.prePathURL()


class CountingSite(server.Site):
    channels = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.channels += 1
        return super().buildProtocol(addr)


def siteFor(directory: str) -> CountingSite:
    root = static.File(directory)
    root.putChild(b"later", Later())
    root.putChild(b"where", WhereAmI())
    return CountingSite(root)


@pytest.fixture
def files(tmp_path: Any) -> dict[str, bytes]:
    contents = {"large.bin": os.urandom(LARGE), "small.txt": b"small\n"}
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
    return contents


@pytest_twisted.ensureDeferred
async def test_staticFiles(
    channel: Channel, files: dict[str, bytes], tmp_path: Any
) -> None:
    """
    A large file is served whole through the producer path: without it, it
    would not fit under the host's per-link cap of 1 MiB.
    """
    await channel.serve(
        "site", siteFor(str(tmp_path)), ":maxBufferSize=1M:maxMessageSize=256K"
    )
    agent = channel.agent("site")
    for name, content in files.items():
        response = await within(agent.request(b"GET", b"http://site/" + name.encode()))
        assert response.code == 200
        body = await within(readBody(response))
        assert hashlib.sha256(body).digest() == hashlib.sha256(content).digest()
    response = await within(agent.request(b"GET", b"http://site/missing"))
    assert response.code == 404
    await within(readBody(response))


@pytest_twisted.ensureDeferred
async def test_deferredResourceAndKeepAlive(channel: Channel, tmp_path: Any) -> None:
    """
    HTTP/1.1 keep-alive: a persistent pool sends every request over one
    channel connection, answered at once or through a Deferred.
    """
    site = siteFor(str(tmp_path))
    await channel.serve("site", site)
    agent = channel.agent("site", persistent=True)
    for number in range(5):
        path = b"/later?n=%d" % number
        response = await within(agent.request(b"GET", b"http://site" + path))
        assert await within(readBody(response)) == b"later: " + path
    assert site.channels == 1


class RawRequest(Protocol):
    """
    Sends one HTTP/1.0 request without a Host header, keeps the answer.
    """

    def __init__(self) -> None:
        self.answer = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET /where HTTP/1.0\r\n\r\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.answer += data

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.done.callback(self.answer)


@pytest_twisted.ensureDeferred
async def test_requestWithoutHostHeader(channel: Channel, tmp_path: Any) -> None:
    """
    twisted.web names the host of a request without a Host header after
    C{getHost().host}, and puts C{getHost().port} in the URLs it makes.
    """
    await channel.serve("site", siteFor(str(tmp_path)))
    protocol = await channel.connect("site", ClientFactory.forProtocol(RawRequest))
    answer = await within(protocol.done)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    expected = b"localhost" if channel.kind == "unix" else b"127.0.0.1"
    assert body.startswith(expected + b" http://" + expected + b":")


@pytest_twisted.ensureDeferred
async def test_treq(channel: Channel, files: dict[str, bytes], tmp_path: Any) -> None:
    await channel.serve("site", siteFor(str(tmp_path)))
    client = HTTPClient(channel.agent("site", persistent=True))
    response = await within(client.get("http://site/small.txt"))
    assert response.code == 200
    assert await within(response.content()) == files["small.txt"]
    response = await within(client.get("http://site/later"))
    assert await within(response.text()) == "later: /later"


# AMP, both ways


class Sum(amp.Command):
    arguments = [(b"a", amp.Integer()), (b"b", amp.Integer())]
    response = [(b"total", amp.Integer())]


class WhoAreYou(amp.Command):
    arguments: list[tuple[bytes, amp.Argument]] = []
    response = [(b"pid", amp.Integer())]


class HostAMP(amp.AMP):
    @Sum.responder
    def sum(self, a: int, b: int) -> dict[str, int]:
        return {"total": a + b}

    @WhoAreYou.responder
    def whoAreYou(self) -> Deferred[dict[str, int]]:
        # Answered through a Deferred, after asking the client the same.
        return self.callRemote(WhoAreYou).addCallback(
            lambda answer: {"pid": answer["pid"] + 1}
        )


class ClientAMP(amp.AMP):
    @WhoAreYou.responder
    def whoAreYou(self) -> dict[str, int]:
        return {"pid": os.getpid()}


@pytest_twisted.ensureDeferred
async def test_ampBothWays(channel: Channel) -> None:
    """
    The client calls the host, and the host calls the client, pipelined
    over one channel connection.
    """
    await channel.serve("amp", Factory.forProtocol(HostAMP))
    client = await channel.connect("amp", ClientFactory.forProtocol(ClientAMP))
    calls = [client.callRemote(Sum, a=n, b=n * 10) for n in range(200)]
    answers = await within(defer.gatherResults(calls))
    assert [a["total"] for a in answers] == [n * 11 for n in range(200)]
    answer = await within(client.callRemote(WhoAreYou))
    assert answer == {"pid": os.getpid() + 1}


# Line and string receivers


class UpperLine(basic.LineReceiver):
    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line.upper())


class UpperLineOnly(basic.LineOnlyReceiver):
    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line.upper())


class UpperNetstring(basic.NetstringReceiver):
    def stringReceived(self, string: bytes) -> None:
        self.sendString(string.upper())


class UpperInt32(basic.Int32StringReceiver):
    def stringReceived(self, string: bytes) -> None:
        self.sendString(string.upper())


def collecting(base: type) -> type:
    """
    A client subclass of C{base} that collects what it is sent.
    """

    class Collecting(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            self.got: list[bytes] = []

        def lineReceived(self, line: bytes) -> None:
            self.got.append(line)

        def stringReceived(self, string: bytes) -> None:
            self.got.append(string)

    return Collecting


RECEIVERS = {
    "LineReceiver": (UpperLine, lambda p, s: p.sendLine(s)),
    "LineOnlyReceiver": (UpperLineOnly, lambda p, s: p.sendLine(s)),
    "NetstringReceiver": (UpperNetstring, lambda p, s: p.sendString(s)),
    "Int32StringReceiver": (UpperInt32, lambda p, s: p.sendString(s)),
}


@pytest.mark.parametrize("name", list(RECEIVERS))
@pytest_twisted.ensureDeferred
async def test_stringReceivers(channel: Channel, name: str) -> None:
    """
    Each receiver gets whole lines or strings, also those written in
    pieces (each piece a message of its own) and several in one write.
    """
    serverClass, send = RECEIVERS[name]
    await channel.serve("lines", Factory.forProtocol(serverClass))
    client = await channel.connect(
        "lines", ClientFactory.forProtocol(collecting(serverClass.__mro__[1]))
    )
    send(client, b"one")
    # One string written in two messages, then two strings in one message.
    probe = basic.Int32StringReceiver if name == "Int32StringReceiver" else None
    if probe is None and "Netstring" not in name:
        client.transport.write(b"tw")
        client.transport.write(b"o\r\nthree\r\nfour\r\n")
    elif "Netstring" in name:
        client.transport.write(b"3:tw")
        client.transport.write(b"o,5:three,4:four,")
    else:
        client.transport.write(b"\x00\x00\x00\x03tw")
        client.transport.write(b"o\x00\x00\x00\x05three\x00\x00\x00\x04four")
    for _ in range(500):
        if len(client.got) == 4:
            break
        await sleep(0.01)
    assert client.got == [b"ONE", b"TWO", b"THREE", b"FOUR"]


# twisted.protocols.policies


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Collector(Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.reason = reason
        self.lost.callback(None)


async def echoed(client: Collector, count: int) -> None:
    for _ in range(1000):
        if len(client.received) >= count:
            return
        await sleep(0.01)
    raise AssertionError(f"{len(client.received)} of {count} echoes arrived")


@pytest_twisted.ensureDeferred
async def test_wrappingFactoryBothEnds(channel: Channel) -> None:
    await channel.serve("wrapped", policies.WrappingFactory(Factory.forProtocol(Echo)))
    wrapper = await channel.connect(
        "wrapped", policies.WrappingFactory(ClientFactory.forProtocol(Collector))
    )
    client = wrapper.wrappedProtocol
    for number in range(10):
        wrapper.transport.write(b"%d" % number)
    await echoed(client, 10)
    assert client.received == [b"%d" % n for n in range(10)]
    # The wrapper offers what the channel transport provides.
    assert wrapper.transport.disconnecting is False
    wrapper.transport.loseConnection()
    await within(client.lost)
    assert client.reason is not None and client.reason.check(error.ConnectionDone)


@pytest_twisted.ensureDeferred
async def test_throttlingFactory(channel: Channel) -> None:
    """
    The throttle pauses and resumes the host's reading and writing through
    the channel transport; every message still arrives.
    """
    await channel.serve(
        "throttled",
        policies.ThrottlingFactory(
            Factory.forProtocol(Echo), readLimit=2000, writeLimit=2000
        ),
    )
    client = await channel.connect("throttled", ClientFactory.forProtocol(Collector))
    for number in range(20):
        client.transport.write(b"%d:" % number + b"x" * 500)
    await echoed(client, 20)
    assert [m.split(b":")[0] for m in client.received] == [b"%d" % n for n in range(20)]


class Idle(Protocol, policies.TimeoutMixin):
    """
    Closes the connection after 0.3 s without a message.
    """

    def connectionMade(self) -> None:
        self.setTimeout(0.3)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.transport.write(data)  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["TimeoutMixin", "TimeoutFactory"])
@pytest_twisted.ensureDeferred
async def test_idleTimeouts(channel: Channel, how: str) -> None:
    """
    A host protocol that times out closes its client's connection (the
    client is told, and does not come back); messages keep it open.
    """
    if how == "TimeoutMixin":
        factory: Any = Factory.forProtocol(Idle)
    else:
        factory = policies.TimeoutFactory(Factory.forProtocol(Echo), timeoutPeriod=0.3)
    await channel.serve("idle", factory)
    client = await channel.connect("idle", ClientFactory.forProtocol(Collector))
    for _ in range(4):
        client.transport.write(b"ping")
        await sleep(0.1)
    assert not client.lost.called
    await within(client.lost, 5)
    assert client.reason is not None and client.reason.check(error.ConnectionDone)
    assert len(client.received) == 4


# twisted.words: IRC


class IRCServer(irc.IRC):
    """
    Just enough of a server: welcomes a user and echoes private messages
    back to their sender.
    """

    nickname = b""

    def irc_NICK(self, prefix: str, params: list[str]) -> None:
        self.nickname = params[0]

    def irc_USER(self, prefix: str, params: list[str]) -> None:
        self.sendMessage(irc.RPL_WELCOME, self.nickname, ":welcome")

    def irc_PRIVMSG(self, prefix: str, params: list[str]) -> None:
        self.sendMessage(
            "PRIVMSG", self.nickname, ":" + params[1].upper(), prefix="echo!echo@host"
        )


class IRCUser(irc.IRCClient):
    nickname = "alice"

    def __init__(self) -> None:
        self.welcomed: Deferred[None] = Deferred()
        self.heard: Deferred[str] = Deferred()

    def signedOn(self) -> None:
        self.welcomed.callback(None)

    def privmsg(self, user: str, channel: str, message: str) -> None:
        self.heard.callback(message)


@pytest_twisted.ensureDeferred
async def test_irc(channel: Channel) -> None:
    await channel.serve("irc", Factory.forProtocol(IRCServer))
    client = await channel.connect("irc", ClientFactory.forProtocol(IRCUser))
    await within(client.welcomed)
    client.msg("echo", "hello")
    assert await within(client.heard) == "HELLO"
