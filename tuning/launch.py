"""What cluster/train.py and cluster/sweep.py do once nri-ray is importable: join the cluster and
fill in the flags a cluster implies, then run the `nri-ray` command.

- `RAY_AUTH_MODE=token` when this node holds a token (cluster/*.yaml copy it to ~/.ray/auth_token);
- `--address auto` unless an address is given (flag or RAY_ADDRESS);
- the parameter server on the node with the `nri_server` resource and shards on nodes with
  `nri_shard`, when the cluster declares them (cluster/*.yaml do);
- one GPU per shard and one shard per GPU when the cluster has GPUs; otherwise one shard per
  CPU, less one for the driver (plain training only; a sweep sizes its trials with
  --shards-per-trial).
Flags given explicitly always win.
"""
from __future__ import annotations

import os
from pathlib import Path


def _given(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _value(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def cluster_flags(command: str, argv: list[str], nodes: list[dict]) -> list[str]:
    """The flags to add for a cluster whose alive nodes have these resources (pure: unit-testable)."""
    total = lambda key, among: sum(n.get(key, 0) for n in among)  # noqa: E731
    extra = []
    if total("nri_server", nodes) and not _given(argv, "--server-resource"):
        extra += ["--server-resource", "nri_server"]
    dedicated = [n for n in nodes if n.get("nri_shard")]  # nodes for shards only
    if dedicated and not _given(argv, "--shard-resource"):
        extra += ["--shard-resource", "nri_shard"]
    shard_nodes = dedicated or nodes
    gpus = int(total("GPU", shard_nodes))
    if gpus and not _given(argv, "--gpus-per-shard"):
        extra += ["--gpus-per-shard", "1"]
    if command == "train" and not _given(argv, "--num-shards"):
        cpus = int(total("CPU", shard_nodes)) - (0 if dedicated else 1)  # one CPU for the driver
        extra += ["--num-shards", str(gpus or max(1, cpus))]
    return extra


def main(command: str, argv: list[str]) -> int:
    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    from nri_ray import cli

    address = _value(argv, "--address") or os.environ.get("RAY_ADDRESS") or "auto"
    ray.init(address=address)
    extra = cluster_flags(command, argv, [n["Resources"] for n in ray.nodes() if n["Alive"]])
    print(f"nri-ray on the Ray cluster at {address} ({len(ray.nodes())} node(s)); added flags: "
          f"{' '.join(extra) or 'none'}", flush=True)
    return cli.main([command, *argv, *extra])
