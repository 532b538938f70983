"""
A child process for the bus tests: a relay that only stands as a candidate
host of a bus, or a participant that publishes numbered messages and checks
what it receives.

Run as ``python bus_participant.py MODE --dir D --name N ...``; it reports on
stdout, one line per event:

- ``ROLE host`` / ``ROLE standby`` (relay) when its role changes;
- ``JOINED`` (participant) once its first link is up;
- ``SENT <count>`` once it has published everything;
- ``COMPLETE <received>`` once it has received ``--expect`` messages;
- ``DISORDER <message>`` if a sender's messages came out of order or twice;
- ``LOST <sender> <first> <last>`` if the bus reported a loss;
- ``SUMMARY <tag>=<count>,...`` and ``CLOSED <reason>`` when it leaves.

A participant publishes only after reading ``go`` on its standard input,
and leaves after reading ``quit`` (or when its input closes).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Commands(Protocol):
    def __init__(self, handlers: dict[str, Any], onEnd: Any) -> None:
        self.handlers = handlers
        self.onEnd = onEnd

    def dataReceived(self, data: bytes) -> None:
        for command in data.decode().split():
            handler = self.handlers.get(command)
            if handler is not None:
                handler()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.onEnd()


def runRelay(options: argparse.Namespace) -> None:
    from twisted.internet import reactor, stdio

    from twisted_channel import ChannelEndpoint
    from twisted_channel.bus import BusServerFactory

    endpoint = ChannelEndpoint(reactor, options.name, directory=options.dir)

    def listened(port: Any) -> None:
        port.addRoleObserver(lambda role: say(f"ROLE {role}"))
        say(f"ROLE {port.role}")

    endpoint.listen(BusServerFactory()).addCallback(listened)
    stdio.StandardIO(Commands({}, lambda: reactor.stop()))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def runParticipant(options: argparse.Namespace) -> None:
    from twisted.internet import reactor, stdio

    from twisted_channel.bus import BusMessage, BusProtocol, joinBus

    last: dict[str, int] = {}
    state: dict[str, Any] = {"received": 0, "complete": False, "bus": None}

    def received(message: BusMessage) -> None:
        tag, number = message.data.decode().rsplit(":", 1)
        expected = last.get(tag, 0) + 1
        if int(number) != expected:
            say(f"DISORDER {message.data.decode()} after {last.get(tag, 0)}")
        last[tag] = int(number)
        state["received"] += 1
        if state["received"] == options.expect and not state["complete"]:
            state["complete"] = True
            say(f"COMPLETE {state['received']}")

    def lost(sender: str, first: int, last: int) -> None:
        say(f"LOST {sender} {first} {last}")

    def publish(bus: BusProtocol, start: int) -> None:
        stop = min(start + options.slice, options.count + 1)
        for number in range(start, stop):
            bus.publish(b"%s:%d" % (options.tag.encode(), number))
        if stop <= options.count:
            if stop // options.slice % 10 == 0:
                say(f"PROGRESS {stop - 1}")
            reactor.callLater(options.interval, publish, bus, stop)  # type: ignore[attr-defined]
        else:
            say(f"SENT {options.count}")

    def go() -> None:
        bus = state["bus"]
        if bus is not None and not state.get("going"):
            state["going"] = True
            publish(bus, 1)

    def quit() -> None:
        bus = state["bus"]
        if bus is None or state.get("quitting"):
            return
        state["quitting"] = True
        summary = ",".join(f"{tag}={count}" for tag, count in sorted(last.items()))
        say(f"SUMMARY {summary}")
        say(
            f"STATS requested={bus.requested} resent={bus.resent} "
            f"duplicates={bus.duplicates} lost={bus.lost}"
        )

        def closed(_: object) -> None:
            reason = bus.closeReason
            say(f"CLOSED {type(reason.value).__name__ if reason else None}")
            reactor.stop()  # type: ignore[attr-defined]

        bus.close().addCallback(closed)

    def joined(bus: BusProtocol) -> None:
        say("JOINED")

    def connected(bus: BusProtocol) -> None:
        state["bus"] = bus
        bus.whenJoined().addCallback(joined)

    def failed(reason: Failure) -> None:
        say(f"ERROR {reason.getErrorMessage()}")
        reactor.stop()  # type: ignore[attr-defined]

    joinBus(
        reactor,
        options.name,
        received,
        directory=options.dir,
        candidate=options.candidate,
        onLost=lost,
        timeout=30,
        gapTimeout=options.gap_timeout,
        historySize=options.history,
    ).addCallbacks(connected, failed)
    stdio.StandardIO(Commands({"go": go, "quit": quit}, quit))
    reactor.run()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["relay", "participant"])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--tag", default="p")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--slice", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.001)
    parser.add_argument("--candidate", action="store_true")
    parser.add_argument("--gap-timeout", type=float, default=10.0)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--reactor", choices=["default", "asyncio"], default="default")
    options = parser.parse_args()
    if options.reactor == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    if options.mode == "relay":
        runRelay(options)
    else:
        runParticipant(options)


if __name__ == "__main__":
    main()
