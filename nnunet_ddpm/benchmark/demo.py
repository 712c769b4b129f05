"""``nnUNetv2_ddpm_demo``: the whole method on a synthetic phantom, through the stock nnU-Net commands.

Writes a phantom dataset, plans and preprocesses it, pretrains the DDPM, fine-tunes its noise predictor, trains the
supervised nnU-Net baseline with the same budget and cases, predicts the held-out test cases with both and evaluates
them. Every step is a real ``nnUNetv2_*`` command (printed, logged to a file); finished steps are skipped and an
interrupted training resumes with ``--c`` when the demo is run again.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence

from nnunet_ddpm.dataset_conversion.synthetic_phantom import LABELS, write_phantom_dataset
from nnunet_ddpm.nnunet_trainers import TRAINER_DIR

DATASET_ID, DATASET_NAME = 990, "Dataset990_DemoPhantom"
PRETRAINER = "nnUNetTrainerDDPMPretrain_demo"
METHODS = {"DDPM fine-tune": "nnUNetTrainerDDPMFinetune_demo", "supervised nnU-Net": "nnUNetTrainer_demo"}


class DemoStepFailed(RuntimeError):
    pass


def demo_environment(root: Path, epochs: int, pretrain_epochs: int, iterations: int) -> dict:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(root / "nnUNet_raw"), nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
               nnUNet_results=str(root / "nnUNet_results"),
               nnUNet_extTrainer=os.pathsep.join(p for p in (TRAINER_DIR, os.environ.get("nnUNet_extTrainer")) if p),
               nnUNet_ddpm_demo_epochs=str(epochs), nnUNet_ddpm_demo_pretrain_epochs=str(pretrain_epochs),
               nnUNet_ddpm_demo_iterations=str(iterations), nnUNet_def_n_proc="1")
    return env


def run_step(number: int, total: int, title: str, command: Sequence[str], env: dict, log_folder: Path) -> None:
    log = log_folder / f"step{number}.log"
    print(f"[{number}/{total}] {title}\n      $ {' '.join(map(str, command))}  (log: {log})", flush=True)
    start = time.time()
    with open(log, "w") as handle:
        returncode = subprocess.call([str(c) for c in command], env=env, stdout=handle, stderr=subprocess.STDOUT)
    if returncode != 0:
        tail = "".join(open(log).readlines()[-25:])
        raise DemoStepFailed(f"Step {number} ({title}) failed with exit code {returncode}; end of {log}:\n{tail}")
    print(f"      done in {time.time() - start:.0f} s", flush=True)


def _train_command(trainer: str, fold, results: Path) -> List[str]:
    folder = results / DATASET_NAME / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}"
    command = ["nnUNetv2_train", str(DATASET_ID), "2d", str(fold), "-tr", trainer, "-device", "cpu"]
    if any((folder / f"checkpoint_{k}.pth").is_file() for k in ("latest", "best")):
        command.append("--c")  # an earlier demo run was interrupted: resume it
    return command


def run_demo(output: str = "nnunet_ddpm_demo", size: int = 64, train_cases: int = 24, test_cases: int = 12,
             epochs: int = 15, pretrain_epochs: int = 30, iterations: int = 25) -> dict:
    """Run (or finish) the demo in ``output``; returns the Dice table {method: {label: dice}}."""
    root = Path(output).resolve()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = demo_environment(root, epochs, pretrain_epochs, iterations)
    raw, results = root / "nnUNet_raw" / DATASET_NAME, root / "nnUNet_results"
    steps = []
    if not (raw / "dataset.json").is_file():
        write_phantom_dataset(str(root / "nnUNet_raw"), DATASET_ID, "DemoPhantom", num_cases=train_cases,
                              size=(size, size), num_channels=3, num_test_cases=test_cases)
        print(f"Wrote a synthetic tumour phantom: {train_cases} training and {test_cases} test cases of "
              f"{size} x {size} pixels, 3 channels -> {raw}")
    if not (root / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans_2d").is_dir():
        steps.append(("plan and preprocess", ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d",
                                              "-np", "1", "-npfp", "1"]))
    for title, trainer, fold in [("DDPM pretraining on all training images (no labels)", PRETRAINER, "all")] + \
            [(f"train {method}, fold 0", trainer, 0) for method, trainer in METHODS.items()]:
        if not (results / DATASET_NAME / f"{trainer}__nnUNetPlans__2d" / f"fold_{fold}" /
                "checkpoint_final.pth").is_file():
            steps.append((title, _train_command(trainer, fold, results)))
    for method, trainer in METHODS.items():
        predictions = root / "predictions" / trainer
        model = results / DATASET_NAME / f"{trainer}__nnUNetPlans__2d"
        checkpoint, summary = model / "fold_0" / "checkpoint_final.pth", predictions / "summary.json"
        if summary.is_file() and checkpoint.is_file() and summary.stat().st_mtime > checkpoint.stat().st_mtime:
            continue  # evaluated with the current model already
        steps.append((f"predict the test cases with {method}",
                      ["nnUNetv2_predict", "-i", raw / "imagesTs", "-o", predictions, "-d", str(DATASET_ID), "-c",
                       "2d", "-f", "0", "-tr", trainer, "-device", "cpu", "-npp", "1", "-nps", "1"]))
        steps.append((f"evaluate {method}", ["nnUNetv2_evaluate_folder", raw / "labelsTs", predictions,
                                              "-djfile", model / "dataset.json", "-pfile", model / "plans.json",
                                              "-np", "1"]))
    for number, (title, command) in enumerate(steps, start=1):
        # augmentation in-process for training and prediction only (plan_and_preprocess refuses 0)
        step_env = env if command[0] == "nnUNetv2_plan_and_preprocess" else env | {"nnUNet_n_proc_DA": "0"}
        run_step(number, len(steps), title, command, step_env, logs)

    names = {str(v): k for k, v in LABELS.items()}
    table = {}
    for method, trainer in METHODS.items():
        summary = json.loads((root / "predictions" / trainer / "summary.json").read_text())
        table[method] = {names[k]: v["Dice"] for k, v in summary["mean"].items()}
        table[method]["mean"] = summary["foreground_mean"]["Dice"]
    report = {"dataset": DATASET_NAME, "test_cases": test_cases,
              "budget": {"epochs": epochs, "pretrain_epochs": pretrain_epochs, "iterations_per_epoch": iterations},
              "dice": table}
    (root / "demo_results.json").write_text(json.dumps(report, indent=2))
    _print_report(report, root, results)
    return table


def _print_report(report: dict, root: Path, results: Path) -> None:
    labels = [k for k in next(iter(report["dice"].values()))]
    budget = report["budget"]
    print(f"\nDice on {report['test_cases']} held-out phantom cases (fold 0 models; {budget['epochs']} epochs x "
          f"{budget['iterations_per_epoch']} iterations, DDPM pretraining {budget['pretrain_epochs']} epochs):")
    print("| method | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for method, row in report["dice"].items():
        print(f"| {method} | " + " | ".join(f"{row[k]:.3f}" for k in labels) + " |")
    pretraining = results / DATASET_NAME / f"{PRETRAINER}__nnUNetPlans__2d" / "fold_all"
    print(f"\nDDPM samples: {pretraining / 'samples.png'}\nPretraining progress: {pretraining / 'progress.png'}"
          f"\nResults: {root / 'demo_results.json'}")
    print("On real data: put a dataset in nnU-Net format under $nnUNet_raw, then run nnUNetv2_plan_and_preprocess, "
          "nnUNetv2_train DATASET 2d all -tr nnUNetTrainerDDPMPretrain and nnUNetv2_train DATASET 2d 0 -tr "
          "nnUNetTrainerDDPMFinetune (see README.md).")


def demo_entry():
    import argparse
    parser = argparse.ArgumentParser(description="Run nnunet_ddpm end to end on a synthetic tumour phantom "
                                                 "(minutes on a 2-core CPU). Re-running skips finished steps.")
    parser.add_argument("-o", "--output", default="nnunet_ddpm_demo", help="working folder (default: %(default)s)")
    parser.add_argument("--size", type=int, default=64, help="image size in pixels (default: %(default)s)")
    parser.add_argument("--train-cases", type=int, default=24, help="default: %(default)s")
    parser.add_argument("--test-cases", type=int, default=12, help="default: %(default)s")
    parser.add_argument("--epochs", type=int, default=15, help="segmentation epochs (default: %(default)s)")
    parser.add_argument("--pretrain-epochs", type=int, default=30, help="DDPM epochs (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=25, help="iterations per epoch (default: %(default)s)")
    args = parser.parse_args()
    for name in ("size", "train_cases", "test_cases", "epochs", "pretrain_epochs", "iterations"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.train_cases < 5:
        parser.error(f"--train-cases must be at least 5 for nnU-Net's 5-fold split, got {args.train_cases}")
    try:
        run_demo(args.output, args.size, args.train_cases, args.test_cases, args.epochs, args.pretrain_epochs,
                 args.iterations)
    except DemoStepFailed as e:
        sys.exit(str(e))
