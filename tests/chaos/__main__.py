"""
The chaos harness from the command line::

    python -m tests.chaos run [--kills K --interval T --rate R ...]
    python -m tests.chaos scenario [NAME ...]
    python -m tests.chaos soak [--kills 200] [--output docs/reliability.md]

``run`` is one kill loop and prints its figures; ``scenario`` runs fault
scenarios (all of them by default); ``soak`` runs the long kill loops,
every scenario, the fuzzers and the attacks, and writes the report.
Run it from the repository's root, with the package installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from tests.chaos._chaos import ChaosSettings, runChaos
from tests.chaos._harness import HarnessError
from tests.chaos._scenarios import SCENARIOS
from tests.chaos._soak import soakMain


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="one kill loop")
    for name, value in asdict(ChaosSettings()).items():
        run.add_argument(f"--{name}", type=type(value), default=value)
    run.add_argument("--json", help="also write the figures here")

    scenario = commands.add_parser("scenario", help="fault scenarios")
    scenario.add_argument(
        "names", nargs="*", metavar="NAME", help=f"one of {', '.join(SCENARIOS)}"
    )

    soak = commands.add_parser("soak", help="everything, and the report")
    soak.add_argument("--kills", type=int, default=200)
    soak.add_argument("--seed", type=int, default=1)
    soak.add_argument("--fuzz-examples", type=int, default=3000)
    soak.add_argument("--atheris-seconds", type=int, default=120)
    soak.add_argument("--no-attacks", action="store_true")
    soak.add_argument("--no-scenarios", action="store_true")
    soak.add_argument("--output", default="docs/reliability.md")
    soak.add_argument("--json", help="also write every figure here")

    options = parser.parse_args(arguments)
    if options.command == "soak":
        return soakMain(options)
    if options.command == "scenario":
        unknown = set(options.names) - set(SCENARIOS)
        if unknown:
            parser.error(f"unknown scenario(s) {sorted(unknown)}: {list(SCENARIOS)}")
        failed = 0
        for name in options.names or list(SCENARIOS):
            try:
                result = SCENARIOS[name]("default")
            except HarnessError as e:
                print(f"{name}: FAILED: {e}")
                failed += 1
                continue
            d = result.delivery
            print(
                f"{result.name}: {result.promise}\n  sent {d.sent:,}, delivered "
                f"{d.delivered:,}, lost {d.lost}, {result.figures}, "
                f"{result.seconds:.1f} s"
            )
        return 1 if failed else 0
    settings = vars(options)
    output = settings.pop("json")
    settings.pop("command")
    report = runChaos(ChaosSettings(**settings), print)
    print(report.summary())
    if output:
        with open(output, "w") as f:
            json.dump(report.asDict(), f, indent=1)
    try:
        report.delivery.assertPromisesKept("chaos")
    except HarnessError as e:
        print(e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
