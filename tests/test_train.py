"""ShardWorker, ParameterServer and the round loop: pooling, shard-count independence, exact resume."""
import json

import numpy as np
import pytest
import torch

from nri_ray import config as C
from nri_ray.distributed import LocalBackend, route, shard_ranges
from nri_ray.errors import NriRayError
from nri_ray.server import ParameterServer
from nri_ray.weights import flatten_params, pool_gradients
from nri_ray.shard import ShardWorker
from nri_ray.train import run, sample_batch

TINY = {"model": {"edge_hidden": [16, 16], "node_hidden": [16], "rollout": 4, "init_spread": 0.1},
        "proposal": {"proposal_hidden": 16},
        "anneal": {"schedule": "adaptive", "t0": 1e-3},
        "cluster": {"backend": "local"},
        "train": {"rounds": 6, "meta_batch_size": 10, "lr": 3e-3, "eval_every": 3, "eval_tasks": 8,
                  "eval_sa_steps": 2, "checkpoint_every": 3, "sa_steps": 2, "seed": 5}}


def tiny(**train):
    return C.Config.from_dict(C.merge(TINY, {"train": train}))


def test_shard_ranges_and_routing():
    assert shard_ranges(10, 3) == [(0, 3), (3, 7), (7, 10)]
    parts = route(np.array([9, 0, 4, 3, 7]), shard_ranges(10, 3))
    assert [p.tolist() for p in parts] == [[0], [3, 4], [7, 9]]


def test_batches_are_a_pure_function_of_seed_and_round():
    a = sample_batch(1, 7, 100, 10)
    assert len(set(a.tolist())) == 10 and a.max() < 100
    np.testing.assert_array_equal(a, sample_batch(1, 7, 100, 10))
    assert not np.array_equal(a, sample_batch(1, 8, 100, 10))


def test_report_shapes(tiny_dataset):
    cfg = tiny()
    shard = ShardWorker(0, tiny_dataset, 0, 24, cfg, "cpu")
    server = ParameterServer(cfg, 4, 9)
    report, grads = shard.step(server.weights(), 0, np.arange(0, 24, 3), 1e-3)
    assert report.tasks == 8 and report.proposals == 16 and grads.tasks == 8 and grads.shard_id == 0
    assert grads.modules.shape == flatten_params(server.lib).shape and grads.modules.dtype == np.float32
    assert grads.proposal.shape == flatten_params(server.proposer).shape
    assert report.confusion.shape == (2, 2) and report.confusion.sum() == 8 * 20
    assert report.changed_structures.shape == (len(report.changed_ids), 20)
    assert 0 <= report.worse_accepted <= report.worse <= 16


def test_pooled_gradients_of_three_shards_equal_the_single_process_gradient(tiny_dataset):
    cfg = tiny()
    server = ParameterServer(cfg, 4, 9)
    weights = server.weights()
    one = ShardWorker(0, tiny_dataset, 0, 24, cfg, "cpu")
    three = [ShardWorker(i, tiny_dataset, a, b, cfg, "cpu") for i, (a, b) in enumerate(shard_ranges(24, 3))]
    batch = sample_batch(0, 0, 24, 12)
    whole, whole_grads = one.step(weights, 0, batch, 1e-3)
    parts = [s.step(weights, 0, ids, 1e-3) for s, ids in zip(three, route(batch, shard_ranges(24, 3))) if len(ids)]
    grads = [g for _, g in parts]
    single = pool_gradients([whole_grads.modules], [whole.tasks])
    pooled = pool_gradients([g.modules for g in grads], [g.tasks for g in grads])
    np.testing.assert_allclose(pooled, single, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(pool_gradients([g.proposal for g in grads], [g.tasks for g in grads]),
                               pool_gradients([whole_grads.proposal], [whole.tasks]), rtol=1e-4, atol=1e-7)
    # The same decisions, task by task.
    assert sum(p.accepted for p, _ in parts) == whole.accepted
    structures = np.concatenate([s.get_structures()[1] for s in three])
    np.testing.assert_array_equal(structures, one.get_structures()[1])


def test_one_and_three_shards_give_the_same_run(tmp_path, tiny_dataset):
    a = run(tiny(num_shards=1), tiny_dataset, tmp_path / "a", progress=False)
    b = run(tiny(num_shards=3), tiny_dataset, tmp_path / "b", progress=False)
    sa, sb = (torch.load(tmp_path / x / "checkpoint.pt", weights_only=True) for x in "ab")
    # Decisions are identical; weights differ only by float summation order of the pooled sum.
    torch.testing.assert_close(sa["structures"], sb["structures"], rtol=0, atol=0)
    for name, tensor in sa["modules"].items():
        torch.testing.assert_close(sb["modules"][name], tensor, rtol=1e-4, atol=1e-6)
    assert a.summary["valid_edge_accuracy"] == pytest.approx(b.summary["valid_edge_accuracy"])


@pytest.mark.parametrize("dataset, model", [("tiny_dataset", {}), ("unlabeled_3d", {}),  # 6 state dims, no labels
                                            ("tiny_dataset", {"edge_inputs": "relative", "loss_delta": 0.02})])
def test_resume_is_exact(tmp_path, dataset, model, request):
    data = request.getfixturevalue(dataset)

    def cfg(rounds):
        return C.Config.from_dict(C.merge(tiny(rounds=rounds).to_dict(), {"model": model}))

    run(cfg(6), data, tmp_path / "whole", progress=False)
    run(cfg(4), data, tmp_path / "split", progress=False)  # round 4 is not on the cadence
    run(cfg(6), data, tmp_path / "split", resume=True, progress=False)
    whole, split = (torch.load(tmp_path / x / "checkpoint.pt", weights_only=True) for x in ("whole", "split"))
    assert whole["round"] == split["round"] == 5
    torch.testing.assert_close(split["structures"], whole["structures"], rtol=0, atol=0)
    for part in ("modules", "proposal"):
        for name, tensor in whole[part].items():
            torch.testing.assert_close(split[part][name], tensor, rtol=0, atol=0)
    assert split["temperature"] == whole["temperature"]
    rows = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [3, 4, 6]


def test_run_outputs(tmp_path, tiny_dataset):
    result = run(tiny(), tiny_dataset, tmp_path / "r", progress=False)
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "summary.json"):
        assert (tmp_path / "r" / name).exists(), name
    assert set(result.summary) >= {"final_round", "train_loss", "valid_edge_accuracy", "valid_mse", "wall_seconds",
                                   "health_ratio", "single_module_loss", "separated", "valid_module_share"}
    assert result.summary["health_ratio"] == pytest.approx(result.summary["valid_loss"] / result.summary["single_module_loss"])
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["health_ratio"] > 0 for row in rows)  # every evaluation records it
    assert C.Config.from_dict(C.load_file(tmp_path / "r" / "config.yaml")) == tiny().resolved()


def test_backend_structures_round_trip(tiny_dataset):
    backend = LocalBackend(tiny(num_shards=2), tiny_dataset, 24)
    s = backend.structures()
    assert s.shape == (24, 20) and s.dtype == np.int8
    backend.set_structures(1 - s)
    np.testing.assert_array_equal(backend.structures(), 1 - s)


def test_heldout_variant_takes_the_gradient_on_the_last_frames(tmp_path, tiny_dataset):
    cfg = C.Config.from_dict(C.merge(TINY, {"train": {"grad_split": "heldout", "heldout_frames": 4}}))
    result = run(cfg, tiny_dataset, tmp_path / "v", progress=False)
    state = torch.load(tmp_path / "v" / "checkpoint.pt", weights_only=True)
    assert state["meta"]["in_frames"] == 9 - 4  # the proposal network sees the SA window only
    assert result.summary["train_loss"] > 0


def test_uniform_proposal_variant_trains_no_proposal_network(tmp_path, tiny_dataset):
    cfg = C.Config.from_dict(C.merge(TINY, {"proposal": {"proposal": "uniform"}}))
    run(cfg, tiny_dataset, tmp_path / "v", progress=False)
    state = torch.load(tmp_path / "v" / "checkpoint.pt", weights_only=True)
    initial = ParameterServer(cfg.resolved(), 4, 9).proposer.state_dict()
    for name, tensor in initial.items():  # never stepped
        torch.testing.assert_close(state["proposal"][name], tensor, rtol=0, atol=0)
    rows = [json.loads(x) for x in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["proposal_loss"] == 0 for row in rows)


def test_geometric_schedule_variant_decays_the_temperature(tmp_path, tiny_dataset):
    cfg = C.Config.from_dict(C.merge(TINY, {"anneal": {"schedule": "geometric", "t0": 1e-3, "temp_decay": 0.5}}))
    run(cfg, tiny_dataset, tmp_path / "v", progress=False)
    state = torch.load(tmp_path / "v" / "checkpoint.pt", weights_only=True)
    assert state["temperature"][0] == pytest.approx(1e-3 * 0.5 ** 6)


def test_three_modules_and_the_plateau_schedule_lowers_the_lr(tmp_path, tiny_dataset):
    """eval_every 1 and patience 1: every evaluation that does not improve halves the lr (3e-2 is high enough
    for some evaluations of this tiny run to get worse)."""
    cfg = C.Config.from_dict(C.merge(TINY, {"model": {"edge_modules": 3},
                                            "train": {"plateau_patience": 1, "eval_every": 1, "lr": 3e-2}}))
    run(cfg, tiny_dataset, tmp_path / "v", progress=False)
    state = torch.load(tmp_path / "v" / "checkpoint.pt", weights_only=True)
    assert int(state["structures"].max()) == 2  # the third module is used
    rows = [json.loads(x) for x in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    best, lr = float("inf"), 3e-2
    for row in rows:  # replay the rule on the logged losses
        if row["valid_loss"] < best:
            best = row["valid_loss"]
        else:
            lr = max(cfg.train.min_lr, lr * 0.5)
        assert row["lr"] == pytest.approx(lr)
    assert rows[-1]["lr"] < 3e-2  # at least one cut happened in 6 evaluations


def test_heldout_split_windows():
    from nri_ray.bouncegrad import split_windows

    traj = torch.arange(10.0).view(1, 10, 1, 1)
    sa, grad = split_windows(traj, "heldout", 4)
    assert sa.shape[1] == 6 and grad.shape[1] == 4 and grad[0, 0, 0, 0] == 6
    same_sa, same_grad = split_windows(traj, "same", 4)
    assert same_sa.shape[1] == same_grad.shape[1] == 10


def test_mutated_resume_changes_only_what_pbt_may_change(tmp_path, tiny_dataset):
    run(tiny(rounds=3), tiny_dataset, tmp_path / "r", progress=False)
    mutated = C.Config.from_dict(C.merge(TINY, {"train": {"rounds": 6, "lr": 1e-3}, "proposal": {"epsilon": 0.3}}))
    with pytest.raises(NriRayError, match="train.lr"):  # a plain resume refuses the change
        run(mutated, tiny_dataset, tmp_path / "r", resume=True, progress=False)
    run(mutated, tiny_dataset, tmp_path / "r", resume=True, progress=False, mutate=True)
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["lr"]) for r in rows] == [(3, 3e-3), (6, 1e-3)]  # the optimizer took the new lr
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert state["config"]["proposal"]["epsilon"] == 0.3
    bigger = C.Config.from_dict(C.merge(TINY, {"train": {"rounds": 9}, "model": {"edge_modules": 3}}))
    with pytest.raises(NriRayError, match="model.edge_modules"):  # structure never mutates
        run(bigger, tiny_dataset, tmp_path / "r", resume=True, progress=False, mutate=True)
