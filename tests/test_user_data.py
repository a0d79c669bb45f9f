"""A user's own data: import of .npy arrays of any state dims (labels optional), training and
evaluation without labels, `infer` to Parquet, `predict` to .npy, and every bad input refused."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from nri_ray import config as C
from nri_ray import simulate
from nri_ray.cli import main
from nri_ray.data import Dataset
from nri_ray.train import load_run, run

TINY = {"model": {"edge_hidden": [16, 16], "node_hidden": [16], "rollout": 4, "init_spread": 0.1},
        "proposal": {"proposal_hidden": 16}, "cluster": {"backend": "local"},
        "train": {"rounds": 4, "meta_batch_size": 10, "lr": 3e-3, "eval_every": 2, "eval_tasks": 6,
                  "eval_sa_steps": 2, "checkpoint_every": 2, "sa_steps": 2, "seed": 5, "warmup_rounds": 1}}


def cli(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def arrays(own_arrays):
    return own_arrays


@pytest.fixture(scope="module")
def unlabeled(unlabeled_3d):
    return unlabeled_3d


@pytest.fixture(scope="module")
def unlabeled_run(unlabeled, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "run3d"
    run(C.Config.from_dict(TINY), unlabeled, run_dir, progress=False)
    return run_dir


def test_generate_3d_springs_is_three_independent_axes_of_the_2d_simulator():
    # Hooke springs act per coordinate, so the x, y of a 3-D springs system are the 2-D system of
    # the same x, y initial conditions, bit for bit (walls reflect per coordinate too).
    init = simulate.draw_initial("springs", 5, 4, np.random.default_rng(0), dims=3)
    loc3, vel3 = simulate.simulate("springs", init, 1000, 100)
    assert loc3.shape == (4, 9, 3, 5)
    flat = simulate.InitialConditions(init.edges, init.loc[:, :2].copy(), init.vel[:, :2].copy())
    loc2, vel2 = simulate.simulate("springs", flat, 1000, 100)
    np.testing.assert_array_equal(loc3[:, :, :2], loc2)
    np.testing.assert_array_equal(vel3[:, :, :2], vel2)


def test_generate_3d_charged_in_a_plane_is_the_2d_system():
    # Coulomb forces couple the axes through the distance: with z = vz = 0 for every particle the
    # 3-D system stays in the plane and is the 2-D one (to rounding: the distance's matmul has a
    # third, zero term).
    init = simulate.draw_initial("charged", 5, 4, np.random.default_rng(1))
    zeros = np.zeros((4, 1, 5))
    lifted = simulate.InitialConditions(init.edges, np.concatenate([init.loc, zeros], 1), np.concatenate([init.vel, zeros], 1))
    loc3, vel3 = simulate.simulate("charged", lifted, 1000, 100)
    loc2, vel2 = simulate.simulate("charged", init, 1000, 100)
    assert (loc3[:, :, 2] == 0).all() and (vel3[:, :, 2] == 0).all()
    np.testing.assert_allclose(loc3[:, :, :2], loc2, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(vel3[:, :, :2], vel2, rtol=1e-9, atol=1e-12)


def test_nri_exact_refuses_other_dims(capsys, tmp_path):
    code, _, err = cli(["data", "generate", "--dims", "3", "--nri-exact", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "nri_exact" in err and "dims 3" in err and not (tmp_path / "x").exists()


def test_import_unlabeled_keeps_raw_values_and_records_the_normalization(arrays, unlabeled):
    ds = Dataset(unlabeled)
    meta = json.loads((unlabeled / "meta.json").read_text())
    assert meta["simulator"] == "imported" and meta["dims"] == 6 and meta["labeled"] is False
    assert meta["params"]["normalization_scheme"] == "pos-vel"
    assert meta["normalization"]["groups"] == [[0, 1, 2], [3, 4, 5]]
    for split in ("train", "valid", "test"):
        part = ds.read(split, normalize=False)
        assert part.labels is None
        np.testing.assert_array_equal(part.trajectories, np.load(arrays / f"{split}.npy"))  # lossless
    train = ds.read("train").trajectories
    assert train[..., :3].min() == -1 and train[..., :3].max() == 1 and train[..., 3:].max() == 1


def test_import_splits_valid_from_train_by_seed_and_labels_follow(arrays, tmp_path):
    def imported(name, seed, *labels):
        out = tmp_path / name
        assert main(["data", "import", "--train", str(arrays / "train.npy"), "--valid-fraction", "0.25",
                     "--seed", str(seed), "--out", str(out), *labels]) == 0
        return Dataset(out)

    a, b, c = imported("a", 1), imported("b", 1), imported("c", 2, "--labels-train", str(arrays / "labels_train.npy"))
    assert (a.num_tasks("train"), a.num_tasks("valid"), a.num_tasks("test")) == (18, 6, 0)
    np.testing.assert_array_equal(a.read("valid", normalize=False).trajectories, b.read("valid", normalize=False).trajectories)
    raw = np.load(arrays / "train.npy")
    labels = np.load(arrays / "labels_train.npy")
    got = np.concatenate([c.read(s, normalize=False).trajectories for s in ("train", "valid")])
    got_labels = np.concatenate([c.read(s).labels for s in ("train", "valid")])
    # every task lands in exactly one of train/valid, with its own labels
    order = [int(np.flatnonzero((raw == t).all(axis=(1, 2, 3)))[0]) for t in got]
    assert sorted(order) == list(range(24))
    np.testing.assert_array_equal(got_labels, labels[order])
    assert not np.array_equal(a.read("valid", normalize=False).trajectories, c.read("valid", normalize=False).trajectories)


def test_labels_as_matrices_equal_labels_as_edge_lists(arrays, tmp_path):
    from nri_ray.graph import edges_to_matrix

    labels = np.load(arrays / "labels_train.npy")
    np.save(tmp_path / "m.npy", edges_to_matrix(labels, 5).astype(np.int64))
    for name, lab in (("edges", arrays / "labels_train.npy"), ("matrix", tmp_path / "m.npy")):
        assert main(["data", "import", "--train", str(arrays / "train.npy"), "--labels-train", str(lab),
                     "--out", str(tmp_path / name)]) == 0
    a, b = Dataset(tmp_path / "edges").read("train"), Dataset(tmp_path / "matrix").read("train")
    np.testing.assert_array_equal(a.labels, b.labels)


def test_one_dimensional_data_imports_per_dim_trains_and_plots(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.standard_normal((20, 12, 3, 1)), axis=1)  # 20 random walks of 3 nodes, 1 dim
    np.save(tmp_path / "walks.npy", x)
    code, out, err = cli(["data", "import", "--train", tmp_path / "walks.npy", "--test", tmp_path / "walks.npy",
                          "--out", tmp_path / "d"], capsys)
    assert code == 0, err
    assert "1 dims, unlabeled, normalization per-dim" in out
    code, _, err = cli(["data", "import", "--train", tmp_path / "walks.npy", "--normalize", "pos-vel",
                        "--out", tmp_path / "e"], capsys)
    assert code == 2 and "--normalize pos-vel: needs an even number of state dims" in err
    run_dir = tmp_path / "run"
    run(C.Config.from_dict(TINY), tmp_path / "d", run_dir, progress=False)
    code, out, err = cli(["evaluate", run_dir, "--data", tmp_path / "d", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["mse"]["1"] > 0 and (run_dir / "plots" / "trajectory.png").exists()


def test_unlabeled_training_and_evaluation_leave_out_accuracies(unlabeled_run, unlabeled, capsys):
    rows = [json.loads(x) for x in (unlabeled_run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all("valid_edge_accuracy" not in r and "batch_edge_accuracy" not in r for r in rows)
    assert all(np.isfinite(r["health_ratio"]) and np.isfinite(r["valid_mse"]["1"]) for r in rows)
    code, out, err = cli(["evaluate", unlabeled_run, "--data", unlabeled, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert "edge_accuracy" not in result and "no labels" in result["note"]
    assert np.isfinite(result["health_ratio"]) and set(result["mse"]) == {"1", "10"}
    code, out, _ = cli(["evaluate", unlabeled_run, "--data", unlabeled], capsys)
    assert "no labels: edge accuracies are left out" in out


def test_infer_writes_one_row_per_task_and_scores_only_with_labels(unlabeled_run, unlabeled, arrays, tmp_path, capsys):
    out = tmp_path / "graphs.parquet"
    code, printed, err = cli(["infer", unlabeled_run, "--data", unlabeled, "--sa-steps", "3", "--out", out], capsys)
    assert code == 0, err
    summary = json.loads(printed)
    assert "edge_accuracy" not in summary and summary["tasks"] == 6
    table = pq.read_table(out)
    assert [(f.name, str(f.type)) for f in table.schema] == [
        ("task_id", "int64"), ("modules", "list<element: int8>"), ("probabilities", "list<element: float>"),
        ("sa_loss", "double")]
    rows = table.to_pylist()
    assert [r["task_id"] for r in rows] == list(range(6))
    probs = np.array([r["probabilities"] for r in rows]).reshape(6, 20, 2)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    modules = np.array([r["modules"] for r in rows])
    assert modules.shape == (6, 20) and set(np.unique(modules)) <= {0, 1}
    # the same inference from the raw array, scored against held-back labels (read only to score)
    code, printed, err = cli(["infer", unlabeled_run, "--trajectories", arrays / "test.npy", "--labels",
                              arrays / "labels_test.npy", "--sa-steps", "3", "--out", tmp_path / "again.parquet"], capsys)
    assert code == 0, err
    scored = json.loads(printed)
    assert 0 <= scored["edge_accuracy"] <= 1 and scored["sa_loss"] == pytest.approx(summary["sa_loss"])
    assert pq.read_table(tmp_path / "again.parquet").column("modules").to_pylist() == modules.tolist()
    code, _, err = cli(["infer", unlabeled_run, "--data", unlabeled, "--out", out], capsys)
    assert code == 2 and "already exists; pass --overwrite" in err


def test_predict_rolls_past_the_end_in_the_inputs_units(unlabeled_run, arrays, tmp_path, capsys):
    from nri_ray.infer import infer_for_run, predict

    out = tmp_path / "future.npy"
    code, _, err = cli(["predict", unlabeled_run, "--trajectories", arrays / "test.npy", "--steps", "5",
                        "--sa-steps", "3", "--out", out], capsys)
    assert code == 0, err
    future = np.load(out)
    raw = np.load(arrays / "test.npy")
    assert future.shape == (6, 5, 5, 6) and future.dtype == np.float64
    models, cfg, _, norm = load_run(unlabeled_run)
    traj = torch.as_tensor(norm.apply(raw))
    inf = infer_for_run(models.lib, models.proposer, cfg, traj, torch.arange(6), 3)
    expected = norm.invert(predict(models.lib, traj, inf.structures, raw.shape[1] - 1, 5).numpy())
    np.testing.assert_allclose(future, expected)
    # raw units: one step from the last frame stays near it (positions move ~0.1 per frame)
    assert np.abs(future[:, 0, :, :3] - raw[:, -1, :, :3]).max() < 1.0


def _refused(capsys, argv, *expected, leaves=None):
    code, _, err = cli(argv, capsys)
    assert code == 2, err
    for text in expected:
        assert text in err, err
    if leaves is not None:
        assert not leaves.exists(), "no partial output"
        assert not [p for p in leaves.parent.iterdir() if p.name.startswith(f".{leaves.name}")], "no temporary leftovers"


def test_bad_import_input_is_refused_with_nothing_left(arrays, tmp_path, capsys):
    train = np.load(arrays / "train.npy")
    bad = tmp_path / "bad.npy"
    out = tmp_path / "out"
    np.save(bad, train[:, :, :, 0])
    _refused(capsys, ["data", "import", "--train", bad, "--out", out], "--train", "expected 4 axes", leaves=out)
    nan = train.copy()
    nan[3, 2, 1, 0] = np.nan
    np.save(bad, nan)
    _refused(capsys, ["data", "import", "--train", bad, "--out", out], "NaN or Inf values (first in task 3)", leaves=out)
    np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _refused(capsys, ["data", "import", "--train", bad, "--out", out], "holds Python objects (a pickle)", leaves=out)
    np.save(bad, np.load(arrays / "labels_train.npy")[:, :19])
    _refused(capsys, ["data", "import", "--train", arrays / "train.npy", "--labels-train", bad, "--out", out],
             "--labels-train", "expected [24, 20]", leaves=out)
    labels = np.load(arrays / "labels_train.npy").astype(np.int64)
    labels[5, 2] = 3
    np.save(bad, labels)
    _refused(capsys, ["data", "import", "--train", arrays / "train.npy", "--labels-train", bad, "--out", out],
             "value 3 (task 5); relation types must be 0 or 1", leaves=out)
    _refused(capsys, ["data", "import", "--train", arrays / "train.npy", "--test", arrays / "test.npy",
                      "--labels-train", arrays / "labels_train.npy", "--out", out], "missing --labels-test", leaves=out)
    _refused(capsys, ["data", "import", "--train", arrays / "test.npy", "--test", arrays / "train.npy", "--out", out],
             "--test", "9 frames, expected at least 19", leaves=out)
    np.save(bad, train[:, :, :4])
    _refused(capsys, ["data", "import", "--train", arrays / "train.npy", "--valid", bad, "--out", out],
             "--valid", "4 nodes, expected 5", leaves=out)
    _refused(capsys, ["data", "import", "--train", tmp_path / "missing.npy", "--out", out], "no such file", leaves=out)


def test_a_run_refuses_data_of_other_dims_or_nodes(unlabeled_run, tiny_dataset, arrays, tmp_path, capsys):
    _refused(capsys, ["evaluate", unlabeled_run, "--data", tiny_dataset], "4 state dims", "trained on 6")
    out = tmp_path / "g.parquet"
    _refused(capsys, ["infer", unlabeled_run, "--data", tiny_dataset, "--out", out], "4 state dims", leaves=out)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.load(arrays / "test.npy")[:, :, :4])
    _refused(capsys, ["predict", unlabeled_run, "--trajectories", bad, "--steps", "3", "--out", tmp_path / "f.npy"],
             "4 nodes, expected 5", leaves=tmp_path / "f.npy")
    _refused(capsys, ["infer", unlabeled_run, "--trajectories", arrays / "test.npy", "--labels", arrays / "labels_train.npy",
                      "--out", out], "--labels", "expected [6, 20]", leaves=out)
    _refused(capsys, ["predict", unlabeled_run, "--trajectories", arrays / "test.npy", "--steps", "3",
                      "--out", tmp_path / "f.txt"], "expected a .npy file name")
    _refused(capsys, ["find-node", unlabeled_run, "--data", arrays / "unlabeled", "--out", tmp_path / "fn"],
             "unlabeled dataset", "needs relation labels")


def test_datasets_written_before_imports_still_load(tiny_dataset, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_dataset, old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["labeled"]
    atomic = old / "meta.json"
    atomic.write_text(json.dumps(meta))
    ds = Dataset(old)
    assert ds.labeled and ds.dims == 4
    np.testing.assert_array_equal(ds.read("train").labels, Dataset(tiny_dataset).read("train").labels)


def test_resume_refuses_data_of_other_dims(unlabeled_run, tiny_dataset, capsys):
    _refused(capsys, ["train", "--resume", unlabeled_run, "--data", tiny_dataset, "--rounds", "6"],
             "4 state dims, the checkpoint was trained on 6")


def test_baselines_run_on_3d_data_and_leave_accuracy_out_without_labels(unlabeled, tmp_path, capsys):
    code, out, err = cli(["experiment", "table", "--data", unlabeled, "--out", tmp_path / "t", "--methods",
                          "static,full-graph,nri-vae", "--rounds", "2", "--nri-epochs", "1", "--nri-hidden", "0",
                          "--edge-hidden", "8", "--node-hidden", "8", "--proposal-hidden", "8", "--rollout", "2"], capsys)
    assert code == 0, err
    results = {m: json.loads((tmp_path / "t" / m / "result.json").read_text()) for m in ("static", "full-graph", "nri-vae")}
    assert all(r["edge_accuracy"] is None and np.isfinite(r["mse"]["1"]) for r in results.values())
    _refused(capsys, ["experiment", "table", "--data", unlabeled, "--out", tmp_path / "u", "--methods", "true-graph",
                      "--rounds", "2"], "unlabeled dataset", "true-graph")


def test_a_dataset_without_test_split_trains_and_says_so_on_evaluate(arrays, tmp_path, capsys):
    data, run_dir = tmp_path / "d", tmp_path / "run"
    assert main(["data", "import", "--train", str(arrays / "train.npy"), "--out", str(data)]) == 0
    code, _, err = cli(["train", "--data", data, "--out", run_dir, "--backend", "local", "--edge-hidden", "8",
                        "--node-hidden", "8", "--proposal-hidden", "8", "--rollout", "2", "--rounds", "2",
                        "--eval-every", "1", "--eval-sa-steps", "1", "--quiet"], capsys)
    assert code == 0, err
    _refused(capsys, ["evaluate", run_dir, "--data", data], "--split test", "has no test tasks")
    code, out, err = cli(["infer", run_dir, "--data", data, "--split", "valid", "--sa-steps", "1",
                          "--out", tmp_path / "v.parquet"], capsys)
    assert code == 0 and json.loads(out)["tasks"] == 2, err
