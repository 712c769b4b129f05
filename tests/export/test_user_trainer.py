"""A user's own subclass of a plugin trainer, in the user's own nnUNet_extTrainer folder, as nnU-Net users write
them: it trains, exports to a stock model and predicts, found everywhere the way nnU-Net finds trainers."""
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_ddpm.nnunet_trainers import TRAINER_DIR
from tests.helpers import PHANTOM_2D, hidden_plugin_env

pytestmark = pytest.mark.slow
DATASET_ID, DATASET = PHANTOM_2D
TRAINER = "nnUNetTrainerDDPMFinetune_mine"
USER_TRAINERS = '''
import torch
from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune


class nnUNetTrainerDDPMFinetune_mine(nnUNetTrainerDDPMFinetune):
    """Another timestep and a short schedule: one thing changed per attribute, as nnU-Net's variants do."""

    finetune_timestep = 100

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1
'''


def test_a_users_subclass_trains_exports_and_predicts(nnunet, pretrained_2d, tmp_path):
    user_folder = tmp_path / "my_trainers"
    user_folder.mkdir()
    (user_folder / "my_ddpm_trainers.py").write_text(USER_TRAINERS)
    results = tmp_path / "results"
    env = {"nnUNet_results": str(results), "nnUNet_extTrainer": os.pathsep.join([TRAINER_DIR, str(user_folder)])}

    training = nnunet.train(DATASET_ID, "2d", 0, TRAINER, "-pretrained_weights", pretrained_2d / "checkpoint_final.pth",
                            extra_env=env, validate=True)
    assert "fine-tuning at timestep 100" in training.output
    model = results / DATASET / f"{TRAINER}__nnUNetPlans__2d"
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert (checkpoint["trainer_name"], checkpoint["current_epoch"]) == (TRAINER, 1)
    assert (model / "fold_0" / "validation" / "summary.json").is_file()

    # the export builds the user's network (timestep 100) through nnU-Net's trainer search
    exported = tmp_path / "stock_results"
    result = nnunet.run("nnUNetv2_ddpm_export_model", "-i", model, "-o", exported, training=False, extra_env=env)
    assert "folds 0" in result.output
    images = nnunet.raw / DATASET / "imagesTr"
    predict = ("nnUNetv2_predict", "-i", images, "-d", DATASET_ID, "-c", "2d", "-f", 0, "-device", "cpu", "-npp", "1",
               "-nps", "1")
    nnunet.run(*predict, "-o", tmp_path / "user", "-tr", TRAINER, extra_env=env)
    nnunet.run(*predict, "-o", tmp_path / "stock", "-tr", "nnUNetTrainer",
               extra_env=hidden_plugin_env(tmp_path, exported))
    cases = sorted(p.name for p in (tmp_path / "user").glob("*.nii.gz"))
    assert len(cases) == 8 and cases == sorted(p.name for p in (tmp_path / "stock").glob("*.nii.gz"))
    for case in cases:
        user, stock = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f / case))) for f in ("user", "stock"))
        assert np.array_equal(user, stock), case

    # without the user's folder the export says which trainer it could not find and how to name the folder
    refused = nnunet.run("nnUNetv2_ddpm_export_model", "-i", model, "-o", tmp_path / "again", ok=False,
                         training=False, extra_env=env | {"nnUNet_extTrainer": TRAINER_DIR})
    assert f"nnU-Net's trainer search finds no trainer {TRAINER}" in refused.output
    assert 'export nnUNet_extTrainer="$(nnUNetv2_ddpm_trainer_dir)' in refused.output
