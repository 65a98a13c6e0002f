"""``python -m shmex.bench``: FLARE's own path moves a tiny model; without nvflare it is skipped."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shmex import bench


def test_flare_path_round_trip() -> None:
    pytest.importorskip("nvflare", reason="nvflare is not installed")
    assert bench.flare_missing() is None
    times, rss = bench.bench_flare(bench.model(8), 1)
    assert len(times) == 1 and times[0] > 0
    assert rss > 0  # the IPCAgent process reported its peak RSS as it ended


def test_bench_runs_without_nvflare() -> None:
    code = (
        "import sys; sys.modules['nvflare'] = None\n"
        "from shmex.bench import main; main(['--sizes', '8B', '--repeat', '1'])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "RATIO pickle5-socket/shmex-python 8B " in run.stdout
    assert "flare: not measured: nvflare is not importable" in run.stdout
    assert "RESULT flare" not in run.stdout
