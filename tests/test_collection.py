"""
The collections the channel runs itself (L{twisted_channel._collection}):
a process's first full collection, once, and the young generations'
collection afterwards; nothing while the application has disabled
automatic collection.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from twisted_channel._collection import collectBeforeWaiting, collectFirstFull


def _collections() -> list[int]:
    return [generation["collections"] for generation in gc.get_stats()]


@pytest.fixture
def collectorEnabled() -> Iterator[None]:
    """
    Automatic collection on during the test, and as it was after it.
    """
    enabled = gc.isenabled()
    gc.enable()
    try:
        yield
    finally:
        if not enabled:
            gc.disable()


def test_firstFullCollectionInAFreshProcess() -> None:
    """
    A process that has run no full collection runs one, once; after it,
    L{collectBeforeWaiting} collects only the young generations.
    """
    program = (
        "import gc, json\n"
        "from twisted_channel._collection import collectBeforeWaiting\n"
        "from twisted_channel._collection import collectFirstFull\n"
        "def full(): return gc.get_stats()[2]['collections']\n"
        "def middle(): return gc.get_stats()[1]['collections']\n"
        "seen = [full()]\n"
        "seen.append(collectFirstFull())\n"
        "seen.append(full())\n"
        "seen.append(collectFirstFull())\n"
        "seen.append(full())\n"
        "before = middle()\n"
        "collectBeforeWaiting()\n"
        "seen += [full(), middle() - before]\n"
        "print(json.dumps(seen))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == [0, True, 1, False, 1, 1, 1]


def test_beforeWaitingInAFreshProcess() -> None:
    """
    L{collectBeforeWaiting} in a process that has run no full collection
    runs that one.
    """
    program = (
        "import gc\n"
        "from twisted_channel._collection import collectBeforeWaiting\n"
        "before = gc.get_stats()[2]['collections']\n"
        "collectBeforeWaiting()\n"
        "print(before, gc.get_stats()[2]['collections'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, timeout=60, check=True
    )
    assert done.stdout.split() == [b"0", b"1"]


def test_youngGenerationsOnceFullRan(collectorEnabled: None) -> None:
    """
    Once the process has run a full collection, L{collectBeforeWaiting}
    collects the young generations only, and L{collectFirstFull} nothing.
    """
    gc.collect()
    before = _collections()
    assert collectFirstFull() is False
    collectBeforeWaiting()
    after = _collections()
    assert after[2] == before[2]
    assert after[1] == before[1] + 1


def test_nothingWhileDisabled(collectorEnabled: None) -> None:
    """
    An application that disabled automatic collection manages collections
    itself: neither runs any.
    """
    gc.disable()
    before = _collections()
    assert collectFirstFull() is False
    collectBeforeWaiting()
    assert _collections() == before
