"""
C{python -m bench}: run every measurement C{--runs} times, interleaving the
channel and the baseline, print a Markdown table of the medians and write
them, with every run's numbers, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench import _scenarios
from bench._common import BASELINE, CHANNEL, median, percentile
from bench._scenarios import Settings


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    better: str  # "higher" or "lower"
    digits: int
    #: The measurement it comes from, and how to read it from a result.
    measurement: str
    read: Callable[[dict[str, Any]], float]
    baseline: bool = True


@dataclass(frozen=True)
class Measurement:
    name: str
    group: str
    run: Callable[[str, Settings], dict[str, Any]]


def _measurements(s: Settings) -> list[Measurement]:
    return [
        Measurement(
            "thr_100B",
            "throughput",
            lambda impl, s: _scenarios.throughput(impl, 100, s.thrSmallCount, s),
        ),
        Measurement(
            "thr_1KiB",
            "throughput",
            lambda impl, s: _scenarios.throughput(impl, 1024, s.thrKiBCount, s),
        ),
        Measurement(
            "thr_64KiB",
            "throughput",
            lambda impl, s: _scenarios.throughput(impl, 65536, s.thr64KiBCount, s),
        ),
        Measurement("rtt", "roundtrip", _scenarios.roundTrip),
        Measurement("startup", "startup", _scenarios.startup),
        Measurement("fanin", "fanin", _scenarios.fanIn),
        Measurement("memory", "memory", _scenarios.memory),
    ]


def _figures(s: Settings) -> list[Figure]:
    return [
        Figure(
            "throughput_100B_msgs_per_s",
            f"throughput, {s.thrSmallCount:,} × 100 B (msg/s)",
            "higher",
            0,
            "thr_100B",
            lambda r: r["msgs_per_s"],
        ),
        Figure(
            "throughput_1KiB_MB_per_s",
            f"throughput, {s.thrKiBCount:,} × 1 KiB (MB/s)",
            "higher",
            1,
            "thr_1KiB",
            lambda r: r["mb_per_s"],
        ),
        Figure(
            "throughput_64KiB_MB_per_s",
            f"throughput, {s.thr64KiBCount:,} × 64 KiB (MB/s)",
            "higher",
            1,
            "thr_64KiB",
            lambda r: r["mb_per_s"],
        ),
        Figure(
            "roundtrip_p50_us",
            f"round trip {s.rttSize} B, p50 of {s.rttCount:,} (µs)",
            "lower",
            1,
            "rtt",
            lambda r: r["p50_us"],
        ),
        Figure(
            "roundtrip_p99_us",
            f"round trip {s.rttSize} B, p99 of {s.rttCount:,} (µs)",
            "lower",
            1,
            "rtt",
            lambda r: r["p99_us"],
        ),
        Figure(
            "startup_listen_us",
            "start-up: listen() → hosting (µs)",
            "lower",
            1,
            "startup",
            lambda r: r["listen_us"],
        ),
        Figure(
            "startup_connect_us",
            "start-up: connect() → first message delivered (µs)",
            "lower",
            1,
            "startup",
            lambda r: r["connect_us"],
        ),
        Figure(
            "fanin_msgs_per_s",
            f"fan-in, {s.faninClients} client processes × {s.faninCount:,} × "
            "100 B (msg/s)",
            "higher",
            0,
            "fanin",
            lambda r: r["msgs_per_s"],
        ),
        Figure(
            "memory_per_link_KiB",
            f"host memory per idle link, {s.memLinks:,} links (KiB RSS)",
            "lower",
            1,
            "memory",
            lambda r: r["per_link_kib"],
        ),
    ]


FAILOVER_FIGURES = [
    ("failover_first_message_p50_ms", "p50", 2),
    ("failover_first_message_p99_ms", "p99", 2),
    ("failover_first_message_max_ms", "max", 2),
]


def _log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _format(value: float | None, digits: int) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:,.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark twisted-channel against Twisted unix: endpoints "
        "with Int32StringReceiver, measured in the same invocation.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts, 1 run (a smoke test)"
    )
    parser.add_argument("--runs", type=int, default=None, help="runs (default 5)")
    parser.add_argument(
        "--json", default="bench-results.json", help="where to write the results"
    )
    parser.add_argument(
        "--kills", type=int, default=None, help="host kills per failover run"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated groups to run: " + ",".join(_scenarios.SCENARIOS),
    )
    options = parser.parse_args(argv)

    settings = Settings.quick() if options.quick else Settings()
    if options.kills is not None:
        settings.kills = options.kills
    runs = options.runs if options.runs is not None else (1 if options.quick else 5)
    if runs < 1:
        parser.error("--runs must be at least 1")
    groups = set(_scenarios.SCENARIOS)
    if options.only:
        groups = {g.strip() for g in options.only.split(",") if g.strip()}
        unknown = groups - set(_scenarios.SCENARIOS)
        if unknown:
            parser.error(f"unknown groups: {', '.join(sorted(unknown))}")

    measurements = [m for m in _measurements(settings) if m.group in groups]
    figures = [
        f
        for f in _figures(settings)
        if any(m.name == f.measurement for m in measurements)
    ]
    started = time.time()
    t0 = time.monotonic()
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {
        m.name: {CHANNEL: [], BASELINE: []} for m in measurements
    }
    failovers: list[dict[str, Any]] = []
    errors: list[str] = []

    for run in range(runs):
        # Alternate which implementation goes first, so that drift on the
        # machine hits both alike.
        order = (CHANNEL, BASELINE) if run % 2 == 0 else (BASELINE, CHANNEL)
        for m in measurements:
            for impl in order:
                try:
                    result = m.run(impl, settings)
                except Exception:
                    errors.append(
                        f"run {run + 1} {m.name} {impl}:\n" + traceback.format_exc()
                    )
                    _log(f"run {run + 1}/{runs} {m.name} {impl}: FAILED")
                    _log(errors[-1])
                    continue
                raw[m.name][impl].append(result)
                _log(f"run {run + 1}/{runs} {m.name} {impl}: " + _brief(result))
        if "failover" in groups:
            try:
                result = _scenarios.failover(settings)
            except Exception:
                errors.append(f"run {run + 1} failover:\n" + traceback.format_exc())
                _log(f"run {run + 1}/{runs} failover: FAILED")
                _log(errors[-1])
            else:
                failovers.append(result)
                _log(
                    f"run {run + 1}/{runs} failover: {result['kills']} kills, "
                    f"first message p50 {result['first_message_p50_ms']:.2f} ms, "
                    f"max {result['first_message_max_ms']:.2f} ms, "
                    f"lost {result['lost']}, duplicates {result['duplicates']}"
                )

    table: dict[str, dict[str, Any]] = {}
    rows: list[tuple[str, str, str, str]] = []
    for f in figures:
        channelRuns = [f.read(r) for r in raw[f.measurement][CHANNEL]]
        baselineRuns = [f.read(r) for r in raw[f.measurement][BASELINE]]
        c = median(channelRuns) if channelRuns else None
        b = median(baselineRuns) if baselineRuns else None
        ratio = c / b if c is not None and b else None
        # The runs are interleaved, so run i of each side shares the
        # machine's state: the median of those paired ratios is steadier.
        # (Only when no run failed on either side, else they do not pair.)
        paired = []
        if len(channelRuns) == len(baselineRuns) == runs:
            pairs = zip(channelRuns, baselineRuns, strict=True)
            paired = [x / y for x, y in pairs if y]
        table[f.key] = {
            "label": f.label,
            "better": f.better,
            "channel": c,
            "baseline": b,
            "ratio": ratio,
            "ratio_paired_median": median(paired) if paired else None,
            "channel_runs": channelRuns,
            "baseline_runs": baselineRuns,
        }
        rows.append(
            (
                f.label + (" ↑" if f.better == "higher" else " ↓"),
                _format(c, f.digits),
                _format(b, f.digits),
                _format(ratio, 2) + ("×" if ratio is not None else ""),
            )
        )

    failoverSummary: dict[str, Any] | None = None
    if "failover" in groups:
        firsts = [s["first_message_ms"] for r in failovers for s in r["samples"]]
        elections = [s["elected_ms"] for r in failovers for s in r["samples"]]
        kills = len(firsts)
        lost = sum(r["lost"] for r in failovers) if failovers else None
        failoverSummary = {
            "kills": kills,
            "runs": len(failovers),
            "first_message_p50_ms": percentile(firsts, 0.5) if firsts else None,
            "first_message_p99_ms": percentile(firsts, 0.99) if firsts else None,
            "first_message_max_ms": max(firsts) if firsts else None,
            "elected_p50_ms": percentile(elections, 0.5) if elections else None,
            "elected_max_ms": max(elections) if elections else None,
            "lost": lost,
            "duplicates": sum(r["duplicates"] for r in failovers),
            "unexpected": sum(r["unexpected"] for r in failovers),
            "messages_sent": sum(sum(r["sent"].values()) for r in failovers),
            "candidates": settings.candidates,
            "clients": settings.streamClients,
            "client_rate_msgs_per_s": settings.streamSlice / settings.streamInterval,
            "per_run": failovers,
        }
        label = (
            f"failover: SIGKILL host → first message at new host, "
            f"{settings.candidates} candidates, {settings.streamClients} clients, "
            f"{kills} kills"
        )
        for key, which, digits in FAILOVER_FIGURES:
            value = failoverSummary[key.replace("failover_", "", 1)]
            table[key] = {
                "label": f"{label}, {which} (ms)",
                "channel": value,
                "baseline": None,
                "ratio": None,
                "better": "lower",
            }
            rows.append(
                (f"{label}, {which} (ms) ↓", _format(value, digits), "n/a", "n/a")
            )
        value = failoverSummary["elected_p50_ms"]
        table["failover_elected_p50_ms"] = {
            "label": "failover: SIGKILL host → new host elected, p50 (ms)",
            "channel": value,
            "baseline": None,
            "ratio": None,
            "better": "lower",
        }
        rows.append(
            (
                "failover: SIGKILL host → new host elected, p50 (ms) ↓",
                _format(value, 2),
                "n/a",
                "n/a",
            )
        )
        table["failover_lost"] = {
            "label": "failover: messages lost",
            "channel": lost,
            "baseline": None,
            "ratio": None,
            "better": "lower",
        }
        rows.append(
            (
                f"failover: messages lost (of {failoverSummary['messages_sent']:,} "
                f"sent; {failoverSummary['duplicates']:,} delivered twice)",
                _format(lost, 0),
                "n/a",
                "n/a",
            )
        )

    elapsed = time.monotonic() - t0
    markdown = _markdown(rows)
    print(markdown)
    print()
    print(
        f"ratio = twisted-channel / baseline (↑ higher is better, ↓ lower is "
        f"better); each figure is the median of {runs} run(s); failover "
        f"figures pool all kills. Baseline: Twisted unix: endpoints with "
        f"Int32StringReceiver. Senders write {settings.slice} messages (at "
        f"most {settings.sliceBytes >> 20} MiB) per reactor turn; failover "
        f"clients write {settings.streamSlice} messages every "
        f"{settings.streamInterval * 1000:g} ms each. {elapsed:.0f} s."
    )
    if errors:
        print(f"\n{len(errors)} measurement(s) FAILED; see stderr and the JSON.")

    document = {
        "meta": {
            "started": started,
            "seconds": elapsed,
            "runs": runs,
            "quick": options.quick,
            "groups": sorted(groups),
            "settings": asdict(settings),
            "python": sys.version,
            "executable": sys.executable,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "twisted": _version("twisted"),
            "twisted_channel": _version("twisted_channel"),
            "baseline": "Twisted unix: endpoints, Int32StringReceiver both sides",
            "ratio": "twisted-channel / baseline",
        },
        "figures": table,
        "failover": failoverSummary,
        "raw": raw,
        "errors": errors,
        "table_markdown": markdown,
    }
    with open(options.json, "w", encoding="utf-8") as f:
        json.dump(_clean(document), f, indent=2, allow_nan=False, default=str)
        f.write("\n")
    _log(f"wrote {options.json}")
    lostAny = bool(failoverSummary and failoverSummary["lost"])
    return 1 if errors or lostAny else 0


def _clean(value: Any) -> Any:
    """
    C{value} with every NaN replaced by None, which JSON can hold.
    """
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _version(module: str) -> str | None:
    try:
        imported = __import__(module)
    except ImportError:
        return None
    version = getattr(imported, "__version__", None)
    if version is None:
        return None
    return str(getattr(version, "public", lambda: version)())


def _brief(result: dict[str, Any]) -> str:
    parts = []
    for key, value in result.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:,.1f}")
        elif isinstance(value, int):
            parts.append(f"{key}={value:,}")
    return " ".join(parts)


def _markdown(rows: list[tuple[str, str, str, str]]) -> str:
    header = ("figure", "twisted-channel", "baseline", "ratio")
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
