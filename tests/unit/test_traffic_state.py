"""Traffic routes as the admin service keeps them: defaults, checks, revisions, the store."""

from __future__ import annotations

import asyncio
import hashlib
import math
from pathlib import Path

import grpc
import pytest

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway._protos.tgw.control.v1 import control_pb2
from gateway.settings import TrafficSettings
from gateway.traffic.figures import VariantTotals, figures
from gateway.traffic.routes import AdminError, edge_route, normalized
from gateway.traffic.state import TrafficState
from gateway.traffic.store import FileRouteStore, RouteStoreError
from tests.support.traffic import bucket

DEFAULTS = TrafficSettings()


def route(name: str = "classifier", **weights: int) -> admin_pb2.Route:
    return admin_pb2.Route(
        name=name,
        variants=[admin_pb2.Variant(version=v.lstrip("v"), weight=w) for v, w in weights.items()],
    )


def test_the_tests_bucket_oracle_is_the_edges() -> None:
    # The edge's unit test pins sha256(b"s\x00k")[:8] = 0x85e238288c85c328.
    assert hashlib.sha256(b"s\x00k").digest()[:8].hex() == "85e238288c85c328"
    assert bucket("s", "k") == 0x85E238288C85C328 % 10_000


def test_defaults_are_filled_in() -> None:
    filled = normalized(route(v1=90, v2=10), DEFAULTS)
    assert [(v.name, v.model, v.version) for v in filled.variants] == [
        ("1", "classifier", "1"),
        ("2", "classifier", "2"),
    ]
    assert (filled.key.header, filled.key.parameter, filled.key.salt) == (
        "x-gateway-routing-key",
        "gateway_routing_key",
        "classifier",
    )
    assert not filled.HasField("shadow")
    alias = admin_pb2.Route(
        name="prod", variants=[admin_pb2.Variant(model="classifier", version="2", weight=1)]
    )
    filled = normalized(alias, DEFAULTS)
    assert filled.variants[0].name == "classifier:2"
    assert edge_route(filled, DEFAULTS).versioned_model == "classifier"
    assert edge_route(normalized(route(v1=1), DEFAULTS), DEFAULTS).versioned_model == ""


def test_a_shadow_gets_the_default_tolerance_and_budget() -> None:
    shadowed = route(v1=1)
    shadowed.shadow.CopyFrom(admin_pb2.Shadow(target=admin_pb2.Variant(version="2"), percent=25))
    edge = edge_route(normalized(shadowed, DEFAULTS), DEFAULTS)
    assert edge.shadow.fraction == 0.25
    assert (edge.shadow.atol, edge.shadow.rtol) == (DEFAULTS.shadow_atol, DEFAULTS.shadow_rtol)
    assert edge.shadow.max_in_flight == DEFAULTS.shadow_max_in_flight
    assert edge.shadow.target.name == "2"


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (route(v1=0, v2=0), "sum to zero"),
        (admin_pb2.Route(name="m"), "at least one variant"),
        (route(v01=1), "version number"),
        (
            admin_pb2.Route(
                name="m",
                variants=[admin_pb2.Variant(name="a", weight=1), admin_pb2.Variant(name="a")],
            ),
            "twice",
        ),
        (admin_pb2.Route(variants=[admin_pb2.Variant(weight=1)]), "model name"),
    ],
)
def test_bad_routes_are_invalid_arguments(bad: admin_pb2.Route, says: str) -> None:
    with pytest.raises(AdminError) as refused:
        normalized(bad, DEFAULTS)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert says in refused.value.message


def _state(path: Path, servable: set[tuple[str, str]] | None = None) -> TrafficState:
    changes: list[int] = []
    state = TrafficState(
        FileRouteStore(path),
        DEFAULTS,
        lambda model, version: servable is None or (model, version) in servable,
        lambda: changes.append(1),
        clock=lambda: 1_700_000_000.0,
    )
    asyncio.run(state.start())
    return state


def test_changes_carry_revisions_and_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "traffic.json"
    state = _state(path)
    created = asyncio.run(state.set_route(route(v1=90, v2=10), 0))
    assert created.revision == 1 and created.updated.seconds == 1_700_000_000
    with pytest.raises(AdminError) as stale:
        asyncio.run(state.set_route(route(v1=80, v2=20), 0))
    assert stale.value.code == grpc.StatusCode.ABORTED
    moved = asyncio.run(state.set_route(route(v1=80, v2=20), created.revision))
    asyncio.run(state.set_drained("triton-a", True))
    again = _state(path)
    assert again.route("classifier") == moved
    assert again.drained() == {"triton-a"}
    assert again.revision == 3


def test_targets_must_be_servable(tmp_path: Path) -> None:
    state = _state(tmp_path / "traffic.json", servable={("classifier", "1")})
    with pytest.raises(AdminError) as missing:
        asyncio.run(state.set_route(route(v1=1, v7=1), 0))
    assert missing.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "classifier version 7" in missing.value.message
    assert state.route("classifier") is None


def test_a_corrupt_state_file_falls_back_to_its_copy_then_refuses(tmp_path: Path) -> None:
    path = tmp_path / "traffic.json"
    state = _state(path)
    created = asyncio.run(state.set_route(route(v1=1), 0))
    path.write_text("{")
    assert _state(path).route("classifier") == created
    assert list(tmp_path.glob("traffic.json.corrupt-*"))
    path.write_text("{")
    (tmp_path / "traffic.json.bak").write_text("[]")
    with pytest.raises(RouteStoreError, match=r"remove .*traffic\.json"):
        _state(path)


@pytest.mark.parametrize("corrupt", [("traffic.json.bak",), ("traffic.json", "traffic.json.bak")])
def test_with_no_good_copy_left_the_refusal_names_the_files_to_remove_and_keeps_them(
    tmp_path: Path, corrupt: tuple[str, ...]
) -> None:
    for name in corrupt:
        (tmp_path / name).write_text("{")
    store = FileRouteStore(tmp_path / "traffic.json")
    with pytest.raises(RouteStoreError) as info:
        store.load_now()
    named = " and ".join(str(tmp_path / name) for name in corrupt)
    assert str(info.value).endswith(f"remove {named} to start with no routes")
    # Nothing is moved aside: the next start refuses as well, until someone decides.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(corrupt)
    with pytest.raises(RouteStoreError):
        store.load_now()


def test_variant_figures_read_the_edges_report() -> None:
    report = control_pb2.VariantReport(
        route="classifier",
        variant="2",
        codes={"OK": 98, "INTERNAL": 1, "INVALID_ARGUMENT": 1},
        faults=1,
        latency_bounds=[0.001, 0.002, 0.005, math.inf],
        latency_counts=[50, 90, 100, 100],
        shadow_results={"agree": 7, "disagree": 3},
        argmax_rows=10,
        argmax_agreeing=9,
    )
    totals = VariantTotals.from_report(report)
    assert (totals.calls, totals.faults) == (100, 1)  # a client's error is not the variant's
    assert totals.quantile(0.5) == pytest.approx(0.001)
    # Rank 99 lies 9/10 into the (0.002, 0.005] bucket.
    assert totals.quantile(0.99) == pytest.approx(0.002 + 0.003 * 0.9)
    shown = figures("2", totals)
    assert (shown.calls, shown.errors, shown.shadow_compared, shown.shadow_agreeing) == (
        100,
        1,
        10,
        7,
    )
    assert shown.p99.ToNanoseconds() == round((0.002 + 0.003 * 0.9) * 1e9)
    assert VariantTotals.from_report(control_pb2.VariantReport()).quantile(0.5) is None


def test_a_followed_state_replaces_ours_only_when_newer(tmp_path: Path) -> None:
    state = _state(tmp_path / "traffic.json")
    asyncio.run(state.set_route(route(v1=1), 0))
    asyncio.run(state.set_route(route(v1=1, v2=1), 1))
    older = admin_pb2.State(revision=1, routes=[normalized(route(v1=1), DEFAULTS)])
    assert not asyncio.run(state._adopt(older)), "it crossed a save of ours: dropped"
    assert state.revision == 2
    newer = admin_pb2.State(revision=3)
    assert asyncio.run(state._adopt(newer))
    assert state.revision == 3 and state.routes() == []
