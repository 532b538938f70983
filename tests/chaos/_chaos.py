"""
The kill loop: P processes stream numbered messages while the host is
SIGKILLed K times, every T milliseconds (randomised); a replacement
candidate is started after each kill so that the channel always has
standbys.
"""

from __future__ import annotations

import random
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.chaos._harness import (
    Cluster,
    Delivery,
    Failover,
    HarnessError,
    account,
    removeDirectory,
    shortDirectory,
)


@dataclass
class ChaosSettings:
    """
    One run of the kill loop.

    @ivar candidates: candidate hosts at any time; each of them also
        streams, so a killed host's own stream dies with it.
    @ivar clients: pure clients, which stream and never die.
    @ivar rate: messages per second each sender writes.
    @ivar kills: how many times the host is SIGKILLed.
    @ivar interval: mean milliseconds between kills; each wait is drawn
        uniformly from half to one and a half times it.
    @ivar standbys: how many standbys must be up before each kill.
    @ivar timeout: the clients' C{timeout=} (seconds).
    """

    candidates: int = 3
    clients: int = 3
    rate: float = 500.0
    kills: int = 10
    interval: float = 300.0
    standbys: int = 1
    timeout: float = 30.0
    size: int = 0
    seed: int = 0
    reactor: str = "default"
    transport: str = "unix"

    @property
    def processes(self) -> int:
        return self.candidates + self.clients


@dataclass
class ChaosReport:
    """
    What one run of the kill loop measured.
    """

    settings: ChaosSettings
    seconds: float
    delivery: Delivery
    failovers: list[Failover] = field(default_factory=list)
    finalHost: int = 0
    strayFiles: list[str] = field(default_factory=list)

    @property
    def messagesPerSecond(self) -> float:
        return self.delivery.delivered / self.seconds if self.seconds else 0.0

    def failoverFigures(self) -> dict[str, float]:
        """
        Kill to first message accepted by the next host, and kill to its
        election, in milliseconds: median, 99th percentile, worst.
        """
        figures: dict[str, float] = {}
        for key, values in (
            ("first", [f.firstMessageMs for f in self.failovers]),
            ("elected", [f.electedMs for f in self.failovers]),
        ):
            if not values:
                continue
            ordered = sorted(values)
            figures[f"{key}_p50_ms"] = statistics.median(ordered)
            figures[f"{key}_p99_ms"] = ordered[
                min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
            ]
            figures[f"{key}_max_ms"] = ordered[-1]
        return figures

    def summary(self) -> str:
        """
        The run's figures, as lines of text.
        """
        d = self.delivery
        s = self.settings
        lines = [
            f"processes {s.processes} ({s.candidates} candidates, {s.clients} "
            f"pure clients), {s.rate:g} msg/s each, {s.kills} host kills every "
            f"~{s.interval:g} ms, over {s.transport}, seed {s.seed}",
            f"  {self.seconds:.1f} s, {self.messagesPerSecond:,.0f} msg/s delivered",
            f"  sent {d.sent:,}  delivered {d.delivered:,}  duplicated "
            f"{d.duplicated:,}  lost {d.lost}  out of order {d.outOfOrder}  "
            f"duplicated within a host {d.duplicatedWithinHost}",
            f"  senders {d.senders} ({d.sendersDied} died with their host), "
            f"files left behind in the directory: {len(self.strayFiles)}",
        ]
        figures = self.failoverFigures()
        if figures:
            lines.append(
                "  failover, kill to first message at the new host: "
                f"p50 {figures['first_p50_ms']:.1f} ms, p99 "
                f"{figures['first_p99_ms']:.1f} ms, max "
                f"{figures['first_max_ms']:.1f} ms (elected: p50 "
                f"{figures['elected_p50_ms']:.1f} ms, max "
                f"{figures['elected_max_ms']:.1f} ms)"
            )
        return "\n".join(lines)

    def asDict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "seconds": self.seconds,
            "messagesPerSecond": self.messagesPerSecond,
            "delivery": asdict(self.delivery),
            "failovers": [asdict(f) for f in self.failovers],
            "failoverFigures": self.failoverFigures(),
            "strayFiles": self.strayFiles,
        }


def runChaos(
    settings: ChaosSettings, progress: Callable[[str], None] | None = None
) -> ChaosReport:
    """
    Run the kill loop once and account for every message.

    @raise HarnessError: if a process hangs or the channel does not get
        one host again after a kill (the figures are not checked here:
        see L{Delivery.assertPromisesKept}).
    """
    rng = random.Random(settings.seed)
    directory = shortDirectory()
    # Each kill waits about one interval, then for the next host; the
    # processes live for the whole loop, with room to spare.
    lifetime = 600 + 3 * settings.kills * settings.interval / 1000
    cluster = Cluster(
        directory,
        reactorName=settings.reactor,
        transport=settings.transport,
        lifetime=lifetime,
    )
    streaming = [
        "--rate",
        str(settings.rate),
        "--timeout",
        str(settings.timeout),
        "--size",
        str(settings.size),
    ]
    try:
        first = cluster.candidate(cluster.newTag("k"), *streaming)
        first.waitFor(lambda line: line == "ROLE host", 30)
        for _ in range(settings.candidates - 1):
            cluster.candidate(cluster.newTag("k"), *streaming)
        for _ in range(settings.clients):
            cluster.client(cluster.newTag("c"), *streaming)
        for child in cluster.streams.values():
            child.waitFor(lambda line: line.startswith("LINK "), 30)
        cluster.waitForStandbys(min(settings.standbys, settings.candidates - 1))
        started = time.monotonic()
        failovers: list[Failover] = []
        for number in range(settings.kills):
            time.sleep(rng.uniform(0.5, 1.5) * settings.interval / 1000)
            host = cluster.waitForHost()
            cluster.waitForStandbys(settings.standbys)
            killedAt = cluster.signal(host, signal.SIGKILL)
            cluster.candidate(cluster.newTag("k"), *streaming)
            failover = cluster.failover(host, killedAt)
            failovers.append(failover)
            host.wait(10)
            if progress is not None and (number + 1) % 10 == 0:
                progress(
                    f"{number + 1}/{settings.kills} kills, last failover "
                    f"{failover.firstMessageMs:.1f} ms"
                )
        finalHost = cluster.assertOneHost()
        ends = cluster.finish(60)
        seconds = time.monotonic() - started
        for tag, end in ends.items():
            if not end.died and end.reason != "ConnectionDone":
                raise HarnessError(f"sender {tag} ended with {end}")
        if cluster.assertOneHost() != finalHost:
            raise HarnessError("the host changed after the last kill")
        delivery = account(cluster.records(), ends)
        stray = cluster.strayFilesAfterCleanUp()
        return ChaosReport(settings, seconds, delivery, failovers, finalHost, stray)
    finally:
        cluster.close()
        removeDirectory(directory)
