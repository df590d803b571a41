"""What a person sees when the settings cannot be used: one line naming the file and the key
(with the closest valid key for a typo), exit status 2, never a traceback; `check` validates
without starting; a reload says which keys it applied and which wait for a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.settings import load_settings
from gateway.settings_diff import changed_keys, is_drain


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("server:\n  prot: 8001\n", "server.prot: unknown key (did you mean 'port'?)"),
        (
            "backends:\n  - name: a\n    adress: h:1\n",
            "backends.0.adress: unknown key (did you mean 'address'?)",
        ),
        ("metrics: {port: 99999}\n", "metrics.port: Input should be less than or equal to 65535"),
        ("server: [\n", "not valid YAML at line 2, column 1"),
        ("discovery: {source: dns}\n", "set discovery.dns.name"),
        ("consul: {address: nowhere}\n", "consul.address 'nowhere' must be host:port"),
    ],
)
def test_a_bad_settings_file_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, says: str
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    for command in ("check", "serve"):
        code, _, err = run([command, "--config", str(config)], capsys)
        assert code == 2
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"triton-gateway: {config}: ")
        assert says in err


def test_a_missing_file_and_a_valid_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["check", "--config", str(tmp_path / "nope.yaml")], capsys)
    assert (code, err.strip()) == (
        2,
        f"triton-gateway: {tmp_path / 'nope.yaml'}: no such settings file (give --config an "
        "existing YAML file)",
    )
    shipped = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
    code, out, _ = run(["check", "--config", str(shipped)], capsys)
    assert code == 0 and out.startswith(f"{shipped}: valid; public port 8001")


def test_a_reload_names_the_keys_it_applies_and_those_needing_a_restart() -> None:
    before = load_settings(
        backends=[{"name": "a", "address": "h:1"}], retry={"max_attempts": 2}
    ).model_dump()
    after = load_settings(
        backends=[{"name": "a", "address": "h:1", "drained": True}],
        retry={"max_attempts": 3},
        server={"port": 9001},
    ).model_dump()
    keys = changed_keys(before, after)
    assert keys == ["backends.0.drained", "retry.max_attempts", "server.port"]
    assert [k for k in keys if is_drain(k)] == ["backends.0.drained"]
