"""Baselines on the same data and metrics as modular meta-learning (the paper's Tables 1 and 2).

- `static`: predict the last observed frame (no training).
- `full-graph`: one edge module on every edge (module 0 of a K=2 library; module 1 never runs).
- `true-graph`: structures fixed to the ground truth; the prediction upper bound.
- `supervised`: the proposal network trained on ground-truth edges; the accuracy ceiling.
- `nri-vae`: Kipf et al. 2018 (DATA.md A5), as the original code builds and trains it: the MLP
  encoder (ProposalNet with the original's BatchNorm), an MLP decoder (a ModuleLibrary whose K
  edge modules are mixed by the relaxed edge types, gnn.soft_rollout; plain init, no symmetry
  breaking: the encoder breaks it), Gumbel-softmax samples at temperature 0.5, Gaussian NLL with
  variance 5e-5 plus KL to a uniform prior; its own schedule (`config.NriConfig`: 500 epochs of
  128, Adam 5e-4 halved every 200 epochs, the checkpoint with the best validation NLL).

Every trained baseline is written as a run directory in the format `nri-ray train` writes
(config.yaml, checkpoint.pt), so `load_run`, evaluation and find-node treat them alike. They
train on `train.device` (auto: CUDA when present) and are scored on the CPU. Budget
rule: the NRI VAE trains on its own published schedule (`nri_budget: own`, or capped in
wall-clock by `nri_max_seconds` for equal-compute rows); the other gradient baselines, and the
NRI VAE with `nri_budget: steps`, take the same number of optimizer steps at the same batch size
as modular meta-learning's rounds, sampled by the same keyed sampler.
"""
from __future__ import annotations

import copy
import io
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
from .io import atomic_write_bytes, atomic_write_text
from .metrics import edge_accuracy, horizon_mse
from .proposal import proposal_loss
from .rng import GUMBEL, NRI_SHUFFLE, NRI_VALID, uniform
from .shard import resolve_device
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
    override = {"train": train}
    if method == "nri-vae":
        nri = merge(Config().to_dict(), base)["nri"]
        train["lr"] = nri["nri_lr"]  # DATA.md A6: 5e-4
        # the original decoder: plain init, absolute edge inputs (its loss is its own Gaussian NLL)
        override["model"] = {"init_spread": 1.0, "edge_inputs": "absolute", "loss_delta": 0.0}
        if nri["nri_hidden"]:  # the original's shapes: message MLP 2d -> h -> h, node MLP h+d -> h -> h -> d
            h = nri["nri_hidden"]
            override["model"].update(edge_hidden=[h, h], node_hidden=[h, h])
            override["proposal"] = {"proposal_hidden": h}
    return Config.from_dict(merge(base, override))


def _train_split(data: Dataset, cfg: Config, device: torch.device):
    count = data.num_tasks("train") if not cfg.train.train_tasks else cfg.train.train_tasks
    part = data.read("train", 0, count)
    window = torch.as_tensor(part.trajectories[:, : cfg.train.sa_frames], device=device)  # [tasks, 49, n, d]
    return window, None if part.labels is None else torch.as_tensor(part.labels, device=device).long()


def gumbel_noise(u: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise -log(-log(u)) from uniforms in [0, 1), computed in float64 so that it is
    finite for every draw: u = 0 is raised to 1e-300 (noise -6.6), and the largest float64 below 1
    gives 36.7 (in float32 that u rounds to 1 and the noise to infinity, which killed a run)."""
    u = u.to(torch.float64).clamp(1e-300, 1 - 2.0 ** -53)
    return -torch.log(-torch.log(u))


def gumbel_softmax(logits: torch.Tensor, seed: int, step: int, task_ids: torch.Tensor, tau: float,
                   stream: int = GUMBEL) -> torch.Tensor:
    """Relaxed one-hot samples `[tasks, edges, K]`; the noise is keyed by (seed, task, step) like every draw."""
    tasks, edges, k = logits.shape
    g = gumbel_noise(uniform(seed, task_ids, step, stream, edges * k)).view(tasks, edges, k).to(logits)
    return torch.softmax((logits + g) / tau, dim=-1)


def nri_vae_loss(lib, encoder, window: torch.Tensor, seed: int, step: int, task_ids: torch.Tensor,
                 rollout_steps: int, skip_first: bool = False) -> torch.Tensor:
    """NLL (variance 5e-5, summed over frames and dims, per task and node) + KL to the uniform prior.

    The decoder predicts from ground-truth anchors every `rollout_steps` frames (NRI's teacher
    forcing with prediction_steps = 10). With `skip_first`, edge type 0 sends no message.
    """
    tasks, _, n, d = window.shape
    logits = encoder(window)  # [tasks, edges, K]
    z = _skip_first(gumbel_softmax(logits, seed, step, task_ids, NRI_TAU), skip_first)
    start, target, valid = anchored_targets(window, rollout_steps)  # [tasks, anchors, ...], [anchors, steps]
    a = start.shape[1]
    # [tasks, anchors, n, d] -> [tasks * anchors, n, d]: one graph per (task, anchor)
    pred = soft_rollout(lib, start.reshape(tasks * a, n, d), z.repeat_interleave(a, dim=0), rollout_steps)
    pred = pred.view(tasks, a, rollout_steps, n, d)  # back to per task and anchor
    nll = (((pred - target) ** 2) * valid.view(1, a, rollout_steps, 1, 1)).sum() / (2 * NRI_VARIANCE) / (tasks * n)
    prob = torch.softmax(logits, dim=-1)
    kl = (prob * torch.log(prob + 1e-16)).sum() / (tasks * n)
    return nll + kl


def _skip_first(z: torch.Tensor, skip: bool) -> torch.Tensor:
    """Edge-type weights `[tasks, edges, K]` with type 0's zeroed when `skip` (NRI's --skip-first)."""
    if not skip:
        return z
    keep = torch.ones(z.shape[-1], dtype=z.dtype, device=z.device)
    keep[0] = 0
    return z * keep


@torch.no_grad()
def nri_validation(lib, encoder, window: torch.Tensor, labels: torch.Tensor, seed: int, epoch: int,
                   skip_first: bool, chunk: int = 128) -> tuple[float, float]:
    """The original's validation: (one-step NLL, edge accuracy) of hard Gumbel samples, per task and node.

    The encoder runs in evaluation mode (BatchNorm's running statistics); every frame but the last
    predicts the next. The edge accuracy (labels) is recorded for the curve only: the checkpoint
    is chosen by the NLL. Without labels (`labels` None) the accuracy is None.
    """
    encoder.eval()
    tasks, frames, n, d = window.shape
    nll, correct = 0.0, []
    for a in range(0, tasks, chunk):  # chunks of tasks bound the rollout's memory
        w = window[a:a + chunk]  # [c, frames, n, d]
        c = w.shape[0]
        ids = torch.arange(a, a + c, device=w.device)
        logits = encoder(w)  # [c, edges, K]
        noise = gumbel_noise(uniform(seed, ids, epoch, NRI_VALID, logits[0].numel())).view_as(logits).to(logits)
        hard = torch.nn.functional.one_hot((logits + noise).argmax(dim=-1), logits.shape[-1]).to(w.dtype)
        start = w[:, :-1].reshape(c * (frames - 1), n, d)  # [c, frames-1, n, d] -> one graph per (task, frame)
        weights = _skip_first(hard, skip_first).repeat_interleave(frames - 1, dim=0)  # [c * (frames-1), edges, K]
        pred = soft_rollout(lib, start, weights, 1).view(c, frames - 1, n, d)  # back to per task and frame
        nll += float(((pred - w[:, 1:]) ** 2).sum()) / (2 * NRI_VARIANCE)
        correct.append(logits.argmax(dim=-1).cpu())
    encoder.train()
    accuracy = None if labels is None else edge_accuracy(torch.cat(correct).numpy(), labels.numpy(), logits.shape[-1])
    return nll / (tasks * n), accuracy


NRI_STATE = "nri_state.pt"


def _train_nri(cfg: Config, lib, encoder, window: torch.Tensor, data: Dataset, run_dir: Path, progress) -> list[dict]:
    """The original NRI schedule, in place on (lib, encoder), ending with the best-validation weights.

    Epochs over the meta-train tasks in a keyed random order, batches of `nri_batch_size` (the last
    one smaller), Adam with the lr multiplied by `nri_gamma` every `nri_lr_decay` epochs, the
    validation NLL after every epoch. After every epoch the whole state (weights, Adam, BatchNorm
    statistics, best weights, curve) goes atomically to `run_dir/nri_state.pt`, and a run that
    finds one continues from it: every draw is keyed by (seed, task, epoch or step), so the
    continued run is the uninterrupted one. Returns the per-epoch curve.
    """
    nri, seed = cfg.nri, cfg.train.seed
    valid = data.read("valid", 0, data.num_tasks("valid"))
    valid_window = torch.as_tensor(valid.trajectories[:, : window.shape[1]], device=window.device)  # [valid tasks, 49, n, d]
    valid_labels = None if valid.labels is None else torch.as_tensor(valid.labels).long()
    opt = torch.optim.Adam([*lib.parameters(), *encoder.parameters()], lr=nri.nri_lr)
    tasks = window.shape[0]
    state = {"epoch": 0, "step": 0, "seconds": 0.0, "curve": [], "best_nll": float("inf"), "best": None}
    state_path = Path(run_dir) / NRI_STATE
    if state_path.exists():
        state = _load_nri_state(state_path, cfg, lib, encoder, opt)
        if progress:
            progress(f"nri-vae: continuing from epoch {state['epoch']} ({state_path})")
    curve, step, t0 = state["curve"], state["step"], time.perf_counter() - state["seconds"]
    encoder.train()
    for epoch in range(state["epoch"], nri.nri_epochs):
        if nri.nri_max_seconds and curve and curve[-1]["seconds"] >= nri.nri_max_seconds:
            break
        lr = nri.nri_lr * nri.nri_gamma ** (epoch // nri.nri_lr_decay)  # StepLR
        for group in opt.param_groups:
            group["lr"] = lr
        order = uniform(seed, torch.arange(tasks, device=window.device), epoch, NRI_SHUFFLE, 1)[:, 0].argsort()  # [tasks] a keyed shuffle
        train_loss = 0.0
        for a in range(0, tasks, nri.nri_batch_size):
            ids = order[a:a + nri.nri_batch_size]
            loss = nri_vae_loss(lib, encoder, window[ids], seed, step, ids, cfg.model.rollout, nri.nri_skip_first)
            if not torch.isfinite(loss):
                raise NriRayError(f"nri-vae: non-finite loss at epoch {epoch}, step {step}; try a lower --nri-lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            train_loss += loss.item() * ids.numel()
            step += 1
        valid_nll, valid_accuracy = nri_validation(lib, encoder, valid_window, valid_labels, seed, epoch,
                                                   nri.nri_skip_first)
        seconds = time.perf_counter() - t0
        curve.append({"epoch": epoch + 1, "lr": lr, "train_loss": train_loss / tasks, "valid_nll": valid_nll,
                      "valid_edge_accuracy": valid_accuracy, "seconds": seconds})
        if valid_nll < state["best_nll"]:
            state["best_nll"] = valid_nll
            state["best"] = {"epoch": epoch + 1, "modules": copy.deepcopy(lib.state_dict()),
                             "proposal": copy.deepcopy(encoder.state_dict())}
        state.update(epoch=epoch + 1, step=step, seconds=seconds, curve=curve)
        _save_nri_state(state_path, state, cfg, lib, encoder, opt)
        if progress and ((epoch + 1) % max(1, nri.nri_epochs // 20) == 0 or epoch == 0):
            scored = "" if valid_accuracy is None else f" valid edge acc {valid_accuracy:.4f}"  # none without labels
            progress(f"nri-vae: epoch {epoch + 1}/{nri.nri_epochs} loss {train_loss / tasks:.3e} valid nll "
                     f"{valid_nll:.3e}{scored} ({seconds:.0f} s)")
    best = state["best"]
    lib.load_state_dict(best["modules"])
    encoder.load_state_dict(best["proposal"])
    for row in curve:
        row["best"] = row["epoch"] == best["epoch"]
    return curve


def _save_nri_state(path: Path, state: dict, cfg: Config, lib, encoder, opt) -> None:
    buffer = io.BytesIO()
    torch.save({**state, "config": cfg.to_dict(), "modules": lib.state_dict(), "proposal": encoder.state_dict(),
                "optimizer": opt.state_dict()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_nri_state(path: Path, cfg: Config, lib, encoder, opt) -> dict:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        raise NriRayError(f"{path}: corrupt or unreadable NRI training state ({type(e).__name__}: {e}); "
                          "remove it to start the NRI run again") from None
    if saved.get("config") != cfg.to_dict():
        raise NriRayError(f"{path}: an unfinished NRI run of another config; remove {path.parent} or use "
                          "another --out")
    lib.load_state_dict(saved.pop("modules"))
    encoder.load_state_dict(saved.pop("proposal"))
    opt.load_state_dict(saved.pop("optimizer"))
    return saved


def train_baseline(method: str, cfg: Config, data_dir: str | Path, run_dir: str | Path,
                   progress=None) -> Path:
    """Train one gradient baseline into `run_dir` (a run directory); returns it."""
    if method not in ("full-graph", "true-graph", "supervised", "nri-vae"):
        raise NriRayError(f"--methods: {method!r} is not a trained baseline")
    run_dir, data = Path(run_dir), Dataset(data_dir)
    if method in ("true-graph", "supervised"):
        data.require_labels(f"the {method} baseline (it trains on the true relations)")
    device = resolve_device(cfg.train.device)  # the keyed draws are integer hashes: the same on either device
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    window, labels = _train_split(data, cfg, device)
    norm = cfg.nri.nri_norm if method == "nri-vae" else "layer"
    # the encoder sees the whole window (49 frames)
    lib, encoder = build_models(cfg, window.shape[-1], window.shape[1], norm=norm)
    lib, encoder = lib.to(device), encoder.to(device)
    seed, t0 = cfg.train.seed, time.perf_counter()
    if method == "nri-vae" and cfg.nri.nri_budget == "own":
        curve = _train_nri(cfg, lib, encoder, window, data, run_dir, progress)
        steps = curve[-1]["epoch"] * -(-window.shape[0] // cfg.nri.nri_batch_size)  # epochs x ceil(tasks / batch)
        t0 = time.perf_counter() - curve[-1]["seconds"]  # training seconds over every resumed part
        _save_baseline(method, cfg, data, data_dir, run_dir, window, lib, encoder, norm, t0, steps)
        atomic_write_text(run_dir / "nri_curve.json", json.dumps(curve, indent=1) + "\n")
        (run_dir / NRI_STATE).unlink()  # the finished run is in checkpoint.pt
        return run_dir
    params = {"supervised": list(encoder.parameters()), "nri-vae": [*lib.parameters(), *encoder.parameters()]}
    lr = cfg.proposal.proposal_lr if method == "supervised" else cfg.train.lr
    opt = torch.optim.Adam(params.get(method, list(lib.parameters())), lr=lr)
    full = torch.zeros(window.shape[0], window.shape[2] * (window.shape[2] - 1), dtype=torch.long,
                       device=device)  # [tasks, edges]
    fixed = {"true-graph": labels, "full-graph": full}.get(method)
    for step in range(cfg.train.rounds):
        ids = torch.as_tensor(sample_batch(seed, step, window.shape[0], cfg.train.meta_batch_size), device=device)
        batch = window[ids]  # [B, 49, n, d]
        if method == "supervised":
            loss = proposal_loss(encoder(batch), labels[ids]).mean()
        elif method == "nri-vae":
            loss = nri_vae_loss(lib, encoder, batch, seed, step, ids, cfg.model.rollout, cfg.nri.nri_skip_first)
        else:
            loss = anchored_losses(lib, batch, fixed[ids], cfg.model.rollout).mean()
        if not torch.isfinite(loss):
            raise NriRayError(f"{method}: non-finite loss at step {step}; try a lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and (step + 1) % max(1, cfg.train.rounds // 10) == 0:
            progress(f"{method}: step {step + 1}/{cfg.train.rounds} loss {loss.item():.3e}")
    return _save_baseline(method, cfg, data, data_dir, run_dir, window, lib, encoder, norm, t0, cfg.train.rounds)


def _save_baseline(method, cfg, data, data_dir, run_dir, window, lib, encoder, norm, t0, rounds) -> Path:
    """Write a baseline's run directory (config.yaml, checkpoint.pt) as `nri-ray train` does."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    meta = {"n_balls": data.n_balls, "dims": window.shape[-1], "in_frames": window.shape[1], "num_tasks": window.shape[0],
            "simulator": data.sim, "normalization": data.normalization.to_dict(),
            "data_dir": str(Path(data_dir).resolve()), "method": method, "encoder_norm": norm}
    checkpoint.save(run_dir, {"round": rounds - 1, "config": cfg.to_dict(), "meta": meta,
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
    if method == "true-graph":
        data.require_labels("the true-graph baseline (its test structures are the labels)")
    labels = None if part.labels is None else torch.as_tensor(part.labels).long()
    start = prediction_start(traj.shape[1], min(cfg.train.sa_frames, traj.shape[1]))
    accuracy, structures = None, None
    if method in ("supervised", "nri-vae"):
        structures = server.proposer(traj[:, : cfg.train.sa_frames]).argmax(dim=-1)  # [tasks, edges]
        if labels is not None:
            accuracy = edge_accuracy(structures.numpy(), part.labels, cfg.model.edge_modules)
    elif method == "true-graph":
        structures = labels
    elif method == "full-graph":
        structures = torch.zeros(count, data.n_balls * (data.n_balls - 1), dtype=torch.long)  # [tasks, edges]
    mse = None if method == "supervised" else prediction_mse(server.lib, traj, structures, start, horizons)
    return {"method": method, "tasks": count, "edge_accuracy": accuracy, "mse": mse,
            "seconds": time.perf_counter() - start_time}


def write_json(path: Path, value: dict) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, default=float) + "\n")
