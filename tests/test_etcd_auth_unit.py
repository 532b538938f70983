"""
The etcd client's token handling against a scripted gateway (a real HTTP
server on loopback answering as etcd does), to pin down what a real etcd
cannot be made to do on cue: the token goes in the C{Authorization}
header and never with C{/v3/auth/authenticate}; a refused token is renewed
once and the request retried; refused again, the request fails; a refusal
that is not about the token (permission denied) is not renewed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from twisted_channel._etcd import EtcdClient, EtcdError

pytestmark = pytest.mark.timeout(30)

HEADER = {"header": {"revision": "7"}}
INVALID_TOKEN = (
    401,
    {"error": "x", "code": 16, "message": "etcdserver: invalid auth token"},
)
DENIED = (403, {"error": "x", "code": 7, "message": "etcdserver: permission denied"})


class ScriptedGateway(Resource):
    """
    Answers each C{/v3/kv/range} with the next of C{answers} (or a read of
    nothing), each authentication with a new token; records every request's
    path, C{Authorization} header and body.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self.requests: list[tuple[str, str | None, dict[str, Any]]] = []
        self.tokens = 0

    def render_POST(self, request: Any) -> bytes:
        path = request.path.decode()
        token = request.getHeader("authorization")
        body = json.loads(request.content.read())
        self.requests.append((path, token, body))
        if path == "/v3/auth/authenticate":
            self.tokens += 1
            answer: tuple[int, dict[str, Any]] = (
                200,
                dict(HEADER, token=f"token-{self.tokens}"),
            )
        elif self.answers:
            answer = self.answers.pop(0)
        else:
            answer = (200, HEADER)
        request.setResponseCode(answer[0])
        return json.dumps(answer[1]).encode()


@pytest.fixture
def gateway() -> Iterator[tuple[ScriptedGateway, int]]:
    resource = ScriptedGateway()
    port: Any = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        yield resource, port.getHost().port
    finally:
        port.stopListening()


async def _get(
    port: int, script: list[tuple[int, dict[str, Any]]], gateway: ScriptedGateway
) -> Any:
    gateway.answers = script
    client = EtcdClient(
        reactor, f"etcd://127.0.0.1:{port}", timeout=5, user="worker", password="pw"
    )
    try:
        return await client.get(b"/k")
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_tokenSent(gateway: tuple[ScriptedGateway, int]) -> None:
    """
    The client authenticates first (no token sent), then sends the token
    with the request; the next request reuses it.
    """
    resource, port = gateway
    client = EtcdClient(
        reactor, f"etcd://127.0.0.1:{port}", timeout=5, user="worker", password="pw"
    )
    try:
        await client.get(b"/a")
        await client.get(b"/b")
    finally:
        await client.close()
    assert [(path, token) for path, token, _ in resource.requests] == [
        ("/v3/auth/authenticate", None),
        ("/v3/kv/range", "token-1"),
        ("/v3/kv/range", "token-1"),
    ]
    assert resource.requests[0][2] == {"name": "worker", "password": "pw"}


@pytest_twisted.ensureDeferred
async def test_renewedOnce(gateway: tuple[ScriptedGateway, int]) -> None:
    """
    A refused token is renewed once and the request retried with the new
    one.
    """
    resource, port = gateway
    found, revision = await _get(port, [INVALID_TOKEN], resource)
    assert (found, revision) == (None, 7)
    assert [(path, token) for path, token, _ in resource.requests] == [
        ("/v3/auth/authenticate", None),
        ("/v3/kv/range", "token-1"),
        ("/v3/auth/authenticate", None),
        ("/v3/kv/range", "token-2"),
    ]


@pytest_twisted.ensureDeferred
async def test_refusedTwice(gateway: tuple[ScriptedGateway, int]) -> None:
    """
    A token refused again right after renewing fails the request: no loop.
    """
    resource, port = gateway
    with pytest.raises(EtcdError, match="invalid auth token"):
        await _get(port, [INVALID_TOKEN, INVALID_TOKEN], resource)
    assert resource.tokens == 2 and len(resource.requests) == 4


@pytest_twisted.ensureDeferred
async def test_deniedNotRenewed(gateway: tuple[ScriptedGateway, int]) -> None:
    """
    Permission denied is the user's role, not its token: no renewal.
    """
    resource, port = gateway
    with pytest.raises(EtcdError, match="permission denied"):
        await _get(port, [DENIED], resource)
    assert resource.tokens == 1 and len(resource.requests) == 2


def test_userNeedsPassword() -> None:
    """
    A user without a password, or a password without a user: ValueError.
    """
    with pytest.raises(ValueError, match="needs a password"):
        EtcdClient(reactor, "etcd://127.0.0.1:1", user="worker")
    with pytest.raises(ValueError, match="needs a password"):
        EtcdClient(reactor, "etcd://127.0.0.1:1", password="pw")
