"""Bad starting points fail before any training, with a message that says what to run; trainers are found."""
import os
import shutil
import subprocess

import pytest
import torch

from nnunet_ddpm.nnunet_trainers import TRAINER_DIR
from tests.conftest import PHANTOM_2D

pytestmark = pytest.mark.slow  # end-to-end: real nnU-Net console scripts

DATASET_ID, DATASET_NAME = PHANTOM_2D


def _assert_no_training(nnunet, result, trainer, fold=0):
    assert "Epoch 0" not in result.output
    folder = nnunet.trainer_folder(DATASET_NAME, trainer, "2d", fold)
    assert not list(folder.glob("checkpoint_*.pth"))


def test_finetune_without_pretraining_says_which_command_to_run(nnunet, phantom_2d):
    # the stock name looks for nnUNetTrainerDDPMPretrain, which the tests never run (they use the _demo variants)
    result = nnunet.train(DATASET_ID, "2d", 0, "nnUNetTrainerDDPMFinetune", ok=False)
    assert "No DDPM pretraining checkpoint found" in result.output
    assert f"Pretrain first with: nnUNetv2_train {DATASET_NAME} 2d all -tr nnUNetTrainerDDPMPretrain" in result.output
    _assert_no_training(nnunet, result, "nnUNetTrainerDDPMFinetune")


def test_truncated_pretrained_weights_are_refused(nnunet, pretrained_2d, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((pretrained_2d / "checkpoint_final.pth").read_bytes()[:5000])
    result = nnunet.train(DATASET_ID, "2d", 2, "nnUNetTrainerDDPMFinetune_demo", "-pretrained_weights", truncated,
                          ok=False)
    assert f"Cannot read pretraining checkpoint {truncated}" in result.output
    _assert_no_training(nnunet, result, "nnUNetTrainerDDPMFinetune_demo", 2)


def test_mismatching_pretrained_weights_are_refused(nnunet, pretrained_2d, tmp_path):
    checkpoint = torch.load(pretrained_2d / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["ddpm"]["patch_size"] = [64, 64]
    checkpoint["ddpm"]["plans_name"] = "nnUNetResEncUNetMPlans"
    other = tmp_path / "other_plans.pth"
    torch.save(checkpoint, other)
    result = nnunet.train(DATASET_ID, "2d", 2, "nnUNetTrainerDDPMFinetune_demo", "-pretrained_weights", other,
                          ok=False)
    assert "does not fit this run" in result.output
    planned = nnunet.patch_size(DATASET_NAME, "2d")
    assert f"patch_size: checkpoint has [64, 64], this run needs {planned}" in result.output
    assert "plans_name: checkpoint has 'nnUNetResEncUNetMPlans', this run needs 'nnUNetPlans'" in result.output
    assert f"nnUNetv2_train {DATASET_NAME} 2d all -tr nnUNetTrainerDDPMPretrain_demo" in result.output
    _assert_no_training(nnunet, result, "nnUNetTrainerDDPMFinetune_demo", 2)


def test_pretrained_weights_option_trains_from_the_given_checkpoint(nnunet, pretrained_2d, tmp_path):
    given = tmp_path / "given.pth"
    shutil.copy(pretrained_2d / "checkpoint_final.pth", given)
    result = nnunet.train(DATASET_ID, "2d", 3, "nnUNetTrainerDDPMFinetune_demo", "-pretrained_weights", given)
    assert f"Initialised from the DDPM pretraining checkpoint {given}" in result.output


def test_trainers_are_found_in_a_fresh_shell_after_one_setting(nnunet, pretrained_2d, tmp_path):
    """README's setting only: export nnUNet_extTrainer=$(nnUNetv2_ddpm_trainer_dir); stock train and predict."""
    env = {k: v for k, v in nnunet.env().items() if k != "nnUNet_extTrainer"}

    def shell(command):
        return subprocess.run(["bash", "-c", f'export nnUNet_extTrainer="$(nnUNetv2_ddpm_trainer_dir)"; {command}'],
                              env=env, capture_output=True, text=True, timeout=600)

    assert shell("echo $nnUNet_extTrainer").stdout.strip() == TRAINER_DIR
    train = shell(f"nnUNetv2_train {DATASET_ID} 2d 4 -tr nnUNetTrainerDDPMFinetuneFrozenEncoder -device cpu")
    assert train.returncode != 0 and "No DDPM pretraining checkpoint found" in train.stdout + train.stderr

    # a trained model under the stock trainer name (the _demo run, relabelled) predicts through nnUNetv2_predict
    nnunet.train(DATASET_ID, "2d", 4, "nnUNetTrainerDDPMFinetune_demo")
    demo_model = nnunet.trainer_folder(DATASET_NAME, "nnUNetTrainerDDPMFinetune_demo", "2d", 4).parent
    stock = demo_model.parent / "nnUNetTrainerDDPMFinetune__nnUNetPlans__2d"
    (stock / "fold_4").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy(demo_model / name, stock / name)
    checkpoint = torch.load(demo_model / "fold_4" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainerDDPMFinetune"
    torch.save(checkpoint, stock / "fold_4" / "checkpoint_final.pth")
    images = nnunet.raw / DATASET_NAME / "imagesTr"
    predict = shell(f"nnUNetv2_predict -i {images} -o {tmp_path / 'pred'} -d {DATASET_ID} -c 2d -f 4 "
                    f"-tr nnUNetTrainerDDPMFinetune -device cpu -npp 1 -nps 1")
    assert predict.returncode == 0, predict.stdout + predict.stderr
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 8


def test_nothing_was_written_into_the_installed_nnunetv2():
    import nnunetv2
    installed = [os.path.join(d, f) for d, _, files in os.walk(nnunetv2.__path__[0]) for f in files]
    assert not [f for f in installed if "ddpm" in f.lower()]
