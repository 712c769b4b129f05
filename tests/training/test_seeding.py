"""Repeated runs: one seed gives the same training, another seed or draw of labelled cases another one."""
import json

import pytest
import torch

from nnunet_ddpm.splits.label_budget import choose_labelled_cases
from tests.helpers import PHANTOM_2D

TRAINER = "nnUNetTrainer_demo_2labels"  # the supervised baseline: stock nnU-Net, seeded by the plugin's budget


def _train(nnunet, phantom_2d, results, seed, draw):
    nnunet.train(PHANTOM_2D[0], "2d", 0, TRAINER, extra_env={"nnUNet_results": str(results), "nnUNet_ddpm_seed":
                                                             str(seed), "nnUNet_ddpm_label_draw": str(draw)})
    folder = results / phantom_2d / f"{TRAINER}__nnUNetPlans__2d" / "fold_0"
    weights = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    return weights, json.loads((folder / "labelled_cases.json").read_text()), (folder / "debug.json").read_text()


@pytest.mark.slow
def test_one_seed_repeats_a_training_exactly_and_another_seed_and_draw_do_not(nnunet, phantom_2d, tmp_path):
    first, labelled, debug = _train(nnunet, phantom_2d, tmp_path / "a", seed=7, draw=0)
    again, labelled_again, _ = _train(nnunet, phantom_2d, tmp_path / "b", seed=7, draw=0)
    assert labelled_again == labelled and labelled["draw"] == 0
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert '"random_seed": "7"' in debug  # nnU-Net's record of the trainer's attributes

    other, labelled_other, _ = _train(nnunet, phantom_2d, tmp_path / "c", seed=8, draw=1)
    splits = json.loads((nnunet.preprocessed / phantom_2d / "splits_final.json").read_text())
    assert labelled_other["draw"] == 1
    assert labelled_other["cases"] == choose_labelled_cases(splits[0]["train"], 2, 0, draw=1)
    assert labelled["cases"] == choose_labelled_cases(splits[0]["train"], 2, 0, draw=0)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_a_bad_seed_is_refused_with_its_name(nnunet, phantom_2d):
    result = nnunet.train(PHANTOM_2D[0], "2d", 0, TRAINER, ok=False, extra_env={"nnUNet_ddpm_seed": "seven"})
    assert "nnUNet_ddpm_seed must be a non-negative integer, got 'seven'" in result.output


def test_bad_snapshot_iterations_are_refused_before_training(nnunet, phantom_2d, tmp_path):
    result = nnunet.train(PHANTOM_2D[0], "2d", "all", "nnUNetTrainerDDPMPretrain_demo", ok=False,
                          extra_env={"nnUNet_ddpm_pretrain_snapshots": "4000,8k", "nnUNet_results": str(tmp_path)})
    assert "nnUNet_ddpm_pretrain_snapshots must be comma-separated positive iteration counts (e.g. 4000,8000), got " \
           "'4000,8k'" in result.output
    assert not list(tmp_path.rglob("checkpoint_*.pth"))
