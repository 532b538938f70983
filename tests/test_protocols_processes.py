"""
Twisted's protocols over a channel whose hosts are real processes, killed
with SIGKILL: short runs of C{tests.protocol_chaos} (whose long runs give
the figures of docs/protocols.md), plain AMP with C{failover=close}, and
C{twistd web --listen channel:...}.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import ClientFactory
from twisted.protocols import amp
from twisted.web.client import Agent, readBody

from twisted_channel import ChannelHostLostError
from twisted_channel.amp import ChannelAMP
from twisted_channel.testing import ChannelProcesses

from .protocol_chaos import (
    ChannelEndpointFactory,
    Hosts,
    agentRun,
    ampRun,
    budgetRun,
    closeWhileHosted,
    sleep,
)
from .protocol_commands import DoubleLater

pytestmark = pytest.mark.timeout(240)

TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]


@pytest.fixture(params=["unix", "tcp"])
def transportKind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def reactorName(request: pytest.FixtureRequest) -> str:
    return "asyncio" if request.config.getoption("reactor") == "asyncio" else "default"


@pytest_twisted.ensureDeferred
async def test_agentWithFailoverCloseNeverHangs(
    channelDirectory: str, transportKind: str, reactorName: str
) -> None:
    """
    Requests cut by a host's death end in a clean error; none hangs, no
    body is spliced from two hosts' answers, and the others are served.
    """
    figures = await agentRun(
        channelDirectory, transportKind, reactorName, kills=2, interval=0.4
    )
    assert figures.kills == 2
    assert figures.hangs == 0
    assert figures.wrongBodies == 0
    assert figures.otherErrors == 0, figures.errorKinds
    assert figures.fullBodies > 0
    assert figures.fullBodies + figures.cleanErrors == figures.requests


@pytest_twisted.ensureDeferred
async def test_channelAmpCallsSurviveHostKills(
    channelDirectory: str, transportKind: str, reactorName: str
) -> None:
    """
    Every pipelined call is answered, rightly, across host kills.
    """
    figures = await ampRun(
        channelDirectory, transportKind, reactorName, kills=2, calls=300
    )
    assert figures.kills == 2
    assert figures.calls >= 300
    assert figures.answered == figures.calls, figures.errorKinds
    assert figures.errors == figures.hangs == figures.wrongResults == 0


@pytest_twisted.ensureDeferred
async def test_plainAmpWithFailoverCloseFailsOutstandingCalls(
    channelDirectory: str, transportKind: str, reactorName: str
) -> None:
    """
    With C{failover=close}, a plain AMP client's outstanding calls fail
    with the connection when the host dies: each is answered or fails,
    none hangs.
    """
    from twisted.internet import reactor

    record = os.path.join(channelDirectory, "runs")
    with ChannelProcesses(channelDirectory, reactorName, transportKind) as processes:
        hosts = Hosts(processes, "calls", "amp", ["--record", record])
        await hosts.host()
        client = await clientFromString(
            reactor,
            f"channel:calls:dir={channelDirectory}:transport={transportKind}"
            ":failover=close",
        ).connect(ClientFactory.forProtocol(amp.AMP))
        await client.callRemote(DoubleLater, n=0)
        calls = [client.callRemote(DoubleLater, n=n) for n in range(1, 51)]
        await hosts.killHost()
        outcomes = await defer.DeferredList(
            [call.addTimeout(30, reactor) for call in calls], consumeErrors=True
        )
    failures = [result for ok, result in outcomes if not ok]
    answers = [result for ok, result in outcomes if ok]
    assert failures, "the host died with no call outstanding"
    for failure in failures:
        assert failure.check(ChannelHostLostError), failure
    assert all(answer["doubled"] % 2 == 0 for answer in answers)
    assert client.transport.disconnected


@pytest_twisted.ensureDeferred
async def test_twistdWebServesOverAChannel(
    channelDirectory: str, transportKind: str, reactorName: str, tmp_path: Any
) -> None:
    """
    C{twistd -n web --listen channel:...} serves files, and a second one
    takes over when the first is killed.
    """
    from twisted.internet import reactor

    (tmp_path / "index.txt").write_bytes(b"served by twistd\n")
    (tmp_path / "large.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    description = f"channel:site:dir={channelDirectory}:transport={transportKind}"
    command = [
        *TWISTD,
        "-n",
        "--pidfile=",
        *(["--reactor=asyncio"] if reactorName == "asyncio" else []),
        "web",
        "--listen",
        description,
        "--path",
        str(tmp_path),
    ]
    with ChannelProcesses(channelDirectory, reactorName, transportKind) as processes:
        first = processes.start(command, label="twistd web", lifetime=120)
        published = processes.channelFile("site")
        for _ in range(2000):
            if os.path.exists(published):
                break
            await sleep(0.01)
        agent = Agent.usingEndpointFactory(
            reactor, ChannelEndpointFactory(description + ":failover=close")
        )
        for name in ("index.txt", "large.bin"):
            response = await agent.request(
                b"GET", b"http://site/" + name.encode()
            ).addTimeout(30, reactor)
            body = await readBody(response).addTimeout(30, reactor)
            assert body == (tmp_path / name).read_bytes()
        second = processes.start(command, label="twistd web", lifetime=120)
        await sleep(1.0)
        first.kill(signal.SIGKILL)
        # With failover=close a request that races the host's death may end
        # with a clean error (a dying host's socket still accepts, and its
        # welcome can be under way as it dies): ask once it is gone.
        for _ in range(2000):
            if first.exited():
                break
            await sleep(0.01)
        response = await agent.request(b"GET", b"http://site/index.txt").addTimeout(
            30, reactor
        )
        assert await readBody(response).addTimeout(30, reactor) == b"served by twistd\n"
        assert not second.exited()


@pytest_twisted.ensureDeferred
async def test_hostStaysWithinItsBudgetWithFrozenClients(
    channelDirectory: str, transportKind: str, reactorName: str
) -> None:
    """
    Frozen (SIGSTOPped) clients of a twisted.web host, each asking for a
    body written in one C{write()}: the host grows by about its budget, not
    by what they asked for, and a client that reads is served meanwhile.
    """
    figures = await budgetRun(
        channelDirectory,
        transportKind,
        reactorName,
        budget="16M",
        frozen=6,
        bodySize=8 * 1024 * 1024,
    )
    asked = figures.frozen * figures.bodySize // 1024
    assert figures.growthKiB < figures.budget // 1024 + 12 * 1024, (figures, asked)
    assert figures.othersServed == figures.othersAsked == 3


@pytest_twisted.ensureDeferred
async def test_answerToADeadHostsCallIsNotGivenToTheNext(
    channelDirectory: str, transportKind: str, reactorName: str
) -> None:
    """
    A host calls its ChannelAMP client and dies before the answer; the next
    host calls the client too, with the same AMP tag.  It gets its own
    answer, not the one meant for the dead host.
    """
    from twisted.internet import reactor

    record = os.path.join(channelDirectory, "runs")
    with ChannelProcesses(channelDirectory, reactorName, transportKind) as processes:
        hosts = Hosts(processes, "calls", "amp", ["--record", record, "--ask"])
        first = await hosts.host()
        client = await clientFromString(
            reactor,
            f"channel:calls:dir={channelDirectory}:transport={transportKind}",
        ).connect(ClientFactory.forProtocol(SlowClient))
        await within(client.asked, 20)
        await hosts.killHost()
        second = await hosts.host()
        for _ in range(3000):
            if os.path.exists(record) and b"answer" in open(record, "rb").read():
                break
            await sleep(0.01)
        await sleep(SlowClient.delay * 2)
        await closeWhileHosted(client.transport)
    with open(record, "rb") as f:
        answers = [line.split() for line in f if line.startswith(b"answer")]
    assert answers == [[b"answer", b"%d" % second.pid, b"%d" % (2 * second.pid)]]
    assert first.pid != second.pid


class SlowClient(ChannelAMP):
    """
    Answers the host's calls 0.3 s later.
    """

    delay = 0.3

    def __init__(self) -> None:
        super().__init__()
        self.asked: defer.Deferred[None] = defer.Deferred()

    @DoubleLater.responder
    def doubleLater(self, n: int) -> Any:
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        if not self.asked.called:
            self.asked.callback(None)
        return deferLater(reactor, self.delay, lambda: {"doubled": 2 * n})


async def within(waiter: defer.Deferred[Any], seconds: float) -> Any:
    from twisted.internet import reactor

    return await waiter.addTimeout(seconds, reactor)
