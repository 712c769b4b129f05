"""What the comparison runs: one dataset and configuration, several methods, label budgets, folds and runs, checked
before anything trains and turned into resumable steps (``nnunet_ddpm.steps``): the pretraining, then for every
method, budget, fold and run a training, a prediction of the held-out test set and its evaluation.

A run is one seed and one draw of the labelled cases (``training/seeding.py``). The trainers' default seed with draw 0
is the plain run: its models sit where ``nnUNetv2_train`` puts them. Every other run trains into its own results
folder under the output folder (``runs/seed<S>_draw<D>``), from the one pretraining of the grid, so that a model
trained with one seed is never taken for another's."""
from dataclasses import KW_ONLY, dataclass, field
from typing import List, Optional, Sequence, Union

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, subfiles
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw, nnUNet_results
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

from nnunet_ddpm.comparison.evaluation import EVALUATION_FILE
from nnunet_ddpm.comparison.methods import BASELINE, METHODS, PRETRAINER
from nnunet_ddpm.splits.label_budget import ALL_LABELS, LABEL_BUDGETS, budget_folder
from nnunet_ddpm.steps import Step, model_folder, training_step, up_to_date
from nnunet_ddpm.training.seeding import DEFAULT_SEED, LABEL_DRAW_VARIABLE, SEED_VARIABLE

class BenchmarkError(ValueError):
    """Bad input, found before anything is trained."""


@dataclass(frozen=True)
class Run:
    """One repetition of every training of the grid: a seed and a draw of the labelled cases."""
    seed: int = DEFAULT_SEED
    draw: int = 0

    @property
    def name(self) -> str:
        return f"seed{self.seed}_draw{self.draw}"

    @property
    def environment(self) -> dict:
        return {SEED_VARIABLE: str(self.seed), LABEL_DRAW_VARIABLE: str(self.draw)}


@dataclass
class Benchmark:
    """What to run: one dataset and configuration, several methods, budgets and folds."""

    dataset: str
    _: KW_ONLY  # every other setting by name: fourteen positional settings are too easy to misorder
    configuration: str = "2d"
    methods: Sequence[str] = ("baseline", "finetune", "pixel")
    budgets: Sequence[Union[int, str]] = (10, 20)  # numbers of labelled cases, or ALL_LABELS
    folds: Sequence[int] = (0,)
    plans: str = "nnUNetPlans"
    trainer_suffix: str = ""  # "_demo": the short-budget variants
    device: str = "cuda"
    num_processes: int = 2
    output_folder: Optional[str] = None
    test_images: Optional[str] = None
    test_labels: Optional[str] = None
    pretrained_weights: Optional[str] = None  # a DDPM pretraining checkpoint to use instead of pretraining here
    pretraining_trainer: str = PRETRAINER  # or a variant of it (another objective), trained here and handed over
    seeds: Sequence[int] = (DEFAULT_SEED,)
    label_draws: Sequence[int] = (0,)
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
        for name, values in (("seeds", self.seeds), ("label draws", self.label_draws)):
            if not values or len(set(values)) < len(values) or any(int(v) < 0 for v in values):
                raise BenchmarkError(f"The {name} must be distinct non-negative integers, got {list(values)}.")

    # runs
    @property
    def runs(self) -> List[Run]:
        return [Run(seed, draw) for draw in self.label_draws for seed in self.seeds]

    @property
    def plain_run(self) -> Run:
        """The run whose models are ``nnUNetv2_train``'s own (in nnUNet_results): the trainers' defaults."""
        return Run()

    def results_folder(self, run: Run) -> str:
        """The nnUNet_results of ``run``'s trainings."""
        return str(nnUNet_results) if run == self.plain_run else join(self.output_folder, "runs", run.name)

    # names and folders
    def trainer(self, method: str, budget: Union[int, str]) -> str:
        """``<Trainer><suffix>_<N>labels``; with every label, the method's trainer itself."""
        budget_suffix = "" if budget == ALL_LABELS else f"_{budget}labels"
        return f"{METHODS[method].trainer}{self.trainer_suffix}{budget_suffix}"

    @property
    def pretrainer(self) -> str:
        return self.pretraining_trainer + self.trainer_suffix

    @property
    def handed_weights(self) -> Optional[str]:
        """What the DDPM trainings get as -pretrained_weights: the given checkpoint, or the pretraining variant's
        (without one, they find nnUNetTrainerDDPMPretrain's run themselves)."""
        if self.pretrained_weights is not None or self.pretraining_trainer == PRETRAINER:
            return self.pretrained_weights
        return self.pretraining_checkpoint

    @property
    def pretraining_checkpoint(self) -> str:
        return self.pretrained_weights or join(self.model_folder(self.pretrainer, "all"), "checkpoint_final.pth")

    def model_folder(self, trainer: str, fold, run: Optional[Run] = None) -> str:
        results = self.results_folder(run) if run is not None else str(nnUNet_results)
        return model_folder(results, self.dataset_name, trainer, self.plans, self.configuration, fold)

    def prediction_folder(self, method: str, budget: int, fold: int, run: Optional[Run] = None) -> str:
        """``predictions/METHOD/BUDGET/fold_F``; another run than the plain one adds ``_seed<S>_draw<D>``."""
        suffix = "" if run is None or run == self.plain_run else f"_{run.name}"
        return join(self.output_folder, "predictions", method, budget_folder(budget), f"fold_{fold}{suffix}")

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
                                 f"-pretrained_weights to pretrain on this dataset first.")
        if not self.pretraining_trainer.startswith(PRETRAINER):
            raise BenchmarkError(f"-pretrainer {self.pretraining_trainer}: give {PRETRAINER} or a variant of it "
                                 f"(e.g. {PRETRAINER}_minSNR5).")
        probed = [m for m in self.methods if METHODS[m].probes_features]
        if probed and list(self.label_draws) != [0]:
            raise BenchmarkError(f"{probed} probe the features on draw 0 of the labelled cases; run them with "
                                 f"--label-draws 0, or use 'pixel' (the built-in stages and timesteps).")
        if probed and self.handed_weights is not None:
            raise BenchmarkError(f"{probed} probe the features of this dataset's own {PRETRAINER} run, where the pixel "
                                 f"classifier finds the choice; leave out -pretrained_weights and -pretrainer, or "
                                 f"use 'pixel' (the built-in stages and timesteps).")
        # every method's trainer has _<N>labels variants for the budgets in LABEL_BUDGETS (label_budget.py), so the
        # check needs no trainer import (which would bring torch into this process)
        missing = [self.trainer(m, b) for m in self.methods for b in self.budgets
                   if b not in LABEL_BUDGETS and b != ALL_LABELS]
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
            too_large = [b for b in self.budgets if b != ALL_LABELS and b > len(splits[fold]["train"])]
            if too_large:
                raise BenchmarkError(f"Budget(s) {too_large} exceed the {len(splits[fold]['train'])} training cases "
                                     f"of fold {fold}.")

    # the steps
    def training_step(self, trainer: str, fold, run: Optional[Run] = None) -> Step:
        """``nnUNetv2_train`` of ``trainer``; in another run than the plain one (``run``), into that run's results
        folder with its seed and draw, the DDPM methods from the grid's pretraining checkpoint."""
        run = run or self.plain_run
        command = ["nnUNetv2_train", self.dataset_name, self.configuration, str(fold), "-tr", trainer, "-p",
                   self.plans, "-device", self.device]
        baseline = METHODS[BASELINE].trainer + self.trainer_suffix
        from_pretraining = trainer not in (self.pretrainer, baseline) and not trainer.startswith(baseline + "_")
        weights = self.handed_weights if run == self.plain_run else self.pretraining_checkpoint
        step = training_step(f"train {trainer} fold {fold}" + self._run_title(run), command,
                             self.model_folder(trainer, fold, run), weights if from_pretraining else None)
        step.env = self.run_environment(run) or None
        return step

    def run_environment(self, run: Run, training: bool = True) -> dict:
        """What a command of ``run`` adds to the environment: a training's seed and draw, and its results folder;
        nothing for the plain run."""
        if run == self.plain_run:
            return {}
        return {**(run.environment if training else {}), "nnUNet_results": self.results_folder(run)}

    def _run_title(self, run: Run) -> str:
        return "" if len(self.runs) == 1 else f" ({run.name})"

    def prediction_step(self, method: str, budget: int, fold: int, cases: List[str],
                        run: Optional[Run] = None) -> Step:
        """Done when every test case's segmentation is in the folder and newer than the model: a prediction made by
        hand, by the dry run's command or by a cluster job counts; a retrained model invalidates it."""
        run = run or self.plain_run
        out = self.prediction_folder(method, budget, fold, run)
        trainer = self.trainer(method, budget)
        command = ["nnUNetv2_predict", "-i", self.test_images, "-o", out, "-d", self.dataset_name, "-c",
                   self.configuration, "-p", self.plans, "-f", str(fold), "-tr", trainer, "-device", self.device,
                   "-npp", str(self.num_processes), "-nps", str(self.num_processes)]
        model = join(self.model_folder(trainer, fold, run), "checkpoint_final.pth")
        files = [join(out, case + self.file_ending) for case in cases]
        return Step(f"predict {len(cases)} test cases with {trainer} fold {fold}" + self._run_title(run), command,
                    lambda: all(up_to_date(f, model) for f in files),
                    env=self.run_environment(run, training=False) or None)

    def evaluation_step(self, method: str, budget: int, fold: int, cases: List[str], prediction: Step,
                        run: Optional[Run] = None) -> Step:
        """Done when the prediction is and evaluation.json is newer than every segmentation it scores."""
        run = run or self.plain_run
        out = self.prediction_folder(method, budget, fold, run)
        command = ["nnUNetv2_ddpm_evaluate_predictions", "-i", out, "-ref", self.test_labels, "-d",
                   self.dataset_name, "-p", self.plans, "-np", str(self.num_processes)]
        files = [join(out, case + self.file_ending) for case in cases]
        return Step(f"evaluate {method} {budget} labels fold {fold}" + self._run_title(run), command,
                    lambda: prediction.is_done() and up_to_date(join(out, EVALUATION_FILE), *files))

    @property
    def file_ending(self) -> str:
        return load_json(join(str(nnUNet_preprocessed), self.dataset_name, "dataset.json"))["file_ending"]

    def pretraining_steps(self) -> List[Step]:
        return [self.training_step(self.pretrainer, "all")] if self.trains_pretraining else []

    def probe_step(self, budget: Union[int, str]) -> Step:
        """``nnUNetv2_ddpm_probe_features`` on the first fold's N labelled cases, writing the choice that the
        ``_<N>labels`` pixel classifiers of every fold read (nnU-Net builds one network for all folds of a model
        folder); with every label, on all of the fold's training cases, for the trainer without a budget. Done when
        the choice is newer than the pretraining checkpoint."""
        from nnunet_ddpm.features.probe import choice_file
        budgeted = budget != ALL_LABELS
        pretraining = self.model_folder(self.pretrainer, "all")
        command = ["nnUNetv2_ddpm_probe_features", "-d", self.dataset_name, "-c", self.configuration, "-f",
                   str(self.folds[0]), *(["--budget", str(budget)] if budgeted else []), "-p", self.plans, "-tr",
                   self.pretrainer]
        choice = join(pretraining, choice_file(budget if budgeted else None))
        checkpoint = join(pretraining, "checkpoint_final.pth")
        return Step(f"probe decoder features on {budget} labelled cases of fold {self.folds[0]}", command,
                    lambda: up_to_date(choice, checkpoint))

    def splits_step(self) -> Step:
        """nnU-Net's 5-fold split, as the first training would write it: the probe runs before any training and
        reads only the fold's training cases."""
        splits = join(str(nnUNet_preprocessed), self.dataset_name, "splits_final.json")
        return Step("write nnU-Net's folds (splits_final.json)", ["nnUNetv2_ddpm_make_splits", "-d",
                                                                   self.dataset_name], lambda: isfile(splits))

    def cell(self, method: str, budget: int, fold: int, cases: List[str], run: Optional[Run] = None) -> "Cell":
        run = run or self.plain_run
        prediction = self.prediction_step(method, budget, fold, cases, run)
        probe = [self.splits_step(), self.probe_step(budget)] if METHODS[method].probes_features else []
        return Cell(method, budget, fold, probe + [
            self.training_step(self.trainer(method, budget), fold, run), prediction,
            self.evaluation_step(method, budget, fold, cases, prediction, run)],
            needs_pretraining=self.trains_pretraining and method != BASELINE, run=run,
            suffix="" if len(self.runs) == 1 else f"_{run.name}")

    def cells(self, cases: List[str]) -> List["Cell"]:
        """One cell per run, budget, fold and method, in the order one machine runs them (every method of a run
        before the next run, so that an interrupted grid has complete comparisons)."""
        return [self.cell(method, budget, fold, cases, run) for run in self.runs
                for budget in self.budgets for fold in self.folds for method in self.methods]

    def steps(self, cases: List[str]) -> List[Step]:
        """Everything in the order one machine runs it."""
        return self.pretraining_steps() + [step for cell in self.cells(cases) for step in cell.steps]

    def command_line(self, *extra: str) -> List[str]:
        """``nnUNetv2_ddpm_benchmark`` with this grid's options (the report step of a dry run or a cluster run)."""
        command = ["nnUNetv2_ddpm_benchmark", "-d", self.dataset_name, "-c", self.configuration, "-p", self.plans,
                   "--methods", *self.methods, "--budgets", *map(str, self.budgets), "-f",
                   *map(str, self.folds), "-device", self.device, "-np", str(self.num_processes), "-o",
                   self.output_folder, "--test-images", self.test_images, "--test-labels", self.test_labels]
        if self.trainer_suffix:
            command += ["--trainer-suffix", self.trainer_suffix]
        if self.pretrained_weights is not None:
            command += ["-pretrained_weights", self.pretrained_weights]
        if self.pretraining_trainer != PRETRAINER:
            command += ["-pretrainer", self.pretraining_trainer]
        if self.runs != [Run()]:
            command += ["--seeds", *map(str, self.seeds), "--label-draws", *map(str, self.label_draws)]
        return command + list(extra)

    def missing_evaluations(self, cases: List[str]) -> List[str]:
        return [cell.name for cell in self.cells(cases) if not cell.steps[-1].is_done()]


@dataclass
class Cell:
    """One method at one label budget and fold: the unit a cluster job runs."""
    method: str
    budget: int
    fold: int
    steps: List[Step]
    needs_pretraining: bool  # must wait for the pretraining trained in this grid
    run: Run = Run()
    suffix: str = ""  # the run's name where the grid has several

    @property
    def name(self) -> str:
        return f"{self.method}_{self.budget}labels_fold{self.fold}{self.suffix}"

    def is_done(self) -> bool:
        return all(step.is_done() for step in self.steps)
