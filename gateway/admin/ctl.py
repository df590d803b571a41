"""``triton-gateway ctl``: every admin call from the command line.

Readable tables by default, ``--json`` for scripts. The admin address and token come from
flags, else the environment (GATEWAY_ADMIN_ADDRESS, GATEWAY_ADMIN__TOKEN,
GATEWAY_ADMIN__TOKEN_FILE), else the gateway's settings (``--config``) and the token file the
gateway keeps in its state folder. Changes are read-modify-write against the revision read:
when someone else changed the route in between, the call is refused (ABORTED) rather than
overwriting their change.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from gateway._protos.tgw.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway.admin.auth import TOKEN_FILE, read_token
from gateway.config_errors import ConfigError, load_checked
from gateway.control.runtime import default_runtime_dir
from gateway.settings import GatewaySettings
from gateway.traffic.routes import variant_name

Printer = Callable[[str], None]


class CtlError(Exception):
    """What the operator is told, in one line."""


def _common_options(parser: argparse.ArgumentParser, *, after_action: bool = False) -> None:
    """The options of every action, accepted before the action and after it. After it, one
    not given leaves the value given before it (or its default) as it is."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_action else value

    parser.add_argument(
        "--address",
        default=default(None),
        help="admin address host:port (default: from the settings)",
    )
    parser.add_argument(
        "--token",
        default=default(None),
        help="admin token (default: GATEWAY_ADMIN__TOKEN or the token file)",
    )
    parser.add_argument(
        "--token-file", type=Path, default=default(None), help="file holding the admin token"
    )
    parser.add_argument(
        "--config", type=Path, default=default(None), help="the gateway's settings file"
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=default(None),
        help="CA of a TLS admin port (default: admin.tls.cert_file of the settings)",
    )
    parser.add_argument(
        "--cert-file", type=Path, default=default(None), help="client certificate (mutual TLS)"
    )
    parser.add_argument(
        "--key-file", type=Path, default=default(None), help="client key (mutual TLS)"
    )
    parser.add_argument(
        "--json", action="store_true", default=default(False), help="print JSON instead of tables"
    )
    parser.add_argument("--timeout", type=float, default=default(30.0), help="seconds per call")


def add_parser(commands: Any) -> None:
    # No abbreviations: `ctl shadow --to` must not be read as the ctl-wide --token.
    ctl = commands.add_parser(
        "ctl", help="change routes, drains and models of a running gateway", allow_abbrev=False
    )
    _common_options(ctl)
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _common_options(common, after_action=True)  # `ctl routes --json`, as the README writes it
    actions = ctl.add_subparsers(required=True, metavar="ACTION")

    def action(
        name: str, help_text: str, run: Callable[[Admin, argparse.Namespace], Any]
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, allow_abbrev=False, parents=[common]
        )
        parser.set_defaults(run=lambda args: _run(args, run))
        return parser

    action("routes", "list the routes with their revisions", lambda a, _: a.list_routes())
    action("route", "show one route", lambda a, args: a.route(args.model)).add_argument("model")
    split = action("split", "set a route's weights: ctl split classifier 1=90 2=10", _split)
    split.add_argument("model")
    split.add_argument(
        "weights",
        nargs="+",
        metavar="[MODEL:]VERSION=WEIGHT",
        help="VERSION 'latest' for the latest",
    )
    key = action("key", "set where a route reads its sticky routing key", _key)
    key.add_argument("model")
    key.add_argument("--header", help="request header holding the key")
    key.add_argument("--parameter", help="string request parameter holding it")
    key.add_argument("--salt", help="hash salt (changing it reshuffles every key)")
    shadow = action("shadow", "mirror a share of a route's requests to a variant", _shadow)
    shadow.add_argument("model")
    shadow.add_argument("--to", metavar="[MODEL:]VERSION", help="the variant mirrored to")
    shadow.add_argument("--percent", type=float, help="share of requests mirrored, 0-100")
    shadow.add_argument("--atol", type=float, default=0.0)
    shadow.add_argument("--rtol", type=float, default=0.0)
    shadow.add_argument("--off", action="store_true", help="stop mirroring")
    action("unroute", "remove a route (Triton's latest again)", _unroute).add_argument("model")
    _add_rollout(
        action(
            "rollout",
            "progressive rollouts: start|status|history|pause|resume|promote|abort MODEL, or list",
            _rollout,
        )
    )
    action("backends", "list the backends", lambda a, _: a.backends())
    models = action(
        "models",
        "models published from the repository: what serves where, rollouts",
        lambda a, args: a.models(args.model),
    )
    models.add_argument("model", nargs="?", default="", help="one model, with its history")
    restore = action(
        "restore",
        "serve again a version a rollout withheld: ctl restore classifier 2",
        lambda a, args: a.restore(args.model, args.version),
    )
    restore.add_argument("model")
    restore.add_argument("version")
    drain = action(
        "drain", "stop sending new calls to a backend", lambda a, args: a.drain(args.name, True)
    )
    drain.add_argument("name")
    undrain = action(
        "undrain", "send calls to a backend again", lambda a, args: a.drain(args.name, False)
    )
    undrain.add_argument("name")
    load = action(
        "load",
        "load a model on every backend, one first",
        lambda a, args: a.fleet(args.model, True),
    )
    load.add_argument("model")
    unload = action(
        "unload",
        "unload a model from every backend, one first",
        lambda a, args: a.fleet(args.model, False),
    )
    unload.add_argument("model")


def _add_rollout(rollout: argparse.ArgumentParser) -> None:
    rollout.add_argument(
        "what",
        choices=["list", "start", "status", "history", "pause", "resume", "promote", "abort"],
    )
    rollout.add_argument("model", nargs="?", default="")
    rollout.add_argument("--to", metavar="[MODEL:]VERSION", help="start: the candidate")
    rollout.add_argument("--steps", help="start: percents per step, 0 = shadow (e.g. 0,5,50,100)")
    rollout.add_argument("--min-step", type=float, help="start: seconds each step lasts at least")
    rollout.add_argument("--min-requests", type=int, help="start: calls each step needs at least")
    rollout.add_argument(
        "--unload-replaced",
        action=argparse.BooleanOptionalAction,
        help="start: once promoted, unload the replaced version (default: rollout settings)",
    )
    rollout.add_argument(
        "--unload-rolled-back",
        action=argparse.BooleanOptionalAction,
        help="start: once rolled back, unload the candidate (default: rollout settings)",
    )


class Admin:
    """One connection to the admin service."""

    def __init__(
        self,
        address: str,
        token: str,
        timeout_s: float,
        as_json: bool,
        out: Printer,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.address = address
        self._channel = (
            grpc.insecure_channel(address)
            if credentials is None
            else grpc.secure_channel(address, credentials)
        )
        self._stub = admin_pb2_grpc.GatewayAdminStub(self._channel)  # type: ignore[no-untyped-call]
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._timeout = timeout_s
        self._json = as_json
        self._out = out

    def close(self) -> None:
        self._channel.close()

    def call(self, method: str, request: Message) -> Any:
        return getattr(self._stub, method)(request, timeout=self._timeout, metadata=self._metadata)

    def get_route(self, name: str) -> admin_pb2.Route | None:
        try:
            route: admin_pb2.Route = self.call("GetRoute", admin_pb2.GetRouteRequest(name=name))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return route

    def set_route(self, route: admin_pb2.Route, revision: int) -> None:
        request = admin_pb2.SetRouteRequest(route=route, expected_revision=revision)
        self._show_route(self.call("SetRoute", request))

    def list_routes(self) -> None:
        routes = self.call("ListRoutes", admin_pb2.ListRoutesRequest()).routes
        if self._json:
            self._print_json([_as_dict(r) for r in routes])
            return
        rows = [["ROUTE", "REVISION", "VARIANTS", "KEY", "SHADOW"]]
        rows += [
            [r.name, str(r.revision), _variants(r), _key_text(r), _shadow_text(r)] for r in routes
        ]
        self._table(rows)

    def route(self, name: str) -> None:
        route = self.get_route(name)
        if route is None:
            raise CtlError(f"model '{name}' has no route")
        self._show_route(route)

    def backends(self) -> None:
        backends = self.call("ListBackends", admin_pb2.ListBackendsRequest()).backends
        if self._json:
            self._print_json([_as_dict(b) for b in backends])
            return
        rows = [
            ["BACKEND", "ADDRESS", "READY", "DRAINED", "BREAKER", "IN FLIGHT", "LATENCY", "MODELS"]
        ]
        for b in backends:
            latency_ms = b.latency.ToNanoseconds() / 1e6
            rows.append(
                [
                    b.name,
                    b.address,
                    "yes" if b.ready else "no",
                    "yes" if b.drained else "no",
                    _breaker(b),
                    str(b.in_flight),
                    f"{latency_ms:.2f} ms" if latency_ms else "-",
                    str(len(b.ready_models)),
                ]
            )
        self._table(rows)

    def models(self, name: str) -> None:
        found = self.call("ListModels", admin_pb2.ListModelsRequest(name=name)).models
        if self._json:
            self._print_json([_as_dict(m) for m in found])
            return
        if not name:
            rows = [
                ["MODEL", "STATE", "VERSIONS", "SHA256", "WITHHELD", "BACKENDS", "LAST ROLLOUT"]
            ]
            for m in found:
                last = m.history[-1] if m.history else None
                rows.append(
                    [
                        m.name,
                        m.state,
                        ",".join(m.served_versions) or "-",
                        m.sha256[:12] or "-",
                        ",".join(w.version for w in m.withheld) or "-",
                        ", ".join(f"{b.backend}:{','.join(b.versions) or '-'}" for b in m.backends),
                        f"{last.event} {_when(last.at)}" if last else "-",
                    ]
                )
            self._table(rows)
            return
        for m in found:
            self._out(f"model {m.name}  {m.state}  sha256 {m.sha256 or '-'}")
            for w in m.withheld:
                self._out(
                    f"withheld: version {w.version} since {_when(w.at)} ({w.reason}); "
                    f"'ctl restore {m.name} {w.version}' serves it again"
                )
            rows = [["BACKEND", "VERSIONS", "SHA256"]]
            rows += [
                [b.backend, ",".join(b.versions) or "-", b.sha256[:12] or "-"] for b in m.backends
            ]
            self._table(rows)
            rows = [["WHEN", "EVENT", "SHA256", "SECONDS", "DETAIL"]]
            rows += [
                [
                    _when(e.at),
                    e.event,
                    e.sha256[:12],
                    f"{e.duration.ToNanoseconds() / 1e9:.1f}" if e.HasField("duration") else "-",
                    e.detail,
                ]
                for e in m.history
            ]
            self._table(rows)

    def restore(self, model: str, version: str) -> None:
        restored = self.call(
            "RestoreVersion", admin_pb2.RestoreVersionRequest(model=model, version=version)
        ).restored
        if self._json:
            self._print_json(_as_dict(restored))
            return
        self._out(f"version {restored.version} of {model} is served again (once rolled out)")

    def show_rollout(self, rollout: admin_pb2.Rollout, history: bool) -> None:
        if self._json:
            self._print_json(_as_dict(rollout))
            return
        steps = list(rollout.plan.steps)
        percent = steps[rollout.step] if steps else 0.0
        at = "shadow" if percent == 0 else f"{percent:g}%"
        self._out(
            f"rollout {rollout.route}: {rollout.candidate.name} after {rollout.baseline.name}  "
            f"{rollout.status}  step {rollout.step + 1}/{len(steps)} ({at})  steps "
            + " ".join("shadow" if s == 0 else f"{s:g}%" for s in steps)
        )
        if rollout.current:
            self._out("current step so far:")
            self._table(_evidence_rows(rollout.current))
        if history:
            for transition in rollout.history:
                self._out(
                    f"{_when(transition.at)}  {transition.event}  step {transition.step + 1}  "
                    f"{transition.reason}"
                )
                if transition.evidence:
                    self._table(
                        [["  " + row[0], *row[1:]] for row in _evidence_rows(transition.evidence)]
                    )

    def drain(self, name: str, drained: bool) -> None:
        method = "DrainBackend" if drained else "UndrainBackend"
        backend = self.call(method, admin_pb2.BackendRequest(name=name))
        if self._json:
            self._print_json(_as_dict(backend))
        else:
            self._out(f"{backend.name}: {'drained' if backend.drained else 'taking calls'}")

    def fleet(self, model: str, load: bool) -> int:
        method = "LoadModel" if load else "UnloadModel"
        result = self.call(method, admin_pb2.FleetModelRequest(name=model))
        if self._json:
            self._print_json(_as_dict(result))
        else:
            for item in result.results:
                self._out(f"{item.backend}: {'ok' if item.ok else 'FAILED: ' + item.message}")
            verb = "loaded" if load else "unloaded"
            self._out(
                f"{model}: {verb} everywhere"
                if result.completed
                else f"{model}: stopped at the first failure"
            )
        return 0 if result.completed else 1

    def _show_route(self, route: admin_pb2.Route) -> None:
        if self._json:
            self._print_json(_as_dict(route))
            return
        self._out(f"route {route.name}  revision {route.revision}")
        total = sum(v.weight for v in route.variants) or 1
        rows = [["VARIANT", "MODEL", "VERSION", "WEIGHT", "SHARE"]]
        rows += [
            [
                v.name,
                v.model,
                v.version or "latest",
                str(v.weight),
                f"{100 * v.weight / total:.1f}%",
            ]
            for v in route.variants
        ]
        self._table(rows)
        self._out(f"key: {_key_text(route)}")
        self._out(f"shadow: {_shadow_text(route)}")
        if route.figures:
            self._out("since the data plane started:")
            rows = [["VARIANT", "CALLS", "ERRORS", "P50", "P99", "SHADOW AGREE", "ARGMAX AGREE"]]
            rows += [_figures_row(f) for f in route.figures]
            self._table(rows)

    def _table(self, rows: list[list[str]]) -> None:
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self._out(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )

    def _print_json(self, value: Any) -> None:
        self._out(json.dumps(value, indent=2))


def parse_variant(route: str, text: str) -> admin_pb2.Variant:
    """``[MODEL:]VERSION`` ('latest' or '' for the latest version)."""
    model, _, version = text.rpartition(":")
    model = model or route
    version = "" if version in ("", "latest") else version
    return admin_pb2.Variant(name=variant_name(route, model, version), model=model, version=version)


def parse_weight(route: str, text: str) -> admin_pb2.Variant:
    target, sep, weight = text.rpartition("=")
    if not sep or not target:
        raise CtlError(f"'{text}' is not [MODEL:]VERSION=WEIGHT (for example 2=10)")
    try:
        value = int(weight)
    except ValueError:
        raise CtlError(f"weight '{weight}' of '{text}' is not a whole number") from None
    if value < 0:
        raise CtlError(f"weight {value} of '{text}' is negative: weights are 0 or more")
    variant = parse_variant(route, target)
    variant.weight = value
    return variant


def _split(admin: Admin, args: argparse.Namespace) -> None:
    current = admin.get_route(args.model)
    route = admin_pb2.Route()
    if current is not None:
        route.CopyFrom(current)
    del route.variants[:]
    route.name = args.model
    route.variants.extend(parse_weight(args.model, text) for text in args.weights)
    admin.set_route(route, current.revision if current is not None else 0)


def _key(admin: Admin, args: argparse.Namespace) -> None:
    current = _existing(admin, args.model)
    if args.header is not None:
        current.key.header = args.header
    if args.parameter is not None:
        current.key.parameter = args.parameter
    if args.salt is not None:
        current.key.salt = args.salt
    admin.set_route(current, current.revision)


def _shadow(admin: Admin, args: argparse.Namespace) -> None:
    current = _existing(admin, args.model)
    if args.off:
        current.ClearField("shadow")
    else:
        if args.to is None or args.percent is None:
            raise CtlError("say where to mirror and how much: --to VERSION --percent P (or --off)")
        current.shadow.CopyFrom(
            admin_pb2.Shadow(
                target=parse_variant(args.model, args.to),
                percent=args.percent,
                atol=args.atol,
                rtol=args.rtol,
            )
        )
    admin.set_route(current, current.revision)


def _rollout(admin: Admin, args: argparse.Namespace) -> None:
    if args.what == "list":
        found = admin.call("ListRollouts", admin_pb2.ListRolloutsRequest()).rollouts
        if admin._json:
            admin._print_json([_as_dict(r) for r in found])
            return
        for rollout in found:
            admin.show_rollout(rollout, history=False)
        return
    if not args.model:
        raise CtlError(f"name the model: ctl rollout {args.what} MODEL")
    request = admin_pb2.RolloutRequest(route=args.model)
    if args.what == "start":
        if args.to is None:
            raise CtlError("say which version to bring in: ctl rollout start MODEL --to VERSION")
        plan = admin_pb2.RolloutPlan()
        if args.steps:
            try:
                plan.steps.extend(float(step) for step in args.steps.split(","))
            except ValueError:
                raise CtlError(f"--steps '{args.steps}' is not a list of percents") from None
        if args.min_step is not None:
            plan.min_step.FromNanoseconds(int(args.min_step * 1e9))
        if args.min_requests is not None:
            plan.min_requests = args.min_requests
        if args.unload_replaced is not None:
            plan.unload_replaced = args.unload_replaced
        if args.unload_rolled_back is not None:
            plan.unload_rolled_back = args.unload_rolled_back
        started = admin.call(
            "StartRollout",
            admin_pb2.StartRolloutRequest(
                route=args.model, candidate=parse_variant(args.model, args.to), plan=plan
            ),
        )
        admin.show_rollout(started, history=False)
        return
    methods = {
        "status": "GetRollout",
        "history": "GetRollout",
        "pause": "PauseRollout",
        "resume": "ResumeRollout",
        "promote": "PromoteRollout",
        "abort": "AbortRollout",
    }
    admin.show_rollout(admin.call(methods[args.what], request), history=args.what == "history")


def _evidence_rows(evidence: Any) -> list[list[str]]:
    rows = [["GATE", "OBSERVED", "BOUND", "THRESHOLD", "OUTCOME", "CALLS"]]
    for e in evidence:
        rows.append(
            [
                e.gate,
                f"{e.observed:.4g}" if e.HasField("observed") else "-",
                f"{e.bound:.4g}" if e.HasField("bound") else "-",
                f"{e.threshold:.4g}",
                e.outcome,
                str(e.candidate_calls),
            ]
        )
    return rows


def _unroute(admin: Admin, args: argparse.Namespace) -> None:
    current = _existing(admin, args.model)
    admin.call(
        "DeleteRoute",
        admin_pb2.DeleteRouteRequest(name=args.model, expected_revision=current.revision),
    )
    if not admin._json:
        admin._out(f"route {args.model} removed")


def _existing(admin: Admin, name: str) -> admin_pb2.Route:
    route = admin.get_route(name)
    if route is None:
        raise CtlError(
            f"model '{name}' has no route: create one with 'ctl split {name} VERSION=WEIGHT ...'"
        )
    return route


def _run(args: argparse.Namespace, run: Callable[[Admin, argparse.Namespace], Any]) -> int:
    address, token, credentials = _connection(args)
    admin = Admin(address, token, args.timeout, args.json, print, credentials)
    try:
        result = run(admin, args)
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            raise CtlError(
                f"cannot reach the admin service at {address}: {exc.details()}"
            ) from None
        raise CtlError(f"{code.name}: {exc.details()}") from None
    finally:
        admin.close()
    return result if isinstance(result, int) else 0


def _connection(args: argparse.Namespace) -> tuple[str, str, grpc.ChannelCredentials | None]:
    try:
        settings = load_checked(args.config)
    except ConfigError as exc:
        raise CtlError(str(exc)) from None
    admin = settings.admin
    port = admin.listen_port(settings.server.port)
    address = args.address or os.environ.get("GATEWAY_ADMIN_ADDRESS") or f"{admin.host}:{port}"
    return address, _token(args, settings), _credentials(args, settings)


def _credentials(
    args: argparse.Namespace, settings: GatewaySettings
) -> grpc.ChannelCredentials | None:
    ca = args.ca_file or settings.admin.tls.cert_file
    if ca is None and args.cert_file is None:
        return None
    if (args.cert_file is None) != (args.key_file is None):
        raise CtlError("pass --cert-file and --key-file together")
    try:
        return grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes() if ca else None,
            private_key=args.key_file.read_bytes() if args.key_file else None,
            certificate_chain=args.cert_file.read_bytes() if args.cert_file else None,
        )
    except OSError as exc:
        raise CtlError(f"cannot read {exc.filename}: {exc.strerror}") from None


def _token(args: argparse.Namespace, settings: GatewaySettings) -> str:
    admin = settings.admin
    if args.token:
        return str(args.token)
    token_file = args.token_file or admin.token_file
    if admin.token is not None and args.token_file is None:
        return admin.token.get_secret_value()
    if token_file is None:
        state_dir = admin.state_dir or default_runtime_dir(settings.server.port)
        if state_dir is None:
            raise CtlError(
                "no admin token: pass --token or --token-file, or --config with the gateway's "
                "settings file"
            )
        token_file = state_dir / TOKEN_FILE
    try:
        return read_token(token_file)
    except Exception as exc:
        raise CtlError(
            f"{exc}: pass --token or --token-file, or --config with the gateway's settings file"
        ) from None


def _as_dict(message: Message) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _figures_row(shown: admin_pb2.VariantFigures) -> list[str]:
    def ms(duration: Any) -> str:
        return f"{duration.ToNanoseconds() / 1e6:.2f} ms" if shown.calls else "-"

    def share(part: int, whole: int) -> str:
        return f"{part}/{whole} ({100 * part / whole:.1f}%)" if whole else "-"

    return [
        shown.variant,
        str(shown.calls),
        str(shown.errors),
        ms(shown.p50),
        ms(shown.p99),
        share(shown.shadow_agreeing, shown.shadow_compared),
        share(shown.argmax_agreeing, shown.argmax_rows),
    ]


def _when(at: Any) -> str:
    return str(at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")) + " UTC"


def _variants(route: admin_pb2.Route) -> str:
    """Each variant's share of the calls: weights are relative (a rollout sets them in
    hundredths of a percent), so the share is what a reader compares."""
    total = sum(v.weight for v in route.variants) or 1
    return " ".join(f"{v.name}={100 * v.weight / total:g}%" for v in route.variants)


def _key_text(route: admin_pb2.Route) -> str:
    return f"header {route.key.header}, parameter {route.key.parameter}, salt {route.key.salt!r}"


def _shadow_text(route: admin_pb2.Route) -> str:
    if not route.HasField("shadow"):
        return "off"
    shadow = route.shadow
    return (
        f"{shadow.percent:g}% to {shadow.target.name} (atol {shadow.atol:g}, rtol {shadow.rtol:g})"
    )


def _breaker(backend: admin_pb2.Backend) -> str:
    state = admin_pb2.BreakerState.Name(backend.breaker).removeprefix("BREAKER_STATE_").lower()
    open_models = [b.model for b in backend.model_breakers]
    return state + (f" ({', '.join(open_models)} open)" if open_models else "")
