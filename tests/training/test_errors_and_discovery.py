"""Bad starting points fail before any training, with a message that says what to run; trainers are found."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nnunet_ddpm.nnunet_trainers import TRAINER_DIR
from nnunet_ddpm.networks.pretrained_checkpoint import denoiser_sha256
from tests.helpers import PHANTOM_2D, changed_pretraining

pytestmark = pytest.mark.slow  # end-to-end: real nnU-Net console scripts

DATASET_ID, DATASET_NAME = PHANTOM_2D
# nnU-Net's Python API as a notebook calls it; the process's command line is python's, not nnUNetv2_train's
RUN_TRAINING = """
import sys, torch
from nnunetv2.run.run_training import run_training
dataset, fold, trainer, weights, mode = sys.argv[1:]
run_training(dataset, '2d', int(fold), trainer, pretrained_weights=weights or None,
             only_run_validation=mode == 'val', continue_training=mode == 'c', device=torch.device('cpu'))
"""


def _train_from_python(nnunet, fold, trainer, weights="", mode="train", ok=True, extra_env=None):
    return nnunet.run(sys.executable, "-c", RUN_TRAINING, DATASET_ID, fold, trainer, weights, mode, ok=ok,
                      extra_env=extra_env)


def _train(nnunet, entry, fold, weights, ok=True, extra_env=None):
    """One fine-tuning run from the shell or from Python."""
    trainer = "nnUNetTrainerDDPMFinetune_demo"
    if entry == "shell":
        return nnunet.train(DATASET_ID, "2d", fold, trainer, "-pretrained_weights", weights, ok=ok,
                            extra_env=extra_env)
    return _train_from_python(nnunet, fold, trainer, str(weights), ok=ok, extra_env=extra_env)


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
    """nnU-Net reads the file; its loader's error ends the run before any training."""
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((pretrained_2d / "checkpoint_final.pth").read_bytes()[:5000])
    result = nnunet.train(DATASET_ID, "2d", 2, "nnUNetTrainerDDPMFinetune_demo", "-pretrained_weights", truncated,
                          ok=False)
    assert "load_pretrained_weights" in result.output  # the refusal is nnU-Net's loader's (torch cannot read it)
    _assert_no_training(nnunet, result, "nnUNetTrainerDDPMFinetune_demo", 2)


def test_mismatching_pretrained_weights_are_refused(nnunet, pretrained_2d, tmp_path):
    def other_plans(metadata):
        metadata.update(patch_size=[64, 64], plans_name="nnUNetResEncUNetMPlans")

    other = changed_pretraining(pretrained_2d / "checkpoint_final.pth", tmp_path / "other_plans.pth", other_plans)
    result = nnunet.train(DATASET_ID, "2d", 2, "nnUNetTrainerDDPMFinetune_demo", "-pretrained_weights", other,
                          ok=False)
    assert "given to nnU-Net (-pretrained_weights; weights sha256 " in result.output
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
    sha256 = denoiser_sha256(torch.load(given, map_location="cpu", weights_only=False)["network_weights"])
    assert (f"Initialised from the DDPM pretraining given to nnU-Net (-pretrained_weights; weights sha256 "
            f"{sha256[:16]}): dataset {DATASET_NAME}, 2 epochs") in result.output


@pytest.mark.parametrize("entry", ["shell", "python"])
def test_pretrained_weights_from_elsewhere_without_the_default_pretraining(nnunet, pretrained_2d, tmp_path, entry):
    """The given weights are checked, used and recorded by their content hash, from nnUNetv2_train and from
    run_training() alike; the default pretraining is neither demanded nor read (this run's nnUNet_results has none),
    nor by a later --val."""
    given = tmp_path / "elsewhere" / "given.pth"
    given.parent.mkdir()
    shutil.copy(pretrained_2d / "checkpoint_final.pth", given)
    results = tmp_path / "results"
    result = _train(nnunet, entry, 0, given, extra_env={"nnUNet_results": str(results)})
    assert "Initialised from the DDPM pretraining given to nnU-Net" in result.output
    folder = results / DATASET_NAME / "nnUNetTrainerDDPMFinetune_demo__nnUNetPlans__2d" / "fold_0"
    record = json.loads((folder / "ddpm_pretraining.json").read_text())
    checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    sha256 = denoiser_sha256(torch.load(given, map_location="cpu", weights_only=False)["network_weights"])
    assert record == checkpoint["ddpm_pretraining"]
    assert (record["weights_sha256"], record["given_to_nnunet"], record["checkpoint"]) == (sha256, True, None)
    assert (record["dataset_name"], record["epochs"]) == (DATASET_NAME, 2)
    assert json.loads((folder / "demo_budget.json").read_text()) == {"num_epochs": 2, "num_iterations_per_epoch": 3}
    if entry == "python":  # validate, resume (nnU-Net loads the run's own checkpoint): no pretraining needed
        for mode in ("val", "c"):
            _train_from_python(nnunet, 0, "nnUNetTrainerDDPMFinetune_demo", mode=mode,
                               extra_env={"nnUNet_results": str(results)})
        assert json.loads((folder / "ddpm_pretraining.json").read_text()) == record
    else:  # resuming under another demo budget is refused, naming both
        result = nnunet.train(DATASET_ID, "2d", 0, "nnUNetTrainerDDPMFinetune_demo", "--c", ok=False,
                              extra_env={"nnUNet_results": str(results), "nnUNet_ddpm_demo_epochs": "3"})
        assert (f"{folder} was trained with the budget {{'num_epochs': 2, 'num_iterations_per_epoch': 3}}, this run "
                f"has {{'num_epochs': 3, 'num_iterations_per_epoch': 3}}") in result.output
        assert "Traceback" not in result.output


def test_a_too_large_label_budget_is_refused_before_anything_is_recorded(nnunet, pretrained_2d):
    trainer = "nnUNetTrainerDDPMFinetune_demo_100labels"  # fold 0 of the 8-case phantom has 6 training cases
    result = nnunet.train(DATASET_ID, "2d", 0, trainer, ok=False)
    assert "A budget of 100 labelled cases was asked for, but fold 0 has only 6 training cases" in result.output
    assert "Traceback" not in result.output
    folder = nnunet.trainer_folder(DATASET_NAME, trainer, "2d", 0)
    assert not (folder / "ddpm_pretraining.json").exists() and not (folder / "labelled_cases.json").exists()


@pytest.mark.parametrize("entry", ["shell", "python"])
def test_another_noise_schedule_is_refused_from_the_shell_and_from_python(nnunet, pretrained_2d, tmp_path, entry):
    """Same tensor shapes, another forward process: only the description inside the weights tells."""
    def linear(metadata):
        metadata["diffusion"]["beta_schedule"] = "linear"

    other = changed_pretraining(pretrained_2d / "checkpoint_final.pth", tmp_path / "linear_schedule.pth", linear)
    result = _train(nnunet, entry, 1, other, ok=False, extra_env={"nnUNet_results": str(tmp_path / "results")})
    assert "The pretraining checkpoint given to nnU-Net (-pretrained_weights; weights sha256 " in result.output
    assert "does not fit this run" in result.output
    assert "diffusion: checkpoint has {'num_train_timesteps': 1000, 'beta_schedule': 'linear'}" in result.output
    assert "Traceback" not in result.output  # the refusal ends the program, not a traceback through nnU-Net
    assert result.stderr.strip().splitlines()[-1].startswith("Pretrain for these plans and configuration with:")
    assert not list((tmp_path / "results").rglob("checkpoint_*.pth"))


def _python_blocks_of_how_it_works() -> list:
    text = (Path(__file__).resolve().parents[2] / "documentation" / "how_it_works.md").read_text()
    section = text.split("### From Python", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


def test_the_one_line_of_how_it_works_makes_the_trainers_findable_from_python(nnunet):
    one_line, _ = _python_blocks_of_how_it_works()
    assert len(one_line.strip().splitlines()) == 1
    code = one_line + "import os; print(os.environ['nnUNet_extTrainer'])\n"
    for before, after in (("", TRAINER_DIR), ("/my/trainers", os.pathsep.join([TRAINER_DIR, "/my/trainers"]))):
        result = nnunet.run(sys.executable, "-c", code, training=False, extra_env={"nnUNet_extTrainer": before})
        assert result.stdout.strip() == after


def test_the_python_script_of_how_it_works_runs_as_a_saved_script(nnunet, phantom_2d, tmp_path):
    """documentation/how_it_works.md, "From Python", saved as a file and run with nnU-Net's final validation on (its
    worker processes, and the predictor's, import the script again) and nnUNet_extTrainer unset: every model is trained
    once and validated, and the predictor writes every case."""
    _, script = _python_blocks_of_how_it_works()
    path = tmp_path / "ddpm_from_python.py"
    path.write_text(script)
    results = tmp_path / "results"
    nnunet.run(sys.executable, path, extra_env={"nnUNet_results": str(results), "nnUNet_extTrainer": "",
                                                "nnUNet_ddpm_demo_skip_validation": "0"})
    folder = results / DATASET_NAME
    for trainer, fold in (("nnUNetTrainerDDPMPretrain_demo", "all"), ("nnUNetTrainerDDPMFinetune_demo", 0),
                          ("nnUNetTrainerDDPMPixelClassifier_demo", 0), ("nnUNetTrainer_demo", 0),
                          ("nnUNetTrainerDDPMFinetune_demo", 1)):
        fold_folder = folder / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"
        checkpoint = torch.load(fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
        assert (checkpoint["trainer_name"], checkpoint["current_epoch"]) == (trainer, 2)  # the tests' 2 epochs
        assert len(list(fold_folder.glob("training_log_*.txt"))) == 1, f"{trainer} fold {fold} trained again"
        if fold != "all":
            assert (fold_folder / "validation" / "summary.json").is_file()
    record = json.loads((folder / "nnUNetTrainerDDPMFinetune_demo__nnUNetPlans__2d" / "fold_1" /
                         "ddpm_pretraining.json").read_text())
    assert record["given_to_nnunet"] is True
    predictions = sorted(p.name for p in (results / "predictions").glob("*.nii.gz"))
    assert predictions == sorted(p.name.replace("_0000.nii.gz", ".nii.gz")
                                 for p in (nnunet.raw / DATASET_NAME / "imagesTr").glob("*_0000.nii.gz"))


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
