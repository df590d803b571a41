"""The load generator with nothing to measure says why in one line and exits 2 (1 stays the
status of a run that crossed a threshold)."""

from __future__ import annotations

import pytest

from gateway.devfleet.fleet import free_port
from load_tests import loadgen


def test_a_target_nothing_listens_on_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = f"127.0.0.1:{free_port()}"
    argv = ["--target", target, "--model", "simple", "--max-requests", "5", "--quiet"]
    assert loadgen.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(
        f"loadgen: cannot read the metadata of model 'simple' from {target}: UNAVAILABLE: "
    )
