"""
Knowing the instant a new host appears, so that a client connects to it at
once instead of at its next backoff retry.

A host publishes its socket (or TCP port file) by renaming it into place
once it is listening, so the rename is the signal that a host is ready.  On
Linux, C{inotify} reports it; elsewhere, or if C{inotify} cannot be had (the
per-user limit of instances, say), clients simply rely on their backoff.

One C{inotify} descriptor serves every client of the process, and it is
used only with the reactor that is installed globally: test reactors never
get one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

_log = Logger()

Callback = Callable[[], None]


class _DirectoryWatcher:
    """
    Calls back when a name is renamed into (or created in) a directory.
    """

    def __init__(self, reactor: Any) -> None:
        from twisted.internet import inotify

        self._inotify = inotify
        self._notifier = inotify.INotify(reactor)
        self._notifier.startReading()
        self._subscribers: dict[str, dict[str, set[Callback]]] = {}

    def subscribe(self, path: str, callback: Callback) -> None:
        directory, name = os.path.split(path)
        names = self._subscribers.get(directory)
        if names is None:
            from twisted.python.filepath import FilePath

            inotify = self._inotify
            self._notifier.watch(
                FilePath(directory),
                mask=inotify.IN_MOVED_TO | inotify.IN_CREATE,
                callbacks=[self._changed],
            )
            names = self._subscribers[directory] = {}
        names.setdefault(name, set()).add(callback)

    def unsubscribe(self, path: str, callback: Callback) -> None:
        directory, name = os.path.split(path)
        names = self._subscribers.get(directory)
        if names is None:
            return
        callbacks = names.get(name)
        if callbacks is not None:
            callbacks.discard(callback)
            if not callbacks:
                del names[name]
        if not names:
            del self._subscribers[directory]
            from twisted.python.filepath import FilePath

            try:
                self._notifier.ignore(FilePath(directory))
            except KeyError:
                pass

    def _changed(self, ignored: object, filepath: Any, mask: int) -> None:
        directory = os.fsdecode(filepath.dirname())
        name = os.fsdecode(filepath.basename())
        for callback in list(self._subscribers.get(directory, {}).get(name, ())):
            try:
                callback()
            except Exception:
                _log.failure("a host-appeared callback raised")


_watcher: _DirectoryWatcher | None = None
_unavailable = False


def watchFor(reactor: object, path: str, callback: Callback) -> bool:
    """
    Call C{callback} whenever a file is renamed to (or created at) C{path}.

    @return: whether the watch is in place; if not, nothing will call back.
    """
    global _watcher, _unavailable
    if _unavailable or not sys.platform.startswith("linux"):
        return False
    installed = sys.modules.get("twisted.internet.reactor")
    if reactor is not installed:
        return False
    try:
        if _watcher is None:
            _watcher = _DirectoryWatcher(reactor)
        _watcher.subscribe(path, callback)
    except Exception as e:
        _unavailable = True
        _log.info(
            "cannot watch for new hosts ({error}); clients rely on retrying",
            error=e,
        )
        return False
    return True


def stopWatching(path: str, callback: Callback) -> None:
    """
    Undo L{watchFor}.
    """
    if _watcher is not None:
        _watcher.unsubscribe(path, callback)
