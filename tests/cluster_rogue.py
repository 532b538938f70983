"""
A rogue TLS server for the multi-process tests: it holds a certificate
signed by the channel's authority, but for another machine than the one
the election key names at its address. It listens on loopback, prints
"READY port", and appends every application byte it receives to --record
(the test checks that none ever arrives). It stops on "stop" on standard
input or when standard input closes.
"""

from __future__ import annotations

import argparse
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--certKey", required=True)
    parser.add_argument("--privateKey", required=True)
    parser.add_argument("--record", required=True)
    options = parser.parse_args()

    from twisted.internet import reactor, stdio
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.basic import LineReceiver

    record = open(options.record, "ab", buffering=0)

    class Recorder(Protocol):
        def dataReceived(self, data: bytes) -> None:
            record.write(data)

    class Commands(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            if line.strip() == b"stop":
                reactor.stop()  # type: ignore[attr-defined]

        def connectionLost(self, reason: object = None) -> None:
            if reactor.running:  # type: ignore[attr-defined]
                reactor.stop()  # type: ignore[attr-defined]

    def listening(port: object) -> None:
        sys.stdout.write(f"READY {port.getHost().port}\n")  # type: ignore[attr-defined]
        sys.stdout.flush()

    stdio.StandardIO(Commands())
    endpoint = serverFromString(
        reactor,
        f"ssl:0:interface=127.0.0.1:certKey={options.certKey}"
        f":privateKey={options.privateKey}",
    )
    endpoint.listen(Factory.forProtocol(Recorder)).addCallback(listening)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
