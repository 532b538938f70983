"""
The options of a channel across machines in the endpoint string
(C{coordinator=}, C{advertise=}, ...): their names and the parsing of their
values.  Apart from L{twisted_channel._clusterchannel}, so that parsing a
one-machine channel's string imports nothing of etcd, HTTP or TLS.
"""

from __future__ import annotations

from typing import Any

#: The options of a channel across machines, with their keyword.
CLUSTER_OPTIONS = {
    "coordinator": "coordinator",
    "advertise": "advertise",
    "port": "port",
    "interface": "interface",
    "leaseTTL": "leaseTTL",
    "certKey": "certKey",
    "privateKey": "privateKey",
    "caCerts": "caCerts",
    "insecure": "insecure",
    # etcd's own TLS client port (etcds://): docs/cluster.md.
    "etcdCaCerts": "etcdCaCerts",
    "etcdCertKey": "etcdCertKey",
    "etcdPrivateKey": "etcdPrivateKey",
    # etcd's user and password, the password read from a file, never taken
    # from the string.
    "etcdUser": "etcdUser",
    "etcdPasswordFile": "etcdPasswordFile",
}


def parseClusterOption(key: str, value: str) -> Any:
    """
    The value of one option of a channel across machines, from the
    endpoint string.

    @raise ValueError: naming the option, if the value is wrong.
    """
    if key == "port":
        if not value.isdigit() or not 0 <= int(value) < 65536:
            raise ValueError(f"port={value!r} is not a TCP port (0 to 65535)")
        return int(value)
    if key == "leaseTTL":
        if not value.isdigit():
            raise ValueError(f"leaseTTL={value!r} is not a whole number of seconds")
        return int(value)
    if key == "insecure":
        if value not in ("yes", "no", "true", "false", "1", "0"):
            raise ValueError(f"insecure={value!r}: use insecure=yes or insecure=no")
        return value in ("yes", "true", "1")
    if not value:
        raise ValueError(f"{key}= is empty")
    return value


__all__ = ["CLUSTER_OPTIONS", "parseClusterOption"]
