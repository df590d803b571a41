"""Shadow traffic through tgw-edge: copies of a route's requests sent to a candidate variant,
compared with the primary's answers output by output, never in the primary's way."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from gateway._protos.tgw.admin.v1 import admin_pb2
from gateway.devfleet import LocalFleet, TritonInstallation
from tests.support.fleet import fleet_behind_gateway
from tests.support.metrics import scrape_with_edge, total, wait_until
from tests.support.models import classifier_features, reference_classifier
from tests.support.traffic import TOKEN, Routed, routed_gateway

OUTPUT = "PROBABILITIES"


def _request(x: np.ndarray) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="INPUT", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype(np.float32).tobytes())
    return request.SerializeToString()


def _shadow(version: str, percent: float = 100, model: str = "") -> admin_pb2.Shadow:
    return admin_pb2.Shadow(target=admin_pb2.Variant(model=model, version=version), percent=percent)


@pytest.fixture(scope="module")
def routed(fleet: LocalFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routed]:
    with routed_gateway(fleet, tmp_path_factory.mktemp("shadow-state")) as client:
        yield client


def _compared(port: int, variant: str, expected: int) -> dict[str, float]:
    """The shadow figures of ``variant`` once ``expected`` comparisons are counted."""
    labels = {"route": "classifier", "variant": variant, "output": OUTPUT}
    assert wait_until(
        lambda: (
            total(scrape_with_edge(port), "triton_gateway_shadow_comparisons_total", **labels)
            >= expected
        ),
        timeout_s=20,
    )
    samples = scrape_with_edge(port)
    return {
        name: total(samples, f"triton_gateway_{name}", **labels)
        for name in (
            "shadow_comparisons_total",
            "shadow_max_abs_diff_sum",
            "shadow_max_abs_diff_count",
            "shadow_argmax_rows_total",
            "shadow_argmax_agreeing_total",
        )
    } | {
        result: total(samples, "triton_gateway_shadow_comparisons_total", result=result, **labels)
        for result in ("agree", "disagree", "nonconforming")
    }


def test_the_comparison_shows_the_real_difference_between_versions(routed: Routed) -> None:
    routed.split("classifier", {"1": 100}, shadow=_shadow("2"))
    x = classifier_features(batch=4, seed=11)
    body = _request(x)
    for _ in range(20):
        answer, stamps = routed.stamps(body)
        assert answer.model_version == "1" and stamps["x-gateway-variant"] == "1"
    v1, v2 = reference_classifier(1, x), reference_classifier(2, x)
    figures = _compared(routed.running.gateway.metrics_port, "2", 20)
    print(f"shadow v2 against v1 over 20 requests: {figures}")
    assert figures["shadow_comparisons_total"] == 20
    assert figures["disagree"] == 20
    # Each comparison saw the largest difference the references show (float32 noise aside).
    mean_abs = figures["shadow_max_abs_diff_sum"] / figures["shadow_max_abs_diff_count"]
    assert mean_abs == pytest.approx(float(np.max(np.abs(v2 - v1))), rel=1e-4, abs=1e-6)
    agreeing = int(np.sum(np.argmax(v1, axis=1) == np.argmax(v2, axis=1)))
    assert figures["shadow_argmax_rows_total"] == 20 * len(x)
    assert figures["shadow_argmax_agreeing_total"] == 20 * agreeing

    # The admin service shows the same figures with the route (from the edge's reports).
    def shown() -> dict[str, admin_pb2.VariantFigures]:
        route = routed.route("classifier")
        return {f.variant: f for f in route.figures} if route is not None else {}

    assert wait_until(lambda: shown().get("2", admin_pb2.VariantFigures()).shadow_compared >= 20)
    watched = shown()
    assert watched["1"].calls >= 20 and watched["1"].errors == 0
    assert watched["1"].p99.ToNanoseconds() > 0
    assert watched["2"].shadow_agreeing == 0


def test_identical_variants_agree(routed: Routed) -> None:
    # The same version under a name of its own: a call is never mirrored to the variant
    # that answered it (the shadow target named like it), so it is named otherwise here.
    twin = admin_pb2.Variant(name="1-twin", model="classifier", version="1")
    routed.split("classifier", {"1": 100}, shadow=admin_pb2.Shadow(target=twin, percent=100))
    body = _request(classifier_features(batch=2, seed=12))
    for _ in range(10):
        routed.stamps(body)
    figures = _compared(routed.running.gateway.metrics_port, "1-twin", 10)
    assert figures["agree"] == 10 and figures["disagree"] == 0
    assert figures["shadow_max_abs_diff_sum"] == 0


def test_a_call_is_not_mirrored_to_the_variant_that_answered_it(routed: Routed) -> None:
    # A rollout's live step: the baseline (1) takes most calls and is the shadow target, so
    # only the candidate's (2) calls are copied to it and compared.
    routed.split("classifier", {"1": 50, "2": 50}, shadow=_shadow("1"))
    port = routed.running.gateway.metrics_port
    labels = {"route": "classifier", "variant": "1", "output": OUTPUT}
    before = total(scrape_with_edge(port), "triton_gateway_shadow_comparisons_total", **labels)
    body = _request(classifier_features(batch=2, seed=13))
    answered = [routed.stamps(body)[1]["x-gateway-variant"] for _ in range(40)]
    by_candidate = answered.count("2")
    assert 0 < by_candidate < 40
    _compared(port, "1", int(before) + by_candidate)
    after = total(scrape_with_edge(port), "triton_gateway_shadow_comparisons_total", **labels)
    assert after - before == by_candidate, "copies of the candidate's calls only"
    with pytest.raises(grpc.RpcError, match="named like a variant"):
        clash = admin_pb2.Variant(name="1", model="classifier", version="2")
        routed.split("classifier", {"1": 100}, shadow=admin_pb2.Shadow(target=clash, percent=10))


def test_a_failing_or_hung_shadow_never_touches_the_primary(
    triton_installation: TritonInstallation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    state = tmp_path_factory.mktemp("shadow-own-state")
    with fleet_behind_gateway(
        triton_installation,
        tmp_path_factory,
        {"main": ("classifier",), "side": ("simple",)},
        admin={"port": 0, "token": TOKEN, "state_dir": str(state)},
    ) as (fleet, running):
        client = Routed(running)
        try:
            # Mirrored to a model that refuses the classifier's inputs: every copy fails.
            client.split("classifier", {"1": 100}, shadow=_shadow("1", model="simple"))
            x = classifier_features(batch=1, seed=13)
            body, expected = _request(x), reference_classifier(1, x)
            for _ in range(30):
                answer, _ = client.stamps(body)
                got = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32)
                np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5)
            port = running.gateway.metrics_port
            labels = {"route": "classifier", "variant": "simple:1"}

            def failed_copies() -> float:
                samples = scrape_with_edge(port)
                sent = total(samples, "triton_gateway_shadow_requests_total", **labels)
                return sent - total(
                    samples, "triton_gateway_shadow_requests_total", code="OK", **labels
                )

            assert wait_until(lambda: failed_copies() == 30, timeout_s=20)
            # The shadow's server hangs: its copies wait, the primaries do not.
            side = fleet.servers["side"].pid
            os.kill(side, signal.SIGSTOP)
            try:
                for _ in range(100):
                    answer, _ = client.stamps(body)  # each within the stamps() timeout (10 s)
                    assert answer.model_version == "1"
                samples = scrape_with_edge(port)
                skipped = total(samples, "triton_gateway_shadow_skipped_total", **labels)
                print(f"copies skipped while the shadow's server hung: {skipped}")
                # At most 64 copies (traffic.shadow_max_in_flight) wait at once.
                assert skipped >= 100 - 64
            finally:
                os.kill(side, signal.SIGCONT)
        finally:
            client.close()


def test_stream_messages_are_mirrored_and_compared_too(routed: Routed) -> None:
    routed.split("classifier", {"1": 100}, shadow=_shadow("2"))
    port = routed.running.gateway.metrics_port
    labels = {"route": "classifier", "variant": "2", "output": OUTPUT}
    before = total(scrape_with_edge(port), "triton_gateway_shadow_comparisons_total", **labels)
    stream = routed.channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
    body = _request(classifier_features(batch=2, seed=14))
    answers = [
        service_pb2.ModelStreamInferResponse.FromString(raw)
        for raw in stream(iter([body] * 5), timeout=30)
    ]
    assert [a.infer_response.model_version for a in answers] == ["1"] * 5
    assert wait_until(
        lambda: (
            total(scrape_with_edge(port), "triton_gateway_shadow_comparisons_total", **labels)
            == before + 5
        ),
        timeout_s=20,
    )
