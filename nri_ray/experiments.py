"""The paper's experiments, one command each: Tables 1 and 2, data efficiency (Figure 3), find-node
(section 5.2, Figure 4).

Every method trains on the same data and is scored by the same code on the test split: MSE at 1,
10 and 20 steps of one open-loop rollout from frame 49 (normalized units) and edge accuracy (best
matching of module labels to relation types). Outputs are written atomically; a method whose
result file exists is loaded, not retrained, so an interrupted table resumes where it stopped.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import torch

from . import baselines as B
from . import plots
from .config import Config, GenerateConfig, merge
from .data import Dataset
from .errors import NriRayError
from .io import atomic_write_text

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
    from .evaluate import evaluate
    from .train import run

    result_path = out / method / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    run_dir = out / method / "run"
    t0 = time.perf_counter()
    if method == "modular":
        if not (run_dir / "summary.json").exists():
            run(base, data_dir, run_dir, resume=(run_dir / "checkpoint.pt").exists(), progress=False)
        r = evaluate(run_dir, data_dir, "test", sa_steps=sa_steps, tasks=tasks, plot=False, write=False)
        result = {"method": method, "tasks": r["tasks"], "edge_accuracy": r["edge_accuracy"],
                  "proposal_accuracy": r["proposal_accuracy"], "mse": r["mse"]}
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


def data_efficiency(base: Config, sim: str, sizes: list[int], out: str | Path, *, num_valid: int = 500,
                    num_test: int = 1000, seed: int = 42, sa_steps: int = 100, tasks: int = 0,
                    methods=("modular", "nri-vae"), log=print) -> dict:
    """Edge accuracy against the number of meta-train tasks (the paper's Figure 3).

    One dataset with max(sizes) train tasks is generated once (OUT/data); each size trains on its
    first N tasks. Budget rule: both methods take the same number of optimizer steps at the same
    batch size for every size (`base.train.rounds` x `meta_batch_size`), so a point differs from
    the next only in how many distinct tasks the batches are drawn from.
    """
    from .datagen import generate

    out = Path(out)
    if not sizes or min(sizes) < 1:
        raise NriRayError(f"--sizes: got {sizes}, expected positive task counts")
    data_dir = out / "data"
    if not (data_dir / "meta.json").exists():
        generate(GenerateConfig(sim=sim, num_train=max(sizes), num_valid=num_valid, num_test=num_test, seed=seed),
                 data_dir, progress=False)
    points = {m: [] for m in methods}
    for n in sorted(sizes):
        cfg = Config.from_dict(merge(base.to_dict(), {"train": {"train_tasks": n}}))
        for m in methods:
            r = run_method(m, cfg, data_dir, out / f"n{n}", sa_steps, tasks, log)
            points[m].append({"train_tasks": n, "edge_accuracy": r["edge_accuracy"], "mse": r.get("mse")})
    result = {"simulator": sim, "sizes": sorted(sizes), "budget_steps": base.train.rounds,
              "batch_size": base.train.meta_batch_size, "points": points}
    B.write_json(out / "data_efficiency.json", result)
    plots.data_efficiency(points, out / "data_efficiency.png",
                          f"{sim}: edge accuracy vs meta-train tasks ({base.train.rounds} steps x "
                          f"{base.train.meta_batch_size} tasks each)")
    return result


# ----------------------------------------------------------------------------- find-node


def _hidden_structures(n_nodes: int, k: int, restarts: int, generator: torch.Generator) -> torch.Tensor:
    """`[restarts, n-1]` module of the hidden node's (symmetric) edges to each other node.

    When the K^(n-1) assignments fit in `restarts` they are enumerated (cycled); otherwise drawn.
    """
    combos = k ** (n_nodes - 1)
    if combos <= restarts:
        idx = torch.arange(restarts) % combos
        return torch.stack([(idx // k ** j) % k for j in range(n_nodes - 1)], dim=1)
    return torch.randint(0, k, (restarts, n_nodes - 1), generator=generator)


class Recovery(NamedTuple):
    trajectory: torch.Tensor  # [tasks, frames, dims] the best candidate's hidden trajectory
    fit: torch.Tensor  # [tasks] its one-step error on the visible particles
    hidden_modules: torch.Tensor  # [tasks, n-1] its modules on the hidden node's edges (to each other node)


def recover_hidden(lib, traj: torch.Tensor, known: torch.Tensor, hidden: int, *, restarts: int, steps: int,
                   lr: float, seed: int, log=print) -> Recovery:
    """Candidates for every task at once; see `find_node`.

    Args:
        traj: `[tasks, frames, nodes, dims]` observed trajectories (the hidden particle's entries are
            never read).
        known: `[tasks, edges]` modules of the edges among visible particles (hidden ones ignored).
    """
    from .gnn import make_layout, message_step
    from .graph import edge_index

    count, frames, n, dims = traj.shape
    k = lib.num_edge_modules
    senders, receivers = (torch.as_tensor(a) for a in edge_index(n))
    g = torch.Generator().manual_seed(seed)
    hidden_edges = _hidden_structures(n, k, restarts, g)  # [restarts, n-1]
    others = [j for j in range(n) if j != hidden]
    # The module on edge s->r for every (task, restart) graph: known edges, then the hidden node's.
    structures = known.repeat_interleave(restarts, dim=0).clone()  # [tasks * restarts, edges]
    per_restart = hidden_edges.repeat(count, 1)  # [tasks * restarts, n-1]
    for col, j in enumerate(others):
        for s, r in ((hidden, j), (j, hidden)):  # symmetric relation: both directions share a module
            structures[:, int(((senders == s) & (receivers == r)).nonzero())] = per_restart[:, col]
    graphs = count * restarts
    layout = make_layout(structures, n, dims, k)
    visible = torch.tensor(others)
    observed = traj.repeat_interleave(restarts, dim=0)  # [graphs, frames, n, d]
    init = (torch.rand(graphs, dims, generator=g) * 2 - 1).requires_grad_(True)  # [graphs, d]
    opt = torch.optim.Adam([init], lr=lr)
    is_hidden = torch.zeros(n, 1, dtype=torch.bool)
    is_hidden[hidden] = True

    def simulate(x0: torch.Tensor):
        """Teacher-forced rollout: (per-graph loss `[graphs]`, hidden trajectory `[graphs, frames, d]`)."""
        h, path, sq = x0, [x0], 0.0
        for t in range(frames - 1):  # the time loop: each hidden state depends on the previous one
            x = torch.where(is_hidden, h.unsqueeze(1), observed[:, t])  # [graphs, n, d]
            nxt = message_step(lib, x.reshape(graphs * n, dims), layout, n).view(graphs, n, dims)
            sq = sq + ((nxt[:, visible] - observed[:, t + 1, visible]) ** 2).mean(dim=(1, 2))
            h = nxt[:, hidden]
            path.append(h)
        return sq / (frames - 1), torch.stack(path, dim=1)

    for step in range(steps):
        loss, _ = simulate(init)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        if (step + 1) % max(1, steps // 5) == 0:
            log(f"find-node: step {step + 1}/{steps}, mean fit {loss.mean().item():.3e}")
    with torch.no_grad():
        fit, path = simulate(init)
    fit = fit.view(count, restarts)
    best = fit.argmin(dim=1)  # [tasks]
    rows = torch.arange(count)
    return Recovery(path.view(count, restarts, frames, dims)[rows, best], fit[rows, best],
                    per_restart.view(count, restarts, -1)[rows, best])


def find_node(run_dir: str | Path, data_dir: str | Path, out: str | Path, *, hidden: int = 0, restarts: int = 32,
              steps: int = 100, tasks: int = 50, lr: float = 0.05, seed: int = 0, structure: str = "truth",
              log=print) -> dict:
    """Recover a hidden particle from its pull on the others (paper section 5.2).

    For each test task, particle `hidden` is removed. Its initial state (4 numbers) and the
    modules of its edges are unknown; the edges among the visible particles come from the ground
    truth (`structure="truth"`, the paper's setting with a true-graph model, whose module k is
    relation k) or from the model's proposal network (`"infer"`, for BounceGrad runs; it sees
    the hidden particle too, so it is an optimistic setting). Every (task, restart) pair is one
    candidate: a random initial state in [-1, 1]^4 and one assignment of the hidden node's edge
    modules (all K^(n-1) assignments are enumerated when they fit in `restarts`). All candidates
    of all tasks are optimized together by Adam on the initial state, through the frozen model:
    the visible particles are teacher-forced with their observed states at every frame, the
    hidden one evolves from its candidate initial state, and the loss is the one-step prediction
    error of the visible particles over the observed frames. The best-fitting candidate of each
    task is kept; its hidden trajectory is compared with the truth.
    """
    from .graph import edge_index
    from .train import load_run

    out = Path(out)
    server, cfg, meta, norm = load_run(run_dir)
    lib = server.lib.requires_grad_(False)
    data = Dataset(data_dir)
    n = data.n_balls
    if not 0 <= hidden < n:
        raise NriRayError(f"--hidden: got {hidden}, expected a particle index in 0..{n - 1}")
    if structure not in ("truth", "infer"):
        raise NriRayError(f"--structure: got {structure!r}, expected truth or infer")
    count = min(tasks, data.num_tasks("test")) if tasks else data.num_tasks("test")
    part = data.read("test", 0, count, normalize=False)
    frames = min(cfg.train.sa_frames, part.trajectories.shape[1])
    traj = torch.as_tensor(norm.apply(part.trajectories))[:, :frames]  # [tasks, frames, n, d]
    labels = torch.as_tensor(part.labels).long()  # [tasks, edges]
    if structure == "truth":
        known = labels
    else:
        with torch.no_grad():
            known = server.proposer(traj).argmax(dim=-1)
    t0 = time.perf_counter()
    rec = recover_hidden(lib, traj, known, hidden, restarts=restarts, steps=steps, lr=lr, seed=seed, log=log)
    truth = traj[:, :, hidden]  # [tasks, frames, d]
    per_task = ((rec.trajectory - truth) ** 2).mean(dim=(1, 2))  # [tasks]
    senders, receivers = edge_index(n)
    hidden_cols = [next(e for e in range(len(senders)) if senders[e] == hidden and receivers[e] == j)
                   for j in range(n) if j != hidden]
    result = {"run": str(run_dir), "data": str(data_dir), "hidden": hidden, "tasks": count, "restarts": restarts,
              "steps": steps, "structure": structure, "frames": frames,
              "trajectory_mse": float(per_task.mean()), "trajectory_mse_median": float(per_task.median()),
              "initial_state_mse": float(((rec.trajectory[:, 0] - truth[:, 0]) ** 2).mean()),
              "visible_fit_mse": float(rec.fit.mean()),
              "hidden_edge_accuracy": (float((rec.hidden_modules == labels[:, hidden_cols]).float().mean())
                                       if structure == "truth" else None),
              "paper_trajectory_mse": 1.09e-3, "seconds": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    B.write_json(out / "find_node.json", result)
    plots.find_node(traj[0].numpy(), rec.trajectory[0].numpy(), hidden, out / "find_node.png",
                    f"test task 0: hidden particle {hidden}, true (solid) vs recovered (dashed); "
                    f"MSE {float(per_task[0]):.2e}")
    return result
