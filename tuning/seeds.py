"""`nri-ray experiment seeds`: one config trained on many (data seed, train seed) pairs, as Tune trials.

A method that works for one seed and fails for the next is a lottery; this experiment measures the
spread. Each data seed's dataset is generated once (`OUT/data/<sim>-d<seed>`); every pair is one
Ray Tune trial that trains the same config with its train seed into `OUT/runs/d<D>-t<T>` (its own
parameter-server and shard actors in the trial's placement group, as `nri-ray sweep` places them),
then scores it on the test split with `--test-sa-steps` SA steps (`result.json` beside the run). A
cluster runs the pairs side by side; one machine runs them in turn. Rerunning the same command
continues: a pair with a `result.json` is not retrained, a pair with a checkpoint resumes from it.

Outputs: `OUT/seeds.json` (every pair's test edge accuracy, proposal accuracy, MSE at 1/10/20
steps, health ratio, rounds and seconds; min / median / max of each) and `OUT/seeds.png` (meta-valid
edge accuracy and the label-free health ratio against round, one line per pair).
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from ray import tune

from nri_ray import config as C
from nri_ray.errors import ConfigError, NriRayError
from nri_ray.io import atomic_write_text

from .sweep import _init_ray, flat_metrics, trial_resources

SEEDS_FILE = "seeds.json"
PLOT_FILE = "seeds.png"
RESULT_FILE = "result.json"
# Per-pair numbers summarized as min / median / max (dotted keys reach into the "mse" dict).
SUMMARIZED = ("edge_accuracy", "proposal_accuracy", "mse.1", "mse.10", "mse.20", "health_ratio", "train_seconds")


def parse_seeds(text: str, flag: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"{flag}: got {text!r}, expected comma-separated seeds >= 0 like 42,1,2")
    return seeds


def parse_pairs(text: str) -> list[tuple[int, int]]:
    """`D:T,D:T,...` -> [(data seed, train seed), ...]."""
    pairs = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        d, _, t = item.partition(":")
        if not (d.isdigit() and t.isdigit()):
            raise ConfigError(f"--pairs: got {item!r} in {text!r}, expected DATA_SEED:TRAIN_SEED like 42:0")
        pairs.append((int(d), int(t)))
    if not pairs:
        raise ConfigError(f"--pairs: got {text!r}, expected DATA_SEED:TRAIN_SEED pairs like 42:0,1:42")
    return pairs


def data_dir(out: Path, sim: str, data_seed: int) -> Path:
    return out / "data" / f"{sim}-d{data_seed}"


def run_dir(out: Path, pair: tuple[int, int]) -> Path:
    return out / "runs" / f"d{pair[0]}-t{pair[1]}"


def make_spec(*, pairs: list[tuple[int, int]], generate: dict, base: dict, out: Path, test_sa_steps: int,
              shards_per_trial: int, driver_cpus: float, server_cpus: float) -> dict:
    """Validate and record what the experiment needs (written to OUT/seeds.json's `spec`)."""
    if len(set(pairs)) != len(pairs):
        raise ConfigError(f"--pairs: a (data seed, train seed) pair is listed twice in {pairs}")
    if test_sa_steps < 0:
        raise ConfigError(f"--test-sa-steps: got {test_sa_steps}, expected a value >= 0")
    if shards_per_trial < 1:
        raise ConfigError(f"--shards-per-trial: got {shards_per_trial}, expected a positive integer")
    C.GenerateConfig.from_dict(generate)  # validates the data flags
    C.Config.from_dict(base)  # validates the training flags
    return {"pairs": [list(p) for p in pairs], "generate": generate, "base": base, "out": str(out),
            "test_sa_steps": test_sa_steps, "shards_per_trial": shards_per_trial, "driver_cpus": driver_cpus,
            "server_cpus": server_cpus}


def pair_config(spec: dict, train_seed: int) -> C.Config:
    """The experiment's config with this pair's train seed, on the Ray backend with the trial's shards."""
    return C.Config.from_dict(C.merge(spec["base"], {"train": {"seed": train_seed, "num_shards": spec["shards_per_trial"]},
                                                     "cluster": {"backend": "ray"}}))


def seed_trial(sampled: dict, spec: dict) -> None:
    """Tune function trainable: train one pair (or resume it), report at every evaluation, score on test."""
    from nri_ray.evaluate import evaluate
    from nri_ray.train import run

    out = Path(spec["out"])
    pair = tuple(sampled["pair"])
    run_path, data_path = run_dir(out, pair), data_dir(out, spec["generate"]["sim"], pair[0])
    result_path = run_path / RESULT_FILE
    if result_path.exists():
        tune.report(json.loads(result_path.read_text())["final"])
        return
    if not (run_path / "summary.json").exists():
        resume = (run_path / "checkpoint.pt").exists()
        if not resume and run_path.exists():  # stopped before its first checkpoint: start over
            import shutil

            shutil.rmtree(run_path)
        run(pair_config(spec, pair[1]), data_path, run_path, resume=resume, progress=False,
            report=lambda row: tune.report(flat_metrics(row)), run_name=f"seeds-d{pair[0]}-t{pair[1]}-{os.urandom(3).hex()}")
    summary = json.loads((run_path / "summary.json").read_text())
    scored = evaluate(run_path, data_path, "test", sa_steps=spec["test_sa_steps"], device="auto", plot=False)
    final = {"data_seed": pair[0], "train_seed": pair[1], "edge_accuracy": scored["edge_accuracy"],
             "proposal_accuracy": scored["proposal_accuracy"], "mse": scored["mse"],
             "health_ratio": scored["health_ratio"], "valid_health_ratio": summary.get("health_ratio"),
             "rounds": summary["final_round"], "train_seconds": summary["wall_seconds"],
             "test_seconds": scored["seconds"], "test_tasks": scored["tasks"], "test_sa_steps": scored["sa_steps"]}
    atomic_write_text(result_path, json.dumps({"final": final}, indent=2) + "\n")
    tune.report({k: v for k, v in final.items() if k != "mse"} | {f"mse_{h}": v for h, v in final["mse"].items()})


def _generate_data(spec: dict, log) -> None:
    from nri_ray.datagen import generate

    out = Path(spec["out"])
    for seed in sorted({p[0] for p in spec["pairs"]}):
        path = data_dir(out, spec["generate"]["sim"], seed)
        if not (path / "meta.json").exists():
            generate(C.GenerateConfig.from_dict({**spec["generate"], "seed": seed}), path, progress=False)
            log(f"generated {path}")


def _tuner(spec: dict) -> tune.Tuner:
    out = Path(spec["out"])
    resources = trial_resources({**spec, "base": spec["base"]})
    trainable = tune.with_resources(tune.with_parameters(seed_trial, spec=spec), resources)
    return tune.Tuner(trainable, param_space={"pair": tune.grid_search([list(p) for p in spec["pairs"]])},
                      tune_config=tune.TuneConfig(trial_dirname_creator=lambda t: f"d{t.config['pair'][0]}-t{t.config['pair'][1]}"),
                      run_config=tune.RunConfig(name="tune", storage_path=str(out), verbose=0,
                                                failure_config=tune.FailureConfig(max_failures=1)))


def summarize(spec: dict) -> dict:
    """Collect every pair's result.json into OUT/seeds.json and draw OUT/seeds.png."""
    from nri_ray import plots

    out = Path(spec["out"])
    rows, missing, curves = [], [], {}
    for d, t in spec["pairs"]:
        path = run_dir(out, (d, t))
        if (path / RESULT_FILE).exists():
            rows.append(json.loads((path / RESULT_FILE).read_text())["final"])
        else:
            missing.append([d, t])
        if (path / "metrics.jsonl").exists():
            curves[f"{d}:{t}"] = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines() if x.strip()]

    def value(row: dict, key: str):
        head, _, tail = key.partition(".")
        v = row.get(head)
        return v.get(tail) if tail and isinstance(v, dict) else v

    stats = {}
    for key in SUMMARIZED:
        values = [v for v in (value(r, key) for r in rows) if v is not None]
        if values:
            stats[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    result = {"pairs": rows, "missing": missing, "summary": stats,
              "config": C.Config.from_dict(spec["base"]).to_dict(), "spec": spec}
    atomic_write_text(out / SEEDS_FILE, json.dumps(result, indent=2) + "\n")
    if curves:
        plots.seed_curves(curves, out / PLOT_FILE)
    return result


def run_seeds(spec: dict, *, address: str = "", log=print) -> dict:
    """Generate the datasets, run every pair as a Tune trial, summarize. Rerunning continues."""
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    _generate_data(spec, log)
    _init_ray(address)
    grid = _tuner(spec).fit()
    errors = [r.error for r in grid if r.error is not None]
    result = summarize(spec)
    for e in errors:
        log(f"a trial failed: {e}")
    if result["missing"]:
        raise NriRayError(f"experiment seeds: {len(result['missing'])} pair(s) have no result "
                          f"({', '.join(f'{d}:{t}' for d, t in result['missing'])}); rerun the same command to continue")
    return result


def format_summary(result: dict) -> str:
    lines = ["pair (data:train)  edge acc  proposal  health   mse@1     mse@10    train s"]
    for r in result["pairs"]:
        mse = r["mse"]
        lines.append(f"{r['data_seed']:>8}:{r['train_seed']:<9} {100 * r['edge_accuracy']:7.2f}%  "
                     f"{100 * r['proposal_accuracy']:6.2f}%  {r['health_ratio']:.4f}  {mse.get('1', float('nan')):.2e}  "
                     f"{mse.get('10', float('nan')):.2e}  {r['train_seconds']:7.0f}")
    acc = result["summary"].get("edge_accuracy")
    if acc:
        lines.append(f"edge accuracy over {len(result['pairs'])} pairs: min {100 * acc['min']:.2f}%  "
                     f"median {100 * acc['median']:.2f}%  max {100 * acc['max']:.2f}%")
    return "\n".join(lines)
