"""cluster/*.yaml pass Ray's own cluster-config validation; the entry scripts' cluster defaults."""
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray.autoscaler")

from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

from tuning.launch import cluster_flags  # noqa: E402

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
YAMLS = sorted(CLUSTER.glob("*.yaml"))


def test_there_are_the_three_launcher_configs():
    assert {p.name for p in YAMLS} >= {"local.yaml", "aws-gpu.yaml", "gcp-gpu.yaml"}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_cluster_yaml_validates_and_installs_nri_ray(path):
    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))  # raises jsonschema.ValidationError on any schema violation
    assert any("pip install" in c and "~/nri-ray" in c for c in config["setup_commands"])
    assert config["file_mounts"]["~/nri-ray"] == "."
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in start and "--dashboard-host=127.0.0.1" in start
    # Named resources: the parameter server's on the head, the shards' on the workers.
    types = config.get("available_node_types")
    if types:
        head = types[config["head_node_type"]]["resources"]
        workers = [t["resources"] for name, t in types.items() if name != config["head_node_type"]]
        assert "nri_server" in head and all("nri_shard" in w for w in workers)
    else:
        assert "nri_server" in " ".join(config["head_start_ray_commands"])
        assert "nri_shard" in " ".join(config["worker_start_ray_commands"])


def test_validation_rejects_a_broken_yaml():
    config = yaml.safe_load((CLUSTER / "local.yaml").read_text())
    config["auth"]["ssh_port"] = 2222  # not a field Ray knows
    with pytest.raises(Exception, match="ssh_port"):
        validate_config(prepare_config(config))


def test_cluster_flags():
    head = {"CPU": 8, "nri_server": 1}
    gpu_worker = {"CPU": 4, "GPU": 1, "nri_shard": 1}
    assert cluster_flags("train", [], [head, gpu_worker, gpu_worker]) == [
        "--server-resource", "nri_server", "--shard-resource", "nri_shard", "--gpus-per-shard", "1", "--num-shards", "2"]
    # Explicit flags win; a sweep never gets --num-shards (its trials are sized by --shards-per-trial).
    assert cluster_flags("sweep", ["--gpus-per-shard=0.5"], [head, gpu_worker]) == [
        "--server-resource", "nri_server", "--shard-resource", "nri_shard"]
    # A plain CPU cluster: shards everywhere, one CPU kept for the driver.
    assert cluster_flags("train", [], [{"CPU": 2}, {"CPU": 2}]) == ["--num-shards", "3"]
