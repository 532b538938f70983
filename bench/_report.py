"""
The benchmark's report: the Markdown table and the JSON entries built from
the runs' results (medians, ratios to the baseline, the peers' cells, the
failover rows), the verdict lines, and their formatting.
"""

from __future__ import annotations

from typing import Any

from bench import _node, _scenarios
from bench._common import BASELINE, CHANNEL, NODE, PEER_TITLES, median, percentile
from bench._figures import FAILOVER_FIGURES, Figure
from bench._scenarios import Settings


def formatValue(value: float | None, digits: int) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:,.{digits}f}"


def ratioOf(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a != a or b != b or not b:
        return None
    return a / b


def times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def peerCell(
    value: float | None, digits: int, vsBase: float | None, vsPeer: float | None
) -> str:
    """
    A peer's cell: its value, then (its ratio to the baseline / the
    channel's ratio to it).
    """
    if value is None or value != value:
        return "–"
    return f"{formatValue(value, digits)} ({times(vsBase)} / {times(vsPeer)})"


def figureTable(
    figures: list[Figure],
    raw: dict[str, dict[str, list[dict[str, Any]]]],
    runs: int,
    peerColumns: list[str],
    peerDetails: dict[str, str],
) -> tuple[dict[str, dict[str, Any]], list[list[str]]]:
    """
    The figures' entries for the JSON (by key) and their rows for the
    Markdown table: medians of the runs, ratios to the baseline, the peers'
    cells.
    """
    table: dict[str, dict[str, Any]] = {}
    rows: list[list[str]] = []
    if peerColumns:
        rows.append(
            [
                "what ran",
                f"twisted-channel {version('twisted_channel') or ''}".strip(),
                f"Twisted {version('twisted') or ''} unix: + Int32StringReceiver",
                "–",
                *[peerDetails[p] for p in peerColumns],
            ]
        )
    for f in figures:
        runsByImpl = raw[f.measurement]
        channelRuns = [f.read(r) for r in runsByImpl.get(CHANNEL, [])]
        baselineRuns = [f.read(r) for r in runsByImpl.get(BASELINE, [])]
        c = median(channelRuns) if channelRuns else None
        b = median(baselineRuns) if baselineRuns and f.baseline else None
        ratio = ratioOf(c, b)
        # The runs are interleaved, so run i of each side shares the
        # machine's state: the median of those paired ratios is steadier.
        # (Only when no run failed on either side, else they do not pair.)
        paired = []
        if f.baseline and len(channelRuns) == len(baselineRuns) == runs:
            pairs = zip(channelRuns, baselineRuns, strict=True)
            paired = [x / y for x, y in pairs if y]
        entry: dict[str, Any] = {
            "label": f.label,
            "better": f.better,
            "channel": c,
            "baseline": b,
            "ratio": ratio,
            "ratio_paired_median": median(paired) if paired else None,
            "channel_runs": channelRuns,
            "baseline_runs": baselineRuns,
        }
        if f.versus is not None:
            entry["ratio"] = ratioOf(c, f.versus)
            entry["ratio_to"] = f.versusName
            entry[f.versusName] = f.versus
            entry["runs"] = runsByImpl.get(CHANNEL, [])
        peerCells = []
        peerEntries: dict[str, Any] = {}
        for peer in peerColumns:
            if peer not in runsByImpl:
                peerCells.append("–")
                continue
            values = [f.read(r) for r in runsByImpl[peer]]
            v = median(values) if values else None
            vsBase = ratioOf(v, b)
            vsPeer = ratioOf(c, v)
            peerEntries[peer] = {
                "value": v,
                "runs": values,
                "ratio_to_baseline": vsBase,
                "channel_ratio": vsPeer,
            }
            peerCells.append(peerCell(v, f.digits, vsBase, vsPeer))
        if peerEntries:
            entry["peers"] = peerEntries
        table[f.key] = entry
        if f.versus is not None:
            baseCell = f"{f.versusName} {formatValue(f.versus, f.digits)}"
            ratioCell = times(entry["ratio"]) + f" {f.versusName}"
        elif f.baseline:
            baseCell = formatValue(b, f.digits)
            ratioCell = times(ratio)
        else:
            baseCell = ratioCell = "n/a"
        rows.append(
            [
                f.label + (" ↑" if f.better == "higher" else " ↓"),
                formatValue(c, f.digits),
                baseCell,
                ratioCell,
                *peerCells,
            ]
        )

    return table, rows


def notes(settings: Settings, runs: int, peers: bool) -> str:
    """
    The paragraph under the table: what the ratios and cells mean, how the
    senders write.
    """
    notes = (
        f"ratio = twisted-channel / baseline (↑ higher is better, ↓ lower is "
        f"better); each figure is the median of {runs} run(s); failover "
        f"figures pool all kills. Baseline: Twisted unix: endpoints with "
        f"Int32StringReceiver. Senders, both registered as streaming "
        f"producers, write at most {settings.slice} messages (at most "
        f"{settings.sliceBytes >> 20} MiB) per reactor turn, none while "
        f"paused; failover "
        f"clients write {settings.streamSlice} messages every "
        f"{settings.streamInterval * 1000:g} ms each."
    )
    if peers:
        notes += (
            " Peer cells: value (peer / baseline, twisted-channel / peer); "
            "each peer is used as its API is naturally used: pyzmq PUSH/PULL "
            "and REQ/REP over ipc://, multiprocessing.connection send_bytes/"
            "recv_bytes, open-channel with a 4-byte length prefix and "
            "write()/'drain' between two cluster workers. open-channel's "
            f"failover: 3 workers each writing a message every 2 ms, the "
            f"host SIGKILLed, {settings.nodeObserveMs} ms watched; its 'lost' "
            "counts the survivors' messages (after a warm-up) no host received."
        )
    return notes


def printSummary(
    markdown: str,
    note: str,
    elapsed: float,
    verdicts: list[str],
    errors: list[str],
    peerErrors: list[str],
) -> None:
    """
    Print the table, its notes, the verdicts and the count of failures.
    """
    print(markdown)
    print()
    print(note + f" {elapsed:.0f} s.")
    if verdicts:
        print()
        for line in verdicts:
            print(line)
    if errors:
        print(f"\n{len(errors)} measurement(s) FAILED; see stderr and the JSON.")
    if peerErrors:
        print(
            f"\n{len(peerErrors)} peer measurement(s) failed (the peer's, not "
            "counted as errors); see stderr and the JSON."
        )


def failoverRows(
    settings: Settings,
    failovers: list[dict[str, Any]],
    nodeFailovers: list[dict[str, Any]],
    table: dict[str, dict[str, Any]],
    rows: list[list[str]],
    peerColumns: list[str],
    active: list[str],
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """
    The failover figures: the channel's, pooled over every kill, and
    open-channel's, pooled over its trials, in the Node column.
    """
    firsts = [s["first_message_ms"] for r in failovers for s in r["samples"]]
    elections = [s["elected_ms"] for r in failovers for s in r["samples"]]
    kills = len(firsts)
    idleFirsts = [
        s["first_after_resume_ms"] for r in failovers for s in r["idle_samples"]
    ]
    idleElected = [s["elected_ms"] for r in failovers for s in r["idle_samples"]]
    lost = sum(r["lost"] for r in failovers) if failovers else None
    summary = {
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
        "idle_kills": sum(r["idle_kills"] for r in failovers),
        "idle_elected_p50_ms": percentile(idleElected, 0.5) if idleElected else None,
        "idle_first_after_resume_p50_ms": (
            percentile(idleFirsts, 0.5) if idleFirsts else None
        ),
        "idle_first_after_resume_max_ms": max(idleFirsts) if idleFirsts else None,
        "per_run": failovers,
    }
    nodeSummary = None
    streaming: dict[str, Any] = {}
    idle: dict[str, Any] = {}
    if NODE in active:
        nodeSummary = _node.summarizeFailover(nodeFailovers)
        streaming, idle = nodeSummary["streaming"], nodeSummary["idle"]

    def cells(nodeCell: str) -> list[str]:
        return [nodeCell if p == NODE else "–" for p in peerColumns]

    def nodeTimeCell(value: float | None, channel: float | None) -> str:
        if NODE not in active:
            return "–"
        if not streaming.get("trials"):
            return "–"
        if value is None:
            return "never recovered"
        return peerCell(value, 2, None, ratioOf(channel, value))

    label = (
        f"failover: SIGKILL host → first message at new host, "
        f"{settings.candidates} candidates, {settings.streamClients} clients, "
        f"{kills} kills"
    )
    for key, which, field_ in FAILOVER_FIGURES:
        value = summary[field_]
        entry: dict[str, Any] = {
            "label": f"{label}, {which} (ms)",
            "channel": value,
            "baseline": None,
            "ratio": None,
            "better": "lower",
        }
        nodeValue = streaming.get(field_)
        if NODE in active:
            entry["peers"] = {
                NODE: {"value": nodeValue, "channel_ratio": ratioOf(value, nodeValue)}
            }
        table[key] = entry
        rows.append(
            [
                f"{label}, {which} (ms) ↓",
                formatValue(value, 2),
                "n/a",
                "n/a",
                *cells(nodeTimeCell(nodeValue, value)),
            ]
        )
    value = summary["elected_p50_ms"]
    table["failover_elected_p50_ms"] = {
        "label": "failover: SIGKILL host → new host elected, p50 (ms)",
        "channel": value,
        "baseline": None,
        "ratio": None,
        "better": "lower",
    }
    nodeValue = streaming.get("new_host_p50_ms")
    if NODE in active:
        table["failover_elected_p50_ms"]["peers"] = {
            NODE: {"value": nodeValue, "channel_ratio": ratioOf(value, nodeValue)}
        }
    rows.append(
        [
            "failover: SIGKILL host → new host elected (open-channel: accepts "
            "its first connection), p50 (ms) ↓",
            formatValue(value, 2),
            "n/a",
            "n/a",
            *cells(nodeTimeCell(nodeValue, value)),
        ]
    )
    nodeLost = "–"
    if NODE in active and streaming.get("trials"):
        nodeLost = (
            f"{streaming['lost']:,} of {streaming['sent']:,} "
            f"({streaming['lost_after_kill']:,} of the "
            f"{streaming['sent_after_kill']:,} written after the kill)"
        )
    table["failover_lost"] = {
        "label": "failover: messages lost",
        "channel": lost,
        "baseline": None,
        "ratio": None,
        "better": "lower",
    }
    if NODE in active:
        table["failover_lost"]["peers"] = {
            NODE: {"value": streaming.get("lost"), "sent": streaming.get("sent")}
        }
    rows.append(
        [
            f"failover: messages lost (of {summary['messages_sent']:,} sent; "
            f"{summary['duplicates']:,} delivered twice) ↓",
            formatValue(lost, 0),
            "n/a",
            "n/a",
            *cells(nodeLost),
        ]
    )
    # Every kill gave the channel a new host that took messages (else the
    # run fails), and nothing was lost: every client delivered again.
    channelNever = f"0 of {kills} kills" if failovers and lost == 0 else "–"
    nodeNever = "–"
    if NODE in active and streaming.get("trials"):
        nodeNever = (
            f"{streaming['not_all_recovered']} of {streaming['trials']} trials "
            f"({streaming['survivors_never_recovered']} of "
            f"{streaming['survivors']} surviving writers)"
        )
    table["failover_never_recovered"] = {
        "label": "failover: kills after which a client never delivered again",
        "channel": 0 if failovers and lost == 0 else None,
        "baseline": None,
        "ratio": None,
        "better": "lower",
    }
    if NODE in active:
        table["failover_never_recovered"]["peers"] = {
            NODE: {
                "trials": streaming.get("trials"),
                "value": streaming.get("not_all_recovered"),
                "survivors_never_recovered": streaming.get("survivors_never_recovered"),
            }
        }
    rows.append(
        [
            "failover: kills after which a client never delivered again ↓",
            channelNever,
            "n/a",
            "n/a",
            *cells(nodeNever),
        ]
    )
    idleKills = summary["idle_kills"]
    if idleKills or (NODE in active and idle.get("trials")):
        idleLabel = (
            f"failover with the writers idle at the kill (paused "
            f"{_scenarios.IDLE_BEFORE * 1000:g} ms before, resumed "
            f"{_scenarios.IDLE_AFTER * 1000:g} ms after): kills after which a "
            "client never delivered again"
        )
        channelCell = "–"
        if idleKills:
            channelCell = (
                f"0 of {idleKills} kills (first message "
                f"{formatValue(summary['idle_first_after_resume_p50_ms'], 2)} ms p50 "
                "after writing resumed)"
                if lost == 0
                else f"? of {idleKills} kills (messages were lost)"
            )
        nodeCell = "–"
        entry = {
            "label": idleLabel,
            "channel": 0 if idleKills and lost == 0 else None,
            "channel_kills": idleKills,
            "baseline": None,
            "ratio": None,
            "better": "lower",
        }
        if NODE in active and idle.get("trials"):
            nodeCell = (
                f"{idle['not_all_recovered']} of {idle['trials']} trials "
                f"({idle['survivors_never_recovered']} of {idle['survivors']} "
                f"surviving writers; lost {idle['lost_after_kill']:,} of "
                f"{idle['sent_after_kill']:,} written after the kill)"
            )
            entry["peers"] = {
                NODE: {"value": idle["not_all_recovered"], "trials": idle["trials"]}
            }
        table["failover_idle_never_recovered"] = entry
        rows.append([idleLabel + " ↓", channelCell, "n/a", "n/a", *cells(nodeCell)])
    return summary, nodeSummary


#: Short names of the figures, for the verdict lines.
SHORT = {
    "throughput_100B_msgs_per_s": "throughput 100 B",
    "throughput_1KiB_MB_per_s": "throughput 1 KiB",
    "throughput_64KiB_MB_per_s": "throughput 64 KiB",
    "roundtrip_p50_us": "round trip p50",
    "roundtrip_p99_us": "round trip p99",
    "failover_first_message_p50_ms": "failover kill → first message p50",
    "failover_first_message_p99_ms": "failover kill → first message p99",
    "failover_first_message_max_ms": "failover kill → first message max",
    "failover_elected_p50_ms": "failover kill → new host p50",
    "failover_lost": "failover messages lost",
    "failover_never_recovered": "writers that never recovered",
    "failover_idle_never_recovered": "idle-at-kill failovers never recovered",
}


def verdicts(table: dict[str, dict[str, Any]], active: list[str]) -> list[str]:
    """
    One line per peer: where twisted-channel is ahead of it or behind, on
    the figures both measured.
    """
    lines = []
    for peer in active:
        parts = []
        for key, entry in table.items():
            peerEntry = entry.get("peers", {}).get(peer)
            if not peerEntry:
                continue
            c, v = entry.get("channel"), peerEntry.get("value")
            if c is None or v is None:
                continue
            if key in ("failover_never_recovered", "failover_idle_never_recovered"):
                trials = peerEntry.get("trials")
                what = SHORT[key]
                parts.append(
                    f"{what}: ahead (none vs {v} of {trials} trials)"
                    if v
                    else f"{what}: even (none either)"
                )
                continue
            if key == "failover_lost":
                ahead = c < v
                word = "ahead" if ahead else ("even" if c == v else "behind")
                parts.append(f"{SHORT[key]}: {word} ({c:,} vs {v:,})")
                continue
            ratio = ratioOf(c, v)
            if ratio is None:
                continue
            higher = entry.get("better") == "higher"
            ahead = ratio > 1 if higher else ratio < 1
            short = SHORT.get(key, entry["label"].split(" (")[0])
            parts.append(f"{short}: {'ahead' if ahead else 'behind'} ({ratio:.2f}×)")
        if parts:
            lines.append(
                f"twisted-channel vs {PEER_TITLES[peer]}: " + "; ".join(parts) + "."
            )
    return lines


def clean(value: Any) -> Any:
    """
    C{value} with every NaN replaced by None, which JSON can hold.
    """
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def version(module: str) -> str | None:
    try:
        imported = __import__(module)
    except ImportError:
        return None
    version = getattr(imported, "__version__", None)
    if version is None:
        return None
    return str(getattr(version, "public", lambda: version)())


def brief(result: dict[str, Any]) -> str:
    parts = []
    for key, value in result.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, float):
            parts.append(f"{key}={value:,.1f}")
        elif isinstance(value, int):
            parts.append(f"{key}={value:,}")
    return " ".join(parts)


def briefNode(result: dict[str, Any]) -> str:
    if result.get("setup_failed"):
        return "no host elected: " + str(result.get("reason"))

    def ms(value: float | None) -> str:
        return "never" if value is None else f"{value:.1f} ms"

    return (
        f"new host {ms(result['new_host_ms'])}, first message "
        f"{ms(result['first_message_ms'])}, every survivor "
        f"{ms(result['recovery_all_ms'])}, lost {result['lost']} of "
        f"{result['sent']}, write errors {result['write_errors']}"
    )


def markdown(rows: list[list[str]], peers: list[str]) -> str:
    header = ["figure", "twisted-channel", "baseline", "ratio"]
    header += [PEER_TITLES[p] for p in peers]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
