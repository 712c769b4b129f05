"""Unit tests of the checkpoint rules and of how a trainer learns the given pretrained weights (fast; no training)."""
import inspect

import pytest
import torch

from nnunet_ddpm.training.given_weights import pretrained_weights_given_by_nnunet
from nnunet_ddpm.training.pretrained_checkpoint import (PretrainingCheckpointError, check_compatible,
                                                        find_pretraining_checkpoint, load_checkpoint_file)

META = {"format_version": 1, "dataset_name": "Dataset001_A", "plans_name": "nnUNetPlans", "configuration": "2d",
        "num_input_channels": 4, "patch_size": [128, 128], "network_arch_class_name": "PlainConvUNet",
        "network_arch_init_kwargs": {"n_stages": 6}, "timestep_embedding_dim": None,
        "diffusion": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}, "ema_decay": 0.999}


def test_compatible_checkpoint_passes_even_from_another_dataset():
    check_compatible(dict(META, dataset_name="Dataset002_Bigger", patch_size=(128, 128)), META, "x.pth", "cmd")


def test_incompatible_checkpoint_names_every_difference_and_the_fix():
    found = dict(META, configuration="3d_fullres", num_input_channels=2, patch_size=[64, 64])
    with pytest.raises(PretrainingCheckpointError) as error:
        check_compatible(found, META, "/p/checkpoint_final.pth", "nnUNetv2_train D 2d all -tr P")
    message = str(error.value)
    assert "configuration: checkpoint has '3d_fullres', this run needs '2d'" in message
    assert "num_input_channels: checkpoint has 2, this run needs 4" in message
    assert "patch_size: checkpoint has [64, 64], this run needs [128, 128]" in message
    assert "nnUNetv2_train D 2d all -tr P" in message
    with pytest.raises(PretrainingCheckpointError, match="checkpoint format 0"):
        check_compatible(dict(META, format_version=0), META, "p", "cmd")


def test_unreadable_and_foreign_checkpoints(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"network_weights": {}, "ddpm": META}, good)
    assert load_checkpoint_file(str(good))["ddpm"] == META
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(PretrainingCheckpointError, match="Cannot read pretraining checkpoint.*truncated"):
        load_checkpoint_file(str(truncated))
    plain = tmp_path / "plain.pth"
    torch.save({"network_weights": {}, "trainer_name": "nnUNetTrainer"}, plain)
    with pytest.raises(PretrainingCheckpointError, match="not a DDPM pretraining checkpoint.*nnUNetTrainer"):
        load_checkpoint_file(str(plain))
    with pytest.raises(PretrainingCheckpointError, match="does not exist"):
        load_checkpoint_file(str(tmp_path / "missing.pth"))


def test_finding_the_pretraining_checkpoint(tmp_path):
    args = (str(tmp_path), "Dataset001_A", "nnUNetPlans", "2d", "nnUNetTrainerDDPMPretrain")
    with pytest.raises(PretrainingCheckpointError,
                       match="Pretrain first with: nnUNetv2_train Dataset001_A 2d all -tr nnUNetTrainerDDPMPretrain"):
        find_pretraining_checkpoint(*args)
    fold = tmp_path / "Dataset001_A" / "nnUNetTrainerDDPMPretrain__nnUNetPlans__2d" / "fold_all"
    fold.mkdir(parents=True)
    (fold / "checkpoint_latest.pth").write_bytes(b"")
    with pytest.raises(PretrainingCheckpointError, match="has not finished.*Resume it with: .* --c"):
        find_pretraining_checkpoint(*args)
    (fold / "checkpoint_final.pth").write_bytes(b"")
    assert find_pretraining_checkpoint(*args) == str(fold / "checkpoint_final.pth")


def test_the_pretrained_weights_file_is_read_from_nnunets_call_not_from_the_command_line(monkeypatch):
    """The path nnU-Net's maybe_load_checkpoint was given reaches a trainer's initialize, at any depth of the call."""
    import sys
    import nnunetv2.run.run_training as nnunet_run_training

    class Trainer:  # what maybe_load_checkpoint touches before it loads the file
        was_initialized = False
        network = None

        def initialize(self):
            self.seen = pretrained_weights_given_by_nnunet()
            raise StopIteration  # nnU-Net would load the file next

    monkeypatch.setattr(sys, "argv", ["nnUNetv2_train", "1", "2d", "0", "-pretrained_weights", "/argv.pth"])
    trainer = Trainer()
    with pytest.raises(StopIteration):
        nnunet_run_training.maybe_load_checkpoint(trainer, False, False, "/given.pth")
    assert trainer.seen == "/given.pth"
    assert pretrained_weights_given_by_nnunet() is None  # outside nnU-Net's call: nothing, whatever argv says
    assert "pretrained_weights_file" in inspect.signature(nnunet_run_training.maybe_load_checkpoint).parameters
