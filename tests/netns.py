"""
Several "machines" on one: Linux network namespaces joined by a bridge,
each with its own address on a private test subnet, made by the tests and
always removed (also after a failure).  A partition is a machine's link
taken down on the bridge's side; healing brings it up again.  Two machines
can also be cut off from each other only (L{Network.isolate}), each still
reaching every other machine.

Every name made here carries a per-run prefix, so two runs cannot collide
and clean-up removes only its own.  Needs root and C{ip}; L{unavailable}
says why not, for a skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess


def unavailable() -> str | None:
    """
    Why namespaces cannot be made here, or C{None} if they can.
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (CI runs these tests as root)"
    if shutil.which("ip") is None:
        return "network namespaces need the ip command (iproute2)"
    return None


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, timeout=20)


class Machine:
    """
    One namespace: its name, its address, the bridge-side end of its link.
    """

    def __init__(self, namespace: str, address: str, peer: str) -> None:
        self.namespace = namespace
        self.address = address
        self.peer = peer

    def command(self, arguments: list[str]) -> list[str]:
        """
        C{arguments} run inside this machine's namespace (C{ip netns exec}
        replaces itself with the command, so the pid is the command's).
        """
        return ["ip", "netns", "exec", self.namespace, *arguments]


class Network:
    """
    A bridge and the machines attached to it, on the subnet
    C{10.A.B.0/24} picked at random for the run.
    """

    def __init__(self) -> None:
        self.prefix = "tc" + secrets.token_hex(3)[:5]
        self.subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
        self.bridge = self.prefix + "br"
        self.machines: list[Machine] = []
        self._ruled: set[str] = set()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")

    def add(self, name: str) -> Machine:
        """
        A new machine with the next address of the subnet.
        """
        index = len(self.machines) + 1
        namespace = f"{self.prefix}-{name}"
        inside, peer = f"{self.prefix}v{index}", f"{self.prefix}p{index}"
        address = f"{self.subnet}.{index}"
        _ip("netns", "add", namespace)
        machine = Machine(namespace, address, peer)
        self.machines.append(machine)
        _ip("link", "add", inside, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "master", self.bridge)
        _ip("link", "set", peer, "up")
        _ip("link", "set", inside, "netns", namespace)
        inNamespace = ["netns", "exec", namespace, "ip"]
        _ip(*inNamespace, "addr", "add", f"{address}/24", "dev", inside)
        _ip(*inNamespace, "link", "set", inside, "up")
        _ip(*inNamespace, "link", "set", "lo", "up")
        return machine

    def partition(self, machine: Machine) -> None:
        """
        Cut C{machine} off from every other.
        """
        _ip("link", "set", machine.peer, "down")

    def heal(self, machine: Machine) -> None:
        _ip("link", "set", machine.peer, "up")

    def isolate(self, one: Machine, other: Machine) -> None:
        """
        Cut C{one} and C{other} off from each other only: each drops every
        packet from the other as it arrives (a policy rule of its
        namespace, before the local table's), silently, as a network that
        loses them would; both still reach every other machine.
        """
        for machine, peer in ((one, other), (other, one)):
            if machine.namespace not in self._ruled:
                # The local table's rule comes first (priority 0) and cannot
                # be preceded: move it behind the rules added here.
                inNamespace = ["netns", "exec", machine.namespace, "ip", "rule"]
                _ip(*inNamespace, "add", "pref", "100", "lookup", "local")
                _ip(*inNamespace, "del", "pref", "0")
                self._ruled.add(machine.namespace)
            _ip(*self._drop(machine, peer, "add"))

    def rejoin(self, one: Machine, other: Machine) -> None:
        """
        Undo L{isolate}.
        """
        for machine, peer in ((one, other), (other, one)):
            _ip(*self._drop(machine, peer, "del"))

    def _drop(self, machine: Machine, peer: Machine, verb: str) -> list[str]:
        return [
            *("netns", "exec", machine.namespace, "ip", "rule", verb),
            *("pref", "10", "from", peer.address, "blackhole"),
        ]

    def cleanUp(self) -> None:
        """
        Remove every namespace and link made (their processes must be
        gone); errors are ignored so that everything is tried.
        """
        for machine in self.machines:
            subprocess.run(
                ["ip", "link", "del", machine.peer], capture_output=True, timeout=20
            )
            subprocess.run(
                ["ip", "netns", "del", machine.namespace],
                capture_output=True,
                timeout=20,
            )
        subprocess.run(
            ["ip", "link", "del", self.bridge], capture_output=True, timeout=20
        )

    def leftovers(self) -> list[str]:
        """
        Names with this run's prefix that still exist (for the tests of
        clean-up).
        """
        links = subprocess.run(
            ["ip", "-o", "link"], capture_output=True, text=True, timeout=20
        ).stdout
        namespaces = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=20
        ).stdout
        return [
            word
            for word in (links + " " + namespaces).replace(":", " ").split()
            if word.startswith(self.prefix)
        ]
