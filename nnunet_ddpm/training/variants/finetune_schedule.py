"""Fine-tuning schedules that keep more of the pretraining: each variant changes one thing of
``nnUNetTrainerDDPMFinetune``'s optimisation (``lr_schedule.py`` says why these two)."""
import torch

from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune


class nnUNetTrainerDDPMFinetune_encoderLR0p1(nnUNetTrainerDDPMFinetune):
    """The pretrained encoder and time embedding learn at a tenth of the decoder's and head's learning rate."""

    encoder_lr_scale = 0.1


class nnUNetTrainerDDPMFinetune_warmup(nnUNetTrainerDDPMFinetune):
    """Learning rate 1e-3 instead of 1e-2, reached by a linear warm-up over the first tenth of the epochs."""

    warmup_fraction = 0.1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3
