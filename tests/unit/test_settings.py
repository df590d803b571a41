from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import load_settings


def test_yaml_file_is_read_and_environment_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "server:\n  port: 9001\n  host: 127.0.0.1\n"
        "backends:\n  - {name: t0, address: 'localhost:8101'}\n"
        "logging:\n  level: debug\n"
    )
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "9100")
    settings = load_settings(config)
    assert settings.server.port == 9100
    assert settings.server.host == "127.0.0.1"
    assert [(b.name, b.address) for b in settings.backends] == [("t0", "localhost:8101")]
    assert settings.logging.level == "debug"


def test_defaults_match_triton_port() -> None:
    assert load_settings().server.port == 8001


def test_duplicate_backend_names_are_rejected() -> None:
    with pytest.raises(ValidationError, match="unique"):
        load_settings(backends=[{"name": "a", "address": "x:1"}, {"name": "a", "address": "x:2"}])


def test_unknown_keys_are_rejected(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("server:\n  prot: 1\n")
    with pytest.raises(ValidationError):
        load_settings(config)


def test_the_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
    settings = load_settings(example)
    assert settings.server.port == 8001
    assert [b.name for b in settings.backends] == ["triton-0", "triton-1"]
    assert settings.metrics.port == 8002
