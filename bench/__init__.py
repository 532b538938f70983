"""
Benchmarks of twisted-channel against plain Twisted ``unix:`` endpoints.

Run ``python -m bench`` from the repository root (``--quick`` for a smoke
run, ``--runs N``, ``--json PATH``).  Every measurement runs in child
processes started with ``sys.executable`` in a private directory under
``/tmp``; the parent only starts them, reads their report lines, kills the
current host in the failover test, and prints a Markdown table.

The baseline is Twisted's own ``unix:`` endpoints with
``Int32StringReceiver`` on both sides, measured in the same invocation, so
each figure is also given as a ratio to it.
"""
