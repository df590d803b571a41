"""The commands besides `serve` as an operator types them: `fleet down` and `fleet status` with
no fleet or a broken state file, `ctl` with its options before or after the action; every
failure one line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import _parser, main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_fleet_down_with_no_fleet_says_so_and_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / ".fleet"
    assert run(["fleet", "down", "--work-dir", str(work)], capsys) == (
        0,
        f"no fleet was started from {work}: nothing to stop\n",
        "",
    )
    code, out, _ = run(["fleet", "status", "--work-dir", str(work)], capsys)
    assert (code, out) == (
        0,
        f"no fleet was started from {work} ('triton-gateway fleet up' starts one)\n",
    )


@pytest.mark.parametrize("content", ["garbage", "{}", '{"servers": [{"name": "a"}]}', "[1]"])
def test_a_broken_fleet_state_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    state = tmp_path / "fleet.json"
    state.write_text(content)
    for action in ("status", "down"):
        code, out, err = run(["fleet", action, "--work-dir", str(tmp_path)], capsys)
        assert (code, out) == (2, "")
        assert err == (
            f"triton-gateway: cannot read the fleet state {state} (not a state 'fleet up' "
            "wrote): stop its tritonserver processes by hand if any run, then remove the file\n"
        )
    assert state.read_text() == content, "left for the operator to look at"


def test_ctl_options_are_read_before_and_after_the_action(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    after = _parser().parse_args(
        ["ctl", "routes", "--json", "--config", str(config), "--address", "h:1", "--timeout", "3"]
    )
    assert (after.json, after.config, after.address, after.timeout) == (True, config, "h:1", 3.0)
    before = _parser().parse_args(["ctl", "--json", "--token", "t", "routes"])
    assert (before.json, before.token, before.config, before.timeout) == (True, "t", None, 30.0)
    # Given before the action and not after it, a value stays; given after, it wins.
    both = _parser().parse_args(
        ["ctl", "--token", "t", "--timeout", "5", "shadow", "m", "--to", "2", "--token", "u"]
    )
    assert (both.token, both.timeout, both.to, both.json) == ("u", 5.0, "2", False)
    tls = ["--ca-file", "c", "--cert-file", "x", "--key-file", "k"]
    files = _parser().parse_args(["ctl", "drain", "b", "--token-file", "f", *tls])
    assert (files.name, files.token_file, files.ca_file, files.cert_file, files.key_file) == (
        "b",
        Path("f"),
        Path("c"),
        Path("x"),
        Path("k"),
    )


def test_ctl_without_a_token_names_every_way_to_give_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"server: {{port: 0}}\nadmin: {{state_dir: {tmp_path / 'state'}}}\n")
    code, out, err = run(["ctl", "routes", "--json", "--config", str(config)], capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert f"cannot read the admin token file {tmp_path / 'state' / 'admin.token'}" in err
    assert err.endswith(
        "pass --token or --token-file, or --config with the gateway's settings file\n"
    )
    config.write_text("server: {port: 0}\n")
    code, _, err = run(["ctl", "routes", "--config", str(config)], capsys)
    assert (code, err) == (
        2,
        "triton-gateway: no admin token: pass --token or --token-file, or --config with the "
        "gateway's settings file\n",
    )
