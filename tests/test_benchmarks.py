"""The benchmark scripts run and write the JSON they promise (no timing is asserted)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, out: Path) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_round_json_has_the_issue_fields(tmp_path):
    r = _run("round.py", "--preset", "small", "--batch", "8", "--warmup", "1", "--repeats", "1", out=tmp_path / "r.json")
    for key in ("seconds_per_round", "round_flops", "achieved_flops_per_s", "matmul_flops_per_s", "efficiency"):
        assert r[key] > 0, key
    assert r["achieved_flops_per_s"] == pytest.approx(r["round_flops"] / r["seconds_per_round"])
    assert r["efficiency"] == pytest.approx(r["achieved_flops_per_s"] / r["matmul_flops_per_s"])
    assert r["batch"] == 8 and len(r["runs"]) == 1
    assert 0 < r["workspace_bytes"] <= r["peak_memory_bytes"]


def test_reference_round_runs_both_rounds_side_by_side(tmp_path):
    r = _run("reference_round.py", "--preset", "small", "--batch", "8", "--warmup", "0", "--repeats", "2",
             out=tmp_path / "rr.json")
    assert len(r["all_rounds"]["reference"]) == len(r["all_rounds"]["nri_ray"]) == 2
    assert r["speedup"] == pytest.approx(r["reference_seconds_per_round"] / r["nri_ray_seconds_per_round"])
