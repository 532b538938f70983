"""
The transition tables of the client connection and the host port
(L{twisted_channel._states}), and their drawing in docs/design.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

from twisted_channel import _states
from twisted_channel._address import HOST, STANDBY

DESIGN = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "design.md")


@pytest.mark.parametrize("table", [_states.CONNECTION, _states.PORT])
def test_designDrawsEveryTransition(table: Mapping[tuple[str, str], str]) -> None:
    """
    docs/design.md lists each transition of each table as a table row
    C{| state | event | next state |}, and no other.
    """
    with open(DESIGN, encoding="utf-8") as f:
        design = f.read()
    for (state, event), after in table.items():
        assert f"| `{state}` | {event} | `{after}` |" in design


def test_connection() -> None:
    table = _states.CONNECTION
    state = _states.CONNECTING
    for event, expected in [
        (_states.WELCOMED, _states.CONNECTED),
        (_states.LINK_LOST, _states.CONNECTING),
        (_states.WELCOMED, _states.CONNECTED),
        (_states.FINISHED, _states.CLOSED),
    ]:
        state = table[state, event]
        assert state == expected


@pytest.mark.parametrize(
    "state, event",
    [
        (_states.CLOSED, _states.WELCOMED),
        (_states.CLOSED, _states.FINISHED),
        (_states.CONNECTED, _states.WELCOMED),
        (_states.CONNECTING, _states.LINK_LOST),
    ],
)
def test_connectionRefusesUndesignedChanges(state: str, event: str) -> None:
    with pytest.raises(KeyError):
        _states.CONNECTION[state, event]


def test_port() -> None:
    table = _states.PORT
    assert table[_states.STOPPED, _states.STARTED] == STANDBY
    assert table[STANDBY, _states.ELECTED] == HOST
    assert table[HOST, _states.WITHDRAWN] == _states.STOPPED
    assert table[STANDBY, _states.START_FAILED] == _states.STOPPED


@pytest.mark.parametrize(
    "state, event",
    [
        (HOST, _states.ELECTED),
        (_states.STOPPED, _states.ELECTED),
        (HOST, _states.STARTED),
        (STANDBY, _states.STARTED),
    ],
)
def test_portRefusesUndesignedChanges(state: str, event: str) -> None:
    with pytest.raises(KeyError):
        _states.PORT[state, event]
