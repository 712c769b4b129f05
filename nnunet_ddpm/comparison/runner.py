"""``nnUNetv2_ddpm_benchmark``: the paper's comparison (methods x label budgets x folds) through the real nnU-Net
commands, evaluated on a held-out labelled test set, aggregated into a report (``report.py``).

Every step (``grid.py``) is a console command (``nnUNetv2_train``, ``nnUNetv2_predict``) or an in-process evaluation,
and knows whether its result already exists, so a re-run skips finished work; an interrupted training resumes with
``--c``. ``--dry-run`` prints the missing steps as a shell script with their dependencies; ``--executor slurm|local``
runs them as submitit jobs (``cluster.py``); ``--collect`` writes the report from whatever is on disk. Every command
that runs is appended to ``commands.txt`` in the output folder.
"""
import shlex
import sys
from typing import List

from nnunet_ddpm.folders import require_nnunet_folders, require_writable_folder
from nnunet_ddpm.nnunet_trainers import TRAINER_DIR
from nnunet_ddpm.comparison.cluster import EXECUTORS, Resources, submit
from nnunet_ddpm.comparison.grid import Benchmark, BenchmarkError
from nnunet_ddpm.comparison.methods import METHODS, PRETRAINER
from nnunet_ddpm.comparison.report import write_report
from nnunet_ddpm.splits.label_budget import parse_budget
from nnunet_ddpm.steps import StepFailed, run_steps
from nnunet_ddpm.training.seeding import DEFAULT_SEED


def _shell(step) -> str:
    """The step's command as one shell line, with what it adds to the environment in front."""
    prefix = [f"{k}={v}" for k, v in (step.env or {}).items()]
    return shlex.join(["env", *prefix, *map(str, step.command)] if prefix else list(map(str, step.command)))


def dry_run(benchmark: Benchmark) -> List[str]:
    """The missing steps as a shell script, in the order they would run: each command under a comment that numbers it
    and names the steps it must wait for (a cell's steps wait for each other, the DDPM methods' trainings for the
    pretraining, the report for every evaluation)."""
    cases = benchmark.check()
    lines, pretraining = [], None
    for step in benchmark.pretraining_steps():
        if not step.is_done():
            pretraining = 1
            lines += [f"# [1] {step.title}", _shell(step)]
    number, last_of_cells = len(lines) // 2, []
    for cell in benchmark.cells(cases):
        previous = pretraining if cell.needs_pretraining else None
        for step in cell.steps:
            if step.is_done():
                continue
            number += 1
            lines += [f"# [{number}] {step.title}" + (f" (after [{previous}])" if previous else ""),
                      _shell(step)]
            previous = number
        if previous and previous != pretraining:
            last_of_cells.append(previous)
    after = f" (after {', '.join(f'[{n}]' for n in last_of_cells)})" if last_of_cells else ""
    return lines + [f"# [{number + 1}] report{after}", shlex.join(benchmark.command_line("--collect"))]


def run(benchmark: Benchmark, log=print) -> dict:
    """Run what is missing, then write the report; returns the report dict."""
    cases = benchmark.check()
    log(f"{benchmark.dataset_name} {benchmark.configuration}: methods {list(benchmark.methods)}, budgets "
        f"{list(benchmark.budgets)}, folds {list(benchmark.folds)}, runs {[r.name for r in benchmark.runs]}, "
        f"{len(cases)} test cases. Output: {benchmark.output_folder}")
    run_steps(benchmark.steps(cases), benchmark.output_folder, log=log)
    return write_report(benchmark, cases)


def collect(benchmark: Benchmark) -> dict:
    """The report from what is on disk, however it was computed; refused while an evaluation is missing."""
    cases = benchmark.check()
    missing = benchmark.missing_evaluations(cases)
    if missing:
        raise BenchmarkError(f"{len(missing)} of {len(benchmark.cells(cases))} cells have no up-to-date evaluation "
                             f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): run the same command "
                             f"without --collect to compute them.")
    return write_report(benchmark, cases)


def _parser():
    """``nnUNetv2_ddpm_benchmark``'s options in nnU-Net's spellings (-f, -device, -np, -pretrained_weights,
    -pretrainer); the older --folds, --device, --np, --pretrained-weights and --pretrainer are still accepted."""
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
    parser.add_argument("--budgets", nargs="+", type=parse_budget, default=[10, 20, 30, 40, 50],
                        help="labelled training cases per fold, or 'all' for every training case (default: the "
                             "paper's %(default)s)")
    parser.add_argument("-f", "--folds", dest="folds", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                        help="default: %(default)s")
    parser.add_argument("--trainer-suffix", default="", help="e.g. _demo for the short-budget trainers")
    parser.add_argument("-device", "--device", dest="device", default="cuda",
                        help="cuda, cpu or mps (default: %(default)s)")
    parser.add_argument("-np", "--np", dest="np", type=int, default=2,
                        help="processes for prediction and evaluation (default: 2)")
    parser.add_argument("-o", default=None, help="output folder (default: $nnUNet_results/DATASET/"
                                                 "nnunet_ddpm_benchmark__PLANS__CONFIG)")
    parser.add_argument("--test-images", default=None, help="default: $nnUNet_raw/DATASET/imagesTs")
    parser.add_argument("--test-labels", default=None, help="default: $nnUNet_raw/DATASET/labelsTs")
    parser.add_argument("-pretrained_weights", "--pretrained-weights", dest="pretrained_weights", default=None,
                        help="DDPM pretraining checkpoint to start the DDPM methods from (e.g. pretrained on a larger "
                             "dataset with the same channels and plans) instead of pretraining on this dataset")
    parser.add_argument("-pretrainer", "--pretrainer", dest="pretrainer", default=PRETRAINER,
                        help="the pretraining trainer, e.g. nnUNetTrainerDDPMPretrain_minSNR5 (another objective); its "
                             "checkpoint is handed to the DDPM methods (default: %(default)s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[DEFAULT_SEED],
                        help="train every method once per seed (nnUNet_ddpm_seed; default: %(default)s): a difference "
                             "between methods counts only beside the spread between runs of one method")
    parser.add_argument("--label-draws", nargs="+", type=int, default=[0],
                        help="draws of the labelled cases (nnUNet_ddpm_label_draw; default: %(default)s); every seed "
                             "runs with every draw")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the missing steps as a shell script, with their dependencies, and exit")
    parser.add_argument("--collect", action="store_true",
                        help="write the report from the evaluations on disk (run by hand, by the dry run's commands or "
                             "on a cluster) without running anything")
    cluster = parser.add_argument_group("cluster", "run the grid as submitit jobs (pip install 'nnunet_ddpm[cluster]')")
    cluster.add_argument("--executor", choices=EXECUTORS, default=None,
                         help="slurm: pretraining job, then a job array of trainings with their predictions and "
                              "evaluations, then the report, queued with dependencies; local: the same jobs on this "
                              "machine. Default: run the steps one after another in this process")
    defaults = Resources()
    cluster.add_argument("--partition", default=None, help="SLURM partition")
    cluster.add_argument("--gpus", type=int, default=defaults.gpus, help="GPUs per job (default: %(default)s)")
    cluster.add_argument("--cpus", type=int, default=defaults.cpus, help="CPUs per job (default: %(default)s, "
                                                                         "nnU-Net's augmentation workers)")
    cluster.add_argument("--mem-gb", type=int, default=defaults.mem_gb, help="memory per job (default: %(default)s)")
    cluster.add_argument("--hours", type=float, default=defaults.hours,
                         help="time limit per job (default: %(default)s); a training stopped by it resumes on the next "
                              "run")
    cluster.add_argument("--array-parallelism", type=int, default=defaults.array_parallelism,
                         help="array tasks (local: jobs) running at once (default: %(default)s)")
    cluster.add_argument("--setup", action="append", default=[],
                         help="a shell line run before each job, e.g. 'module load cuda' (repeatable)")
    cluster.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                         help="any other sbatch option, e.g. account=myproject or qos=high (repeatable)")
    return parser


def benchmark_entry():
    parser = _parser()
    args = parser.parse_args()
    if sum(map(bool, (args.dry_run, args.collect, args.executor))) > 1:
        parser.error("choose one of --dry-run, --collect and --executor")
    bad = [o for o in args.slurm_option if "=" not in o]
    if bad:
        parser.error(f"--slurm-option takes KEY=VALUE, got {bad[0]!r}")
    # the trainings write into nnUNet_results whatever -o says; a dry run's script will, too
    require_nnunet_folders("nnUNetv2_ddpm_benchmark",
                           read=("nnUNet_raw", "nnUNet_preprocessed") + (("nnUNet_results",) if args.collect else ()),
                           write=() if args.collect else ("nnUNet_results",),
                           trainer_dir=None if args.collect else TRAINER_DIR)
    try:
        benchmark = Benchmark(args.d, configuration=args.c, methods=args.methods, budgets=args.budgets,
                              folds=args.folds, plans=args.p, trainer_suffix=args.trainer_suffix, device=args.device,
                              num_processes=args.np, output_folder=args.o, test_images=args.test_images,
                              test_labels=args.test_labels, pretrained_weights=args.pretrained_weights,
                              pretraining_trainer=args.pretrainer, seeds=args.seeds, label_draws=args.label_draws)
        if args.dry_run:
            print("\n".join(dry_run(benchmark)))
            return
        require_writable_folder("nnUNetv2_ddpm_benchmark", benchmark.output_folder)
        if args.executor:
            resources = Resources(args.partition, args.gpus, args.cpus, args.mem_gb, args.hours,
                                  args.array_parallelism, args.setup, dict(o.split("=", 1) for o in args.slurm_option))
            markdown = submit(benchmark, args.executor, resources)
            if markdown is not None:
                print(open(markdown).read())
            return
        report = collect(benchmark) if args.collect else run(benchmark)
    except (BenchmarkError, StepFailed) as e:
        sys.exit(f"nnUNetv2_ddpm_benchmark: {e}")
    print(report["markdown"])
    print(f"Report: {report['files']}")
