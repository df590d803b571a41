"""What one model directory holds: its config, the files Triton gets, and their sha256.

A model is pushed to a backend as a whole (Triton replaces every version of a model pushed
with file overrides), so a model's identity is one digest over its config and every pushed
file. The digest travels inside the pushed config as a parameter, so the gateway can read back
from any backend (ModelConfig) exactly which content it serves, after a gateway restart too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

CONTENT_PARAMETER = "tgw_content_sha256"
GOLDEN_INPUTS = "golden_inputs.npz"
"""Beside ``config.pbtxt``: the golden request's inputs (arrays named by input, batch dimension
included), instead of inputs generated from the config. Not pushed to the backends."""
"""Config parameter holding the model's content digest on the backends the gateway pushed to."""


@dataclass(frozen=True, slots=True)
class ModelFile:
    """One pushed file, relative to the model directory (``<version>/<name>``)."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class ModelContent:
    """A validated model directory, ready to be pushed and served."""

    name: str
    directory: Path
    config: model_config_pb2.ModelConfig
    files: tuple[ModelFile, ...]
    versions: tuple[str, ...]
    """Version directories present, ascending."""
    served_versions: tuple[str, ...]
    """The versions Triton serves under the config's ``version_policy``, ascending."""
    digest: str
    golden_inputs: bool = False
    """Whether ``GOLDEN_INPUTS`` is provided (in ``directory``)."""

    @property
    def is_onnx(self) -> bool:
        return bool(
            self.config.platform == "onnxruntime_onnx" or self.config.backend == "onnxruntime"
        )

    def version_digest(self, version: str) -> str:
        """A digest of one version's files and the config (its version policy left out: which
        versions load does not change how one answers): equal only if that version would
        answer the same on a backend after a push."""
        config = model_config_pb2.ModelConfig()
        config.CopyFrom(self.config)
        config.ClearField("version_policy")
        hasher = hashlib.sha256(config.SerializeToString(deterministic=True))
        for item in self.files:
            if item.path.split("/", 1)[0] == version:
                hasher.update(f"{item.path}\0{item.sha256}\n".encode())
        return hasher.hexdigest()

    def model_file_sha256(self, version: str) -> str:
        """The sha256 of the version's model file (``default_model_filename``, else
        ``model.onnx``); "" when the version has no such file."""
        filename = self.config.default_model_filename or "model.onnx"
        wanted = f"{version}/{filename}"
        return next((item.sha256 for item in self.files if item.path == wanted), "")

    def file_digests(self) -> Mapping[str, str]:
        return {item.path: item.sha256 for item in self.files}


@dataclass(frozen=True, slots=True)
class VersionPins:
    """What the gateway's own state asks of a model's versions, beside its version policy."""

    kept: frozenset[str] = frozenset()
    """Versions a traffic route names: served even where the policy would leave them out."""
    withheld: frozenset[tuple[str, str]] = frozenset()
    """(version, version digest) not served while the version's files are unchanged (a
    rollout's replaced or rolled-back version, by configuration)."""


def pinned(content: ModelContent, pins: VersionPins) -> ModelContent:
    """The content as the fleet serves it: the versions its policy serves, plus those routes
    name, minus those withheld — as a ``specific`` version policy when that differs from the
    policy's own choice. Never withholds every version (the policy's choice stands then)."""
    present = set(content.versions)
    withheld = {
        version
        for version, digest in pins.withheld
        if version in present and content.version_digest(version) == digest
    }
    wanted = (set(content.served_versions) | (pins.kept & present)) - withheld
    if not wanted or wanted == set(content.served_versions):
        return content
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(content.config)
    config.version_policy.specific.versions[:] = sorted(int(v) for v in wanted)
    return replace(
        content,
        config=config,
        served_versions=tuple(sorted(wanted, key=int)),
        digest=content_digest(config, content.files),
    )


def content_digest(config: model_config_pb2.ModelConfig, files: tuple[ModelFile, ...]) -> str:
    hasher = hashlib.sha256(config.SerializeToString(deterministic=True))
    for item in sorted(files, key=lambda f: f.path):
        hasher.update(f"{item.path}\0{item.sha256}\n".encode())
    return hasher.hexdigest()


def served_versions(
    policy: model_config_pb2.ModelVersionPolicy, versions: tuple[str, ...]
) -> tuple[str, ...]:
    """Which of ``versions`` Triton loads under ``policy`` (default: the latest one)."""
    ordered = sorted(versions, key=int)
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return tuple(ordered)
    if kind == "specific":
        wanted = {str(v) for v in policy.specific.versions}
        return tuple(v for v in ordered if v in wanted)
    count = policy.latest.num_versions if kind == "latest" else 1
    return tuple(ordered[-max(count, 1) :])


def pushed_config_json(content: ModelContent, *, cpu_only: bool) -> str:
    """The config sent with ``RepositoryModelLoad``: the canonical one, stamped with the
    content digest; on backends without GPUs, GPU instances become CPU instances and the GPU
    accelerators are left out (Triton refuses KIND_GPU where it finds no GPU)."""
    config = model_config_pb2.ModelConfig()
    config.CopyFrom(content.config)
    config.parameters[CONTENT_PARAMETER].string_value = content.digest
    if cpu_only:
        for group in config.instance_group:
            if group.kind in (
                model_config_pb2.ModelInstanceGroup.KIND_GPU,
                model_config_pb2.ModelInstanceGroup.KIND_AUTO,
            ):
                group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
                del group.gpus[:]
        config.optimization.execution_accelerators.ClearField("gpu_execution_accelerator")
        if not config.optimization.execution_accelerators.ListFields():
            config.optimization.ClearField("execution_accelerators")
        if not config.optimization.ListFields():
            config.ClearField("optimization")
    return json_format.MessageToJson(config, preserving_proto_field_name=True)
