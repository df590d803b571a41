"""Reads a model's ``config.pbtxt`` and its versions with Triton's own schema."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2


class ModelConfigError(ValueError):
    """A model directory whose config cannot be read."""


def read_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    """Parse ``config.pbtxt``; a typo fails here, with the file named, not deep in a server."""
    path = model_dir / "config.pbtxt"
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except (OSError, text_format.ParseError) as exc:
        raise ModelConfigError(f"cannot read model config {path}: {exc}") from exc
    if not config.name:
        config.name = model_dir.name
    return config


def model_versions(model_dir: Path) -> list[int]:
    """Version numbers that have a ``model.onnx``, ascending."""
    found = (p for p in model_dir.iterdir() if p.name.isdigit())
    return sorted(int(p.name) for p in found if (p / "model.onnx").is_file())
