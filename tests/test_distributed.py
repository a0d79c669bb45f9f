"""RayBackend: same results as LocalBackend; shard actors that die are replaced with nothing lost.

One Ray instance serves the whole module (each start and stop costs seconds)."""
import os
import signal

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from nri_ray import config as C  # noqa: E402
from nri_ray.distributed import RayBackend, shard_ranges  # noqa: E402
from nri_ray.train import run  # noqa: E402

from test_train import TINY  # noqa: E402


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=4, include_dashboard=False, namespace="nri-ray-tests", log_to_driver=False)
    yield
    ray.shutdown()


def final_state(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def assert_same_run(a, b, exact_weights):
    torch.testing.assert_close(a["structures"], b["structures"], rtol=0, atol=0)
    for name, tensor in a["modules"].items():
        tol = dict(rtol=0, atol=0) if exact_weights else dict(rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b["modules"][name], tensor, **tol)


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_ray_backend_equals_local_backend(ray_session, tmp_path, tiny_dataset, shards):
    # One intra-op thread on both sides: a matmul's float summation order depends on the thread
    # count, and Ray gives a 1-CPU actor one thread. With it pinned, results are bitwise equal.
    train = {"num_shards": shards, "threads": 1}
    local = C.Config.from_dict(C.merge(TINY, {"train": train}))
    run(local, tiny_dataset, tmp_path / "local", progress=False)
    remote = C.Config.from_dict(C.merge(TINY, {"train": train, "cluster": {"backend": "ray"}}))
    run(remote, tiny_dataset, tmp_path / "ray", progress=False)
    assert_same_run(final_state(tmp_path / "local"), final_state(tmp_path / "ray"), exact_weights=True)


def test_shard_count_changes_only_float_summation_order(ray_session, tmp_path, tiny_dataset):
    for shards in (1, 3):
        c = C.Config.from_dict(C.merge(TINY, {"train": {"num_shards": shards}, "cluster": {"backend": "ray"}}))
        run(c, tiny_dataset, tmp_path / str(shards), progress=False)
    assert_same_run(final_state(tmp_path / "1"), final_state(tmp_path / "3"), exact_weights=False)


class KillingBackend(RayBackend):
    """Kills shard 1 while its round 3 is in flight, by `ray.kill` or a SIGKILL to its process."""

    how = "ray.kill"

    def step_all(self, weights, round_idx, batch_ids, temperature, mirror=None):
        if round_idx == 3 and not getattr(self, "killed", False):
            self.killed = True
            victim = self.shards[1]
            if self.how == "ray.kill":
                ray.kill(victim, no_restart=True)
            else:
                pid = ray.get(victim.__ray_call__.remote(lambda self: os.getpid()))
                os.kill(pid, signal.SIGKILL)
        return super().step_all(weights, round_idx, batch_ids, temperature, mirror)


@pytest.mark.parametrize("how", ["ray.kill", "SIGKILL"])
def test_killed_shard_is_replaced_and_nothing_is_lost(ray_session, tmp_path, tiny_dataset, how):
    c = C.Config.from_dict(C.merge(TINY, {"train": {"num_shards": 2}, "cluster": {"backend": "ray"}}))
    run(c, tiny_dataset, tmp_path / "clean", progress=False)
    backend = KillingBackend(c, tiny_dataset, 24, "kill-test")
    backend.how = how
    run(c, tiny_dataset, tmp_path / "killed", progress=False, backend=backend)
    assert backend.failures == 1
    assert_same_run(final_state(tmp_path / "clean"), final_state(tmp_path / "killed"), exact_weights=True)


def test_shards_are_named_and_read_their_own_rows(ray_session, tiny_dataset):
    c = C.Config.from_dict(C.merge(TINY, {"train": {"num_shards": 3}, "cluster": {"backend": "ray"}}))
    backend = RayBackend(c, tiny_dataset, 24, "names")
    try:
        for i, (a, b) in enumerate(shard_ranges(24, 3)):
            actor = ray.get_actor(f"nri-shard-{i}", namespace="nri-ray-names")
            ids, structures = ray.get(actor.get_structures.remote())
            np.testing.assert_array_equal(ids, np.arange(a, b))
            assert structures.shape == (b - a, 20)
    finally:
        backend.close()


class ServerKillingBackend(RayBackend):
    """Kills the parameter-server actor between the shards' round 2 and the server's apply."""

    def step_all(self, weights, round_idx, batch_ids, temperature, mirror=None):
        reports = super().step_all(weights, round_idx, batch_ids, temperature, mirror)
        if round_idx == 2 and not getattr(self, "killed", False):
            self.killed = True
            ray.kill(self.server.actor, no_restart=True)
        return reports


def test_killed_parameter_server_is_restored_and_nothing_is_lost(ray_session, tmp_path, tiny_dataset):
    c = C.Config.from_dict(C.merge(TINY, {"train": {"num_shards": 2}, "cluster": {"backend": "ray"}}))
    run(c, tiny_dataset, tmp_path / "clean", progress=False)
    backend = ServerKillingBackend(c, tiny_dataset, 24, "server-kill")
    run(c, tiny_dataset, tmp_path / "killed", progress=False, backend=backend)
    assert backend.failures == 1
    clean, killed = final_state(tmp_path / "clean"), final_state(tmp_path / "killed")
    assert_same_run(clean, killed, exact_weights=True)
    for name, tensor in clean["opt_modules"]["state"][0].items():
        torch.testing.assert_close(killed["opt_modules"]["state"][0][name], tensor, rtol=0, atol=0)


def test_round_metrics_are_exported(ray_session, tmp_path, tiny_dataset):
    c = C.Config.from_dict(C.merge(TINY, {"train": {"num_shards": 2}, "cluster": {"backend": "ray"}}))
    backend = RayBackend(c, tiny_dataset, 24, "metrics")
    run(c, tiny_dataset, tmp_path / "m", progress=False, backend=backend)
    assert set(backend._gauges) >= {"round", "train_loss", "accept_rate", "worse_accept_rate", "temperature",
                                    "valid_edge_accuracy", "rounds_per_second"}
