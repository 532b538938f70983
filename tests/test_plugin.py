"""
The C{channel:} endpoint plugin as a user meets it: found by Twisted's
plugin system from a fresh interpreter, harmless to import (it installs no
reactor), robust to a broken or unwritable C{dropin.cache}, and packaged
into the wheel as a drop-in without an C{__init__.py}.

Everything that depends on how the interpreter starts runs in a fresh
subprocess whose working directory is a temporary directory, so that the
checkout is on C{sys.path} only if the installation put it there.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.interfaces import (
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin, getPlugins
from zope.interface.verify import verifyObject

import twisted_channel

#: The checkout: the directory holding setup.py.
PROJECT = Path(__file__).resolve().parent.parent
#: The drop-in as it is in the checkout.
DROPIN = PROJECT / "twisted" / "plugins" / "twisted_channel_endpoints.py"
DROPIN_MODULE = "twisted.plugins.twisted_channel_endpoints"
#: Seconds any one child interpreter may take.
CHILD_TIMEOUT = 60
#: How to run twistd with this interpreter.  Not C{python -m
#: twisted.scripts.twistd}: that module has no C{__main__} block, so it
#: exits 0 having done nothing.  This is what the C{twistd} script runs.
TWISTD = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()",
]


def childEnvironment(pythonPath: str | None = None) -> dict[str, str]:
    """
    The environment of a child interpreter: this one's, without any
    C{PYTHONPATH} of the caller's (so only the installation decides what is
    importable), optionally with one of our own, and writing no bytecode.
    """
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if pythonPath is not None:
        env["PYTHONPATH"] = pythonPath
    return env


def runPython(
    script: str,
    *args: str,
    cwd: str | Path,
    pythonPath: str | None = None,
) -> Any:
    """
    Run C{script} with C{sys.executable -c} in C{cwd}; it must exit 0 and
    print one line of JSON last, which is returned decoded.
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=cwd,
        env=childEnvironment(pythonPath),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert result.returncode == 0, (
        f"child exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"child printed nothing; stderr:\n{result.stderr}"
    return json.loads(lines[-1])


@pytest.fixture
def scratch() -> Iterator[Path]:
    """
    A private temporary directory, short enough for socket paths, removed
    afterwards even if a test made parts of it read-only.
    """
    path = Path(tempfile.mkdtemp(prefix="tc-", dir="/tmp"))
    os.chmod(path, 0o700)
    yield path
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o700)
    shutil.rmtree(path, ignore_errors=True)


# Discovery from a fresh interpreter

FROM_STRING = """
    import json, sys
    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted_channel import ChannelEndpoint

    directory = sys.argv[1]
    server = serverFromString(reactor, "channel:jobs:dir=" + directory)
    client = clientFromString(reactor, "channel:jobs:dir=" + directory)
    print(json.dumps({
        "server": isinstance(server, ChannelEndpoint),
        "client": isinstance(client, ChannelEndpoint),
        "names": [server.name, client.name],
        "directories": [server.paths.directory, client.paths.directory],
        "cwd": __import__("os").getcwd(),
    }))
"""


def test_stringsFindThePluginInAFreshInterpreter(scratch: Path) -> None:
    """
    C{serverFromString} and C{clientFromString} in a fresh interpreter,
    started away from the checkout, turn C{channel:jobs:dir=D} into a
    L{ChannelEndpoint} for the channel C{jobs} in C{D}.
    """
    directory = str(scratch / "rt")
    work = scratch / "cwd"
    work.mkdir()
    report = runPython(FROM_STRING, directory, cwd=work)
    assert report["server"] is True
    assert report["client"] is True
    assert report["names"] == ["jobs", "jobs"]
    assert report["directories"] == [directory, directory]
    assert os.path.realpath(report["cwd"]) == os.path.realpath(work)


NO_REACTOR = """
    import json, sys
    import twisted.plugins.twisted_channel_endpoints as dropin
    afterImport = "twisted.internet.reactor" in sys.modules

    # Parsing a string with a stand-in reactor must not import one either.
    endpoint = dropin.channelEndpointParser.parseStreamServer(
        object(), "jobs", dir=sys.argv[1]
    )
    afterParse = "twisted.internet.reactor" in sys.modules
    print(json.dumps({
        "afterImport": afterImport,
        "afterParse": afterParse,
        "endpoint": type(endpoint).__name__,
    }))
"""


def test_importingTheDropinImportsNoReactor(scratch: Path) -> None:
    """
    Importing the drop-in, and parsing an endpoint string with its parser,
    leave C{twisted.internet.reactor} unimported, so the application still
    chooses its reactor.
    """
    report = runPython(NO_REACTOR, str(scratch / "rt"), cwd=scratch)
    assert report == {
        "afterImport": False,
        "afterParse": False,
        "endpoint": "ChannelEndpoint",
    }


ASYNCIO_AFTER_PLUGINS = """
    import json, sys
    # What twistd does before it honours --reactor: load every drop-in.
    from twisted.plugin import getPlugins
    from twisted.internet.interfaces import IStreamServerEndpointStringParser
    prefixes = [p.prefix for p in getPlugins(IStreamServerEndpointStringParser)]
    import twisted.plugins.twisted_channel_endpoints
    before = "twisted.internet.reactor" in sys.modules

    from twisted.internet import asyncioreactor
    asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    endpoint = serverFromString(reactor, "channel:jobs:dir=" + sys.argv[1])
    print(json.dumps({
        "prefixes": prefixes,
        "reactorBefore": before,
        "reactor": type(reactor).__name__,
        "endpoint": type(endpoint).__name__,
    }))
"""


def test_asyncioReactorInstallsAfterThePlugin(scratch: Path) -> None:
    """
    After every drop-in is loaded (as C{twistd} does before it honours
    C{--reactor}) and the channel's imported, the asyncio reactor can still
    be installed, and the channel endpoint then uses it.
    """
    report = runPython(ASYNCIO_AFTER_PLUGINS, str(scratch / "rt"), cwd=scratch)
    assert "channel" in report["prefixes"]
    assert report["reactorBefore"] is False
    assert report["reactor"] == "AsyncioSelectorReactor"
    assert report["endpoint"] == "ChannelEndpoint"


def test_twistdAcceptsAnotherReactor(scratch: Path) -> None:
    """
    C{twistd --reactor=asyncio --help} succeeds: twistd loads every drop-in
    while parsing its options, and ours must not have installed the default
    reactor by then.
    """
    result = subprocess.run(
        [*TWISTD, "--reactor=asyncio", "--help"],
        cwd=scratch,
        env=childEnvironment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--reactor=" in result.stdout
    assert "already installed" not in result.stdout + result.stderr


def test_getPluginsFindsTheParser() -> None:
    """
    C{getPlugins} finds one parser with the prefix C{channel}; it provides
    the real L{IPlugin} and both string parser interfaces.
    """
    servers = [
        p
        for p in getPlugins(IStreamServerEndpointStringParser)
        if p.prefix.lower() == "channel"
    ]
    clients = [
        p
        for p in getPlugins(IStreamClientEndpointStringParserWithReactor)
        if p.prefix.lower() == "channel"
    ]
    assert len(servers) == 1, servers
    assert len(clients) == 1, clients
    parser = servers[0]
    assert parser.prefix == "channel"
    assert IPlugin.providedBy(parser)
    assert verifyObject(IStreamServerEndpointStringParser, parser)
    assert verifyObject(IStreamClientEndpointStringParserWithReactor, parser)
    assert clients[0] is parser  # type: ignore[comparison-overlap]
    assert isinstance(
        clients[0].parseStreamClient(cast(Any, None), "jobs", dir="/tmp/tc-none"),
        twisted_channel.ChannelEndpoint,
    )


# dropin.cache robustness

FIND_IN_TEMP = """
    import json, os, sys
    tempPlugins = os.path.realpath(sys.argv[1])
    directory = sys.argv[2]

    import twisted.plugins
    # Twisted merges every twisted/plugins directory on sys.path.  Keep them
    # all except another copy of our drop-in (the installed one), so that the
    # copy under test is the one Twisted has to find and load.
    found = [os.path.realpath(p) for p in twisted.plugins.__path__]
    assert tempPlugins in found, (tempPlugins, found)
    twisted.plugins.__path__[:] = [
        p for p in twisted.plugins.__path__
        if os.path.realpath(p) == tempPlugins
        or not os.path.exists(os.path.join(p, "twisted_channel_endpoints.py"))
    ]

    events = []
    from twisted.logger import formatEvent, globalLogPublisher
    globalLogPublisher.addObserver(lambda event: events.append(formatEvent(event)))

    from twisted.internet import reactor
    from twisted.internet.endpoints import clientFromString
    from twisted_channel import ChannelEndpoint

    endpoint = clientFromString(reactor, "channel:jobs:dir=" + directory)
    dropin = sys.modules["twisted.plugins.twisted_channel_endpoints"]
    print(json.dumps({
        "channel": isinstance(endpoint, ChannelEndpoint),
        "name": endpoint.name,
        "dropin": os.path.realpath(dropin.__file__),
        "log": events,
    }))
"""


def makePluginRoot(scratch: Path) -> tuple[Path, Path]:
    """
    A temporary sys.path entry holding C{twisted/plugins/} (no
    C{__init__.py} anywhere) with a copy of the drop-in.

    @return: the sys.path entry and the plugins directory.
    """
    root = scratch / "site"
    plugins = root / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    shutil.copyfile(DROPIN, plugins / DROPIN.name)
    return root, plugins


def findFromTemp(scratch: Path, root: Path, plugins: Path) -> dict[str, Any]:
    """
    In a fresh interpreter with C{root} on C{PYTHONPATH}, resolve a
    C{channel:} client string; check that the copy in C{plugins} was used.
    """
    work = scratch / "cwd"
    work.mkdir(exist_ok=True)
    report: dict[str, Any] = runPython(
        FIND_IN_TEMP,
        str(plugins),
        str(scratch / "rt"),
        cwd=work,
        pythonPath=str(root),
    )
    assert report["channel"] is True, report
    assert report["name"] == "jobs"
    assert report["dropin"] == os.path.realpath(plugins / DROPIN.name)
    return report


def readCache(plugins: Path) -> dict[str, Any]:
    with open(plugins / "dropin.cache", "rb") as f:
        cache = pickle.load(f)
    assert isinstance(cache, dict)
    return cache


def test_garbageDropinCache(scratch: Path) -> None:
    """
    A C{dropin.cache} that is not a pickle is ignored: the parser is found,
    and Twisted replaces the cache with a good one that lists the drop-in.
    """
    root, plugins = makePluginRoot(scratch)
    (plugins / "dropin.cache").write_bytes(b"\x80\x05not a pickle at all\x00\xff")
    findFromTemp(scratch, root, plugins)
    assert "twisted_channel_endpoints" in readCache(plugins)


def test_unwritablePluginDirectory(scratch: Path) -> None:
    """
    If the cache cannot be written (a read-only directory, as a system
    site-packages is to a user), the parser is still found; Twisted only
    logs that it could not write the cache.

    Mode 0555 does not stop root (CAP_DAC_OVERRIDE bypasses mode bits), and
    these tests run as root in CI; so when writing into the read-only
    directory still works, C{dropin.cache} is also made a directory, which
    no one can replace with a file by renaming.
    """
    root, plugins = makePluginRoot(scratch)
    os.chmod(plugins, 0o555)
    probe = plugins / "probe"
    try:
        probe.write_bytes(b"")
    except PermissionError:
        bypassed = False
    else:
        bypassed = True
        probe.unlink()
        os.chmod(plugins, 0o755)
        (plugins / "dropin.cache").mkdir()
        os.chmod(plugins, 0o555)
    before = sorted(p.name for p in plugins.iterdir())
    try:
        report = findFromTemp(scratch, root, plugins)
    finally:
        os.chmod(plugins, 0o755)
    unable = [
        line for line in report["log"] if "Unable to write to plugin cache" in line
    ]
    assert any(str(plugins) in line for line in unable), report["log"]
    if bypassed:
        assert (plugins / "dropin.cache").is_dir()
    else:
        assert sorted(p.name for p in plugins.iterdir()) == before


OLD_DROPIN = '''
"""An earlier version of the drop-in, with no plugin in it."""
'''

OTHER_PLUGIN = '''
"""A plugin module that has since been uninstalled."""
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin)
class Gone:
    prefix = "gone"


gone = Gone()
'''

GENERATE_CACHE = """
    import json, os, sys
    tempPlugins = os.path.realpath(sys.argv[1])
    import twisted.plugins
    twisted.plugins.__path__[:] = [
        p for p in twisted.plugins.__path__
        if os.path.realpath(p) == tempPlugins
        or not os.path.exists(os.path.join(p, "twisted_channel_endpoints.py"))
    ]
    from twisted.plugin import IPlugin, getPlugins
    print(json.dumps({"prefixes": [
        getattr(p, "prefix", None) for p in getPlugins(IPlugin)
    ]}))
"""


def test_staleDropinCache(scratch: Path) -> None:
    """
    A C{dropin.cache} written for another set of modules (an old version of
    the drop-in with no plugin in it, and a module since removed), older
    than the drop-in now there, does not hide the parser; Twisted rewrites
    the cache to match what is there now.
    """
    root, plugins = makePluginRoot(scratch)
    (plugins / DROPIN.name).write_text(OLD_DROPIN)
    (plugins / "tc_gone_plugin.py").write_text(OTHER_PLUGIN)
    work = scratch / "cwd"
    work.mkdir()
    generated = runPython(GENERATE_CACHE, str(plugins), cwd=work, pythonPath=str(root))
    assert "gone" in generated["prefixes"]
    stale = readCache(plugins)
    assert set(stale) >= {"tc_gone_plugin", "twisted_channel_endpoints"}
    assert stale["twisted_channel_endpoints"].plugins == []

    # The upgrade: the other module is gone, the drop-in is the real one, and
    # the cache is older than the drop-in.
    (plugins / "tc_gone_plugin.py").unlink()
    shutil.copyfile(DROPIN, plugins / DROPIN.name)
    now = time.time()
    os.utime(plugins / "dropin.cache", (now - 3600, now - 3600))
    os.utime(plugins / DROPIN.name, (now - 60, now - 60))

    findFromTemp(scratch, root, plugins)
    fresh = readCache(plugins)
    assert "tc_gone_plugin" not in fresh
    names = [p.name for p in fresh["twisted_channel_endpoints"].plugins]
    assert names == ["channelEndpointParser"]


# The wheel

WHEEL_BUILD_TIMEOUT = 120
OFFLINE_SIGNS = (
    "Could not find a version that satisfies the requirement",
    "No matching distribution found",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ProxyError",
)


def test_wheelShipsTheDropinWithoutInitFiles(scratch: Path) -> None:
    """
    The wheel built from the checkout holds the drop-in and C{py.typed}, and
    neither C{twisted/__init__.py} nor C{twisted/plugins/__init__.py}, which
    would replace Twisted's own on install.

    It is built from a copy of the checkout without C{build/} or
    C{*.egg-info}, so that neither a stale earlier build nor files others
    are creating in the checkout meanwhile change what is packaged.
    """
    source = scratch / "src"
    shutil.copytree(
        PROJECT,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            "build",
            "dist",
            "*.egg-info",
            "__pycache__",
            "dropin.cache",
            ".*_cache",
            ".hypothesis",
            ".venv",
        ),
    )
    out = scratch / "wheels"
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--quiet",
        "-w",
        str(out),
        str(source),
    ]
    try:
        result = subprocess.run(
            command,
            cwd=scratch,
            env=childEnvironment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WHEEL_BUILD_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"building the wheel took over {WHEEL_BUILD_TIMEOUT} s")
    output = result.stdout + result.stderr
    if result.returncode != 0 and any(sign in output for sign in OFFLINE_SIGNS):
        pytest.skip(f"pip could not fetch the build requirements (offline?):\n{output}")
    assert result.returncode == 0, output
    wheels = list(out.glob("twisted_channel-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        shipped = wheel.read("twisted/plugins/twisted_channel_endpoints.py")
    assert "twisted/plugins/twisted_channel_endpoints.py" in names
    assert "twisted_channel/py.typed" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert not [n for n in names if n.endswith("dropin.cache")]
    twistedFiles = sorted(n for n in names if n.startswith("twisted/"))
    assert twistedFiles == ["twisted/plugins/twisted_channel_endpoints.py"]
    assert shipped == DROPIN.read_bytes()


def test_dropinFileMode() -> None:
    """
    The drop-in in the checkout is a plain readable file (Twisted imports it
    by path), next to no C{__init__.py}.
    """
    info = DROPIN.stat()
    assert stat.S_ISREG(info.st_mode)
    assert not (DROPIN.parent / "__init__.py").exists()
    assert not (DROPIN.parent.parent / "__init__.py").exists()
