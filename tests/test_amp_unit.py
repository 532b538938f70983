"""
L{twisted_channel.amp.ChannelAMP} on a client transport driven by hand
(string links, a fake clock): which calls it sends again after a host is
lost, and where the answers to the host's own calls go.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from twisted.protocols import amp
from twisted.python.failure import Failure

from twisted_channel import _client, _wire
from twisted_channel._client import ChannelClientTransport, _ClientLink
from twisted_channel._credentials import PeerCredentials
from twisted_channel.amp import ChannelAMP

from ._support.clientlinks import (
    HOST_PID,
    LinkTransport,
    ack,
    connected,
    loseLink,
    makeClient,
    openLink,
    sent,
)

OTHER_HOST_PID = HOST_PID + 1


@pytest.fixture(autouse=True)
def noPeerCredentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        _client, "peerCredentials", lambda handle: PeerCredentials(None, None)
    )


class Double(amp.Command):
    arguments = [(b"n", amp.Integer())]
    response = [(b"doubled", amp.Integer())]


class Client(ChannelAMP):
    @Double.responder
    def double(self, n: int) -> dict[str, int]:
        return {"doubled": n * 2}


def hostLink(
    client: ChannelClientTransport, pid: int, resumeAfter: int
) -> tuple[_ClientLink, LinkTransport]:
    link, transport = openLink(client)
    link.dataReceived(_wire.encodeWelcome(_wire.Welcome(resumeAfter, pid, 1000)))
    return link, transport


def boxes(transport: LinkTransport) -> list[dict[bytes, bytes]]:
    """
    The AMP boxes in the messages written to C{transport} (with an eager
    hello's), since it was last cleared.
    """
    parsed = []
    for data in [body for kind, body in sent(transport) if kind == _wire.DATA]:
        parsed.extend(amp.parse(io.BytesIO(data)))
    return [dict(box) for box in parsed]


def answer(link: _ClientLink, tag: bytes, doubled: int) -> None:
    box = amp.AmpBox(_answer=tag, doubled=b"%d" % doubled)
    link.dataReceived(_wire.encodeFrame(_wire.DATA, box.serialize()))


def call(protocol: ChannelAMP, n: int) -> list[Any]:
    results: list[Any] = []
    protocol.callRemote(Double, n=n).addBoth(results.append)
    return results


def test_acknowledgedUnansweredCallGoesToTheNextHost() -> None:
    """
    A call the lost host acknowledged but did not answer is sent again to
    the next host and answered there; one it did not acknowledge is sent
    again by the channel itself, once.
    """
    client, protocol, reactor = makeClient(protocol=Client())
    link, transport = connected(client)
    taken = call(protocol, 1)
    notTaken = call(protocol, 2)
    client.flush()
    assert [box[b"_ask"] for box in boxes(transport)] == [b"1", b"2"]
    assert (client.writtenThrough, client.acknowledgedThrough) == (2, 0)
    ack(link, 1)
    assert client.acknowledgedThrough == 1
    loseLink(link)
    second, secondTransport = hostLink(client, OTHER_HOST_PID, 1)
    client.flush()
    sentAgain = boxes(secondTransport)
    # The channel's own resend (message 2, not acknowledged), then the
    # acknowledged one the protocol sends again.
    assert [box[b"_ask"] for box in sentAgain] == [b"2", b"1"]
    assert [box[b"n"] for box in sentAgain] == [b"2", b"1"]
    answer(second, b"1", 2)
    answer(second, b"2", 4)
    assert taken == [{"doubled": 2}]
    assert notTaken == [{"doubled": 4}]


def test_answeredCallsAreNotSentAgain() -> None:
    client, protocol, reactor = makeClient(protocol=Client())
    link, transport = connected(client)
    results = call(protocol, 5)
    client.flush()
    ack(link, 1)
    answer(link, b"1", 10)
    assert results == [{"doubled": 10}]
    loseLink(link)
    second, secondTransport = hostLink(client, OTHER_HOST_PID, 1)
    client.flush()
    assert boxes(secondTransport) == []


def test_resentCallIsTrackedAcrossASecondFailover() -> None:
    """
    A call sent again and lost again before its new host acknowledged it is
    sent once more, by the channel, not twice.
    """
    client, protocol, reactor = makeClient(protocol=Client())
    link, transport = connected(client)
    results = call(protocol, 3)
    client.flush()
    ack(link, 1)
    loseLink(link)
    second, secondTransport = hostLink(client, OTHER_HOST_PID, 1)
    client.flush()
    assert len(boxes(secondTransport)) == 1
    loseLink(second)
    third, thirdTransport = hostLink(client, OTHER_HOST_PID + 1, 1)
    client.flush()
    assert [box[b"n"] for box in boxes(thirdTransport)] == [b"3"]
    answer(third, b"1", 6)
    assert results == [{"doubled": 6}]


def test_sameHostAgainFailsTheCallInsteadOfRunningItTwice() -> None:
    client, protocol, reactor = makeClient(protocol=Client())
    link, transport = connected(client)
    results = call(protocol, 7)
    client.flush()
    ack(link, 1)
    loseLink(link)
    second, secondTransport = hostLink(client, HOST_PID, 1)
    client.flush()
    assert boxes(secondTransport) == []
    [failure] = results
    assert isinstance(failure, Failure)
    assert failure.check(amp.UnknownRemoteError)
    assert "would run it twice" in str(failure.value)


def test_hostCallsAreAnsweredOnTheirOwnLink() -> None:
    """
    The host's own calls are answered with their tag; a question from a
    link that is gone is not answered on the next one, whose host may use
    the same tag.
    """
    client, protocol, reactor = makeClient(protocol=Client())
    link, transport = connected(client)
    question = amp.AmpBox(_ask=b"1", _command=b"Double", n=b"4")
    link.dataReceived(_wire.encodeFrame(_wire.DATA, question.serialize()))
    client.flush()
    assert boxes(transport) == [{b"_answer": b"1", b"doubled": b"8"}]


def test_answerToAQuestionOfALostLinkIsDropped() -> None:
    class Slow(ChannelAMP):
        pending: list[Any] = []

        @Double.responder
        def double(self, n: int) -> Any:
            from twisted.internet.defer import Deferred

            later: Deferred[dict[str, int]] = Deferred()
            self.pending.append((later, n))
            return later

    client, protocol, reactor = makeClient(protocol=Slow())
    link, transport = connected(client)
    question = amp.AmpBox(_ask=b"1", _command=b"Double", n=b"4")
    link.dataReceived(_wire.encodeFrame(_wire.DATA, question.serialize()))
    loseLink(link)
    second, secondTransport = hostLink(client, OTHER_HOST_PID, 0)
    link2question = amp.AmpBox(_ask=b"1", _command=b"Double", n=b"5")
    second.dataReceived(_wire.encodeFrame(_wire.DATA, link2question.serialize()))
    client.flush()
    secondTransport.clear()
    (old, _), (new, _) = Slow.pending
    old.callback({"doubled": 8})
    new.callback({"doubled": 10})
    client.flush()
    assert boxes(secondTransport) == [{b"_answer": b"1", b"doubled": b"10"}]


def test_answerToNoCallIsDropped() -> None:
    client, protocol, reactor = makeClient(protocol=Client())
    link, transport = connected(client)
    answer(link, b"99", 1)
    assert client.state == "connected"
    results = call(protocol, 1)
    client.flush()
    answer(link, b"1", 2)
    assert results == [{"doubled": 2}]
