"""RayBackend: same results as LocalBackend; shard actors that die are replaced with nothing lost.

One Ray instance serves the whole module (each start and stop costs seconds)."""
import json
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


@pytest.mark.parametrize("model", [{}, {"edge_inputs": "relative", "loss_delta": 0.02}])  # the charged preset's
def test_ray_backend_equals_local_backend_on_unlabeled_3d_data(ray_session, tmp_path, unlabeled_3d, model):
    # Any state dims and no labels through the actors: 6 state dims, no confusion matrices.
    train = {"num_shards": 2, "threads": 1}
    local = C.Config.from_dict(C.merge(TINY, {"train": train, "model": model}))
    run(local, unlabeled_3d, tmp_path / "local", progress=False)
    remote = C.Config.from_dict(C.merge(TINY, {"train": train, "model": model, "cluster": {"backend": "ray"}}))
    run(remote, unlabeled_3d, tmp_path / "ray", progress=False)
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


def test_round_metrics_are_exported(ray_session, tmp_path, tiny_dataset, monkeypatch):
    """All eleven metrics the README lists, with the values of the run's own log and the run's tags."""
    from ray.util import metrics

    recorded = []
    for cls, method in ((metrics.Gauge, "set"), (metrics.Counter, "inc")):
        real = getattr(cls, method)

        def spy(self, value, tags=None, _real=real):
            recorded.append((self._name, float(value), dict(tags or {})))
            return _real(self, value, tags=tags)

        monkeypatch.setattr(cls, method, spy)
    c = C.Config.from_dict(C.merge(TINY, {"train": {"num_shards": 2}, "cluster": {"backend": "ray"}}))
    backend = RayBackend(c, tiny_dataset, 24, "metrics")
    run(c, tiny_dataset, tmp_path / "m", progress=False, backend=backend)
    # The tiny valid split has 9 frames: no 10-step MSE in training; an evaluation row that has one exports it.
    backend.observe_eval({"valid_edge_accuracy": 0.5, "valid_mse": {"1": 1e-3, "10": 2e-3}})
    names = {name for name, _, _ in recorded}
    assert names == {f"nri_ray_{k}" for k in (
        "round", "rounds_total", "rounds_per_second", "train_loss", "accept_rate", "worse_accept_rate", "temperature",
        "valid_edge_accuracy", "valid_mse_1", "valid_mse_10", "shard_round_seconds")}
    assert all(tags["run"] == "nri-ray-metrics" for _, _, tags in recorded)
    assert {tags["shard"] for name, _, tags in recorded if name == "nri_ray_shard_round_seconds"} == {"0", "1"}
    last = lambda name: [v for n, v, _ in recorded if n == name][-1]  # noqa: E731
    rows = [json.loads(x) for x in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert last("nri_ray_round") == c.train.rounds == rows[-1]["round"]
    assert sum(v for n, v, _ in recorded if n == "nri_ray_rounds_total") == c.train.rounds
    assert last("nri_ray_train_loss") == pytest.approx(rows[-1]["grad_loss"])
    assert last("nri_ray_accept_rate") == pytest.approx(rows[-1]["accept_rate"])
    training = lambda name: [v for n, v, _ in recorded if n == name][-2]  # noqa: E731  (before the extra row)
    assert training("nri_ray_valid_edge_accuracy") == pytest.approx(rows[-1]["valid_edge_accuracy"])
    assert training("nri_ray_valid_mse_1") == pytest.approx(rows[-1]["valid_mse"]["1"])
    assert last("nri_ray_temperature") == pytest.approx(rows[-1]["temperature"])
    assert last("nri_ray_valid_mse_10") == 2e-3 and last("nri_ray_valid_edge_accuracy") == 0.5


def test_too_many_actor_failures_end_with_a_clear_error(ray_session, tmp_path, tiny_dataset):
    from nri_ray.distributed import ActorFailures

    c = C.Config.from_dict(C.merge(TINY, {"train": {"num_shards": 2},
                                          "cluster": {"backend": "ray", "max_shard_failures": 0}}))
    backend = KillingBackend(c, tiny_dataset, 24, "too-many")
    with pytest.raises(ActorFailures, match=r"more than cluster.max_shard_failures \(0\); resume from the last"):
        run(c, tiny_dataset, tmp_path / "dies", progress=False, backend=backend)
    assert (tmp_path / "dies" / "checkpoint.pt").exists()  # round 2's checkpoint (every 3 rounds) is kept


def test_resume_on_the_ray_backend_through_the_cli_is_exact(ray_session, tmp_path, tiny_dataset):
    from nri_ray.cli import main

    flags = ["--edge-hidden", "16,16", "--node-hidden", "16", "--proposal-hidden", "16", "--rollout", "4",
             "--meta-batch-size", "8", "--eval-every", "2", "--eval-tasks", "4", "--eval-sa-steps", "1",
             "--checkpoint-every", "2", "--num-shards", "2", "--backend", "ray", "--quiet", "--data", str(tiny_dataset)]
    assert main(["train", "--out", str(tmp_path / "whole"), "--rounds", "6", *flags]) == 0
    assert main(["train", "--out", str(tmp_path / "parts"), "--rounds", "2", *flags]) == 0
    assert main(["train", "--resume", str(tmp_path / "parts"), "--rounds", "6", *flags]) == 0
    whole, parts = final_state(tmp_path / "whole"), final_state(tmp_path / "parts")
    assert parts["round"] == whole["round"] == 5
    assert_same_run(whole, parts, exact_weights=True)


def test_killed_server_with_a_large_state_is_restored(ray_session, tmp_path, tiny_dataset):
    """A state above Ray's inline limit (100 kB) lives in the object store: it survives the server's death."""
    wide = {"model": {"edge_hidden": [128, 128], "node_hidden": [128]}, "train": {"num_shards": 2, "rounds": 4},
            "cluster": {"backend": "ray"}}
    c = C.Config.from_dict(C.merge(TINY, wide))
    run(c, tiny_dataset, tmp_path / "clean", progress=False)
    assert sum(t.numel() * 4 for t in final_state(tmp_path / "clean")["modules"].values()) > 200_000
    backend = ServerKillingBackend(c, tiny_dataset, 24, "server-kill-large")
    run(c, tiny_dataset, tmp_path / "killed", progress=False, backend=backend)
    assert backend.failures == 1
    assert_same_run(final_state(tmp_path / "clean"), final_state(tmp_path / "killed"), exact_weights=True)
