"""
L{ChannelAMP}: Twisted's Asynchronous Messaging Protocol for a channel
whose host may die between a call and its answer.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from ._interfaces import IChannelLinkObserver

__all__ = ["ChannelAMP"]

_log = Logger()

#: The error code of a call whose answer was lost with its link when the
#: channel came back to the same host, which had run it already.  No
#: command declares it, so the caller sees an L{amp.UnknownRemoteError}.
_ANSWER_LOST = b"CHANNEL_ANSWER_LOST"

_ASK = amp.ASK
_ANSWER = amp.ANSWER
_ERROR = amp.ERROR


@implementer(IChannelLinkObserver)
class ChannelAMP(amp.AMP):
    """
    An L{amp.AMP} for the client side of a C{channel:} connection (with
    C{failover=resend}, the default), whose calls survive the death of the
    host that was to answer them.

    A call's message that no host acknowledged is sent again by the channel
    itself.  A call whose message the host acknowledged (its responder ran,
    or started) but did not answer before it died is sent again by this
    protocol, to the next host, and answered there.  So no call hangs and
    none fails because of a failover, and the promise for executing a call
    is:

     - B{exactly once within one host's life}: a host never runs a call
       twice;
     - B{at least once across a host's death}: a call the dead host had
       run, or begun, without its answer arriving, runs again on the next
       host (make such commands idempotent, or recognise them).

    If the channel's link drops but comes back to the same host (one that
    stalled, then thawed), a call that host had taken but not answered is
    not sent again, which would run it twice there: it fails with
    L{amp.UnknownRemoteError}, saying so.

    Responders on the host's side are ordinary AMP responders, on any
    L{amp.AMP}.  Calls the host makes to this client are answered to the
    host that asked, on the link it asked on: an answer whose link has gone
    is dropped (that host is dead, or has already failed the call, as
    L{amp.AMP} does for every outstanding call when its connection ends),
    never delivered to another host, whose own calls may carry the same tag.

    It works on any transport; only on a channel's client transport does it
    track acknowledgements and failovers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        # Calls made and not answered: tag -> (box, sequence number of the
        # message that carried it last).
        self._unanswered: dict[bytes, tuple[amp.AmpBox, int]] = {}
        # Calls the last host acknowledged without answering, when its link
        # was lost.
        self._takenByLostHost: list[bytes] = []
        self._hostPid: int | None = None
        self._lostHostPid: int | None = None
        # Each link is a generation; the host's questions are answered only
        # on the generation they came on.
        self._generation = 0

    # IBoxSender

    def sendBox(self, box: amp.AmpBox) -> None:
        """
        Send C{box}: remember a call until it is answered; send an answer
        only on the link its question came on.
        """
        if _ANSWER in box or _ERROR in box:
            key = _ANSWER if _ANSWER in box else _ERROR
            generation, _, tag = box[key].partition(b":")
            if int(generation) != self._generation:
                _log.info(
                    "the link that asked {tag!r} is gone; its answer is dropped",
                    tag=tag,
                )
                return
            box[key] = tag
        super().sendBox(box)  # type: ignore[no-untyped-call]
        if _ASK in box:
            self._unanswered[box[_ASK]] = (box, self._writtenThrough())

    def _writtenThrough(self) -> int:
        return getattr(self.transport, "writtenThrough", 0)

    # IBoxReceiver

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        """
        Forget a call once answered (an answer to no call of ours is
        dropped, not taken for a broken peer); tag a question with the link
        it came on.
        """
        tag = box.get(_ANSWER, box.get(_ERROR))
        if tag is not None:
            if self._unanswered.pop(tag, None) is None:
                _log.warn("dropped an answer to no outstanding call: {tag!r}", tag=tag)
                return
        elif _ASK in box:
            box[_ASK] = b"%d:%s" % (self._generation, box[_ASK])
        super().ampBoxReceived(box)  # type: ignore[no-untyped-call]

    # IChannelLinkObserver

    def linkLost(self, reason: Failure) -> None:
        """
        Note which calls the lost host took without answering them.
        """
        self._generation += 1
        acknowledged = getattr(self.transport, "acknowledgedThrough", 0)
        self._takenByLostHost = [
            tag
            for tag, (_, sequence) in self._unanswered.items()
            if sequence <= acknowledged
        ]
        self._lostHostPid = self._hostPid

    def linkEstablished(self, host: Any) -> None:
        """
        Send again, to a new host, the calls the lost one took without
        answering; the channel itself sends those it did not take.
        """
        taken, self._takenByLostHost = self._takenByLostHost, []
        self._hostPid = host.pid
        sameHost = host.pid is not None and host.pid == self._lostHostPid
        for tag in taken:
            entry = self._unanswered.get(tag)
            if entry is None:
                continue
            box = entry[0]
            if sameHost:
                del self._unanswered[tag]
                error = amp.AmpBox()
                error[_ERROR] = tag
                error[amp.ERROR_CODE] = _ANSWER_LOST
                error[amp.ERROR_DESCRIPTION] = (
                    b"the link to the host that took this call was lost before "
                    b"its answer; the host is the same, and would run it twice"
                )
                super().ampBoxReceived(error)  # type: ignore[no-untyped-call]
            else:
                super().sendBox(box)  # type: ignore[no-untyped-call]
                self._unanswered[tag] = (box, self._writtenThrough())
