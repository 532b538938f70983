"""
What every benchmark child that runs a reactor shares: the parent's
commands on stdin (whose end ends the child at once), stopping once,
reporting a failure, and listening or connecting with the implementation
measured (the channel, or plain Twisted C{unix:} with
C{Int32StringReceiver}; with C{--certs}, the TLS group's: the channel
across machines, or plain Twisted C{ssl:}, see L{bench._tlsbench}).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from bench._common import BASELINE, CHANNEL, INT32_MAX_LENGTH, say

__all__ = [
    "BASELINE",
    "CHANNEL",
    "channel",
    "commands",
    "connect",
    "fail",
    "int32",
    "listen",
    "stopSoon",
    "stoppedUnasked",
    "unixPath",
    "watchStdin",
]

commands: dict[str, Callable[[], None]] = {}


def watchStdin(reactor: Any) -> None:
    """
    Run the parent's commands; exit at once when stdin closes.
    """

    def run(word: str) -> None:
        # Looked up in the reactor thread, so that a command registered
        # before the line announcing it is never missed.
        handler = commands.get(word)
        if handler is None:
            say("ERROR", f"unknown or early command {word!r}")
            stopSoon(reactor)
            return
        handler()

    def read() -> None:
        for raw in sys.stdin.buffer:
            reactor.callFromThread(run, raw.decode("ascii", "replace").strip())
        os._exit(3)

    threading.Thread(target=read, name="stdin-watch", daemon=True).start()


stopping: list[bool] = []


def stopSoon(reactor: Any) -> None:
    """
    Stop the reactor once the current call returns (once, however often
    this is called).
    """
    if not stopping:
        stopping.append(True)
        reactor.callLater(0, reactor.stop)


def fail(reactor: Any) -> Callable[[Any], None]:
    def failed(reason: Any) -> None:
        say("ERROR", reason.getErrorMessage().replace("\n", " "))
        stopSoon(reactor)

    return failed


def channel(reactor: Any, options: argparse.Namespace) -> Any:
    from twisted_channel import ChannelEndpoint

    if getattr(options, "certs", None):
        # The TLS group: this process is on machine --machine, whose runtime
        # directory is its own under --dir; links cross machines over TLS.
        certs, machine = options.certs, options.machine
        return ChannelEndpoint(
            reactor,
            options.name,
            directory=os.path.join(options.dir, machine),
            timeout=options.timeout,
            coordinator=options.coordinator,
            advertise="127.0.0.1",
            certKey=os.path.join(certs, machine + ".pem"),
            privateKey=os.path.join(certs, machine + ".key"),
            caCerts=os.path.join(certs, "ca.pem"),
        )
    return ChannelEndpoint(
        reactor, options.name, directory=options.dir, timeout=options.timeout
    )


def _credentials(options: argparse.Namespace) -> Any:
    """
    The TLS group's baseline: this machine's certificate, key and
    authority, the files the channel uses, loaded as Twisted options take
    them (pyOpenSSL objects; the same TLS settings as the channel's links:
    TLS 1.2 or later, each side verifying the other).
    """
    from twisted_channel._tls import loadCredentials

    certs, machine = options.certs, options.machine
    return loadCredentials(
        os.path.join(certs, machine + ".pem"),
        os.path.join(certs, machine + ".key"),
        os.path.join(certs, "ca.pem"),
    )


def _portFile(options: argparse.Namespace) -> str:
    return os.path.join(options.dir, options.name + ".ssl-port")


def unixPath(options: argparse.Namespace) -> str:
    return os.path.join(options.dir, options.name + ".b.sock")


def listen(reactor: Any, options: argparse.Namespace, factory: Any) -> Any:
    """
    Listen with the implementation chosen; the Deferred fires once this
    process accepts connections (for the channel: once it hosts).
    """
    if options.impl == CHANNEL:
        d = channel(reactor, options).listen(factory)
        return d.addCallback(
            lambda port: port.whenHosting().addCallback(lambda _: port)
        )
    if getattr(options, "certs", None):
        return _listenSSL(reactor, options, factory)
    from twisted.internet.endpoints import serverFromString

    # A deep backlog, so that clients opening many links at once (memory
    # test) are not refused while this process waits for a CPU.
    endpoint = serverFromString(reactor, f"unix:{unixPath(options)}:backlog=1024")
    return endpoint.listen(factory)


def connect(reactor: Any, options: argparse.Namespace, factory: Any) -> Any:
    """
    Connect with the implementation chosen; the Deferred fires with the
    protocol once a link is up.
    """
    if options.impl == CHANNEL:

        def linked(protocol: Any) -> Any:
            return protocol.transport.whenConnected().addCallback(lambda _: protocol)

        return channel(reactor, options).connect(factory).addCallback(linked)
    if getattr(options, "certs", None):
        return _connectSSL(reactor, options, factory)
    from twisted.internet.endpoints import clientFromString

    endpoint = clientFromString(reactor, f"unix:path={unixPath(options)}")
    return endpoint.connect(factory)


def _listenSSL(reactor: Any, options: argparse.Namespace, factory: Any) -> Any:
    """
    The TLS group's baseline host: Twisted's C{ssl:} server endpoint on an
    ephemeral loopback port, written to a file for the client.
    """
    from twisted.internet.endpoints import SSL4ServerEndpoint

    endpoint = SSL4ServerEndpoint(
        reactor, 0, _credentials(options).serverOptions(), interface="127.0.0.1"
    )

    def listening(port: Any) -> Any:
        path = _portFile(options)
        with open(path + ".new", "w", encoding="ascii") as f:
            f.write(str(port.getHost().port))
        os.rename(path + ".new", path)
        return port

    return endpoint.listen(factory).addCallback(listening)


def _connectSSL(reactor: Any, options: argparse.Namespace, factory: Any) -> Any:
    """
    The TLS group's baseline client: Twisted's C{ssl:} client endpoint to
    the host's port, verifying that the host's certificate names machine
    C{a} and presenting this machine's.
    """
    from twisted.internet.endpoints import SSL4ClientEndpoint

    with open(_portFile(options), encoding="ascii") as f:
        port = int(f.read())
    endpoint = SSL4ClientEndpoint(
        reactor, "127.0.0.1", port, _credentials(options).clientOptions("a")
    )
    return endpoint.connect(factory)


def int32() -> type:
    from twisted.protocols.basic import Int32StringReceiver

    class Int32(Int32StringReceiver):
        MAX_LENGTH = INT32_MAX_LENGTH

    return Int32


def stoppedUnasked() -> None:
    """
    Say so if the reactor stopped although nothing here asked it to: a
    signal from outside (SIGTERM, SIGINT) is the only other way.
    """
    if not stopping:
        say("ERROR", "the reactor stopped unasked (a signal from outside?)")
