"""`run(config, ...)`: the BounceGrad round loop, readable top to bottom.

Each round: sample a meta-batch (a pure function of seed and round), send the weights to the
shards, gather their reports, let the server pool and step, mirror the changed structures, move
the temperature. Components own their cadence: the evaluator decides when to evaluate, the
checkpointer when to save. Everything random is keyed by (seed, task, round), so a run resumed
from a checkpoint continues exactly as if it had never stopped.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import yaml
from tqdm import tqdm

from . import checkpoint, rng
from .annealing import TemperatureState, initial_state, next_temperature
from .config import Config
from .data import Dataset, Normalization
from .distributed import make_backend
from .errors import NriRayError
from .infer import infer_for_run, module_share, prediction_mse, prediction_start, structure_health
from .io import atomic_write_text
from .metrics import inference_accuracies, matched_accuracy
from .shard import resolve_device
from .weights import Models, build_models

# Fields that may differ between a run and its resume (they change no result).
RESUMABLE_CHANGES = {("train", "rounds"), ("train", "eval_every"), ("train", "checkpoint_every"),
                     ("train", "eval_tasks"), ("train", "eval_sa_steps"), ("train", "device"), ("train", "threads"),
                     *(("cluster", f) for f in ("backend", "address", "cpus_per_shard", "gpus_per_shard",
                                                "server_resource", "shard_resource", "max_shard_failures"))}
# Hyper-parameters that may change on resume when asked for (PBT's exploit-and-explore): each is
# read afresh every round, or (the module lr) set on the optimizer after loading.
MUTABLE_ON_RESUME = {("train", "lr"), ("proposal", "epsilon"), ("proposal", "proposal_lr"), ("anneal", "temp_decay"),
                     ("anneal", "target0"), ("anneal", "temp_factor"), ("anneal", "ratio_rate")}


# The health ratio (meta-valid SA loss of the inferred structures / that of the best single-module
# structure) above which a finished run is reported as not separated. Measured on springs5 with the
# small preset (docs/RESULTS.md, seed robustness): with block-start inference converged runs end
# at 0.003-0.013 and runs stuck at 57-69% edge accuracy at 0.14-0.19; with the greedy inference
# used before, 0.02-0.03 against 0.085-0.23 (a run at 91% was at 0.085).
HEALTH_LIMIT = 0.05


def health_warning(summary: dict) -> str | None:
    """A sentence for the user when the run's final health ratio says its edge modules have not separated."""
    ratio = summary.get("health_ratio")
    if ratio is None or ratio <= HEALTH_LIMIT:
        return None
    return (f"the inferred structures predict meta-valid tasks only {1 / ratio:.1f}x better than one edge module "
            f"on every edge (health ratio {ratio:.3f} > {HEALTH_LIMIT}): the edge modules have not separated into "
            f"distinct relations, so inferred graphs are unreliable. Train longer (--resume RUN --rounds N), or "
            f"check that relations matter for predicting this data")


class TrainingError(NriRayError):
    """Training cannot go on (e.g. a NaN loss); the last good checkpoint is kept."""


class Result(NamedTuple):
    run_dir: Path
    summary: dict


def sample_batch(seed: int, round_idx: int, num_tasks: int, batch_size: int) -> np.ndarray:
    """The round's meta-batch: `batch_size` distinct task ids, a pure function of (seed, round)."""
    keys = rng.uniform(seed, torch.zeros(1, dtype=torch.int64), round_idx, rng.BATCH, num_tasks)[0]
    return np.sort(torch.argsort(keys)[: min(batch_size, num_tasks)].numpy())


class Evaluator:
    """Meta-valid evaluation every `eval_every` rounds (and at the last round)."""

    def __init__(self, cfg: Config, data: Dataset, device: torch.device, in_frames: int):
        t = cfg.train
        count = data.num_tasks("valid") if t.eval_tasks == 0 else min(t.eval_tasks, data.num_tasks("valid"))
        part = data.read("valid", 0, count)
        self.trajectories = torch.as_tensor(part.trajectories, device=device)
        self.task_ids, self.labels = torch.as_tensor(part.task_ids, device=device), part.labels
        self.cfg, self.in_frames = cfg, in_frames

    def due(self, round_idx: int, last: bool) -> bool:
        return (round_idx + 1) % self.cfg.train.eval_every == 0 or last

    def __call__(self, lib, proposer) -> dict:
        cfg = self.cfg
        device = self.trajectories.device
        lib, proposer = lib.to(device), proposer.to(device)
        sa_frames = min(cfg.train.sa_frames, self.trajectories.shape[1])
        inf = infer_for_run(lib, proposer, cfg, self.trajectories, self.task_ids, cfg.train.eval_sa_steps)
        k = cfg.model.edge_modules
        start = prediction_start(self.trajectories.shape[1], sa_frames)  # the window's last frames
        mse = prediction_mse(lib, self.trajectories, inf.structures, start)
        health = structure_health(lib, self.trajectories[:, :sa_frames], inf.losses, cfg.model.rollout)
        scored = inference_accuracies(inf, self.labels, k, prefix="valid_")  # none on an unlabeled dataset
        return {**scored, "valid_loss": float(inf.losses.mean()),
                "valid_mse": {h: v for h, v in mse.items()}, **health,
                "valid_module_share": module_share(inf.structures, k)}


class MetricsLog:
    """`metrics.jsonl`: one JSON object per evaluation; on resume, lines past the checkpoint go."""

    def __init__(self, path: Path, resume_round: int | None):
        self.path = path
        lines = path.read_text().splitlines() if (resume_round is not None and path.exists()) else []
        self.rows = [json.loads(x) for x in lines if json.loads(x)["round"] <= (resume_round or 0)]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def log(self, row: dict) -> None:
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


class Checkpointer:
    def __init__(self, run_dir: Path, every: int):
        self.run_dir, self.every = run_dir, every

    def maybe_save(self, round_idx: int, last: bool, state: Callable[[], dict]) -> None:
        if (round_idx + 1) % self.every == 0 or last:
            checkpoint.save(self.run_dir, state())


def check_resume_config(saved: dict, cfg: Config, run_dir: Path, allowed: set = frozenset()) -> None:
    new = cfg.to_dict()
    saved = Config.from_dict(saved).to_dict()  # normalized: runs saved before widths were lists hold "64,64"
    diffs = [f"{s}.{k}: checkpoint {saved[s].get(k)!r}, now {v!r}" for s, fields in new.items()
             for k, v in fields.items()
             if saved.get(s, {}).get(k) != v and (s, k) not in RESUMABLE_CHANGES and (s, k) not in allowed]
    if diffs:
        raise NriRayError(f"--resume {run_dir}: config differs from the run's: " + "; ".join(diffs))


def _round_stats(reports) -> dict:
    tasks = sum(r.tasks for r in reports)
    worse = sum(r.worse for r in reports)
    confusions = [r.confusion for r in reports if r.confusion is not None]  # none on unlabeled data
    return {"loss": sum(r.loss_sum for r in reports) / tasks, "grad_loss": sum(r.grad_loss_sum for r in reports) / tasks,
            "proposal_loss": sum(r.proposal_loss_sum for r in reports) / tasks,
            "accept_rate": sum(r.accepted for r in reports) / max(1, sum(r.proposals for r in reports)),
            "worse_accept_rate": (sum(r.worse_accepted for r in reports) / worse) if worse else 0.0,
            "worse": worse, "worse_accepted": sum(r.worse_accepted for r in reports),
            **({"batch_edge_accuracy": matched_accuracy(sum(confusions))} if confusions else {}),
            "shard_seconds": max(r.seconds for r in reports)}


def _resume_state(cfg: Config, data: Dataset, data_dir, run_dir: Path, mutate: bool) -> dict:
    """The checkpoint to resume from, checked against the config and the data."""
    state = checkpoint.load(run_dir)
    check_resume_config(state["config"], cfg, run_dir, MUTABLE_ON_RESUME if mutate else frozenset())
    for optimizer, section, field in (("opt_modules", "train", "lr"), ("opt_proposal", "proposal", "proposal_lr")):
        lr = getattr(getattr(cfg, section), field)
        if state["config"][section][field] != lr:  # a mutated lr replaces the saved one (and its plateau cuts)
            for group in state[optimizer]["param_groups"]:
                group["lr"] = lr
    if state["meta"]["n_balls"] != data.n_balls:
        raise NriRayError(f"--data {data_dir}: {data.n_balls} balls, the checkpoint was trained on "
                          f"{state['meta']['n_balls']}")
    if state["meta"]["dims"] != data.dims:
        raise NriRayError(f"--data {data_dir}: {data.dims} state dims, the checkpoint was trained on "
                          f"{state['meta']['dims']}")
    return state


def _run_meta(cfg: Config, data: Dataset, data_dir) -> dict:
    """What a run records about its data (and checks of the config against it)."""
    num_tasks = data.num_tasks("train")
    if cfg.train.train_tasks:
        if cfg.train.train_tasks > num_tasks:
            raise NriRayError(f"train.train_tasks: {cfg.train.train_tasks}, but {data_dir} has {num_tasks} train tasks")
        num_tasks = cfg.train.train_tasks
    frames = data.frames("train")
    if cfg.train.grad_split == "heldout" and frames - cfg.train.heldout_frames < 2:
        raise NriRayError(f"train.heldout_frames: {cfg.train.heldout_frames} leaves fewer than 2 of {frames} frames for SA")
    in_frames = frames if cfg.train.grad_split == "same" else frames - cfg.train.heldout_frames  # the SA window
    return {"n_balls": data.n_balls, "dims": data.dims, "in_frames": in_frames, "num_tasks": num_tasks,
            "simulator": data.sim, "normalization": data.normalization.to_dict(), "data_dir": str(Path(data_dir).resolve())}


def _fail_nonfinite(what: str, round_idx: int, value, run_dir: Path) -> TrainingError:
    saved = (run_dir / checkpoint.LATEST).exists()
    kept = f"the last good checkpoint in {run_dir / checkpoint.LATEST} is kept" if saved else "no checkpoint had been written yet"
    return TrainingError(f"round {round_idx}: non-finite {what} ({value}); stopped; {kept} (a lower --lr may help)")


def run(cfg: Config, data_dir: str | Path, run_dir: str | Path, *, resume: bool = False,
        report: Callable[[dict], None] | None = None, progress: bool = True, backend=None,
        run_name: str | None = None, mutate: bool = False) -> Result:
    """Train (or resume) a run.

    `report(metrics)` is called at every evaluation, after that round's checkpoint (if one is due)
    is written. `run_name` names the Ray namespace (default: the run directory's name).
    `mutate=True` lets a resume change the MUTABLE_ON_RESUME hyper-parameters (PBT). The backend
    (given or made here) is closed when the run ends, however it ends. A new run that fails
    before its first checkpoint leaves nothing behind, so the same command can be retried.
    """
    cfg = cfg.resolved()
    run_dir, data = Path(run_dir), Dataset(data_dir)
    torch.manual_seed(cfg.train.seed)  # nothing should draw from it; belt and braces
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    state = _resume_state(cfg, data, data_dir, run_dir, mutate) if resume else None
    if state is None and run_dir.exists() and any(run_dir.iterdir()):
        raise NriRayError(f"--out {run_dir}: already exists and is not empty; use --resume {run_dir} or another --out")
    meta = _run_meta(cfg, data, data_dir)
    created = not run_dir.exists()
    try:
        backend = backend or make_backend(cfg, data_dir, meta["num_tasks"], run_name or run_dir.name)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            summary = _train(cfg, data, run_dir, meta, state, backend, report, progress)
        finally:
            backend.close()
    except BaseException:
        if state is None and not (run_dir / checkpoint.LATEST).exists():  # a failed start: nothing to resume
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:
                for name in ("config.yaml", "metrics.jsonl"):
                    (run_dir / name).unlink(missing_ok=True)
        raise
    return Result(run_dir, summary)


def _train(cfg: Config, data: Dataset, run_dir: Path, meta: dict, state: dict | None, backend, report,
           progress: bool) -> dict:
    """The round loop of `run`; returns the summary."""
    device = resolve_device(cfg.train.device)
    server = backend.make_server(cfg, meta["dims"], meta["in_frames"])  # in process, or the parameter-server actor
    for model in server.models():  # in process: before the optimizers hold any state
        model.to(device)
    temp, start_round, wall_before = initial_state(cfg.anneal.t0), 0, 0.0
    if state is not None:
        server.load_state_dict(state)
        backend.set_structures(state["structures"].numpy())
        temp = TemperatureState(*state["temperature"])
        start_round, wall_before = int(state["round"]) + 1, float(state.get("wall_seconds", 0.0))
    mirror = backend.structures()  # [tasks, edges] int8: the driver's copy of every structure
    if getattr(backend, "dashboard_url", None):
        print(f"Ray dashboard: http://{backend.dashboard_url} (token authentication is on: paste the token "
              f"that `ray get-auth-token` prints)", flush=True)
    if hasattr(backend, "placement"):
        nodes = backend.placement()
        print(f"{len(nodes)} shard actors on {len(set(nodes))} Ray node(s)", flush=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    evaluator = Evaluator(cfg, data, device, meta["in_frames"])
    log = MetricsLog(run_dir / "metrics.jsonl", start_round if state is not None else None)  # rounds done
    checkpointer = Checkpointer(run_dir, cfg.train.checkpoint_every)
    rounds, t_start = cfg.train.rounds, time.perf_counter()
    bar = tqdm(range(start_round, rounds), initial=start_round, total=rounds, disable=not progress, desc="bouncegrad",
               mininterval=1.0)
    stats, last_eval, weights = {}, {}, server.weights()
    for round_idx in bar:
        last = round_idx == rounds - 1
        batch = sample_batch(cfg.train.seed, round_idx, meta["num_tasks"], cfg.train.meta_batch_size)
        reports, gradients = backend.step_all(weights, round_idx, batch, temp.temperature, mirror)
        stats = _round_stats(reports)
        if not all(math.isfinite(stats[k]) for k in ("loss", "grad_loss", "proposal_loss")):
            raise _fail_nonfinite("loss", round_idx, stats["grad_loss"], run_dir)
        weights, applied = server.apply(round_idx, *gradients)  # gradients and weights: references under Ray
        if not applied.finite:
            raise _fail_nonfinite("gradient", round_idx, f"loss {stats['grad_loss']:.3e} is finite", run_dir)
        for r in reports:
            mirror[r.changed_ids] = r.changed_structures
        stats["temperature"] = temp.temperature
        backend.observe_round(round_idx, stats, reports)
        temp = next_temperature(temp, round_idx, stats["worse"], stats["worse_accepted"], cfg.anneal)
        if evaluator.due(round_idx, last):
            last_eval = evaluator(*server.models())
            if (round_idx + 1) % cfg.train.eval_every == 0:
                server.observe(last_eval["valid_loss"])  # only on the regular cadence: resume stays exact
            row = {"round": round_idx + 1, **{k: v for k, v in stats.items() if k not in ("worse", "worse_accepted")},
                   **last_eval, "lr": server.lr(),
                   "wall_seconds": wall_before + time.perf_counter() - t_start}
            log.log(row)
            backend.observe_eval(row)
        bar.set_postfix(loss=f"{stats['loss']:.2e}", acc_rate=f"{stats['accept_rate']:.2f}",
                        edge_acc=f"{last_eval.get('valid_edge_accuracy', float('nan')):.3f}",
                        health=f"{last_eval.get('health_ratio', float('nan')):.3f}", refresh=False)
        checkpointer.maybe_save(round_idx, last, lambda: {
            **server.state_dict(), "round": round_idx, "config": cfg.to_dict(), "meta": meta,
            "structures": torch.as_tensor(mirror), "temperature": list(temp),
            "wall_seconds": wall_before + time.perf_counter() - t_start})
        if report and evaluator.due(round_idx, last):
            report(row)
    bar.close()
    summary = {"final_round": cfg.train.rounds, "train_loss": stats.get("grad_loss"), **last_eval,
               "wall_seconds": wall_before + time.perf_counter() - t_start}
    summary["separated"] = health_warning(summary) is None if "health_ratio" in summary else None
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def load_run(run_dir: str | Path, device: str = "cpu"):
    """Models (no optimizers), config, meta and normalization of a trained run (for evaluation)."""
    state = checkpoint.load(Path(run_dir))
    cfg = Config.from_dict(state["config"])
    meta = state["meta"]
    lib, proposer = build_models(cfg, meta["dims"], meta["in_frames"], norm=meta.get("encoder_norm", "layer"))
    lib.load_state_dict(state["modules"])
    proposer.load_state_dict(state["proposal"])
    dev = resolve_device(device)
    return Models(lib.to(dev).eval(), proposer.to(dev).eval()), cfg, state["meta"], Normalization.from_dict(state["meta"]["normalization"])
