"""Pretraining objectives: each variant changes one thing of ``nnUNetTrainerDDPMPretrain``'s denoising loss."""
from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain


class nnUNetTrainerDDPMPretrain_minSNR5(nnUNetTrainerDDPMPretrain):
    """Min-SNR loss weights with gamma 5, the value Hang et al. (ICCV 2023) recommend: nearly clean timesteps weigh
    less. Fine-tune from it with ``-pretrained_weights`` (the fine-tunes look for ``nnUNetTrainerDDPMPretrain``
    otherwise)."""

    min_snr_gamma = 5.0
