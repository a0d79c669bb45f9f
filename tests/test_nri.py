"""The NRI VAE baseline as the original builds and trains it: finite Gumbel noise, BatchNorm
encoder, skip-first, its own schedule with the best-validation checkpoint, and that it learns."""
import json

import numpy as np
import pytest
import torch

from nri_ray import baselines as B
from nri_ray import config as C
from nri_ray.errors import NriRayError
from nri_ray.proposal import ProposalNet


def test_gumbel_noise_is_finite_at_both_ends_of_the_uniform():
    below_one_64 = np.nextafter(1.0, 0.0)
    below_one_32 = float(np.nextafter(np.float32(1.0), np.float32(0.0)))
    u = torch.tensor([0.0, below_one_64, below_one_32, 0.5], dtype=torch.float64)
    g = B.gumbel_noise(u)
    assert torch.isfinite(g).all()
    assert g[3] == pytest.approx(-np.log(-np.log(0.5)))  # the exact transform in the middle
    assert g[1] > g[2] > g[3] > g[0]  # monotone in u
    # The old float32 cast: the largest float64 below 1 rounded to 1 and gave an infinite sample.
    assert float(torch.tensor(below_one_64, dtype=torch.float64).to(torch.float32)) == 1.0
    logits = torch.zeros(1, 1, 2)
    samples = torch.softmax((logits + g[:2].view(1, 1, 2).float()) / 0.5, dim=-1)
    assert torch.isfinite(samples).all()


def test_batchnorm_encoder_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
    g = torch.Generator().manual_seed(0)
    net = ProposalNet(6, 4, 16, 2, seed=1, norm="batch")
    a, b = torch.randn(3, 6, 5, 4, generator=g), torch.randn(3, 6, 5, 4, generator=g)
    net.train()
    with torch.no_grad():
        alone = net(a)
        together = net(torch.cat([a, b]))[:3]
    assert not torch.allclose(alone, together)  # batch statistics: a task's output depends on its batch
    running = net.mlp1.norm.running_mean.clone()
    assert not torch.equal(running, torch.zeros_like(running))  # training updated the running statistics
    net.eval()
    with torch.no_grad():
        alone, together = net(a), net(torch.cat([a, b]))[:3]
    torch.testing.assert_close(alone, together)  # running statistics: per task
    assert torch.equal(net.mlp1.norm.running_mean, running)  # evaluation leaves them alone
    layer = ProposalNet(6, 4, 16, 2, seed=1)  # SA's proposal network: per task in both modes
    with torch.no_grad():
        torch.testing.assert_close(layer(a), layer(torch.cat([a, b]))[:3])


def test_nri_widths_default_to_the_originals_256_and_follow_the_model_at_zero():
    small = C.preset("small")
    cfg = B.model_config(small, "nri-vae", B.Budget(1, 32, 0), seed=0)
    assert (cfg.model.edge_hidden, cfg.model.node_hidden, cfg.proposal.proposal_hidden) == ((256, 256), (256, 256), 256)
    assert cfg.train.lr == 5e-4
    assert (cfg.model.edge_inputs, cfg.model.loss_delta) == ("absolute", 0.0)  # the original decoder, any preset
    lib, _ = B.build_models(cfg, 4, 49, norm="batch")
    # the original's decoder: msg_fc1 8 -> 256, msg_fc2 256 -> 256; out_fc1 260 -> 256, out_fc2, out_fc3 256 -> 4
    assert [tuple(w.shape[1:]) for w in lib.edges.weights] == [(8, 256), (256, 256)]
    assert [tuple(w.shape) for w in lib.node.weights] == [(260, 256), (256, 256), (256, 4)]
    same = B.model_config(C.merge(small, {"nri": {"nri_hidden": 0}}), "nri-vae", B.Budget(1, 32, 0), seed=0)
    assert (same.model.edge_hidden, same.model.node_hidden, same.proposal.proposal_hidden) == ((64, 64), (64, 64), 64)
    assert B.model_config(small, "true-graph", B.Budget(1, 32, 0), seed=0).model.edge_hidden == (64, 64)


def test_skip_first_silences_edge_type_zero():
    z = torch.tensor([[[0.3, 0.7], [1.0, 0.0]]])
    torch.testing.assert_close(B._skip_first(z, True), torch.tensor([[[0.0, 0.7], [0.0, 0.0]]]))
    assert B._skip_first(z, False) is z


@pytest.fixture(scope="module")
def two_particles(tmp_path_factory):
    """Two particles joined by a spring in about half of the tasks: one edge to learn."""
    from nri_ray.datagen import generate

    out = tmp_path_factory.mktemp("two") / "springs2"
    generate(C.GenerateConfig(n_balls=2, num_train=400, num_valid=100, num_test=100, seed=3), out, progress=False)
    return out


def test_a_tiny_nri_run_learns_the_spring_and_keeps_its_best_validation_epoch(tmp_path, two_particles):
    # With --skip-first (an option of the original) edge type 0 is "no interaction", which lets the
    # VAE learn this one-edge system in 1000-1500 steps; without it, it stays near chance for
    # 4000 steps here (the decoder learns both types alike first: NRI's slow start).
    base = C.merge(C.preset("small"), {"model": {"edge_hidden": [32, 32], "node_hidden": [32]},
                                       "proposal": {"proposal_hidden": 32}, "train": {"threads": 2},
                                       "nri": {"nri_hidden": 0, "nri_epochs": 60, "nri_batch_size": 16, "nri_lr": 5e-3,
                                               "nri_lr_decay": 50, "nri_skip_first": True}})
    cfg = B.model_config(base, "nri-vae", B.Budget(1, 32, 0), seed=0)
    assert cfg.model.init_spread == 1.0 and cfg.nri.nri_norm == "batch"
    run_dir = B.train_baseline("nri-vae", cfg, two_particles, tmp_path / "nri")
    curve = json.loads((run_dir / "nri_curve.json").read_text())
    assert [r["epoch"] for r in curve] == list(range(1, 61))
    assert [r["lr"] for r in curve[49:51]] == [5e-3, 2.5e-3]  # StepLR after 50 epochs
    best = min(curve, key=lambda r: r["valid_nll"])
    assert [r["epoch"] for r in curve if r["best"]] == [best["epoch"]]
    result = B.evaluate_baseline("nri-vae", run_dir, two_particles)
    assert result["edge_accuracy"] >= 0.75, (result, curve[-1])  # chance is 0.5


def test_max_seconds_stops_after_the_epoch_that_passes_it(tmp_path, two_particles):
    base = C.merge(C.preset("small"), {"model": {"edge_hidden": [8], "node_hidden": [8]},
                                       "proposal": {"proposal_hidden": 8}, "train": {"threads": 1},
                                       "nri": {"nri_hidden": 0, "nri_epochs": 500, "nri_max_seconds": 1e-9}})
    cfg = B.model_config(base, "nri-vae", B.Budget(1, 32, 0), seed=0)
    run_dir = B.train_baseline("nri-vae", cfg, two_particles, tmp_path / "nri")
    assert len(json.loads((run_dir / "nri_curve.json").read_text())) == 1


def _tiny_nri(epochs: int, **nri) -> C.Config:
    base = C.merge(C.preset("small"), {"model": {"edge_hidden": [8], "node_hidden": [8]},
                                       "proposal": {"proposal_hidden": 8}, "train": {"threads": 1},
                                       "nri": {"nri_hidden": 0, "nri_epochs": epochs, "nri_batch_size": 64,
                                               "nri_lr_decay": 2, **nri}})
    return B.model_config(base, "nri-vae", B.Budget(1, 32, 0), seed=0)


def test_an_interrupted_nri_run_continues_to_the_uninterrupted_result(tmp_path, two_particles, monkeypatch):
    whole = B.train_baseline("nri-vae", _tiny_nri(3), two_particles, tmp_path / "whole")
    assert not (whole / B.NRI_STATE).exists()  # a finished run keeps only its checkpoint

    real, calls = B.nri_validation, []

    def dies_in_epoch_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(B, "nri_validation", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        B.train_baseline("nri-vae", _tiny_nri(3), two_particles, tmp_path / "cut")
    assert (tmp_path / "cut" / B.NRI_STATE).exists() and not (tmp_path / "cut" / "checkpoint.pt").exists()
    monkeypatch.setattr(B, "nri_validation", real)
    with pytest.raises(NriRayError, match="another config"):
        B.train_baseline("nri-vae", _tiny_nri(3, nri_lr=1e-3), two_particles, tmp_path / "cut")
    lines = []
    cut = B.train_baseline("nri-vae", _tiny_nri(3), two_particles, tmp_path / "cut", progress=lines.append)
    assert "continuing from epoch 2" in lines[0]
    a, b = torch.load(whole / "checkpoint.pt"), torch.load(cut / "checkpoint.pt")
    for part in ("modules", "proposal"):  # weights and BatchNorm statistics, bit for bit
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    drop = lambda curve: [{k: v for k, v in r.items() if k != "seconds"} for r in curve]  # noqa: E731
    assert drop(json.loads((whole / "nri_curve.json").read_text())) == drop(
        json.loads((cut / "nri_curve.json").read_text()))


def test_a_corrupt_nri_state_is_refused_with_its_path(tmp_path, two_particles):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / B.NRI_STATE).write_bytes(b"not a torch file")
    with pytest.raises(NriRayError, match="nri_state.pt: corrupt"):
        B.train_baseline("nri-vae", _tiny_nri(1), two_particles, tmp_path / "run")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_nri_baseline_trains_on_cuda_like_on_cpu_and_its_checkpoint_loads_anywhere(tmp_path, two_particles):
    from nri_ray import checkpoint
    from nri_ray.rng import NRI_SHUFFLE, uniform

    ids = torch.arange(50)  # the keyed draws are integer hashes: bit for bit the same on either device
    assert torch.equal(uniform(7, ids.cuda(), 3, NRI_SHUFFLE, 5).cpu(), uniform(7, ids, 3, NRI_SHUFFLE, 5))
    curves = {}
    for device in ("cpu", "cuda"):
        cfg = C.Config.from_dict(C.merge(_tiny_nri(2).to_dict(), {"train": {"device": device}}))
        run_dir = B.train_baseline("nri-vae", cfg, two_particles, tmp_path / device)
        curves[device] = json.loads((run_dir / "nri_curve.json").read_text())
        saved = checkpoint.load(run_dir)  # as every run's: mapped to the CPU, wherever it was trained
        assert {t.device.type for t in [*saved["modules"].values(), *saved["proposal"].values()]} == {"cpu"}
        assert np.isfinite(B.evaluate_baseline("nri-vae", run_dir, two_particles)["mse"]["1"])
    # same data order, same noise, same init: the losses differ only by float rounding
    for cpu, gpu in zip(curves["cpu"], curves["cuda"]):
        assert gpu["train_loss"] == pytest.approx(cpu["train_loss"], rel=1e-3)
        assert gpu["valid_nll"] == pytest.approx(cpu["valid_nll"], rel=1e-3)
