"""
The soak: a long kill loop under load, every fault scenario, the fuzzers
and the attacks, and a report of the figures in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.chaos._chaos import ChaosReport, ChaosSettings, runChaos
from tests.chaos._harness import removeDirectory, shortDirectory
from tests.chaos._scenarios import SCENARIOS, ScenarioResult, mountProblem

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SOAK_COMMAND = "python -m tests.chaos soak"


@dataclass
class SoakSettings:
    """
    What the soak runs.

    @ivar runs: the kill loops, each with its settings.
    @ivar fuzzExamples: hypothesis examples per property.
    @ivar atherisSeconds: how long the coverage-guided fuzzer runs (0: not).
    """

    runs: list[ChaosSettings] = field(default_factory=list)
    fuzzExamples: int = 3000
    atherisSeconds: int = 120
    attacks: bool = True
    scenarios: bool = True


def defaultRuns(kills: int, seed: int) -> list[ChaosSettings]:
    """
    The soak's kill loops: most kills over Unix sockets, a fifth over the
    loopback TCP transport.
    """
    tcpKills = kills // 5
    return [
        ChaosSettings(
            candidates=4,
            clients=4,
            rate=1000,
            kills=kills - tcpKills,
            interval=700,
            seed=seed,
        ),
        ChaosSettings(
            candidates=3,
            clients=3,
            rate=1000,
            kills=tcpKills,
            interval=700,
            seed=seed + 1,
            transport="tcp",
        ),
    ]


@dataclass
class SoakReport:
    """
    Everything the soak measured.
    """

    started: float
    seconds: float = 0.0
    loadBefore: float = 0.0
    loadAfter: float = 0.0
    runs: list[ChaosReport] = field(default_factory=list)
    scenarios: list[ScenarioResult] = field(default_factory=list)
    scenarioFailures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    fuzzCases: dict[str, int] = field(default_factory=dict)
    attacks: dict[str, int] = field(default_factory=dict)
    pytestOutcomes: dict[str, str] = field(default_factory=dict)
    atheris: dict[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return sum(r.delivery.lost for r in self.runs) + sum(
            s.delivery.lost for s in self.scenarios
        )

    @property
    def failed(self) -> bool:
        broken = any(
            r.delivery.lost
            or r.delivery.outOfOrder
            or r.delivery.duplicatedWithinHost
            or r.delivery.phantom
            for r in self.runs
        )
        pytestFailed = any(v != "passed" for v in self.pytestOutcomes.values())
        atherisFailed = self.atheris.get("crashed", False)
        return broken or bool(self.scenarioFailures) or pytestFailed or atherisFailed


def _runPytest(
    files: list[str], environment: dict[str, str], timeout: float
) -> tuple[str, str]:
    """
    Run pytest on C{files}; return its outcome and its last lines.
    """
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    tail = "\n".join(done.stdout.strip().splitlines()[-3:])
    return ("passed" if done.returncode == 0 else f"failed ({tail})"), tail


def _readCounts(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def runAtheris(seconds: int, log: Callable[[str], None]) -> dict[str, Any]:
    """
    Run C{fuzz/fuzz_wire.py} for C{seconds}; return its executions and
    whether it crashed.
    """
    try:
        import atheris  # noqa: F401
    except ImportError:
        return {"skipped": "atheris is not installed (pip install atheris)"}
    corpus = shortDirectory("tc-corpus-")
    harness = os.path.join(ROOT, "fuzz", "fuzz_wire.py")
    try:
        subprocess.run(
            [sys.executable, harness, "--seeds", corpus],
            check=True,
            timeout=60,
            capture_output=True,
        )
        done = subprocess.run(
            [
                sys.executable,
                harness,
                f"-max_total_time={seconds}",
                "-print_final_stats=1",
                f"-artifact_prefix={corpus}/",
                corpus,
            ],
            cwd=corpus,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
        )
    finally:
        removeDirectory(corpus)
    output = done.stdout + done.stderr
    executions = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
    coverage = re.findall(r"cov: (\d+)", output)
    result = {
        "seconds": seconds,
        "executions": int(executions.group(1)) if executions else 0,
        "coverage": int(coverage[-1]) if coverage else 0,
        "crashed": done.returncode != 0,
    }
    if done.returncode != 0:
        result["output"] = output[-3000:]
    log(f"atheris: {result}")
    return result


def runSoak(settings: SoakSettings, log: Callable[[str], None] = print) -> SoakReport:
    """
    Run everything the soak runs, in order, and gather the figures.
    """
    report = SoakReport(started=time.time(), loadBefore=os.getloadavg()[0])
    began = time.monotonic()
    for number, run in enumerate(settings.runs, 1):
        log(f"kill loop {number}: {run}")
        result = runChaos(run, log)
        log(result.summary())
        report.runs.append(result)
    if settings.scenarios:
        problem = mountProblem()
        for name, scenario in SCENARIOS.items():
            if problem and name in ("diskFull", "readOnly"):
                report.skipped[name] = problem
                continue
            log(f"scenario {name}")
            try:
                outcome = scenario("default")
            except Exception:
                report.scenarioFailures[name] = traceback.format_exc()[-2000:]
                log(report.scenarioFailures[name])
                continue
            log(
                f"  {outcome.delivery.sent} sent, {outcome.delivery.lost} lost, "
                f"{outcome.figures}"
            )
            report.scenarios.append(outcome)
    counts = os.path.join(shortDirectory("tc-counts-"), "counts.jsonl")
    try:
        jobs = [
            (
                "fuzz",
                ["tests/test_fuzz.py"],
                {"TC_FUZZ_EXAMPLES": str(settings.fuzzExamples)},
            )
        ]
        if settings.attacks:
            jobs.append(("attacks", ["tests/test_attacks.py"], {"TC_SOAK": "1"}))
        for name, files, environment in jobs:
            log(f"pytest {' '.join(files)} {environment}")
            outcome, tail = _runPytest(
                files, {**environment, "TC_COUNT_FILE": counts}, 3600
            )
            report.pytestOutcomes[name] = outcome
            log(f"  {outcome}: {tail}")
        for entry in _readCounts(counts):
            into = report.fuzzCases if entry["kind"] == "fuzz" else report.attacks
            into[entry["name"]] = into.get(entry["name"], 0) + entry["count"]
    finally:
        removeDirectory(os.path.dirname(counts))
    if settings.atherisSeconds > 0:
        report.atheris = runAtheris(settings.atherisSeconds, log)
    report.seconds = time.monotonic() - began
    report.loadAfter = os.getloadavg()[0]
    return report


# The report


def _machine() -> str:
    import twisted

    cpus = os.cpu_count()
    return (
        f"{platform.system()} {platform.release()}, {cpus} CPUs, Python "
        f"{platform.python_version()}, Twisted {twisted.__version__}"
    )


def _ms(value: float) -> str:
    return f"{value:.1f}"


def markdown(report: SoakReport, command: str) -> str:
    """
    The soak's report, as the Markdown of C{docs/reliability.md}.
    """
    runs = report.runs
    kills = sum(len(r.failovers) for r in runs)
    scenarios = len(report.scenarios)
    fuzz = sum(report.fuzzCases.values())
    executions = report.atheris.get("executions", 0)
    attacks = sum(report.attacks.values())
    processes = max((r.settings.processes for r in runs), default=0)
    peakRate = max((r.messagesPerSecond for r in runs), default=0.0)
    delivered = sum(r.delivery.delivered for r in runs) + sum(
        s.delivery.delivered for s in report.scenarios
    )
    outOfOrder = sum(r.delivery.outOfOrder for r in runs) + sum(
        s.delivery.outOfOrder for s in report.scenarios
    )
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(report.started))
    lines = [
        "# Reliability",
        "",
        "<!-- Generated by the chaos harness; do not edit by hand. -->",
        "",
        f"Generated by `{command}` on {when} ({_machine()}; load average "
        f"{report.loadBefore:.1f} before, {report.loadAfter:.1f} after), in "
        f"{report.seconds / 60:.1f} minutes.  Every figure comes from real "
        "processes over real sockets, started with the running interpreter; "
        "the hosts record each message before acknowledging it, and the "
        "harness counts the record against what each sender wrote.",
        "",
        "| load held | faults survived | bad inputs tried | messages lost |",
        "|---|---|---|---|",
        f"| {processes} processes streaming at once, up to "
        f"{peakRate:,.0f} messages/s delivered; {delivered:,} messages in all "
        f"| {kills} host SIGKILLs, {scenarios} fault scenarios "
        f"| {fuzz:,} property-based fuzz cases, {executions:,} coverage-guided "
        f"fuzz executions, {attacks:,} hostile inputs (connections, files, "
        f"names, floods) | **{report.lost}** (out of order: {outOfOrder}) |",
        "",
        "## Host kills",
        "",
        "P processes stream numbered messages; some are candidate hosts that "
        "also stream (a killed host's own stream dies with it, which the "
        "promise allows), the others pure clients.  The host is SIGKILLed "
        "every T ms (drawn from T/2 to 3T/2), and a replacement candidate is "
        "started after each kill.  *Failover* is from the kill to the first "
        "message the next host's protocol receives (CLOCK_MONOTONIC, "
        "comparable across processes); *elected* to its becoming host.",
        "",
        "| run | processes | msg/s each | kills | T | transport | seconds "
        "| msg/s delivered | sent | delivered | duplicated | lost "
        "| out of order | failover p50 / p99 / max (ms) | elected p50 / max (ms) "
        "| files left behind |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for number, run in enumerate(runs, 1):
        s, d, f = run.settings, run.delivery, run.failoverFigures()
        lines.append(
            f"| {number} | {s.processes} ({s.candidates} candidates + "
            f"{s.clients} clients) | {s.rate:g} | {len(run.failovers)} "
            f"| {s.interval:g} ms | {s.transport} | {run.seconds:.0f} "
            f"| {run.messagesPerSecond:,.0f} | {d.sent:,} | {d.delivered:,} "
            f"| {d.duplicated:,} | {d.lost} | {d.outOfOrder} "
            f"| {_ms(f.get('first_p50_ms', 0))} / {_ms(f.get('first_p99_ms', 0))} "
            f"/ {_ms(f.get('first_max_ms', 0))} "
            f"| {_ms(f.get('elected_p50_ms', 0))} / {_ms(f.get('elected_max_ms', 0))} "
            f"| {len(run.strayFiles)} |"
        )
    lines += [
        "",
        "*Duplicated* counts deliveries of a message that a killed host had "
        "delivered but not yet acknowledged (at least once across a host's "
        "death); no host ever delivered a message twice, and every sender's "
        "messages reached each host in order.  *Sent* counts, for a sender "
        "that died with its host, the messages up to its last delivered one.  "
        "*Files left behind* are what dead processes left in the runtime "
        "directory that the host had not removed 3 s after the run (it "
        "removes them at each check of its socket or port file, every "
        "second); the sockets (over TCP, the port files) live standbys hold "
        "ready are not counted.",
        "",
        "## Fault scenarios",
        "",
        "Each asserts that no message a client wrote before the fault is lost "
        "(but those of a client that died), that no process hangs (every wait "
        "is bounded), and that the channel ends with one host, the one "
        "answering at the socket.  `python -m tests.chaos scenario NAME` runs "
        "one; `pytest tests/chaos` runs them all.",
        "",
        "| scenario | what must happen | messages sent | lost | figures |",
        "|---|---|---|---|---|",
    ]
    for result in report.scenarios:
        figures = ", ".join(f"{k}: {v}" for k, v in result.figures.items())
        lines.append(
            f"| {result.name} | {result.promise} | {result.delivery.sent:,} "
            f"| {result.delivery.lost} | {figures} |"
        )
    for name, failure in report.scenarioFailures.items():
        last = failure.strip().splitlines()[-1]
        lines.append(f"| {name} | **FAILED** | | | {last} |")
    for name, why in report.skipped.items():
        lines.append(f"| {name} | skipped: {why} | | | |")
    lines += [
        "",
        "## Hostile input",
        "",
        "| what | cases |",
        "|---|---|",
    ]
    for name, count in sorted(report.fuzzCases.items()):
        lines.append(f"| property-based fuzzing (hypothesis): {name} | {count:,} |")
    if report.atheris.get("executions"):
        lines.append(
            f"| coverage-guided fuzzing (atheris, {report.atheris['seconds']} s, "
            f"{report.atheris['coverage']} edges): frame decoder and host "
            f"handshake | {report.atheris['executions']:,} |"
        )
    elif report.atheris.get("skipped"):
        lines.append(
            f"| coverage-guided fuzzing | skipped: {report.atheris['skipped']} |"
        )
    for name, count in sorted(report.attacks.items()):
        lines.append(f"| attack: {name} | {count:,} |")
    lines += [
        "",
        "Outcomes: "
        + ", ".join(f"{k} {v}" for k, v in report.pytestOutcomes.items())
        + (
            f", atheris {'crashed' if report.atheris.get('crashed') else 'clean'}"
            if report.atheris.get("executions") is not None
            and "skipped" not in report.atheris
            else ""
        )
        + ".",
        "",
        "## Reproducing",
        "",
        "```sh",
        f"{command}                    # everything above (about 10 minutes)",
        "python -m tests.chaos run --kills 50 --rate 1000   # one kill loop, "
        "its figures",
        "python -m tests.chaos scenario frozenHost           # one scenario",
        "python -m pytest -q tests/chaos tests/test_fuzz.py tests/test_attacks.py"
        "   # the CI versions",
        "TC_FUZZ_EXAMPLES=20000 python -m pytest -q tests/test_fuzz.py",
        "pip install atheris && python fuzz/fuzz_wire.py --seeds /tmp/corpus && "
        "python fuzz/fuzz_wire.py -max_total_time=300 -print_final_stats=1 "
        "/tmp/corpus",
        "```",
        "",
        "The kill loop, the scenarios and the attacks need Linux; the "
        "disk-full and read-only scenarios need root (to mount a small tmpfs "
        "and a read-only bind mount: as root, mode bits stop no write) and are "
        "skipped, saying why, elsewhere.",
        "",
    ]
    return "\n".join(lines)


def soakMain(options: Any) -> int:
    """
    Run the soak from the command line; write the report; return the exit
    status.
    """
    kills = options.kills
    settings = SoakSettings(
        runs=defaultRuns(kills, options.seed),
        fuzzExamples=options.fuzz_examples,
        atherisSeconds=options.atheris_seconds,
        attacks=not options.no_attacks,
        scenarios=not options.no_scenarios,
    )
    report = runSoak(settings)
    command = SOAK_COMMAND
    if kills != 200:
        command += f" --kills {kills}"
    text = markdown(report, command)
    if options.output:
        with open(options.output, "w") as f:
            f.write(text)
        print(f"wrote {options.output}")
    if options.json:
        with open(options.json, "w") as f:
            json.dump(
                {
                    "runs": [r.asDict() for r in report.runs],
                    "scenarios": [asdict(s) for s in report.scenarios],
                    "scenarioFailures": report.scenarioFailures,
                    "fuzzCases": report.fuzzCases,
                    "attacks": report.attacks,
                    "atheris": report.atheris,
                    "pytest": report.pytestOutcomes,
                    "seconds": report.seconds,
                },
                f,
                indent=1,
            )
    print(text)
    return 1 if report.failed else 0
