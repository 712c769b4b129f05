"""The pretraining's denoising loss, plain and with min-SNR weights, against the same loss computed by hand."""
import contextlib
from types import SimpleNamespace

import pytest
import torch

from nnunet_ddpm.diffusion import DiffusionSettings
from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain
from nnunet_ddpm.training.variants.pretrain_objective import nnUNetTrainerDDPMPretrain_minSNR5


def _loss(trainer_class, images, timesteps, noise, prediction):
    """``denoising_loss`` of ``trainer_class`` with prescribed t and eps, and a network that returns ``prediction``
    and records its input."""
    seen = {}

    def network(noisy, t):
        seen["input"], seen["t"] = noisy, t
        return prediction

    trainer = SimpleNamespace(draw_timesteps_and_noise=lambda x, g=None: (timesteps, noise), network=network,
                              alphas_cumprod=DiffusionSettings().training_scheduler().alphas_cumprod,
                              autocast=contextlib.nullcontext, min_snr_gamma=trainer_class.min_snr_gamma)
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
