"""Segmentation by fine-tuning the DDPM noise predictor (Alshenoudy et al. 2023).

The pretrained denoiser, run at one fixed timestep, gets a new segmentation head (nnU-Net's ``seg_layers`` with deep
supervision) and is trained with nnU-Net's own loss, data pipeline and schedule; everything else is nnUNetTrainer.
"""
import torch
from torch import nn

from nnunet_ddpm.diffusion import FINETUNE_TIMESTEP
from nnunet_ddpm.networks import FixedTimestepUNet, build_unet_from_plans
from nnunet_ddpm.training.ddpm_trainer_base import UsesPretrainedDenoiser
from nnunet_ddpm.training.lr_schedule import WarmupPolyLRScheduler
from nnunet_ddpm.networks.pretrained_checkpoint import transfer_denoiser_weights
from nnunet_ddpm.training.variants.declaration import trainer_variant


@trainer_variant(method="finetune", title="DDPM fine-tune")
class nnUNetTrainerDDPMFinetune(UsesPretrainedDenoiser):
    """Fine-tunes the whole pretrained noise predictor (EMA weights) for segmentation, the pretrained encoder and
    time embedding at a tenth of the learning rate of the decoder and the new head.

    The paper fine-tunes every weight at nnU-Net's from-scratch rate (``nnUNetTrainerDDPMFinetune_encoderLR1``). On
    real patients at 10 labelled slices that lost to the supervised nnU-Net, and lost more after a longer pretraining:
    the large early updates wash out what the pretraining learned. Holding the encoder back kept the gain
    (documentation/evidence.md).

    Starting weights come from ``-pretrained_weights`` if given, else from the ``nnUNetTrainerDDPMPretrain`` run of
    the same dataset, plans and configuration (fold ``all``); either is checked for compatibility before training.
    """

    finetune_timestep = FINETUNE_TIMESTEP  # diffusion timestep t at which the noise predictor is run (50)
    noise_in_training = True  # add the timestep's noise to training inputs, as the paper's code does
    freeze_encoder = False
    # learning rate of the pretrained encoder and time embedding relative to the decoder and head (0 < scale <= 1),
    # and the fraction of epochs of linear warm-up before nnU-Net's poly decay (lr_schedule.py)
    encoder_lr_scale = 0.1
    warmup_fraction = 0.0
    encoder_frozen_fraction = 0.0  # the first fraction of epochs trains decoder and head only (encoder lr 0)

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

    def apply_pretrained_weights(self, weights: dict) -> None:
        transfer_denoiser_weights(self.unwrapped_network(), weights)

    def pretrained_weights_use(self) -> str:
        return f"fine-tuning at timestep {self.finetune_timestep}"

    def configure_optimizers(self):
        """nnU-Net's SGD and poly decay (with ``encoder_lr_scale`` 1 and no warm-up they are nnU-Net's exactly), over
        the trainable parameters in two groups, so that the pretrained encoder gets a smaller learning rate."""
        network = self.unwrapped_network()
        encoder = {id(p) for module in (network.unet.encoder, network.time_embedding) for p in module.parameters()}
        trainable = [p for p in network.parameters() if p.requires_grad]
        groups = [{'params': [p for p in trainable if id(p) not in encoder], 'lr_scale': 1.0},
                  {'params': [p for p in trainable if id(p) in encoder], 'lr_scale': self.encoder_lr_scale,
                   'frozen_steps': round(self.encoder_frozen_fraction * self.num_epochs)}]
        optimizer = torch.optim.SGD([g for g in groups if g['params']], self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        warmup_epochs = round(self.warmup_fraction * self.num_epochs)
        return optimizer, WarmupPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, warmup_epochs)


@trainer_variant(method="frozen", title="DDPM fine-tune, frozen encoder")
class nnUNetTrainerDDPMFinetuneFrozenEncoder(nnUNetTrainerDDPMFinetune):
    """The paper's code default: encoder and timestep embedding keep their pretrained weights; decoder and head train."""

    freeze_encoder = True
