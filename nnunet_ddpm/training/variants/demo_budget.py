"""Short-budget variants of every trainer for the demo and the tests: they change only the training length.

The budget comes from environment variables (set by ``nnUNetv2_ddpm_demo``; the defaults are the demo's), like
nnU-Net's own ``nnUNet_n_proc_DA``, so that one set of classes serves a 2-minute demo and a 10-second test:

* ``nnUNet_ddpm_demo_epochs`` (default 20) and ``nnUNet_ddpm_demo_iterations`` per epoch (default 25);
  validation uses a fifth of the iterations (at least 2);
* ``nnUNet_ddpm_demo_pretrain_epochs`` (default: twice the epochs) for the DDPM pretraining;
* ``nnUNet_ddpm_demo_skip_validation=1`` skips nnU-Net's final validation of segmentation trainers (the demo sets it:
  its benchmark evaluates the held-out test set instead, and the validation's export workers cost about 25 s per
  training on 2 cores; so do the patient tool, whose fold ``all`` would validate on its training slices, and the
  tests, except where they check the validation). The pretraining's sample grid is always written.

The budget is recorded in ``demo_budget.json`` in the output folder; resuming (``--c``) under other settings is
refused, since the schedule (learning-rate decay over ``num_epochs``) would silently change midway.
"""
import os

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, save_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ddpm.training.nnUNetTrainerDDPMFinetune import (nnUNetTrainerDDPMFinetune,
                                                            nnUNetTrainerDDPMFinetuneFrozenEncoder)
from nnunet_ddpm.training.nnUNetTrainerDDPMInit import nnUNetTrainerDDPMInit
from nnunet_ddpm.training.nnUNetTrainerDDPMPixelClassifier import nnUNetTrainerDDPMPixelClassifier
from nnunet_ddpm.training.nnUNetTrainerDDPMPretrain import nnUNetTrainerDDPMPretrain
from nnunet_ddpm.training.seeding import Seeded
from nnunet_ddpm.training.variants.finetune_schedule import (nnUNetTrainerDDPMFinetune_encoderLR1,
                                                             nnUNetTrainerDDPMFinetune_unfreeze,
                                                             nnUNetTrainerDDPMFinetune_warmup)
from nnunet_ddpm.training.variants.finetune_timestep import (nnUNetTrainerDDPMFinetune_t0,
                                                             nnUNetTrainerDDPMFinetune_t200)
from nnunet_ddpm.training.variants.pixel_features import nnUNetTrainerDDPMPixelClassifier_defaultFeatures
from nnunet_ddpm.training.variants.pretrain_objective import (nnUNetTrainerDDPMPretrain_batch16,
                                                              nnUNetTrainerDDPMPretrain_minSNR5,
                                                              nnUNetTrainerDDPMPretrain_patch32,
                                                              nnUNetTrainerDDPMPretrain_patch64,
                                                              nnUNetTrainerDDPMPretrain_vPrediction)


BUDGET_RECORD = 'demo_budget.json'


def _positive_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class DemoBudget(Seeded):
    """Mixin (first base) that gives any trainer the demo budget (and, like every trainer of the plugin, a seed:
    ``training/seeding.py``); nothing else changes."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        epochs = _positive_int('nnUNet_ddpm_demo_epochs', 20)
        self.num_iterations_per_epoch = _positive_int('nnUNet_ddpm_demo_iterations', 25)
        self.num_val_iterations_per_epoch = max(2, self.num_iterations_per_epoch // 5)
        if isinstance(self, nnUNetTrainerDDPMPretrain):
            epochs = _positive_int('nnUNet_ddpm_demo_pretrain_epochs', 2 * epochs)
            # a short schedule needs a larger step: over the demo's 750 iterations 1e-3 reached a denoising loss of
            # 0.18-0.22 where 2e-4 stayed at 0.25-0.30 (documentation/demo.md)
            self.initial_lr = 1e-3
        self.num_epochs = epochs
        self.save_every = max(1, epochs // 4)

    def budget(self) -> dict:
        return {'num_epochs': self.num_epochs, 'num_iterations_per_epoch': self.num_iterations_per_epoch}

    def on_train_start(self):
        """Refuse a resumed run (nnU-Net loaded its checkpoint: epoch > 0) whose budget differs from the recorded."""
        record = join(self.output_folder, BUDGET_RECORD)
        if self.current_epoch > 0 and isfile(record) and load_json(record) != self.budget():
            raise SystemExit(
                f"{self.output_folder} was trained with the budget {load_json(record)}, this run has {self.budget()} "
                f"(nnUNet_ddpm_demo_epochs, _pretrain_epochs, _iterations). Resume with the settings it was started "
                f"with, or train into another nnUNet_results folder.")
        super().on_train_start()
        if self.local_rank == 0:
            save_json(self.budget(), record)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get('nnUNet_ddpm_demo_skip_validation') == '1' and \
                not isinstance(self, nnUNetTrainerDDPMPretrain):
            fold_folder = os.path.basename(self.output_folder)
            self.print_to_log_file(
                f"Final validation skipped (nnUNet_ddpm_demo_skip_validation=1). nnUNetv2_export_model_to_zip and "
                f"nnUNetv2_find_best_configuration need it: run nnUNetv2_train {self.plans_manager.dataset_name} "
                f"{self.configuration_name} {fold_folder[len('fold_'):]} -tr {type(self).__name__} "
                f"-p {self.plans_manager.plans_name} --val")
            return
        super().perform_actual_validation(save_probabilities)


class nnUNetTrainerDDPMPretrain_demo(DemoBudget, nnUNetTrainerDDPMPretrain):
    preview_sampling_steps = 25


class nnUNetTrainerDDPMPretrain_minSNR5_demo(DemoBudget, nnUNetTrainerDDPMPretrain_minSNR5):
    preview_sampling_steps = 25


class nnUNetTrainerDDPMPretrain_vPrediction_demo(DemoBudget, nnUNetTrainerDDPMPretrain_vPrediction):
    preview_sampling_steps = 25


class nnUNetTrainerDDPMPretrain_batch16_demo(DemoBudget, nnUNetTrainerDDPMPretrain_batch16):
    preview_sampling_steps = 25


class nnUNetTrainerDDPMPretrain_patch32_demo(DemoBudget, nnUNetTrainerDDPMPretrain_patch32):
    preview_sampling_steps = 25


class nnUNetTrainerDDPMPretrain_patch64_demo(DemoBudget, nnUNetTrainerDDPMPretrain_patch64):
    preview_sampling_steps = 25


class nnUNetTrainerDDPMFinetune_demo(DemoBudget, nnUNetTrainerDDPMFinetune):
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain_demo"


class nnUNetTrainerDDPMFinetuneFrozenEncoder_demo(DemoBudget, nnUNetTrainerDDPMFinetuneFrozenEncoder):
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain_demo"


class nnUNetTrainerDDPMFinetune_encoderLR1_demo(DemoBudget, nnUNetTrainerDDPMFinetune_encoderLR1):
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain_demo"


class nnUNetTrainerDDPMFinetune_warmup_demo(DemoBudget, nnUNetTrainerDDPMFinetune_warmup):
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain_demo"


class nnUNetTrainerDDPMFinetune_unfreeze_demo(DemoBudget, nnUNetTrainerDDPMFinetune_unfreeze):
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain_demo"


class nnUNetTrainerDDPMFinetune_t0_demo(DemoBudget, nnUNetTrainerDDPMFinetune_t0):
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain_demo"


class nnUNetTrainerDDPMFinetune_t200_demo(DemoBudget, nnUNetTrainerDDPMFinetune_t200):
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain_demo"


class nnUNetTrainerDDPMInit_demo(DemoBudget, nnUNetTrainerDDPMInit):
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain_demo"


class nnUNetTrainerDDPMPixelClassifier_demo(DemoBudget, nnUNetTrainerDDPMPixelClassifier):
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain_demo"


class nnUNetTrainerDDPMPixelClassifier_defaultFeatures_demo(DemoBudget,
                                                           nnUNetTrainerDDPMPixelClassifier_defaultFeatures):
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain_demo"


class nnUNetTrainer_demo(DemoBudget, nnUNetTrainer):
    """The supervised nnU-Net baseline with the demo's budget; otherwise stock."""
