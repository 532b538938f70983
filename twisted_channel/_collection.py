"""
The collections of the cyclic garbage collector that the channel runs
itself, at moments when nothing waits on the process, so that the ones the
collector would run on its own do not fall in a takeover.

CPython (up to 3.13; 3.14's collector is incremental) collects its oldest
generation once it has collected the middle one 10 times since the last
full collection, provided that the objects promoted since then are more
than a quarter of those that survived it.  A process that has never run a
full collection has no such survivors: its first full collection comes
with its eleventh collection of the middle generation, whatever its heap.
A channel process's imports (Twisted, and across machines treq,
pyOpenSSL and cryptography: about 50,000 objects) use about ten of those,
so that first full collection, 13 to 25 ms on a 2-core VM here, fell
seconds after start-up at whichever allocation came next: in the
repeated-kill test across machines, within the takeover at the 20th to
24th kill of every run.  After it, the next full collection waits for the
promoted objects to reach a quarter of that heap.
"""

from __future__ import annotations

import gc

#: The oldest generation of CPython's collector.
_OLDEST = 2


def collectFirstFull() -> bool:
    """
    Run this process's first full collection now, if it has not run one
    yet and the application has not disabled automatic collection (then
    none falls due).

    @return: whether it ran one.
    """
    if not gc.isenabled() or gc.get_stats()[_OLDEST]["collections"]:
        return False
    gc.collect()
    return True


def collectBeforeWaiting() -> None:
    """
    Run the collection that would otherwise fall due during a takeover: the
    process's first full collection if it has not run one, else the young
    generations' (one falls due every 700 allocations).  Nothing when the
    application disabled automatic collection.
    """
    if gc.isenabled() and not collectFirstFull():
        gc.collect(1)
