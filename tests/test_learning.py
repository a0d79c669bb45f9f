"""A short seeded BounceGrad run on springs learns the relations (well above chance)."""
import json

import pytest

from nri_ray import config as C
from nri_ray.cli import main
from nri_ray.config import GenerateConfig
from nri_ray.datagen import generate


@pytest.fixture(scope="module")
def springs49(tmp_path_factory):
    """300 meta-train tasks of the real NRI shape: 49 frames (99 for test)."""
    out = tmp_path_factory.mktemp("springs49") / "d"
    generate(GenerateConfig(num_train=300, num_valid=100, num_test=100, seed=11, workers=1), out, progress=False)
    return out


def test_short_seeded_springs_training_learns(tmp_path, springs49, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", "--data", str(springs49), "--out", str(run_dir), "--preset", "small",
                 "--edge-hidden", "32,32", "--node-hidden", "32,32", "--proposal-hidden", "32",
                 "--meta-batch-size", "32", "--rounds", "300", "--eval-every", "100", "--eval-tasks", "100",
                 "--seed", "3", "--backend", "local", "--quiet"])
    assert code == 0
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--data", str(springs49), "--sa-steps", "30", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # Chance is 0.5 (balanced labels); a run that learned nothing stays near it.
    assert result["edge_accuracy"] > 0.75, result
    assert result["mse"]["1"] < result["mse"]["10"] < result["mse"]["20"]
    assert C.Config.from_dict(C.load_file(run_dir / "config.yaml")).train.rounds == 300
