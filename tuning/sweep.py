"""`nri-ray sweep`: Ray Tune over whole nri-ray training runs.

Each trial is one `nri_ray.train.run` with its own parameter-server and shard actors. The
trainable reserves them with a placement group laid out [trial driver, shard 0 .. S-1, server]
(RayBackend pins each actor to its bundle), reports the meta-valid metrics at every evaluation
together with that round's checkpoint, and restarts from a Tune checkpoint when Tune restores,
pauses or (PBT) exploits a trial. A sweep directory holds Tune's experiment plus:

- `sweep.json`: what was asked (base config, space, scheduler, data): `--resume` rebuilds from it;
- `results.csv`: one row per trial (sampled values, rounds run, last metrics);
- `best_config.yaml`: the best trial's whole config, which `nri-ray train --config` accepts.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import random
import shutil
import tempfile
from pathlib import Path

import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from ray.tune.search import BasicVariantGenerator

from nri_ray import config as C
from nri_ray.errors import ConfigError, NriRayError
from nri_ray.io import atomic_write_text

from .spaces import MUTATIONS, space

SWEEP_FILE = "sweep.json"
RESULTS_FILE = "results.csv"
BEST_FILE = "best_config.yaml"
RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "config.yaml")  # what a Tune checkpoint of a run holds
METRICS = {"valid_mse_1": "min", "valid_mse_10": "min", "valid_mse_20": "min", "valid_loss": "min",
           "valid_edge_accuracy": "max"}
SHOWN = ("valid_edge_accuracy", "valid_mse_1", "valid_mse_10", "accept_rate", "wall_seconds")


def flat_metrics(row: dict) -> dict:
    """A training evaluation row as Tune metrics: horizons flattened (valid_mse_10, ...)."""
    out = {k: v for k, v in row.items() if k != "valid_mse"}
    out.update({f"valid_mse_{h}": v for h, v in row.get("valid_mse", {}).items()})
    return out


def trial_config(spec: dict, sampled: dict) -> C.Config:
    """The sweep's base config with a trial's sampled values over it: the Ray backend, the sweep's
    round budget and shard count, and a checkpoint at every evaluation (each report carries one)."""
    values = C.merge(C.merge(spec["base"], sampled),
                     {"train": {"rounds": spec["max_rounds"], "num_shards": spec["shards_per_trial"]},
                      "cluster": {"backend": "ray"}})
    cfg = C.Config.from_dict(values)
    return dataclasses.replace(cfg, train=cfg.train.replace(checkpoint_every=cfg.train.eval_every))


def train_trial(sampled: dict, spec: dict) -> None:
    """Tune function trainable: one training run, reported and checkpointed at every evaluation."""
    from nri_ray.train import run

    ctx = tune.get_context()
    run_dir = Path(ctx.get_trial_dir()) / "run"
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # restore, unpause, or PBT exploit: start exactly from Tune's checkpoint
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        with checkpoint.as_directory() as d:
            for name in RUN_FILES:
                if (Path(d) / name).exists():
                    shutil.copy2(Path(d) / name, run_dir / name)
    elif run_dir.exists():  # a trial restarted before its first checkpoint
        shutil.rmtree(run_dir)

    def report(row: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="nri-ckpt-") as d:
            for name in RUN_FILES:
                shutil.copy2(run_dir / name, Path(d) / name)
            tune.report(flat_metrics(row), checkpoint=tune.Checkpoint.from_directory(d))

    # A fresh namespace per incarnation: actors of a stopped incarnation may still be releasing names.
    run(trial_config(spec, sampled), spec["data"], run_dir, resume=checkpoint is not None, report=report,
        progress=False, run_name=f"{ctx.get_trial_id()}-{os.urandom(3).hex()}", mutate=True)


def trial_resources(spec: dict) -> tune.PlacementGroupFactory:
    """[trial driver] + one bundle per shard + [parameter server], packed onto as few nodes as fit."""
    c = C.Config.from_dict(spec["base"]).cluster
    shard = {"CPU": c.cpus_per_shard, **({"GPU": c.gpus_per_shard} if c.gpus_per_shard else {}),
             **({c.shard_resource: 0.01} if c.shard_resource else {})}
    server = {"CPU": spec["server_cpus"], **({c.server_resource: 0.01} if c.server_resource else {})}
    return tune.PlacementGroupFactory([{"CPU": spec["driver_cpus"]}] + [shard] * spec["shards_per_trial"] + [server],
                                      strategy="PACK")


def trainable(spec: dict):
    return tune.with_resources(tune.with_parameters(train_trial, spec=spec), trial_resources(spec))


def is_section_domain(value) -> bool:
    """A space entry that samples whole sections (a dict of fields per value), not field by field."""
    return not isinstance(value, dict) or "grid_search" in value


def pbt_mutations(spec: dict) -> dict:
    """PBT's mutations, minus sections the space samples whole (their fields cannot be perturbed alone)."""
    sampled = space(spec["space"])
    return {k: v for k, v in MUTATIONS.items() if k not in sampled or not is_section_domain(sampled[k])}


def clip_to_mutation_domains(mutations: dict):
    """PBT's explore multiplies values by 0.8 or 1.2 past their domain (temp_factor 1.02 * 0.8 < 1
    is invalid); this keeps every perturbed value inside the domain it was sampled from."""
    def explore(config: dict) -> dict:
        for section, fields in mutations.items():
            for name, domain in fields.items():
                if section in config and name in config[section] and hasattr(domain, "lower"):
                    config[section][name] = min(max(config[section][name], domain.lower), domain.upper)
        return config
    return explore


def param_space(spec: dict) -> dict:
    """The space; under PBT every mutated field is in it too (PBT perturbs only keys a config has)."""
    sampled = space(spec["space"])
    return C.merge(pbt_mutations(spec), sampled) if spec["scheduler"] == "pbt" else sampled


def scheduler(spec: dict):
    iterations = max(1, math.ceil(spec["max_rounds"] / C.Config.from_dict(spec["base"]).train.eval_every))
    if spec["scheduler"] == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=iterations,
                             grace_period=max(1, min(spec["grace_evals"], iterations)), reduction_factor=2)
    mutations = pbt_mutations(spec)
    # Synchronous PBT: trials exploit only once all have reached the same evaluation, so which trial
    # clones which does not depend on which one the machine happened to run faster (asynchronous PBT
    # skipped every exploit when one short trial finished before the other reported).
    return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=spec["perturbation_evals"],
                                   quantile_fraction=spec["pbt_quantile"], hyperparam_mutations=mutations,
                                   custom_explore_fn=clip_to_mutation_domains(mutations), synch=True)


def make_spec(*, space_name: str, data: str, base: dict, num_samples: int, scheduler_name: str, max_rounds: int,
              metric: str, shards_per_trial: int = 1, driver_cpus: float = 0.5, server_cpus: float = 0.5,
              max_concurrent: int = 0, grace_evals: int = 2, perturbation_evals: int = 2,
              pbt_quantile: float = 0.25) -> dict:
    """Validate and record everything a sweep needs (written to `sweep.json`)."""
    if scheduler_name not in ("asha", "pbt"):
        raise ConfigError(f"--scheduler: got {scheduler_name!r}, expected asha or pbt")
    if metric not in METRICS:
        raise ConfigError(f"--metric: got {metric!r}, expected one of {', '.join(METRICS)}")
    if not 0 < pbt_quantile <= 0.5:
        raise ConfigError(f"--pbt-quantile: got {pbt_quantile}, expected a fraction in (0, 0.5]")
    for flag, value in (("--num-samples", num_samples), ("--max-rounds", max_rounds),
                        ("--shards-per-trial", shards_per_trial)):
        if value < 1:
            raise ConfigError(f"{flag}: got {value}, expected a positive integer")
    if not (Path(data) / "meta.json").exists():
        raise NriRayError(f"--data {data}: not an nri-ray dataset (no meta.json)")
    space(space_name)  # unknown names fail here, before anything starts
    if metric.startswith("valid_mse_"):  # the evaluator rolls out over the valid split's last 20 frames
        from nri_ray.data import Dataset

        reach = min(20, Dataset(data).frames("valid") - 1)
        if int(metric.rsplit("_", 1)[1]) > reach:
            raise ConfigError(f"--metric {metric}: the valid split of {data} reaches {reach} step(s) ahead; "
                              f"use valid_loss or valid_mse_1")
    base_cfg = C.Config.from_dict(base)  # validates the base config
    if base_cfg.train.eval_every > max_rounds:
        raise ConfigError(f"--eval-every {base_cfg.train.eval_every} exceeds --max-rounds {max_rounds}: "
                          "trials would report only once")
    return {"version": 1, "space": space_name, "data": str(Path(data).resolve()), "base": base_cfg.to_dict(),
            "num_samples": num_samples, "scheduler": scheduler_name, "max_rounds": max_rounds, "metric": metric,
            "mode": METRICS[metric], "shards_per_trial": shards_per_trial, "driver_cpus": driver_cpus,
            "server_cpus": server_cpus, "max_concurrent": max_concurrent, "grace_evals": grace_evals,
            "perturbation_evals": perturbation_evals, "pbt_quantile": pbt_quantile, "seed": base_cfg.train.seed}


def _tuner(spec: dict, out: Path) -> tune.Tuner:
    keep = None if spec["scheduler"] == "pbt" else 2  # PBT needs old checkpoints to exploit (>= 4 or None)
    random.seed(spec["seed"])  # PBT draws its perturbations from Python's `random`
    return tune.Tuner(
        trainable(spec), param_space=param_space(spec),
        tune_config=tune.TuneConfig(metric=spec["metric"], mode=spec["mode"], scheduler=scheduler(spec),
                                    search_alg=BasicVariantGenerator(random_state=spec["seed"]),
                                    num_samples=spec["num_samples"], max_concurrent_trials=spec["max_concurrent"] or None,
                                    trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(name=out.name, storage_path=str(out.parent), verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=keep)))


def _init_ray(address: str) -> None:
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None)
    else:
        ray.init(address="local", num_cpus=os.cpu_count() or 1, dashboard_host="127.0.0.1", include_dashboard=True)


def run_sweep(spec: dict, out: str | Path, *, address: str = "") -> dict:
    """Start a sweep in `out` (must not exist or be empty). Returns the summary."""
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise NriRayError(f"--out {out}: already exists and is not empty; use --resume {out} or another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SWEEP_FILE, json.dumps(spec, indent=2) + "\n")
    _init_ray(address)
    return finish(spec, out, _tuner(spec, out).fit())


def resume_sweep(out: str | Path, *, address: str = "") -> dict:
    """Continue an interrupted sweep (Tuner.restore): finished trials stay, the rest resume from checkpoints."""
    out = Path(out).resolve()
    spec = load_spec(out)
    _init_ray(address)
    if not tune.Tuner.can_restore(str(out)):
        raise NriRayError(f"--resume {out}: no Tune experiment state there yet (the sweep stopped before it started)")
    tuner = tune.Tuner.restore(str(out), trainable=trainable(spec), resume_unfinished=True, resume_errored=True,
                               param_space=param_space(spec))
    return finish(spec, out, tuner.fit())


def load_spec(out: Path) -> dict:
    path = out / SWEEP_FILE
    if not path.exists():
        raise NriRayError(f"--resume {out}: no {SWEEP_FILE}; is this a sweep directory?")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise NriRayError(f"{path}: not valid JSON ({e})") from None
    if spec.get("version") != 1:
        raise NriRayError(f"{path}: version {spec.get('version')!r}, expected 1")
    return spec


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def searched_keys(spec: dict) -> list[str]:
    """Dotted config keys the space varies (a sub-dict domain counts for each of its fields)."""
    keys = []
    for section, fields in param_space(spec).items():
        if not is_section_domain(fields):
            keys += [f"{section}.{k}" for k in fields]
        else:  # one domain over whole sections
            values = fields["grid_search"] if isinstance(fields, dict) else fields.categories
            keys += sorted({f"{section}.{k}" for v in values for k in v})
    return keys


def finish(spec: dict, out: Path, grid) -> dict:
    """Write results.csv, print the best trials; on a complete sweep write best_config.yaml.

    Trial statuses come from the experiment state on disk (what `--resume` would continue), not
    from the returned grid: after Ctrl+C Tune reports stopped trials as terminated in memory but
    saves them as pending.
    """
    keys = searched_keys(spec)
    statuses = {t.trial_id: t.status for t in tune.ExperimentAnalysis(str(out)).trials}
    rows = []
    for result in grid:
        config, metrics = flatten(result.config or {}), result.metrics or {}
        trial_id = Path(result.path).name  # the metrics' trial_id is the donor's after a PBT exploit
        rows.append({"trial_id": trial_id, "status": statuses.get(trial_id, "UNKNOWN"),
                     **{k: config.get(k) for k in keys}, "rounds": metrics.get("round"),
                     **{m: metrics.get(m) for m in (spec["metric"], *SHOWN)}})
    finished = sum(s in ("TERMINATED", "ERROR") for s in statuses.values())
    errors = sum(s == "ERROR" for s in statuses.values())
    sign = 1 if spec["mode"] == "min" else -1
    ok = [r for r in rows if r[spec["metric"]] is not None and math.isfinite(r[spec["metric"]])]
    ok.sort(key=lambda r: sign * r[spec["metric"]])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["trial_id"])
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["trial_id"]))
    atomic_write_text(out / RESULTS_FILE, buffer.getvalue())
    summary = {"trials": len(statuses), "finished": finished, "errors": errors,
               "interrupted": finished < len(statuses), "metric": spec["metric"], "mode": spec["mode"], "best": None}
    print(format_table(ok, keys, spec))
    if summary["interrupted"]:
        print(f"sweep interrupted: {finished} of {len(statuses)} trials finished; continue with "
              f"`nri-ray sweep --resume {out}`")
        return summary
    if ok:
        best = grid.get_best_result(metric=spec["metric"], mode=spec["mode"])
        values = trial_config(spec, best.config).to_dict()
        values.pop("cluster")  # where it ran is not part of the result; the trainer picks its own
        values["train"].pop("num_shards")
        atomic_write_text(out / BEST_FILE, f"# best of sweep {out.name}: {spec['metric']} = "
                          f"{best.metrics[spec['metric']]:.6g} (trial {best.metrics.get('trial_id')})\n"
                          + yaml.safe_dump(values, sort_keys=False))
        summary["best"] = {"trial_id": best.metrics.get("trial_id"), spec["metric"]: best.metrics[spec["metric"]],
                           "config": {k: flatten(best.config).get(k) for k in keys}}
    print(f"results: {out / RESULTS_FILE}" + (f"; best config: {out / BEST_FILE}" if ok else ""))
    return summary


def format_table(rows: list[dict], keys: list[str], spec: dict, top: int = 10) -> str:
    """The best trials as an aligned text table (best first)."""
    if not rows:
        return "no trial reported a finite " + spec["metric"]
    columns = ["trial_id", *keys, "rounds", spec["metric"], *[m for m in SHOWN if m != spec["metric"]]]

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, dict):
            return ",".join(f"{k}={x}" for k, x in v.items())
        return str(v)

    table = [[c.split(".")[-1] for c in columns]] + [[cell(r.get(c)) for c in columns] for r in rows[:top]]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in table]
    title = f"best {min(top, len(rows))} of {len(rows)} trials by {spec['metric']} ({spec['mode']})"
    return "\n".join([title, *lines])
