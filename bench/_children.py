"""
The benchmark's child processes: ``python -m bench._children KIND ...``.

Each child is bounded in time twice over: C{signal.alarm(--limit)} ends it
even if its reactor is stuck, and it exits as soon as its stdin reaches end
of file, which happens when the parent closes it or dies.  Commands from
the parent (C{go}) arrive as lines on stdin.  The kinds live in one
module per group: L{bench._child_throughput}, L{bench._child_roundtrip},
L{bench._child_startup}, L{bench._child_memory}; what they share in
L{bench._child}.

Kinds (C{--impl channel} uses L{twisted_channel.ChannelEndpoint}, C{--impl
baseline} plain Twisted C{unix:} endpoints with C{Int32StringReceiver}):

- C{recv}: a receiver that counts C{--count} messages over C{--conns}
  connections and reports the time from the first to the last;
- C{send}: a sender of C{--count} messages of C{--size} bytes, at most
  C{--slice} writes per reactor turn, registered on its transport as a
  streaming producer (for both implementations alike);
- C{echo} / C{ping}: the two ends of the round-trip test;
- C{startup}: listen-to-hosting and connect-to-first-message, in-process;
- C{memhost} / C{idle}: a host's memory with many idle links, and the
  process holding those links;
- C{fanin}: forks C{--conns} C{send} clients at once (no reactor of its
  own), for the fan-in test;
- C{bufclient}: a client of a channel nobody hosts, writing past its
  C{maxBufferSize}, reporting its memory (channel only).

The peers' children (pyzmq, C{multiprocessing.connection}) are in
L{bench._peers}, open-channel's scripts in C{bench/js/}; the failover
test's candidates and clients are L{twisted_channel.testing.recorder}'s.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from bench._child import stoppedUnasked, watchStdin
from bench._child_memory import runBufClient, runIdle, runMemHost
from bench._child_roundtrip import runEcho, runPing
from bench._child_startup import runStartup
from bench._child_throughput import runFanIn, runRecv, runSend
from bench._common import BASELINE, CHANNEL

KINDS: dict[str, Callable[[Any, argparse.Namespace], None]] = {
    "recv": runRecv,
    "send": runSend,
    "echo": runEcho,
    "ping": runPing,
    "startup": runStartup,
    "memhost": runMemHost,
    "idle": runIdle,
    "bufclient": runBufClient,
}

#: Kinds that run no reactor of their own.
PLAIN_KINDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "fanin": runFanIn,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._children")
    parser.add_argument("kind", choices=sorted([*KINDS, *PLAIN_KINDS]))
    parser.add_argument("--impl", choices=[CHANNEL, BASELINE], default=CHANNEL)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--name", default="b")
    parser.add_argument("--limit", type=int, default=300, help="seconds to live")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--slice", type=int, default=1000)
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--go", action="store_true")
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--links", type=int, default=0)
    parser.add_argument("--cap", type=int, default=32 << 20)
    parser.add_argument("--total", type=int, default=100_000_000)
    # The TLS group (L{bench._tlsbench}): the certificates' directory, etcd,
    # and which machine (a: the host's, b: the client's) this process is on.
    parser.add_argument("--certs", default=None)
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--machine", default="a")
    options = parser.parse_args(argv)

    # Bounded in time whatever happens: SIGALRM's default action ends us.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, options.limit))

    if options.kind in PLAIN_KINDS:
        PLAIN_KINDS[options.kind](options)
        sys.stdout.flush()
        os._exit(0)

    from twisted.internet import reactor

    watchStdin(reactor)
    KINDS[options.kind](reactor, options)
    reactor.run()  # type: ignore[attr-defined]
    stoppedUnasked()
    # Leave without finalising the interpreter, which would wait for the
    # thread blocked reading stdin.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
