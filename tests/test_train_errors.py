"""Training and evaluation refuse bad input clearly, exit 2 and overwrite nothing."""
import json
import shutil

import pytest
import torch

from nri_ray import checkpoint

from nri_ray import config as C
from nri_ray.cli import main
from nri_ray.errors import ConfigError
from nri_ray.train import load_run

FLAGS = ["--edge-hidden", "16,16", "--node-hidden", "16", "--proposal-hidden", "16", "--rollout", "4",
         "--meta-batch-size", "8", "--eval-every", "2", "--eval-tasks", "4", "--eval-sa-steps", "1",
         "--backend", "local", "--checkpoint-every", "2", "--quiet"]


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(out), "--rounds", "2", *FLAGS]) == 0
    return out


@pytest.mark.parametrize("section, values, message", [
    ("model", {"edge_modules": 1}, "model.edge_modules: got 1, expected a value >= 2"),
    ("train", {"meta_batch_size": 0}, "train.meta_batch_size: got 0, expected a value >= 1"),
    ("anneal", {"t0": -1.0}, "anneal.t0: got -1.0, expected a value >= 0.0"),
    ("proposal", {"epsilon": 1.5}, "proposal.epsilon: got 1.5, expected a value in [0.0, 1.0]"),
])
def test_invalid_training_config_values(section, values, message):
    with pytest.raises(ConfigError) as exc:
        C.Config.from_dict({section: values})
    assert message in str(exc.value)


def test_invalid_flag_on_the_command_line(tmp_path, capsys, tiny_dataset):
    code, out = run_cli(["train", "--data", tiny_dataset, "--out", tmp_path / "x", "--edge-modules", 1, *FLAGS], capsys)
    assert code == 2 and "model.edge_modules: got 1, expected a value >= 2" in out.err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["train"], ["experiment", "table", "--methods", "full-graph,nri-vae",
                                                 "--nri-epochs", "1"]])
def test_cuda_without_a_gpu_is_refused_by_name(tmp_path, capsys, tiny_dataset, command):
    flags = FLAGS if command == ["train"] else [f for f in FLAGS if f != "--quiet"]  # experiments have no --quiet
    code, out = run_cli([*command, "--data", tiny_dataset, "--out", tmp_path / "x", "--rounds", 2, "--device", "cuda",
                         *flags], capsys)
    assert code == 2 and "--device cuda: no CUDA device is visible here" in out.err, out.err
    assert not list(tmp_path.rglob("checkpoint.pt"))  # no run was written


def test_existing_run_directory_is_not_overwritten(trained, capsys, tiny_dataset):
    before = (trained / "checkpoint.pt").read_bytes()
    code, out = run_cli(["train", "--data", tiny_dataset, "--out", trained, "--rounds", 2, *FLAGS], capsys)
    assert code == 2 and "already exists and is not empty; use --resume" in out.err
    assert (trained / "checkpoint.pt").read_bytes() == before


def test_resume_with_a_different_config_is_refused(trained, capsys):
    before = (trained / "checkpoint.pt").read_bytes()
    code, out = run_cli(["train", "--resume", trained, "--rounds", 4, "--lr", 0.5, *FLAGS], capsys)
    assert code == 2 and "config differs from the run's: train.lr: checkpoint 0.01, now 0.5" in out.err
    assert (trained / "checkpoint.pt").read_bytes() == before


def test_resume_with_other_edge_inputs_is_refused_and_a_run_saved_before_them_loads_as_absolute(
        trained, tmp_path, capsys, tiny_dataset):
    before = (trained / "checkpoint.pt").read_bytes()  # the small preset's relative edge inputs
    code, out = run_cli(["train", "--resume", trained, "--rounds", 4, "--edge-inputs", "absolute", *FLAGS], capsys)
    assert code == 2 and "model.edge_inputs: checkpoint 'relative', now 'absolute'" in out.err
    assert (trained / "checkpoint.pt").read_bytes() == before
    # A checkpoint written before edge inputs (and the Huber loss) were configurable has neither key:
    # it was trained with absolute inputs and the squared error, and loads as such.
    old = tmp_path / "old"
    assert run_cli(["train", "--data", tiny_dataset, "--out", old, "--rounds", 2, "--edge-inputs", "absolute",
                    "--loss-delta", 0, *FLAGS], capsys)[0] == 0
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    del state["config"]["model"]["edge_inputs"], state["config"]["model"]["loss_delta"]
    checkpoint.save(old, state)
    code, out = run_cli(["evaluate", old, "--data", tiny_dataset, "--sa-steps", 1, "--json"], capsys)
    assert code == 0 and json.loads(out.out)["tasks"] > 0
    assert (load_run(old)[1].model.edge_inputs, load_run(old)[1].model.loss_delta) == ("absolute", 0.0)


def test_missing_and_corrupt_checkpoint(trained, tmp_path, capsys, tiny_dataset):
    code, out = run_cli(["evaluate", tmp_path, "--data", tiny_dataset], capsys)
    assert code == 2 and "checkpoint.pt: missing checkpoint" in out.err
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    data = (broken / "checkpoint.pt").read_bytes()
    (broken / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    code, out = run_cli(["evaluate", broken, "--data", tiny_dataset], capsys)
    assert code == 2 and "checkpoint.pt: corrupt or unreadable checkpoint" in out.err
    code, out = run_cli(["train", "--resume", broken, "--rounds", 4], capsys)
    assert code == 2 and "corrupt or unreadable checkpoint" in out.err


def test_dataset_with_other_n_balls_than_the_checkpoint(trained, tmp_path, capsys, tiny_cfg):
    from nri_ray.datagen import generate

    generate(tiny_cfg.replace(n_balls=3), tmp_path / "three", progress=False)
    code, out = run_cli(["evaluate", trained, "--data", tmp_path / "three"], capsys)
    assert code == 2 and "3 balls, the run" in out.err and "was trained on 5" in out.err
    code, out = run_cli(["train", "--resume", trained, "--data", tmp_path / "three", "--rounds", 4, *FLAGS], capsys)
    assert code == 2 and "3 balls, the checkpoint was trained on 5" in out.err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, tiny_dataset, monkeypatch):
    import torch

    from nri_ray import shard

    real_step = shard.ShardWorker.step

    def poisoned(self, weights, round_idx, task_ids, temperature):
        report, grads = real_step(self, weights, round_idx, task_ids, temperature)
        return (report._replace(grad_loss_sum=float("nan")) if round_idx == 5 else report), grads

    monkeypatch.setattr(shard.ShardWorker, "step", poisoned)
    out_dir = tmp_path / "nan"
    code, out = run_cli(["train", "--data", tiny_dataset, "--out", out_dir, "--rounds", 10, *FLAGS], capsys)
    assert code == 2 and "round 5: non-finite loss" in out.err and "last good checkpoint" in out.err
    state = torch.load(out_dir / "checkpoint.pt", weights_only=True)
    assert state["round"] == 3  # checkpoints every 2 rounds: rounds 1 and 3 were saved, 5 never
    assert all(torch.isfinite(t).all() for t in state["modules"].values())


def test_nan_before_any_checkpoint_says_so(tmp_path, capsys, tiny_dataset):
    code, out = run_cli(["train", "--data", tiny_dataset, "--out", tmp_path / "n", "--rounds", 10, "--lr", 1e30,
                         "--checkpoint-every", 50, *FLAGS[:-3], "--quiet"], capsys)
    assert code == 2 and "non-finite loss" in out.err and "no checkpoint had been written yet" in out.err


def test_evaluate_json(trained, capsys, tiny_dataset):
    import json

    code, out = run_cli(["evaluate", trained, "--data", tiny_dataset, "--split", "test", "--sa-steps", 2, "--json"], capsys)
    assert code == 0
    result = json.loads(out.out)
    written = json.loads((trained / "eval_test.json").read_text())
    assert {k: v for k, v in result.items() if k != "seconds"} == {k: v for k, v in written.items() if k != "seconds"}
    assert result["sa_steps"] == 2 and result["tasks"] == 8 and result["split"] == "test"
    assert set(result["mse"]) >= {"1", "10"} and "warnings" not in result
    assert (trained / "plots" / "graph.png").exists()
    code, out = run_cli(["evaluate", trained, "--data", tiny_dataset, "--tasks", 2, "--json"], capsys)
    assert json.loads(out.out)["sa_steps"] == 100  # the same default as the quick start


def test_evaluate_uses_the_runs_normalization_on_other_data(trained, tmp_path, tiny_cfg):
    """Another dataset has its own normalization constants; evaluate must scale it with the run's."""
    import numpy as np
    import torch

    from nri_ray.data import Dataset
    from nri_ray.datagen import generate
    from nri_ray.evaluate import evaluate
    from nri_ray.infer import infer_structures
    from nri_ray.train import load_run

    other = tmp_path / "other"
    generate(tiny_cfg.replace(seed=11), other, progress=False)
    models, cfg, meta, run_norm = load_run(trained)
    assert run_norm != Dataset(other).normalization  # the two datasets' constants differ
    part = Dataset(other).read("test", 0, 8, normalize=False)
    ids = torch.as_tensor(np.array(part.task_ids))

    def sa_loss(norm):
        inf = infer_structures(models.lib, models.proposer, torch.as_tensor(norm.apply(part.trajectories)), ids,
                               sa_frames=min(cfg.train.sa_frames, part.trajectories.shape[1]),
                               rollout_steps=cfg.model.rollout, steps=1, epsilon=cfg.proposal.epsilon,
                               temperature=0.0, seed=cfg.train.seed, block_start=cfg.proposal.block_start,
                               frame_stride=cfg.proposal.block_frame_stride)
        return float(inf.losses.mean())

    result = evaluate(trained, other, "test", sa_steps=1, device="cpu", plot=False, write=False)
    assert result["sa_loss"] == sa_loss(run_norm) != sa_loss(Dataset(other).normalization)


def test_evaluate_on_another_simulators_data_says_so(trained, tmp_path, capsys, tiny_cfg):
    import json

    from nri_ray.datagen import generate

    generate(tiny_cfg.replace(sim="charged"), tmp_path / "charged", progress=False)
    code, out = run_cli(["evaluate", trained, "--data", tmp_path / "charged", "--sa-steps", 1, "--json"], capsys)
    assert code == 0 and "is charged data, the run" in out.err and "trained on springs" in out.err
    assert "trained on springs" in json.loads(out.out)["warnings"][0]


def test_a_failed_start_leaves_nothing_and_the_same_command_works_after(tmp_path, capsys, tiny_dataset):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    good = (data / "train.parquet").read_bytes()
    (data / "train.parquet").write_bytes(good[: len(good) // 2])
    argv = ["train", "--data", data, "--out", tmp_path / "r", "--rounds", 2, *FLAGS]
    code, out = run_cli(argv, capsys)
    assert code == 2 and "train.parquet" in out.err
    assert not (tmp_path / "r").exists()
    (data / "train.parquet").write_bytes(good)
    code, out = run_cli(argv, capsys)
    assert code == 0 and (tmp_path / "r" / "checkpoint.pt").exists()


def test_a_checkpoint_holding_a_pickled_object_is_refused(trained, tmp_path, capsys, tiny_dataset):
    import torch

    broken = tmp_path / "pickled"
    shutil.copytree(trained, broken)
    state = torch.load(broken / "checkpoint.pt", weights_only=True)
    state["meta"]["payload"] = shutil.copytree  # any object weights_only refuses to unpickle
    torch.save(state, broken / "checkpoint.pt")
    code, out = run_cli(["evaluate", broken, "--data", tiny_dataset], capsys)
    assert code == 2 and "corrupt or unreadable checkpoint" in out.err and "checkpoint.pt" in out.err


def test_a_nan_gradient_with_a_finite_loss_stops_the_run(tmp_path, capsys, tiny_dataset, monkeypatch):
    import numpy as np
    import torch

    from nri_ray import shard

    real_step = shard.ShardWorker.step

    def poisoned(self, weights, round_idx, task_ids, temperature):
        report, grads = real_step(self, weights, round_idx, task_ids, temperature)
        if round_idx == 5:
            grads.modules[3] = np.nan
        return report, grads

    monkeypatch.setattr(shard.ShardWorker, "step", poisoned)
    out_dir = tmp_path / "nangrad"
    code, out = run_cli(["train", "--data", tiny_dataset, "--out", out_dir, "--rounds", 10, *FLAGS], capsys)
    assert code == 2 and "round 5: non-finite gradient" in out.err and "last good checkpoint" in out.err
    state = torch.load(out_dir / "checkpoint.pt", weights_only=True)
    assert state["round"] == 3 and all(torch.isfinite(t).all() for t in state["modules"].values())


def test_train_writes_example_plots(trained):
    for name in ("training.png", "trajectory.png", "graph.png"):
        assert (trained / "plots" / name).stat().st_size > 1000, name
