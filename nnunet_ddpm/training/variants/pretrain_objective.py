"""Pretraining variants: each changes one thing of ``nnUNetTrainerDDPMPretrain``'s denoising loss, its batch or its
patch."""
from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain
from nnunet_ddpm.training.variants.declaration import trainer_variant


@trainer_variant()
class nnUNetTrainerDDPMPretrain_minSNR5(nnUNetTrainerDDPMPretrain):
    """Min-SNR loss weights with gamma 5, the value Hang et al. (ICCV 2023) recommend: nearly clean timesteps weigh
    less. Fine-tune from it with ``-pretrained_weights`` (the fine-tunes look for ``nnUNetTrainerDDPMPretrain``
    otherwise)."""

    min_snr_gamma = 5.0


@trainer_variant()
class nnUNetTrainerDDPMPretrain_vPrediction(nnUNetTrainerDDPMPretrain):
    """The denoiser predicts v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 instead of the noise (Salimans & Ho, ICLR 2022):
    near t = 0 the noise is almost invisible in x_t and near t = T the image is, so the epsilon target is
    ill-conditioned at one end; v stays well-scaled at both. Fine-tune from it with ``-pretrained_weights``."""

    prediction_type = "v_prediction"


@trainer_variant()
class nnUNetTrainerDDPMPretrain_batch16(nnUNetTrainerDDPMPretrain):
    """16 images per step instead of the plans' batch: a smaller-variance gradient of the denoising loss, whose
    per-sample timesteps make it noisy. Each step costs about batch / planned batch as much; compare it with the plain
    pretraining at the same number of images seen. Fine-tune from it with ``-pretrained_weights``."""

    pretraining_batch_size = 16


@trainer_variant()
class nnUNetTrainerDDPMPretrain_patch32(nnUNetTrainerDDPMPretrain):
    """32 pixels per axis instead of the plans' patch: cheaper steps that see parts of an image, so more steps for the
    same compute. The fine-tunes keep the planned patch. Fine-tune from it with ``-pretrained_weights``."""

    pretraining_patch_size = 32


@trainer_variant()
class nnUNetTrainerDDPMPretrain_patch64(nnUNetTrainerDDPMPretrain):
    """64 pixels per axis instead of the plans' patch: every step sees whole slices of up to 64 x 64 with their
    surroundings, at the cost of the larger patch per step. Fine-tune from it with ``-pretrained_weights``."""

    pretraining_patch_size = 64
