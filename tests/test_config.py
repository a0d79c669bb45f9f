"""Config: frozen, documented, validated field by field; files and flags layer over defaults."""
import argparse
import dataclasses

import pytest

from nri_ray import config as C
from nri_ray import flags as F
from nri_ray.errors import ConfigError


def test_every_field_is_documented():
    for f in dataclasses.fields(C.GenerateConfig):
        assert len(f.metadata.get("doc", "")) > 10, f.name


def test_frozen():
    cfg = C.GenerateConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1


@pytest.mark.parametrize("values, message", [
    ({"sim": "gravity"}, "generate.sim: got 'gravity', expected one of springs, charged"),
    ({"n_balls": "5"}, "generate.n_balls: got '5', expected an integer"),
    ({"nri_exact": 1}, "generate.nri_exact: got 1, expected true or false"),
    ({"seed": -1}, "generate.seed: got -1, expected a value >= 0"),
    ({"colour": "red"}, "generate: unknown field(s) colour"),
])
def test_invalid_values_are_rejected_with_field_and_expectation(values, message):
    with pytest.raises(ConfigError) as exc:
        C.GenerateConfig.from_dict(values)
    assert message in str(exc.value)


def test_file_then_flags(tmp_path):
    path = tmp_path / "gen.yaml"
    path.write_text("sim: charged\nn_balls: 3\nseed: 9\n")
    parser = argparse.ArgumentParser()
    F.add_flags(parser, C.GenerateConfig)
    args = parser.parse_args(["--seed", "11", "--nri-exact"])
    cfg = F.from_flags(C.GenerateConfig, args, C.load_file(path))
    assert (cfg.sim, cfg.n_balls, cfg.seed, cfg.nri_exact) == ("charged", 3, 11, True)
    assert cfg.frames == 49 and cfg.frames_test == 99


def test_json_file_and_bad_files(tmp_path):
    good = tmp_path / "c.json"
    good.write_text('{"n_balls": 4}')
    assert C.GenerateConfig.from_dict(C.load_file(good)).n_balls == 4
    bad = tmp_path / "bad.json"
    bad.write_text("{n_balls: ")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        C.load_file(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        C.load_file(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        C.load_file(listy)


def test_save_and_load_round_trip(tmp_path):
    cfg = C.GenerateConfig(sim="charged", seed=5)
    C.save_file(cfg, tmp_path / "c.yaml")
    assert C.GenerateConfig.from_dict(C.load_file(tmp_path / "c.yaml")) == cfg


def test_the_default_run_is_on_ray_with_one_shard_per_core():
    import os

    cfg = C.Config()
    assert cfg.cluster.backend == "ray" and cfg.train.num_shards == 0
    assert cfg.resolved().train.num_shards == (os.cpu_count() or 1)
    local = C.Config.from_dict({"cluster": {"backend": "local"}})
    assert local.resolved().train.num_shards == 1
    fixed = C.Config.from_dict({"train": {"num_shards": 3}})
    assert fixed.resolved() is fixed


def test_widths_are_int_lists_and_old_comma_strings_still_load():
    cfg = C.Config.from_dict({"model": {"edge_hidden": [64, 32], "node_hidden": [16]}})
    assert cfg.model.edge_hidden == (64, 32) and cfg.model.edge_widths == [64, 32]
    assert cfg.to_dict()["model"]["edge_hidden"] == [64, 32]  # plain lists for YAML, JSON and Tune
    old = C.Config.from_dict({"model": {"edge_hidden": "64,32", "node_hidden": "16"}})  # a run saved before
    assert old == cfg
    for bad, message in (([64, 0], "a non-empty list of positive integers"), ("64,x", "expected a list of ints"),
                         ([], "a non-empty list"), (64, "expected a list of ints"), ([64.5], "expected an integer")):
        with pytest.raises(ConfigError, match=message) as exc:
            C.Config.from_dict({"model": {"edge_hidden": bad}})
        assert "model.edge_hidden" in str(exc.value)


def test_one_merge_preset_then_defaults_then_file_then_flags(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    F.add_config_flags(parser)
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 0.005, rounds: 7}\ncluster: {cpus_per_shard: 0.5}\n")
    args = parser.parse_args(["--config", str(path), "--rounds", "9", "--edge-hidden", "8,8"])
    cfg = F.config_from_args(args, preset_name="small", defaults={"cluster": {"cpus_per_shard": 0.75},
                                                                  "train": {"eval_every": 3}})
    assert cfg.train.meta_batch_size == 64  # the preset
    assert cfg.train.eval_every == 3  # the command's default
    assert (cfg.train.lr, cfg.cluster.cpus_per_shard) == (0.005, 0.5)  # the file over the default
    assert cfg.train.rounds == 9 and cfg.model.edge_hidden == (8, 8)  # flags over everything
    saved = C.Config().to_dict()
    resumed = F.config_from_args(parser.parse_args(["--rounds", "3"]), saved=saved)
    assert resumed.train.rounds == 3 and resumed.model.edge_hidden == (256, 256, 256)
    with pytest.raises(SystemExit):
        parser.parse_args(["--edge-hidden", "8,x"])


def test_every_preset_is_a_valid_config_and_charged_is_small_trained_longer():
    configs = {name: C.Config.from_dict(C.preset(name)) for name in C.PRESETS}
    small, charged, paper = configs["small"], configs["charged"], configs["paper"]
    assert small.model.edge_inputs == "relative" and paper.model.edge_inputs == "absolute"
    assert small.model.loss_delta > 0 and paper.model.loss_delta == 0  # Huber for small, the paper's squared error
    assert (charged.model, charged.proposal, charged.anneal) == (small.model, small.proposal, small.anneal)
    assert (charged.train.lr, charged.train.rounds) != (small.train.lr, small.train.rounds)
    with pytest.raises(ConfigError, match="--preset: got 'huge', expected one of small, charged, paper"):
        C.preset("huge")
