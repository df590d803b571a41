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


def test_fleet_change_keys_are_read_as_tritons_restricted_protocol_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().security.client_key() is None
    assert load_settings().security.backend_metadata() is None
    settings = load_settings(security={"model_repository_key": "tgw-key=s3cret"})
    key = settings.security.client_key()
    assert key is not None
    assert (key.header, key.value) == ("triton-grpc-protocol-tgw-key", "s3cret")
    # The backend key defaults to the clients' one, and can differ.
    assert settings.security.backend_metadata() == (("triton-grpc-protocol-tgw-key", "s3cret"),)
    monkeypatch.setenv("GATEWAY_SECURITY__BACKEND_KEY", "fleet=other")
    assert load_settings(security={"model_repository_key": "a=b"}).security.backend_metadata() == (
        ("triton-grpc-protocol-fleet", "other"),
    )


@pytest.mark.parametrize("bad", ["s3cret", "=s3cret", "tgwkey=", "Tgw=s3cret", "tgw=s3cr\u00e9t"])
def test_a_malformed_key_is_one_actionable_line_that_does_not_echo_it(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        load_settings(security={"model_repository_key": bad})
    (error,) = info.value.errors()
    assert error["loc"] == ("security", "model_repository_key")
    assert "must be KEY=VALUE" in error["msg"]
    assert "\n" not in error["msg"]
    assert bad not in str(info.value)


def test_the_key_is_masked_when_settings_are_printed() -> None:
    settings = load_settings(security={"model_repository_key": "tgw-key=s3cret"})
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.model_dump())


def test_fallback_decoding_budgets_have_defaults() -> None:
    fallback = load_settings().fallback
    assert fallback.max_request_bytes == 64 * 1024 * 1024
    assert fallback.max_total_bytes == 256 * 1024 * 1024
