"""What the comparison runs: one dataset and configuration, several methods, label budgets and folds, checked before
anything trains and turned into resumable steps (``nnunet_ddpm.steps``): the pretraining, then for every method,
budget and fold a training, a prediction of the held-out test set and its evaluation."""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, save_json, subfiles
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw, nnUNet_results
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

from nnunet_ddpm.comparison.evaluation import EVALUATION_FILE, evaluate_prediction_folder
from nnunet_ddpm.comparison.methods import BASELINE, METHODS, PRETRAINER
from nnunet_ddpm.splits.label_budget import LABEL_BUDGETS
from nnunet_ddpm.steps import Step, model_folder, training_step, up_to_date
from nnunet_ddpm.training.variants.label_budget import LABEL_BUDGET_TRAINERS

DONE_MARKER = "prediction_done.json"


class BenchmarkError(ValueError):
    """Bad input, found before anything is trained."""


@dataclass
class Benchmark:
    """What to run: one dataset and configuration, several methods, budgets and folds."""

    dataset: str
    configuration: str = "2d"
    methods: Sequence[str] = ("baseline", "finetune", "pixel")
    budgets: Sequence[int] = (10, 20)
    folds: Sequence[int] = (0,)
    plans: str = "nnUNetPlans"
    trainer_suffix: str = ""  # "_demo": the short-budget variants
    device: str = "cuda"
    num_processes: int = 2
    output_folder: Optional[str] = None
    test_images: Optional[str] = None
    test_labels: Optional[str] = None
    pretrained_weights: Optional[str] = None  # a DDPM pretraining checkpoint to use instead of pretraining here
    dataset_name: str = field(init=False)

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise BenchmarkError(f"Unknown method(s) {unknown}; choose from {sorted(METHODS)}.")
        try:
            self.dataset_name = maybe_convert_to_dataset_name(self.dataset)
        except RuntimeError as e:
            raise BenchmarkError(f"Dataset {self.dataset} not found: {e}") from e
        raw = join(str(nnUNet_raw), self.dataset_name)
        self.test_images = self.test_images or join(raw, "imagesTs")
        self.test_labels = self.test_labels or join(raw, "labelsTs")
        self.output_folder = self.output_folder or join(
            str(nnUNet_results), self.dataset_name, f"nnunet_ddpm_benchmark__{self.plans}__{self.configuration}")

    # names and folders
    def trainer(self, method: str, budget: int) -> str:
        return f"{METHODS[method].trainer}{self.trainer_suffix}_{budget}labels"

    @property
    def pretrainer(self) -> str:
        return PRETRAINER + self.trainer_suffix

    def model_folder(self, trainer: str, fold) -> str:
        return model_folder(str(nnUNet_results), self.dataset_name, trainer, self.plans, self.configuration, fold)

    def prediction_folder(self, method: str, budget: int, fold: int) -> str:
        return join(self.output_folder, "predictions", method, f"{budget}labels", f"fold_{fold}")

    @property
    def needs_pretraining(self) -> bool:
        return any(m != BASELINE for m in self.methods)

    @property
    def trains_pretraining(self) -> bool:
        return self.needs_pretraining and self.pretrained_weights is None

    # checks before anything runs
    def check(self) -> List[str]:
        """Raise BenchmarkError on bad input; return the test case identifiers."""
        if self.needs_pretraining and self.pretrained_weights is not None and not isfile(self.pretrained_weights):
            raise BenchmarkError(f"Pretraining checkpoint {self.pretrained_weights} does not exist. Give the "
                                 f"checkpoint_final.pth of an nnUNetTrainerDDPMPretrain run, or leave out "
                                 f"--pretrained-weights to pretrain on this dataset first.")
        missing = [self.trainer(m, b) for m in self.methods for b in self.budgets
                   if self.trainer(m, b) not in LABEL_BUDGET_TRAINERS]
        if missing:
            raise BenchmarkError(
                f"No trainer for {missing}. Budgets with trainers: {', '.join(map(str, LABEL_BUDGETS))}; add "
                f"another in a module on nnUNet_extTrainer with label_budget_variant(<trainer class>, N) (see "
                f"nnunet_ddpm/training/variants/label_budget.py).")
        preprocessed = join(str(nnUNet_preprocessed), self.dataset_name)
        plans_file = join(preprocessed, f"{self.plans}.json")
        if not isfile(plans_file) or self.configuration not in load_json(plans_file)["configurations"]:
            raise BenchmarkError(f"{self.dataset_name} has no preprocessed {self.plans} {self.configuration}: run "
                                 f"nnUNetv2_plan_and_preprocess -d {self.dataset_name} -c {self.configuration}")
        file_ending = load_json(join(preprocessed, "dataset.json"))["file_ending"]
        if not isdir(self.test_images) or not subfiles(self.test_images, suffix=file_ending):
            raise BenchmarkError(f"No test images ({file_ending}) in {self.test_images}: the comparison needs a "
                                 f"held-out labelled test set (imagesTs + labelsTs, or --test-images/--test-labels).")
        from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder
        cases = list(get_identifiers_from_splitted_dataset_folder(self.test_images, file_ending))
        unlabelled = [c for c in cases if not isfile(join(self.test_labels, c + file_ending))]
        if unlabelled:
            raise BenchmarkError(f"{len(unlabelled)} of {len(cases)} test cases have no label in {self.test_labels} "
                                 f"(first: {unlabelled[:3]}): the comparison needs labelled test cases.")
        self._check_budgets_fit(preprocessed)
        return cases

    def _check_budgets_fit(self, preprocessed: str) -> None:
        from nnunet_ddpm.splits.grouped_folds import case_identifiers, grouped_crossval_split
        splits_file = join(preprocessed, "splits_final.json")
        splits = load_json(splits_file) if isfile(splits_file) else \
            grouped_crossval_split(case_identifiers(preprocessed))  # nnU-Net's own split, as training will make it
        for fold in self.folds:
            if fold >= len(splits):
                raise BenchmarkError(f"Fold {fold} does not exist: {len(splits)} folds in {splits_file}.")
            too_large = [b for b in self.budgets if b > len(splits[fold]["train"])]
            if too_large:
                raise BenchmarkError(f"Budget(s) {too_large} exceed the {len(splits[fold]['train'])} training cases "
                                     f"of fold {fold}.")

    # the steps
    def training_step(self, trainer: str, fold) -> Step:
        command = ["nnUNetv2_train", self.dataset_name, self.configuration, str(fold), "-tr", trainer, "-p",
                   self.plans, "-device", self.device]
        from_pretraining = trainer != self.pretrainer and not trainer.startswith(
            METHODS[BASELINE].trainer + self.trainer_suffix + "_")
        return training_step(f"train {trainer} fold {fold}", command, self.model_folder(trainer, fold),
                             self.pretrained_weights if from_pretraining else None)

    def prediction_step(self, method: str, budget: int, fold: int, cases: List[str], training: Step) -> Step:
        out = self.prediction_folder(method, budget, fold)
        trainer = self.trainer(method, budget)
        command = ["nnUNetv2_predict", "-i", self.test_images, "-o", out, "-d", self.dataset_name, "-c",
                   self.configuration, "-p", self.plans, "-f", str(fold), "-tr", trainer, "-device", self.device,
                   "-npp", str(self.num_processes), "-nps", str(self.num_processes)]
        marker = join(out, DONE_MARKER)
        model = join(self.model_folder(trainer, fold), "checkpoint_final.pth")
        return Step(f"predict {len(cases)} test cases with {trainer} fold {fold}", command,
                    lambda: training.is_done() and up_to_date(marker, model),
                    after=lambda: save_json({"cases": cases, "trainer": trainer, "fold": fold}, marker))

    def evaluation_step(self, method: str, budget: int, fold: int, prediction: Step) -> Step:
        out = self.prediction_folder(method, budget, fold)
        return Step(f"evaluate {method} {budget} labels fold {fold}", None,
                    lambda: prediction.is_done() and up_to_date(join(out, EVALUATION_FILE), join(out, DONE_MARKER)),
                    run_in_process=lambda: evaluate_prediction_folder(
                        out, self.test_labels, join(str(nnUNet_preprocessed), self.dataset_name), self.plans,
                        self.num_processes))

    def steps(self, cases: List[str]) -> List[Step]:
        steps = [self.training_step(self.pretrainer, "all")] if self.trains_pretraining else []
        for budget in self.budgets:
            for fold in self.folds:
                for method in self.methods:
                    training = self.training_step(self.trainer(method, budget), fold)
                    prediction = self.prediction_step(method, budget, fold, cases, training)
                    steps += [training, prediction, self.evaluation_step(method, budget, fold, prediction)]
        return steps


