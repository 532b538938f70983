"""
See a channel fail over: run ``python examples/failover_demo.py``.

It starts three worker processes on a fresh channel in a temporary
directory.  Each worker stands as a candidate host (``listen``) and also
connects as a client (``connect``) that streams numbered messages.  One of
them is elected host; the demo SIGKILLs it while the others stream, a
standby takes over, and the surviving clients resend what the dead host had
not acknowledged.  At the end it prints what was sent and delivered, and
exits 0 only if no surviving worker lost a message.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict


def worker(directory: str, record: str, tag: str, count: int) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.internet.protocol import Factory, Protocol

    recordFile = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    class Recorder(Protocol):
        def dataReceived(self, data: bytes) -> None:
            # Written before dataReceived returns, so before the
            # acknowledgement: the record never misses a delivered message.
            os.write(recordFile, b"%d %s\n" % (os.getpid(), data))

    class Streamer(Protocol):
        sent = 0

        def connectionMade(self) -> None:
            self.writeSome()

        def writeSome(self) -> None:
            for _ in range(20):
                if self.sent == count:
                    print(f"{tag} wrote {count}", flush=True)
                    self.transport.loseConnection()
                    return
                self.sent += 1
                self.transport.write(b"%s:%d" % (tag.encode(), self.sent))
            reactor.callLater(0.005, self.writeSome)

        def connectionLost(self, reason: object) -> None:
            print(f"{tag} closed: {reason.getErrorMessage()}", flush=True)
            reactor.stop()

    description = f"channel:demo:dir={directory}"

    def listening(port: object) -> None:
        port.addRoleObserver(lambda role: print(f"{tag} is {role}", flush=True))
        print(f"{tag} is {port.role}", flush=True)
        clientFromString(reactor, description).connect(Factory.forProtocol(Streamer))

    serverFromString(reactor, description).listen(
        Factory.forProtocol(Recorder)
    ).addCallback(listening)
    reactor.run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--worker", nargs=3, metavar=("DIR", "RECORD", "TAG"))
    options = parser.parse_args()
    if options.worker:
        worker(*options.worker, count=options.messages)
        return 0

    directory = tempfile.mkdtemp(prefix="channel-demo-")
    record = os.path.join(directory, "record")
    workers = {}
    for index in range(options.workers):
        tag = f"w{index}"
        workers[tag] = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--messages",
                str(options.messages),
                "--worker",
                directory,
                record,
                tag,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
    try:
        # Each worker's first line is its role after the first election.
        host = None
        for tag, process in workers.items():
            line = process.stdout.readline().strip()
            print("  " + line)
            if line == f"{tag} is host":
                host = tag
        if host is None:
            print("no host was elected")
            return 1
        time.sleep(0.3)
        killedAt = time.monotonic()
        os.kill(workers[host].pid, signal.SIGKILL)
        print(f"killed the host {host} (pid {workers[host].pid})")
        for process in workers.values():
            output, _ = process.communicate(timeout=120)
            for line in output.splitlines():
                print("  " + line)
        print(
            f"all workers finished {time.monotonic() - killedAt:.2f} s after the kill"
        )
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
            process.wait()

    delivered = defaultdict(set)
    hosts = set()
    with open(record) as f:
        for line in f:
            pid, message = line.split()
            hosts.add(pid)
            tag, number = message.split(":")
            delivered[tag].add(int(number))
    lost = 0
    print(f"\n{'worker':8} {'sent':>6} {'delivered':>10} {'lost':>5}")
    for tag in workers:
        if tag == host:
            print(f"{tag:8} {'(killed: its own unsent writes died with it)':>30}")
            continue
        missing = options.messages - len(delivered[tag])
        lost += missing
        print(f"{tag:8} {options.messages:6} {len(delivered[tag]):10} {missing:5}")
    print(f"hosts seen: {len(hosts)}; messages lost by surviving workers: {lost}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
