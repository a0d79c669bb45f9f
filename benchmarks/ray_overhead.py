"""Benchmark: the same BounceGrad rounds with LocalBackend and with RayBackend (1 and 2 shards).

One machine, one run, side by side: each variant runs `--warmup` + `--repeats` rounds of the
same meta-batches through `backend.step_all` and the server's `apply` (the training loop's round,
without evaluation), and reports the median seconds per round, its ratio to LocalBackend, the
bytes the driver fetches per round and the bytes a Ray round puts in the object store.
Defaults: the published architecture (`--preset paper`) and B = 128, on synthetic trajectories.

    python benchmarks/ray_overhead.py [--preset paper] [--batch 128] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from round import synthetic_dataset  # noqa: E402

from nri_ray import config as C  # noqa: E402
from nri_ray.distributed import make_backend  # noqa: E402
from nri_ray.train import sample_batch  # noqa: E402


def time_rounds(cfg: C.Config, data: str, tasks: int, args) -> dict:
    """Median seconds of `args.repeats` rounds (after `args.warmup`), and the bytes a round moves:
    through the driver (what it fetches: the shards' statistics and the server's `Applied`) and
    through the object store (the weights object, every shard's gradients, the server's state)."""
    backend = make_backend(cfg, data, tasks, f"bench-{cfg.cluster.backend}-{cfg.train.num_shards}")
    try:
        server = backend.make_server(cfg, 4, args.frames)
        mirror = backend.structures()
        weights = server.weights()
        times = []
        for r in range(args.warmup + args.repeats):
            ids = sample_batch(0, r, tasks, cfg.train.meta_batch_size)
            start = time.perf_counter()
            stats, gradients = backend.step_all(weights, r, ids, 1e-4, mirror)
            weights, applied = server.apply(r, *gradients)
            times.append(time.perf_counter() - start)
        driver_bytes = sum(len(pickle.dumps(s)) for s in stats) + len(pickle.dumps(applied))
        if cfg.cluster.backend == "ray":  # sizes of the round's objects (fetched here once, after timing)
            ray = backend.ray
            weights_bytes = sum(a.nbytes for a in ray.get(weights))
            grad_bytes = sum(g.modules.nbytes + g.proposal.nbytes for g in ray.get(list(gradients)))
            state_bytes = len(pickle.dumps(server.state_dict()))
            store_bytes = weights_bytes + grad_bytes + state_bytes
        else:
            weights_bytes, store_bytes = sum(a.nbytes for a in weights), 0
    finally:
        backend.close()
    return {"seconds_per_round": statistics.median(times[args.warmup:]), "all_rounds": times,
            "driver_bytes_per_round": driver_bytes if cfg.cluster.backend == "ray" else 0,
            "object_store_bytes_per_round": store_bytes, "weights_bytes": weights_bytes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper", choices=("paper", "small"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--frames", type=int, default=49)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args()
    tasks = 4 * args.batch
    results = {"config": vars(args), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_dataset(Path(tmp), tasks, args.frames, 5)
        base = C.merge(C.preset(args.preset), {"train": {"meta_batch_size": args.batch, "device": "cpu"}})
        variants = [("local", 1), ("ray", 1), ("ray", 2)]
        for backend, shards in variants:
            cfg = C.Config.from_dict(C.merge(base, {"train": {"num_shards": shards}, "cluster": {"backend": backend}}))
            results[f"{backend}_{shards}"] = time_rounds(cfg, tmp, tasks, args)
    local = results["local_1"]["seconds_per_round"]
    for backend, shards in variants:
        r = results[f"{backend}_{shards}"]
        r["ratio_to_local"] = r["seconds_per_round"] / local
        print(f"{backend:5s} shards={shards}  {r['seconds_per_round']:.3f} s/round  ratio {r['ratio_to_local']:.3f}  "
              f"driver {r['driver_bytes_per_round'] / 1e3:.1f} kB/round  "
              f"object store {r['object_store_bytes_per_round'] / 1e6:.2f} MB/round", flush=True)
    results["ratio_ray2_to_local"] = results["ray_2"]["ratio_to_local"]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
