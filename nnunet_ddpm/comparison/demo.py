"""``nnUNetv2_ddpm_demo``: the paper's comparison on a synthetic phantom, through the stock nnU-Net commands.

Writes a phantom dataset, plans and preprocesses it, then runs ``nnUNetv2_ddpm_benchmark`` on it: DDPM pretraining,
the supervised baseline, DDPM fine-tuning and the pixel classifier at two label budgets (fold 0), prediction and
evaluation of the held-out test cases, a table and a plot. Every step is a real ``nnUNetv2_*`` command (logged to a
file); finished steps are skipped and an interrupted training resumes with ``--c`` when the demo is run again.
"""
import json
import sys
from pathlib import Path
from typing import Sequence

from nnunet_ddpm.folders import require_writable_folder
from nnunet_ddpm.dataset_conversion.synthetic_phantom import write_phantom_dataset
from nnunet_ddpm.splits.label_budget import LABEL_BUDGETS
from nnunet_ddpm.comparison.methods import PRETRAINER
from nnunet_ddpm.steps import (Step, StepFailed, demo_budget, fingerprint_step, model_folder, run_steps,
                               working_folder_environment)

DATASET_ID, DATASET_NAME = 990, "Dataset990_DemoPhantom"
# The default budget: 9.4 minutes on the 2-core CPU machine (documentation/demo.md). Few, long epochs: every epoch
# end costs nnU-Net a progress plot and a checkpoint, about 1.5 s here.
SIZE, EPOCHS, PRETRAIN_EPOCHS, ITERATIONS, BUDGETS = 48, 5, 15, 30, (5, 15)


def run_demo(output: str = "nnunet_ddpm_demo", size: int = SIZE, train_cases: int = 24, test_cases: int = 12,
             epochs: int = EPOCHS, pretrain_epochs: int = PRETRAIN_EPOCHS, iterations: int = ITERATIONS,
             budgets: Sequence[int] = BUDGETS,
             methods: Sequence[str] = ("baseline", "finetune", "pixel"), device: str = "cpu") -> dict:
    """Run (or finish) the demo in ``output``; returns the benchmark report (``results.json``)."""
    root = Path(output).resolve()
    root.mkdir(parents=True, exist_ok=True)
    env = working_folder_environment(str(root), **demo_budget(epochs, pretrain_epochs, iterations))
    raw = root / "nnUNet_raw" / DATASET_NAME
    if not (raw / "dataset.json").is_file():
        write_phantom_dataset(str(root / "nnUNet_raw"), DATASET_ID, "DemoPhantom", num_cases=train_cases,
                              size=(size, size), num_channels=3, num_test_cases=test_cases)
        print(f"Wrote a synthetic tumour phantom: {train_cases} training and {test_cases} test cases of "
              f"{size} x {size} pixels, 3 channels -> {raw}")
    plans = root / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans_2d"
    benchmark_folder = root / "benchmark"
    steps = [fingerprint_step(DATASET_ID, str(root / "nnUNet_preprocessed" / DATASET_NAME)),
             Step("plan and preprocess", ["nnUNetv2_plan_and_preprocess", "-d", str(DATASET_ID), "-c", "2d", "-np",
                                          "1", "-npfp", "1"], plans.is_dir),
             # the runner resumes by itself; its progress is shown, each of its commands logged in its own folder.
             # Augmentation in-process for training and prediction (plan_and_preprocess refuses 0).
             Step(f"the comparison, through the real nnU-Net commands (logs under {benchmark_folder / 'logs'})",
                  ["nnUNetv2_ddpm_benchmark", "-d", str(DATASET_ID), "-c", "2d", "--methods", *methods, "--budgets",
                   *map(str, budgets), "-f", "0", "--trainer-suffix", "_demo", "-device", device, "-np", "1",
                   "-o", str(benchmark_folder)], lambda: False, env={"nnUNet_n_proc_DA": "0"}, show_output=True)]
    run_steps(steps, str(root), env)
    pretraining = Path(model_folder(str(root / "nnUNet_results"), DATASET_NAME, PRETRAINER + "_demo", "nnUNetPlans",
                                    "2d", "all"))
    print(f"\nPlot: {benchmark_folder / 'dice_vs_labels.png'}\nTable: {benchmark_folder / 'results.md'}"
          f"\nDDPM samples: {pretraining / 'samples.png'}\nPretraining progress: {pretraining / 'progress.png'}")
    print("On real data: see documentation/datasets.md (the paper's slices from BraTS 2021) and "
          "documentation/experiment_design.md; then nnUNetv2_ddpm_benchmark -d DATASET -c 2d runs the paper's "
          "protocol (budgets 10-50, five folds).")
    return json.loads((benchmark_folder / "results.json").read_text())


def _parser():
    """``nnUNetv2_ddpm_demo``'s options; -device is nnU-Net's spelling, the older --device is still accepted."""
    import argparse
    parser = argparse.ArgumentParser(description="Run nnunet_ddpm end to end on a synthetic tumour phantom "
                                                 "(minutes on a 2-core CPU). Re-running skips finished steps.")
    parser.add_argument("-o", "--output", default="nnunet_ddpm_demo", help="working folder (default: %(default)s)")
    parser.add_argument("--size", type=int, default=SIZE, help="image size in pixels (default: %(default)s)")
    parser.add_argument("--train-cases", type=int, default=24, help="default: %(default)s")
    parser.add_argument("--test-cases", type=int, default=12, help="default: %(default)s")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="segmentation epochs (default: %(default)s)")
    parser.add_argument("--pretrain-epochs", type=int, default=PRETRAIN_EPOCHS,
                        help="DDPM epochs (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=ITERATIONS,
                        help="iterations per epoch (default: %(default)s)")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS),
                        help="labelled training cases (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=["baseline", "finetune", "pixel"],
                        help="baseline, finetune, frozen, pixel (default: %(default)s)")
    parser.add_argument("-device", "--device", dest="device", default="cpu", choices=["cpu", "cuda", "mps"],
                        help="where nnUNetv2_train and nnUNetv2_predict run (default: %(default)s)")
    return parser


def demo_entry():
    parser = _parser()
    args = parser.parse_args()
    for name in ("size", "train_cases", "test_cases", "epochs", "pretrain_epochs", "iterations"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.train_cases < 5:
        parser.error(f"--train-cases must be at least 5 for nnU-Net's 5-fold split, got {args.train_cases}")
    if any(b not in LABEL_BUDGETS for b in args.budgets):
        parser.error(f"--budgets {args.budgets}: ready-made trainers exist for {', '.join(map(str, LABEL_BUDGETS))}")
    fold_size = args.train_cases - (args.train_cases + 4) // 5  # training cases of fold 0 of nnU-Net's 5-fold split
    if max(args.budgets) > fold_size:
        parser.error(f"--budgets {args.budgets}: fold 0 trains on {fold_size} of the {args.train_cases} cases; "
                     f"give smaller budgets or more --train-cases")
    require_writable_folder("nnUNetv2_ddpm_demo", args.output)
    try:
        run_demo(args.output, args.size, args.train_cases, args.test_cases, args.epochs, args.pretrain_epochs,
                 args.iterations, args.budgets, args.methods, args.device)
    except StepFailed as e:
        sys.exit(str(e))
