"""Baselines on the same data and metrics as modular meta-learning (the paper's Tables 1 and 2).

- `static`: predict the last observed frame (no training).
- `full-graph`: one edge module on every edge (module 0 of a K=2 library; module 1 never runs).
- `true-graph`: structures fixed to the ground truth; the prediction upper bound.
- `supervised`: the proposal network trained on ground-truth edges; the accuracy ceiling.
- `nri-vae`: Kipf et al. 2018 (DATA.md A5): an MLP encoder (ProposalNet, the same NRI MLP
  encoder), an MLP decoder (a ModuleLibrary whose K edge modules are mixed by the relaxed edge
  types, gnn.soft_rollout), Gumbel-softmax samples at temperature 0.5, Gaussian NLL with variance
  5e-5 plus KL to a uniform prior, Adam 5e-4.

Every trained baseline is written as a run directory in the format `nri-ray train` writes
(config.yaml, checkpoint.pt), so `load_run`, evaluation and find-node treat them alike. Budget
rule: each gradient baseline takes the same number of optimizer steps at the same batch size as
modular meta-learning's rounds (`steps`, `batch_size`), sampled by the same keyed sampler.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import torch
import yaml

from . import checkpoint
from .config import Config, merge
from .data import Dataset
from .errors import NriRayError
from .gnn import anchored_losses, anchored_targets, soft_rollout
from .infer import prediction_mse, prediction_start
from .io import atomic_write_text
from .metrics import edge_accuracy, horizon_mse
from .proposal import proposal_loss
from .rng import GUMBEL, uniform
from .train import load_run, sample_batch
from .weights import build_models

METHODS = ("modular", "static", "full-graph", "true-graph", "supervised", "nri-vae")
NRI_VARIANCE = 5e-5  # DATA.md A5: the decoder's output variance
NRI_TAU = 0.5  # Gumbel-softmax temperature


class Budget(NamedTuple):
    steps: int  # optimizer steps (= modular rounds)
    batch_size: int
    train_tasks: int  # 0 = all


def model_config(base: dict, method: str, budget: Budget, seed: int) -> Config:
    """The config a baseline run records: the modular base with the baseline's training settings."""
    train = {"rounds": budget.steps, "meta_batch_size": budget.batch_size, "seed": seed,
             "train_tasks": budget.train_tasks}
    if method == "nri-vae":
        train["lr"] = 5e-4  # DATA.md A6
    return Config.from_dict(merge(base, {"train": train}))


def _train_split(data: Dataset, cfg: Config, device: torch.device):
    count = data.num_tasks("train") if not cfg.train.train_tasks else cfg.train.train_tasks
    part = data.read("train", 0, count)
    window = torch.as_tensor(part.trajectories[:, : cfg.train.sa_frames], device=device)  # [tasks, 49, n, d]
    return window, torch.as_tensor(part.labels, device=device).long()


def gumbel_softmax(logits: torch.Tensor, seed: int, step: int, task_ids: torch.Tensor, tau: float) -> torch.Tensor:
    """Relaxed one-hot samples `[tasks, edges, K]`; the noise is keyed by (seed, task, step) like every draw."""
    tasks, edges, k = logits.shape
    u = uniform(seed, task_ids, step, GUMBEL, edges * k).view(tasks, edges, k).to(logits)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-10)))
    return torch.softmax((logits + g) / tau, dim=-1)


def nri_vae_loss(lib, encoder, window: torch.Tensor, seed: int, step: int, task_ids: torch.Tensor,
                 rollout_steps: int) -> torch.Tensor:
    """NLL (variance 5e-5, summed over frames and dims, per task and node) + KL to the uniform prior.

    The decoder predicts from ground-truth anchors every `rollout_steps` frames (NRI's teacher
    forcing with prediction_steps = 10).
    """
    tasks, _, n, d = window.shape
    logits = encoder(window)  # [tasks, edges, K]
    z = gumbel_softmax(logits, seed, step, task_ids, NRI_TAU)
    start, target, valid = anchored_targets(window, rollout_steps)  # [tasks, anchors, ...], [anchors, steps]
    a = start.shape[1]
    # [tasks, anchors, n, d] -> [tasks * anchors, n, d]: one graph per (task, anchor)
    pred = soft_rollout(lib, start.reshape(tasks * a, n, d), z.repeat_interleave(a, dim=0), rollout_steps)
    pred = pred.view(tasks, a, rollout_steps, n, d)  # back to per task and anchor
    nll = (((pred - target) ** 2) * valid.view(1, a, rollout_steps, 1, 1)).sum() / (2 * NRI_VARIANCE) / (tasks * n)
    prob = torch.softmax(logits, dim=-1)
    kl = (prob * torch.log(prob + 1e-16)).sum() / (tasks * n)
    return nll + kl


def train_baseline(method: str, cfg: Config, data_dir: str | Path, run_dir: str | Path,
                   progress=None) -> Path:
    """Train one gradient baseline into `run_dir` (a run directory); returns it."""
    if method not in ("full-graph", "true-graph", "supervised", "nri-vae"):
        raise NriRayError(f"--methods: {method!r} is not a trained baseline")
    run_dir, data = Path(run_dir), Dataset(data_dir)
    device = torch.device("cpu")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    window, labels = _train_split(data, cfg, device)
    lib, encoder = build_models(cfg, window.shape[-1], window.shape[1])  # the encoder sees the whole window (49 frames)
    params = {"supervised": list(encoder.parameters()), "nri-vae": [*lib.parameters(), *encoder.parameters()]}
    lr = cfg.proposal.proposal_lr if method == "supervised" else cfg.train.lr
    opt = torch.optim.Adam(params.get(method, list(lib.parameters())), lr=lr)
    fixed = {"true-graph": labels, "full-graph": torch.zeros_like(labels)}.get(method)
    seed, t0 = cfg.train.seed, time.perf_counter()
    for step in range(cfg.train.rounds):
        ids = torch.as_tensor(sample_batch(seed, step, window.shape[0], cfg.train.meta_batch_size), device=device)
        batch = window[ids]  # [B, 49, n, d]
        if method == "supervised":
            loss = proposal_loss(encoder(batch), labels[ids]).mean()
        elif method == "nri-vae":
            loss = nri_vae_loss(lib, encoder, batch, seed, step, ids, cfg.model.rollout)
        else:
            loss = anchored_losses(lib, batch, fixed[ids], cfg.model.rollout).mean()
        if not torch.isfinite(loss):
            raise NriRayError(f"{method}: non-finite loss at step {step}; try a lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and (step + 1) % max(1, cfg.train.rounds // 10) == 0:
            progress(f"{method}: step {step + 1}/{cfg.train.rounds} loss {loss.item():.3e}")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    meta = {"n_balls": data.n_balls, "dims": window.shape[-1], "in_frames": window.shape[1], "num_tasks": window.shape[0],
            "simulator": data.sim, "normalization": data.normalization._asdict(),
            "data_dir": str(Path(data_dir).resolve()), "method": method}
    checkpoint.save(run_dir, {"round": cfg.train.rounds - 1, "config": cfg.to_dict(), "meta": meta,
                              "modules": lib.state_dict(), "proposal": encoder.state_dict(),
                              "structures": torch.zeros(0, dtype=torch.int8),
                              "wall_seconds": time.perf_counter() - t0})
    return run_dir


@torch.no_grad()
def evaluate_baseline(method: str, run_dir: str | Path | None, data_dir: str | Path, tasks: int = 0,
                      horizons=(1, 10, 20)) -> dict:
    """Test-split metrics: MSE at each horizon from frame 49 and (where defined) edge accuracy.

    Structures at test time: static none; full-graph all module 0; true-graph the labels;
    supervised and nri-vae the encoder's argmax. Supervised has no decoder: accuracy only.
    """
    data = Dataset(data_dir)
    count = data.num_tasks("test") if not tasks else min(tasks, data.num_tasks("test"))
    start_time = time.perf_counter()
    if method == "static":
        part = data.read("test", 0, count)
        traj = torch.as_tensor(part.trajectories)
        start = prediction_start(traj.shape[1], Config().train.sa_frames)  # the NRI window's end, as the runs
        steps = min(max(horizons), traj.shape[1] - 1 - start)
        pred = traj[:, start:start + 1].expand(-1, steps, -1, -1)  # [tasks, steps, n, d]: the last frame, held
        return {"method": method, "tasks": count, "edge_accuracy": None,
                "mse": horizon_mse(pred, traj[:, start + 1:start + 1 + steps], horizons),
                "seconds": time.perf_counter() - start_time}
    server, cfg, meta, norm = load_run(run_dir)
    part = data.read("test", 0, count, normalize=False)
    traj = torch.as_tensor(norm.apply(part.trajectories))  # the run's normalization
    labels = torch.as_tensor(part.labels).long()
    start = prediction_start(traj.shape[1], min(cfg.train.sa_frames, traj.shape[1]))
    accuracy, structures = None, None
    if method in ("supervised", "nri-vae"):
        structures = server.proposer(traj[:, : cfg.train.sa_frames]).argmax(dim=-1)  # [tasks, edges]
        accuracy = edge_accuracy(structures.numpy(), part.labels, cfg.model.edge_modules)
    elif method == "true-graph":
        structures = labels
    elif method == "full-graph":
        structures = torch.zeros_like(labels)
    mse = None if method == "supervised" else prediction_mse(server.lib, traj, structures, start, horizons)
    return {"method": method, "tasks": count, "edge_accuracy": accuracy, "mse": mse,
            "seconds": time.perf_counter() - start_time}


def write_json(path: Path, value: dict) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, default=float) + "\n")
