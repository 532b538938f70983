"""
The C{twisted-channel} command, run as a real process: help, errors, exit
statuses, C{status} against real hosts (also a frozen one), C{listen} and
C{send}, and the demo, also interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from twisted_channel.testing import ChannelProcesses, ChildProcess, childEnvironment

pytestmark = pytest.mark.timeout(90)

COMMAND = [sys.executable, "-m", "twisted_channel"]


def run(
    *arguments: str, timeout: float = 30, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=childEnvironment(),
        input=input.decode() if input is not None else None,
    )


def assertOneLineError(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def children(channelDirectory: str) -> Iterator[ChannelProcesses]:
    group = ChannelProcesses(channelDirectory)
    try:
        yield group
    finally:
        group.reapAll()


# Help and mistakes


@pytest.mark.parametrize("command", [[], ["demo"], ["status"], ["listen"], ["send"]])
def test_helpOnEveryCommand(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(
        f"usage: twisted-channel {' '.join(command)}".rstrip()
    )
    assert result.stderr == ""


def test_theConsoleScriptIsTheSameCommand() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "twisted-channel")
    if not os.path.exists(script):
        pytest.skip(f"no console script at {script}: the package is not installed")
    result = subprocess.run(
        [script, "--version"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert result.stdout.startswith("twisted-channel ")


def test_noCommandIsAUsageError() -> None:
    line = assertOneLineError(run(), 2)
    assert "COMMAND" in line and "--help" in line


@pytest.mark.parametrize("command", ["status", "listen", "send"])
@pytest.mark.parametrize("name", ["bad/name", "..", ".hidden", "x" * 101, "a b"])
def test_aBadNameIsOneLineAndStatus2(
    command: str, name: str, channelDirectory: str
) -> None:
    line = assertOneLineError(run(command, name, "--dir", channelDirectory), 2)
    assert "channel name" in line


def test_anUnknownOptionIsOneLineAndStatus2() -> None:
    line = assertOneLineError(run("status", "jobs", "--frobnicate"), 2)
    assert "--frobnicate" in line


@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf", "abc"])
def test_aBadStatusTimeoutIsOneLineAndStatus2(
    seconds: str, channelDirectory: str
) -> None:
    """
    C{status --timeout} is a number of seconds above 0: anything else is
    a mistake in the command line, named, before any socket is touched (it
    was a socket's C{Timeout value out of range}, or, with C{inf} and a
    host to ask, a traceback).
    """
    result = run("status", "jobs", "--dir", channelDirectory, "--timeout", seconds)
    line = assertOneLineError(result, 2)
    assert "--timeout" in line


@pytest.mark.parametrize("seconds", ["1e10", "9223372037", "1e300"])
def test_aStatusTimeoutLongerThanASocketWaitsIsOneLineAndStatus2(
    seconds: str, channelDirectory: str
) -> None:
    """
    C{status --timeout} longer than a socket's timeout can be (about 292
    years: C{threading.TIMEOUT_MAX}) is refused as a mistake in the command
    line too: it was finite and above 0, so accepted, and then a traceback
    (C{OverflowError} from C{settimeout}) as soon as the channel's directory
    existed, host or not.
    """
    result = run("status", "jobs", "--dir", channelDirectory, "--timeout", seconds)
    line = assertOneLineError(result, 2)
    assert "--timeout" in line


def test_theLongestStatusTimeoutIsTaken(channelDirectory: str) -> None:
    """
    The longest C{status --timeout} taken is one a socket takes: with
    nobody hosting, the answer is "not hosted", at once.
    """
    result = run("status", "jobs", "--dir", channelDirectory, "--timeout", "9223372036")
    assert (result.returncode, result.stderr) == (1, "")
    assert "not hosted" in result.stdout


@pytest.mark.parametrize("command", [["status"], ["listen"], ["send", "hi"]])
def test_anUnsafeDirectoryIsOneLineAndStatus2(
    command: list[str], channelDirectory: str
) -> None:
    os.chmod(channelDirectory, 0o777)
    try:
        result = run(command[0], "jobs", *command[1:], "--dir", channelDirectory)
    finally:
        os.chmod(channelDirectory, 0o700)
    line = assertOneLineError(result, 2)
    assert "writable by group or others" in line


@pytest.mark.parametrize(
    "command", [["listen", "jobs"], ["send", "jobs", "hi"], ["demo"]]
)
def test_aDirectoryThatCannotBeMadeIsOneLineAndStatus2(
    command: list[str], channelDirectory: str
) -> None:
    """
    A --dir under a file cannot be made: one line naming the directory and
    why, and the status of a mistake in the command line, not an errno.
    """
    aFile = os.path.join(channelDirectory, "a-file")
    open(aFile, "w").close()
    wanted = os.path.join(aFile, "sub")
    result = run(*command, "--dir", wanted)
    line = assertOneLineError(result, 2)
    assert line == (
        f"twisted-channel {command[0]}: error: channel directory {wanted!r} "
        "cannot be created: not a directory"
    )


def test_demoInAnUnsafeDirectoryIsOneLineAndStatus2(channelDirectory: str) -> None:
    os.chmod(channelDirectory, 0o777)
    try:
        result = run("demo", "--dir", channelDirectory)
    finally:
        os.chmod(channelDirectory, 0o700)
    assertOneLineError(result, 2)


# status


def test_statusOfAChannelNobodyHosts(channelDirectory: str) -> None:
    result = run("status", "jobs", "--dir", channelDirectory)
    assert result.returncode == 1
    assert "not hosted" in result.stdout
    result = run("status", "jobs", "--dir", channelDirectory, "--json")
    assert result.returncode == 1
    status = json.loads(result.stdout)
    assert status["name"] == "jobs"
    assert status["hosted"] is False
    assert status["pid"] is None
    assert status["links"] == 0
    assert status["path"] == os.path.join(channelDirectory, "jobs.sock")


def test_statusOfAMissingDirectoryCreatesNothing(channelDirectory: str) -> None:
    missing = os.path.join(channelDirectory, "nothing-here")
    result = run("status", "jobs", "--dir", missing, "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["hosted"] is False
    assert not os.path.exists(missing)


def test_statusOfAStaleSocket(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    A socket left by a host killed with SIGKILL: nobody listens there, so
    the channel is not hosted.
    """
    host = children.candidate("jobs", os.devnull)
    host.waitFor(lambda line: line == "ROLE host")
    host.kill()
    host.wait()
    assert os.path.exists(os.path.join(channelDirectory, "jobs.sock"))
    result = run("status", "jobs", "--dir", channelDirectory, "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["hosted"] is False


def test_statusOfAHostedChannel(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    The host's pid, the links, what it received; asking does not disturb the
    application's links, which go on working.
    """
    record = os.path.join(channelDirectory, "record")
    host = children.candidate("jobs", record)
    host.waitFor(lambda line: line == "ROLE host")
    standby = children.candidate("jobs", record)
    standby.waitFor(lambda line: line == "ROLE standby")
    clients = [children.client("jobs", f"c{index}", 20, "--stay") for index in range(2)]
    for client in clients:
        client.waitFor(lambda line: line.startswith("SENT"))
    deadline = time.monotonic() + 10
    while True:
        result = run("status", "jobs", "--dir", channelDirectory, "--json")
        status = json.loads(result.stdout)
        if status["messages"] >= 40 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert result.returncode == 0, result.stderr
    assert status["hosted"] is True
    assert status["pid"] == host.pid
    assert status["links"] == 2
    assert status["path"] == os.path.join(channelDirectory, "jobs.sock")
    assert status["messages"] == 40
    assert status["bytes"] > 0
    assert abs(status["since"] - time.time()) < 60
    text = run("status", "jobs", "--dir", channelDirectory)
    assert text.returncode == 0
    assert f"hosted by pid {host.pid}" in text.stdout
    assert "links     2" in text.stdout
    # The clients' links were not touched: each still has its one link.
    for client in clients:
        assert [line for line in client.collect() if line.startswith("LINK")] == [
            f"LINK {host.pid}"
        ]
        assert not [line for line in client.collect() if line.startswith("UNLINK")]


def test_statusOverTCP(channelDirectory: str) -> None:
    """
    Over the loopback TCP transport the query authenticates with the port
    file's secret, like any link; the transport is found from the files.
    """
    group = ChannelProcesses(channelDirectory, transport="tcp")
    try:
        host = group.candidate("jobs", os.devnull)
        host.waitFor(lambda line: line == "ROLE host")
        client = group.client("jobs", "c", 5, "--stay")
        client.waitFor(lambda line: line.startswith("SENT"))
        for extra in ([], ["--transport", "tcp"]):
            result = run("status", "jobs", "--dir", channelDirectory, "--json", *extra)
            assert result.returncode == 0, result.stderr
            status = json.loads(result.stdout)
            assert status["hosted"] is True
            assert status["pid"] == host.pid
            assert status["transport"] == "tcp"
            assert status["path"] == os.path.join(channelDirectory, "jobs.port")
            assert status["links"] == 1
        host.kill()
        host.wait()
        # The port file a killed host leaves names a port nobody listens on.
        result = run("status", "jobs", "--dir", channelDirectory, "--json")
        assert result.returncode == 1, result.stderr
        assert json.loads(result.stdout)["hosted"] is False
    finally:
        group.reapAll()


def test_statusOfAFrozenHost(children: ChannelProcesses, channelDirectory: str) -> None:
    host = children.candidate("jobs", os.devnull)
    host.waitFor(lambda line: line == "ROLE host")
    host.kill(signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = run("status", "jobs", "--dir", channelDirectory, "--timeout", "0.5")
        assert time.monotonic() - started < 10
        line = assertOneLineError(result, 1)
        assert "did not answer" in line
        result = run(
            "status", "jobs", "--dir", channelDirectory, "--timeout", "0.5", "--json"
        )
        assert result.returncode == 1
        status = json.loads(result.stdout)
        assert status["hosted"] is True
        assert status["responding"] is False
        assert status["pid"] == host.pid
    finally:
        host.kill(signal.SIGCONT)


# listen and send


def test_listenPrintsWhatIsSent(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    listener = children.start(
        [*COMMAND, "listen", "news", "--dir", channelDirectory, "--count", "4"]
    )
    deadline = time.monotonic() + 20
    while "listening on bus 'news'" not in listener.stderr:
        assert time.monotonic() < deadline, listener.stderr
        time.sleep(0.02)
    result = run("send", "news", "one", "two words", "--dir", channelDirectory)
    assert result.returncode == 0, result.stderr
    result = run("send", "news", "--dir", channelDirectory, input=b"three\nfour")
    assert result.returncode == 0, result.stderr
    assert listener.wait(20) == 0, listener.stderr
    assert listener.collect() == ["one", "two words", "three", "four"]
    # Leaving handed the channel over: nobody hosts it now.
    assert run("status", "news", "--dir", channelDirectory).returncode == 1


def test_listenPrintsEachMessageOnOneLine(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    """
    A message holding a newline (or a carriage return) is still one line:
    they are escaped as C{\\n} and C{\\r}, and a backslash as two, so
    that no message reads as another.
    """
    listener = children.start(
        [*COMMAND, "listen", "news", "--dir", channelDirectory, "--count", "3"]
    )
    deadline = time.monotonic() + 20
    while "listening on bus 'news'" not in listener.stderr:
        assert time.monotonic() < deadline, listener.stderr
        time.sleep(0.02)
    result = run(
        "send",
        "news",
        "two\nlines",
        "back\\nslash",
        "cr\r and \\",
        "--dir",
        channelDirectory,
    )
    assert result.returncode == 0, result.stderr
    assert listener.wait(20) == 0, listener.stderr
    assert listener.collect() == [
        r"two\nlines",
        r"back\\nslash",
        r"cr\r and \\",
    ]


def test_sendWithNoHostGivesUp(channelDirectory: str) -> None:
    result = run(
        "send",
        "news",
        "hello",
        "--dir",
        channelDirectory,
        "--no-candidate",
        "--timeout",
        "0.5",
    )
    line = assertOneLineError(result, 1)
    assert "could be reached" in line


def test_listenStopsCleanlyOnSigterm(
    children: ChannelProcesses, channelDirectory: str
) -> None:
    listener = children.start([*COMMAND, "listen", "news", "--dir", channelDirectory])
    deadline = time.monotonic() + 20
    while "listening" not in listener.stderr:
        assert time.monotonic() < deadline, listener.stderr
        time.sleep(0.02)
    assert run("status", "news", "--dir", channelDirectory).returncode == 0
    listener.kill(signal.SIGTERM)
    assert listener.wait(10) == 0
    assert "Traceback" not in listener.stderr
    assert not os.path.exists(os.path.join(channelDirectory, "news.sock"))


# demo


def childrenOf(pid: int) -> list[int]:
    """
    The pids of the processes whose parent is C{pid}, from C{/proc}.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_demoLosesNothing() -> None:
    result = run(
        "demo",
        "--workers",
        "2",
        "--messages",
        "600",
        "--kills",
        "2",
        "--rate",
        "600",
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "nothing lost" in result.stdout
    assert "2 of 2" in result.stdout
    assert "failover times" in result.stdout


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find children")
def test_demoInterruptedReapsEveryChild() -> None:
    demo = ChildProcess(
        [*COMMAND, "demo", "--workers", "2", "--messages", "100000", "--kills", "0"]
    )
    try:
        deadline = time.monotonic() + 30
        while len(childrenOf(demo.pid)) < 4:
            assert time.monotonic() < deadline, "the demo did not start its children"
            assert not demo.exited(), demo.stderr
            time.sleep(0.05)
        time.sleep(0.5)
        pids = childrenOf(demo.pid)
        assert all(alive(pid) for pid in pids)
        demo.kill(signal.SIGINT)
        assert demo.wait(20) == 130
        assert "interrupted" in demo.stderr
        assert "Traceback" not in demo.stderr
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        demo.reap()
