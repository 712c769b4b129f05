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

from nnunet_ddpm.training.seeding import Seeded

DEMO_SUFFIX = "_demo"


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
        if getattr(self, 'is_pretraining', False):
            epochs = _positive_int('nnUNet_ddpm_demo_pretrain_epochs', 2 * epochs)
            # a short schedule needs a larger step: over the demo's 750 iterations 1e-3 reached a clearly lower
            # denoising loss than the full pretraining's 2e-4
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
                not getattr(self, 'is_pretraining', False):
            fold_folder = os.path.basename(self.output_folder)
            self.print_to_log_file(
                f"Final validation skipped (nnUNet_ddpm_demo_skip_validation=1). nnUNetv2_export_model_to_zip and "
                f"nnUNetv2_find_best_configuration need it: run nnUNetv2_train {self.plans_manager.dataset_name} "
                f"{self.configuration_name} {fold_folder[len('fold_'):]} -tr {type(self).__name__} "
                f"-p {self.plans_manager.plans_name} --val")
            return
        super().perform_actual_validation(save_probabilities)


def environment_budget_variant(trainer: type) -> type:
    """``<trainer>_demo``: ``trainer`` with the budget from the environment; a DDPM trainer that starts from a
    pretraining looks for the pretraining's ``_demo`` run, and the pretraining draws its sample grid in fewer steps."""
    attributes = {"__module__": trainer.__module__,
                  "__doc__": f"{trainer.__name__} with its length from the environment (nnUNet_ddpm_demo_*)."}
    if getattr(trainer, "is_pretraining", False):
        attributes["preview_sampling_steps"] = 25
    elif hasattr(trainer, "pretraining_trainer_name"):
        attributes["pretraining_trainer_name"] = trainer.pretraining_trainer_name + DEMO_SUFFIX
    return type(trainer.__name__ + DEMO_SUFFIX, (DemoBudget, trainer), attributes)
