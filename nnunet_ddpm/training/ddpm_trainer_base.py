"""What the DDPM pretraining and fine-tuning trainers share: diffusion settings, seeding, checkpoint extras."""
import os
import random

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn
from torch._dynamo import OptimizedModule

from nnunet_ddpm.diffusion import DiffusionSettings
from nnunet_ddpm.splits.grouped_folds import check_fold_against_groups


class nnUNetTrainerDDPMBase(nnUNetTrainer):
    """Not meant to be trained itself. Subclasses set the class attributes below to change one thing each."""

    diffusion = DiffusionSettings()  # forward process; must equal the pretraining's when fine-tuning
    timestep_embedding_dim = None  # None: 4 x the first stage's features (DDPM convention)
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain"
    random_seed = 12345  # seeds torch, numpy and random before the network is built

    def initialize(self):
        if not self.was_initialized:
            random.seed(self.random_seed)
            np.random.seed(self.random_seed)
            torch.manual_seed(self.random_seed)
        super().initialize()

    def do_split(self):
        """nnU-Net's split, refused if it puts a patient of ``case_groups.json`` in training and validation."""
        train_cases, val_cases = super().do_split()
        check_fold_against_groups(self.preprocessed_dataset_folder_base, self.fold, train_cases, val_cases)
        return train_cases, val_cases

    def unwrapped_network(self) -> nn.Module:
        """The network without DDP and torch.compile wrappers (their state-dict keys carry prefixes)."""
        network = self.network.module if self.is_ddp else self.network
        return network._orig_mod if isinstance(network, OptimizedModule) else network

    def extra_checkpoint_entries(self) -> dict:
        """Entries added to nnU-Net's checkpoint dict; subclasses extend this."""
        return {}

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint (same keys, so nnU-Net's loaders and predictor read it) plus our extras."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file('No checkpoint written, checkpointing is disabled')
            return
        checkpoint = {
            'network_weights': self.unwrapped_network().state_dict(),
            'optimizer_state': self.optimizer.state_dict(),
            'grad_scaler_state': self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            'logging': self.logger.get_checkpoint(),
            '_best_ema': self._best_ema,
            'current_epoch': self.current_epoch + 1,
            'init_args': self.my_init_kwargs,
            'trainer_name': self.__class__.__name__,
            'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes,
        }
        checkpoint.update(self.extra_checkpoint_entries())
        # write to a temporary file first so that an interrupted save never leaves a truncated checkpoint behind
        temporary = filename + '.tmp'
        torch.save(checkpoint, temporary)
        os.replace(temporary, filename)
