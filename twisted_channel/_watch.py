"""
Knowing the instant a new host appears, so that a client connects to it at
once instead of at its next backoff retry.

A host publishes its socket (or TCP port file) by renaming it into place
once it is listening, so the rename is the signal that a host is ready.  On
Linux, C{inotify} reports it; elsewhere, or if C{inotify} cannot be had (the
per-user limit of instances, say), clients simply rely on their backoff.

One C{inotify} descriptor serves every client of the process, and it is
used only with the reactor that is installed globally: test reactors never
get one.  Twisted's C{INotify} closes itself, every watch with it, when any
watched directory is removed; the watcher then makes a new one and watches
again the directories its clients still wait on.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()

Callback = Callable[[], None]


class _DirectoryWatcher:
    """
    Calls back when a name is renamed into (or created in) a directory.
    """

    def __init__(self, reactor: Any) -> None:
        from twisted.internet import inotify

        self._reactor = reactor
        self._inotify = inotify
        self._subscribers: dict[str, dict[str, set[Callback]]] = {}
        self._notifier = self._start()

    def _start(self) -> Any:
        """
        A new C{INotify}, reading, that tells this watcher when it closes.
        """
        notifier = _notifierClass()(self._reactor, self._closed)
        notifier.startReading()
        return notifier

    def _closed(self, notifier: object, reason: Failure) -> None:
        """
        C{notifier} closed.  If it is this watcher's and closed itself
        (C{loseConnection} after a watched directory was removed; not the
        reactor's shutdown, which loses every descriptor with
        C{ConnectionLost}), a new C{INotify} watches again each directory
        that still has subscribers.
        """
        if notifier is not self._notifier or not reason.check(ConnectionDone):
            return
        self._notifier = self._start()
        for directory in list(self._subscribers):
            try:
                self._watch(directory)
            except Exception as e:
                # Removed (the one whose removal closed the notifier, say):
                # its clients rely on retrying, and watch again when they
                # next wait.
                del self._subscribers[directory]
                _log.info(
                    "stopped watching {directory} for new hosts ({error})",
                    directory=directory,
                    error=e,
                )

    def _watch(self, directory: str) -> None:
        from twisted.python.filepath import FilePath

        inotify = self._inotify
        self._notifier.watch(
            FilePath(directory),
            mask=inotify.IN_MOVED_TO | inotify.IN_CREATE,
            callbacks=[self._changed],
        )

    def subscribe(self, path: str, callback: Callback) -> None:
        directory, name = os.path.split(path)
        names = self._subscribers.get(directory)
        if names is None:
            self._watch(directory)
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


@functools.cache
def _notifierClass() -> Any:
    """
    Twisted's C{INotify}, telling a callable when it closes (imported on
    first use: it exists only where C{inotify} does).
    """
    from twisted.internet import inotify

    class _Notifier(inotify.INotify):
        def __init__(
            self, reactor: object, closed: Callable[[object, Failure], None]
        ) -> None:
            super().__init__(reactor)  # type: ignore[no-untyped-call]
            self._closed = closed

        def connectionLost(self, reason: Failure) -> None:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
            self._closed(self, reason)

    return _Notifier


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
