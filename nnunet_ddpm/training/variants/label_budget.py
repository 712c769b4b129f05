"""Label-budget variants ``<Trainer>_<N>labels`` of every segmentation trainer, the stock nnUNetTrainer included.

Fold k trains on N of its training cases (``nnunet_ddpm.splits.label_budget``: deterministic, nested across N; another
draw with ``nnUNet_ddpm_label_draw``) and validates on its validation cases as usual; the chosen cases are written to
``labelled_cases.json`` in the output folder. Every variant is seeded (``training/seeding.py``), the stock nnUNetTrainer's
included, so that repeated runs of a comparison differ only where they are meant to. Nothing else differs from the base trainer, so ``nnUNetTrainer_20labels`` is the supervised baseline of
``nnUNetTrainerDDPMFinetune_20labels``. The DDPM pretraining is not budgeted: it sees all images, never labels.

Every declared trainer gets its variants for ``LABEL_BUDGETS`` (``declaration.py``); another budget is one line in a
module of a folder on ``nnUNet_extTrainer``::

    nnUNetTrainerDDPMFinetune_15labels = label_budget_variant(nnUNetTrainerDDPMFinetune, 15)
"""
from batchgenerators.utilities.file_and_folder_operations import join, save_json

from nnunet_ddpm.splits.grouped_folds import check_split_for_training
from nnunet_ddpm.splits.label_budget import choose_labelled_cases
from nnunet_ddpm.training.ddpm_trainer_base import CheckedResume
from nnunet_ddpm.training.seeding import Seeded, label_draw


class LabelBudget(Seeded, CheckedResume):
    """Mixin (first base): keep ``num_labelled_cases`` of the fold's training cases. The stock nnUNetTrainer's variants
    get the plugin's split checks and resume check from here."""

    num_labelled_cases: int = None

    def do_split(self):
        train_cases, val_cases = super().do_split()
        check_split_for_training(self.preprocessed_dataset_folder_base, self.fold,
                                 self.dataset_class.get_identifiers(self.preprocessed_dataset_folder), train_cases,
                                 val_cases, self.__class__.__name__)  # again for the stock trainer's variants
        draw = label_draw()
        try:
            labelled = choose_labelled_cases(train_cases, self.num_labelled_cases, self.fold, draw)
        except ValueError as e:  # ends nnUNetv2_train with the message, not a traceback through nnU-Net
            raise SystemExit(f"{self.__class__.__name__}: {e}") from None
        if self.local_rank == 0:
            save_json({"num_labelled_cases": self.num_labelled_cases, "fold": self.fold, "draw": draw,
                       "drawn_from_training_cases": len(train_cases), "cases": labelled},
                      join(self.output_folder, "labelled_cases.json"), sort_keys=False)
        self.print_to_log_file(f"Label budget: training on {len(labelled)} of the fold's {len(train_cases)} "
                               f"training cases (draw {draw}, seed {self.random_seed}; labelled_cases.json); "
                               f"validating on {len(val_cases)} cases.")
        return labelled, val_cases


def label_budget_variant(trainer_class: type, num_labelled_cases: int) -> type:
    """``<trainer_class>_<N>labels``: ``trainer_class`` trained on N labelled cases of each fold."""
    name = f"{trainer_class.__name__}_{num_labelled_cases}labels"
    return type(name, (LabelBudget, trainer_class), {
        "num_labelled_cases": num_labelled_cases, "__module__": trainer_class.__module__,
        "__doc__": f"{trainer_class.__name__} trained on {num_labelled_cases} labelled cases of each fold."})

