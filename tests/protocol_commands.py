"""
The AMP commands the protocol tests and fault runs call.
"""

from __future__ import annotations

from twisted.protocols import amp


class Double(amp.Command):
    """
    Answered at once.
    """

    arguments = [(b"n", amp.Integer())]
    response = [(b"doubled", amp.Integer())]


class DoubleLater(amp.Command):
    """
    Answered through a Deferred, a few milliseconds later.
    """

    arguments = [(b"n", amp.Integer())]
    response = [(b"doubled", amp.Integer())]
