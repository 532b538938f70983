"""
twisted-channel certs: a private authority and per-machine certificates
that load as a machine's TLS credentials; mistakes exit with status 2 and
write nothing.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from twisted_channel._cli import main
from twisted_channel._tls import loadCredentials


def test_certs(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    directory = str(tmp_path / "certs")
    assert main(["certs", directory, "--hosts", "a, b,10.0.0.7"]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(os.path.basename(p) for p in printed) == sorted(
        ["ca.pem", "ca.key"]
        + [f"{h}{s}" for h in ("a", "b", "10.0.0.7") for s in (".pem", ".key")]
    )
    credentials = loadCredentials(
        os.path.join(directory, "b.pem"),
        os.path.join(directory, "b.key"),
        os.path.join(directory, "ca.pem"),
    )
    assert credentials.identity == "b"
    before = sorted(os.listdir(directory))
    assert main(["certs", directory, "--hosts", "c,a"]) == 2
    error = capsys.readouterr().err
    assert "a.pem exists; nothing was written" in error
    assert sorted(os.listdir(directory)) == before
    assert main(["certs", str(tmp_path / "x"), "--hosts", "bad host"]) == 2
    assert "not a host name" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
