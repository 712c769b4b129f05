"""Segmentation by fine-tuning the DDPM noise predictor (Alshenoudy et al. 2023).

The pretrained denoiser, run at one fixed timestep, gets a new segmentation head (nnU-Net's ``seg_layers`` with deep
supervision) and is trained with nnU-Net's own loss, data pipeline and schedule; everything else is nnUNetTrainer.
"""
import os
from typing import Optional

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, save_json
from nnunetv2.paths import nnUNet_results
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import nn

from nnunet_ddpm.networks import FixedTimestepUNet, build_unet_from_plans
from nnunet_ddpm.training.command_line import nnunet_train_options
from nnunet_ddpm.training.ddpm_trainer_base import nnUNetTrainerDDPMBase
from nnunet_ddpm.training.pretrained_checkpoint import (check_compatible, denoiser_metadata,
                                                        find_pretraining_checkpoint, load_checkpoint_file,
                                                        pretraining_command, transfer_denoiser_weights)


class nnUNetTrainerDDPMFinetune(nnUNetTrainerDDPMBase):
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

    def initialize(self):
        super().initialize()
        self.pretraining_source = self.load_pretrained_denoiser()

    def load_pretrained_denoiser(self) -> Optional[dict]:
        """Check and load the pretrained denoiser's EMA weights.

        Returns where they came from, also written to ``ddpm_pretraining.json`` in the output folder so that a
        resumed run (whose weights come from its own checkpoint) still knows it.
        """
        record = join(self.output_folder, 'ddpm_pretraining.json')
        options = nnunet_train_options()
        resuming = options.c and any(isfile(join(self.output_folder, f'checkpoint_{k}.pth'))
                                     for k in ('final', 'latest', 'best'))
        if options.val or (resuming and options.pretrained_weights is None):
            # nnU-Net loads this run's own checkpoint next
            return load_json(record) if isfile(record) else None
        dataset_name = self.plans_manager.dataset_name
        command = pretraining_command(dataset_name, self.configuration_name, self.plans_manager.plans_name,
                                      self.pretraining_trainer_name)
        path = options.pretrained_weights or find_pretraining_checkpoint(
            nnUNet_results, dataset_name, self.plans_manager.plans_name, self.configuration_name,
            self.pretraining_trainer_name)
        checkpoint = load_checkpoint_file(path)
        expected = denoiser_metadata(self, self.diffusion, self.timestep_embedding_dim, ema_decay=None)
        check_compatible(checkpoint['ddpm'], expected, path, command)
        transfer_denoiser_weights(self.unwrapped_network(), checkpoint['network_weights'])
        source = {'checkpoint': os.path.abspath(path), 'dataset_name': checkpoint['ddpm']['dataset_name'],
                  'epochs': checkpoint['current_epoch'], 'finetune_timestep': self.finetune_timestep}
        if self.local_rank == 0:
            save_json(source, record)
        self.print_to_log_file(f"Initialised from the DDPM pretraining checkpoint {path} "
                               f"(dataset {source['dataset_name']}, {source['epochs']} epochs, EMA weights); "
                               f"fine-tuning at timestep {self.finetune_timestep}.")
        return source

    def extra_checkpoint_entries(self) -> dict:
        return {'ddpm_pretraining': self.pretraining_source}


class nnUNetTrainerDDPMFinetuneFrozenEncoder(nnUNetTrainerDDPMFinetune):
    """The paper's code default: encoder and timestep embedding keep their pretrained weights; decoder and head train."""

    freeze_encoder = True

    def configure_optimizers(self):
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(trainable, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)
