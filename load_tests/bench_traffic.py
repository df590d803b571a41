"""Benchmark: what a traffic route costs on the data path.

One local Triton server (``simple``) and one gateway process (tgw-edge + control plane,
shipped settings plus a known admin token). The same gateway is measured in turn with:

- ``plain``: no route for ``simple`` (Triton's latest; request bytes forwarded unchanged);
- ``split``: a route splitting ``simple`` 50/50 between two variants that both serve v1 (the
  work on the backend is the same; the edge draws a variant and rewrites the version);
- ``sticky``: the same split, every request with an ``x-gateway-routing-key`` header (a
  sha256 of the key per request);
- ``shadow``: the split plus 100% shadow traffic to ``simple`` v1 (every request also goes to
  the backend a second time, off the primary's path, and is compared output by output);

and direct Triton for reference. Rounds are interleaved (direct, plain, split, sticky, shadow,
direct, ...): the route is changed through the admin service between rounds. Unary ModelInfer
closed loop with h2load at concurrency 1 and 32; medians of rounds; p50/p99, added µs over
``plain``, calls/s and the ratio to ``plain``, CPU per call of the gateway's process tree.

    .venv/bin/python -m load_tests.bench_traffic --duration 3 --reps 3

A benchmark, not a test: it prints figures and never fails on them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from gateway._protos.tgw.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway.devfleet import LocalFleet, ServerSpec, TritonInstallation
from gateway.devfleet.fleet import free_port
from load_tests.bench_gateway import (
    CpuMeter,
    Target,
    check_unary,
    ensure_tool,
    grpc_frame,
    h2load_round,
    percentiles,
    simple_request,
    stop,
)
from load_tests.gateway_process import start_gateway

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
CONFIGURATIONS = ("direct", "plain", "split", "sticky", "shadow")


def _route(shadow: bool) -> admin_pb2.Route:
    route = admin_pb2.Route(
        name="simple",
        variants=[
            admin_pb2.Variant(name="a", version="1", weight=50),
            admin_pb2.Variant(name="b", version="1", weight=50),
        ],
    )
    if shadow:
        route.shadow.CopyFrom(
            admin_pb2.Shadow(target=admin_pb2.Variant(name="s", version="1"), percent=100)
        )
    return route


def configure(admin: admin_pb2_grpc.GatewayAdminStub, configuration: str) -> None:
    """Set the route the configuration measures (none for plain and direct)."""
    try:
        current = admin.GetRoute(admin_pb2.GetRouteRequest(name="simple"), metadata=AUTH)
        revision = current.revision
    except grpc.RpcError:
        revision = 0
    if configuration in ("plain", "direct"):
        if revision:
            admin.DeleteRoute(
                admin_pb2.DeleteRouteRequest(name="simple", expected_revision=revision),
                metadata=AUTH,
            )
    else:
        request = admin_pb2.SetRouteRequest(
            route=_route(configuration == "shadow"), expected_revision=revision
        )
        admin.SetRoute(request, metadata=AUTH)
    time.sleep(0.5)  # the edge applies the snapshot within milliseconds; let it settle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--triton-home", type=Path, default=ROOT / ".triton")
    args = parser.parse_args()
    h2load = ensure_tool("h2load", "nghttp2-client")
    if h2load is None:
        sys.exit("h2load is needed (Debian: nghttp2-client)")
    installation = TritonInstallation.locate(args.triton_home)
    payload = simple_request()
    rows: dict[tuple[str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        frame_file = workdir / "simple.bin"
        frame_file.write_bytes(grpc_frame(payload))
        specs = [ServerSpec("triton-0", models=("simple",))]
        with LocalFleet(installation, ROOT / "model_repository", workdir / "fleet", specs) as fleet:
            backend = fleet.servers["triton-0"].address
            admin_port = free_port()
            process, address = start_gateway(
                [("triton-0", backend)],
                workdir,
                sections={"admin": {"port": admin_port, "token": TOKEN}},
            )
            gateway = Target("gateway", address, process.pid, process)
            direct = Target("direct", backend)
            for target in (gateway, direct):
                target.preflight = grpc.insecure_channel(target.address)
            admin = admin_pb2_grpc.GatewayAdminStub(
                grpc.insecure_channel(f"127.0.0.1:{admin_port}")
            )
            try:
                answer_bytes = len(grpc_frame(check_unary(direct, payload)))
                for rep in range(args.reps):
                    for configuration in CONFIGURATIONS:
                        configure(admin, configuration)
                        target = direct if configuration == "direct" else gateway
                        check_unary(target, payload)
                        headers = (
                            ("x-gateway-routing-key: user-42",) if configuration == "sticky" else ()
                        )
                        for concurrency in args.concurrency:
                            meter = CpuMeter(target.pid)
                            ok, errors, seconds, latencies, _ = h2load_round(
                                h2load, target, frame_file, answer_bytes, concurrency, args,
                                workdir / "h2load.log", headers,
                            )  # fmt: skip
                            cpu, _ = meter.per_request(ok)
                            p50, p99 = percentiles(latencies)
                            rows.setdefault((configuration, concurrency), []).append(
                                {
                                    "p50": p50,
                                    "p99": p99,
                                    "rate": ok / seconds,
                                    "errors": errors,
                                    "cpu": cpu or 0.0,
                                }
                            )
                            print(
                                f"rep {rep + 1} {configuration:7} c={concurrency:<3} "
                                f"p50 {p50:8.0f} µs  p99 {p99:8.0f} µs  {ok / seconds:8.0f}/s"
                                f"  errors {errors}",
                                file=sys.stderr,
                            )
            finally:
                stop(gateway)
    report(rows, args)


def report(rows: dict[tuple[str, int], list[dict[str, float]]], args: argparse.Namespace) -> None:
    def median(configuration: str, concurrency: int, key: str) -> float:
        return statistics.median(r[key] for r in rows[(configuration, concurrency)])

    print(
        f"\n{args.reps} interleaved rounds of {args.duration:g} s each, medians; "
        "unary ModelInfer of `simple` via h2load (1 connection)"
    )
    header = f"{'config':8} {'c':>3} {'p50 µs':>8} {'p99 µs':>8} {'+p50':>6} {'+p99':>6}"
    print(header + f" {'calls/s':>9} {'x plain':>8} {'CPU µs':>7} {'errors':>6}")
    for concurrency in args.concurrency:
        base: dict[str, Any] = {k: median("plain", concurrency, k) for k in ("p50", "p99", "rate")}
        for configuration in CONFIGURATIONS:
            p50 = median(configuration, concurrency, "p50")
            p99 = median(configuration, concurrency, "p99")
            rate = median(configuration, concurrency, "rate")
            cpu = median(configuration, concurrency, "cpu")
            errors = sum(r["errors"] for r in rows[(configuration, concurrency)])
            print(
                f"{configuration:8} {concurrency:>3} {p50:8.0f} {p99:8.0f} "
                f"{p50 - base['p50']:+6.0f} {p99 - base['p99']:+6.0f} {rate:9.0f} "
                f"{rate / base['rate']:8.2f} {cpu:7.1f} {errors:6.0f}"
            )


if __name__ == "__main__":
    main()
