"""Losing a whole node: its shard actor is replaced on another node and nothing is lost.

Uses `ray.cluster_utils.Cluster` (several raylets in one machine) so that a node can be removed
in the middle of a run, which a real single machine cannot show otherwise."""
import pytest
import torch

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402

from nri_ray import config as C  # noqa: E402
from nri_ray.distributed import RayBackend  # noqa: E402
from nri_ray.train import run  # noqa: E402

from test_train import TINY  # noqa: E402


@pytest.fixture(scope="module")
def three_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=2) for _ in range(3)]
    ray.init(address=cluster.address, namespace="nri-ray-node-loss", log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster, nodes
    ray.shutdown()
    cluster.shutdown()


class NodeLosingBackend(RayBackend):
    """Removes the node that hosts shard 1 just before round 3."""

    cluster = None

    def step_all(self, weights, round_idx, batch_ids, temperature, mirror=None):
        if round_idx == 3 and not getattr(self, "lost", False):
            self.lost = True
            node_id = self.placement()[1]
            victim = next(n for n in self.cluster.list_all_nodes() if n.node_id == node_id)
            self.cluster.remove_node(victim)
        return super().step_all(weights, round_idx, batch_ids, temperature, mirror)


def test_lost_node_loses_nothing(three_nodes, tmp_path, tiny_dataset):
    cluster, _ = three_nodes
    c = C.Config.from_dict(C.merge(TINY, {"train": {"num_shards": 2, "threads": 1},
                                          "cluster": {"backend": "ray", "cpus_per_shard": 2}}))
    run(c, tiny_dataset, tmp_path / "clean", progress=False)
    backend = NodeLosingBackend(c, tiny_dataset, 24, "node-loss")
    backend.cluster = cluster
    nodes_before = backend.placement()
    assert len(set(nodes_before)) == 2  # one shard per node
    run(c, tiny_dataset, tmp_path / "lost", progress=False, backend=backend)
    assert backend.failures >= 1
    clean = torch.load(tmp_path / "clean" / "checkpoint.pt", weights_only=True)
    lost = torch.load(tmp_path / "lost" / "checkpoint.pt", weights_only=True)
    torch.testing.assert_close(lost["structures"], clean["structures"], rtol=0, atol=0)
    for name, tensor in clean["modules"].items():
        torch.testing.assert_close(lost["modules"][name], tensor, rtol=0, atol=0)
