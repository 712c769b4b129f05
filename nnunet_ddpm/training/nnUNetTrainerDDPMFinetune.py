"""Segmentation by fine-tuning the DDPM noise predictor (Alshenoudy et al. 2023).

The pretrained denoiser, run at one fixed timestep, gets a new segmentation head (nnU-Net's ``seg_layers`` with deep
supervision) and is trained with nnU-Net's own loss, data pipeline and schedule; everything else is nnUNetTrainer.
"""
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import nn

from nnunet_ddpm.networks import FixedTimestepUNet, build_unet_from_plans
from nnunet_ddpm.training.ddpm_trainer_base import UsesPretrainedDenoiser
from nnunet_ddpm.training.pretrained_checkpoint import transfer_denoiser_weights


class nnUNetTrainerDDPMFinetune(UsesPretrainedDenoiser):
    """Fine-tunes the whole pretrained noise predictor (EMA weights) for segmentation.

    Starting weights come from ``-pretrained_weights`` if given, else from the ``nnUNetTrainerDDPMPretrain`` run of
    the same dataset, plans and configuration (fold ``all``); either is checked for compatibility before training.
    """

    finetune_timestep = 50  # diffusion timestep t at which the noise predictor is run; alpha_bar_50 ~ 0.99 (cosine)
    noise_in_training = True  # add the timestep's noise to training inputs, as the paper's code does
    freeze_encoder = False

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        unet = build_unet_from_plans(configuration_manager, num_input_channels, num_output_channels,
                                     enable_deep_supervision)
        network = FixedTimestepUNet(unet, cls.finetune_timestep, cls.diffusion.alpha_bar(cls.finetune_timestep),
                                    cls.noise_in_training, cls.timestep_embedding_dim)
        if cls.freeze_encoder:
            network.unet.encoder.requires_grad_(False)
            network.time_embedding.requires_grad_(False)
        return network

    def apply_pretrained_weights(self, weights: dict) -> str:
        transfer_denoiser_weights(self.unwrapped_network(), weights)
        return f"fine-tuning at timestep {self.finetune_timestep}"


class nnUNetTrainerDDPMFinetuneFrozenEncoder(nnUNetTrainerDDPMFinetune):
    """The paper's code default: encoder and timestep embedding keep their pretrained weights; decoder and head train."""

    freeze_encoder = True

    def configure_optimizers(self):
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(trainable, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)
