"""``triton-gateway``: serve the gateway, run a local Triton fleet, or both as a demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__
from gateway.admin import ctl
from gateway.admin.auth import AdminTokenError
from gateway.app import Gateway
from gateway.config_errors import ConfigError, load_checked
from gateway.control.errors import ControlError
from gateway.devfleet import FleetError, LocalFleet, ServerSpec, TritonInstallation
from gateway.devfleet.fleet import detached_servers, is_running, stop_detached
from gateway.observability.logging import configure_logging
from gateway.settings import GatewaySettings
from gateway.traffic.store import RouteStoreError

DEFAULT_TRITON_HOME = Path(os.environ.get("GATEWAY_TRITON_HOME", ".triton"))
DEFAULT_FLEET_DIR = Path(".fleet")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except (
        ConfigError,
        FleetError,
        ControlError,
        ctl.CtlError,
        RouteStoreError,
        AdminTokenError,
    ) as exc:
        print(f"triton-gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`ctl routes | head`): nothing more to say, no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="triton-gateway",
        description="Model-aware gRPC gateway in front of NVIDIA Triton Inference Servers.",
    )
    # The gateway's own identity lives here and in triton_gateway_build_info; ServerMetadata
    # answers with the fleet's, as Triton does.
    parser.add_argument("--version", action="version", version=f"triton-gateway {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="YAML settings file (GATEWAY_* env overrides)")
    serve.set_defaults(run=_serve)

    check = commands.add_parser(
        "check", help="validate a settings file without starting (exit 2 with the reason)"
    )
    check.add_argument("--config", type=Path, required=True, help="YAML settings file")
    check.set_defaults(run=_check)

    fleet = commands.add_parser("fleet", help="local Triton servers for development")
    fleet_commands = fleet.add_subparsers(required=True, metavar="ACTION")
    up = fleet_commands.add_parser("up", help="start local Triton servers in the background")
    _fleet_options(up)
    up.set_defaults(run=_fleet_up)
    status = fleet_commands.add_parser("status", help="the servers 'fleet up' started")
    status.add_argument("--work-dir", type=Path, default=DEFAULT_FLEET_DIR)
    status.set_defaults(run=_fleet_status)
    down = fleet_commands.add_parser("down", help="stop the servers started by 'fleet up'")
    down.add_argument("--work-dir", type=Path, default=DEFAULT_FLEET_DIR)
    down.set_defaults(run=_fleet_down)

    demo = commands.add_parser(
        "demo", help="start a local fleet and the gateway in front of it (Ctrl-C stops both)"
    )
    _fleet_options(demo)
    demo.add_argument("--config", type=Path, help="gateway settings; backends come from the fleet")
    demo.add_argument("--host", default="127.0.0.1", help="gateway listen address")
    demo.add_argument("--port", type=int, default=8001, help="gateway gRPC port")
    demo.set_defaults(run=_demo)

    ctl.add_parser(commands)
    return parser


def _fleet_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", type=int, default=2, help="number of Triton servers")
    parser.add_argument("--base-port", type=int, default=8101, help="gRPC port of the first server")
    parser.add_argument("--models", type=Path, default=Path("model_repository"))
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_FLEET_DIR)
    parser.add_argument("--triton-home", type=Path, default=DEFAULT_TRITON_HOME)


def _fleet(
    args: argparse.Namespace, *, detached: bool, models: tuple[str, ...] | None = None
) -> LocalFleet:
    """Servers loading ``models`` at start (None: every model of the repository)."""
    specs = [
        ServerSpec(name=f"triton-{i}", grpc_port=args.base_port + i, models=models)
        for i in range(args.servers)
    ]
    return LocalFleet(
        TritonInstallation.locate(args.triton_home),
        args.models,
        args.work_dir,
        specs,
        detached=detached,
    )


def _serve(args: argparse.Namespace) -> int:
    settings = load_checked(args.config)
    configure_logging(settings.logging)
    asyncio.run(Gateway(settings, config_path=args.config).run_until_signal())
    return 0


def _fleet_up(args: argparse.Namespace) -> int:
    fleet = _fleet(args, detached=True)
    for server in fleet.start():
        print(f"{server.name}\t{server.address}\tpid {server.pid}\tlog {server.log_path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    settings = load_checked(args.config)
    discovery = settings.discovery
    if discovery.source == "static":
        source = f"static, {len(settings.backends)} backend(s)"
    elif discovery.source == "dns" and discovery.dns is not None:
        source = f"dns {discovery.dns.record} {discovery.dns.name}"
    else:
        source = f"consul service {discovery.consul.service if discovery.consul else '?'}"
    admin = settings.admin
    print(
        f"{args.config}: valid; public port {settings.server.port}, admin "
        f"{admin.host}:{admin.listen_port(settings.server.port)}, metrics "
        f"{settings.metrics.port if settings.metrics.enabled else 'off'}; discovery {source}; "
        f"traffic state {admin.state_store}"
    )
    return 0


def _fleet_status(args: argparse.Namespace) -> int:
    servers = detached_servers(args.work_dir)
    if servers is None:
        print(f"no fleet was started from {args.work_dir} ('triton-gateway fleet up' starts one)")
        return 0
    for server in servers:
        state = "running" if is_running(server) else "stopped"
        print(f"{server.name}\t{server.address}\tpid {server.pid}\t{state}\tlog {server.log_path}")
    return 0


def _fleet_down(args: argparse.Namespace) -> int:
    stopped = stop_detached(args.work_dir)
    if stopped is None:
        print(f"no fleet was started from {args.work_dir}: nothing to stop")
        return 0
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def _demo(args: argparse.Namespace) -> int:
    base = load_checked(args.config)
    configure_logging(base.logging)
    # The servers start empty: the gateway pushes the repository's models to them, as it does
    # to a real fleet (the local servers have no GPU: GPU instances are pushed as CPU ones).
    with _fleet(args, detached=False, models=()) as fleet:
        settings = GatewaySettings(
            **{
                **base.model_dump(),
                "server": {**base.server.model_dump(), "host": args.host, "port": args.port},
                "repository": {
                    **base.repository.model_dump(),
                    "path": args.models,
                    "push": True,
                    "cpu_only_backends": True,
                },
                "backends": [
                    {"name": s.name, "address": s.address} for s in fleet.servers.values()
                ],
            }
        )
        print(
            f"demo: gateway on localhost:{args.port} in front of "
            + ", ".join(f"{s.name}@{s.address}" for s in fleet.servers.values()),
            file=sys.stderr,
        )
        asyncio.run(Gateway(settings).run_until_signal())
    return 0
