"""
Twisted's protocols over a channel whose host is SIGKILLed again and again:
the figures of docs/protocols.md, and the fault tests of
C{tests/test_protocols_processes.py} (the same runs, shorter).

    python -m tests.protocol_chaos [--kills 10] [--calls 2000] [--transport unix|tcp]
        [--only faults|budget]

Run from the repository's root.  Candidate hosts are child processes
(C{tests/protocol_peers.py}); the client runs here:

 - B{agent}: twisted.web's C{Agent}, C{failover=close}, fetching a small
   and a 1 MiB file over a persistent pool, a few requests at a time,
   while the host is killed every C{--interval} seconds (and a new
   candidate started).  Each request ends as a full body, a clean error
   (C{ResponseNeverReceived}, C{ResponseFailed}), another error, a wrong
   body, or a hang (nothing within 30 s).
 - B{amp}: a L{twisted_channel.amp.ChannelAMP} client (C{failover=resend})
   making pipelined calls, half answered at once and half through a
   Deferred, while the host is killed; each call is answered (and checked:
   C{2n}), fails, or hangs (nothing within 60 s).  The hosts record every
   call they run: a call run twice is a duplicate.
 - B{budget}: ten clients of a twisted.web host ask for a 15 MiB answer
   written in one C{write()} and are SIGSTOPped; the host's RSS growth is
   measured with C{maxHostBufferSize=32M} and with a budget too large to
   matter (C{1G}), and a client that reads fetches a 1 MiB file meanwhile.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import ClientFactory
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from twisted_channel._parser import parseSize
from twisted_channel.amp import ChannelAMP
from twisted_channel.testing import ChannelProcesses

from .protocol_commands import Double, DoubleLater

PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocol_peers.py")
CANDIDATES = 3
REQUEST_TIMEOUT = 30.0
CALL_TIMEOUT = 60.0


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


class Hosts:
    """
    The candidate hosts of one run: C{CANDIDATES} of them at all times.
    """

    def __init__(
        self, processes: ChannelProcesses, name: str, mode: str, extra: list[str]
    ) -> None:
        self.processes = processes
        self.name = name
        self.mode = mode
        self.extra = extra
        self.live = [self.start() for _ in range(CANDIDATES)]
        self.kills = 0

    def start(self) -> Any:
        processes = self.processes
        return processes.start(
            [
                sys.executable,
                PEERS,
                self.mode,
                "--dir",
                processes.directory,
                "--name",
                self.name,
                "--transport",
                processes.transportKind or "unix",
                "--reactor",
                processes.reactorName,
                *self.extra,
            ],
            label=f"{self.mode} candidate",
        )

    async def host(self, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for child in self.live:
                if child.role() == "host":
                    return child
                if child.exited():
                    raise AssertionError(f"{child.label} exited: {child.stderr}")
            await sleep(0.01)
        raise AssertionError(f"no {self.mode} host within {timeout} s")

    async def killHost(self) -> None:
        host = await self.host()
        host.kill(signal.SIGKILL)
        self.kills += 1
        self.live.remove(host)
        self.live.append(self.start())


async def killRepeatedly(hosts: Hosts, kills: int, interval: float) -> None:
    await hosts.host()
    for _ in range(kills):
        await sleep(interval)
        await hosts.killHost()
    await hosts.host()


@implementer(IAgentEndpointFactory)
class ChannelEndpointFactory:
    """
    Every URL goes to one channel.
    """

    def __init__(self, description: str) -> None:
        self.description = description

    def endpointForURI(self, uri: Any) -> Any:
        from twisted.internet import reactor

        return clientFromString(reactor, self.description)


@dataclass
class AgentFigures:
    kills: int = 0
    requests: int = 0
    fullBodies: int = 0
    cleanErrors: int = 0
    otherErrors: int = 0
    wrongBodies: int = 0
    hangs: int = 0
    errorKinds: Counter[str] = field(default_factory=Counter)


async def agentRun(
    directory: str,
    transportKind: str,
    reactorName: str = "default",
    kills: int = 10,
    interval: float = 0.5,
    workers: int = 4,
) -> AgentFigures:
    """
    Fetch files through C{Agent} with C{failover=close} while the host is
    killed C{kills} times.
    """
    from twisted.internet import reactor

    files = {b"small.txt": b"small\n" * 10, b"large.bin": os.urandom(1024 * 1024)}
    served = os.path.join(directory, "served")
    os.mkdir(served)
    for fileName, content in files.items():
        with open(os.path.join(served, fileName.decode()), "wb") as f:
            f.write(content)
    digests = {n: hashlib.sha256(c).digest() for n, c in files.items()}
    figures = AgentFigures()
    with ChannelProcesses(directory, reactorName, transportKind) as processes:
        hosts = Hosts(processes, "site", "web", ["--path", served])
        description = (
            f"channel:site:dir={directory}:transport={transportKind}:failover=close"
        )
        pool = HTTPConnectionPool(reactor, persistent=True)
        agent = Agent.usingEndpointFactory(
            reactor, ChannelEndpointFactory(description), pool
        )
        killing = defer.ensureDeferred(killRepeatedly(hosts, kills, interval))
        names = itertools.cycle(files)

        async def fetch(fileName: bytes) -> None:
            async def once() -> bytes:
                response = await agent.request(b"GET", b"http://site/" + fileName)
                body: bytes = await readBody(response)
                return body if response.code == 200 else b"status %d" % response.code

            figures.requests += 1
            try:
                body = await defer.ensureDeferred(once()).addTimeout(
                    REQUEST_TIMEOUT, reactor
                )
            except defer.TimeoutError:
                figures.hangs += 1
                return
            except (ResponseNeverReceived, ResponseFailed) as e:
                figures.cleanErrors += 1
                figures.errorKinds[type(e).__name__] += 1
                return
            except Exception as e:
                figures.otherErrors += 1
                figures.errorKinds[type(e).__name__] += 1
                return
            if hashlib.sha256(body).digest() == digests[fileName]:
                figures.fullBodies += 1
            else:
                figures.wrongBodies += 1

        async def worker() -> None:
            while not killing.called:
                await fetch(next(names))
            for _ in range(4):
                await fetch(next(names))

        await defer.gatherResults(
            [defer.ensureDeferred(worker()) for _ in range(workers)]
        )
        await killing
        await pool.closeCachedConnections()
        figures.kills = hosts.kills
    return figures


@dataclass
class AmpFigures:
    kills: int = 0
    calls: int = 0
    answered: int = 0
    errors: int = 0
    wrongResults: int = 0
    hangs: int = 0
    duplicates: int = 0
    errorKinds: Counter[str] = field(default_factory=Counter)


async def ampRun(
    directory: str,
    transportKind: str,
    reactorName: str = "default",
    kills: int = 10,
    interval: float = 0.4,
    calls: int = 2000,
    window: int = 20,
) -> AmpFigures:
    """
    Make at least C{calls} pipelined calls through L{ChannelAMP}, half
    answered through a Deferred, while the host is killed C{kills} times.
    """
    from twisted.internet import reactor

    record = os.path.join(directory, "runs")
    figures = AmpFigures()
    with ChannelProcesses(directory, reactorName, transportKind) as processes:
        hosts = Hosts(processes, "calls", "amp", ["--record", record])
        client = await clientFromString(
            reactor,
            f"channel:calls:dir={directory}:transport={transportKind}:timeout=20",
        ).connect(ClientFactory.forProtocol(ChannelAMP))
        killing = defer.ensureDeferred(killRepeatedly(hosts, kills, interval))
        numbers = itertools.count(1)
        # Spread the calls over the kills, a window at a time.
        pace = max(kills * interval / max(calls / window, 1), 0.0)

        async def one(n: int) -> None:
            command = Double if n % 2 else DoubleLater
            figures.calls += 1
            try:
                answer = await client.callRemote(command, n=n).addTimeout(
                    CALL_TIMEOUT, reactor
                )
            except defer.TimeoutError:
                figures.hangs += 1
                return
            except Exception as e:
                figures.errors += 1
                figures.errorKinds[type(e).__name__] += 1
                return
            figures.answered += 1
            if answer != {"doubled": 2 * n}:
                figures.wrongResults += 1

        async def worker() -> None:
            while not killing.called or figures.calls < calls:
                await one(next(numbers))
                if pace:
                    await sleep(pace)

        await defer.gatherResults(
            [defer.ensureDeferred(worker()) for _ in range(window)]
        )
        await killing
        await closeWhileHosted(client.transport)
        figures.kills = hosts.kills
    runs: Counter[int] = Counter()
    with open(record, "rb") as f:
        for line in f:
            runs[int(line.split()[1])] += 1
    figures.duplicates = sum(count - 1 for count in runs.values() if count > 1)
    return figures


@dataclass
class BudgetFigures:
    budget: int = 0
    frozen: int = 0
    bodySize: int = 0
    growthKiB: int = 0
    othersServed: int = 0
    othersAsked: int = 0


async def budgetRun(
    directory: str,
    transportKind: str,
    reactorName: str = "default",
    budget: str = "32M",
    frozen: int = 10,
    bodySize: int = 15 * 1024 * 1024,
) -> BudgetFigures:
    """
    SIGSTOP C{frozen} clients of a twisted.web host, each of which asked for
    a C{bodySize} answer written in one C{write()}; measure how much the
    host grew, and whether a client that reads is served meanwhile.
    """
    from twisted.internet import reactor

    served = os.path.join(directory, "served")
    os.mkdir(served)
    page = os.urandom(1024 * 1024)
    with open(os.path.join(served, "page.bin"), "wb") as f:
        f.write(page)
    figures = BudgetFigures(frozen=frozen, bodySize=bodySize)
    figures.budget = parseSize("maxHostBufferSize", budget)
    with ChannelProcesses(directory, reactorName, transportKind) as processes:
        hosts = Hosts(
            processes,
            "site",
            "web",
            ["--path", served, "--option", f"maxHostBufferSize={budget}"],
        )
        host = await hosts.host()
        agent = Agent.usingEndpointFactory(
            reactor,
            ChannelEndpointFactory(
                f"channel:site:dir={directory}:transport={transportKind}"
            ),
        )

        async def fetchPage() -> bool:
            response = await agent.request(b"GET", b"http://site/page.bin")
            body = await readBody(response)
            return bool(body == page)

        # Warm up the host (imports, first buffers) before measuring.
        await defer.ensureDeferred(fetchPage()).addTimeout(30, reactor)
        before = await rss(host)
        clients = []
        for _ in range(frozen):
            client = processes.start(
                [
                    sys.executable,
                    PEERS,
                    "fetch",
                    "--dir",
                    directory,
                    "--name",
                    "site",
                    "--transport",
                    transportKind,
                    "--reactor",
                    reactorName,
                    "--path",
                    f"/big?size={bodySize}",
                ],
                label="frozen client",
            )
            clients.append(client)
        for client in clients:
            await waitLine(client, "SENT")
            client.kill(signal.SIGSTOP)
        # Let the host answer them all.
        await sleep(2.0)
        for _ in range(3):
            figures.othersAsked += 1
            ok = await defer.ensureDeferred(fetchPage()).addTimeout(30, reactor)
            figures.othersServed += ok
        after = await rss(host)
        figures.growthKiB = after - before
        for client in clients:
            client.kill(signal.SIGCONT)
    return figures


async def waitLine(child: Any, word: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in child.collect():
            if line.split()[:1] == [word]:
                return str(line)
        if child.exited():
            break
        await sleep(0.01)
    raise AssertionError(f"{child.label} printed no {word}: {child.stderr}")


async def rss(child: Any) -> int:
    """
    The resident size of a candidate host, in KiB.
    """
    seen = len([line for line in child.collect() if line.startswith("RSS ")])
    child.send("rss")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = [line for line in child.collect() if line.startswith("RSS ")]
        if len(lines) > seen:
            return int(lines[-1].split()[1])
        await sleep(0.01)
    raise AssertionError("the host did not say its RSS")


async def closeWhileHosted(transport: Any, timeout: float = 10.0) -> None:
    """
    Close a client's connection while its hosts still run (it waits for
    their acknowledgements), so that it does not outlive the run.
    """
    transport.loseConnection()
    deadline = time.monotonic() + timeout
    while not transport.disconnected and time.monotonic() < deadline:
        await sleep(0.01)
    if not transport.disconnected:
        transport.abortConnection()
        await sleep(0)


def table(agents: dict[str, AgentFigures], amps: dict[str, AmpFigures]) -> str:
    lines = [
        "| run | transport | host kills | requests or calls | full / answered "
        "| clean errors | other errors | wrong | hangs | duplicates run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, a in agents.items():
        lines.append(
            f"| Agent, `failover=close`, small and 1 MiB files | {kind} | "
            f"{a.kills} | {a.requests} | {a.fullBodies} | {a.cleanErrors} | "
            f"{a.otherErrors} | {a.wrongBodies} | {a.hangs} | - |"
        )
    for kind, m in amps.items():
        lines.append(
            f"| `ChannelAMP`, half through a Deferred | {kind} | {m.kills} | "
            f"{m.calls} | {m.answered} | - | {m.errors} | {m.wrongResults} | "
            f"{m.hangs} | {m.duplicates} |"
        )
    return "\n".join(lines)


def budgetTable(budgets: dict[tuple[str, str], BudgetFigures]) -> str:
    lines = [
        "| transport | `maxHostBufferSize=` | frozen clients x answer "
        "| host RSS growth | a reading client served |",
        "|---|---|---|---|---|",
    ]
    for (kind, budget), b in budgets.items():
        lines.append(
            f"| {kind} | `{budget}` | {b.frozen} x "
            f"{b.bodySize // (1024 * 1024)} MiB | {b.growthKiB / 1024:.1f} MiB | "
            f"{b.othersServed} of {b.othersAsked} |"
        )
    return "\n".join(lines)


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.protocol_chaos")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--transport", choices=["unix", "tcp", "both"], default="both")
    parser.add_argument("--reactor", choices=["default", "asyncio"], default="default")
    parser.add_argument("--only", choices=["faults", "budget"])
    options = parser.parse_args(arguments)
    if options.reactor == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import task

    kinds = ["unix", "tcp"] if options.transport == "both" else [options.transport]
    agents: dict[str, AgentFigures] = {}
    amps: dict[str, AmpFigures] = {}
    budgets: dict[tuple[str, str], BudgetFigures] = {}

    async def run(reactor: Any) -> None:
        if options.only != "faults":
            for kind in kinds:
                for budget in ("32M", "1G"):
                    with tempfile.TemporaryDirectory(
                        prefix="tc-", dir="/tmp"
                    ) as directory:
                        os.chmod(directory, 0o700)
                        budgets[kind, budget] = await budgetRun(
                            directory, kind, options.reactor, budget=budget
                        )
            print(budgetTable(budgets))
        if options.only == "budget":
            return
        for kind in kinds:
            with tempfile.TemporaryDirectory(prefix="tc-", dir="/tmp") as directory:
                os.chmod(directory, 0o700)
                agents[kind] = await agentRun(
                    directory, kind, options.reactor, kills=options.kills
                )
            with tempfile.TemporaryDirectory(prefix="tc-", dir="/tmp") as directory:
                os.chmod(directory, 0o700)
                amps[kind] = await ampRun(
                    directory,
                    kind,
                    options.reactor,
                    kills=options.kills,
                    calls=options.calls,
                )
            print(kind, agents[kind], amps[kind], file=sys.stderr)
        print(table(agents, amps))

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    sys.exit(main())
