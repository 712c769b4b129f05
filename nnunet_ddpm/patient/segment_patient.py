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
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, maybe_mkdir_p, \
    save_json

from nnunet_ddpm.comparison.methods import METHODS, title
from nnunet_ddpm.folders import require_writable_folder
from nnunet_ddpm.patient.evaluation import dice_per_label
from nnunet_ddpm.patient.inputs import PatientInput, PatientInputError, read_patient
from nnunet_ddpm.patient.montage import write_montage
from nnunet_ddpm.patient.volume_slices import (PATIENT_RECORD, segmentation_volume, uncertainty_volume,
                                               write_like, write_patient_dataset)
from nnunet_ddpm.steps import (Step, StepFailed, demo_budget, fingerprint_step, model_folder, run_steps, training_step,
                               up_to_date, working_folder_environment)

DATASET_ID, DATASET_NAME = 800, "Dataset800_Patient"
CONFIGURATION, PLANS = "2d", "nnUNetPlans"
TRAINER_SUFFIX = "_demo"  # the variants whose budget comes from nnUNet_ddpm_demo_* (demo_budget.py)
PRETRAINER = "nnUNetTrainerDDPMPretrain" + TRAINER_SUFFIX
SUMMARY = "summary.json"


@dataclass
class Budget:
    """Training length of the ``_demo`` trainers: a few minutes for one patient on a CPU laptop
    (documentation/patient.md), far below the paper's budgets."""
    epochs: int = 4
    pretrain_epochs: int = 6
    iterations: int = 10

    def describe(self) -> str:
        return (f"DDPM pretraining {self.pretrain_epochs} epochs x {self.iterations} iterations, each method "
                f"{self.epochs} epochs x {self.iterations} iterations")


def environment(root: str, budget: Budget) -> dict:
    """nnU-Net's folders inside the working folder, the plugin's trainers and the budget. Augmentation runs
    in-process for training and prediction unless the user set nnUNet_n_proc_DA (reproducible, and cheap for 2D
    slices); plan_and_preprocess refuses 0, so only those steps get it (``build_steps``). Fold "all" validates on its
    own training slices, nothing to learn from at the cost of export workers, so the final validation is skipped;
    the annotated slices are scored from the prediction instead."""
    env = working_folder_environment(root, **demo_budget(budget.epochs, budget.pretrain_epochs, budget.iterations))
    env.pop("nnUNet_n_proc_DA", None)
    return env


# a feature probe needs labelled cases of its own to cross-validate over: not for one patient's few slices
PATIENT_METHODS = [m for m, spec in METHODS.items() if not spec.probes_features]


def trainer_name(method: str) -> str:
    return METHODS[method].trainer + TRAINER_SUFFIX


def check_pretrained_weights(path: str, num_channels: int) -> str:
    """The plans file nnU-Net wrote beside the pretraining's fold folder; refuses a checkpoint that is unreadable,
    not a DDPM pretraining or made for another number of channels."""
    from nnunet_ddpm.networks.pretrained_checkpoint import PretrainingCheckpointError, load_checkpoint_file
    try:
        checkpoint = load_checkpoint_file(path)
    except PretrainingCheckpointError as e:
        raise PatientInputError(str(e)) from None
    channels = checkpoint["ddpm"].get("num_input_channels")
    if channels != num_channels:
        raise PatientInputError(f"The pretrained checkpoint {path} was trained on {channels} input channels, this "
                                f"patient has {num_channels} images. Give one image per channel the pretraining used "
                                f"(in its order), or leave out -pretrained_weights to pretrain on this patient.")
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


def _augmentation_in_process() -> dict:
    """For training and prediction: augmentation in this process unless the user set nnUNet_n_proc_DA."""
    return {"nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0")}


def _model_folder(root: str, trainer: str) -> str:
    return model_folder(join(root, "nnUNet_results"), DATASET_NAME, trainer, PLANS, CONFIGURATION, "all")


def _train_step(root: str, trainer: str, device: str, pretrained_weights: Optional[str]) -> Step:
    step = training_step(f"train {trainer} on the annotated slices" if trainer != PRETRAINER else
                         "DDPM pretraining on every slice of the patient",
                         ["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, "all", "-tr", trainer, "-device", device],
                         _model_folder(root, trainer), pretrained_weights)
    step.env = _augmentation_in_process()
    return step


def build_steps(root: str, methods: Sequence[str], device: str, pretrained_weights: Optional[str],
                pretrained_plans: Optional[str], has_unannotated: bool, tta: bool) -> List[Step]:
    steps_folder = join(root, "steps")
    preprocessed = join(root, "nnUNet_preprocessed", DATASET_NAME)
    planned = join(steps_folder, "preprocessed.done")
    python = sys.executable
    steps = []
    steps.append(fingerprint_step(DATASET_ID, preprocessed))
    if pretrained_plans is None:
        steps.append(Step("plan and preprocess the annotated slices",
                          ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", "1",
                           "-npfp", "1"], lambda: isfile(planned), marker=planned))
    else:
        # the pretraining's plans, so that the network fits its weights (what nnUNetv2_move_plans_between_datasets
        # does, from a plans file instead of a preprocessed dataset)
        plans = join(preprocessed, f"{PLANS}.json")
        steps.append(Step("take the plans of the pretrained checkpoint", None, lambda: isfile(plans),
                          run_in_process=lambda: copy_plans(pretrained_plans, plans,
                                                        join(root, "nnUNet_raw", DATASET_NAME, "dataset.json"))))
        steps.append(Step("preprocess the annotated slices with those plans",
                          ["nnUNetv2_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", "1"],
                          lambda: isfile(planned), marker=planned))
    ddpm_methods = [m for m in methods if m != "baseline"]
    if ddpm_methods and pretrained_weights is None:
        if has_unannotated:
            unlabeled = join(steps_folder, "unlabeled.done")
            # run as a module: the same nnunet_ddpm as this process, installed or not
            steps.append(Step("preprocess the unannotated slices for the pretraining",
                              [python, "-c", "from nnunet_ddpm.cli import preprocess_unlabeled_entry as main; main()",
                               "-d", str(DATASET_ID), "-c", CONFIGURATION], lambda: up_to_date(unlabeled, planned),
                              marker=unlabeled))
        steps.append(_train_step(root, PRETRAINER, device, None))
    for method in methods:
        trainer = trainer_name(method)
        steps.append(_train_step(root, trainer, device, None if method == "baseline" else pretrained_weights))
        output = join(root, "predictions", method)
        model = join(_model_folder(root, trainer), "checkpoint_final.pth")
        marker = join(output, "prediction_done.json")
        command = ["nnUNetv2_predict", "-i", join(root, "nnUNet_raw", DATASET_NAME, "imagesTs"), "-o", output,
                   "-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", "all", "-tr", trainer, "-device", device,
                   "-npp", "1", "-nps", "1"]
        command += [] if tta else ["--disable_tta"]
        command += ["--save_probabilities"] if method == "pixel" else []
        steps.append(Step(f"predict every slice with {trainer}", command,
                          lambda marker=marker, model=model: up_to_date(marker, model), marker=marker,
                          env=_augmentation_in_process()))
    return steps


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
    unknown = [m for m in methods if m not in PATIENT_METHODS]
    if unknown or not methods:
        raise PatientInputError(f"Unknown or no method(s) {unknown}; choose from {sorted(PATIENT_METHODS)}.")
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
    step_seconds = run_steps(steps, root, environment(root, budget), log)
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
        log(f"{title(method)}: {summary['methods'][method]['segmentation']} (the model's Dice on the "
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
                  f"{title(method)}: {os.path.basename(patient.image_files[0])}, annotated slices in red")
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


def _parser() -> argparse.ArgumentParser:
    """The command's options; -pretrained_weights, -dataset_json and -device are nnU-Net's spellings, the older
    --pretrained-weights, --dataset-json and --device are still accepted."""
    default = Budget()
    parser = argparse.ArgumentParser(
        description="Segment a whole 3D volume from a few annotated slices (Alshenoudy et al. 2023): builds the "
                    "patient's 2D slice dataset, pretrains a DDPM on all its slices (or uses -pretrained_weights), "
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
                        help=f"from {sorted(m for m in PATIENT_METHODS if m != 'baseline')} (default: %(default)s)")
    parser.add_argument("--baseline", action="store_true", help="also train the supervised nnU-Net for comparison")
    parser.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("ROWS", "COLUMNS"),
                        help="in-plane size the slices are resampled to (default: 128 128, the paper's)")
    parser.add_argument("--epochs", type=int, default=default.epochs, help="epochs per method (default: %(default)s)")
    parser.add_argument("--pretrain-epochs", type=int, default=default.pretrain_epochs,
                        help="DDPM pretraining epochs (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=default.iterations,
                        help="iterations per epoch (default: %(default)s)")
    parser.add_argument("-pretrained_weights", "--pretrained-weights", dest="pretrained_weights", default=None,
                        help="checkpoint_final.pth of a 2D nnUNetTrainerDDPMPretrain(_demo) run with the same channels "
                             "(e.g. on a larger dataset); its plans are used and no pretraining runs here")
    parser.add_argument("-dataset_json", "--dataset-json", dest="dataset_json", default=None,
                        help="nnU-Net dataset.json to take channel names and labels / regions from (default: plain "
                             "labels 0..max of the annotation)")
    parser.add_argument("-device", "--device", dest="device", default=None,
                        help="cpu, cuda or mps (default: cuda if available, else cpu)")
    parser.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (slower)")
    parser.add_argument("--model-on-annotated", action="store_true",
                        help="write the model's prediction on the annotated slices too (default: the annotation)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = _parser()
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
            raise PatientInputError(f"-pretrained_weights {args.pretrained_weights} does not exist.")
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
