#!/usr/bin/env python3
"""A training run on a Ray cluster, from the head node.

    ray submit cluster/aws-gpu.yaml cluster/train.py -- --data DIR --out RUN_DIR [nri-ray train flags]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python cluster/train.py --data ...

`ray submit` ships this one file and runs it with the head's `python`; if that interpreter lacks
nri-ray, the script re-runs itself with the one cluster/*.yaml install it into
(~/nri-ray-venv, or $NRI_RAY_PYTHON). Then tuning/launch.py joins the cluster and adds the flags
the cluster implies (resources, GPUs, shard count) to `nri-ray train`.
"""
import os
import sys


def bootstrap() -> None:
    # The same in cluster/train.py and cluster/sweep.py on purpose: `ray submit` ships one file.
    try:
        import tuning.launch  # noqa: F401
    except ImportError:
        python = os.environ.get("NRI_RAY_PYTHON") or os.path.expanduser("~/nri-ray-venv/bin/python")
        if os.environ.get("NRI_RAY_REEXEC") or not os.path.exists(python):
            sys.exit(f"{sys.argv[0]}: nri-ray is not installed for {sys.executable}, nor at {python} "
                     f"(the setup_commands of cluster/*.yaml install it there)")
        os.environ["NRI_RAY_REEXEC"] = "1"
        os.execv(python, [python, *sys.argv])


if __name__ == "__main__":
    bootstrap()
    from tuning import launch

    sys.exit(launch.main("train", [a for a in sys.argv[1:] if a != "--"]))
