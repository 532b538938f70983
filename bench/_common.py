"""
What both the parent and the children use: statistics and the line format.

Children report on stdout, one line per event, flushed at once: a word, then
either a few plain fields or (for ``RESULT``) one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

#: Implementations measured.
CHANNEL = "channel"
BASELINE = "baseline"
IMPLEMENTATIONS = (CHANNEL, BASELINE)

#: Peers measured beside them when available: pyzmq over C{ipc://},
#: C{multiprocessing.connection} over AF_UNIX, and the Node package
#: open-channel.
ZMQ = "zmq"
MPCONN = "mpconn"
NODE = "node"
PEERS = (ZMQ, MPCONN, NODE)
PEER_TITLES = {
    ZMQ: "pyzmq ipc://",
    MPCONN: "multiprocessing.connection",
    NODE: "open-channel (Node)",
}

#: Twisted's Int32StringReceiver refuses strings over MAX_LENGTH (99,999 by
#: default); the 64 KiB throughput test needs more.
INT32_MAX_LENGTH = 1 << 24


def say(*words: object) -> None:
    """
    Report one line to the parent.
    """
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def report(result: dict[str, Any]) -> None:
    say("RESULT", json.dumps(result, separators=(",", ":")))


def percentile(values: Sequence[float], q: float) -> float:
    """
    The C{q} quantile (0..1) of C{values}, interpolated linearly between the
    closest ranks, as the anchor benchmarks compute it.
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


def rssKiB() -> int:
    """
    This process's resident set size (C{VmRSS} in C{/proc/self/status}).
    """
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def raiseFileLimit(wanted: int) -> None:
    """
    Raise the soft limit on open files to C{wanted} (or the hard limit).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def repositoryRoot() -> str:
    """
    The directory holding the C{bench} package, for the children's
    C{PYTHONPATH}.
    """
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
