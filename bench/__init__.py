"""
Benchmarks of twisted-channel against plain Twisted ``unix:`` endpoints and
its peers.

Run ``python -m bench`` from the repository root (``--quick`` for a smoke
run, ``--runs N``, ``--only GROUPS``, ``--peers LIST``, ``--json PATH``).
Every measurement runs in child processes started with ``sys.executable``
(or ``node``) in a private directory under ``/tmp``, each bounded in time
and killed and reaped by pid when its measurement ends; the parent only
starts them, reads their report lines, kills the current host in the
failover tests, and prints a Markdown table.

The baseline is Twisted's own ``unix:`` endpoints with
``Int32StringReceiver`` on both sides, measured in the same invocation, so
each figure is also given as a ratio to it.  Peers, each in a column of
its own with its ratio to the baseline and the channel's ratio to it:

- pyzmq over ``ipc://`` (PUSH/PULL, REQ/REP), where ``import zmq`` works
  (``pip install ".[bench]"``);
- ``multiprocessing.connection`` over AF_UNIX (always);
- the Node package open-channel (throughput, round trip, and failover with
  the host SIGKILLed while its workers write, and while they are idle),
  where ``node`` and ``npm`` are: installed at run time, with its broken
  ``find-process`` dependency pinned, into
  ``$TWISTED_CHANNEL_BENCH_CACHE`` or ``~/.cache/twisted-channel-bench``
  (see L{bench._node}).  ``--quick`` never installs it; it uses an install
  an earlier full run left.  A peer that cannot run is skipped, with the
  reason in the table.

The C{tls} group measures the channel across two machines (two C{dir=} on
loopback, one etcd started by the run, certificates made in its
workspace) against Twisted's own C{ssl:} endpoints with
C{Int32StringReceiver} and the same certificates (see L{bench._tlsbench});
where there is no etcd binary it is skipped, with the reason.
"""
