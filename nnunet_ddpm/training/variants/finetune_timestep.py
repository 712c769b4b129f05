"""Fine-tuning timesteps: each variant runs ``nnUNetTrainerDDPMFinetune``'s noise predictor at another fixed
timestep; nothing else changes.

The default, t = 50, keeps the input nearly clean (alpha_bar ~ 0.99) and adds a little of that timestep's noise in
training. Diffusion features are reported best at small to middle timesteps (Baranchuk et al., ICLR 2022; Xiang et
al., ICCV 2023), so one variant goes to the clean end and one to the middle.
"""
from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune
from nnunet_ddpm.training.variants.declaration import trainer_variant


@trainer_variant(method="finetune_t0", title="DDPM fine-tune at timestep 0")
class nnUNetTrainerDDPMFinetune_t0(nnUNetTrainerDDPMFinetune):
    """The noise predictor at t = 0: the clean image in training and prediction (alpha_bar_0 ~ 1, no noise to
    speak of), with the t = 0 embedding."""

    finetune_timestep = 0


@trainer_variant(method="finetune_t200", title="DDPM fine-tune at timestep 200")
class nnUNetTrainerDDPMFinetune_t200(nnUNetTrainerDDPMFinetune):
    """The noise predictor at t = 200 (cosine: alpha_bar ~ 0.90): training inputs carry noise of standard deviation
    about 0.3 of the normalised image, a strong augmentation; prediction sees the clean image scaled by
    sqrt(alpha_bar)."""

    finetune_timestep = 200
