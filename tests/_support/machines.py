"""
What the cluster tests share: the program each simulated machine runs, and
the lease time they use.
"""

from __future__ import annotations

import os

#: The candidate program of one machine (C{tests/cluster_machine.py}).
MACHINE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cluster_machine.py"
)

#: The etcd lease's time to live, in seconds, in the cluster tests.
TTL = 2
