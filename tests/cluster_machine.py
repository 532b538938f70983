"""
A candidate host of a channel across machines, for the multi-process tests:
one MachineElection against a real etcd, printing what happens with the
time (time.monotonic(), one clock for every process of the machine, in
every network namespace):

    READY pid
    HOSTING term t
    NOT-HOSTING term t reason
    STOPPED t

It stops gracefully on "stop" on standard input (or SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=0.5)
    options = parser.parse_args()

    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from twisted_channel._campaign import HostRecord
    from twisted_channel._cluster import MachineElection, electionKey
    from twisted_channel._etcd import EtcdClient
    from twisted_channel.testing.recorder import logToStandardError, say

    # The channel's log lines (info and up) on standard error, for the
    # tests that check what a candidate says.
    logToStandardError()

    client = EtcdClient(reactor, options.coordinator, timeout=options.timeout)
    election = MachineElection(
        reactor,
        client,
        os.path.join(options.dir, options.name + ".lock"),
        electionKey(options.name, "/tests"),
        HostRecord("127.0.0.1:1", options.identity, os.getpid()),
        lambda term: say(f"HOSTING {term} {time.monotonic():.6f}"),
        lambda term, reason: say(
            f"NOT-HOSTING {term} {time.monotonic():.6f} {reason.replace(' ', '_')}"
        ),
        leaseTTL=options.ttl,
    )

    stopping = []

    def stop() -> None:
        if stopping:
            return
        stopping.append(True)
        say(f"STOPPING {time.monotonic():.6f}")

        def stopped(result: object) -> None:
            say(f"STOPPED {time.monotonic():.6f}")
            reactor.stop()  # type: ignore[attr-defined]

        election.stop().addBoth(stopped)

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"stop":
                stop()

        def connectionLost(self, reason: object = None) -> None:
            stop()

    stdio.StandardIO(Commands())
    reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
        "before", "shutdown", lambda: None if stopping else election.stop()
    )
    election.start()
    say(f"READY {os.getpid()}")
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
