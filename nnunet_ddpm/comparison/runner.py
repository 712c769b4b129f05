"""``nnUNetv2_ddpm_benchmark``: the paper's comparison (methods x label budgets x folds) through the real nnU-Net
commands, evaluated on a held-out labelled test set, aggregated into a report (``report.py``).

Every step (``grid.py``) is a console command (``nnUNetv2_train``, ``nnUNetv2_predict``) or an in-process evaluation,
and knows whether its result already exists, so a re-run skips finished work; an interrupted training resumes with
``--c``. ``--dry-run`` prints the commands of the missing steps, in order, exactly as they would run (for a cluster);
every command that runs is appended to ``commands.txt`` in the output folder.
"""
import shlex
import sys
from typing import List

from nnunet_ddpm.cli import require_writable_folder
from nnunet_ddpm.comparison.grid import Benchmark, BenchmarkError
from nnunet_ddpm.comparison.methods import METHODS
from nnunet_ddpm.comparison.report import write_report
from nnunet_ddpm.steps import StepFailed, run_steps


def dry_run(benchmark: Benchmark) -> List[str]:
    """The commands of the missing steps, one shell line each, in the order they would run."""
    cases = benchmark.check()
    return [shlex.join(s.command) for s in benchmark.steps(cases) if s.command is not None and not s.is_done()]


def run(benchmark: Benchmark, log=print) -> dict:
    """Run what is missing, then write the report; returns the report dict."""
    cases = benchmark.check()
    log(f"{benchmark.dataset_name} {benchmark.configuration}: methods {list(benchmark.methods)}, budgets "
        f"{list(benchmark.budgets)}, folds {list(benchmark.folds)}, {len(cases)} test cases. Output: "
        f"{benchmark.output_folder}")
    run_steps(benchmark.steps(cases), benchmark.output_folder, log=log)
    return write_report(benchmark, cases)


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
    except (BenchmarkError, StepFailed) as e:
        sys.exit(f"nnUNetv2_ddpm_benchmark: {e}")
    print(report["markdown"])
    print(f"Report: {report['files']}")
