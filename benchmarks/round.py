"""Benchmark: one BounceGrad round (ShardWorker.step + ParameterServer.apply), against matmul.

Defaults are the published configuration: 5 nodes, 49 frames, edge 8-256-256-256, node
260-256-256-256-4, K = 2, B = 128, learned proposal, one SA step. Synthetic trajectories (the
cost does not depend on the values). Reports the median seconds per round over `--repeats`
rounds after `--warmup`, tasks per second, the FLOPs the round must do, counted as REFERENCE.md 9
does (GNN forward of current and proposed structures; backward = 2x one forward, of the kept
structures; proposal network forward + backward = 3x its forward), the achieved FLOP/s, and in
the same run the FLOP/s of a plain `torch.matmul` of the round's largest GEMM shape (one
module's rows of a chunk's SA forward, [rows, 256] x [256, 256]) on the same device and dtype:
their ratio is the efficiency. A stricter efficiency divides by the best matmul rate measured
(that shape and the whole batch's [B * anchors * edges, 256], each plain and into a
preallocated output). Only rollout steps that have a target are counted (and computed): the last
anchor of 49 frames runs 8 steps, so 48 of REFERENCE's 50 steps per evaluation. Also memory: the
engine's workspace (tape and backward buffers) and the peak (CUDA: allocated by torch; CPU: the
process's peak resident set so far, which in a sweep is the largest point's so far).

    python benchmarks/round.py [--device cpu|cuda] [--batch 128] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nri_ray import config as C  # noqa: E402
from nri_ray.bouncegrad import chunk_size  # noqa: E402
from nri_ray.data import SplitWriter, build_meta, write_meta  # noqa: E402
from nri_ray.gnn import active_anchors  # noqa: E402
from nri_ray.server import ParameterServer  # noqa: E402
from nri_ray.shard import ShardWorker  # noqa: E402
from nri_ray.train import sample_batch  # noqa: E402


def mlp_flops(sizes: list[int]) -> int:
    return 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def round_flops(cfg: C.Config, nodes: int, frames: int, batch: int) -> float:
    edges = nodes * (nodes - 1)
    edge = mlp_flops([8] + cfg.model.edge_widths)
    node = mlp_flops([cfg.model.edge_widths[-1] + 4] + cfg.model.node_widths + [4])
    steps = sum(active_anchors(frames, cfg.model.rollout)[1])  # (anchor, step) pairs with a target
    evaluation = steps * (edges * edge + nodes * node)  # one task, one structure
    h = cfg.proposal.proposal_hidden
    block = lambda n_in: mlp_flops([n_in, h, h])  # noqa: E731
    encoder = nodes * block(frames * 4) + edges * block(2 * h) + nodes * block(h) + edges * (block(3 * h) + 2 * h * 2)
    return batch * ((1 + cfg.train.sa_steps) * evaluation + 2 * evaluation + 3 * encoder)


def synthetic_dataset(directory: Path, tasks: int, frames: int, nodes: int) -> None:
    rng = np.random.default_rng(0)
    writers = {}
    for split, count in (("train", tasks), ("valid", 8), ("test", 8)):
        w = writers[split] = SplitWriter(directory / f"{split}.parquet", frames, nodes, 5000)
        w.append(rng.standard_normal((count, frames, nodes, 4)), rng.integers(0, 2, (count, nodes * (nodes - 1))))
        w.close()
    write_meta(directory, build_meta(simulator="springs", n_balls=nodes, writers=writers, source="synthetic"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Matmul:
    """[rows, 256] x [256, 256] on `device`: plain torch.matmul, or into a preallocated output (no allocation)."""

    def __init__(self, rows: int, device: torch.device, preallocated: bool):
        self.rows, self.device = rows, device
        a, b = torch.randn(rows, 256, device=device), torch.randn(256, 256, device=device)
        out = torch.empty(rows, 256, device=device)
        self.run = (lambda: torch.mm(a, b, out=out)) if preallocated else (lambda: torch.matmul(a, b))
        self.seconds: list[float] = []
        self.burst()  # warm-up

    def burst(self) -> None:
        """Time a few calls (about 5 GFLOP, 2 to 10 calls); keeps seconds per call."""
        calls = max(2, min(10, int(5e9 / (2 * self.rows * 256 * 256))))
        sync(self.device)
        t = time.perf_counter()
        for _ in range(calls):
            self.run()
        sync(self.device)
        self.seconds.append((time.perf_counter() - t) / calls)

    def rate(self) -> float:
        return 2 * self.rows * 256 * 256 / statistics.median(self.seconds[1:])


def bench(args, batch: int, nodes: int, modules: int, device: torch.device) -> dict:
    overrides = {"model": {"edge_modules": modules},
                 "train": {"meta_batch_size": batch, "device": device.type, "chunk_tasks": args.chunk_tasks,
                           "warmup_rounds": 0}}  # a search round, also for a preset that starts with a warm-up
    cfg = C.Config.from_dict(C.merge(C.preset(args.preset), overrides))
    tasks = max(batch, 256)
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_dataset(Path(tmp), tasks, args.frames, nodes)
        shard = ShardWorker(0, tmp, 0, tasks, cfg, device.type)
    server = ParameterServer(cfg, 4, args.frames)
    weights = server.weights()
    # The round's GEMMs run chunk by chunk (bouncegrad.chunk_size): the largest is one module's share
    # of a chunk's SA forward (current + proposed). Reference: a plain torch.matmul of that shape. Stricter:
    # the best rate of that shape and of the whole batch's, each plain and into a preallocated output.
    # The matmuls are timed between the rounds, so that both medians come from the same minutes.
    anchors = len(active_anchors(args.frames, cfg.model.rollout)[0])
    chunk = chunk_size(cfg, shard.tapes.sa, batch, device)
    largest = 2 * chunk * anchors * nodes * (nodes - 1) // modules
    whole = batch * anchors * nodes * (nodes - 1)
    matmuls = [Matmul(rows, device, pre) for rows in (largest, whole) for pre in (False, True)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for r in range(args.warmup + args.repeats):
        ids = sample_batch(0, r, tasks, batch)
        sync(device)
        t = time.perf_counter()
        weights, _ = server.apply(r, shard.step(weights, r, ids, 1e-4)[1])
        sync(device)
        times.append(time.perf_counter() - t)
        for m in matmuls:
            m.burst()
    seconds = statistics.median(times[args.warmup:])
    if args.profile:  # one more round under the profiler: where the time goes, by operator
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            server.apply(len(times), shard.step(weights, len(times), sample_batch(0, len(times), tasks, batch), 1e-4)[1])
            sync(device)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=args.profile), flush=True)
    flops = round_flops(cfg, nodes, args.frames, batch)
    mm = matmuls[0].rate()
    best = max(m.rate() for m in matmuls)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:  # the process's peak resident set so far (Linux reports KiB); in a sweep, the largest point so far
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    workspace = shard.tapes.sa.ws.nbytes()  # the tapes' and backward's buffers (shared by both tapes)
    return {"device": device.type, "batch": batch, "nodes": nodes, "edge_modules": modules,
            "chunk_tasks": chunk, "matmul_rows": largest, "seconds_per_round": seconds, "tasks_per_second": batch / seconds,
            "round_flops": flops, "achieved_flops_per_s": flops / seconds, "matmul_flops_per_s": mm,
            "efficiency": flops / seconds / mm, "matmul_best_flops_per_s": best, "efficiency_strict": flops / seconds / best,
            "peak_memory_bytes": peak, "workspace_bytes": workspace, "round_seconds_all": times}


def markdown(runs: list[dict]) -> str:
    """The runs as the Markdown table of benchmarks/README.md."""
    lines = ["| device | B | nodes | K | chunk | s / round | tasks / s | round GFLOP | achieved GFLOP/s "
             "| matmul GFLOP/s (plain, round's largest GEMM) | efficiency | best matmul GFLOP/s | strict efficiency "
             "| workspace MB |",
             "| --- " * 14 + "|"]
    for r in runs:
        lines.append(f"| {r['device']} | {r['batch']} | {r['nodes']} | {r['edge_modules']} | {r['chunk_tasks']} "
                     f"| {r['seconds_per_round']:.3f} | {r['tasks_per_second']:.0f} | {r['round_flops'] / 1e9:.0f} "
                     f"| {r['achieved_flops_per_s'] / 1e9:.1f} | {r['matmul_flops_per_s'] / 1e9:.1f} | {r['efficiency']:.2f} "
                     f"| {r['matmul_best_flops_per_s'] / 1e9:.1f} | {r['efficiency_strict']:.2f} "
                     f"| {r['workspace_bytes'] / 2**20:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--preset", default="paper", choices=("paper", "small"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--modules", type=int, default=2)
    p.add_argument("--frames", type=int, default=49)
    p.add_argument("--chunk-tasks", type=int, default=0, help="train.chunk_tasks (0 = auto)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sweep", action="store_true", help="also sweep B, nodes and K")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="print the top ROWS operators of one extra round (torch.profiler)")
    p.add_argument("--json", help="write results here")
    args = p.parse_args()
    device = torch.device(args.device)
    results = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                           "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}}
    main_result = bench(args, args.batch, args.nodes, args.modules, device)
    results.update({k: v for k, v in main_result.items() if k != "round_seconds_all"})
    results["runs"] = [main_result]
    if args.sweep:  # fewer rounds each: the large points take tens of seconds per round on a CPU
        quick = argparse.Namespace(**{**vars(args), "warmup": 1, "repeats": min(args.repeats, 3), "profile": 0})
        for batch in (32, 64, 256, 512, 1024):
            results["runs"].append(bench(quick, batch, args.nodes, args.modules, device))
        for nodes in (10, 20):
            results["runs"].append(bench(quick, args.batch, nodes, args.modules, device))
        for modules in (3, 4, 6, 8):
            results["runs"].append(bench(quick, args.batch, args.nodes, modules, device))
    for r in results["runs"]:
        print(f"{r['device']:4s} B={r['batch']:5d} nodes={r['nodes']:3d} K={r['edge_modules']}  "
              f"{r['seconds_per_round'] * 1e3:9.1f} ms/round  {r['tasks_per_second']:9.0f} tasks/s  "
              f"{r['achieved_flops_per_s'] / 1e9:8.1f} GFLOP/s  matmul {r['matmul_flops_per_s'] / 1e9:8.1f} GFLOP/s  "
              f"efficiency {r['efficiency']:.2f}  (best matmul {r['matmul_best_flops_per_s'] / 1e9:.1f}: "
              f"{r['efficiency_strict']:.2f})  workspace {r['workspace_bytes'] / 2**20:.0f} MB  "
              f"peak {r['peak_memory_bytes'] / 2**20:.0f} MB", flush=True)
    print()
    print(markdown(results["runs"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
