"""
Shared fixtures.  Nothing here imports the reactor at module level, so that
pytest-twisted's --reactor option is applied first.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture
def channelDirectory() -> Iterator[str]:
    """
    A private runtime directory (mode 0700) for one test; short, because a
    Unix socket path holds at most 107 bytes.
    """
    directory = tempfile.mkdtemp(prefix="tc-", dir="/tmp")
    os.chmod(directory, 0o700)
    yield directory
    for name in os.listdir(directory):
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass
    try:
        os.rmdir(directory)
    except OSError:
        pass


@pytest.fixture(autouse=True)
def _privateRuntimeDirectory(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """
    Point the default runtime directory away from the user's real one, so no
    test touches it even by mistake.
    """
    runtime = tmp_path_factory.mktemp("xdg")
    os.chmod(runtime, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))


@pytest.fixture(scope="module")
def etcdServer() -> Iterator[object]:
    """
    A real single-member etcd on loopback, shared by a module's tests (each
    uses keys of its own), stopped and reaped afterwards.
    """
    from .etcd import runningCluster

    yield from runningCluster(1)


@pytest.fixture
def etcdTrio() -> Iterator[object]:
    """
    A real three-member etcd on loopback for one test, which may kill
    members; stopped and reaped afterwards.
    """
    from .etcd import runningCluster

    yield from runningCluster(3)
