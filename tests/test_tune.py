"""`nri-ray sweep` end to end: Ray Tune trials of tiny training runs, interrupted and resumed, PBT.

Each sweep runs in its own process (its own embedded Ray, token authentication with a throwaway
token), as a user runs it. Two trials fit side by side on 2 CPUs (0.25 driver + 0.5 shard + 0.25
server each).
"""
import csv
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("ray.tune")

from nri_ray import config as C  # noqa: E402
from nri_ray.train import run  # noqa: E402
from tuning import sweep as S  # noqa: E402

NRI = [sys.executable, "-m", "nri_ray.cli"]
TINY = ["--edge-hidden", "16,16", "--node-hidden", "16", "--proposal-hidden", "16", "--rollout", "4",
        "--meta-batch-size", "12", "--eval-every", "3", "--eval-tasks", "8", "--eval-sa-steps", "2", "--threads", "1",
        "--seed", "5", "--driver-cpus", "0.25", "--server-cpus", "0.25", "--cpus-per-shard", "0.5"]


def env():
    e = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_USAGE_STATS_ENABLED="0")
    e.pop("RAY_ADDRESS", None)
    return e


def results(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / S.RESULTS_FILE) as fh:
        return list(csv.DictReader(fh))


def test_sweep_interrupted_resumes_exactly_and_its_best_config_trains(tmp_path, tiny_dataset):
    out, e = tmp_path / "sweep", env()
    cmd = [*NRI, "sweep", "--space", "annealing", "--num-samples", "2", "--data", str(tiny_dataset), "--out", str(out),
           "--max-rounds", "24", "--grace-evals", "8", *TINY]  # grace = all 8 evaluations: ASHA cuts nobody here
    proc = subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while not list(out.glob("*/checkpoint_000001")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # Ctrl+C: Tune saves its state and stops the trials
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, log[-3000:]
    assert "sweep interrupted" in log and not (out / S.BEST_FILE).exists()
    rows = results(out)
    assert len(rows) == 2 and {r["status"] for r in rows} != {"TERMINATED"}, rows

    done = subprocess.run([*NRI, "sweep", "--resume", str(out)], env=e, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = results(out)
    assert [r["status"] for r in rows] == ["TERMINATED"] * 2 and [r["rounds"] for r in rows] == ["24"] * 2

    # Each resumed trial ends exactly where one uninterrupted run of its config ends.
    spec = S.load_spec(out)
    trials = sorted(p for p in out.iterdir() if (p / "params.json").exists())
    assert len(trials) == 2
    for trial in trials:
        cfg = S.trial_config(spec, json.loads((trial / "params.json").read_text()))
        local = C.Config.from_dict(C.merge(cfg.to_dict(), {"cluster": {"backend": "local"}}))
        run(local, tiny_dataset, tmp_path / trial.name, progress=False)
        a, b = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (tmp_path / trial.name, trial / "run"))
        torch.testing.assert_close(b["structures"], a["structures"], rtol=0, atol=0)
        for name, tensor in a["modules"].items():
            torch.testing.assert_close(b["modules"][name], tensor, rtol=0, atol=0)

    # The best config is a whole config that `nri-ray train --config` takes as it is.
    best = C.load_file(out / S.BEST_FILE)
    summary = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index("{\n"):])[0]
    assert summary["best"]["config"]["anneal.t0"] == best["anneal"]["t0"]
    trained = subprocess.run([*NRI, "train", "--config", str(out / S.BEST_FILE), "--data", str(tiny_dataset),
                              "--out", str(tmp_path / "best"), "--rounds", "3", "--backend", "local", "--quiet"],
                             env=e, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    used = yaml.safe_load((tmp_path / "best" / "config.yaml").read_text())
    assert used["anneal"] == best["anneal"] and used["model"] == best["model"]


def test_pbt_sweep_exploits_and_finishes(tmp_path, tiny_dataset):
    out = tmp_path / "pbt"
    cmd = [*NRI, "sweep", "--space", "annealing", "--scheduler", "pbt", "--perturbation-evals", "1",
           "--pbt-quantile", "0.5", "--num-samples", "2", "--data", str(tiny_dataset), "--out", str(out),
           "--max-rounds", "15", *TINY]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "[Exploit] Cloning trial" in log  # a trial continued from the other's Tune checkpoint
    rows = results(out)
    assert [r["status"] for r in rows] == ["TERMINATED"] * 2
    assert {"train.lr", "proposal.epsilon", "anneal.temp_factor"} <= set(rows[0])  # what PBT mutates is recorded


def test_sweep_bad_input(tmp_path, tiny_dataset):
    def sweep(*args):
        return subprocess.run([*NRI, "sweep", *map(str, args)], env=env(), capture_output=True, text=True, timeout=120)

    bad = sweep("--space", "annealing", "--data", tiny_dataset, "--out", tmp_path / "s", "--metric", "valid_mse_10")
    assert bad.returncode == 2 and "valid_mse_10" in bad.stderr and "reaches 8 step" in bad.stderr
    bad = sweep("--space", "nope", "--data", tiny_dataset, "--out", tmp_path / "s")
    assert bad.returncode == 2 and "--space" in bad.stderr
    bad = sweep("--space", "annealing", "--data", tmp_path, "--out", tmp_path / "s")
    assert bad.returncode == 2 and "not an nri-ray dataset" in bad.stderr
    bad = sweep("--resume", tmp_path)
    assert bad.returncode == 2 and "sweep.json" in bad.stderr
    assert not (tmp_path / "s").exists()  # nothing was started


def test_pbt_exploration_stays_inside_the_mutation_domains():
    from tuning.spaces import MUTATIONS

    explore = S.clip_to_mutation_domains(MUTATIONS)
    low = explore({"anneal": {"temp_factor": 0.93, "target0": 0.3}, "train": {"lr": 1.0}, "proposal": {"epsilon": 0.1}})
    assert low["anneal"]["temp_factor"] == MUTATIONS["anneal"]["temp_factor"].lower  # >= 1: a valid config
    assert low["train"]["lr"] == MUTATIONS["train"]["lr"].upper
    assert low["anneal"]["target0"] == 0.3 and low["proposal"]["epsilon"] == 0.1  # inside: unchanged
