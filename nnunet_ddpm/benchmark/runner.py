"""``nnUNetv2_ddpm_benchmark``: the paper's comparison (methods x label budgets x folds) through the real nnU-Net
commands, evaluated on a held-out labelled test set, aggregated into a report (``report.py``).

Every step is a console command (``nnUNetv2_train``, ``nnUNetv2_predict``) or an in-process evaluation, and knows
whether its result already exists, so a re-run skips finished work; an interrupted training resumes with ``--c``.
``--dry-run`` prints the commands of the missing steps, in order, exactly as they would run (for a cluster); every
command that runs is appended to ``commands.txt`` in the output folder.
"""
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, save_json, subfiles
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw, nnUNet_results
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

from nnunet_ddpm.cli import require_writable_folder
from nnunet_ddpm.splits.label_budget import LABEL_BUDGETS
from nnunet_ddpm.training.variants.label_budget import LABEL_BUDGET_TRAINERS

METHODS = {  # method name -> trainer class name (before the budget suffix)
    "baseline": "nnUNetTrainer",
    "finetune": "nnUNetTrainerDDPMFinetune",
    "frozen": "nnUNetTrainerDDPMFinetuneFrozenEncoder",
    "pixel": "nnUNetTrainerDDPMPixelClassifier",
    "finetune_encoderlr": "nnUNetTrainerDDPMFinetune_encoderLR0p1",
    "finetune_warmup": "nnUNetTrainerDDPMFinetune_warmup",
    "init": "nnUNetTrainerDDPMInit",
    "pixel_defaultfeatures": "nnUNetTrainerDDPMPixelClassifier_defaultFeatures",
}
METHOD_TITLES = {"baseline": "nnU-Net (supervised)", "finetune": "DDPM fine-tune",
                 "frozen": "DDPM fine-tune, frozen encoder", "pixel": "DDPM pixel classifier",
                 "finetune_encoderlr": "DDPM fine-tune, encoder at 0.1 x lr",
                 "finetune_warmup": "DDPM fine-tune, lr 1e-3 with warm-up",
                 "init": "nnU-Net from folded DDPM weights",
                 "pixel_defaultfeatures": "DDPM pixel classifier, built-in features"}
PRETRAINER = "nnUNetTrainerDDPMPretrain"
DONE_MARKER = "prediction_done.json"


class BenchmarkError(ValueError):
    """Bad input, found before anything is trained."""


@dataclass
class Step:
    description: str
    command: Optional[List[str]]  # console command, or None for an in-process step
    is_done: Callable[[], bool]
    run_in_process: Optional[Callable[[], None]] = None
    after: Optional[Callable[[], None]] = None  # bookkeeping once the command succeeded


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
        return f"{METHODS[method]}{self.trainer_suffix}_{budget}labels"

    @property
    def pretrainer(self) -> str:
        return PRETRAINER + self.trainer_suffix

    def model_folder(self, trainer: str, fold) -> str:
        return join(str(nnUNet_results), self.dataset_name, f"{trainer}__{self.plans}__{self.configuration}",
                    f"fold_{fold}")

    def prediction_folder(self, method: str, budget: int, fold: int) -> str:
        return join(self.output_folder, "predictions", method, f"{budget}labels", f"fold_{fold}")

    @property
    def needs_pretraining(self) -> bool:
        return any(m != "baseline" for m in self.methods)

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
    def train_command(self, trainer: str, fold) -> List[str]:
        command = ["nnUNetv2_train", self.dataset_name, self.configuration, str(fold), "-tr", trainer, "-p",
                   self.plans, "-device", self.device]
        folder = self.model_folder(trainer, fold)
        if any(isfile(join(folder, f"checkpoint_{k}.pth")) for k in ("latest", "best")):
            command.append("--c")  # an interrupted run: resume it
        elif self.pretrained_weights is not None and trainer != self.pretrainer and not trainer.startswith(
                METHODS["baseline"] + self.trainer_suffix + "_"):
            command += ["-pretrained_weights", self.pretrained_weights]
        return command

    def training_step(self, trainer: str, fold) -> Step:
        final = join(self.model_folder(trainer, fold), "checkpoint_final.pth")
        return Step(f"train {trainer} fold {fold}", self.train_command(trainer, fold), lambda: isfile(final))

    def prediction_step(self, method: str, budget: int, fold: int, cases: List[str], training: Step) -> Step:
        out = self.prediction_folder(method, budget, fold)
        trainer = self.trainer(method, budget)
        command = ["nnUNetv2_predict", "-i", self.test_images, "-o", out, "-d", self.dataset_name, "-c",
                   self.configuration, "-p", self.plans, "-f", str(fold), "-tr", trainer, "-device", self.device,
                   "-npp", str(self.num_processes), "-nps", str(self.num_processes)]
        marker = join(out, DONE_MARKER)
        model = join(self.model_folder(trainer, fold), "checkpoint_final.pth")
        return Step(f"predict {len(cases)} test cases with {trainer} fold {fold}", command,
                    lambda: training.is_done() and _up_to_date(marker, model),
                    after=lambda: save_json({"cases": cases, "trainer": trainer, "fold": fold}, marker))

    def evaluation_step(self, method: str, budget: int, fold: int, prediction: Step) -> Step:
        from nnunet_ddpm.benchmark.evaluation import EVALUATION_FILE, evaluate_prediction_folder
        out = self.prediction_folder(method, budget, fold)
        return Step(f"evaluate {method} {budget} labels fold {fold}", None,
                    lambda: prediction.is_done() and _up_to_date(join(out, EVALUATION_FILE), join(out, DONE_MARKER)),
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


def _up_to_date(result: str, source: str) -> bool:
    """``result`` exists and was written after ``source`` (a retrained model invalidates its predictions, ...)."""
    return isfile(result) and isfile(source) and os.path.getmtime(result) >= os.path.getmtime(source)


def dry_run(benchmark: Benchmark) -> List[str]:
    """The commands of the missing steps, one shell line each, in the order they would run."""
    cases = benchmark.check()
    return [shlex.join(s.command) for s in benchmark.steps(cases) if s.command is not None and not s.is_done()]


def run(benchmark: Benchmark, log=print) -> dict:
    """Run what is missing, then write the report; returns the report dict."""
    from nnunet_ddpm.benchmark.report import write_report
    cases = benchmark.check()
    os.makedirs(join(benchmark.output_folder, "logs"), exist_ok=True)
    steps = benchmark.steps(cases)
    todo = [s for s in steps if not s.is_done()]
    log(f"{benchmark.dataset_name} {benchmark.configuration}: {len(steps)} steps, {len(steps) - len(todo)} already "
        f"done, {len(todo)} to run; methods {list(benchmark.methods)}, budgets {list(benchmark.budgets)}, folds "
        f"{list(benchmark.folds)}, {len(cases)} test cases. Output: {benchmark.output_folder}")
    start = time.time()
    for index, step in enumerate(todo, 1):
        log(f"[{index}/{len(todo)}] {step.description} (elapsed {time.time() - start:.0f} s)")
        if step.command is None:
            step.run_in_process()
            continue
        _run_command(step, benchmark.output_folder, index)
        if step.after is not None:
            step.after()
    return write_report(benchmark, cases)


def _run_command(step: Step, output_folder: str, index: int) -> None:
    with open(join(output_folder, "commands.txt"), "a") as f:
        f.write(shlex.join(step.command) + "\n")
    log_file = join(output_folder, "logs", f"{time.strftime('%Y%m%d_%H%M%S')}_{index:03d}.log")
    with open(log_file, "w") as f:
        result = subprocess.run(step.command, stdout=f, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        with open(log_file) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{shlex.join(step.command)} failed (exit code {result.returncode}); full log: "
                           f"{log_file}\n{tail}\nFix the cause and run the benchmark again: finished steps are "
                           f"skipped, an interrupted training resumes.")


def benchmark_entry():
    import argparse
    parser = argparse.ArgumentParser(
        description="Compare DDPM fine-tuning, its frozen-encoder variant and the pixel classifier with the "
                    "supervised nnU-Net over label budgets and folds: train what is missing (pretraining once), "
                    "predict and evaluate the held-out test set, write CSV/JSON/Markdown/PNG. Re-running skips "
                    "finished work. Needs nnUNet_raw/_preprocessed/_results and nnUNet_extTrainer set "
                    "(export nnUNet_extTrainer=$(nnUNetv2_ddpm_trainer_dir)).")
    parser.add_argument("-d", required=True, help="dataset name or id (planned and preprocessed)")
    parser.add_argument("-c", default="2d", help="configuration (default: %(default)s)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=["baseline", "finetune", "pixel"],
                        help=f"from {sorted(METHODS)} (default: %(default)s)")
    parser.add_argument("--budgets", nargs="+", type=int, default=[10, 20, 30, 40, 50],
                        help="labelled training cases per fold (default: the paper's %(default)s)")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="default: %(default)s")
    parser.add_argument("--trainer-suffix", default="", help="e.g. _demo for the short-budget trainers")
    parser.add_argument("--device", default="cuda", help="cuda, cpu or mps (default: %(default)s)")
    parser.add_argument("--np", type=int, default=2, help="processes for prediction and evaluation (default: 2)")
    parser.add_argument("-o", default=None, help="output folder (default: $nnUNet_results/DATASET/"
                                                 "nnunet_ddpm_benchmark__PLANS__CONFIG)")
    parser.add_argument("--test-images", default=None, help="default: $nnUNet_raw/DATASET/imagesTs")
    parser.add_argument("--test-labels", default=None, help="default: $nnUNet_raw/DATASET/labelsTs")
    parser.add_argument("--pretrained-weights", default=None,
                        help="DDPM pretraining checkpoint to start the DDPM methods from (e.g. pretrained on a larger "
                             "dataset with the same channels and plans) instead of pretraining on this dataset")
    parser.add_argument("--dry-run", action="store_true", help="print the commands of the missing steps and exit")
    args = parser.parse_args()
    try:
        benchmark = Benchmark(args.d, args.c, args.methods, args.budgets, args.folds, args.p, args.trainer_suffix,
                              args.device, args.np, args.o, args.test_images, args.test_labels,
                              args.pretrained_weights)
        if args.dry_run:
            print("\n".join(dry_run(benchmark)))
            return
        require_writable_folder("nnUNetv2_ddpm_benchmark", benchmark.output_folder)
        report = run(benchmark)
    except (BenchmarkError, RuntimeError) as e:
        sys.exit(f"nnUNetv2_ddpm_benchmark: {e}")
    print(report["markdown"])
    print(f"Report: {report['files']}")
