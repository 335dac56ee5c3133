"""The fine-tuning recipe (section 14.2) runs end to end on real Fashion-MNIST and MNIST."""

import json

import pytest

import divekit.recipes.finetune  # noqa: F401  (registers the recipe)
from divekit.cli import main
from tests.conftest import real_data_dir


@pytest.mark.slow
def test_finetune_fashion_to_mnist(tmp_path):
    real_data_dir("fashion-mnist")  # the recipe reads both from DIVEKIT_DATA
    real_data_dir("mnist")
    assert main(["recipe", "run", "finetune-fashion-to-mnist", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["source_test_acc"] > 0.90
    # Measured 0.960 (fine-tuned) and 0.967 (from scratch); the floors leave room for seeds.
    # Fashion-MNIST's features give digits no head start, so the test holds the two together
    # instead of claiming a gain this pair of datasets does not show.
    assert results["finetuned_test_acc"] > 0.94
    assert results["scratch_test_acc"] > 0.95
    assert abs(results["gain"]) < 0.03
    assert (tmp_path / "pretrained.safetensors").stat().st_size > 0
