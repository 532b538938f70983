"""
The chaos harness in CI: a short kill loop (6 processes, 10 host kills)
that must lose nothing and reorder nothing, and each other fault scenario
once.  The long version is ``python -m tests.chaos soak``.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos import _scenarios
from tests.chaos._chaos import ChaosSettings, runChaos

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def reactorName(request: pytest.FixtureRequest) -> str:
    """
    The reactor the children run: the one the suite runs under.
    """
    name = request.config.getoption("reactor", "default")
    return "asyncio" if name == "asyncio" else "default"


def test_hostKilledTenTimes(reactorName: str) -> None:
    """
    Three candidates (each also streaming) and three pure clients stream
    500 messages a second each while the host is SIGKILLed ten times:
    nothing is lost, nothing is out of order or delivered twice by one
    host, every failover completes, and the channel ends with one host.
    """
    settings = ChaosSettings(
        candidates=3,
        clients=3,
        rate=500,
        kills=10,
        interval=200,
        seed=int.from_bytes(os.urandom(2), "big"),
        reactor=reactorName,
    )
    report = runChaos(settings)
    print(report.summary())
    report.delivery.assertPromisesKept(f"chaos, seed {settings.seed}")
    assert len(report.failovers) == 10
    assert report.delivery.lost == 0
    assert report.delivery.outOfOrder == 0
    # Every pure client's stream, and one per killed host at least.
    assert report.delivery.senders >= settings.processes + settings.kills
    assert report.delivery.delivered > 1000
    assert all(f.firstMessageMs < 5000 for f in report.failovers)
    assert not report.strayFiles


def test_stopListening(reactorName: str) -> None:
    _scenarios.stopListening(reactorName)


def test_sigterm(reactorName: str) -> None:
    _scenarios.sigterm(reactorName)


def test_frozenHost(reactorName: str) -> None:
    result = _scenarios.frozenHost(reactorName)
    assert result.figures["timeout1_reported_undelivered"] > 0


def test_largeMessageClientKilled(reactorName: str) -> None:
    result = _scenarios.largeMessageClientKilled(reactorName)
    # The half frame is buffered (it is under the message size limit),
    # and nothing more.
    held = (
        result.figures["host_rss_holding_half_frame_kib"]
        - result.figures["host_rss_before_half_frame_kib"]
    )
    assert held < _scenarios.BIG // 1024


def test_standbyKilledAsItWins(reactorName: str) -> None:
    _scenarios.standbyKilledWinning(reactorName, rounds=1)


def test_socketFileDeleted(reactorName: str) -> None:
    result = _scenarios.socketDeleted(reactorName)
    assert result.figures["deleted_to_republished_ms"] < 3000


def _needMounts() -> None:
    problem = _scenarios.mountProblem()
    if problem is not None:
        pytest.skip(problem)


def test_diskFull(reactorName: str) -> None:
    """
    A full filesystem (no byte, no inode left) when the host is killed:
    nothing is lost, and a standby hosts once it can publish its socket.
    It is at once: the lock holder removes the dead host's socket, freeing
    the inode its own needs.
    """
    _needMounts()
    result = _scenarios.diskFull(reactorName, mustFailOver=True)
    assert result.figures["failover_while_full"]


def test_readOnlyDirectory(reactorName: str) -> None:
    _needMounts()
    result = _scenarios.readOnly(reactorName)
    assert result.figures["writable_to_first_message_ms"] < 3000
