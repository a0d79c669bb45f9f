"""Benchmark: how the Ray round's overhead grows with the number of shard actors.

S = 1, 2, 4, 8, 16 shard actors on this machine, each running the training loop's round
(`backend.step_all` + the server's `apply`) on the same meta-batches, side by side with
LocalBackend, for two model sizes: `tiny` (8-wide modules: compute is negligible, so the round is
pure overhead) and the `small` preset. Reported per variant: median seconds per round, the bytes
the driver fetches per round (the shards' statistics and the server's small `Applied`: it should
not grow with the model) and the bytes a round puts in the object store (weights, gradients, the
server's state object).

    python benchmarks/ray_scale.py [--shards 1,2,4,8,16] [--batch 64] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ray_overhead import time_rounds  # noqa: E402
from round import synthetic_dataset  # noqa: E402

from nri_ray import config as C  # noqa: E402

MODELS = {
    "tiny": {"model": {"edge_hidden": [8], "node_hidden": [8]}, "proposal": {"proposal_hidden": 8}},
    "small": {},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", default="1,2,4,8,16")
    p.add_argument("--models", default="tiny,small")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--frames", type=int, default=49)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args()
    tasks = 4 * args.batch
    results = {"config": vars(args), "cpus": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_dataset(Path(tmp), tasks, args.frames, 5)
        for model in args.models.split(","):
            base = C.merge(C.merge(C.preset("small"), MODELS[model]), {"train": {
                "meta_batch_size": args.batch, "device": "cpu", "warmup_rounds": 0, "threads": 1}})
            variants = [("local", 1)] + [("ray", int(s)) for s in args.shards.split(",")]
            local = None
            for backend, shards in variants:
                cfg = C.Config.from_dict(C.merge(base, {"train": {"num_shards": shards},
                                                        "cluster": {"backend": backend, "cpus_per_shard": 0.1}}))
                r = {"model": model, "backend": backend, "shards": shards, **time_rounds(cfg, tmp, tasks, args)}
                local = local or r["seconds_per_round"]
                r["ratio_to_local"] = r["seconds_per_round"] / local
                results["runs"].append(r)
                print(f"{model:5s} {backend:5s} shards={shards:2d}  {r['seconds_per_round']:.3f} s/round  "
                      f"ratio {r['ratio_to_local']:.2f}  driver {r['driver_bytes_per_round'] / 1e3:.1f} kB/round  "
                      f"object store {r['object_store_bytes_per_round'] / 1e6:.2f} MB/round  "
                      f"(weights {r['weights_bytes'] / 1e3:.0f} kB)", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
