"""The `nri-ray sweep` command, registered through the `nri_ray.commands` entry point."""
from __future__ import annotations

import argparse
import json

from nri_ray import flags as F
from nri_ray.config import PRESETS


def register(sub) -> None:
    """Add `sweep` to nri-ray's subcommands."""
    from .spaces import SPACES
    from .sweep import METRICS

    p = sub.add_parser("sweep", help="Ray Tune sweep of training runs (module counts, annealing, ...)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--space", choices=sorted(SPACES), help="search space (tuning/spaces.py)")
    p.add_argument("--data", help="dataset directory")
    p.add_argument("--out", help="sweep directory to create (Tune experiment, results.csv, best_config.yaml)")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep")
    p.add_argument("--num-samples", type=int, default=1, help="samples of the space (each grid point this often)")
    p.add_argument("--scheduler", default="asha", choices=("asha", "pbt"),
                   help="asha: early stopping; pbt: population-based training (mutates lr, epsilon, annealing)")
    p.add_argument("--metric", default="valid_loss", choices=sorted(METRICS),
                   help="what the scheduler optimizes: valid_loss is the meta-valid prediction MSE over the SA "
                        "window (label-free), valid_mse_H the MSE H steps ahead, valid_edge_accuracy needs labels")
    p.add_argument("--max-rounds", type=int, default=600, help="BounceGrad rounds per trial (at most)")
    _add_trial_flags(p, shards=1, driver_cpus=0.5, server_cpus=0.5)
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0 = as resources allow)")
    p.add_argument("--grace-evals", type=int, default=2, help="ASHA: evaluations every trial gets before a cut")
    p.add_argument("--perturbation-evals", type=int, default=2, help="PBT: evaluations between exploit/explore")
    p.add_argument("--pbt-quantile", type=float, default=0.25,
                   help="PBT: the bottom fraction of trials that copy one of the top fraction")
    _add_base_config_flags(p, "trial")
    p.set_defaults(func=_cmd_sweep)


def _add_trial_flags(p: argparse.ArgumentParser, *, shards: int, driver_cpus: float, server_cpus: float) -> None:
    """How one Tune trial (a whole training) is placed: its shard actors and CPU reservations."""
    p.add_argument("--shards-per-trial", type=int, default=shards, help="shard actors per trial")
    p.add_argument("--driver-cpus", type=float, default=driver_cpus, help="CPUs reserved for each trial's driver")
    p.add_argument("--server-cpus", type=float, default=server_cpus,
                   help="CPUs reserved for each trial's parameter server")


def _add_base_config_flags(p: argparse.ArgumentParser, what: str) -> None:
    """The config every trial starts from: a preset, then a file, then the training flags."""
    p.add_argument("--preset", default="small", choices=tuple(PRESETS), help=f"base config of every {what}")
    p.add_argument("--config", help="YAML or JSON base config (flags override it)")
    F.add_config_flags(p)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from nri_ray.errors import NriRayError

    from .sweep import make_spec, resume_sweep, run_sweep

    if args.resume:
        summary = resume_sweep(args.resume, address=args.address or "")
    else:
        missing = [f for f, v in (("--space", args.space), ("--data", args.data), ("--out", args.out)) if not v]
        if missing:
            raise NriRayError(f"sweep: {', '.join(missing)} required (or --resume SWEEP_DIR)")
        base_cfg = F.config_from_args(args, preset_name=args.preset)
        spec = make_spec(space_name=args.space, data=args.data, base=base_cfg.to_dict(), num_samples=args.num_samples,
                         scheduler_name=args.scheduler, max_rounds=args.max_rounds, metric=args.metric,
                         shards_per_trial=args.shards_per_trial, driver_cpus=args.driver_cpus,
                         server_cpus=args.server_cpus, max_concurrent=args.max_concurrent,
                         grace_evals=args.grace_evals, perturbation_evals=args.perturbation_evals,
                         pbt_quantile=args.pbt_quantile)
        summary = run_sweep(spec, args.out, address=args.address or "")
    print(json.dumps(summary, indent=2, default=str))
    return 130 if summary["interrupted"] else (1 if summary["errors"] == summary["trials"] else 0)


def register_seeds(esub) -> None:
    """Add `experiment seeds` to nri-ray's experiment subcommands."""
    p = esub.add_parser("seeds", help="one config on many (data seed, train seed) pairs, as Ray Tune trials",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-seeds", default="42,1,2", help="seeds of the generated datasets (every pair with --train-seeds)")
    p.add_argument("--train-seeds", default="42,0", help="training seeds")
    p.add_argument("--pairs", help="explicit DATA:TRAIN pairs, e.g. 42:42,1:0 (instead of the two lists' product)")
    p.add_argument("--sim", default="springs", choices=("springs", "charged"), help="simulator of the datasets")
    p.add_argument("--n-balls", type=int, default=5, help="particles per trajectory")
    p.add_argument("--num-train", type=int, default=2000, help="meta-train tasks per dataset")
    p.add_argument("--num-valid", type=int, default=500, help="meta-valid tasks per dataset")
    p.add_argument("--num-test", type=int, default=1000, help="meta-test tasks per dataset")
    p.add_argument("--length", type=int, default=5000, help="integration steps of train/valid trajectories")
    p.add_argument("--length-test", type=int, default=10000, help="integration steps of test trajectories")
    p.add_argument("--out", required=True, help="output directory (data/, runs/, seeds.json, seeds.png); rerun to continue")
    p.add_argument("--test-sa-steps", type=int, default=100, help="SA steps per test task when scoring")
    _add_trial_flags(p, shards=2, driver_cpus=0.25, server_cpus=0.25)
    _add_base_config_flags(p, "pair")
    p.set_defaults(func=_cmd_seeds, cpus_per_shard_default=0.75)


def _cmd_seeds(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .seeds import format_summary, make_spec, parse_pairs, parse_seeds, run_seeds

    if args.pairs:
        pairs = parse_pairs(args.pairs)
    else:
        pairs = [(d, t) for d in parse_seeds(args.data_seeds, "--data-seeds") for t in parse_seeds(args.train_seeds, "--train-seeds")]
    # a trial of 2 shards fills 2 CPUs: 0.25 + 2 x 0.75 + 0.25 (a file or --cpus-per-shard overrides it)
    base_cfg = F.config_from_args(args, preset_name=args.preset,
                                  defaults={"cluster": {"cpus_per_shard": args.cpus_per_shard_default}})
    generate = {"sim": args.sim, "n_balls": args.n_balls, "num_train": args.num_train, "num_valid": args.num_valid,
                "num_test": args.num_test, "length": args.length, "length_test": args.length_test}
    out = Path(args.out).resolve()
    spec = make_spec(pairs=pairs, generate=generate, base=base_cfg.to_dict(), out=out, test_sa_steps=args.test_sa_steps,
                     shards_per_trial=args.shards_per_trial, driver_cpus=args.driver_cpus, server_cpus=args.server_cpus)
    result = run_seeds(spec, address=args.address or "")
    print(format_summary(result))
    print(f"results: {out / 'seeds.json'}, {out / 'seeds.png'}")
    return 0
