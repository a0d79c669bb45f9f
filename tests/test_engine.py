"""engine.py (hand-written rollout backward) against autograd through gnn.py, in float64."""
import numpy as np
import pytest
import torch

from nri_ray import bouncegrad
from nri_ray import config as C
from nri_ray.bouncegrad import split_windows
from nri_ray.engine import Tape, Workspace
from nri_ray.gnn import active_anchors
from nri_ray.engine import losses as engine_losses
from nri_ray.gnn import anchored_losses
from nri_ray.modules import ModuleLibrary
from nri_ray.server import ParameterServer
from nri_ray.shard import ShardWorker
from nri_ray.train import sample_batch


def autograd_grads(lib, traj, structures, rollout):
    lib.zero_grad(set_to_none=True)
    anchored_losses(lib, traj, structures, rollout).sum().backward()
    grads = [p.grad.clone() for p in lib.parameters()]
    lib.zero_grad(set_to_none=True)
    return grads


def test_live_anchors_stop_at_the_last_frame():
    assert active_anchors(49, 10) == ((0, 10, 20, 30, 40), (5,) * 8 + (4, 4))
    assert active_anchors(21, 10) == ((0, 10), (2,) * 10)
    assert active_anchors(9, 10) == ((0,), (1,) * 8 + (0, 0))


@pytest.mark.parametrize("modules,frames,rollout,edge_final,nodes,dims,edge_inputs,loss_delta", [
    (2, 49, 10, "relu", 5, 4, "absolute", 0), (3, 21, 10, "relu", 4, 4, "absolute", 0),
    (4, 9, 10, "none", 5, 4, "absolute", 0), (2, 13, 3, "relu", 3, 4, "absolute", 0),
    (2, 13, 4, "relu", 5, 6, "absolute", 0), (3, 11, 3, "relu", 4, 1, "absolute", 0),
    (2, 49, 10, "relu", 5, 4, "relative", 0), (3, 13, 4, "none", 4, 6, "relative", 0),
    (2, 11, 3, "relu", 4, 1, "relative", 0), (2, 11, 3, "relu", 4, 3, "relative", 0),
    (2, 21, 10, "relu", 5, 4, "absolute", 0.5), (3, 13, 4, "relu", 4, 4, "relative", 0.5)])
# 3-D particles (6 state dims); one and three (odd: all positions) dims; the Huber loss (errors here ~1)
def test_recorded_losses_and_kept_rows_gradient_equal_autograd(modules, frames, rollout, edge_final, nodes, dims,
                                                               edge_inputs, loss_delta):
    g = torch.Generator().manual_seed(modules * 100 + frames)
    lib = ModuleLibrary(modules, dims, [24, 24, 16], [24, 24], seed=1, edge_final=edge_final, init_spread=0.5,
                        edge_inputs=edge_inputs, loss_delta=loss_delta).double()
    tasks, edges = 5, nodes * (nodes - 1)
    traj = torch.randn(tasks, frames, nodes, dims, generator=g, dtype=torch.float64)
    current, first, second = (torch.randint(0, modules, (tasks, edges), generator=g) for _ in range(3))
    tape = Tape(lib, nodes, frames, rollout, Workspace(torch.device("cpu"), torch.float64))
    tape.reset(3 * tasks)
    rows = torch.arange(tasks)
    both = tape.record(traj, torch.cat([current, first]), torch.cat([rows, rows]))
    later = tape.record(traj, second, rows)
    torch.testing.assert_close(both, anchored_losses(lib, torch.cat([traj, traj]), torch.cat([current, first]), rollout),
                               rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(later, anchored_losses(lib, traj, second, rollout), rtol=1e-12, atol=1e-14)
    if loss_delta:  # the Huber loss is in use: below the squared error wherever errors exceed delta
        squared = ModuleLibrary(modules, dims, [24, 24, 16], [24, 24], seed=1, edge_final=edge_final, init_spread=0.5,
                                edge_inputs=edge_inputs).double()
        assert (later < 0.9 * anchored_losses(squared, traj, second, rollout)).all()
    # Keep a mix: task 0 current, 1 first proposal, 2 second proposal, 3 first, 4 current.
    source_eval = torch.tensor([0, 0, 1, 0, 1])
    source_row = torch.tensor([0, tasks + 1, 2, tasks + 3, 4])
    kept = torch.stack([current[0], first[1], second[2], first[3], second[4]])
    lib.zero_grad(set_to_none=True)
    tape.backward(traj, kept, source_eval, source_row)
    engine = [p.grad.clone() for p in lib.parameters()]
    for (name, _), got, want in zip(lib.named_parameters(), engine, autograd_grads(lib, traj, kept, rollout)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)


def test_a_reused_workspace_gives_the_same_results():
    g = torch.Generator().manual_seed(7)
    lib = ModuleLibrary(3, 4, [16, 16], [16], seed=2).double()
    ws = Workspace(torch.device("cpu"), torch.float64)
    tape = Tape(lib, 5, 21, 10, ws)
    traj = torch.randn(6, 21, 5, 4, generator=g, dtype=torch.float64)
    structures = torch.randint(0, 3, (6, 20), generator=g)

    def grads(tasks):
        lib.zero_grad(set_to_none=True)
        tape.reset(tasks)
        loss = tape.record(traj[:tasks], structures[:tasks], torch.arange(tasks))
        tape.backward(traj[:tasks], structures[:tasks], torch.zeros(tasks, dtype=torch.long), torch.arange(tasks))
        return loss, [p.grad.clone() for p in lib.parameters()]

    first = grads(6)
    grads(2)  # smaller, then larger again: stale rows must not leak into the result
    again = grads(6)
    torch.testing.assert_close(again[0], first[0], rtol=0, atol=0)
    for a, b in zip(again[1], first[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def small(**train):
    """The small preset's search rounds, narrower: no warm-up, drawn proposals (tests opt into the others)."""
    return C.Config.from_dict(C.merge(C.preset("small"), {
        "model": {"edge_hidden": [32, 32], "node_hidden": [32]}, "proposal": {"proposal_hidden": 16, "block_search": False},
        "train": {"meta_batch_size": 10, "sa_steps": 2, "warmup_rounds": 0, **train}}))


@pytest.mark.parametrize("grad_split, block_search, edge_inputs", [
    ("same", False, "absolute"), ("heldout", False, "absolute"), ("same", True, "absolute"), ("same", True, "relative")])
def test_shard_round_gradient_equals_autograd_on_the_kept_structures(tiny_dataset, grad_split, block_search,
                                                                    edge_inputs):
    """The whole round (2 SA steps, chunks of 3 tasks) against autograd on the structures it kept."""
    cfg = small(chunk_tasks=3, grad_split=grad_split, heldout_frames=4)
    cfg = C.Config.from_dict(C.merge(cfg.to_dict(), {"proposal": {"block_search": block_search},
                                                     "model": {"edge_inputs": edge_inputs}}))
    shard = ShardWorker(0, tiny_dataset, 0, 24, cfg, "cpu")
    server = ParameterServer(cfg, 4, shard.trajectories.shape[1] - (4 if grad_split == "heldout" else 0))
    ids = sample_batch(0, 0, 24, 10)
    report, grads = shard.step(server.weights(), 0, ids, 1e-3)
    kept = torch.as_tensor(shard.get_structures()[1][ids]).long()
    _, grad_traj = split_windows(shard.trajectories[torch.as_tensor(ids)], grad_split, 4)
    want = torch.cat([g.reshape(-1) for g in autograd_grads(shard.lib, grad_traj, kept, cfg.model.rollout)])
    np.testing.assert_allclose(grads.modules, want.numpy(), rtol=1e-4, atol=1e-6)
    loss = anchored_losses(shard.lib, grad_traj, kept, cfg.model.rollout).sum()
    assert report.grad_loss_sum == pytest.approx(float(loss.detach()), rel=1e-5)


@pytest.mark.parametrize("grad_split", ["same", "heldout"])
def test_a_warmup_round_takes_the_full_graph_gradient_and_keeps_the_structures(tiny_dataset, grad_split):
    cfg = small(chunk_tasks=3, grad_split=grad_split, heldout_frames=4, warmup_rounds=2)
    shard = ShardWorker(0, tiny_dataset, 0, 24, cfg, "cpu")
    server = ParameterServer(cfg, 4, shard.trajectories.shape[1] - (4 if grad_split == "heldout" else 0))
    before = shard.get_structures()[1].copy()
    ids = sample_batch(0, 1, 24, 10)
    report, grads = shard.step(server.weights(), 1, ids, 1e-3)  # round 1 < 2: warm-up
    np.testing.assert_array_equal(shard.get_structures()[1], before)
    assert report.proposals == 0 and len(report.changed_ids) == 0 and not grads.proposal.any()
    _, grad_traj = split_windows(shard.trajectories[torch.as_tensor(ids)], grad_split, 4)
    full = torch.zeros(len(ids), 20, dtype=torch.long)  # module 0 on every edge
    want = torch.cat([g.reshape(-1) for g in autograd_grads(shard.lib, grad_traj, full, cfg.model.rollout)])
    np.testing.assert_allclose(grads.modules, want.numpy(), rtol=1e-4, atol=1e-6)
    assert report.proposals == 0 and shard.step(server.weights(), 2, ids, 1e-3)[0].proposals == 20  # round 2 searches


def test_chunk_size_changes_only_float_summation_order(tiny_dataset):
    ids = sample_batch(0, 0, 24, 10)
    reports, gradients, kept = [], [], []
    for chunk in (0, 4, 1):
        cfg = small(chunk_tasks=chunk)
        shard = ShardWorker(0, tiny_dataset, 0, 24, cfg, "cpu")
        report, grads = shard.step(ParameterServer(cfg, 4, 9).weights(), 0, ids, 1e-3)
        reports.append(report)
        gradients.append(grads)
        kept.append(shard.get_structures()[1])
    for report, grads, structures in zip(reports[1:], gradients[1:], kept[1:]):
        np.testing.assert_array_equal(structures, kept[0])
        assert (report.accepted, report.worse, report.worse_accepted) == (
            reports[0].accepted, reports[0].worse, reports[0].worse_accepted)
        np.testing.assert_allclose(grads.modules, gradients[0].modules, rtol=1e-4, atol=1e-6)


def test_losses_without_a_tape_equal_autograd_losses_and_refuse_backward():
    g = torch.Generator().manual_seed(3)
    lib = ModuleLibrary(2, 4, [16, 16], [16], seed=4).double()
    traj = torch.randn(7, 49, 5, 4, generator=g, dtype=torch.float64)
    structures = torch.randint(0, 2, (7, 20), generator=g)
    ws = Workspace(torch.device("cpu"), torch.float64)
    got = engine_losses(lib, traj, structures, 10, ws)
    torch.testing.assert_close(got, anchored_losses(lib, traj, structures, 10), rtol=1e-12, atol=1e-14)
    tape = Tape(lib, 5, 49, 10, ws)
    tape.reset(7, keep=False)
    tape.record(traj, structures, torch.arange(7))
    with pytest.raises(RuntimeError, match="keep=True"):
        tape.backward(traj, structures, torch.zeros(7, dtype=torch.long), torch.arange(7))


def test_proposals_equal_to_the_current_structure_are_not_rolled_out(tiny_dataset, monkeypatch):
    """No-op proposals take the current loss (and are accepted); a step of only no-ops records nothing."""
    cfg = small(chunk_tasks=4)
    shard = ShardWorker(0, tiny_dataset, 0, 24, cfg, "cpu")
    propose = bouncegrad.propose

    def some_noops(lib, probs, current, window, ids, round_idx, step, cfg):
        proposed = propose(lib, probs, current, window, ids, round_idx, step, cfg)
        keep = (ids % 3 == 0) if step == 0 else torch.ones_like(ids, dtype=torch.bool)  # step 1: all no-ops
        return torch.where(keep.unsqueeze(1), current, proposed)

    monkeypatch.setattr(bouncegrad, "propose", some_noops)
    recorded = []
    record = shard.tapes.sa.record
    monkeypatch.setattr(shard.tapes.sa, "record", lambda traj, s, rows: recorded.append(len(s)) or record(traj, s, rows))
    ids = sample_batch(0, 0, 24, 10)
    report, grads = shard.step(ParameterServer(cfg, 4, 9).weights(), 0, ids, 1e-3)
    noops = int((torch.as_tensor(ids) % 3 == 0).sum())
    chunks = [len(ids[a:a + 4]) for a in range(0, len(ids), 4)]
    assert sum(recorded) == 2 * len(ids) - noops and len(recorded) == len(chunks)  # step 1 recorded nothing
    assert report.accepted >= noops + len(ids)  # every no-op is accepted
    kept = torch.as_tensor(shard.get_structures()[1][ids]).long()
    want = torch.cat([g.reshape(-1) for g in autograd_grads(shard.lib, shard.trajectories[torch.as_tensor(ids)], kept,
                                                             cfg.model.rollout)])
    np.testing.assert_allclose(grads.modules, want.numpy(), rtol=1e-4, atol=1e-6)


def test_meta_test_inference_equals_rolling_out_every_proposal():
    """infer_structures (engine forward, no-op proposals skipped) = SA that rolls out every proposal with gnn.py."""
    from nri_ray import rng
    from nri_ray.annealing import anneal_step
    from nri_ray.infer import infer_structures
    from nri_ray.proposal import ProposalNet, propose_learned

    g = torch.Generator().manual_seed(11)
    lib = ModuleLibrary(2, 4, [32, 32], [32], seed=5, init_spread=0.3)
    proposer = ProposalNet(9, 4, 16, 2, seed=6)
    traj = torch.randn(12, 9, 5, 4, generator=g)
    ids = torch.arange(100, 112)
    got = infer_structures(lib, proposer, traj, ids, sa_frames=9, rollout_steps=4, steps=6, epsilon=0.1,
                           temperature=1e-3, seed=7, batch_size=5)
    with torch.no_grad():  # the reference: every proposal rolled out, all tasks in one batch
        probs = torch.softmax(proposer(traj), dim=-1)
        current = probs.argmax(dim=-1)
        loss = anchored_losses(lib, traj, current, 4)
        for step in range(6):
            proposed = propose_learned(probs, current, 0.1, rng.uniform(7, ids, step, rng.INFER_NODE, 1)[:, 0],
                                       rng.uniform(7, ids, step, rng.INFER_EDGES, 20))
            sa = anneal_step(current, loss, proposed, anchored_losses(lib, traj, proposed, 4), 1e-3,
                             rng.uniform(7, ids, step, rng.INFER_ACCEPT, 1)[:, 0])
            current, loss = sa.structures, sa.losses
    torch.testing.assert_close(got.structures, current, rtol=0, atol=0)
    torch.testing.assert_close(got.losses, loss, rtol=1e-5, atol=1e-7)
