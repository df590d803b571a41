"""Hostile HTTP/2 clients against a gateway process fronted by tgw-edge (load_tests/hostile.py).

Each attack must be answered at once, as Triton answers the same bytes where Triton has an
answer, while a well-behaved client's calls keep succeeding; afterwards RSS and open fds of
the gateway and of tgw-edge are back near where they started and fresh calls still work.
The fleet (two servers) and the gateway process are this module's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.devfleet import TritonInstallation
from load_tests import hostile

HANDSHAKE_TIMEOUT_S = 2.0
"""What the edge gives a connection to send the HTTP/2 preface (and a first request)."""
GATEWAY_SECTIONS: dict[str, dict[str, Any]] = {
    # The one place to adjust when the edge's settings change names.
    "edge": {"handshake_timeout_s": HANDSHAKE_TIMEOUT_S},
    "health": {"poll_interval_s": 0.5},
}
PARAMS = replace(
    hostile.Params(),
    idle_connections=1100,
    idle_wait_s=HANDSHAKE_TIMEOUT_S + 5.0,
    in_flight_wait_s=10.0,
)
RSS_TOLERANCE_KIB = 32 * 1024
FD_TOLERANCE = 8
PROMPT_S = 1.0
"""An answer slower than this is no answer 'at once'."""


@pytest.fixture(scope="module")
def bench(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[hostile.Bench]:
    workdir = Path(tmp_path_factory.mktemp("hostile"))
    bench = hostile.Bench(triton_installation, workdir, servers=2, sections=GATEWAY_SECTIONS)
    with bench:
        yield bench


@pytest.fixture
def target(bench: hostile.Bench) -> Iterator[hostile.Target]:
    """The gateway under attack; replaced after a test that left it dead or broken, so that
    one failure does not cascade into the next tests."""
    assert bench.target is not None
    yield bench.target
    alive = all(hostile.usage(pid) is not None for pid in bench.target.pids().values())
    if not alive or hostile.probe(bench.target, PARAMS.call_timeout_s):
        bench.restart_dead_backends()
        bench.restart_gateway()


def attack(name: str, target: hostile.Target) -> hostile.Report:
    return hostile.measure(hostile.ATTACKS[name], target, PARAMS)


def assert_unharmed(report: hostile.Report) -> None:
    """The other client never failed, both processes live, nothing left broken, and RSS and
    fds are back near their level before the attack."""
    assert report.survived == {"gateway": True, "edge": True}
    assert report.others.failures == 0, report.others.examples
    assert report.others.ok > 0
    assert report.left_broken == []
    for name, figures in report.processes.items():
        growth = figures.rss_growth_kib()
        assert growth is not None and growth <= RSS_TOLERANCE_KIB, (name, figures)
        fds = figures.fds_growth()
        assert fds is not None and fds <= FD_TOLERANCE, (name, figures)


def assert_edge_memory_bounded(report: hostile.Report) -> None:
    growth = report.processes["edge"].rss_peak_growth_kib()
    assert growth is not None and growth <= RSS_TOLERANCE_KIB, report.processes["edge"]


def assert_answered_as_triton(report: hostile.Report, *, message_prefix: int = 0) -> None:
    """Every case: Triton's status (and message, or its first ``message_prefix`` characters),
    at once."""
    assert set(report.finding.gateway) == set(report.finding.triton)
    for case, triton in report.finding.triton.items():
        gateway = report.finding.gateway[case]
        assert gateway.code == triton.code, (case, gateway, triton)
        limit = message_prefix or None
        assert gateway.message[:limit] == triton.message[:limit], (case, gateway, triton)
        assert gateway.elapsed_s is not None and gateway.elapsed_s < PROMPT_S, (case, gateway)


def connection_refused(outcome: hostile.Outcome) -> bool:
    return outcome.code.split()[0] in ("GOAWAY", "RST_STREAM", "TCP", "closed")


def test_a_continuation_flood_is_cut_off_with_memory_bounded(target: hostile.Target) -> None:
    report = attack("continuation_flood", target)
    flood = report.finding.gateway["flood"]
    assert connection_refused(flood), flood
    assert report.finding.details["bytes_sent"] < PARAMS.continuation_bytes
    assert_edge_memory_bounded(report)
    assert_unharmed(report)


@pytest.mark.parametrize("name", ["ping_flood", "settings_flood"])
def test_a_frame_flood_from_a_client_that_never_reads_is_bounded(
    name: str, target: hostile.Target
) -> None:
    report = attack(name, target)
    flood = report.finding.gateway["flood"]
    assert flood.code == "stopped reading" or connection_refused(flood), flood
    assert_edge_memory_bounded(report)
    assert_unharmed(report)


def test_connections_that_never_send_the_preface_are_closed_by_the_handshake_timeout(
    target: hostile.Target,
) -> None:
    report = attack("idle_connections", target)
    details = report.finding.details
    assert details["opened"] == PARAMS.idle_connections, details
    assert details["closed"] == details["opened"], details
    assert details["all_closed_after_s"] <= HANDSHAKE_TIMEOUT_S + 2.0, details
    assert report.finding.gateway["new_client"].code == "OK"
    assert_unharmed(report)


def test_broken_grpc_framing_is_answered_at_once_as_triton_answers_it(
    target: hostile.Target,
) -> None:
    report = attack("framing", target)
    assert_answered_as_triton(report)
    assert_unharmed(report)


def test_a_client_that_never_reads_holds_no_one_else_up_and_its_calls_end_with_it(
    target: hostile.Target,
) -> None:
    report = attack("slow_reader", target)
    drained = report.finding.details["in_flight_zero_after_disconnect_s"]
    assert drained is not None and drained <= 3.0, report.finding.details
    assert_unharmed(report)


def test_oversized_and_invalid_headers_spoil_nothing_for_other_calls(
    target: hostile.Target,
) -> None:
    report = attack("header_poison", target)
    gateway, triton = report.finding.gateway, report.finding.triton
    for case, outcome in gateway.items():
        # A definite answer at once: a gRPC status or a stream reset, never a hang.
        assert outcome.code not in ("NO_ANSWER", "INCOMPLETE"), (case, outcome)
        assert outcome.elapsed_s is not None and outcome.elapsed_s < PROMPT_S, (case, outcome)
        if case.startswith(("timeout_", "encoding_")):
            # Triton resets the stream (RST_STREAM INTERNAL_ERROR): so does the edge.
            assert outcome == replace(triton[case], elapsed_s=outcome.elapsed_s), case
    for case in ("valid_after", "fresh_client_after"):
        assert gateway[case].code == triton[case].code, (case, gateway[case], triton[case])
        assert gateway[case].message == triton[case].message
    assert_unharmed(report)


def test_a_huge_grpc_timeout_is_honoured_as_triton_honours_it(target: hostile.Target) -> None:
    report = attack("grpc_timeout_huge", target)
    assert_answered_as_triton(report)
    assert_unharmed(report)


def test_long_and_malformed_model_names_and_versions_are_answered_as_triton_answers(
    target: hostile.Target,
) -> None:
    report = attack("long_name", target)
    # A 64 KiB name makes a 64 KiB grpc-message; its head must match, transports may cut it.
    assert_answered_as_triton(report, message_prefix=200)
    assert_unharmed(report)


def test_a_malformed_message_in_a_stream_is_answered_as_triton_answers_it(
    target: hostile.Target,
) -> None:
    report = attack("stream_malformed", target)
    gateway, triton = report.finding.gateway, report.finding.triton
    assert {case: o.code for case, o in gateway.items()} == {
        case: o.code for case, o in triton.items()
    }
    assert gateway["stream_end"].message == triton["stream_end"].message
    assert_unharmed(report)


def test_the_handover_to_the_gateway_is_no_tcp_port_and_is_owner_only(
    target: hostile.Target,
) -> None:
    report = attack("handover_port", target)
    details = report.finding.details
    assert details["extra_tcp_listeners"] == {"gateway": [], "edge": []}
    # The admin port is the only other listener, and it wants its token first.
    assert report.finding.gateway["admin_infer"].code == "UNAUTHENTICATED"
    assert report.finding.gateway["admin_without_token"].code == "UNAUTHENTICATED"
    for name, sockets in details["unix_listeners"].items():
        for listener in sockets:
            assert listener["mode"] is not None, (name, listener)
            assert int(listener["mode"], 8) & 0o077 == 0, (name, listener)
    assert_unharmed(report)


def test_an_unknown_shared_memory_region_is_a_client_error(target: hostile.Target) -> None:
    report = attack("shm_notfound", target)
    triton = report.finding.triton["shm_nope"]
    assert triton.code == "NOT_FOUND"
    details = report.finding.details
    assert details["codes"] == {"NOT_FOUND": PARAMS.shm_calls}, details
    assert details["messages"] == [triton.describe(200)], details
    assert details["served_by_fallback"] == 0
    assert details["breakers_open"] == []
    assert_unharmed(report)


# Last: before the fix it changes the backends (and can crash them).
def test_anonymous_model_load_and_unload_are_refused_and_change_nothing(
    target: hostile.Target,
) -> None:
    report = attack("anonymous_load", target)
    gateway, details = report.finding.gateway, report.finding.details
    assert gateway["load_pwned"].code != "OK", gateway["load_pwned"]
    assert gateway["unload_identity"].code != "OK", gateway["unload_identity"]
    assert details["marker_written"] is False
    assert not any(details["pwned_ready"].values()), details
    assert all(details["identity_ready_after_unload"].values()), details
    assert all(details["backends_alive"].values()), details
    assert_unharmed(report)
