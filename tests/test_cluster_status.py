"""
twisted-channel status NAME --coordinator etcd://...: the host across
machines as etcd names it (its machine, address, pid and term) and the
standbys (the other machines campaigning), with a real etcd; no host,
garbage in the key, and etcd unreachable say so with status 1, a bad
coordinator with status 2.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request

import pytest

from twisted_channel._campaign import HostRecord

from .etcd import EtcdCluster, freePorts

pytestmark = pytest.mark.timeout(60)


def _status(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twisted_channel", "status", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _put(cluster: EtcdCluster, key: bytes, value: bytes) -> int:
    body = json.dumps(
        {
            "key": base64.b64encode(key).decode(),
            "value": base64.b64encode(value).decode(),
        }
    ).encode()
    request = urllib.request.Request(
        cluster.members[0].clientURL + "/v3/kv/put", data=body, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(json.loads(response.read())["header"]["revision"])


def test_statusAcrossMachines(etcdServer: EtcdCluster) -> None:
    """
    No key: not hosted (1); a host record: its pid, machine, address and
    term, as text and JSON (0); garbage in the key: not hosted, said (1).
    """
    coordinator = etcdServer.coordinator
    missing = _status("nobody", "--coordinator", coordinator)
    assert missing.returncode == 1
    assert missing.stdout.strip() == "channel nobody: not hosted"
    term = _put(
        etcdServer,
        b"/twisted-channel/seen/host",
        HostRecord("10.0.0.8:4433", "a", 1234).encode(),
    )
    hosted = _status("seen", "--coordinator", coordinator)
    assert hosted.returncode == 0, hosted.stderr
    assert hosted.stdout.strip() == (
        f"channel seen: hosted by pid 1234 on machine a at 10.0.0.8:4433, term {term}"
    )
    answer = json.loads(_status("seen", "--coordinator", coordinator, "--json").stdout)
    assert answer == {
        "name": "seen",
        "coordinator": coordinator,
        "hosted": True,
        "term": term,
        "identity": "a",
        "address": "10.0.0.8:4433",
        "pid": 1234,
        "standbys": [],
    }
    _put(etcdServer, b"/twisted-channel/garbled/host", b"\x00garbage")
    garbled = _status("garbled", "--coordinator", coordinator)
    assert garbled.returncode == 1
    assert "holds no host record" in garbled.stdout


def test_statusStandbys(etcdServer: EtcdCluster) -> None:
    """
    The machines campaigning, as their candidate keys say, besides the host
    (whose own machine's key is not a standby); a candidate key holding
    garbage is left out and counted; they are listed while nobody hosts
    too.
    """
    coordinator = etcdServer.coordinator
    prefix = b"/twisted-channel/many/candidates/"
    _put(etcdServer, prefix + b"a", HostRecord("10.0.0.8:4433", "a", 1).encode())
    _put(etcdServer, prefix + b"b", HostRecord("10.0.0.9:4433", "b", 2).encode())
    _put(etcdServer, prefix + b"c", HostRecord("10.0.0.10:4433", "c", 3).encode())
    _put(etcdServer, prefix + b"d", b"not a record")
    # Another channel's, whose name begins alike, is not read.
    _put(
        etcdServer,
        b"/twisted-channel/many-more/candidates/e",
        HostRecord("10.0.0.11:4433", "e", 4).encode(),
    )
    unhosted = _status("many", "--coordinator", coordinator)
    assert unhosted.returncode == 1
    assert unhosted.stdout.splitlines() == [
        "channel many: not hosted",
        "  standby: machine a, pid 1 at 10.0.0.8:4433",
        "  standby: machine b, pid 2 at 10.0.0.9:4433",
        "  standby: machine c, pid 3 at 10.0.0.10:4433",
        "  (1 candidate key(s) holding no record left out)",
    ]
    term = _put(
        etcdServer,
        b"/twisted-channel/many/host",
        HostRecord("10.0.0.8:4433", "a", 1).encode(),
    )
    hosted = _status("many", "--coordinator", coordinator)
    assert hosted.returncode == 0, hosted.stderr
    assert hosted.stdout.splitlines()[:3] == [
        f"channel many: hosted by pid 1 on machine a at 10.0.0.8:4433, term {term}",
        "  standby: machine b, pid 2 at 10.0.0.9:4433",
        "  standby: machine c, pid 3 at 10.0.0.10:4433",
    ]
    answer = json.loads(_status("many", "--coordinator", coordinator, "--json").stdout)
    assert answer["standbys"] == [
        {"identity": "b", "address": "10.0.0.9:4433", "pid": 2},
        {"identity": "c", "address": "10.0.0.10:4433", "pid": 3},
    ]
    assert answer["unreadableStandbys"] == 1


def test_statusMistakes() -> None:
    """
    etcd unreachable: 1 with an error line; a bad coordinator: 2.
    """
    [port] = freePorts(1)
    away = _status(
        "jobs", "--coordinator", f"etcd://127.0.0.1:{port}", "--timeout", "1"
    )
    assert away.returncode == 1
    assert "no etcd member answered" in away.stderr
    wrong = _status("jobs", "--coordinator", "http://x:1")
    assert wrong.returncode == 2
    assert "use etcd://" in wrong.stderr
