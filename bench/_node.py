"""
The Node peer: the npm package open-channel, which this project's idea
comes from, installed at run time into a cache outside the repository and
measured by the scripts in C{bench/js/}.

open-channel 0.1.12 depends (through manager-process 0.1.5) on
C{find-process ^1.4.4}; from find-process 1.4.8 on, C{find('name', ...)}
leaves out the calling process, so every worker elects another worker as
host, nobody listens, and nothing is ever delivered.  To measure anything,
the install pins find-process to 1.4.4 with npm C{overrides}, as the
performance anchors did.  That is the one change; the package's own code
runs as published.

The install goes to C{$TWISTED_CHANNEL_BENCH_CACHE}, else
C{$XDG_CACHE_HOME/twisted-channel-bench}, else
C{~/.cache/twisted-channel-bench}: into a temporary directory first, then
renamed into place once it checks out, so a failed or interrupted install
leaves nothing half-made.  Where C{node} or C{npm} is missing, or the
install fails (no network), the peer is skipped and the table says why;
it is never an error.  C{--quick} does not install: it uses the cache if
an earlier full run filled it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

from bench._common import percentile
from bench._procs import Child, Workspace, workspace
from bench._scenarios import Settings

OPEN_CHANNEL = "0.1.12"
FIND_PROCESS = "1.4.4"
INSTALL_TIMEOUT = 240.0
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js")


@dataclass
class NodeStatus:
    ok: bool
    #: What ran (versions, where), or why the peer was skipped.
    detail: str
    node: str | None = None
    #: The installed package's directory, for C{require()}.
    module: str | None = None


def cacheRoot() -> str:
    explicit = os.environ.get("TWISTED_CHANNEL_BENCH_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "twisted-channel-bench")


def _packageJson() -> dict[str, Any]:
    return {
        "name": "twisted-channel-bench-open-channel",
        "version": "1.0.0",
        "private": True,
        "description": (
            f"open-channel@{OPEN_CHANNEL} with find-process pinned to "
            f"{FIND_PROCESS}, the last release before find('name') left out "
            "the calling process and broke open-channel's election"
        ),
        "dependencies": {"open-channel": OPEN_CHANNEL},
        "overrides": {"find-process": FIND_PROCESS},
    }


def _version(directory: str, package: str) -> str | None:
    try:
        with open(
            os.path.join(directory, "node_modules", package, "package.json"),
            encoding="utf-8",
        ) as f:
            version = json.load(f).get("version")
    except (OSError, ValueError):
        return None
    return str(version) if version is not None else None


def _checked(directory: str) -> str | None:
    """
    Why the install in C{directory} is not usable, or None if it is.
    """
    found = _version(directory, "open-channel")
    if found != OPEN_CHANNEL:
        return f"open-channel is {found or 'missing'}, not {OPEN_CHANNEL}"
    found = _version(directory, "find-process")
    if found != FIND_PROCESS:
        return f"find-process is {found or 'missing'}, not the pinned {FIND_PROCESS}"
    return None


def _run(command: list[str], cwd: str, timeout: float) -> tuple[int | None, str]:
    """
    Run C{command} in a process group of its own, killed (by the group's
    id, the child's pid) if it is not done within C{timeout} seconds, and
    reaped in any case; return its exit status (None on a timeout, 127 if
    it cannot be run) and the end of its output.
    """
    with tempfile.TemporaryFile() as output:
        try:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            return 127, f"cannot run {command[0]}: {e}"
        status: int | None = None
        try:
            status = process.wait(timeout)
        except subprocess.TimeoutExpired:
            status = None
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if process.poll() is None:
                process.kill()
            process.wait()
        output.seek(0)
        text = output.read()[-4000:].decode("utf-8", "replace")
    return status, text


def _lastLine(text: str) -> str:
    """
    The line of a tool's output most likely to say what went wrong.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "ERR" in line or "Error" in line]
    chosen = (errors or lines or ["no output"])[-1]
    return chosen[:200]


def prepare(
    install: bool,
    root: str | None = None,
    node: str | None = None,
    npm: str | None = None,
    timeout: float = INSTALL_TIMEOUT,
) -> NodeStatus:
    """
    Find Node and the cached open-channel install, installing it first if
    C{install} and it is not cached.  Never raises for a missing tool or a
    failed install: the status says the peer is skipped, and why.
    """
    node = node or shutil.which("node")
    if not node:
        return NodeStatus(False, "skipped: node is not on PATH")
    status, output = _run([node, "--version"], os.getcwd(), 20)
    if status != 0:
        return NodeStatus(False, f"skipped: node --version failed: {_lastLine(output)}")
    nodeVersion = output.strip().splitlines()[-1] if output.strip() else "?"
    root = root or cacheRoot()
    final = os.path.join(
        root, f"open-channel-{OPEN_CHANNEL}-find-process-{FIND_PROCESS}"
    )
    detail = (
        f"open-channel {OPEN_CHANNEL} (find-process pinned to {FIND_PROCESS}), "
        f"Node {nodeVersion}"
    )
    module = os.path.join(final, "node_modules", "open-channel")
    if _checked(final) is None:
        return NodeStatus(True, detail + ", cached", node, module)
    if not install:
        return NodeStatus(
            False,
            f"skipped: open-channel is not in the cache ({root}); --quick does "
            "not install it, a full run does",
        )
    npm = npm or shutil.which("npm")
    if not npm:
        return NodeStatus(False, "skipped: npm is not on PATH")
    try:
        os.makedirs(root, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=".install-", dir=root)
    except OSError as e:
        return NodeStatus(False, f"skipped: cannot create the cache {root}: {e}")
    try:
        with open(os.path.join(scratch, "package.json"), "w", encoding="utf-8") as f:
            json.dump(_packageJson(), f, indent=2)
        command = [
            npm,
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--loglevel=error",
        ]
        status, output = _run(command, scratch, timeout)
        if status is None:
            return NodeStatus(
                False, f"skipped: npm install took over {timeout:.0f} s (killed)"
            )
        if status != 0:
            return NodeStatus(
                False,
                f"skipped: npm install failed (exit {status}): {_lastLine(output)}",
            )
        problem = _checked(scratch)
        if problem is not None:
            return NodeStatus(False, f"skipped: npm installed a wrong tree: {problem}")
        # A script file, not -e: manager-process reads require.main.
        probe = os.path.join(scratch, "probe.js")
        with open(probe, "w", encoding="utf-8") as f:
            f.write(
                'if (typeof require("./node_modules/open-channel").default '
                '!== "function") process.exit(1);\n'
            )
        status, output = _run([node, probe], scratch, 30)
        if status != 0:
            return NodeStatus(
                False, f"skipped: open-channel does not load: {_lastLine(output)}"
            )
        try:
            os.rename(scratch, final)
        except OSError:
            # Another run put it there first, or a broken one is in the way.
            if _checked(final) is not None:
                shutil.rmtree(final, ignore_errors=True)
                os.rename(scratch, final)
        return NodeStatus(True, detail + ", installed now", node, module)
    except OSError as e:
        return NodeStatus(False, f"skipped: installing open-channel failed: {e}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _start(
    space: Workspace,
    status: NodeStatus,
    script: str,
    arguments: list[str],
    environment: dict[str, str],
    limit: float,
) -> Child:
    """
    Start C{node SCRIPT ...} from a copy of the script in the workspace:
    open-channel elects among the C{node} processes running the same script
    path (it reads C{ps}), so a private copy keeps other runs out of the
    election.  Its sockets go under the workspace too (C{TMPDIR}).
    """
    assert status.node is not None and status.module is not None
    copy = space.path(script)
    shutil.copyfile(os.path.join(SCRIPTS, script), copy)
    env = {
        "OC_MODULE": status.module,
        "OC_NAME": "b" + os.path.basename(space.directory)[-6:],
        "TMPDIR": space.directory,
        "LIMIT_MS": str(int(limit * 1000)),
        **environment,
    }
    return space.spawn(
        "node-" + script.split(".")[0], [status.node, copy, *arguments], env, True
    )


def throughput(
    status: NodeStatus, size: int, count: int, settings: Settings
) -> dict[str, Any]:
    """
    One worker streams C{count} messages of C{size} bytes to the other,
    which hosts; the host times the first to the last arrival.
    """
    with workspace() as space:
        child = _start(
            space,
            status,
            "oc_bench.js",
            ["thr"],
            {"COUNT": str(count), "SIZE": str(size)},
            settings.wait,
        )
        result = child.result(settings.wait)
        child.wait(10)
    rate = result["msgs_per_s"]
    return {
        "msgs_per_s": rate,
        "mb_per_s": rate * size / 1e6,
        "seconds": result["seconds"],
    }


def roundTrip(status: NodeStatus, settings: Settings) -> dict[str, Any]:
    with workspace() as space:
        child = _start(
            space,
            status,
            "oc_bench.js",
            ["lat"],
            {
                "COUNT": str(settings.rttCount),
                "WARMUP": str(settings.rttWarmup),
                "SIZE": str(settings.rttSize),
            },
            settings.wait,
        )
        result: dict[str, Any] = child.result(settings.wait)
        child.wait(10)
    return result


def failover(status: NodeStatus, idle: bool, settings: Settings) -> dict[str, Any]:
    """
    One trial of C{js/oc_failover.js}: three workers write a message every
    2 ms each; the host is SIGKILLed (with C{idle}, while all are paused).
    """
    with workspace() as space:
        records = space.path("records")
        os.mkdir(records)
        child = _start(
            space,
            status,
            "oc_failover.js",
            [],
            {
                "RECORDS": records,
                "IDLE": "1" if idle else "0",
                "OBSERVE_MS": str(settings.nodeObserveMs),
            },
            settings.wait,
        )
        result: dict[str, Any] = child.result(settings.wait)
        child.wait(10)
    return result


def summarizeFailover(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """
    The trials pooled: recovery times over the trials that recovered, how
    many never did within the watch, and the messages lost.
    """
    streaming = [t for t in trials if not t.get("idle_at_kill")]
    idle = [t for t in trials if t.get("idle_at_kill")]

    def pool(group: list[dict[str, Any]]) -> dict[str, Any]:
        valid = [t for t in group if not t.get("setup_failed")]
        firsts = [
            t["first_message_ms"] for t in valid if t["first_message_ms"] is not None
        ]
        alls = [t["recovery_all_ms"] for t in valid if t["recovery_all_ms"] is not None]
        hosts = [t["new_host_ms"] for t in valid if t["new_host_ms"] is not None]
        return {
            "trials": len(group),
            "setup_failed": len(group) - len(valid),
            "first_message_p50_ms": percentile(firsts, 0.5) if firsts else None,
            "first_message_p99_ms": percentile(firsts, 0.99) if firsts else None,
            "first_message_max_ms": max(firsts) if firsts else None,
            "recovery_all_p50_ms": percentile(alls, 0.5) if alls else None,
            "new_host_p50_ms": percentile(hosts, 0.5) if hosts else None,
            "no_new_host": sum(1 for t in valid if t["first_message_ms"] is None),
            "not_all_recovered": sum(1 for t in valid if not t["recovered_all"]),
            "survivors": sum(t["survivors"] for t in valid),
            "survivors_never_recovered": sum(
                t["survivors"] - t["recovered_survivors"] for t in valid
            ),
            "sent": sum(t["sent"] for t in valid),
            "lost": sum(t["lost"] for t in valid),
            "sent_after_kill": sum(t["sent_after_kill"] for t in valid),
            "lost_after_kill": sum(t["lost_after_kill"] for t in valid),
        }

    return {"streaming": pool(streaming), "idle": pool(idle)}
