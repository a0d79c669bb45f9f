"""Every bad input gets a clear error naming the file or field, exit code 2, and no partial output."""
import json
import shutil

import numpy as np
import pytest
import reference_sim as ref

from nri_ray.cli import main


@pytest.fixture(scope="module")
def nri_files():
    return ref.generate_splits("springs", 2, 4, 3, 2, n=5, length=1000, length_test=2000)


def run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def import_with(tmp_path, capsys, files, **changes):
    src = tmp_path / "src"
    src.mkdir()
    for name, arr in files.items():
        if name in changes:
            if changes[name] is None:
                continue
            arr = changes[name]
        np.save(src / name, arr)
    out = tmp_path / "out"
    code, err = run(["data", "import-nri", src, "--sim", "springs", "--out", out], capsys)
    assert code == 2, err
    assert not out.exists(), "no partial output directory"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no temporary leftovers"
    return err


def test_missing_split_file(tmp_path, capsys, nri_files):
    err = import_with(tmp_path, capsys, nri_files, **{"vel_valid_springs5.npy": None})
    assert "vel_valid_springs5.npy: missing file" in err


def test_wrong_rank(tmp_path, capsys, nri_files):
    loc = nri_files["loc_train_springs5.npy"][:, :, 0]
    err = import_with(tmp_path, capsys, nri_files, **{"loc_train_springs5.npy": loc})
    assert "loc_train_springs5.npy: shape (4, 9, 5), expected [sims, time, 2, 5]" in err


def test_mismatched_counts_between_loc_vel_and_edges(tmp_path, capsys, nri_files):
    err = import_with(tmp_path, capsys, nri_files, **{"vel_test_springs5.npy": nri_files["vel_test_springs5.npy"][:1]})
    assert "vel_test_springs5.npy: shape (1, 19, 2, 5) does not match loc_test_springs5.npy (2, 19, 2, 5)" in err


def test_mismatched_edge_count(tmp_path, capsys, nri_files):
    err = import_with(tmp_path, capsys, nri_files, **{"edges_train_springs5.npy": nri_files["edges_train_springs5.npy"][:3]})
    assert "edges_train_springs5.npy: 3 sims, but loc_train_springs5.npy has 4" in err


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(tmp_path, capsys, nri_files, bad):
    loc = nri_files["loc_valid_springs5.npy"].copy()
    loc[2, 3, 0, 1] = bad
    err = import_with(tmp_path, capsys, nri_files, **{"loc_valid_springs5.npy": loc})
    assert "loc_valid_springs5.npy: NaN or Inf values (first in sim 2)" in err


def test_edge_values_outside_the_simulator_set(tmp_path, capsys, nri_files):
    edges = nri_files["edges_train_springs5.npy"].copy()
    edges[1, 0, 1] = 0.5
    err = import_with(tmp_path, capsys, nri_files, **{"edges_train_springs5.npy": edges})
    assert "edges_train_springs5.npy: value 0.5 off the diagonal; springs edges must be in (0.0, 1.0)" in err


def test_pickled_object_array_is_refused(tmp_path, capsys, nri_files):
    obj = np.empty(4, dtype=object)
    err = import_with(tmp_path, capsys, nri_files, **{"edges_train_springs5.npy": obj})
    assert "edges_train_springs5.npy: not a readable .npy array" in err


def test_output_directory_that_exists_is_refused_unless_overwrite(tmp_path, capsys, tiny_cfg):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, err = run(["data", "generate", "--num-train", 3, "--num-valid", 2, "--num-test", 2, "--length", 1000,
                     "--length-test", 1000, "--out", out, "--quiet"], capsys)
    assert code == 2 and f"--out {out}: already exists; pass --overwrite" in err
    assert (out / "keep.txt").read_text() == "precious"
    code, err = run(["data", "generate", "--num-train", 3, "--num-valid", 2, "--num-test", 2, "--length", 1000,
                     "--length-test", 1000, "--out", out, "--quiet", "--overwrite"], capsys)
    assert code == 0, err
    assert (out / "meta.json").exists() and not (out / "keep.txt").exists()


@pytest.fixture
def dataset_copy(tmp_path, tiny_dataset):
    dst = tmp_path / "ds"
    shutil.copytree(tiny_dataset, dst)
    return dst


def test_truncated_parquet(dataset_copy, capsys, tmp_path):
    path = dataset_copy / "train.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, err = run(["data", "export-nri", dataset_copy, "--out", tmp_path / "e"], capsys)
    assert code == 2 and "train.parquet: not a readable Parquet file" in err
    assert not (tmp_path / "e").exists()


def test_foreign_parquet(dataset_copy, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1, 2, 3]}), dataset_copy / "valid.parquet")
    code, err = run(["data", "info", dataset_copy], capsys)
    assert code == 2 and "valid.parquet: schema" in err and "does not match meta.json" in err


def test_missing_parquet_split(dataset_copy, capsys):
    (dataset_copy / "test.parquet").unlink()
    code, err = run(["data", "info", dataset_copy], capsys)
    assert code == 2 and "test.parquet: missing split file" in err


def test_unknown_format_version(dataset_copy, capsys):
    meta = json.loads((dataset_copy / "meta.json").read_text())
    meta["format_version"] = 99
    (dataset_copy / "meta.json").write_text(json.dumps(meta))
    code, err = run(["data", "info", dataset_copy], capsys)
    assert code == 2 and "meta.json: format_version 99 is not supported (this nri-ray reads 1)" in err


def test_not_a_dataset(tmp_path, capsys):
    code, err = run(["data", "info", tmp_path], capsys)
    assert code == 2 and "meta.json: missing" in err


@pytest.mark.parametrize("flags, message", [
    (["--n-balls", "1"], "generate.n_balls: got 1, expected a value >= 2"),
    (["--length", "1050"], "generate.length: got 1050, expected a multiple of sample_freq (100)"),
    (["--num-train", "0"], "generate.num_train: got 0, expected a value >= 1"),
])
def test_invalid_generate_values(tmp_path, capsys, flags, message):
    code, err = run(["data", "generate", *flags, "--out", tmp_path / "x", "--quiet"], capsys)
    assert code == 2 and message in err and not (tmp_path / "x").exists()


def test_invalid_flag_value_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "generate", "--n-balls", "five", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "--n-balls: got 'five', expected an integer" in capsys.readouterr().err
