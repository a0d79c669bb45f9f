"""Trace what the edge modules do round by round (module collapse; labels read only to score).

Runs the training loop in this process (the local backend with the run's shard count, so the
rounds are the ones `nri-ray train` runs) and, every round in [--from, --to) and every --every
rounds otherwise, measures on a fixed probe of 128 meta-train tasks:

- `share1`: share of all meta-train edges whose current structure runs module 1;
- `block1`: share of probe edges the one-step block optimum puts on module 1;
- `prop1`: the proposal network's mean probability of module 1 on probe edges;
- `loss0`, `loss1`: SA loss with module k on every probe edge;
- `msg0`, `msg1`: mean norm of module k's message on probe edges;
- `step0`, `step1`: norm of the change of module k's weights in that round's server step;
- `block_acc`: the block optimum's edge accuracy on the probe (labels: scoring only).

    python docs/examples/collapse_trace.py --data DATA --preset small --seed 5 --json trace.json [config flags]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from nri_ray import engine
from nri_ray.bouncegrad import split_windows
from nri_ray.data import Dataset
from nri_ray.distributed import LocalBackend
from nri_ray.flags import add_config_flags, config_from_args
from nri_ray.metrics import edge_accuracy
from nri_ray.proposal import propose_block_optimum
from nri_ray.train import sample_batch

PROBE_TASKS = 128


def module_norms(lib) -> list[torch.Tensor]:
    """Per edge module, the flat vector of its weights (a copy)."""
    k = lib.num_edge_modules
    return [torch.cat([p[m].reshape(-1) for p in lib.edges.parameters()]).detach().clone() for m in range(k)]


@torch.no_grad()
def probe(lib, proposer, window: torch.Tensor, labels: np.ndarray, rollout: int) -> dict:
    tasks, _, n, dims = window.shape
    k = lib.num_edge_modules
    zeros = torch.zeros(tasks, n * (n - 1), dtype=torch.long)
    block = propose_block_optimum(lib, window, zeros)
    probs = torch.softmax(proposer(window), dim=-1)  # [tasks, edges, modules]
    out = {"block1": float((block == 1).float().mean()), "prop1": float(probs[..., 1].mean()),
           "block_acc": edge_accuracy(block.numpy(), labels, k)}
    from nri_ray.graph import edge_index
    senders, receivers = edge_index(n)
    x = window[:, ::4]  # [tasks, frames/4, nodes, dims]
    pairs = torch.cat([x[:, :, senders], x[:, :, receivers]], dim=-1).reshape(-1, 2 * dims)
    feats = lib.edge_features(pairs)
    for m in range(k):
        out[f"loss{m}"] = float(engine.losses(lib, window, torch.full_like(zeros, m), rollout).mean())
        out[f"msg{m}"] = float(lib.edges(m, feats).norm(dim=1).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--json", required=True)
    parser.add_argument("--from", dest="lo", type=int, default=95)
    parser.add_argument("--to", dest="hi", type=int, default=300)
    parser.add_argument("--every", type=int, default=25)
    add_config_flags(parser)
    args = parser.parse_args()
    cfg = config_from_args(args, preset_name=args.preset, defaults={"cluster": {"backend": "local"}})
    cfg = cfg.resolved()
    if cfg.train.num_shards == 1:  # the ray backend's default on this machine: one shard per core
        import dataclasses
        import os
        cfg = dataclasses.replace(cfg, train=cfg.train.replace(num_shards=os.cpu_count() or 1))
    data = Dataset(args.data)
    part = data.read("train", 0, min(PROBE_TASKS, data.num_tasks("train")))
    window, _ = split_windows(torch.as_tensor(part.trajectories), cfg.train.grad_split, cfg.train.heldout_frames)
    window = window[:, :cfg.train.sa_frames]
    backend = LocalBackend(cfg, args.data, data.num_tasks("train"))
    server = backend.make_server(cfg, data.dims, window.shape[1])
    weights, rows = server.weights(), []
    lib, proposer = server.models()
    for r in range(cfg.train.rounds):
        batch = sample_batch(cfg.train.seed, r, data.num_tasks("train"), cfg.train.meta_batch_size)
        before = module_norms(lib)
        reports, gradients = backend.step_all(weights, r, batch, 0.0)
        weights, _ = server.apply(r, *gradients)
        if (args.lo <= r < args.hi) or (r + 1) % args.every == 0:
            after = module_norms(lib)
            structures = backend.structures()
            row = {"round": r, "share1": float((structures == 1).mean()),
                   "loss": sum(x.loss_sum for x in reports) / sum(x.tasks for x in reports),
                   **{f"step{m}": float((a - b).norm()) for m, (a, b) in enumerate(zip(after, before))},
                   **probe(lib, proposer, window, part.labels, cfg.model.rollout)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(args.json, "w") as fh:
                json.dump({"config": cfg.to_dict(), "rows": rows}, fh)


if __name__ == "__main__":
    sys.exit(main())
