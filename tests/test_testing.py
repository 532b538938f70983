"""
The process harness itself (L{twisted_channel.testing}): bounded children,
their errors shown, none left behind; the record and its reader; the
recorder, a candidate and a client on a real channel.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from twisted_channel.testing import (
    ChannelProcesses,
    ChildFailedError,
    ChildProcess,
    MalformedRecordError,
    Record,
    RecordReader,
    parseRecord,
    privateDirectory,
    readRecords,
    waitUntil,
)

pytestmark = pytest.mark.timeout(60)

DOCS = Path(__file__).resolve().parent.parent / "docs"

PYTHON = sys.executable


def python(code: str) -> list[str]:
    return [PYTHON, "-c", code]


def gone(pid: int) -> bool:
    """
    Whether no process runs with pid C{pid}: none has it, or a dead one
    waits for its parent to reap it (a grandchild whose parent died is
    reaped by whichever process adopts it, not by the test).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_linesAreReadAndWaitedFor() -> None:
    """
    L{ChildProcess.waitFor} finds a line printed before or after it is
    called; L{ChildProcess.expect} reads lines in order, each once.
    """
    child = ChildProcess(
        python("print('A 1'); print('B 2'); print('A 3'); input()"), lifetime=30
    )
    try:
        assert child.waitFor(lambda line: line.startswith("A ")) == "A 1"
        assert child.waitFor(lambda line: line == "A 3") == "A 3"
        assert child.expect("A", 10) == ["1"]
        assert child.expect("A", 10) == ["3"]
        assert child.collect() == ["A 1", "B 2", "A 3"]
        child.send("")
        assert child.wait(10) == 0
    finally:
        child.reap()


def test_hangingChildIsKilledAtItsLifetime() -> None:
    """
    A child that hangs is killed when its lifetime is over, and the wait for
    it fails saying so, at that deadline and not later.
    """
    child = ChildProcess(python("import time; time.sleep(60)"), lifetime=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(ChildFailedError, match="killed at the end of its lifetime"):
            child.waitFor(lambda line: False, timeout=30)
        assert time.monotonic() - started < 10
        assert child.wait(5) == -signal.SIGKILL
    finally:
        child.reap()
    assert gone(child.pid)


def test_waitForFailsAtItsDeadline() -> None:
    """
    A wait for a line that never comes fails at its deadline, naming the
    child's last lines; the child is then still running until reaped.
    """
    child = ChildProcess(python("print('hello'); import time; time.sleep(60)"))
    try:
        started = time.monotonic()
        with pytest.raises(ChildFailedError, match="hello") as caught:
            child.waitFor(lambda line: line == "never", timeout=0.5)
        assert 0.5 <= time.monotonic() - started < 5
        assert "within 0.5 s" in str(caught.value)
        assert not child.exited()
    finally:
        assert child.reap() == -signal.SIGKILL
    assert gone(child.pid)


def test_stderrIsShownWhenAChildFails() -> None:
    """
    When a child dies without the expected line, the error carries what it
    wrote on standard error (its traceback).
    """
    child = ChildProcess(python("raise SystemExit('the reason it died')"))
    try:
        with pytest.raises(ChildFailedError, match="the reason it died") as caught:
            child.waitFor(lambda line: line == "READY", timeout=20)
        assert "exit status 1" in str(caught.value)
    finally:
        child.reap()


def test_errorLineFailsTheReader() -> None:
    """
    L{ChildProcess.next} fails at once on an C{ERROR} line it passes over.
    """
    child = ChildProcess(python("print('ERROR it broke'); input()"))
    try:
        with pytest.raises(ChildFailedError, match="it broke"):
            child.expect("READY", 20)
    finally:
        child.reap()


def test_waitForAnExitThatDoesNotCome() -> None:
    """
    L{ChildProcess.wait} fails at its deadline if the child does not exit.
    """
    child = ChildProcess(python("import time; time.sleep(60)"))
    try:
        with pytest.raises(ChildFailedError, match="did not exit within 0.2 s"):
            child.wait(0.2)
    finally:
        child.reap()


def test_graceLetsAChildLeaveWhenItsInputCloses() -> None:
    """
    L{ChildProcess.reap} with a grace closes the child's standard input
    first: a child that leaves on it exits by itself (status 0).
    """
    child = ChildProcess(python("import sys; sys.stdin.read()"))
    assert child.reap(grace=10) == 0


def test_noProcessLeftBehind() -> None:
    """
    Every child of a L{ChannelProcesses} block is killed and reaped when it
    ends, also when it ends with an error; with C{group=True} so are the
    processes the child started itself.
    """
    grandchild = (
        "import subprocess, sys, time;"
        f"p = subprocess.Popen([{PYTHON!r}, '-c', 'import time; time.sleep(60)']);"
        "print('GRANDCHILD', p.pid, flush=True); time.sleep(60)"
    )
    pids = []
    with privateDirectory() as directory:
        with pytest.raises(RuntimeError, match="the test failed"):
            with ChannelProcesses(directory) as group:
                plain = group.start(python("import time; time.sleep(60)"))
                parent = group.start(python(grandchild), group=True)
                fields = parent.expect("GRANDCHILD", 20)
                pids = [plain.pid, parent.pid, int(fields[0])]
                assert not any(gone(pid) for pid in pids)
                raise RuntimeError("the test failed")
    waitUntil(lambda: all(gone(pid) for pid in pids), 10, "every process gone")
    assert plain.process.returncode == parent.process.returncode == -signal.SIGKILL
    assert not os.path.exists(directory)


def test_privateDirectory() -> None:
    """
    L{privateDirectory} is short, under /tmp, mode 0700, and removed with
    what it holds.
    """
    with privateDirectory() as directory:
        assert directory.startswith("/tmp/")
        assert os.stat(directory).st_mode & 0o777 == 0o700
        with open(os.path.join(directory, "file"), "w") as f:
            f.write("x")
    assert not os.path.exists(directory)


def test_parseRecord() -> None:
    """
    A record line is C{<pid> <head> <ns> <length>}; a head that is not
    C{TAG:NUMBER} gives number -1; anything else is refused.
    """
    assert parseRecord(b"12 c1:7 99 30") == Record(12, "c1", 7, 99, 30)
    assert parseRecord(b"12 a:b:7 99 30") == Record(12, "a:b", 7, 99, 30)
    request = parseRecord(b"12 flood 99 14")
    assert request == Record(12, "flood", -1, 99, 14) and not request.numbered
    for bad in (b"12 c1:7 99", b"x c1:7 99 30", b"12 c1:7 99 30 1", b""):
        with pytest.raises(MalformedRecordError, match="malformed record line"):
            parseRecord(bad)


def test_recordReaderLeavesAPartialLine(tmp_path: object) -> None:
    """
    L{RecordReader} returns what was written since its last read; a last
    line without its end waits for it.
    """
    path = os.path.join(str(tmp_path), "record")
    reader = RecordReader(path)
    assert reader.read() == []
    with open(path, "ab") as f:
        f.write(b"1 a:1 5 3\n1 a:2 6")
    assert reader.read() == [Record(1, "a", 1, 5, 3)]
    with open(path, "ab") as f:
        f.write(b" 3\n1 flood 7 9\n")
    assert reader.read() == [Record(1, "a", 2, 6, 3), Record(1, "flood", -1, 7, 9)]
    assert readRecords(path) == [Record(1, "a", 1, 5, 3), Record(1, "a", 2, 6, 3)]
    assert len(readRecords(path, numberedOnly=False)) == 3


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_recorderCandidateAndClient(transport: str) -> None:
    """
    The recorder: a candidate hosts and records, a client streams its
    messages and closes gracefully; the record holds every one, in order,
    and the candidate's first message of its term is stamped after its
    election.
    """
    with (
        privateDirectory() as directory,
        ChannelProcesses(directory, transport=transport) as group,
    ):
        record = group.path("record")
        host = group.candidate("rec", record)
        host.waitFor(lambda line: line == "ROLE host")
        elected = int(host.waitFor(lambda line: line.startswith("ELECTED "))[8:])
        client = group.client("rec", "t", 500, "--progress", "0.05")
        assert client.expect("READY", 20) == []
        client.waitFor(lambda line: line == f"LINK {host.pid}")
        client.waitFor(lambda line: line == "SENT 500")
        closed = client.waitFor(lambda line: line.startswith("CLOSED "))
        assert closed == "CLOSED ConnectionDone 0"
        assert "WROTE 500" in client.collect()
        assert client.collect()[-3] == "PROGRESS 500 500"
        assert client.wait(20) == 0
        records = readRecords(record)
        assert [r.number for r in records] == list(range(1, 501))
        assert {(r.pid, r.tag) for r in records} == {(host.pid, "t")}
        first = int(host.waitFor(lambda line: line.startswith("FIRST "))[6:])
        assert elected <= first == records[0].stamp
        host.send("stop")
        host.waitFor(lambda line: line == "STOPPED")
        assert host.role() == "stopped"


def test_documentedFailoverExample() -> None:
    """
    The first example of C{docs/testing.md} runs and passes as written.
    """
    text = (DOCS / "testing.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/testing.md", "exec"), namespace)
    test = namespace["test_nothingIsLostWhenTheHostIsKilled"]
    assert callable(test)
    test()


def test_failoverDemoExample() -> None:
    """
    C{examples/failover_demo.py}, built on the harness, kills its host and
    reports nothing lost.
    """
    example = DOCS.parent / "examples" / "failover_demo.py"
    child = ChildProcess([PYTHON, str(example), "--messages", "2000"], lifetime=50)
    try:
        assert child.wait(45) == 0, child.collect()
        lines = child.collect()
        assert any(line.startswith("killed the host ") for line in lines), lines
        assert lines[-1] == "hosts seen: 2; messages lost by surviving workers: 0"
    finally:
        child.reap()


def test_childIsAContextManager() -> None:
    """
    A child used as a context manager is reaped when its block ends, also
    when the block raises.
    """
    with pytest.raises(RuntimeError, match="inside"):
        with ChildProcess(python("import time; time.sleep(60)")) as child:
            assert not child.exited()
            raise RuntimeError("inside")
    assert child.process.returncode == -signal.SIGKILL


def test_waitForRole() -> None:
    """
    L{ChildProcess.waitForRole} finds a C{ROLE} line, or fails at its
    deadline.
    """
    code = "print('ROLE standby'); print('ROLE host'); input()"
    with ChildProcess(python(code)) as child:
        child.waitForRole("host")
        assert child.role() == "host"
        with pytest.raises(ChildFailedError, match="within 0.2 s"):
            child.waitForRole("stopped", 0.2)


def test_releasedStreamGoesOnAtItsRate() -> None:
    """
    A client streaming at C{--rate} that was held goes on at that rate once
    released, from where it stopped: the time it was held does not count
    (it once did, and the client wrote what it owed for that time in one
    burst, 100 messages here, so that a demo's workers held for a kill
    could finish before it).
    """
    with (
        privateDirectory() as directory,
        ChannelProcesses(directory) as group,
    ):
        host = group.candidate("rate", group.path("record"))
        host.waitForRole("host")
        client = group.client("rate", "r", 0, "--rate", "40")
        client.waitFor(lambda line: line == f"LINK {host.pid}")
        client.send("hold")
        before = int(client.waitFor(lambda line: line.startswith("HELD "))[5:])
        time.sleep(2.5)  # the time held, which must not count
        client.send("release")
        client.waitFor(lambda line: line.startswith("RELEASED "))
        client.send("hold")

        def held() -> list[int]:
            return [int(line[5:]) for line in client.collect() if line[:5] == "HELD "]

        waitUntil(lambda: len(held()) == 2, 20, "the second HELD")
        assert held()[1] - before < 40 * 2.5


@pytest.mark.parametrize("wait", ["waitFor", "result"])
def test_waitsLastUntilTheOutputEnds(wait: str) -> None:
    """
    A wait gives up when the child's output ends, not when the child exits:
    what it printed may reach the reader later (here a process it started
    prints after it exited; under load, the reading thread can lag behind
    the exit), and a wait that gave up at the exit once failed the
    benchmark's smoke test with a child that had printed its result.
    """
    script = "(sleep 0.5; echo 'RESULT {\"late\": 1}') & exit 0"
    with ChildProcess(["sh", "-c", script], group=True) as child:
        child.wait(10)
        if wait == "waitFor":
            line = child.waitFor(lambda line: line.startswith("RESULT "), 10)
            assert line == 'RESULT {"late": 1}'
        else:
            assert child.result(10) == {"late": 1}
        with pytest.raises(ChildFailedError, match="no matching line"):
            child.waitFor(lambda line: line == "more", 10)
