"""The `nri-ray` command line.

    nri-ray data generate    simulate the NRI springs / charged benchmark into a dataset directory
    nri-ray data import      your own .npy trajectories [tasks, time, nodes, dims], labels optional
    nri-ray data import-nri  read the original NRI .npy files into a dataset directory
    nri-ray data export-nri  write a dataset back as the original NRI .npy files
    nri-ray data info        counts, shapes, label balance, normalization constants
    nri-ray train            BounceGrad meta-training (or --resume RUN_DIR)
    nri-ray evaluate         meta-test inference with a trained run's frozen modules
    nri-ray infer            each task's inferred graph (and module probabilities) to Parquet
    nri-ray predict          roll inferred structures forward past each trajectory's end, to .npy
    nri-ray quickstart       the README's main job on its embedded defaults

User errors (bad flags, files, values) print one line naming what is wrong and exit with 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

from . import config as C
from . import flags as F
from .errors import NriRayError

QUICKSTART_DATA = Path("data/springs5-small")


def _cmd_generate(args: argparse.Namespace) -> int:
    from .datagen import generate

    base = C.load_file(args.config) if args.config else {}
    cfg = F.from_flags(C.GenerateConfig, args, base)
    start = time.perf_counter()
    meta = generate(cfg, Path(args.out), overwrite=args.overwrite, progress=not args.quiet)
    seconds = time.perf_counter() - start
    counts = ", ".join(f"{k} {v}" for k, v in meta["counts"].items())
    print(f"wrote {args.out}: {cfg.sim}{cfg.n_balls}, {counts} tasks in {seconds:.1f} s")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .nri_files import import_nri

    meta = import_nri(Path(args.src), Path(args.out), args.sim, args.n_balls, overwrite=args.overwrite)
    print(f"imported {args.src} -> {args.out}: " + ", ".join(f"{k} {v}" for k, v in meta["counts"].items()))
    return 0


def _cmd_import_arrays(args: argparse.Namespace) -> int:
    from .user_data import import_arrays

    labels = {"train": args.labels_train, "valid": args.labels_valid, "test": args.labels_test}
    meta = import_arrays(Path(args.out), train=args.train, valid=args.valid, test=args.test, labels=labels,
                         valid_fraction=args.valid_fraction, seed=args.seed, normalize=args.normalize,
                         overwrite=args.overwrite)
    print(f"imported -> {args.out}: " + ", ".join(f"{k} {v}" for k, v in meta["counts"].items())
          + f" tasks, {meta['n_balls']} nodes, {meta['dims']} dims, " + ("labeled" if meta["labeled"] else "unlabeled")
          + f", normalization {meta['params']['normalization_scheme']}")
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from .user_data import infer_graphs

    result = infer_graphs(args.run, args.out, data_dir=args.data, split=args.split, trajectories=args.trajectories,
                          labels=args.labels, sa_steps=args.sa_steps, tasks=args.tasks, device=args.device,
                          overwrite=args.overwrite)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .user_data import predict_future

    result = predict_future(args.run, args.trajectories, args.steps, args.out, sa_steps=args.sa_steps,
                            device=args.device, overwrite=args.overwrite)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .nri_files import export_nri

    files = export_nri(Path(args.dataset), Path(args.out), overwrite=args.overwrite)
    print(f"exported {len(files)} files to {args.out}")
    return 0


def dataset_info(directory: Path) -> dict:
    from .data import SPLITS, Dataset
    from .graph import num_edges

    ds = Dataset(directory)
    meta = ds.meta
    splits = {}
    for split in SPLITS:
        part = ds.read(split, normalize=False)  # also validates the file against meta.json
        splits[split] = {
            "tasks": ds.num_tasks(split),
            "trajectories_shape": [ds.num_tasks(split), ds.frames(split), ds.n_balls, ds.dims],
            "labels_shape": [ds.num_tasks(split), num_edges(ds.n_balls)] if ds.labeled else None,
            "label_balance": float(part.labels.mean()) if ds.labeled and part.labels.size else None,
        }
    return {"directory": str(directory), "simulator": ds.sim, "n_balls": ds.n_balls, "dims": ds.dims,
            "labeled": ds.labeled, "source": meta.get("source"),
            "seed": meta.get("seed"), "nri_exact": meta.get("nri_exact"), "splits": splits,
            "normalization": meta["normalization"], "format_version": meta["format_version"]}


def _cmd_info(args: argparse.Namespace) -> int:
    info = dataset_info(Path(args.dataset))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['directory']}: {info['simulator']}, {info['n_balls']} balls, source {info['source']}, "
          f"seed {info['seed']}")
    for split, s in info["splits"].items():
        balance = "–" if s["label_balance"] is None else f"{s['label_balance']:.4f}"  # None: no tasks
        labels = f"labels {s['labels_shape']}  fraction of label 1: {balance}" if s["labels_shape"] else "unlabeled"
        print(f"  {split:5s}  {s['tasks']:7d} tasks  trajectories {s['trajectories_shape']}  {labels}")
    n = info["normalization"]
    if "loc_min" in n:
        print(f"  normalization: loc [{n['loc_min']:.4f}, {n['loc_max']:.4f}]  vel [{n['vel_min']:.4f}, {n['vel_max']:.4f}]")
    else:
        print("  normalization: " + "  ".join(f"dims {g} [{a:.4f}, {b:.4f}]" for g, a, b in zip(n["groups"], n["min"], n["max"])))
    return 0


def _print_metrics(row: dict) -> None:
    mse = row.get("valid_mse", {})
    scored = (f"valid edge acc {row['valid_edge_accuracy']:.4f}  proposal acc {row['valid_proposal_accuracy']:.4f}  "
              if "valid_edge_accuracy" in row else "")  # unlabeled data: no accuracies
    print(f"round {row['round']:6d}  loss {row['grad_loss']:.3e}  accept {row['accept_rate']:.2f}  "
          f"T {row['temperature']:.2e}  {scored}mse@1 {mse.get('1', float('nan')):.2e}  "
          f"health {row.get('health_ratio', float('nan')):.3f}  {row['wall_seconds']:.0f} s", flush=True)


def _warn_health(summary: dict) -> None:
    from .train import health_warning

    warning = health_warning(summary)
    if warning:
        print(f"nri-ray: warning: {warning}", file=sys.stderr, flush=True)


def _cmd_train(args: argparse.Namespace) -> int:
    from . import checkpoint, plots
    from .evaluate import plot_example
    from .train import run

    if args.resume:
        run_dir = Path(args.resume)
        state = checkpoint.load(run_dir)
        cfg = F.config_from_args(args, saved=state["config"])
        data = args.data or state["meta"]["data_dir"]
    else:
        if not args.data or not args.out:
            raise NriRayError("train: --data and --out are required (or --resume RUN_DIR)")
        cfg, run_dir, data = F.config_from_args(args, preset_name=args.preset), Path(args.out), args.data
    result = run(cfg, data, run_dir, resume=bool(args.resume), report=None if args.quiet else _print_metrics,
                 progress=not args.quiet)
    plots.training_curves(run_dir / "metrics.jsonl", run_dir / "plots" / "training.png")
    plot_example(run_dir, data)
    print(json.dumps(result.summary, indent=2))
    _warn_health(result.summary)
    return 0


def _print_eval(result: dict) -> None:
    mse = result["mse"]
    print(f"{result['split']} ({result['tasks']} tasks, {result['sa_steps']} SA steps, {result['seconds']:.1f} s)")
    if "edge_accuracy" in result:
        print(f"  edge accuracy (SA)        {result['edge_accuracy']:.4f}")
        print(f"  edge accuracy (proposal)  {result['proposal_accuracy']:.4f}")
    else:
        print(f"  {result['note']}")
    print(f"  health ratio              {result['health_ratio']:.4f}   (SA loss / best single-module loss; label-free)")
    for h in ("1", "10", "20"):
        if h in mse:
            print(f"  MSE @ {h:>2s} steps            {mse[h]:.3e}   (from frame {result['mse_start_frame']})")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    result = evaluate(args.run, args.data, args.split, args.sa_steps, args.tasks, args.device)
    if args.json:
        print(json.dumps(result))
    else:
        _print_eval(result)
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    """Generate the small springs5 dataset if absent, train the small preset, evaluate on test."""
    from . import plots
    from .datagen import generate
    from .evaluate import evaluate
    from .train import run

    data = Path(args.data)
    if not (data / "meta.json").exists():
        cfg = C.GenerateConfig(num_train=2000, num_valid=500, num_test=1000, seed=args.seed)
        start = time.perf_counter()
        generate(cfg, data, overwrite=False)
        print(f"generated {data} in {time.perf_counter() - start:.1f} s")
    _cmd_info(argparse.Namespace(dataset=str(data), json=False))
    run_dir = Path(args.runs) / time.strftime("quickstart-%Y%m%d-%H%M%S")
    cfg = C.Config.from_dict(C.merge(C.preset("small"), {"train": {"seed": args.seed}}))
    print(f"training the small preset into {run_dir} ({cfg.train.rounds} rounds, {cfg.cluster.backend} backend, CPU)")
    start = time.perf_counter()
    trained = run(cfg, data, run_dir, report=_print_metrics, progress=False)
    _warn_health(trained.summary)
    plots.training_curves(run_dir / "metrics.jsonl", run_dir / "plots" / "training.png")
    print(f"trained in {time.perf_counter() - start:.0f} s")
    result = evaluate(run_dir, data, "test", sa_steps=args.sa_steps, device="cpu")
    _print_eval(result)
    print(f"run directory: {run_dir} (metrics.jsonl, checkpoint.pt, summary.json, eval_test.json, plots/)")
    return 0


def _experiment_base(args: argparse.Namespace) -> C.Config:
    return F.config_from_args(args, preset_name=args.budget)


def _cmd_table(args: argparse.Namespace) -> int:
    from .experiments import table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result = table(_experiment_base(args), args.data, args.out, methods, sa_steps=args.test_sa_steps, tasks=args.tasks)
    print(result["markdown"])
    return 0


def _cmd_data_efficiency(args: argparse.Namespace) -> int:
    from .experiments import data_efficiency

    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        raise NriRayError(f"--sizes: got {args.sizes!r}, expected comma-separated integers like 100,300,1000") from None
    try:
        seeds = [int(x) for x in args.data_seeds.split(",") if x.strip()]
    except ValueError:
        raise NriRayError(f"--data-seeds: got {args.data_seeds!r}, expected comma-separated integers like 42,1,2") from None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result = data_efficiency(_experiment_base(args), args.sim, sizes, args.out, num_valid=args.num_valid,
                             num_test=args.num_test, seeds=seeds, sa_steps=args.test_sa_steps, tasks=args.tasks,
                             methods=methods)
    for method, rows in result["points"].items():  # mean [min, max] over the data seeds
        print(method, " ".join(f"{p['train_tasks']}:{100 * p['edge_accuracy']:.1f}% "
                               f"[{100 * p['edge_accuracy_min']:.1f}, {100 * p['edge_accuracy_max']:.1f}]" for p in rows))
    for row in result["factors"]:
        factor = "-" if row["factor"] is None else f"{row['factor']:.1f}x"
        print(f"to reach {100 * row['target']:.0f}%: data-efficiency factor {factor} ({row['kind']})")
    return 0


def _cmd_find_node(args: argparse.Namespace) -> int:
    from .experiments import find_node

    result = find_node(args.run, args.data, args.out, hidden=args.hidden, restarts=args.restarts, steps=args.steps,
                       tasks=args.tasks, lr=args.lr, seed=args.seed, structure=args.structure)
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nri-ray", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate, import, export and describe datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)

    gen = dsub.add_parser("generate", help="simulate the NRI springs or charged benchmark")
    F.add_flags(gen, C.GenerateConfig)
    gen.add_argument("--config", help="YAML or JSON file with GenerateConfig fields (flags override it)")
    gen.add_argument("--out", required=True, help="output dataset directory")
    gen.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_cmd_generate)

    own = dsub.add_parser("import", help="your own .npy trajectories [tasks, time, nodes, dims], labels optional",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    own.add_argument("--train", required=True, help="train trajectories, .npy [tasks, time, nodes, dims], raw units")
    own.add_argument("--valid", help="valid trajectories (same frames as train); without it, --valid-fraction of "
                                     "train becomes valid")
    own.add_argument("--test", help="test trajectories (at least as many frames as train); without it, no test split")
    for split in ("train", "valid", "test"):
        own.add_argument(f"--labels-{split}", help=f"relation labels of --{split}, .npy [tasks, edges] (sender-major) "
                                                   f"or [tasks, nodes, nodes], values 0/1; give all or none")
    own.add_argument("--valid-fraction", type=float, default=0.1, help="fraction of train that becomes valid")
    own.add_argument("--seed", type=int, default=0, help="seed of the train/valid split")
    own.add_argument("--normalize", default="auto", choices=("auto", "pos-vel", "per-dim", "global"),
                     help="state dims sharing one min/max: pos-vel = first half (positions) and second half "
                          "(velocities), as NRI; auto = pos-vel for even dims, else per-dim")
    own.add_argument("--out", required=True, help="output dataset directory")
    own.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    own.set_defaults(func=_cmd_import_arrays)

    imp = dsub.add_parser("import-nri", help="read the original NRI .npy files")
    imp.add_argument("src", help="directory holding loc_/vel_/edges_{train,valid,test}_<sim><n>.npy")
    imp.add_argument("--sim", choices=("springs", "charged"), default="springs", help="simulator (file suffix)")
    imp.add_argument("--n-balls", type=int, default=5, help="particles per trajectory (file suffix)")
    imp.add_argument("--out", required=True, help="output dataset directory")
    imp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    imp.set_defaults(func=_cmd_import)

    exp = dsub.add_parser("export-nri", help="write a dataset as the original NRI .npy files")
    exp.add_argument("dataset", help="dataset directory")
    exp.add_argument("--out", required=True, help="output directory for the .npy files")
    exp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    exp.set_defaults(func=_cmd_export)

    info = dsub.add_parser("info", help="counts, shapes, label balance, normalization")
    info.add_argument("dataset", help="dataset directory")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_cmd_info)

    train = sub.add_parser("train", help="BounceGrad meta-training", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--data", help="dataset directory (on --resume: defaults to the run's)")
    train.add_argument("--out", help="run directory to create")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    train.add_argument("--preset", default="small", choices=tuple(C.PRESETS),
                       help="; ".join(f"{k}: {v}" for k, v in C.PRESETS.items()))
    train.add_argument("--config", help="YAML or JSON with sections model/proposal/anneal/train (flags override)")
    train.add_argument("--quiet", action="store_true", help="no progress bar or per-evaluation lines")
    F.add_config_flags(train)
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="meta-test inference with a trained run's frozen modules")
    ev.add_argument("run", help="run directory")
    ev.add_argument("--data", required=True, help="dataset directory (normalized with the run's constants)")
    ev.add_argument("--split", default="test", choices=("train", "valid", "test"))
    ev.add_argument("--sa-steps", type=int, help="SA steps per task (default: 100, as in the quick start)")
    ev.add_argument("--tasks", type=int, default=0, help="evaluate only the first N tasks (0 = all)")
    ev.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=_cmd_evaluate)

    inf = sub.add_parser("infer", help="each task's inferred graph and module probabilities, to Parquet",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    inf.add_argument("run", help="run directory")
    inf.add_argument("--data", help="dataset directory (normalized with the run's constants)")
    inf.add_argument("--split", default="test", choices=("train", "valid", "test"), help="split of --data")
    inf.add_argument("--trajectories", help="instead of --data: a .npy [tasks, time, nodes, dims] in raw units")
    inf.add_argument("--labels", help="held-back labels (.npy, as for data import) to score against; never used "
                                      "for inference")
    inf.add_argument("--sa-steps", type=int, help="SA steps per task (default: 100)")
    inf.add_argument("--tasks", type=int, default=0, help="only the first N tasks (0 = all)")
    inf.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    inf.add_argument("--out", required=True, help="output .parquet: task_id, modules, probabilities, sa_loss")
    inf.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    inf.set_defaults(func=_cmd_infer)

    pre = sub.add_parser("predict", help="roll inferred structures forward past each trajectory's end, to .npy",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pre.add_argument("run", help="run directory")
    pre.add_argument("--trajectories", required=True, help=".npy [tasks, time, nodes, dims] in raw units")
    pre.add_argument("--steps", type=int, required=True, help="frames to predict past the last one")
    pre.add_argument("--sa-steps", type=int, help="SA steps of the structure inference (default: 100)")
    pre.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    pre.add_argument("--out", required=True, help="output .npy [tasks, steps, nodes, dims] in the input's units")
    pre.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    pre.set_defaults(func=_cmd_predict)

    quick = sub.add_parser("quickstart", help="the README's main job on its embedded defaults")
    quick.add_argument("--data", default=str(QUICKSTART_DATA), help="dataset directory (generated if absent)")
    quick.add_argument("--runs", default="runs", help="where the run directory is created")
    quick.add_argument("--seed", type=int, default=42, help="random seed")
    quick.add_argument("--sa-steps", type=int, default=100, help="SA steps per test task at meta-test time")
    quick.set_defaults(func=_cmd_quickstart)
    exp = sub.add_parser("experiment", help="the paper's experiments: tables, data efficiency")
    esub = exp.add_subparsers(dest="experiment_command", required=True)
    tab = esub.add_parser("table", help="Tables 1 (MSE) and 2 (edge accuracy) for every method",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tab.add_argument("--data", required=True, help="dataset directory")
    tab.add_argument("--out", required=True, help="output directory (a method with a result there is not retrained)")
    eff = esub.add_parser("data-efficiency", help="edge accuracy against meta-train tasks (Figure 3)",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    eff.add_argument("--sim", default="springs", choices=("springs", "charged"))
    eff.add_argument("--sizes", default="100,300,1000,3000,10000", help="meta-train task counts")
    eff.add_argument("--num-valid", type=int, default=500, help="valid tasks of the generated dataset")
    eff.add_argument("--num-test", type=int, default=1000, help="test tasks of the generated dataset")
    eff.add_argument("--data-seeds", default="42", help="comma-separated seeds, one generated dataset each "
                                                         "(points are means with min-max bars over them)")
    eff.add_argument("--out", required=True, help="output directory (dataset, runs, JSON, PNG)")
    from .baselines import METHODS

    for p, default in ((tab, ",".join(METHODS)), (eff, "modular,nri-vae")):
        p.add_argument("--methods", default=default, help=f"comma-separated, of {', '.join(METHODS)}")
        p.add_argument("--budget", default="small", choices=tuple(C.PRESETS),
                       help="the preset whose steps, batch and widths every method but the NRI VAE takes (its own "
                            "schedule and widths: --nri-*): " + "; ".join(f"{k}: {v}" for k, v in C.PRESETS.items()))
        p.add_argument("--config", help="YAML or JSON overriding the budget's config (flags override it)")
        p.add_argument("--test-sa-steps", type=int, default=100, help="SA steps per test task (modular)")
        p.add_argument("--tasks", type=int, default=0, help="score the first N test tasks (0 = all)")
        F.add_config_flags(p)
    tab.set_defaults(func=_cmd_table)
    eff.set_defaults(func=_cmd_data_efficiency)
    for entry in entry_points(group="nri_ray.experiments"):  # e.g. `seeds`, from tuning/ (Tune trials)
        entry.load()(esub)

    fn = sub.add_parser("find-node", help="recover a hidden particle from its pull on the others (section 5.2)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fn.add_argument("run", help="run directory (a BounceGrad run, or a true-graph baseline run)")
    fn.add_argument("--data", required=True, help="dataset directory (test split)")
    fn.add_argument("--out", required=True, help="output directory (find_node.json, find_node.png)")
    fn.add_argument("--hidden", type=int, default=0, help="index of the hidden particle")
    fn.add_argument("--restarts", type=int, default=32, help="candidates per task (initial state, hidden edges)")
    fn.add_argument("--steps", type=int, default=100, help="Adam steps on the candidates' initial states")
    fn.add_argument("--tasks", type=int, default=50, help="test tasks (0 = all)")
    fn.add_argument("--lr", type=float, default=0.05, help="Adam learning rate")
    fn.add_argument("--seed", type=int, default=0, help="seed of the random restarts")
    fn.add_argument("--structure", choices=("truth", "infer"),
                    help="edges among visible particles: the ground truth (mapped to the run's module labels) or the "
                         "proposal network's (default: truth for a true-graph run, infer for a BounceGrad run)")
    fn.set_defaults(func=_cmd_find_node)
    for entry in entry_points(group="nri_ray.commands"):  # e.g. `sweep`, from tuning/
        entry.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except NriRayError as e:
        print(f"nri-ray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nri-ray: interrupted; nothing was left half-written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
