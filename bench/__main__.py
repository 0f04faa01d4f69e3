"""`python -m bench [--profile full|tiny] [--out reports/bench-<ts>] [--py-spy]`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import traceback
from pathlib import Path

from bench.processes import Fleet
from bench.profiles import PROFILES
from bench.report import evaluate_targets, target_lines, write_reports
from bench.run import PHASES, Bench


async def _run(bench: Bench) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    # SIGTERM ends the run as Ctrl-C does: the phase is cancelled, every child stopped.
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        async with asyncio.timeout(bench.p.max_seconds + 60):
            await bench.run()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure giftstream on this machine: fan-out, gifts, memory, the raw "
        "websockets ceiling, one process against two.",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    parser.add_argument(
        "--py-spy",
        action="store_true",
        help="record the server with py-spy during the gift storm and the largest gift run",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated phases to run, of: " + ", ".join(PHASES) + " (default: all; "
        "the raw ceiling and two processes compare with the fan-out and gift phases' figures)",
    )
    args = parser.parse_args(argv)
    only: frozenset[str] | None = None
    if args.only:
        only = frozenset(name.strip() for name in args.only.split(","))
        if not only <= set(PHASES):
            parser.error(f"--only takes phases of: {', '.join(PHASES)}")
    profile = PROFILES[args.profile]
    out: Path = args.out or Path("reports") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    fleet = Fleet()
    bench = Bench(profile, out, fleet=fleet, py_spy=args.py_spy)
    bench.only = only
    failed: BaseException | None = None
    try:
        asyncio.run(_run(bench))
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        failed = exc
        print("\nbench: interrupted; every process it started is stopped", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - reported, and the partial report is written
        failed = exc
        traceback.print_exc()
    finally:
        leftovers = fleet.kill_all()
        if leftovers:
            print(f"bench: killed leftover processes: {', '.join(leftovers)}", file=sys.stderr)
    report = bench.report
    report["targets"] = evaluate_targets(report)
    if failed is not None:
        report["error"] = f"{type(failed).__name__}: {failed}"
    bench.say("TARGETS")
    for line in target_lines(report["targets"]):
        bench.say(line)
    json_path, md_path = write_reports(out, report, bench.printed)
    print(f"\nreports: {json_path} {md_path}")
    return 1 if failed is not None or report.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
