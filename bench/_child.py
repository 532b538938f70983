"""
What every benchmark child that runs a reactor shares: the parent's
commands on stdin (whose end ends the child at once), stopping once,
reporting a failure, and listening or connecting with the implementation
measured (the channel, or plain Twisted C{unix:} with
C{Int32StringReceiver}).
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

    return ChannelEndpoint(
        reactor, options.name, directory=options.dir, timeout=options.timeout
    )


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
    from twisted.internet.endpoints import clientFromString

    endpoint = clientFromString(reactor, f"unix:path={unixPath(options)}")
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
