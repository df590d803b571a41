"""Named load scenarios over the load generator, against any KServe v2 endpoint.

    .venv/bin/python -m load_tests.scenarios steady --target localhost:8001 --rate 300
    .venv/bin/python -m load_tests.scenarios ramp   --target localhost:8001 --rate 50 --peak 600
    .venv/bin/python -m load_tests.scenarios spike  --target localhost:8001 --rate 200 --peak 1500
    .venv/bin/python -m load_tests.scenarios ab     --target localhost:8001 --model classifier \\
        --split 1=90,2=10 [--admin 127.0.0.1:8003 --admin-token-file FILE]

``ab --split`` sets the route's split through the gateway's admin service first (as
``triton-gateway ctl split`` does), then checks the versions that answered against it;
``--expect 1=0.5,2=0.5`` checks shares without setting anything.

All are open loop (latency from intended send times), bounded by --duration and
--max-requests. Fault scenarios (a backend killed, hung, unloaded; the gateway stopped) are
in ``load_tests.chaos``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway import cli
from load_tests import loadgen


def ramp(start_rate: float, peak_rate: float, duration_s: float) -> list[float]:
    """Send offsets for a rate rising linearly from ``start_rate`` to ``peak_rate``."""
    offsets: list[float] = []
    t = 0.0
    while t < duration_s:
        offsets.append(t)
        rate = start_rate + (peak_rate - start_rate) * t / duration_s
        t += 1.0 / max(rate, 1e-6)
    return offsets


def spike(base_rate: float, peak_rate: float, duration_s: float) -> list[float]:
    """``base_rate``, with ``peak_rate`` during the middle fifth of the run."""
    offsets: list[float] = []
    t = 0.0
    start, end = duration_s * 0.4, duration_s * 0.6
    while t < duration_s:
        offsets.append(t)
        t += 1.0 / (peak_rate if start <= t < end else base_rate)
    return offsets


def ab_deviation(versions: dict[str, int], expected: dict[str, float]) -> dict[str, float]:
    """Observed share minus expected share per version (A/B verification)."""
    total = sum(versions.values()) or 1
    return {v: versions.get(v, 0) / total - share for v, share in expected.items()}


async def _run(spec: loadgen.LoadSpec, schedule: Sequence[float] | None) -> loadgen.LoadResult:
    return await loadgen.run(spec, loadgen.print_progress, schedule)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scenarios", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("scenario", choices=["steady", "ramp", "spike", "ab"])
    parser.add_argument("--target", default="localhost:8001")
    parser.add_argument("--model", default="simple")
    parser.add_argument("--version", default="")
    parser.add_argument("--rate", type=float, default=200.0, help="base requests/s")
    parser.add_argument("--peak", type=float, default=1000.0, help="ramp/spike peak requests/s")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--expect", default="", help="ab: expected shares, e.g. 1=0.9,2=0.1")
    parser.add_argument("--split", default="", help="ab: set this split first, e.g. 1=90,2=10")
    parser.add_argument("--admin", help="ab --split: admin address (default: ctl's)")
    parser.add_argument("--admin-token", help="ab --split: admin token (default: ctl's)")
    parser.add_argument("--admin-token-file", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plots", type=Path)
    args = parser.parse_args(argv)

    spec = loadgen.LoadSpec(
        target=args.target,
        model=args.model,
        version=args.version,
        mode="open",
        rate=args.rate,
        duration_s=args.duration,
        max_requests=args.max_requests,
        timeout_s=args.timeout,
    )
    extra: dict[str, Any] = {"scenario": args.scenario}
    if args.scenario == "ab" and args.split:
        weights = [item.strip() for item in args.split.split(",") if item.strip()]
        ctl_args = ["ctl", "split", args.model, *weights]
        if args.admin:
            ctl_args[1:1] = ["--address", args.admin]
        if args.admin_token:
            ctl_args[1:1] = ["--token", args.admin_token]
        if args.admin_token_file:
            ctl_args[1:1] = ["--token-file", str(args.admin_token_file)]
        if cli.main(ctl_args) != 0:
            return 1
        total = sum(int(item.rpartition("=")[2]) for item in weights) or 1
        args.expect = ",".join(
            f"{item.rpartition('=')[0].rpartition(':')[2]}={int(item.rpartition('=')[2]) / total}"
            for item in weights
        )
        extra["split"] = weights
    schedule = {
        "ramp": lambda: ramp(args.rate, args.peak, args.duration),
        "spike": lambda: spike(args.rate, args.peak, args.duration),
    }.get(args.scenario, lambda: None)()
    result = asyncio.run(_run(spec, schedule))
    sys.stderr.write("\n")
    print("\n".join(loadgen.summary_lines(result)))
    if args.scenario == "ab" and args.expect:
        expected = {k: float(v) for k, v in (item.split("=") for item in args.expect.split(","))}
        deviation = ab_deviation(dict(result.versions), expected)
        extra["ab_deviation"] = deviation
        print("ab share - expected  " + "  ".join(f"{k}: {v:+.3f}" for k, v in deviation.items()))
    if args.json:
        args.json.write_text(json.dumps({**result.to_json(), **extra}, indent=2))
    if args.plots:
        for path in loadgen.write_plots(result, args.plots):
            print(f"plot {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
