"""The paper's experiments, one command each: Tables 1 and 2, data efficiency (Figure 3), find-node
(section 5.2, Figure 4).

Every method trains on the same data and is scored by the same code on the test split: MSE at 1,
10 and 20 steps of one open-loop rollout from frame 49 (normalized units) and edge accuracy (best
matching of module labels to relation types). Outputs are written atomically; a method whose
result file exists is loaded, not retrained, so an interrupted table resumes where it stopped.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import torch

from . import baselines as B
from . import plots
from .config import Config, GenerateConfig, merge
from .data import Dataset
from .datagen import generate
from .errors import NriRayError
from .evaluate import check_data_matches_run, evaluate
from .graph import edge_index
from .infer import recover_hidden
from .io import atomic_write_text
from .metrics import best_matching, confusion
from .train import load_run, run

# REFERENCE.md 7.4 (MSE) and 7.5 (edge accuracy, %), the paper's springs and charged columns.
PAPER_MSE = {
    "static": {"springs": (7.93e-5, 7.59e-3), "charged": (5.09e-3, 2.26e-2)},
    "full-graph": {"springs": (1.66e-5, 1.64e-3), "charged": (1.09e-3, 3.78e-3)},
    "nri-vae": {"springs": (3.12e-8, 3.29e-6), "charged": (1.05e-3, 3.21e-3)},
    "modular": {"springs": (3.13e-8, 3.25e-6), "charged": (1.03e-3, 3.11e-3)},
    "true-graph": {"springs": (1.69e-11, 1.32e-9), "charged": (1.04e-3, 3.03e-3)},
}
PAPER_ACCURACY = {"nri-vae": {"springs": 99.9, "charged": 82.1}, "modular": {"springs": 99.9, "charged": 88.4},
                  "supervised": {"springs": 99.9, "charged": 95.0}}
NAMES = {"static": "Static", "full-graph": "Full graph (one edge module)", "true-graph": "True graph",
         "supervised": "Supervised encoder", "nri-vae": "NRI VAE (Kipf et al. 2018)",
         "modular": "Modular meta-learning (nri-ray)"}


def _fmt(x, pct: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.2e}"


def run_method(method: str, base: Config, data_dir: Path, out: Path, sa_steps: int, tasks: int,
               log=print) -> dict:
    """Train (or load) one method and score it on the test split; result saved to OUT/METHOD/result.json."""
    result_path = out / method / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    run_dir = out / method / "run"
    t0 = time.perf_counter()
    if method == "modular":
        if not (run_dir / "summary.json").exists():
            run(base, data_dir, run_dir, resume=(run_dir / "checkpoint.pt").exists(), progress=False)
        r = evaluate(run_dir, data_dir, "test", sa_steps=sa_steps, tasks=tasks, plot=False, write=False)
        result = {"method": method, "tasks": r["tasks"], "edge_accuracy": r.get("edge_accuracy"),
                  "proposal_accuracy": r.get("proposal_accuracy"), "mse": r["mse"]}  # no accuracies without labels
    elif method == "static":
        result = B.evaluate_baseline(method, None, data_dir, tasks)
    else:
        budget = B.Budget(base.train.rounds, base.train.meta_batch_size, base.train.train_tasks)
        cfg = B.model_config(base.to_dict(), method, budget, base.train.seed)
        B.train_baseline(method, cfg, data_dir, run_dir, progress=log)
        result = B.evaluate_baseline(method, run_dir, data_dir, tasks)
    result["wall_seconds"] = time.perf_counter() - t0
    B.write_json(result_path, result)
    log(f"{method}: edge accuracy {_fmt(result.get('edge_accuracy'), True)}  mse "
        f"{', '.join(f'{h}: {v:.2e}' for h, v in (result.get('mse') or {}).items())}  ({result['wall_seconds']:.0f} s)")
    return result


def table(base: Config, data_dir: str | Path, out: str | Path, methods=B.METHODS, sa_steps: int = 100,
          tasks: int = 0, log=print) -> dict:
    """Tables 1 (MSE) and 2 (edge accuracy) for `methods`, written to OUT/tables.{md,json}."""
    data_dir, out = Path(data_dir), Path(out)
    unknown = [m for m in methods if m not in B.METHODS]
    if unknown:
        raise NriRayError(f"--methods: unknown {', '.join(unknown)}; expected some of {', '.join(B.METHODS)}")
    sim = Dataset(data_dir).sim
    out.mkdir(parents=True, exist_ok=True)
    results = {m: run_method(m, base, data_dir, out, sa_steps, tasks, log) for m in methods}
    lines = [f"Data: `{data_dir}` ({sim}), meta-train tasks: {base.train.train_tasks or Dataset(data_dir).num_tasks('train')}, "
             f"budget: {base.train.rounds} steps x {base.train.meta_batch_size} tasks; test tasks: "
             f"{next(iter(results.values()))['tasks']}.", "",
             "**Table 1: prediction MSE (normalized units) from frame 49**", "",
             "| method | 1 step | 10 steps | 20 steps | paper 1 step | paper 10 steps |", "|---|---|---|---|---|---|"]
    for m, r in results.items():
        mse, paper = r.get("mse") or {}, PAPER_MSE.get(m, {}).get(sim, (None, None))
        lines.append(f"| {NAMES[m]} | {_fmt(mse.get('1'))} | {_fmt(mse.get('10'))} | {_fmt(mse.get('20'))} | "
                     f"{_fmt(paper[0])} | {_fmt(paper[1])} |")
    lines += ["", "**Table 2: edge accuracy (%)**", "", "| method | accuracy | paper |", "|---|---|---|"]
    for m, r in results.items():
        if r.get("edge_accuracy") is not None:
            paper = PAPER_ACCURACY.get(m, {}).get(sim)
            lines.append(f"| {NAMES[m]} | {_fmt(r['edge_accuracy'], True)} | {paper if paper else '–'} |")
    markdown = "\n".join(lines) + "\n"
    atomic_write_text(out / "tables.md", markdown)
    B.write_json(out / "tables.json", {"simulator": sim, "data": str(data_dir), "results": results,
                                       "paper_mse": PAPER_MSE, "paper_accuracy": PAPER_ACCURACY})
    return {"markdown": markdown, "results": results}


def tasks_to_reach(points: list[dict], target: float) -> tuple[float | None, str]:
    """Meta-train tasks at which a method's mean edge accuracy first reaches `target`.

    Interpolated linearly in log(tasks) between the two sizes that bracket the target. Returns
    (tasks, "exact"), (smallest size, "at most") when the smallest size already reaches it, or
    (None, "not reached").
    """
    if not points:
        return None, "not reached"
    if points[0]["edge_accuracy"] >= target:
        return float(points[0]["train_tasks"]), "at most"
    for lo, hi in zip(points, points[1:]):
        if hi["edge_accuracy"] >= target > lo["edge_accuracy"]:
            frac = (target - lo["edge_accuracy"]) / (hi["edge_accuracy"] - lo["edge_accuracy"])
            log_n = math.log(lo["train_tasks"]) + frac * (math.log(hi["train_tasks"]) - math.log(lo["train_tasks"]))
            return math.exp(log_n), "exact"
    return None, "not reached"


def efficiency_factors(points: dict, targets, fast: str = "modular", slow: str = "nri-vae") -> list[dict]:
    """For each target accuracy: the tasks each method needs and their ratio (slow / fast)."""
    rows = []
    for target in targets:
        (n_fast, k_fast), (n_slow, k_slow) = (tasks_to_reach(points[m], target) for m in (fast, slow))
        factor = None if n_fast is None or n_slow is None else n_slow / n_fast
        if factor is not None:
            bounds = {("exact", "exact"): "exact", ("at most", "exact"): "at least", ("exact", "at most"): "at most"}
            kind = bounds.get((k_fast, k_slow), "unknown (both reach it at the smallest size)")
        else:
            kind = " and ".join(f"{m} does not reach it at the largest size" for m, n in ((fast, n_fast), (slow, n_slow))
                                if n is None)
        rows.append({"target": target, f"{fast}_tasks": n_fast, f"{fast}_bound": k_fast, f"{slow}_tasks": n_slow,
                     f"{slow}_bound": k_slow, "factor": factor, "kind": kind})
    return rows


def data_efficiency(base: Config, sim: str, sizes: list[int], out: str | Path, *, num_valid: int = 500,
                    num_test: int = 1000, seeds=(42,), sa_steps: int = 100, tasks: int = 0,
                    methods=("modular", "nri-vae"), targets=(0.9, 0.95), log=print) -> dict:
    """Edge accuracy against the number of meta-train tasks (the paper's Figure 3), over data seeds.

    For every data seed one dataset with max(sizes) train tasks is generated once
    (OUT/d{seed}/data); each size trains on its first N tasks (OUT/d{seed}/n{N}/{method}). Budgets:
    modular meta-learning takes `base.train.rounds` x `meta_batch_size` at every size; the NRI VAE
    its own schedule (`base.nri`: epochs over the N tasks, best validation epoch), unless
    `nri_budget` is `steps`. Each point is the mean over seeds with its min, max and standard
    deviation; `factors` gives the tasks each method needs to reach each target accuracy.
    """
    out = Path(out)
    if not sizes or min(sizes) < 1:
        raise NriRayError(f"--sizes: got {sizes}, expected positive task counts")
    if not seeds or len(set(seeds)) != len(seeds):
        raise NriRayError(f"--data-seeds: got {list(seeds)}, expected distinct integers like 42,1,2")
    scored = ("modular", "nri-vae", "supervised")  # the methods that infer edges: the figure plots their accuracy
    if not methods or any(m not in scored for m in methods):
        raise NriRayError(f"--methods: got {','.join(methods)}, expected some of {', '.join(scored)} "
                          "(the figure plots edge accuracy; the other baselines infer no edges)")
    for seed in seeds:
        data_dir = out / f"d{seed}" / "data"
        if not (data_dir / "meta.json").exists():
            generate(GenerateConfig(sim=sim, num_train=max(sizes), num_valid=num_valid, num_test=num_test, seed=seed),
                     data_dir, progress=False)
        data = Dataset(data_dir)  # generated by an earlier call: it must hold the largest size (checked before training)
        if data.sim != sim or data.num_tasks("train") < max(sizes):
            raise NriRayError(f"{data_dir}: {data.num_tasks('train')} {data.sim} train tasks, expected at least "
                              f"{max(sizes)} {sim} ones for --sizes {','.join(map(str, sorted(sizes)))}; use a new --out")
    per_seed = {m: {n: {} for n in sorted(sizes)} for m in methods}  # method -> size -> seed -> result
    for n in sorted(sizes):  # smallest sizes first: an interrupted run has whole points, every seed
        cfg = Config.from_dict(merge(base.to_dict(), {"train": {"train_tasks": n}}))
        for seed in seeds:
            for m in methods:
                log(f"data seed {seed}, {n} tasks:")
                per_seed[m][n][seed] = run_method(m, cfg, out / f"d{seed}" / "data", out / f"d{seed}" / f"n{n}",
                                                  sa_steps, tasks, log)
    points = {m: [_mean_point(n, per_seed[m][n]) for n in sorted(sizes)] for m in methods}
    factors = efficiency_factors(points, targets) if {"modular", "nri-vae"} <= set(methods) else []
    nri = (f"NRI {base.nri.nri_epochs} epochs of {base.nri.nri_batch_size}" if base.nri.nri_budget == "own"
           else "NRI the same steps")
    result = {"simulator": sim, "sizes": sorted(sizes), "data_seeds": list(seeds), "train_seed": base.train.seed,
              "budget_steps": base.train.rounds, "batch_size": base.train.meta_batch_size, "nri": base.nri.to_dict(),
              "points": points, "factors": factors}
    B.write_json(out / "data_efficiency.json", result)
    plots.data_efficiency(points, out / "data_efficiency.png",
                          f"{sim}: edge accuracy vs meta-train tasks, {len(seeds)} data seed(s) (modular "
                          f"{base.train.rounds} rounds x {base.train.meta_batch_size}; {nri})")
    return result


def _mean_point(n: int, by_seed: dict[int, dict]) -> dict:
    """One size's results over seeds: mean edge accuracy and MSE, with min / max / std and every seed's value."""
    acc = torch.tensor([r["edge_accuracy"] for r in by_seed.values()], dtype=torch.float64)
    horizons = next(iter(by_seed.values())).get("mse") or {}
    mse = {h: sum(r["mse"][h] for r in by_seed.values()) / len(by_seed) for h in horizons}
    return {"train_tasks": n, "edge_accuracy": acc.mean().item(), "edge_accuracy_min": acc.min().item(),
            "edge_accuracy_max": acc.max().item(), "edge_accuracy_std": acc.std(unbiased=False).item(),
            "seeds": {str(s): r["edge_accuracy"] for s, r in by_seed.items()}, "mse": mse,
            "wall_seconds": {str(s): r.get("wall_seconds") for s, r in by_seed.items()}}


# ----------------------------------------------------------------------------- find-node

def find_node(run_dir: str | Path, data_dir: str | Path, out: str | Path, *, hidden: int = 0, restarts: int = 32,
              steps: int = 100, tasks: int = 50, lr: float = 0.05, seed: int = 0, structure: str | None = None,
              log=print) -> dict:
    """Recover a hidden particle from its pull on the others (paper section 5.2).

    For each test task, particle `hidden` is removed. Its initial state (dims numbers) and the
    modules of its edges are unknown; the edges among the visible particles come from the ground
    truth (`structure="truth"`, the paper's setting) or from the model's proposal network
    (`"infer"`; it sees the hidden particle too, so it is an optimistic setting). Default: truth
    for a true-graph baseline run (its module k is relation k), infer for a BounceGrad run. A
    BounceGrad run's module labels are an arbitrary permutation of the relations: with truth, the
    true relations are mapped to module labels by the best global matching of the proposal
    network's structures to the labels, and the hidden edges' modules are scored through the same
    matching in both settings. The search itself is `infer.recover_hidden`.
    """
    out = Path(out)
    models, cfg, meta, norm = load_run(run_dir)
    lib = models.lib.requires_grad_(False)
    data = Dataset(data_dir)
    data.require_labels("find-node (it scores the recovered particle's relations)")
    check_data_matches_run(data, data_dir, meta, run_dir)
    n = data.n_balls
    if not 0 <= hidden < n:
        raise NriRayError(f"--hidden: got {hidden}, expected a particle index in 0..{n - 1}")
    true_graph = meta.get("method") == "true-graph"
    structure = structure or ("truth" if true_graph else "infer")
    if structure not in ("truth", "infer"):
        raise NriRayError(f"--structure: got {structure!r}, expected truth or infer")
    count = min(tasks, data.num_tasks("test")) if tasks else data.num_tasks("test")
    part = data.read("test", 0, count, normalize=False)
    frames = min(cfg.train.sa_frames, part.trajectories.shape[1])
    traj = torch.as_tensor(norm.apply(part.trajectories))[:, :frames]  # [tasks, frames, n, d]
    labels = torch.as_tensor(part.labels).long()  # [tasks, edges]
    k = cfg.model.edge_modules
    with torch.no_grad():
        proposed = models.proposer(traj).argmax(dim=-1)  # [tasks, edges] in the run's module labels
    # module label -> relation: the identity for a true-graph model, else the best global matching (labels only score)
    to_relation = torch.arange(k) if true_graph else torch.as_tensor(best_matching(confusion(proposed, labels, k)))
    if structure == "infer":
        known = proposed
    else:  # relation -> the module label matched to it
        to_module = torch.tensor([int((to_relation == r).nonzero()[0]) if (to_relation == r).any() else 0
                                  for r in range(int(labels.max()) + 1)])
        known = to_module[labels]
    t0 = time.perf_counter()
    rec = recover_hidden(lib, traj, known, hidden, restarts=restarts, steps=steps, lr=lr, seed=seed, log=log)
    truth = traj[:, :, hidden]  # [tasks, frames, d]
    per_task = ((rec.trajectory - truth) ** 2).mean(dim=(1, 2))  # [tasks]
    senders, receivers = edge_index(n)
    hidden_cols = [next(e for e in range(len(senders)) if senders[e] == hidden and receivers[e] == j)
                   for j in range(n) if j != hidden]
    hidden_relations = to_relation[rec.hidden_modules]  # [tasks, n-1]
    result = {"run": str(run_dir), "data": str(data_dir), "hidden": hidden, "tasks": count, "restarts": restarts,
              "steps": steps, "structure": structure, "frames": frames,
              "trajectory_mse": float(per_task.mean()), "trajectory_mse_median": float(per_task.median()),
              "initial_state_mse": float(((rec.trajectory[:, 0] - truth[:, 0]) ** 2).mean()),
              "visible_fit_mse": float(rec.fit.mean()),
              "hidden_edge_accuracy": float((hidden_relations == labels[:, hidden_cols]).float().mean()),
              "paper_trajectory_mse": 1.09e-3, "seconds": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    B.write_json(out / "find_node.json", result)
    plots.find_node(traj[0].numpy(), rec.trajectory[0].numpy(), hidden, out / "find_node.png",
                    f"test task 0: hidden particle {hidden}, true (solid) vs recovered (dashed); "
                    f"MSE {float(per_task[0]):.2e}")
    return result
