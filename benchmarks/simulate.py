"""Benchmark: the vectorized NRI generator against a per-trajectory loop in the original's style.

Both run in this one process, side by side, on the same initial conditions (the original RNG
stream), one core each. The loop is timed on `--loop-trajectories` trajectories (it needs ~0.1-0.5 s
per trajectory, so 1000 would take many minutes) and reported per trajectory; the vectorized
generator runs the full `--trajectories` batch. Before timing, the first trajectories of both are
checked to be bitwise equal. Prints a table and writes JSON with `speedup_springs`,
`speedup_charged` (loop seconds per trajectory / vectorized seconds per trajectory) and the
seconds behind them.

    python benchmarks/simulate.py [--trajectories 1000] [--length 5000] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_sim  # noqa: E402

from nri_ray import simulate  # noqa: E402


def bench(sim: str, args) -> dict:
    frames = simulate.frames_for(args.length, args.sample_freq)
    (init,) = simulate.draw_initial_nri_exact(sim, args.n_balls, [(args.trajectories, frames)], args.seed)
    # The loop draws from the same stream, so its trajectories are the first ones of the batch.
    loop_times = []
    rs = np.random.RandomState(args.seed)
    first = None
    for _ in range(args.loop_trajectories):
        start = time.perf_counter()
        out = reference_sim.sample_trajectory(sim, rs, args.n_balls, args.length, args.sample_freq)
        loop_times.append(time.perf_counter() - start)
        first = out if first is None else first
    vec_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        loc, vel = simulate.simulate(sim, init, args.length, args.sample_freq)
        vec_times.append(time.perf_counter() - start)
    exact = bool(np.array_equal(loc[0], first[0]) and np.array_equal(vel[0], first[1]))
    loop_per_traj = statistics.median(loop_times)
    vec_seconds = statistics.median(vec_times)
    vec_per_traj = vec_seconds / args.trajectories
    return {
        "loop_seconds_per_trajectory": loop_per_traj,
        "loop_trajectories_timed": args.loop_trajectories,
        "loop_seconds_for_batch_extrapolated": loop_per_traj * args.trajectories,
        "vectorized_seconds": vec_seconds,
        "vectorized_seconds_per_trajectory": vec_per_traj,
        "vectorized_repeats": vec_times,
        "speedup": loop_per_traj / vec_per_traj,
        "bit_identical_first_trajectory": exact,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trajectories", type=int, default=1000)
    p.add_argument("--loop-trajectories", type=int, default=20)
    p.add_argument("--length", type=int, default=5000)
    p.add_argument("--sample-freq", type=int, default=100)
    p.add_argument("--n-balls", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sims", default="springs,charged")
    p.add_argument("--json", help="write results here")
    args = p.parse_args()
    results = {"config": vars(args), "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                 "numpy": np.__version__}}
    for sim in args.sims.split(","):
        r = bench(sim, args)
        results[sim] = r
        results[f"speedup_{sim}"] = r["speedup"]
        print(f"{sim:8s} loop {r['loop_seconds_per_trajectory'] * 1e3:8.1f} ms/traj   "
              f"vectorized {r['vectorized_seconds_per_trajectory'] * 1e3:6.2f} ms/traj "
              f"({args.trajectories} in {r['vectorized_seconds']:.2f} s)   speedup {r['speedup']:6.1f}x   "
              f"bit-identical: {r['bit_identical_first_trajectory']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
