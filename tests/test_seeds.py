"""`nri-ray experiment seeds` end to end: two (data seed, train seed) pairs as Ray Tune trials, tiny.

The command runs in its own process with its own embedded Ray (token authentication on), as a
user runs it. Each trial is a whole training on the Ray backend (2 shard actors); its result must
equal the same training run in process, and a second invocation must reuse what is on disk.
"""
import json
import os
import secrets
import subprocess
import sys

import pytest
import torch

pytest.importorskip("ray.tune")

from nri_ray import config as C  # noqa: E402
from nri_ray.train import run  # noqa: E402
from tuning import seeds as S  # noqa: E402

NRI = [sys.executable, "-m", "nri_ray.cli"]
DATA = ["--num-train", "24", "--num-valid", "8", "--num-test", "8", "--length", "1000", "--length-test", "2000"]
TINY = ["--rounds", "6", "--meta-batch-size", "12", "--eval-every", "3", "--eval-tasks", "8", "--eval-sa-steps", "2",
        "--edge-hidden", "16,16", "--node-hidden", "16", "--proposal-hidden", "16", "--rollout", "4", "--threads", "1",
        "--test-sa-steps", "3", "--warmup-rounds", "2"]


def env():
    e = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_USAGE_STATS_ENABLED="0")
    e.pop("RAY_ADDRESS", None)
    return e


def test_seeds_experiment_trains_every_pair_as_a_trial_and_continues(tmp_path):
    out = tmp_path / "seeds"
    cmd = [*NRI, "experiment", "seeds", "--pairs", "3:5,4:5", *DATA, "--out", str(out), *TINY]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / S.SEEDS_FILE).read_text())
    assert [(r["data_seed"], r["train_seed"]) for r in result["pairs"]] == [(3, 5), (4, 5)] and not result["missing"]
    for r in result["pairs"]:
        assert 0 <= r["edge_accuracy"] <= 1 and 0 <= r["proposal_accuracy"] <= 1
        assert set(r["mse"]) == {"1", "10"} and r["rounds"] == 6 and r["train_seconds"] > 0
        assert r["health_ratio"] > 0 and r["test_tasks"] == 8 and r["test_sa_steps"] == 3
    acc = result["summary"]["edge_accuracy"]
    values = sorted(r["edge_accuracy"] for r in result["pairs"])
    assert (acc["min"], acc["max"]) == (values[0], values[-1]) and acc["median"] == pytest.approx(sum(values) / 2)
    assert (out / S.PLOT_FILE).read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (out / "data").iterdir()) == ["springs-d3", "springs-d4"]  # one dataset per data seed
    assert "edge accuracy over 2 pairs" in done.stdout

    # A trial (Ray backend, 2 shard actors) ends exactly where the same training in process ends.
    trial = out / "runs" / "d4-t5"
    saved = torch.load(trial / "checkpoint.pt", weights_only=True)
    local = C.Config.from_dict(C.merge(saved["config"], {"cluster": {"backend": "local"}}))
    assert local.train.seed == 5 and local.train.num_shards == 2
    run(local, out / "data" / "springs-d4", tmp_path / "local", progress=False)
    mine = torch.load(tmp_path / "local" / "checkpoint.pt", weights_only=True)
    torch.testing.assert_close(saved["structures"], mine["structures"], rtol=0, atol=0)
    for name, tensor in mine["modules"].items():
        torch.testing.assert_close(saved["modules"][name], tensor, rtol=0, atol=0)

    # The same command again continues: nothing is retrained, the summary is rebuilt from disk.
    stamp = (trial / "result.json").stat().st_mtime_ns, (trial / "checkpoint.pt").stat().st_mtime_ns
    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert ((trial / "result.json").stat().st_mtime_ns, (trial / "checkpoint.pt").stat().st_mtime_ns) == stamp
    assert json.loads((out / S.SEEDS_FILE).read_text())["pairs"] == result["pairs"]


@pytest.mark.parametrize("flags, message", [
    (["--pairs", "3"], "--pairs: got '3'"),
    (["--pairs", "3:5,3:5"], "listed twice"),
    (["--data-seeds", "a,b"], "--data-seeds: got 'a,b'"),
    (["--test-sa-steps", "-1"], "--test-sa-steps: got -1"),
])
def test_seeds_bad_input_is_named_and_starts_nothing(tmp_path, flags, message):
    out = tmp_path / "seeds"
    done = subprocess.run([*NRI, "experiment", "seeds", *flags, "--out", str(out)], env=env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert not out.exists()
