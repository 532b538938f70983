"""
The Python peers' child processes: ``python -m bench._peers KIND --impl
zmq|mpconn ...``, and whether each peer can run here.

- C{--impl zmq}: pyzmq over C{ipc://}, PUSH/PULL for throughput and
  REQ/REP for the round trip (only where C{import zmq} works: the optional
  C{bench} extra);
- C{--impl mpconn}: C{multiprocessing.connection} C{Listener}/C{Client}
  over AF_UNIX, C{send_bytes}/C{recv_bytes} (its own 4-byte header).

Kinds, with the same arguments and report lines as L{bench._children}'s:
C{recv} (count C{--count} messages, report the time from the first to the
last), C{send} (send C{--count} messages of C{--size} bytes, then C{DONE}),
C{echo} and C{ping} (the round trip, timed by the pinger).  Each is a
plain blocking loop, as each API is naturally used.  Bounded in time like
every child: C{signal.alarm(--limit)}, and an exit as soon as stdin
reaches end of file.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from time import monotonic_ns

from bench._common import MPCONN, ZMQ, percentile, report, say


def zmqStatus() -> tuple[bool, str]:
    """
    Whether pyzmq can be imported by this interpreter (which also runs the
    children), and its version or why not.
    """
    try:
        import zmq
    except ImportError as e:
        return False, f"skipped: pyzmq not installed ({e}; pip install '.[bench]')"
    return True, f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}"


def _address(options: argparse.Namespace) -> str:
    suffix = ".zmq" if options.impl == ZMQ else ".mp"
    return os.path.join(options.dir, options.name + suffix)


def _timedReceive(recv: Callable[[], object], count: int) -> None:
    recv()
    t0 = monotonic_ns()
    for _ in range(count - 1):
        recv()
    t1 = monotonic_ns()
    seconds = (t1 - t0) / 1e9
    report(
        {
            "messages": count,
            "seconds": seconds,
            "msgs_per_s": (count - 1) / seconds if seconds > 0 else None,
        }
    )


def _timedPings(
    exchange: Callable[[], object], count: int, warmup: int
) -> dict[str, float]:
    rtts: list[int] = []
    for i in range(warmup + count):
        t = monotonic_ns()
        exchange()
        if i >= warmup:
            rtts.append(monotonic_ns() - t)
    return {
        "pings": len(rtts),
        "p50_us": percentile(rtts, 0.5) / 1e3,
        "p99_us": percentile(rtts, 0.99) / 1e3,
        "mean_us": sum(rtts) / len(rtts) / 1e3,
        "max_us": max(rtts) / 1e3,
    }


def runZmq(options: argparse.Namespace) -> None:
    import zmq

    address = "ipc://" + _address(options)
    context = zmq.Context()
    try:
        if options.kind == "recv":
            pull = context.socket(zmq.PULL)
            pull.bind(address)
            say("READY")
            _timedReceive(pull.recv, options.count)
            pull.close(linger=0)
        elif options.kind == "send":
            push = context.socket(zmq.PUSH)
            push.connect(address)
            say("READY")
            payload = b"x" * options.size
            send = push.send
            for _ in range(options.count):
                send(payload)
            # Blocks until every message is handed to the receiver.
            push.close(linger=-1)
            say("DONE", options.count, 0)
        elif options.kind == "echo":
            rep = context.socket(zmq.REP)
            rep.bind(address)
            say("READY")
            recv, send = rep.recv, rep.send
            for _ in range(options.warmup + options.count):
                send(recv())
            rep.close(linger=-1)
        elif options.kind == "ping":
            req = context.socket(zmq.REQ)
            req.connect(address)
            payload = b"p" * options.size

            def exchange() -> object:
                req.send(payload)
                return req.recv()

            report(_timedPings(exchange, options.count, options.warmup))
            req.close(linger=0)
    finally:
        context.term()


def runMpconn(options: argparse.Namespace) -> None:
    from multiprocessing.connection import Client, Listener

    path = _address(options)
    if options.kind in ("recv", "echo"):
        with Listener(path, family="AF_UNIX") as listener:
            say("READY")
            with listener.accept() as connection:
                if options.kind == "recv":
                    _timedReceive(connection.recv_bytes, options.count)
                else:
                    recv, send = connection.recv_bytes, connection.send_bytes
                    for _ in range(options.warmup + options.count):
                        send(recv())
    elif options.kind == "send":
        with Client(path, family="AF_UNIX") as connection:
            say("READY")
            payload = b"x" * options.size
            send = connection.send_bytes
            for _ in range(options.count):
                send(payload)
        say("DONE", options.count, 0)
    elif options.kind == "ping":
        with Client(path, family="AF_UNIX") as connection:
            payload = b"p" * options.size

            def exchange() -> object:
                connection.send_bytes(payload)
                return connection.recv_bytes()

            report(_timedPings(exchange, options.count, options.warmup))


def _exitAtEndOfInput() -> None:
    def read() -> None:
        for _ in sys.stdin.buffer:
            pass
        os._exit(3)

    threading.Thread(target=read, name="stdin-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._peers")
    parser.add_argument("kind", choices=["recv", "send", "echo", "ping"])
    parser.add_argument("--impl", choices=[ZMQ, MPCONN], required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--name", default="b")
    parser.add_argument("--limit", type=int, default=300, help="seconds to live")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=0)
    # Accepted for the same command lines as bench._children's; unused.
    parser.add_argument("--slice", type=int, default=0)
    options = parser.parse_args(argv)

    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, options.limit))
    _exitAtEndOfInput()
    try:
        (runZmq if options.impl == ZMQ else runMpconn)(options)
    except Exception as e:
        say("ERROR", f"{type(e).__name__}: {e}".replace("\n", " "))
        sys.stdout.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
