"""`nri-ray data generate`: simulate the three splits and write them as a dataset directory.

Initial conditions are drawn first (all of them; cheap), then simulated in independent chunks
over worker processes and written split by split, in task order. With `nri_exact` the draws
replay the original NRI script's RNG stream (DATA.md A2, A7), so that the arrays equal the
original generator's bit for bit; otherwise each split draws from its own
`numpy.random.Generator` seeded by (seed, split index).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import simulate
from .config import GenerateConfig
from .data import SPLITS, SplitWriter, build_meta, edges_to_labels, normalization_groups, nri_to_tasks, write_meta
from .io import atomic_dir


def draw_all(cfg: GenerateConfig) -> dict[str, simulate.InitialConditions]:
    counts = {"train": cfg.num_train, "valid": cfg.num_valid, "test": cfg.num_test}
    frames = {"train": cfg.frames, "valid": cfg.frames, "test": cfg.frames_test}
    if cfg.nri_exact:
        inits = simulate.draw_initial_nri_exact(
            cfg.sim, cfg.n_balls, [(counts[s], frames[s]) for s in SPLITS], cfg.seed)
        return dict(zip(SPLITS, inits))
    return {
        split: simulate.draw_initial(cfg.sim, cfg.n_balls, counts[split], np.random.default_rng([cfg.seed, i]), cfg.dims)
        for i, split in enumerate(SPLITS)
    }


def generate(cfg: GenerateConfig, out: Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Generate a dataset into `out` (atomically). Returns its meta.json contents."""
    lengths = {"train": cfg.length, "valid": cfg.length, "test": cfg.length_test}
    with atomic_dir(Path(out), overwrite) as tmp:
        inits = draw_all(cfg)
        total = sum(inits[s].count * lengths[s] for s in SPLITS)  # progress in simulated steps
        bar = tqdm(total=total, unit="step", unit_scale=True, disable=not progress,
                   desc=f"simulating {cfg.sim}{cfg.n_balls}", mininterval=1.0)
        writers = {}
        for split in SPLITS:
            frames = simulate.frames_for(lengths[split], cfg.sample_freq)
            writer = writers[split] = SplitWriter(tmp / f"{split}.parquet", frames, cfg.n_balls, cfg.row_group_size,
                                                  dims=2 * cfg.dims, groups=normalization_groups("pos-vel", 2 * cfg.dims))
            init = inits[split]

            def on_chunk(start, loc, vel, writer=writer, init=init, split=split):
                stop = start + len(loc)
                writer.append(nri_to_tasks(loc, vel), edges_to_labels(cfg.sim, init.edges[start:stop]))
                bar.update(len(loc) * lengths[split])

            simulate.simulate_chunks(cfg.sim, init, lengths[split], cfg.sample_freq,
                                     chunk_size=cfg.chunk_size, workers=cfg.num_workers, on_chunk=on_chunk)
            writer.close()
        bar.close()
        spec = simulate.get_spec(cfg.sim)
        params = {"length": cfg.length, "length_test": cfg.length_test, "sample_freq": cfg.sample_freq,
                  "box_size": spec.box_size, "dt": spec.dt, "loc_std": spec.loc_std, "vel_norm": spec.vel_norm,
                  "interaction_strength": spec.interaction_strength, "space_dims": cfg.dims}
        meta = build_meta(simulator=cfg.sim, n_balls=cfg.n_balls, writers=writers, source="generate",
                          seed=cfg.seed, nri_exact=cfg.nri_exact, params=params)
        write_meta(tmp, meta)
    return meta
