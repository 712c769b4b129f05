"""The pretraining's denoising loss, plain, with min-SNR weights and with v-prediction, against the same loss computed by
hand; the batch and patch variants' batch and patch; refusals of bad settings; a v-prediction pretraining through nnUNetv2_train and
a fine-tune from it."""
import contextlib
from types import SimpleNamespace

import pytest
import torch

from nnunet_ddpm.diffusion import DiffusionSettings
from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain
from nnunet_ddpm.networks.pretrained_checkpoint import denoiser_sha256
from nnunet_ddpm.training.variants.pretrain_objective import (nnUNetTrainerDDPMPretrain_batch16,
                                                              nnUNetTrainerDDPMPretrain_minSNR5,
                                                              nnUNetTrainerDDPMPretrain_patch64,
                                                              nnUNetTrainerDDPMPretrain_vPrediction)
from tests.helpers import PHANTOM_2D, TINY_DATASET_JSON, tiny_plans


def _loss(trainer_class, images, timesteps, noise, prediction):
    """``denoising_loss`` of ``trainer_class`` with prescribed t and eps, and a network that returns ``prediction``
    and records its input."""
    seen = {}

    def network(noisy, t):
        seen["input"], seen["t"] = noisy, t
        return prediction

    trainer = SimpleNamespace(draw_timesteps_and_noise=lambda x, g=None: (timesteps, noise), network=network,
                              alphas_cumprod=DiffusionSettings().training_scheduler().alphas_cumprod,
                              autocast=contextlib.nullcontext, min_snr_gamma=trainer_class.min_snr_gamma,
                              prediction_type=trainer_class.prediction_type)
    return trainer_class.denoising_loss(trainer, images), seen


def test_min_snr_weights_each_samples_error():
    generator = torch.Generator().manual_seed(0)
    images, noise, prediction = (torch.randn(2, 1, 4, 4, generator=generator) for _ in range(3))
    timesteps = torch.tensor([5, 700])  # nearly clean (SNR far above 5), very noisy (SNR below 1)
    alpha_bar = DiffusionSettings().training_scheduler().alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    assert snr[0] > 5 > 1 > snr[1]
    errors = ((prediction - noise) ** 2).mean(dim=(1, 2, 3))

    plain, seen = _loss(nnUNetTrainerDDPMPretrain, images, timesteps, noise, prediction)
    assert plain.item() == pytest.approx(errors.mean().item(), rel=1e-6)
    expected_input = alpha_bar.sqrt().view(2, 1, 1, 1) * images + (1 - alpha_bar).sqrt().view(2, 1, 1, 1) * noise
    assert torch.allclose(seen["input"], expected_input) and seen["t"].tolist() == [5, 700]

    weighted, _ = _loss(nnUNetTrainerDDPMPretrain_minSNR5, images, timesteps, noise, prediction)
    by_hand = (5 / snr[0] * errors[0] + 1.0 * errors[1]) / 2
    assert weighted.item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_v_prediction_learns_v_and_min_snr_weighs_it_by_snr_plus_one():
    generator = torch.Generator().manual_seed(1)
    images, noise, prediction = (torch.randn(2, 1, 4, 4, generator=generator) for _ in range(3))
    timesteps = torch.tensor([5, 700])
    alpha_bar = DiffusionSettings().training_scheduler().alphas_cumprod[timesteps].view(2, 1, 1, 1)
    v = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * images
    errors = ((prediction - v) ** 2).mean(dim=(1, 2, 3))
    loss, seen = _loss(nnUNetTrainerDDPMPretrain_vPrediction, images, timesteps, noise, prediction)
    assert loss.item() == pytest.approx(errors.mean().item(), rel=1e-6)
    assert torch.allclose(seen["input"], alpha_bar.sqrt() * images + (1 - alpha_bar).sqrt() * noise)

    class VPredictionMinSNR5(nnUNetTrainerDDPMPretrain_vPrediction):
        min_snr_gamma = 5.0

    snr = (alpha_bar / (1 - alpha_bar)).flatten()
    weighted, _ = _loss(VPredictionMinSNR5, images, timesteps, noise, prediction)
    by_hand = (5 / (snr[0] + 1) * errors[0] + snr[1] / (snr[1] + 1) * errors[1]) / 2
    assert weighted.item() == pytest.approx(by_hand.item(), rel=1e-6)


def _construct(trainer_class, tmp_path, monkeypatch, batch_size: int = 4):
    """The trainer as nnU-Net's run_training constructs it, on tiny plans with the given planned batch."""
    for variable in ("nnUNet_results", "nnUNet_preprocessed"):  # nnU-Net reads them when it needs them
        monkeypatch.setenv(variable, str(tmp_path))
    plans = tiny_plans("Dataset989_Tiny", batch_size)
    return trainer_class(plans, "2d", "all", dict(TINY_DATASET_JSON), torch.device("cpu"))


def test_the_batch16_pretraining_takes_16_images_per_step_and_leaves_the_plans_alone(tmp_path, monkeypatch):
    trainer = _construct(nnUNetTrainerDDPMPretrain_batch16, tmp_path, monkeypatch, batch_size=4)
    trainer._set_batch_size_and_oversample()
    assert trainer.batch_size == 16 and trainer.configuration_manager.batch_size == 16
    # the plans, which the fine-tunes compare with the checkpoint, and the patch are the planned ones
    assert trainer.plans_manager.get_configuration("2d").batch_size == 4
    assert trainer.plans_manager.plans["configurations"]["2d"]["batch_size"] == 4
    assert trainer.configuration_manager.patch_size == [32, 32]
    plain = _construct(nnUNetTrainerDDPMPretrain, tmp_path, monkeypatch, batch_size=4)
    plain._set_batch_size_and_oversample()
    assert plain.batch_size == 4


def test_the_patch64_pretraining_crops_64_pixels_per_axis_and_leaves_the_plans_alone(tmp_path, monkeypatch):
    trainer = _construct(nnUNetTrainerDDPMPretrain_patch64, tmp_path, monkeypatch)
    assert trainer.configuration_manager.patch_size == [64, 64] and trainer.configuration_manager.batch_size == 4
    assert trainer.plans_manager.get_configuration("2d").patch_size == [32, 32]
    assert trainer.plans_manager.plans["configurations"]["2d"]["patch_size"] == [32, 32]
    # nnU-Net's augmentation and data loaders take the patch from the trainer's configuration manager
    trainer.num_input_channels = 2  # set by initialize(), which would also build the network
    _, _, initial_patch_size, _ = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert min(initial_patch_size) >= 64
    per_axis = type("nnUNetTrainerDDPMPretrain_per_axis", (nnUNetTrainerDDPMPretrain,),
                    {"pretraining_patch_size": (24, 36)})
    assert _construct(per_axis, tmp_path, monkeypatch).configuration_manager.patch_size == [24, 36]


PATCH_REFUSAL = ("pretraining_patch_size must give 2 positive sizes (or one for every axis), each a multiple of the "
                 "network's downsampling [4, 4] of the 2d configuration (planned patch [32, 32]), got ")


@pytest.mark.parametrize("setting, value, message", [
    ("prediction_type", "sample", "prediction_type must be one of ('epsilon', 'v_prediction'), got 'sample'"),
    ("pretraining_batch_size", 0, "pretraining_batch_size must be a positive integer or None, got 0"),
    ("pretraining_batch_size", 2.5, "pretraining_batch_size must be a positive integer or None, got 2.5"),
    ("pretraining_patch_size", 30, PATCH_REFUSAL + "30"),
    ("pretraining_patch_size", (32, 32, 32), PATCH_REFUSAL + "(32, 32, 32)"),
    ("pretraining_patch_size", 32.0, PATCH_REFUSAL + "32.0"),
    ("pretraining_patch_size", 0, PATCH_REFUSAL + "0"),
])
def test_a_pretraining_with_a_bad_setting_is_refused_when_constructed(tmp_path, monkeypatch, setting, value,
                                                                      message):
    bad = type("nnUNetTrainerDDPMPretrain_bad", (nnUNetTrainerDDPMPretrain,), {setting: value})
    with pytest.raises(ValueError) as refused:
        _construct(bad, tmp_path, monkeypatch)
    assert str(refused.value) == f"nnUNetTrainerDDPMPretrain_bad.{message}"


@pytest.mark.slow
def test_a_v_prediction_pretraining_records_its_target_and_a_fine_tune_starts_from_it(nnunet, phantom_2d):
    nnunet.train(PHANTOM_2D[0], "2d", "all", "nnUNetTrainerDDPMPretrain_vPrediction_demo")
    checkpoint_path = nnunet.trainer_folder(phantom_2d, "nnUNetTrainerDDPMPretrain_vPrediction_demo", "2d", "all") / \
        "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    assert checkpoint["ddpm"]["prediction_type"] == "v_prediction"
    assert checkpoint["ddpm"]["batch_size"] == nnunet.planned(phantom_2d, "2d")["batch_size"]
    assert checkpoint["ddpm"]["patch_size"] == checkpoint["ddpm"]["pretraining_patch_size"] == \
        nnunet.planned(phantom_2d, "2d")["patch_size"]
    assert checkpoint["trainer_name"] == "nnUNetTrainerDDPMPretrain_vPrediction_demo"

    result = nnunet.train(PHANTOM_2D[0], "2d", "all", "nnUNetTrainerDDPMFinetune_demo", "-pretrained_weights",
                          checkpoint_path)
    finetuned = torch.load(nnunet.trainer_folder(phantom_2d, "nnUNetTrainerDDPMFinetune_demo", "2d", "all") /
                           "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert finetuned["ddpm_pretraining"]["weights_sha256"] == denoiser_sha256(checkpoint["network_weights"])
    assert "Initialised from the DDPM pretraining given to nnU-Net" in result.stdout + result.stderr


@pytest.mark.slow
def test_a_pretraining_on_its_own_patch_records_both_patches_and_a_fine_tune_at_the_planned_patch_starts_from_it(
        nnunet, phantom_2d):
    planned = nnunet.planned(phantom_2d, "2d")["patch_size"]
    assert planned != [64, 64]
    nnunet.train(PHANTOM_2D[0], "2d", "all", "nnUNetTrainerDDPMPretrain_patch64_demo")
    folder = nnunet.trainer_folder(phantom_2d, "nnUNetTrainerDDPMPretrain_patch64_demo", "2d", "all")
    checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    # the plans' patch, which a fine-tune must share, and the patch the denoiser was trained on
    assert checkpoint["ddpm"]["patch_size"] == planned
    assert checkpoint["ddpm"]["pretraining_patch_size"] == [64, 64]
    assert checkpoint["init_args"]["plans"]["configurations"]["2d"]["patch_size"] == planned

    result = nnunet.train(PHANTOM_2D[0], "2d", "all", "nnUNetTrainerDDPMFinetune_demo", "-pretrained_weights",
                          folder / "checkpoint_final.pth")
    assert "Initialised from the DDPM pretraining given to nnU-Net" in result.stdout + result.stderr
    finetuned = torch.load(nnunet.trainer_folder(phantom_2d, "nnUNetTrainerDDPMFinetune_demo", "2d", "all") /
                           "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert finetuned["ddpm_pretraining"]["weights_sha256"] == denoiser_sha256(checkpoint["network_weights"])
    assert finetuned["init_args"]["plans"]["configurations"]["2d"]["patch_size"] == planned
