"""
See a channel fail over: run ``python examples/failover_demo.py``.

It starts three processes on a fresh channel in a private directory, with
the harness of ``twisted_channel.testing``.  Each stands as a candidate
host (``listen``) that records every message it receives, and also
connects as a client (``connect``) that streams numbered messages.  One of
them is elected host; the demo SIGKILLs it while the others stream, a
standby takes over, and the surviving clients resend what the dead host had
not acknowledged.  At the end it prints what was sent and delivered, and
exits 0 only if no surviving process lost a message.
"""

from __future__ import annotations

import argparse
import sys
import time

from twisted_channel.testing import (
    ChannelProcesses,
    ChildFailedError,
    privateDirectory,
    readRecords,
    waitUntil,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--messages", type=int, default=5000)
    options = parser.parse_args()

    with privateDirectory() as directory, ChannelProcesses(directory) as group:
        record = group.path("record")
        workers = {
            f"w{index}": group.candidate(
                "demo",
                record,
                "--stream",
                f"w{index}",
                "--count",
                str(options.messages),
            )
            for index in range(options.workers)
        }
        try:
            for tag, worker in workers.items():
                worker.waitFor(lambda line: line.startswith("ROLE "))
                print(f"  {tag} is {worker.role()}")
            (host,) = [t for t, w in workers.items() if w.role() == "host"]
            waitUntil(lambda: len(readRecords(record)) > 1000, 30, "1,000 messages")
            killedAt = time.monotonic()
            workers[host].kill()
            print(f"killed the host {host} (pid {workers[host].pid})")
            survivors = {t: w for t, w in workers.items() if t != host}
            for tag, worker in survivors.items():
                closed = worker.waitFor(lambda line: line.startswith("CLOSED "), 120)
                print(f"  {tag} is {worker.role()}; its stream: {closed}")
        except ChildFailedError as e:
            print(f"failed: {e}")
            return 1
        print(f"all streams closed {time.monotonic() - killedAt:.2f} s after the kill")
        records = readRecords(record)

    delivered: dict[str, set[int]] = {tag: set() for tag in workers}
    for message in records:
        delivered[message.tag].add(message.number)
    lost = 0
    print(f"\n{'worker':8} {'sent':>6} {'delivered':>10} {'lost':>5}")
    for tag in workers:
        if tag == host:
            print(f"{tag:8} (killed: its own unsent writes died with it)")
            continue
        missing = options.messages - len(delivered[tag])
        lost += missing
        print(f"{tag:8} {options.messages:6} {len(delivered[tag]):10} {missing:5}")
    hosts = {message.pid for message in records}
    print(f"hosts seen: {len(hosts)}; messages lost by surviving workers: {lost}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
