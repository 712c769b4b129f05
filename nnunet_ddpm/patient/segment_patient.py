"""``nnUNetv2_ddpm_segment_patient``: annotate a few slices of one volume, get the whole volume segmented.

The practical use case of Alshenoudy et al. (AIAI 2023): a clinician labels a handful of tumour slices of one patient;
a DDPM pretrained on every slice of that patient (or on a larger dataset with the same channels) is fine-tuned, or
carries pixel classifiers, on the labelled slices and segments all other slices. Every step is a real nnU-Net command
run in a self-contained working folder (its own nnUNet_raw / _preprocessed / _results), on fold ``all`` (a handful of
slices is too few for five folds), with the short-budget ``*_demo`` trainers whose length comes from environment
variables. Finished steps are skipped when the command runs again; an interrupted training resumes with ``--c``.
The result is written on exactly the input's grid: ``segmentation_<method>.nii.gz``, ``uncertainty_pixel.nii.gz``
(entropy of the pixel-classifier ensemble's mean), ``montage_<method>.png`` and ``summary.json``.
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, maybe_mkdir_p, \
    save_json

import nnunet_ddpm
from nnunet_ddpm.benchmark.runner import METHOD_TITLES, METHODS
from nnunet_ddpm.cli import require_writable_folder
from nnunet_ddpm.nnunet_trainers import TRAINER_DIR
from nnunet_ddpm.patient.evaluation import dice_per_label
from nnunet_ddpm.patient.inputs import PatientInput, PatientInputError, read_patient
from nnunet_ddpm.patient.montage import write_montage
from nnunet_ddpm.patient.volume_slices import (PATIENT_RECORD, segmentation_volume, uncertainty_volume,
                                               write_like, write_patient_dataset)

DATASET_ID, DATASET_NAME = 800, "Dataset800_Patient"
CONFIGURATION, PLANS = "2d", "nnUNetPlans"
TRAINER_SUFFIX = "_demo"  # the variants whose budget comes from nnUNet_ddpm_demo_* (demo_budget.py)
PRETRAINER = "nnUNetTrainerDDPMPretrain" + TRAINER_SUFFIX
SUMMARY = "summary.json"


class StepFailed(RuntimeError):
    pass


@dataclass
class Budget:
    """Training length of the ``_demo`` trainers. With the defaults, fine-tuning for one real BraTS patient at 128 x 128
    took 3.5 minutes on an idle 2-core CPU (documentation/patient.md); it is far below the paper's budgets."""
    epochs: int = 4
    pretrain_epochs: int = 6
    iterations: int = 10

    def describe(self) -> str:
        return (f"DDPM pretraining {self.pretrain_epochs} epochs x {self.iterations} iterations, each method "
                f"{self.epochs} epochs x {self.iterations} iterations")


def environment(root: str, budget: Budget) -> dict:
    """nnU-Net folders inside the working folder, the plugin's trainers, the budget; subprocesses import this copy of
    nnunet_ddpm (the one running now) first."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(nnunet_ddpm.__file__)))
    env = dict(os.environ)
    env.update(nnUNet_raw=join(root, "nnUNet_raw"), nnUNet_preprocessed=join(root, "nnUNet_preprocessed"),
               nnUNet_results=join(root, "nnUNet_results"),
               nnUNet_extTrainer=os.pathsep.join(p for p in (TRAINER_DIR, os.environ.get("nnUNet_extTrainer")) if p),
               PYTHONPATH=os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p),
               nnUNet_ddpm_demo_epochs=str(budget.epochs), nnUNet_ddpm_demo_iterations=str(budget.iterations),
               nnUNet_ddpm_demo_pretrain_epochs=str(budget.pretrain_epochs),
               # fold "all" validates on its own training slices: nothing to learn from, and its export workers cost
               # about 25 s per training on 2 cores; the annotated slices are scored from the prediction instead
               nnUNet_ddpm_demo_skip_validation="1")
    env.setdefault("nnUNet_def_n_proc", "1")
    env.pop("nnUNet_n_proc_DA", None)  # plan_and_preprocess refuses 0 (DESIGN.md); run_steps sets it for training
    return env


def trainer_name(method: str) -> str:
    return METHODS[method] + TRAINER_SUFFIX


def check_pretrained_weights(path: str, num_channels: int) -> str:
    """The plans file nnU-Net wrote beside the pretraining's fold folder; refuses a checkpoint that is unreadable,
    not a DDPM pretraining or made for another number of channels."""
    from nnunet_ddpm.training.pretrained_checkpoint import PretrainingCheckpointError, load_checkpoint_file
    try:
        checkpoint = load_checkpoint_file(path)
    except PretrainingCheckpointError as e:
        raise PatientInputError(str(e)) from None
    channels = checkpoint["ddpm"].get("num_input_channels")
    if channels != num_channels:
        raise PatientInputError(f"The pretrained checkpoint {path} was trained on {channels} input channels, this "
                                f"patient has {num_channels} images. Give one image per channel the pretraining used "
                                f"(in its order), or leave out --pretrained-weights to pretrain on this patient.")
    plans = join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "plans.json")
    if not isfile(plans):
        raise PatientInputError(f"No plans.json beside the pretraining run of {path} (expected {plans}, which "
                                f"nnUNetv2_train writes). The patient's slices are preprocessed with those plans so "
                                f"that the network fits the weights.")
    if CONFIGURATION not in load_json(plans)["configurations"]:
        raise PatientInputError(f"{plans} has no '{CONFIGURATION}' configuration; a 2D pretraining is needed.")
    return plans


# ----------------------------------------------------------------------------------------------------------------
# steps


@dataclass
class Step:
    title: str
    command: Optional[List[str]]  # a console command, or None for ``in_process``
    done: Callable[[], bool]
    marker: Optional[str] = None  # written after success, for steps without a natural result file
    in_process: Optional[Callable[[], None]] = None


def _marker_done(marker: str, *sources: str) -> bool:
    """The marker exists and is newer than every source (a retrained model invalidates its prediction)."""
    return isfile(marker) and all(isfile(s) and os.path.getmtime(marker) >= os.path.getmtime(s) for s in sources)


def _train_step(root: str, trainer: str, device: str, pretrained_weights: Optional[str]) -> Step:
    folder = join(root, "nnUNet_results", DATASET_NAME, f"{trainer}__{PLANS}__{CONFIGURATION}", "fold_all")
    command = ["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, "all", "-tr", trainer, "-device", device]
    if any(isfile(join(folder, f"checkpoint_{k}.pth")) for k in ("latest", "best")):
        command.append("--c")  # interrupted earlier: resume
    elif pretrained_weights:
        command += ["-pretrained_weights", pretrained_weights]
    final = join(folder, "checkpoint_final.pth")
    return Step(f"train {trainer} on the annotated slices" if trainer != PRETRAINER else
                "DDPM pretraining on every slice of the patient", command, lambda: isfile(final))


def build_steps(root: str, methods: Sequence[str], device: str, pretrained_weights: Optional[str],
                pretrained_plans: Optional[str], has_unannotated: bool, tta: bool) -> List[Step]:
    steps_folder = join(root, "steps")
    preprocessed = join(root, "nnUNet_preprocessed", DATASET_NAME)
    planned = join(steps_folder, "preprocessed.done")
    python = sys.executable
    steps = []
    if pretrained_plans is None:
        steps.append(Step("plan and preprocess the annotated slices",
                          ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", "1",
                           "-npfp", "1"], lambda: isfile(planned), planned))
    else:
        fingerprint = join(preprocessed, "dataset_fingerprint.json")
        steps.append(Step("fingerprint the annotated slices",
                          ["nnUNetv2_extract_fingerprint", "-d", str(DATASET_ID), "-np", "1"],
                          lambda: isfile(fingerprint)))
        # the pretraining's plans, so that the network fits its weights (what nnUNetv2_move_plans_between_datasets
        # does, from a plans file instead of a preprocessed dataset)
        plans = join(preprocessed, f"{PLANS}.json")
        steps.append(Step("take the plans of the pretrained checkpoint", None, lambda: isfile(plans),
                          in_process=lambda: copy_plans(pretrained_plans, plans,
                                                        join(root, "nnUNet_raw", DATASET_NAME, "dataset.json"))))
        steps.append(Step("preprocess the annotated slices with those plans",
                          ["nnUNetv2_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", "1"],
                          lambda: isfile(planned), planned))
    ddpm_methods = [m for m in methods if m != "baseline"]
    if ddpm_methods and pretrained_weights is None:
        if has_unannotated:
            unlabeled = join(steps_folder, "unlabeled.done")
            # run as a module: the same nnunet_ddpm as this process, installed or not
            steps.append(Step("preprocess the unannotated slices for the pretraining",
                              [python, "-c", "from nnunet_ddpm.cli import preprocess_unlabeled_entry as main; main()",
                               "-d", str(DATASET_ID), "-c", CONFIGURATION], lambda: _marker_done(unlabeled, planned),
                              unlabeled))
        steps.append(_train_step(root, PRETRAINER, device, None))
    for method in methods:
        trainer = trainer_name(method)
        steps.append(_train_step(root, trainer, device, None if method == "baseline" else pretrained_weights))
        output = join(root, "predictions", method)
        model = join(root, "nnUNet_results", DATASET_NAME, f"{trainer}__{PLANS}__{CONFIGURATION}", "fold_all",
                     "checkpoint_final.pth")
        marker = join(output, "prediction_done.json")
        command = ["nnUNetv2_predict", "-i", join(root, "nnUNet_raw", DATASET_NAME, "imagesTs"), "-o", output,
                   "-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", "all", "-tr", trainer, "-device", device,
                   "-npp", "1", "-nps", "1"]
        command += [] if tta else ["--disable_tta"]
        command += ["--save_probabilities"] if method == "pixel" else []
        steps.append(Step(f"predict every slice with {trainer}", command,
                          lambda marker=marker, model=model: _marker_done(marker, model), marker))
    return steps


def run_steps(steps: List[Step], env: dict, root: str, log=print) -> dict:
    """Run the steps that are not done; returns {step title: seconds} of those that ran."""
    seconds = {}
    logs = join(root, "logs")
    maybe_mkdir_p(logs)
    todo = [s for s in steps if not s.done()]
    log(f"{len(steps)} steps, {len(steps) - len(todo)} already done")
    for number, step in enumerate(todo, 1):
        log_file = join(logs, f"{time.strftime('%Y%m%d_%H%M%S')}_{number:02d}.log")
        if step.command is None:
            log(f"[{number}/{len(todo)}] {step.title}")
            step.in_process()
            continue
        log(f"[{number}/{len(todo)}] {step.title}\n      $ {shlex.join(step.command)}\n      (log: {log_file})")
        start = time.time()
        with open(join(root, "commands.txt"), "a") as f:
            f.write(shlex.join(step.command) + "\n")
        env_step = env
        if step.command[0] in ("nnUNetv2_train", "nnUNetv2_predict"):
            # augmentation in-process unless the user says otherwise: reproducible, and cheap for 2D slices
            env_step = env | {"nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0")}
        with open(log_file, "w") as handle:
            code = subprocess.call(step.command, env=env_step, stdout=handle, stderr=subprocess.STDOUT)
        if code != 0:
            tail = "".join(open(log_file).readlines()[-30:])
            raise StepFailed(f"{step.title} failed (exit code {code}); end of {log_file}:\n{tail}\nFix the cause and "
                             f"run the same command again: finished steps are skipped, a training resumes.")
        if step.marker:
            maybe_mkdir_p(os.path.dirname(step.marker))
            save_json({"command": step.command, "seconds": round(time.time() - start, 1)}, step.marker)
        seconds[step.title] = round(time.time() - start, 1)
        log(f"      done in {seconds[step.title]:.0f} s")
    return seconds


# ----------------------------------------------------------------------------------------------------------------
# the whole command


REQUEST_KEYS = ("image_files", "annotation_file", "axis", "size", "slice_range", "annotated", "labels", "order",
                "pretrained_weights")


def prepare_dataset(patient: PatientInput, root: str, size: Optional[Sequence[int]], order: int,
                    pretrained_weights: Optional[str]) -> dict:
    """Write the patient's slice dataset, or reuse the one from an earlier run of the same request."""
    target = join(root, "nnUNet_raw", DATASET_NAME)
    record_file = join(target, PATIENT_RECORD)
    request = {"image_files": patient.image_files, "annotation_file": patient.annotation_file, "axis": patient.axis,
               "size": list(size) if size else [s for i, s in enumerate(patient.annotation.shape) if i !=
                                                patient.axis],
               "slice_range": list(patient.slice_range), "annotated": patient.annotated, "labels": patient.labels,
               "order": order, "pretrained_weights": pretrained_weights}
    if isfile(record_file):
        record = load_json(record_file)
        differing = [k for k in REQUEST_KEYS if record.get(k) != request[k]]
        if differing:
            raise PatientInputError(f"{root} holds the run of another input (it differs in {', '.join(differing)}). "
                                    f"Choose a new output folder (-o), or delete this one.")
        return record
    return write_patient_dataset(patient, target, request["size"], order,
                                 extra_record={"pretrained_weights": pretrained_weights})


def segment_patient(patient: PatientInput, output: str, methods: Sequence[str] = ("finetune",),
                    size: Optional[Sequence[int]] = (128, 128), budget: Budget = Budget(), device: str = "cpu",
                    pretrained_weights: Optional[str] = None, tta: bool = False, order: int = 1,
                    keep_annotations: bool = True, log=print) -> dict:
    """Run (or finish) everything in ``output``; returns the summary (also ``output/summary.json``)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise PatientInputError(f"Unknown or no method(s) {unknown}; choose from {sorted(METHODS)}.")
    pretrained_plans = None
    if pretrained_weights:
        pretrained_weights = os.path.abspath(pretrained_weights)
        pretrained_plans = check_pretrained_weights(pretrained_weights, len(patient.image_files))
    root = os.path.abspath(output)
    maybe_mkdir_p(root)
    start = time.time()
    record = prepare_dataset(patient, root, size, order, pretrained_weights)
    log(f"Patient: {len(patient.image_files)} channels, volume {tuple(patient.annotation.shape)}, axis {patient.axis}: "
        f"{len(record['annotated'])} annotated slices {record['annotated']}, {len(record['segmented'])} slices to "
        f"segment at {record['size'][0]} x {record['size'][1]} pixels ({len(record['empty'])} empty slices are "
        f"background).")
    log(f"Budget: {budget.describe()} (--epochs, --pretrain-epochs, --iterations for more). Device: {device}.")
    steps = build_steps(root, methods, device, pretrained_weights, pretrained_plans, bool(record["unannotated"]), tta)
    step_seconds = run_steps(steps, environment(root, budget), root, log)
    summary = {"inputs": {"images": patient.image_files, "annotation": patient.annotation_file},
               "axis": patient.axis, "annotated_slices": record["annotated"],
               "segmented_slices": [record["segmented"][0], record["segmented"][-1]] if record["segmented"] else [],
               "empty_slices": len(record["empty"]), "size": record["size"], "budget": asdict(budget),
               "budget_text": budget.describe(), "device": device, "test_time_augmentation": tta,
               "pretrained_weights": pretrained_weights, "labels": patient.labels, "methods": {}}
    if isfile(join(root, SUMMARY)):  # keep the methods of earlier runs in this folder
        summary["methods"] = load_json(join(root, SUMMARY)).get("methods", {})
    for method in methods:
        summary["methods"][method] = write_outputs(patient, record, root, method, keep_annotations)
        dice = summary["methods"][method]["dice_on_annotated_slices"]
        log(f"{METHOD_TITLES[method]}: {summary['methods'][method]['segmentation']} (the model's Dice on the "
            f"annotated slices: " + ", ".join(f"{k} {v}" for k, v in dice.items()) + ")")
    summary["seconds_this_run"] = round(time.time() - start, 1)
    summary["step_seconds_this_run"] = step_seconds
    save_json(summary, join(root, SUMMARY), sort_keys=False)
    return summary


def write_outputs(patient: PatientInput, record: dict, root: str, method: str, keep_annotations: bool = True) -> dict:
    """Segmentation (and uncertainty) volumes on the input grid, the montage, Dice on the annotated slices.

    The model's own Dice on the annotated slices is reported (a sanity check: it saw them in training); with
    ``keep_annotations`` the written segmentation then carries the user's labels on those slices, as a clinician
    expects of the slices they drew.
    """
    predictions = join(root, "predictions", method)
    segmentation = segmentation_volume(predictions, record)
    axis = patient.axis
    model_dice = dice_per_label(segmentation, patient.annotation, patient.labels, record["annotated"], axis)
    if keep_annotations:
        index = [slice(None)] * segmentation.ndim
        index[axis] = record["annotated"]
        segmentation[tuple(index)] = patient.annotation[tuple(index)].astype(segmentation.dtype)
    files = {"segmentation": join(root, f"segmentation_{method}.nii.gz"),
             "montage": join(root, f"montage_{method}.png")}
    write_like(segmentation, patient.reference, files["segmentation"])
    uncertainty = uncertainty_volume(predictions, record, patient.regions_class_order is not None)
    if uncertainty is not None:
        files["uncertainty"] = join(root, f"uncertainty_{method}.nii.gz")
        write_like(uncertainty, patient.reference, files["uncertainty"])
    write_montage(np.moveaxis(patient.images[0], axis, 0), np.moveaxis(segmentation, axis, 0), record["annotated"],
                  record["segmented"], files["montage"],
                  f"{METHOD_TITLES[method]}: {os.path.basename(patient.image_files[0])}, annotated slices in red")
    voxel_ml = float(np.prod(patient.spacing)) / 1000
    return {**files,
            "dice_on_annotated_slices": model_dice, "annotated_slices_from": "annotation" if keep_annotations
            else "model",
            "foreground_ml": round(float((segmentation > 0).sum()) * voxel_ml, 2)}


def copy_plans(source: str, target: str, raw_dataset_json: str) -> None:
    """Write a pretraining's plans as the patient dataset's plans (dataset name changed, all else kept), with the
    dataset.json beside them that ``nnUNetv2_preprocess`` reads (nnU-Net's planner copies it there)."""
    plans = load_json(source)
    plans["dataset_name"] = DATASET_NAME
    plans["plans_name"] = PLANS
    maybe_mkdir_p(os.path.dirname(target))
    shutil.copy(raw_dataset_json, join(os.path.dirname(target), "dataset.json"))
    save_json(plans, target, sort_keys=False)


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: Optional[Sequence[str]] = None) -> None:
    default = Budget()
    parser = argparse.ArgumentParser(
        description="Segment a whole 3D volume from a few annotated slices (Alshenoudy et al. 2023): builds the "
                    "patient's 2D slice dataset, pretrains a DDPM on all its slices (or uses --pretrained-weights), "
                    "trains the chosen method on the annotated slices, predicts every slice and writes the "
                    "segmentation on the input's grid. Re-running skips finished steps.")
    parser.add_argument("-i", nargs="+", required=True, help="channel images (one 3D file each, in channel order), or "
                                                             "a folder with one case's CASE_0000.nii.gz, ... files")
    parser.add_argument("-a", required=True, help="label volume on the same grid: labels on the annotated slices")
    parser.add_argument("-o", required=True, help="working and output folder")
    parser.add_argument("--slices", type=int, nargs="+", default=None, help="indices of the annotated slices")
    parser.add_argument("--ignore-value", type=int, default=None,
                        help="value of unannotated voxels (nnU-Net's ignore label); slices without it are annotated")
    parser.add_argument("--require-foreground", action="store_true",
                        help="refuse annotated slices without any foreground label (tumour slices were meant)")
    parser.add_argument("--axis", type=int, default=0, help="array axis of the slices (0: axial for BraTS; default)")
    parser.add_argument("--slice-range", type=int, nargs=2, metavar=("START", "STOP"), default=None,
                        help="segment and pretrain on slices START..STOP-1 only (default: all)")
    parser.add_argument("--methods", nargs="+", default=["finetune"],
                        help=f"from {sorted(m for m in METHODS if m != 'baseline')} (default: %(default)s)")
    parser.add_argument("--baseline", action="store_true", help="also train the supervised nnU-Net for comparison")
    parser.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("ROWS", "COLUMNS"),
                        help="in-plane size the slices are resampled to (default: 128 128, the paper's)")
    parser.add_argument("--epochs", type=int, default=default.epochs, help="epochs per method (default: %(default)s)")
    parser.add_argument("--pretrain-epochs", type=int, default=default.pretrain_epochs,
                        help="DDPM pretraining epochs (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=default.iterations,
                        help="iterations per epoch (default: %(default)s)")
    parser.add_argument("--pretrained-weights", default=None,
                        help="checkpoint_final.pth of a 2D nnUNetTrainerDDPMPretrain(_demo) run with the same channels "
                             "(e.g. on a larger dataset); its plans are used and no pretraining runs here")
    parser.add_argument("--dataset-json", default=None,
                        help="nnU-Net dataset.json to take channel names and labels / regions from (default: plain "
                             "labels 0..max of the annotation)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: cuda if available, else cpu)")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (slower)")
    parser.add_argument("--model-on-annotated", action="store_true",
                        help="write the model's prediction on the annotated slices too (default: the annotation)")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods if m != "baseline"] + (["baseline"] if args.baseline or "baseline" in
                                                                            args.methods else [])
    for name in ("epochs", "pretrain_epochs", "iterations"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if min(args.size) < 8:
        parser.error(f"--size must be at least 8 x 8 pixels, got {args.size}")
    require_writable_folder("nnUNetv2_ddpm_segment_patient", args.o)
    try:
        if args.pretrained_weights and not isfile(args.pretrained_weights):
            raise PatientInputError(f"--pretrained-weights {args.pretrained_weights} does not exist.")
        patient = read_patient(args.i, args.a, args.axis, args.slices, args.ignore_value, args.slice_range,
                               args.require_foreground, args.dataset_json)
        summary = segment_patient(patient, args.o, methods, args.size,
                                  Budget(args.epochs, args.pretrain_epochs, args.iterations),
                                  args.device or default_device(), args.pretrained_weights, args.tta,
                                  keep_annotations=not args.model_on_annotated)
    except (PatientInputError, StepFailed) as e:
        sys.exit(f"nnUNetv2_ddpm_segment_patient: {e}")
    print(f"Summary: {join(os.path.abspath(args.o), SUMMARY)} (budget: {summary['budget_text']})")


if __name__ == "__main__":
    main()
