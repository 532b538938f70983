"""
Asking the kernel to run a thread as soon as it is woken.

When a host is killed, its exit wakes the standby that wins the lock, then
frees the dead process's memory for milliseconds on the same CPU: with
Linux's EEVDF scheduler (6.6 and later) the woken thread may wait behind
that work for the rest of its time slice.  Since Linux 6.12 a thread may
ask for a shorter slice (C{sched_runtime} of C{sched_setattr(2)} under
C{SCHED_OTHER}, no privilege needed), and a woken thread with a shorter
slice than the running one runs at once.  The election thread asks for one:
it sleeps until it wins, and then has only a rename to do before it wakes
the reactor thread, so it takes almost nothing from anyone else; the slice
is long enough for that to be done in one.

Older kernels accept the request and ignore it; elsewhere nothing is asked.
"""

from __future__ import annotations

import ctypes
import platform
import struct
import sys

#: C{struct sched_attr} as far as C{sched_runtime} and the two fields after
#: it (C{SCHED_ATTR_SIZE_VER0}).
_SCHED_ATTR = struct.Struct("=IIQiIQQQ")
_SCHED_OTHER = 0

#: C{sched_setattr} and C{sched_getattr}, where glibc 2.36 has no wrapper
#: for them: x86-64's numbers, and the generic table's that arm64, RISC-V
#: and LoongArch use.
_SYSCALLS = {
    "x86_64": (314, 315),
    "aarch64": (274, 275),
    "arm64": (274, 275),
    "riscv64": (274, 275),
    "loongarch64": (274, 275),
}

#: The slice the election thread asks for, in nanoseconds: shorter than
#: the default (1.4 ms here, on Linux 6.18 with 2 CPUs; the kernel scales
#: it up with the CPUs from about 0.7 ms on one), so that the woken thread
#: still runs at once, and long enough for what it does once it wins (the
#: new record, the rename, waking the reactor: about 0.2 ms of CPU time,
#: its code cold) to fit in one slice.  With the shortest the kernel grants
#: (0.1 ms) it was preempted halfway, once at the median, and the rename
#: came 0.8 ms later on a loaded machine.
SHORT_SLICE = 400_000


def _syscalls() -> tuple[ctypes.CDLL, int, int] | None:
    if not sys.platform.startswith("linux"):
        return None
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return None
    try:
        library = ctypes.CDLL(None, use_errno=True)
        library.syscall.restype = ctypes.c_long
    except (OSError, AttributeError):
        return None
    return library, numbers[0], numbers[1]


def _attributes(threadId: int) -> tuple[int, ...] | None:
    """
    C{sched_getattr} of a thread, by its native id (0: the calling thread),
    as the fields of L{_SCHED_ATTR}; None where it cannot be read.
    """
    calls = _syscalls()
    if calls is None:
        return None
    library, _, getNumber = calls
    attributes = ctypes.create_string_buffer(_SCHED_ATTR.size)
    if library.syscall(
        ctypes.c_long(getNumber),
        ctypes.c_int(threadId),
        attributes,
        ctypes.c_uint(_SCHED_ATTR.size),
        ctypes.c_uint(0),
    ):
        return None
    return _SCHED_ATTR.unpack(attributes.raw)


def sliceOf(threadId: int = 0) -> int | None:
    """
    The C{sched_runtime} of a thread, by its native id (0: the calling
    thread): its slice under C{SCHED_OTHER} on Linux 6.12 and later; None
    where it cannot be read.
    """
    attributes = _attributes(threadId)
    return None if attributes is None else attributes[5]


def askForShortSlice(nanoseconds: int = SHORT_SLICE) -> bool:
    """
    Ask for a time slice of C{nanoseconds} for the calling thread, keeping
    its policy and nice value.  Only a C{SCHED_OTHER} thread asks: one the
    application gave another policy is left as it is.

    @return: whether the kernel took the request (one that ignores it
        takes it too).  It never raises: the thread that asks is the one
        that waits for the lock, and nothing may keep it from waiting.
    """
    try:
        return _askForShortSlice(nanoseconds)
    except Exception:
        return False


def _askForShortSlice(nanoseconds: int) -> bool:
    calls = _syscalls()
    attributes = _attributes(0)
    if calls is None or attributes is None:
        return False
    library, setNumber, _ = calls
    _, policy, _, nice, priority, _, _, _ = attributes
    if policy != _SCHED_OTHER:
        return False
    request = ctypes.create_string_buffer(
        _SCHED_ATTR.pack(
            _SCHED_ATTR.size, policy, 0, nice, priority, nanoseconds, 0, 0
        ),
        _SCHED_ATTR.size,
    )
    failed: int = library.syscall(
        ctypes.c_long(setNumber), ctypes.c_int(0), request, ctypes.c_uint(0)
    )
    return failed == 0
