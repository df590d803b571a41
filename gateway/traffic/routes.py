"""A traffic route as the admin service takes it: checked, its defaults filled in, and turned
into the snapshot form tgw-edge serves it from (the edge makes every per-request choice)."""

from __future__ import annotations

import re

import grpc

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway._protos.tgw.control.v1 import control_pb2
from gateway.settings import TrafficSettings

_VERSION = re.compile(r"[1-9][0-9]{0,17}")
_HEADER = re.compile(r"[a-z0-9_.-]+")
_VARIANT_NAME = re.compile(r"[\x21-\x7e]{1,128}")


class AdminError(Exception):
    """An admin call refused, with the status it is answered with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def variant_name(route: str, model: str, version: str) -> str:
    """The default name of a variant: its version, or ``model:version`` for another model."""
    shown = version or "latest"
    return shown if model == route else f"{model}:{shown}"


def normalized(route: admin_pb2.Route, defaults: TrafficSettings) -> admin_pb2.Route:
    """A copy with every default filled in, checked: AdminError(INVALID_ARGUMENT) otherwise."""
    filled = admin_pb2.Route()
    filled.CopyFrom(route)
    name = filled.name
    if not name:
        raise _invalid("a route needs the model name clients send")
    if not filled.variants:
        raise _invalid(f"route '{name}' needs at least one variant")
    for variant in [*filled.variants, *([filled.shadow.target] if _shadowed(filled) else [])]:
        _fill_variant(name, variant)
    names = [v.name for v in filled.variants]
    if len(set(names)) != len(names):
        raise _invalid(f"route '{name}' names a variant twice: {', '.join(names)}")
    if _shadowed(filled):
        # A shadow target named like a variant is that variant: its own calls are not
        # mirrored to it (tgw-edge compares by name).
        target = filled.shadow.target
        same = next((v for v in filled.variants if v.name == target.name), None)
        if same is not None and (same.model, same.version) != (target.model, target.version):
            raise _invalid(
                f"route '{name}': shadow target '{target.name}' is named like a variant serving "
                f"{same.model} version {same.version or 'latest'}: name it otherwise"
            )
    if sum(v.weight for v in filled.variants) <= 0:
        raise _invalid(f"the weights of route '{name}' sum to zero: give one variant a weight")
    key = filled.key
    key.header = key.header or defaults.key_header
    key.parameter = key.parameter or defaults.key_parameter
    key.salt = key.salt or name
    if not _HEADER.fullmatch(key.header):
        raise _invalid(
            f"routing key header '{key.header}' must be lower-case letters, digits, '-', '_' or '.'"
        )
    shadow = filled.shadow
    if not 0 <= shadow.percent <= 100:
        raise _invalid(f"shadow percent {shadow.percent} must be within 0 and 100")
    if shadow.atol < 0 or shadow.rtol < 0:
        raise _invalid("shadow atol and rtol must not be negative")
    if _shadowed(filled):
        shadow.atol = shadow.atol or defaults.shadow_atol
        shadow.rtol = shadow.rtol or defaults.shadow_rtol
    else:
        filled.ClearField("shadow")
    return filled


def targets(route: admin_pb2.Route) -> list[tuple[str, str]]:
    """(model, version) of every variant given traffic and of the shadow target: what must be
    servable. A variant at weight 0 (a rolled-back candidate kept for inspection) need not be:
    only a call forcing it by name reaches it."""
    found = [(v.model, v.version) for v in route.variants if v.weight > 0]
    if _shadowed(route):
        found.append((route.shadow.target.model, route.shadow.target.version))
    return found


def edge_route(route: admin_pb2.Route, defaults: TrafficSettings) -> control_pb2.TrafficRoute:
    """The snapshot form of a normalized route."""
    models = {v.model for v in route.variants}
    # An alias route (every variant serves one other model): requests naming a version go
    # to that version of the model it stands for.
    versioned = next(iter(models)) if len(models) == 1 and route.name not in models else ""
    edge = control_pb2.TrafficRoute(
        name=route.name,
        revision=route.revision,
        variants=[_edge_variant(v) for v in route.variants],
        key_header=route.key.header,
        key_parameter=route.key.parameter,
        salt=route.key.salt,
        versioned_model=versioned,
    )
    if _shadowed(route):
        edge.shadow.CopyFrom(
            control_pb2.Shadow(
                target=_edge_variant(route.shadow.target),
                fraction=route.shadow.percent / 100,
                max_in_flight=defaults.shadow_max_in_flight,
                max_bytes_in_flight=defaults.shadow_max_bytes_in_flight,
                atol=route.shadow.atol,
                rtol=route.shadow.rtol,
            )
        )
    return edge


def _edge_variant(variant: admin_pb2.Variant) -> control_pb2.Variant:
    return control_pb2.Variant(
        name=variant.name, model=variant.model, version=variant.version, weight=variant.weight
    )


def _shadowed(route: admin_pb2.Route) -> bool:
    return (
        route.HasField("shadow")
        and route.shadow.percent > 0
        and bool(
            route.shadow.target.model or route.shadow.target.version or route.shadow.target.name
        )
    )


def _fill_variant(route: str, variant: admin_pb2.Variant) -> None:
    variant.model = variant.model or route
    if variant.version and not _VERSION.fullmatch(variant.version):
        raise _invalid(
            f"variant version '{variant.version}' of route '{route}' must be a version number "
            "(1, 2, ...) or empty for the model's latest"
        )
    variant.name = variant.name or variant_name(route, variant.model, variant.version)
    if not _VARIANT_NAME.fullmatch(variant.name):
        raise _invalid(f"variant name '{variant.name}' must be printable ASCII without spaces")


def _invalid(message: str) -> AdminError:
    return AdminError(grpc.StatusCode.INVALID_ARGUMENT, message)
