"""
One run of each measurement, for one implementation: start the children in
a fresh workspace, collect what they report, and return plain numbers.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from bench._common import MPCONN, ZMQ, percentile
from bench._procs import Child, ChildFailedError, Workspace, workspace
from twisted_channel.testing import readRecords


def _module(impl: str) -> str:
    """
    The module whose children implement C{impl}.
    """
    return "bench._peers" if impl in (ZMQ, MPCONN) else "bench._children"


def faninCapacity(wanted: int) -> tuple[int, str]:
    """
    How many fan-in client processes this machine takes, at most C{wanted},
    and what limited it: each forked client needs a few MiB of its own
    (MemAvailable), a process slot (RLIMIT_NPROC) and, in the receiving
    host, a file descriptor (RLIMIT_NOFILE, raised as far as allowed).
    """
    import resource

    limits = [(wanted, "")]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    availableKiB = int(line.split()[1])
                    limits.append((availableKiB // (64 * 1024), "memory"))
    except OSError:
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY:
        limits.append((max(1, soft // 2), "RLIMIT_NPROC"))
    _, hardFiles = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hardFiles != resource.RLIM_INFINITY:
        limits.append((max(1, hardFiles - 256), "RLIMIT_NOFILE"))
    count, reason = min(limits, key=lambda x: x[0])
    return max(1, count), reason


@dataclass
class Settings:
    """
    The sizes of every test; L{quick} makes a smoke run of them.
    """

    thrSmallCount: int = 200_000
    thrKiBCount: int = 200_000
    thr64KiBCount: int = 10_000
    #: Writes per reactor turn, for both implementations: this many, or as
    #: many as make C{sliceBytes}, whichever is fewer.
    slice: int = 1000
    sliceBytes: int = 1 << 20
    rttCount: int = 20_000
    rttWarmup: int = 1_000
    rttSize: int = 64
    startupReps: int = 20
    kills: int = 30
    #: Kills, spread among the others, made while every client is idle:
    #: paused 300 ms before the kill (so the host holds nothing unread) and
    #: resumed 200 ms after it.  Not in the kill-to-first-message figures.
    idleKills: int = 3
    candidates: int = 4
    streamClients: int = 2
    streamSlice: int = 10
    streamInterval: float = 0.002
    faninClients: int = 100
    faninCount: int = 2_000
    memLinks: int = 1_000
    memProcesses: int = 2
    #: The client-buffer test: this many bytes written with no host, by a
    #: client whose maxBufferSize is C{bufCap}, in messages of each size.
    bufTotal: int = 100_000_000
    bufCap: int = 32 << 20
    bufSizes: tuple[int, ...] = (1024, 100)
    #: open-channel's failover: trials per run with the workers streaming
    #: when the host is killed, and with them idle at that moment.
    nodeTrials: int = 2
    nodeIdleTrials: int = 1
    #: How long each trial watches for recovery after the kill (ms).
    nodeObserveMs: int = 1500
    #: Seconds any single wait on a child may take before the run fails.
    wait: float = 120.0

    def sliceFor(self, size: int) -> int:
        return max(1, min(self.slice, self.sliceBytes // size))

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            thrSmallCount=20_000,
            thrKiBCount=10_000,
            thr64KiBCount=1_000,
            rttCount=2_000,
            startupReps=5,
            kills=3,
            idleKills=1,
            faninClients=20,
            faninCount=1_000,
            memLinks=1_000,
            bufSizes=(1024,),
            nodeTrials=1,
            nodeIdleTrials=0,
            nodeObserveMs=1000,
            wait=30.0,
        )


def _finish(children: list[Child], timeout: float = 30.0) -> None:
    """
    Wait for children that should now exit by themselves (the caller's
    workspace reaps them in any case).
    """
    for child in children:
        child.wait(timeout)


def throughput(impl: str, size: int, count: int, settings: Settings) -> dict[str, Any]:
    """
    One sender streams C{count} messages of C{size} bytes to the host; the
    host's protocol times the first to the last.
    """
    module = _module(impl)
    with workspace() as space:
        receiver = space.start(
            "recv", "--impl", impl, "--name", "t", "--count", count, module=module
        )
        receiver.expect("READY", settings.wait)
        sender = space.start(
            "send",
            "--impl",
            impl,
            "--name",
            "t",
            "--count",
            count,
            "--size",
            size,
            "--slice",
            settings.sliceFor(size),
            module=module,
        )
        result = receiver.result(settings.wait)
        done = sender.expect("DONE", settings.wait)
        _finish([sender, receiver])
    rate = result["msgs_per_s"]
    return {
        "msgs_per_s": rate,
        "mb_per_s": rate * size / 1e6,
        "seconds": result["seconds"],
        "backpressure_waits": int(done[1]),  # times the sender was paused
    }


def fanIn(impl: str, settings: Settings) -> dict[str, Any]:
    """
    C{faninClients} sender processes (forked by one launcher, see
    L{bench._children.runFanIn}) connect, then all start on one signal and
    stream C{faninCount} 100-byte messages each; the host's protocols time
    the first to the last message overall, and each sender's rate: its
    messages over the time from the first message overall to its own last
    (the slowest sender's is the aggregate shared among the senders, the
    median sender's says how much sooner most were served).
    """
    clients = settings.faninClients
    total = clients * settings.faninCount
    with workspace() as space:
        receiver = space.start(
            "recv", "--impl", impl, "--name", "f", "--count", total, "--conns", clients
        )
        receiver.expect("READY", settings.wait)
        launcher = space.start(
            "fanin",
            "--impl",
            impl,
            "--name",
            "f",
            "--conns",
            clients,
            "--count",
            settings.faninCount,
            "--size",
            100,
            "--slice",
            settings.sliceFor(100),
        )
        # The senders' READY lines may come before or after the launcher's
        # FORKED: wait for them only.
        for _ in range(clients):
            launcher.expect("READY", settings.wait)
        launcher.send("go")
        result = receiver.result(settings.wait)
        for _ in range(clients):
            launcher.expect("DONE", settings.wait)
        failed = int(launcher.expect("EXITED", settings.wait)[0])
        if failed:
            raise ChildFailedError(f"{failed} fan-in sender(s) exited with an error")
        _finish([launcher, receiver])
    return {
        "msgs_per_s": result["msgs_per_s"],
        "seconds": result["seconds"],
        "clients": clients,
        "slowest_client_msgs_per_s": result["sender_rate_min"],
        "median_client_msgs_per_s": result["sender_rate_median"],
        "last_arrival_spread_s": result["sender_last_spread_s"],
    }


def roundTrip(impl: str, settings: Settings) -> dict[str, Any]:
    """
    Sequential request/echo round trips, timed by the client.
    """
    module = _module(impl)
    with workspace() as space:
        echo = space.start(
            "echo",
            "--impl",
            impl,
            "--name",
            "r",
            "--count",
            settings.rttCount,
            "--warmup",
            settings.rttWarmup,
            module=module,
        )
        echo.expect("READY", settings.wait)
        pinger = space.start(
            "ping",
            "--impl",
            impl,
            "--name",
            "r",
            "--count",
            settings.rttCount,
            "--warmup",
            settings.rttWarmup,
            "--size",
            settings.rttSize,
            module=module,
        )
        result = pinger.result(settings.wait)
        _finish([pinger, echo])
    return result


def startup(impl: str, settings: Settings) -> dict[str, Any]:
    """
    listen() to hosting and connect() to first delivery, in one child.
    """
    with workspace() as space:
        child = space.start("startup", "--impl", impl, "--reps", settings.startupReps)
        result = child.result(settings.wait)
        _finish([child])
    return result


def memory(impl: str, settings: Settings) -> dict[str, Any]:
    """
    The host's resident memory per idle link, with C{memLinks} links held
    by C{memProcesses} client processes that connect one after the other.
    The host reads its RSS before any link, after the first process's
    links and after all; the per-link figure is the growth between the
    last two (the first links also reuse memory freed during start-up).
    """
    links = settings.memLinks
    shares = [links // settings.memProcesses] * settings.memProcesses
    shares[0] += links - sum(shares)
    with workspace() as space:
        host = space.start(
            "memhost",
            "--impl",
            impl,
            "--name",
            "m",
            "--links",
            links,
            "--conns",
            shares[0],
        )
        host.expect("READY", settings.wait)
        for i, share in enumerate(shares):
            holder = space.start(
                "idle", "--impl", impl, "--name", "m", "--links", share
            )
            holder.expect("READY", settings.wait)
            if i == 0:
                host.expect("MARK", settings.wait)
        result = host.result(settings.wait)
    return result


def clientBuffer(size: int, settings: Settings) -> dict[str, Any]:
    """
    A channel client with no host writes C{bufTotal} bytes in C{size}-byte
    messages with C{maxBufferSize=bufCap}: its resident memory's growth,
    against the cap, and how many writes were refused.
    """
    with workspace() as space:
        client = space.start(
            "bufclient",
            "--name",
            "nohost",
            "--size",
            size,
            "--cap",
            settings.bufCap,
            "--total",
            settings.bufTotal,
        )
        result = client.result(settings.wait)
        _finish([client])
    capMiB = settings.bufCap / (1 << 20)
    growth = result["peak_growth_mib"]
    if growth is None:
        growth = result["growth_mib"]
    result["cap_mib"] = capMiB
    result["growth_vs_cap"] = growth / capMiB
    result["reported_growth_mib"] = growth
    return result


#: Seconds the failover test's clients are idle before an idle kill, and
#: after it (open-channel's idle trials use the same).
IDLE_BEFORE = 0.3
IDLE_AFTER = 0.2


class _Candidate:
    def __init__(self, child: Child, role: str) -> None:
        self.child = child
        self.role = role


def failover(settings: Settings) -> dict[str, Any]:
    """
    C{candidates} candidate processes and C{streamClients} clients streaming
    numbered messages; SIGKILL the host C{kills} times, each time timing the
    kill to the new host's election and to the first message its protocol
    receives, and starting a replacement candidate.  At the end every
    client closes gracefully and the hosts' records are checked for every
    number each client sent.
    """
    with workspace(limit=120 + 10 * settings.kills) as space:
        return _failover(space, settings)


def _failover(space: Workspace, settings: Settings) -> dict[str, Any]:
    records: list[str] = []

    def candidate() -> _Candidate:
        record = space.path(f"rec{len(records)}")
        records.append(record)
        child = space.recorder("candidate", "f", "--record", record)
        fields = child.expect("ROLE", settings.wait)
        return _Candidate(child, fields[0])

    candidates = [candidate() for _ in range(settings.candidates)]
    hosts = [c for c in candidates if c.role == "host"]
    if len(hosts) != 1:
        raise ChildFailedError(
            f"expected one host, got roles {[c.role for c in candidates]}"
        )
    host = hosts[0]
    streams = [
        space.recorder(
            "client",
            "f",
            "--endless",
            "--tag",
            f"c{i}",
            "--slice",
            settings.streamSlice,
            "--interval",
            settings.streamInterval,
            # Each line a client prints wakes a reader thread of this
            # process, which then competes with the takeover it measures.
            "--quiet-links",
        )
        for i in range(settings.streamClients)
    ]
    for stream in streams:
        stream.expect("READY", settings.wait)
    host.child.expect("FIRST", settings.wait)

    samples: list[dict[str, float]] = []
    idleSamples: list[dict[str, float]] = []
    total = settings.kills + settings.idleKills
    idleAt = {
        (i + 1) * total // (settings.idleKills + 1) for i in range(settings.idleKills)
    }
    for k in range(total):
        idle = k in idleAt
        # Let traffic flow on the current host for a while, at a random
        # phase with respect to the clients' write timers.
        time.sleep(0.15 + random.uniform(0.0, 0.05))
        if idle:
            for stream in streams:
                stream.send("hold")
            for stream in streams:
                stream.expect("HELD", settings.wait)
            time.sleep(IDLE_BEFORE)
        tKill = host.child.kill()
        others = [c for c in candidates if c is not host]
        newHost, tHost = _awaitHost(others, settings.wait)
        tResume = 0
        if idle:
            time.sleep(max(0.0, IDLE_AFTER - (time.monotonic_ns() - tKill) / 1e9))
            for stream in streams:
                stream.send("release")
            tResume = min(int(s.expect("RELEASED", settings.wait)[0]) for s in streams)
        tFirst = int(newHost.child.expect("FIRST", settings.wait)[0])
        host.child.reap()
        candidates.remove(host)
        host = newHost
        sample = {
            "elected_ms": (tHost - tKill) / 1e6,
            "first_message_ms": (tFirst - tKill) / 1e6,
        }
        if idle:
            sample["first_after_resume_ms"] = (tFirst - tResume) / 1e6
            idleSamples.append(sample)
        else:
            samples.append(sample)
        replacement = candidate()
        if replacement.role != "standby":
            raise ChildFailedError(f"a replacement candidate became {replacement.role}")
        candidates.append(replacement)

    for stream in streams:
        stream.send("finish")
    sent: dict[str, int] = {}
    closes: dict[str, list[str]] = {}
    for i, stream in enumerate(streams):
        sent[f"c{i}"] = int(stream.expect("SENT", settings.wait)[0])
    for i, stream in enumerate(streams):
        closes[f"c{i}"] = stream.expect("CLOSED", settings.wait)
    for stream in streams:
        stream.wait(settings.wait)

    received: dict[str, list[int]] = {tag: [] for tag in sent}
    for record in records:
        for message in readRecords(record):
            received.setdefault(message.tag, []).append(message.number)
    lost = 0
    duplicates = 0
    outOfRange = 0
    for tag, count in sent.items():
        numbers = received.get(tag, [])
        unique = set(numbers)
        lost += sum(1 for n in range(1, count + 1) if n not in unique)
        duplicates += len(numbers) - len(unique)
        outOfRange += sum(1 for n in unique if not 1 <= n <= count)
    firsts = [s["first_message_ms"] for s in samples]
    elections = [s["elected_ms"] for s in samples]
    return {
        "kills": len(samples),
        "samples": samples,
        "idle_kills": len(idleSamples),
        "idle_samples": idleSamples,
        "first_message_p50_ms": percentile(firsts, 0.5),
        "first_message_p99_ms": percentile(firsts, 0.99),
        "first_message_max_ms": max(firsts) if firsts else float("nan"),
        "elected_p50_ms": percentile(elections, 0.5),
        "sent": sent,
        "delivered_records": sum(len(v) for v in received.values()),
        "lost": lost,
        "duplicates": duplicates,
        "unexpected": outOfRange,
        "closed": {tag: " ".join(fields) for tag, fields in closes.items()},
    }


def _awaitHost(candidates: list[_Candidate], timeout: float) -> tuple[_Candidate, int]:
    """
    The candidate that reports it became host, and when (monotonic ns).
    """
    deadline = time.monotonic() + timeout
    elected: dict[int, int] = {}
    while time.monotonic() < deadline:
        for c in candidates:
            while True:
                line = c.child.take(lambda line: line.startswith(("ELECTED ", "ROLE ")))
                if line is None:
                    break
                word, value = line.split()
                if word == "ELECTED":
                    # Stamped by the candidate just before its ROLE host.
                    elected[c.child.pid] = int(value)
                    continue
                c.role = value
                if value == "host":
                    return c, elected[c.child.pid]
        # The times come from the children's stamps, so looking lazily
        # costs no accuracy and leaves the CPUs to the children.
        time.sleep(0.005)
    raise ChildFailedError(f"no candidate took over within {timeout} s")


SCENARIOS = (
    "throughput",
    "roundtrip",
    "startup",
    "fanin",
    "memory",
    "failover",
    "tls",
)
