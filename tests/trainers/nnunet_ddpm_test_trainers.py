"""Tiny-budget variants of the plugin's trainers for the test suite (found through nnUNet_extTrainer).

They change only the budget, as a user would shorten a run (compare nnU-Net's nnUNetTrainer_5epochs). The number
of epochs can be raised with NNUNET_DDPM_TEST_EPOCHS to test resuming a finished run with --c.
"""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import (nnUNetTrainerDDPMFinetune,
                                                            nnUNetTrainerDDPMFinetuneFrozenEncoder)
from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain


def _tiny(trainer):
    trainer.num_epochs = int(os.environ.get('NNUNET_DDPM_TEST_EPOCHS', 2))
    trainer.num_iterations_per_epoch = 3
    trainer.num_val_iterations_per_epoch = 2


class nnUNetTrainerDDPMPretrain_tiny(nnUNetTrainerDDPMPretrain):
    num_preview_samples = 2
    preview_sampling_steps = 3

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _tiny(self)


class nnUNetTrainerDDPMFinetune_tiny(nnUNetTrainerDDPMFinetune):
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain_tiny"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _tiny(self)


class nnUNetTrainerDDPMFinetuneFrozenEncoder_tiny(nnUNetTrainerDDPMFinetuneFrozenEncoder):
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain_tiny"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        _tiny(self)
