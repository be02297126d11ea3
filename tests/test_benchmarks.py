"""The benchmark scripts still run (tiny sizes), so a GPU run of them (benchmarks/device_checks.sh)
does not find them broken."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_training_throughput_benchmark_prints_both_epoch_kinds() -> None:
    out = run("train_throughput.py", "--config", "tiny", "--steps", "1", "--warmup", "0", "--batch-size", "2", "--device", "cpu")
    rows = [line for line in out.splitlines() if line.startswith("| alternating")]
    assert [r.split("|")[1].strip() for r in rows] == ["alternating (recognition)", "alternating (policy)"]
    for row in rows:
        assert float(row.split("|")[2]) > 0  # clips/s


def test_long_video_benchmark_shows_streaming_uses_less_memory() -> None:
    out = run("long_video.py", "--seconds", "4", "--width", "96", "--height", "64")
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| full") or line.startswith("| streamed")}
    full, streamed = (float(rows[name].split("|")[3]) for name in ("full decode", "streamed"))
    assert streamed < full


def test_conditional_benchmark_prints_a_row_per_rate() -> None:
    out = run("conditional.py", "--config", "tiny", "--device", "cpu", "--rounds", "1", "--threads", "1")
    rows = [line for line in out.splitlines() if line.strip().split(" ")[0].endswith("%")]
    assert [r.split("|")[0].strip() for r in rows] == ["0%", "25%", "50%", "75%", "100%"]
    gflops = [float(r.split("|")[1].split()[1]) for r in rows]
    assert gflops == sorted(gflops) and gflops[0] < gflops[-1]


def test_fixed_part_benchmark_times_each_always_on_network() -> None:
    out = run("fixed_part.py", "--config", "tiny", "--threads", "1", "--rounds", "1")
    names = [line[:28].strip() for line in out.splitlines() if line.endswith(tuple("0123456789")) and "(" in line[28:]]
    assert names == ["policy extractor (rgb)", "policy extractor (audio)", "audio network", "rgb network, 1 segment"]
    assert "the best the workers could do is" in out
    bounds = [line.split("|") for line in out.splitlines() if line.strip().split(" ")[0].endswith("%")]
    assert [b[0].strip() for b in bounds] == ["0%", "25%", "50%", "75%", "100%"]
    best = [float(b[2]) for b in bounds]
    assert best == sorted(best) and best[-1] == 1.0  # everything selected = the masked work


def test_predict_e2e_benchmark_computes_less_flow_at_lower_budgets(tiny_video) -> None:
    out = run("predict_e2e.py", "--tiny", "--videos", str(tiny_video), "--segments", "2")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| RGB+")]
    flow_rows = {r[3].strip(): r for r in rows if r[1].strip() == "RGB+Flow"}
    assert set(flow_rows) == {"all", "policy", "budget 50%", "budget 25%"}
    fields = {name: int(r[-2]) for name, r in flow_rows.items()}
    assert fields["all"] > 0 and fields["budget 25%"] <= fields["budget 50%"] <= fields["all"]
