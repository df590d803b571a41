"""The load generator against a real gateway: counts add up, percentiles are ordered, and the
open loop shows queueing when the target cannot keep up."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from hdrh.histogram import HdrHistogram

from load_tests import loadgen
from tests.support.background import BackgroundGateway


def test_closed_loop_counts_add_up(gateway: BackgroundGateway, tmp_path: Path) -> None:
    spec = loadgen.LoadSpec(
        target=gateway.url, model="classifier", concurrency=4, duration_s=2.0, max_requests=120
    )
    result = asyncio.run(loadgen.run(spec))
    assert result.sent == 120
    assert result.sent == result.ok + result.failed
    assert result.ok == 120
    assert sum(result.versions.values()) == result.ok
    assert set(result.versions) == {"2"}  # unversioned requests get the latest version
    p = result.percentiles()
    assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["p99.9"]
    assert result.latency.get_total_count() == result.ok
    assert result.fallback == 0


def test_errors_are_counted_by_status(gateway: BackgroundGateway) -> None:
    spec = loadgen.LoadSpec(target=gateway.url, model="simple", version="9", max_requests=5)
    failed = asyncio.run(loadgen.run(spec))
    assert failed.sent == 5
    assert failed.ok == 0
    assert failed.errors == {"NOT_FOUND": 5}


def test_open_loop_reports_queueing_when_the_target_is_too_slow(
    gateway: BackgroundGateway, tmp_path: Path
) -> None:
    # Far more than two cores can serve: the backlog must show in latency measured from
    # each request's intended send time.
    spec = loadgen.LoadSpec(
        target=gateway.url,
        model="simple",
        mode="open",
        rate=20_000,
        duration_s=0.5,
        max_requests=3_000,
    )
    result = asyncio.run(loadgen.run(spec))
    assert result.sent == result.ok + result.failed == 3_000
    assert result.latency.get_max_value() > 100_000  # µs
    assert result.queue_delay.get_max_value() > 0


def test_cli_writes_json_and_plots(gateway: BackgroundGateway, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run.json"
    code = loadgen.main(
        [
            "--target", gateway.url, "--model", "simple", "--concurrency", "2",
            "--duration", "1", "--max-requests", "50", "--json", str(out),
            "--plots", str(tmp_path / "plots"), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    assert data["sent"] == data["ok"] + data["failed"] == 50
    assert data["latency_us"]["p50"] <= data["latency_us"]["p99"]
    assert (tmp_path / "plots" / "latency_over_time.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "percentiles.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "throughput_and_errors.png").stat().st_size > 1000
    assert "sent 50" in capsys.readouterr().out


def test_cli_exits_non_zero_on_failed_calls_or_a_crossed_threshold(  # type: ignore[no-untyped-def]
    gateway: BackgroundGateway, tmp_path: Path, capsys
) -> None:
    base = ["--target", gateway.url, "--duration", "1", "--max-requests", "20", "--quiet"]
    histogram = tmp_path / "latency.hdr"
    ok = loadgen.main([*base, "--model", "simple", "--histogram", str(histogram)])
    assert ok == 0
    decoded = HdrHistogram.decode(histogram.read_bytes())
    assert decoded.get_total_count() == 20
    # A version that does not exist: every call fails.
    assert loadgen.main([*base, "--model", "simple", "--version", "9"]) == 1
    assert "FAILED: 20 of 20 calls failed" in capsys.readouterr().err
    tolerated = ["--model", "simple", "--version", "9", "--max-error-rate", "1"]
    assert loadgen.main([*base, *tolerated]) == 0
    assert loadgen.main([*base, "--model", "simple", "--max-p99", "0.000001"]) == 1
    assert "FAILED: p99" in capsys.readouterr().err
