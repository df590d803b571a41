"""Drop validation and scanning on real files: every refusal names the file and its reason,
and a directory is read only once nobody writes to it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx.helper
import pytest
from prometheus_client import CollectorRegistry
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.repository.content import GOLDEN_INPUTS, VersionPins, pinned, served_versions
from gateway.repository.golden import Tolerance, golden_case, mismatch
from gateway.repository.metrics import RepositoryMetrics
from gateway.repository.scanner import RepositoryScanner
from gateway.repository.store import ContentStore
from gateway.repository.validation import DropRejected, Limits, validate
from tests.support.models import MODEL_REPOSITORY

LIMITS = Limits(max_model_bytes=64 * 1024 * 1024)

IDENTITY_CONFIG = """
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {batch}
input [ {{ name: "{input}" data_type: {dtype} dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_FP32 dims: [ 4 ] }} ]
"""


def identity_model(path: Path, *, opset: int = 17, batch_dim: int | None = None) -> None:
    """An Identity ONNX model with FP32 INPUT/OUTPUT of shape [batch, 4]."""
    dims = [batch_dim, 4]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["INPUT"], ["OUTPUT"])],
        "identity",
        [onnx.helper.make_tensor_value_info("INPUT", onnx.TensorProto.FLOAT, dims)],
        [onnx.helper.make_tensor_value_info("OUTPUT", onnx.TensorProto.FLOAT, dims)],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def model_dir(
    root: Path,
    name: str = "m",
    *,
    input_name: str = "INPUT",
    dtype: str = "TYPE_FP32",
    batch: int = 8,
    opset: int = 17,
    batch_dim: int | None = None,
) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "config.pbtxt").write_text(
        IDENTITY_CONFIG.format(name=name, batch=batch, input=input_name, dtype=dtype)
    )
    identity_model(directory / "1" / "model.onnx", opset=opset, batch_dim=batch_dim)
    return directory


def rejected(directory: Path, limits: Limits = LIMITS) -> DropRejected:
    with pytest.raises(DropRejected) as info:
        validate(directory, limits)
    return info.value


def test_every_example_model_is_valid_with_a_stable_digest() -> None:
    for directory in sorted(p for p in MODEL_REPOSITORY.iterdir() if p.is_dir()):
        first, second = validate(directory, LIMITS), validate(directory, LIMITS)
        assert first.digest == second.digest
        assert all(len(f.sha256) == 64 for f in first.files)
    classifier = validate(MODEL_REPOSITORY / "classifier", LIMITS)
    assert classifier.versions == ("1", "2")
    assert [f.path for f in classifier.files] == ["1/model.onnx", "2/model.onnx"]


def test_routes_keep_versions_and_withheld_ones_leave_until_their_files_change(
    tmp_path: Path,
) -> None:
    directory = model_dir(tmp_path)  # Triton's default policy: the latest version only
    identity_model(directory / "2" / "model.onnx")
    identity_model(directory / "3" / "model.onnx")
    content = validate(directory, LIMITS)
    assert content.served_versions == ("3",)
    assert pinned(content, VersionPins()) is content, "nothing asked: the same content"
    kept = pinned(content, VersionPins(kept=frozenset({"1", "9"})))
    assert kept.served_versions == ("1", "3"), "a version a route names stays (9 is absent)"
    assert list(kept.config.version_policy.specific.versions) == [1, 3]
    assert kept.digest != content.digest
    assert kept.version_digest("3") == content.version_digest("3"), "the policy is left out"
    withheld = VersionPins(withheld=frozenset({("3", content.version_digest("3"))}))
    assert pinned(content, withheld) is content, "never every version"
    both = pinned(content, VersionPins(frozenset({"1", "2"}), withheld.withheld))
    assert both.served_versions == ("1", "2")
    # Version 3 dropped again with other files: no longer the version that was withheld.
    identity_model(directory / "3" / "model.onnx", opset=13)
    changed = validate(directory, LIMITS)
    assert pinned(changed, VersionPins(frozenset({"1"}), withheld.withheld)).served_versions == (
        "1",
        "3",
    )


def test_a_valid_drop_passes(tmp_path: Path) -> None:
    content = validate(model_dir(tmp_path), LIMITS)
    assert content.name == "m"
    assert content.served_versions == ("1",)


def test_a_config_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    directory = model_dir(tmp_path)
    (directory / "config.pbtxt").write_text('name: "m"\nmax_batch_size: "eight"\n')
    refusal = rejected(directory)
    assert refusal.reason == "config"
    assert refusal.file == directory / "config.pbtxt"


def test_a_config_naming_another_model_is_refused(tmp_path: Path) -> None:
    directory = model_dir(tmp_path)
    shutil.move(directory, tmp_path / "other")
    refusal = rejected(tmp_path / "other")
    assert refusal.reason == "config"
    assert "names model 'm'" in str(refusal)


def test_a_model_without_versions_is_refused(tmp_path: Path) -> None:
    directory = model_dir(tmp_path)
    shutil.rmtree(directory / "1")
    assert rejected(directory).reason == "no_versions"


def test_invalid_and_half_copied_onnx_files_are_refused(tmp_path: Path) -> None:
    garbage = model_dir(tmp_path, "garbage")
    (garbage / "1" / "model.onnx").write_bytes(b"\x08\x07garbage")
    assert rejected(garbage).reason == "onnx"
    half = model_dir(tmp_path, "half")
    whole = (half / "1" / "model.onnx").read_bytes()
    (half / "1" / "model.onnx").write_bytes(whole[: len(whole) // 2])
    refusal = rejected(half)
    assert refusal.reason == "onnx"
    assert refusal.file == half / "1" / "model.onnx"


def test_an_input_the_model_lacks_is_an_io_mismatch(tmp_path: Path) -> None:
    refusal = rejected(model_dir(tmp_path, input_name="FEATURES", batch_dim=None))
    assert refusal.reason == "io_mismatch"
    assert "'FEATURES'" in str(refusal)


def test_a_dtype_unlike_the_models_is_refused(tmp_path: Path) -> None:
    refusal = rejected(model_dir(tmp_path, dtype="TYPE_INT32"))
    assert refusal.reason == "dtype"
    assert "TYPE_INT32" in str(refusal) and "FLOAT" in str(refusal)


def test_batching_needs_a_dynamic_first_dimension(tmp_path: Path) -> None:
    refusal = rejected(model_dir(tmp_path, batch_dim=1))
    assert refusal.reason == "io_mismatch"
    assert "dynamic first dimension" in str(refusal)


def test_an_opset_the_runtime_does_not_support_is_refused(tmp_path: Path) -> None:
    refusal = rejected(model_dir(tmp_path, opset=99))
    assert refusal.reason == "opset"
    assert "opset 99" in str(refusal)


def test_links_and_oversized_models_are_refused(tmp_path: Path) -> None:
    linked = model_dir(tmp_path, "linked")
    (linked / "1" / "extra.bin").symlink_to(linked / "config.pbtxt")
    assert rejected(linked).reason == "unreadable"
    big = model_dir(tmp_path, "big")
    assert rejected(big, Limits(max_model_bytes=16)).reason == "size"


def test_version_policies_pick_the_served_versions() -> None:
    versions = ("1", "2", "10")
    latest_two = model_config_pb2.ModelVersionPolicy()
    latest_two.latest.num_versions = 2
    assert served_versions(latest_two, versions) == ("2", "10")
    assert served_versions(model_config_pb2.ModelVersionPolicy(), versions) == ("10",)
    every = model_config_pb2.ModelVersionPolicy()
    every.all.SetInParent()
    assert served_versions(every, versions) == ("1", "2", "10")
    specific = model_config_pb2.ModelVersionPolicy()
    specific.specific.versions.extend([1, 10])
    assert served_versions(specific, versions) == ("1", "10")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scanner_at(tmp_path: Path) -> tuple[Path, FakeClock, CollectorRegistry, RepositoryScanner]:
    root = tmp_path / "repo"
    root.mkdir()
    clock = FakeClock()
    registry = CollectorRegistry()
    scanner = RepositoryScanner(
        root,
        ContentStore(tmp_path / "store"),
        LIMITS,
        settle_s=1.0,
        metrics=RepositoryMetrics(registry),
        clock=clock,
        wall_clock=lambda: 0.0,  # every file looks just written
    )
    return root, clock, registry, scanner


def test_the_scanner_waits_for_a_directory_to_settle_and_ignores_dot_names(
    tmp_path: Path,
) -> None:
    root, clock, _registry, scanner = scanner_at(tmp_path)
    model_dir(root, ".staging")
    model_dir(root, "m")
    first = scanner.scan()
    assert first.contents == {} and first.settling
    (root / "m" / "1" / "extra.txt").write_text("still copying")
    clock.now += 0.9
    assert scanner.scan().contents == {}  # it changed: the wait starts again
    clock.now += 0.9
    assert scanner.scan().contents == {}
    clock.now += 0.2
    settled = scanner.scan()
    assert list(settled.contents) == ["m"] and not settled.settling
    frozen = settled.contents["m"].directory
    assert frozen.is_relative_to(tmp_path / "store")
    assert (frozen / "1" / "extra.txt").read_text() == "still copying"


def test_a_rejected_drop_is_reported_once_and_keeps_the_last_good_content(
    tmp_path: Path,
) -> None:
    root, clock, registry, scanner = scanner_at(tmp_path)
    directory = model_dir(root)
    assert scanner.scan().contents == {}  # first seen now: settling
    clock.now += 2
    good = scanner.scan().contents["m"]
    (directory / "2").mkdir()
    (directory / "2" / "model.onnx").write_bytes(b"broken")
    for _ in range(3):
        clock.now += 2
        assert scanner.scan().contents["m"].digest == good.digest
    count = registry.get_sample_value(
        "triton_gateway_model_drops_rejected_total", {"model": "m", "reason": "onnx"}
    )
    assert count == 1


def test_golden_inputs_beside_the_model_are_checked_and_used(tmp_path: Path) -> None:
    directory = model_dir(tmp_path)
    provided = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.savez(directory / GOLDEN_INPUTS, INPUT=provided)
    content = validate(directory, LIMITS)
    assert content.golden_inputs
    case = golden_case(content, "1")
    assert case is not None and case.expected is not None
    assert list(case.request.inputs[0].shape) == [2, 4]
    np.testing.assert_array_equal(case.expected["OUTPUT"], provided)  # an Identity model
    np.savez(directory / GOLDEN_INPUTS, INPUT=provided.astype(np.int32))
    refusal = rejected(directory)
    assert refusal.reason == "config" and "golden input 'INPUT'" in str(refusal)
    np.savez(directory / GOLDEN_INPUTS, OTHER=provided)
    assert "lack input 'INPUT'" in str(rejected(directory))


def test_generated_golden_requests_match_the_local_session_and_catch_a_difference() -> None:
    content = validate(MODEL_REPOSITORY / "classifier", LIMITS)
    case = golden_case(content, "2")
    assert case is not None and case.expected is not None
    expected = case.expected["PROBABILITIES"]
    response = service_pb2.ModelInferResponse(model_name="classifier", model_version="2")
    response.outputs.add(name="PROBABILITIES", datatype="FP32", shape=list(expected.shape))
    response.raw_output_contents.append(expected.tobytes())
    tolerance = Tolerance(atol=1e-4, rtol=1e-3)
    assert mismatch(case, response, tolerance) is None
    response.raw_output_contents[0] = (expected + 0.01).astype(np.float32).tobytes()
    assert "max abs difference" in (mismatch(case, response, tolerance) or "")
