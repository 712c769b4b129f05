"""Fine-tuning schedules: each variant changes one thing of ``nnUNetTrainerDDPMFinetune``'s optimisation
(``lr_schedule.py`` says why these)."""
import torch

from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import nnUNetTrainerDDPMFinetune
from nnunet_ddpm.training.variants.declaration import trainer_variant


@trainer_variant(method="finetune_fulllr", title="DDPM fine-tune, one lr for all (paper)")
class nnUNetTrainerDDPMFinetune_encoderLR1(nnUNetTrainerDDPMFinetune):
    """The paper's fine-tune: every weight at the same learning rate, nnU-Net's SGD + poly exactly."""

    encoder_lr_scale = 1.0


@trainer_variant(method="finetune_warmup", title="DDPM fine-tune, lr 1e-3 with warm-up")
class nnUNetTrainerDDPMFinetune_warmup(nnUNetTrainerDDPMFinetune_encoderLR1):
    """The paper's fine-tune at learning rate 1e-3 instead of 1e-2, reached by a linear warm-up over the first tenth of
    the epochs."""

    warmup_fraction = 0.1

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3


@trainer_variant(method="finetune_unfreeze", title="DDPM fine-tune, encoder frozen for the first quarter")
class nnUNetTrainerDDPMFinetune_unfreeze(nnUNetTrainerDDPMFinetune):
    """The default fine-tune with the pretrained encoder and time embedding frozen for the first quarter of the
    epochs: the new head and the decoder adapt first, so their early large gradients do not reach the pretrained
    encoder; then the encoder trains at the default's tenth of the learning rate."""

    encoder_frozen_fraction = 0.25
