"""
A process of a channel across machines, for the multi-process tests:

    candidate: listens (a candidate host) and records every message it
        receives as "pid message time" lines in --record ("pid message
        time term" with --record-terms: its fencing term then, -1 if it
        had none); prints
        "HOSTING term t" and "NOT-HOSTING t" (time.monotonic()), "ROLE r"
        for each role its port's role observer is told of, and
        "PEER identity pid" for each link (its getPeer()).
    client: connects and sends --count messages "TAG:i", one every
        --interval seconds (fewer if "stop" comes first on standard input),
        then closes once all are acknowledged; prints "DONE" (or "FAILED
        reason"), and "SENT n" first if it was stopped; as an
        IChannelLinkObserver, prints "LINK identity pid term host port" for
        each link up (its getPeer(), which must be the host it is told of)
        and "UNLINKED" for each link lost.  With --collections it also
        prints "FULL n" when connected (the full collections its process
        has run so far) and, before "DONE", "COLLECTED start seconds" for
        each full collection after that (time.monotonic()).
    peer: a client, as above, whose endpoint has a serverFactory (a
        recording host, as a candidate's): it stands as a candidate host
        until its connection ends; on "finish" it stops sending (says
        "SENT n") and ends its connection once all is acknowledged; it
        stays up (for its graceful handover) until "stop".

Candidates and peers stop on "stop" on standard input.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["candidate", "client", "peer"])
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--certs", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--advertise", default="127.0.0.1")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another keyword of ChannelEndpoint (a string), such as etcdCaCerts",
    )
    parser.add_argument("--record")
    parser.add_argument("--record-terms", action="store_true")
    parser.add_argument("--tag", default="c")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--collections", action="store_true")
    options = parser.parse_args()

    from twisted.internet import reactor, stdio, task
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.basic import LineReceiver

    from twisted_channel import ChannelEndpoint, ChannelUnreachableError
    from twisted_channel.testing.recorder import logToStandardError, say

    # The channel's log lines (info and up) on standard error, for the
    # tests that check what a candidate says.
    logToStandardError()

    record = open(options.record, "ab", buffering=0) if options.record else None

    class Recorder(Protocol):
        def connectionMade(self) -> None:
            peer = self.transport.getPeer()  # type: ignore[union-attr]
            say(f"PEER {peer.identity} {peer.pid}")

        def dataReceived(self, data: bytes) -> None:
            assert record is not None
            at = time.monotonic()
            if options.record_terms:
                term = listened[0].term if listened else None
                term = -1 if term is None else term
                record.write(b"%d %s %.6f %d\n" % (os.getpid(), data, at, term))
            else:
                record.write(b"%d %s %.6f\n" % (os.getpid(), data, at))

    # The candidate's port, once listening (for its term, with
    # --record-terms).
    listened: list[Any] = []

    class Commands(LineReceiver):
        delimiter = b"\n"
        stop: object = None
        finish: object = None

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"stop" and callable(self.stop):
                self.stop()
            elif line.strip() == b"finish" and callable(self.finish):
                self.finish()

    commands = Commands()
    certs = options.certs
    endpoint = ChannelEndpoint(
        reactor,
        options.name,
        serverFactory=(
            Factory.forProtocol(Recorder) if options.mode == "peer" else None
        ),
        directory=options.dir,
        timeout=options.timeout,
        coordinator=options.coordinator,
        advertise=options.advertise,
        leaseTTL=options.ttl,
        **(
            {"insecure": True}
            if options.insecure
            else {
                "certKey": os.path.join(certs, options.identity + ".pem"),
                "privateKey": os.path.join(certs, options.identity + ".key"),
                "caCerts": os.path.join(certs, "ca.pem"),
            }
        ),
        **dict(option.split("=", 1) for option in options.option),
    )
    stopping: list[object] = []

    if options.mode == "candidate":

        def listening(port: object) -> None:
            listened.append(port)

            async def roles() -> None:
                while True:
                    await port.whenHosting()  # type: ignore[attr-defined]
                    say(
                        f"HOSTING {port.term} {time.monotonic():.6f} "  # type: ignore[attr-defined]
                        f"{port.getHost().term}"  # type: ignore[attr-defined]
                    )
                    await port.whenNotHosting()  # type: ignore[attr-defined]
                    say(f"NOT-HOSTING {time.monotonic():.6f}")

            from twisted.internet.defer import Deferred

            Deferred.fromCoroutine(roles())
            port.addRoleObserver(lambda role: say(f"ROLE {role}"))  # type: ignore[attr-defined]
            say(f"READY {os.getpid()}")

            def stop() -> None:
                if stopping:
                    return
                stopping.append(True)
                say(f"STOPPING {time.monotonic():.6f}")
                port.stopListening().addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

            commands.stop = stop  # type: ignore[assignment]

        stdio.StandardIO(commands)
        endpoint.listen(Factory.forProtocol(Recorder)).addCallback(listening)
        reactor.run()  # type: ignore[attr-defined]
        return

    count = [options.count]

    # Full collections of this process once connected: (start, seconds).
    collections: list[tuple[float, float]] = []
    if options.collections:
        import gc

        started = [0.0]

        def collecting(phase: str, info: dict[str, int]) -> None:
            if info["generation"] != 2:
                return
            if phase == "start":
                started[0] = time.monotonic()
            else:
                collections.append((started[0], time.monotonic() - started[0]))

        gc.callbacks.append(collecting)

    from zope.interface import implementer

    from twisted_channel import IChannelLinkObserver

    @implementer(IChannelLinkObserver)
    class Sender(Protocol):
        def linkEstablished(self, host: Any) -> None:
            peer = self.transport.getPeer()  # type: ignore[union-attr]
            if peer != host:
                say(f"WRONG-PEER {peer} {host}")
            say(f"LINK {host.identity} {host.pid} {host.term} {host.host} {host.port}")

        def linkLost(self, reason: Any) -> None:
            say("UNLINKED")

        def connectionMade(self) -> None:
            self.sent = 0
            self.loop = task.LoopingCall(self.next)
            self.loop.start(options.interval)

        def next(self) -> None:
            if self.sent >= count[0]:
                self.loop.stop()
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            self.transport.write(f"{options.tag}:{self.sent}".encode())  # type: ignore[union-attr]
            self.sent += 1

        def connectionLost(self, reason: Any = None) -> None:
            if self.loop.running:
                self.loop.stop()
            for start, seconds in collections:
                say(f"COLLECTED {start:.6f} {seconds:.6f}")
            if self.sent >= count[0] and not reason.check(ChannelUnreachableError):
                say("DONE")
            else:
                say(f"FAILED {reason}")
            if options.mode == "client":
                reactor.callLater(0, reactor.stop)  # type: ignore[attr-defined]
            # A peer's candidacy is stopping (a graceful handover, which
            # needs the reactor): it waits for "stop".

    def stopSending() -> None:
        if sender:
            count[0] = min(count[0], sender[0].sent)
            say(f"SENT {count[0]}")

    if options.mode == "peer":
        commands.stop = lambda: reactor.stop()  # type: ignore[assignment,attr-defined]
        commands.finish = stopSending  # type: ignore[assignment]
        stdio.StandardIO(commands)

    class StopSending(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"stop":
                stopSending()

    sender: list[Sender] = []
    if options.mode == "client":
        stdio.StandardIO(StopSending())

    def connected(protocol: Sender) -> Sender:
        sender.append(protocol)
        return protocol

    def ready(protocol: Sender) -> None:
        if options.collections:
            import gc

            say(f"FULL {gc.get_stats()[2]['collections']}")
            del collections[:]
        say(f"READY {os.getpid()}")

    endpoint.connect(Factory.forProtocol(Sender)).addCallback(connected).addCallback(
        ready
    )
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
