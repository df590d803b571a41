"""What a person sees when the settings cannot be used: one line naming the file and the key
(with the closest valid key for a typo), exit status 2, never a traceback; `check` validates
without starting; a reload says which keys it applied and which wait for a restart."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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
        (
            "rollout:\n  plans:\n    classifier: {stepz: [0, 100]}\n",
            "rollout.plans.classifier.stepz: unknown key (did you mean 'steps'?)",
        ),
        ("discovery: {source: dns}\n", "set discovery.dns.name"),
        (
            "discovery: {source: dns, dns: {name: t.svc, interval_s: 2, min_interval_s: 3}}\n",
            "discovery.dns: min_interval_s (3) is above interval_s (2): lower min_interval_s",
        ),
        (
            "discovery: {source: consul, consul: {service: t, retry_min_s: 20}}\n",
            "discovery.consul: retry_min_s (20) is above retry_max_s (10): lower retry_min_s",
        ),
        (
            "discovery: {dns: {name: t.svc}}\n",
            "discovery.dns is set, but discovery.source is static: set discovery.source: dns",
        ),
        (
            "discovery: {source: dns, dns: {name: t.svc}, consul: {service: t}}\n",
            "discovery.consul is set, but discovery.source is dns: set discovery.source: consul",
        ),
        (
            "backends: [{name: a, address: 'h:1'}]\ndiscovery: {source: dns, dns: {name: t}}\n",
            "backends is set, but discovery.source is dns: the backends come from DNS; remove "
            "backends, or set discovery.source: static",
        ),
        ("consul: {address: nowhere}\n", "consul.address 'nowhere' must be host:port"),
        (
            "server: {port: 8001}\nmetrics: {port: 8001}\n",
            "server.port and metrics.port are both 8001: each needs its own port",
        ),
        (
            "metrics: {port: 9003}\nadmin: {port: 9003}\n",
            "metrics.port and admin.port are both 9003",
        ),
        (
            "server: {port: 9001}\nmetrics: {port: 9003}\n",
            "metrics.port and admin.port (server.port + 2) are both 9003",
        ),
        (
            "server: {port: 65534}\n",
            "admin.port is not set, and server.port + 2 = 65536 is past 65535: set admin.port",
        ),
        (
            "edge: {binary: /nonexistent/tgw-edge}\n",
            "edge.binary: no such file: give the path of tgw-edge",
        ),
        (
            "server:\n  port: 9001\n  host: 127.0.0.1\n  port: 9002\n",
            "server.port: set twice (lines 2 and 4): keep one",
        ),
        (
            "backends:\n  - {name: a, address: 'h:1'}\n  - {name: b, address: 'h:2', name: c}\n",
            "backends.1.name: set twice (lines 3 and 3)",
        ),
        ("- server\n", "the top level must be a mapping of settings sections"),
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


def test_a_file_that_is_not_utf8_says_so_with_the_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_bytes(b"server:\n  host: caf\xe9\n")
    code, _, err = run(["check", "--config", str(config)], capsys)
    assert (code, err) == (
        2,
        f"triton-gateway: {config} is not UTF-8 text (byte 0xe9 at offset 19)\n",
    )


def test_an_environment_variable_is_named_as_the_source_of_its_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("server: {port: 9001}\n")
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "abc")
    code, _, err = run(["check", "--config", str(config)], capsys)
    assert code == 2
    assert err.startswith(
        "triton-gateway: the environment variable GATEWAY_SERVER__PORT: server.port: "
    )
    assert "(got 'abc')" in err and str(config) not in err
    # An unknown key under a known section comes from the environment too.
    monkeypatch.setenv("GATEWAY_SERVER__PORT", "9100")
    monkeypatch.setenv("GATEWAY_SERVER__PROT", "1")
    code, _, err = run(["check", "--config", str(config)], capsys)
    assert (code, err) == (
        2,
        "triton-gateway: the environment variable GATEWAY_SERVER__PROT: server.prot: "
        "unknown key (did you mean 'port'?)\n",
    )
    # A value of the file that the environment does not touch is the file's.
    monkeypatch.delenv("GATEWAY_SERVER__PROT")
    config.write_text("server: {port: 9001}\nmetrics: {port: abc}\n")
    code, _, err = run(["check", "--config", str(config)], capsys)
    assert code == 2 and err.startswith(f"triton-gateway: {config}: metrics.port: ")


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("GATEWAY_SERVR__PORT", "did you mean GATEWAY_SERVER__PORT?"),
        ("GATEWAY_SERVER_PORT", "did you mean GATEWAY_SERVER__PORT?"),
        ("gateway_logging_level", "did you mean GATEWAY_LOGGING__LEVEL?"),
        ("GATEWAY_ZZZ", None),
    ],
)
def test_an_unknown_gateway_variable_is_an_error_with_the_closest_name(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    suggestion: str | None,
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("server: {port: 9001}\n")
    monkeypatch.setenv(variable, "9100")
    for command in ("check", "serve"):
        code, out, err = run([command, "--config", str(config)], capsys)
        assert code == 2 and out == ""
        assert err.count("\n") == 1
        assert err.startswith(f"triton-gateway: {variable}: unknown environment variable")
        if suggestion is None:
            assert "did you mean" not in err
        else:
            assert suggestion in err


def test_the_clis_own_gateway_variables_are_no_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("server: {port: 9001}\n")
    monkeypatch.setenv("GATEWAY_ADMIN_ADDRESS", "127.0.0.1:9003")
    monkeypatch.setenv("GATEWAY_TRITON_HOME", str(tmp_path))
    monkeypatch.setenv("GATEWAY_LOGGING__LEVEL", "debug")
    code, out, _ = run(["check", "--config", str(config)], capsys)
    assert code == 0 and out.startswith(f"{config}: valid; public port 9001")


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


def test_a_taken_port_names_what_holds_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "gateway.yaml"
        config.write_text(
            f"server: {{host: 127.0.0.1, port: 0}}\n"
            f"metrics: {{host: 127.0.0.1, port: {port}}}\n"
            f"repository: {{path: {tmp_path / 'none'}}}\n"
            f"admin: {{state_dir: {tmp_path / 'state'}}}\n"
            "backends: []\nhealth: {startup_wait_s: 0}\n"
        )
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"triton-gateway: cannot serve metrics on 127.0.0.1:{port}: Address already in use "
        f"by pid {os.getpid()} ({_command()}); stop it or set metrics.port"
    )
    assert "Traceback" not in done.stderr


def _command() -> str:
    return Path(f"/proc/{os.getpid()}/comm").read_text().strip()
