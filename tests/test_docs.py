"""
The documentation: it builds with Sphinx, warnings being errors, and it
keeps up with the code (every endpoint option, every command and option of
the command line, a docstring on every public name).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from zope.interface import implementedBy

import twisted_channel
import twisted_channel.amp
import twisted_channel.bus
import twisted_channel.testing
from twisted_channel._cli import buildParser
from twisted_channel._parser import OPTIONS

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = [
    "index",
    "quickstart",
    "endpoint",
    "delivery",
    "bus",
    "cli",
    "twistd",
    "testing",
    "troubleshooting",
    "design",
    "comparison",
    "api",
]


def missing(*modules: str) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


@pytest.mark.timeout(180)
@pytest.mark.skipif(
    bool(missing("sphinx", "myst_parser")),
    reason="Sphinx or myst-parser is not installed (pip install '.[docs]')",
)
def test_sphinxBuildsWithoutWarnings() -> None:
    with tempfile.TemporaryDirectory(prefix="tc-docs-") as output:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sphinx",
                "-W",
                "-E",
                "-q",
                "-b",
                "html",
                str(DOCS),
                output,
            ],
            capture_output=True,
            text=True,
            timeout=170,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        for page in PAGES:
            assert os.path.exists(os.path.join(output, f"{page}.html")), page
        api = Path(output, "api.html").read_text()
        for name in [*twisted_channel.__all__, *twisted_channel.bus.__all__]:
            assert name in api, f"{name} is not in the API reference"
        testing = Path(output, "testing.html").read_text()
        for name in twisted_channel.testing.__all__:
            assert name in testing, f"{name} is not in docs/testing.md"
        # The epytext of the docstrings was turned into markup.
        assert "@param" not in api and "C{" not in api and "L{" not in api


def test_everyEndpointOptionIsDocumented() -> None:
    text = (DOCS / "endpoint.md").read_text()
    for option in OPTIONS:
        assert f"`{option}=`" in text, f"{option}= is not in docs/endpoint.md"


def test_everyCommandAndOptionIsDocumented() -> None:
    text = (DOCS / "cli.md").read_text()
    parser = buildParser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    for name, command in commands.choices.items():  # type: ignore[union-attr]
        assert f"## {name}" in text, f"{name} has no section in docs/cli.md"
        for action in command._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in text, f"{name} {option} is not in docs/cli.md"


def _documented(cls: type, attribute: str) -> bool:
    """
    Whether C{cls.attribute} has a docstring, its own or that of what it
    overrides or implements.
    """
    value = inspect.getattr_static(cls, attribute)
    if isinstance(value, property):
        return bool(value.__doc__)
    if inspect.getdoc(getattr(cls, attribute)):
        return True
    for interface in implementedBy(cls).flattened():
        if attribute in interface.names() and interface[attribute].getDoc():
            return True
    return False


@pytest.mark.parametrize(
    "module",
    [
        twisted_channel,
        twisted_channel.amp,
        twisted_channel.bus,
        twisted_channel.testing,
    ],
)
def test_everyPublicNameHasADocstring(module: object) -> None:
    assert inspect.getdoc(module)
    undocumented = []
    for name in module.__all__:  # type: ignore[attr-defined]
        value = getattr(module, name)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        if not inspect.getdoc(value):
            undocumented.append(name)
        if inspect.isclass(value) and value.__module__.startswith(
            ("twisted_channel.amp", "twisted_channel.bus", "twisted_channel.testing")
        ):
            for attribute, member in vars(value).items():
                if attribute.startswith("_"):
                    continue
                if inspect.isfunction(member) or isinstance(member, property):
                    if not _documented(value, attribute):
                        undocumented.append(f"{name}.{attribute}")
    assert undocumented == []


def test_supportedVersionsAreWhatCIRuns() -> None:
    """
    The Pythons and the oldest Twisted that the package and its docs claim
    are those .ci/run runs: its oldest Twisted is read from setup.py, and
    it makes a virtualenv of each claimed Python that the main run's
    python3 does not cover.
    """
    root = DOCS.parent
    setup = (root / "setup.py").read_text()
    ci = (root / ".ci" / "run").read_text()
    readme = " ".join((root / "README.md").read_text().split())
    [oldest] = [
        line.split(">=")[1].rstrip('"')
        for line in setup.splitlines()
        if line.startswith('TWISTED = "twisted>=')
    ]
    claimed = sorted(
        line.split("::")[-1].strip().rstrip('",')
        for line in setup.splitlines()
        if "Programming Language :: Python :: 3." in line
    )
    assert claimed == ["3.10", "3.11", "3.12", "3.13"]
    assert 'python_requires=">=3.10"' in setup
    assert 'freshVenv "$(interpreter 3.10)" py310' in ci
    assert "for version in 3.11 3.12 3.13; do" in ci
    assert f"Twisted the package claims ({oldest})" in readme
    assert f"Python 3.10 to 3.13 and Twisted {oldest} or later" in readme
