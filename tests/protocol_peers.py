"""
A candidate host serving one of Twisted's own protocols over a channel, for
the real-process tests and the fault runs of C{tests.protocol_chaos}.

Run as ``python protocol_peers.py MODE --dir D --name N [--transport T]
[--reactor asyncio] ...``:

- ``web --path P``: a twisted.web C{Site} serving the files of P, with
  ``/later`` answering through a Deferred, and ``/big?size=N`` writing an N
  byte body in one C{write()};
- ``fetch --path URL-PATH``: not a candidate but a client (with
  C{failover=close}): it sends one HTTP/1.0 request without reading
  anything until it has printed ``SENT``, then reads the answer and prints
  ``GOT <status> <body bytes>`` when the connection ends;
- ``amp --record R``: AMP responders ``Double`` (answered at once) and
  ``DoubleLater`` (through a Deferred, 5 ms later); each call run is
  recorded as a line ``<pid> <n>`` in R, with one C{write(2)} before it
  answers.  With ``--ask`` the host also calls each client that connects
  (``DoubleLater`` with its own pid) and records the answer as ``answer
  <pid> <doubled>``.

Options: ``--option KEY=VALUE`` (an endpoint option, repeatable).
It prints ``ROLE host`` / ``ROLE standby`` as its role changes, and ``RSS
<kB>`` when it reads ``rss`` on standard input; the end of its standard
input ends it, so that it never outlives the test.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def residentKilobytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def webFactory(options: argparse.Namespace) -> Any:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    from twisted.web import resource, server, static

    class Later(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> Any:
            def answer(_: object) -> None:
                request.write(b"later: " + request.uri)
                request.finish()

            deferLater(reactor, 0.005, lambda: None).addCallback(answer)
            return server.NOT_DONE_YET

    class Big(resource.Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            size = int(request.args[b"size"][0])
            request.setHeader(b"content-type", b"application/octet-stream")
            request.write(b"b" * size)
            request.finish()
            return server.NOT_DONE_YET  # type: ignore[no-any-return]

    root = static.File(options.path)
    root.putChild(b"later", Later())
    root.putChild(b"big", Big())
    return server.Site(root)


def ampFactory(options: argparse.Namespace) -> Any:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory
    from twisted.internet.task import deferLater

    from tests.protocol_commands import Double, DoubleLater

    record = os.open(options.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    pid = os.getpid()

    from twisted.protocols import amp

    class Doubler(amp.AMP):
        @Double.responder
        def double(self, n: int) -> dict[str, int]:
            os.write(record, b"%d %d\n" % (pid, n))
            return {"doubled": n * 2}

        @DoubleLater.responder
        def doubleLater(self, n: int) -> Any:
            os.write(record, b"%d %d\n" % (pid, n))
            return deferLater(reactor, 0.005, lambda: {"doubled": n * 2})

    class Asking(Doubler):
        def connectionMade(self) -> None:
            super().connectionMade()

            def answered(answer: dict[str, int]) -> None:
                os.write(record, b"answer %d %d\n" % (pid, answer["doubled"]))

            self.callRemote(DoubleLater, n=pid).addCallbacks(
                answered, lambda failure: None
            )

    return Factory.forProtocol(Asking if options.ask else Doubler)


def fetch(reactor: Any, description: str, path: str) -> None:
    from twisted.internet.endpoints import clientFromString
    from twisted.internet.protocol import ClientFactory, Protocol

    class Fetch(Protocol):
        received = b""

        def connectionMade(self) -> None:
            # Read nothing until SIGSTOPped (then SIGCONTed): a frozen client.
            self.transport.pauseProducing()  # type: ignore[union-attr]
            self.transport.write(b"GET %s HTTP/1.0\r\n\r\n" % path.encode())  # type: ignore[union-attr]
            self.transport.whenConnected().addCallback(  # type: ignore[union-attr]
                lambda _: say("SENT")
            )

        def dataReceived(self, data: bytes) -> None:
            self.received += data

        def connectionLost(self, reason: Any = None) -> None:
            head, _, body = self.received.partition(b"\r\n\r\n")
            status = head.split(b" ")[1].decode() if b" " in head else "none"
            say(f"GOT {status} {len(body)}")
            reactor.stop()

    clientFromString(reactor, description + ":failover=close").connect(
        ClientFactory.forProtocol(Fetch)
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["web", "amp", "fetch"])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--transport", default="unix")
    parser.add_argument("--reactor", default="default")
    parser.add_argument("--path")
    parser.add_argument("--record")
    parser.add_argument("--option", action="append", default=[])
    parser.add_argument("--ask", action="store_true")
    options = parser.parse_args()
    if options.reactor == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # Not only for reading: until logging begins, every event (a failure
    # with its traceback, and the large body in its frames) is kept.
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    extra = "".join(f":{option}" for option in options.option)
    description = (
        f"channel:{options.name}:dir={options.dir}:transport={options.transport}"
        + extra
    )
    if options.mode == "fetch":
        fetch(reactor, description, options.path)
        reactor.run()
        return
    factory = webFactory(options) if options.mode == "web" else ampFactory(options)

    def listening(port: Any) -> None:
        port.addRoleObserver(lambda role: say(f"ROLE {role}"))
        say(f"ROLE {port.role}")

    def failed(failure: Any) -> None:
        say(f"ERROR {failure.getErrorMessage()}")
        reactor.stop()

    serverFromString(reactor, description).listen(factory).addCallbacks(
        listening, failed
    )

    def readCommands() -> None:
        for line in sys.stdin:
            if line.strip() == "rss":
                reactor.callFromThread(lambda: say(f"RSS {residentKilobytes()}"))
        os._exit(0)

    threading.Thread(target=readCommands, daemon=True).start()
    reactor.run()


if __name__ == "__main__":
    main()
