"""Does DDPM pretraining pay off on real scans? The comparison on 23 real BraTS patients, patient-grouped.

The patients are split into ``--outer-folds`` groups; outer fold k holds out group k as the test patients and gives
the others to the training pool (the paper's axial slices 70..100 step 5 as labelled cases, every 5th other brain
slice as unlabeled pretraining images; 64 x 64 slices, FLAIR and T1c). Each outer fold is its own nnU-Net dataset,
planned, pretrained and compared with ``nnUNetv2_ddpm_benchmark`` (label budgets from inner fold 0 of that dataset),
so a test patient is never seen, not even as an unlabeled image. Every method trains for the same number of
iterations (the ``_demo`` trainers with their budget from the environment).

    python benchmarks/real_patient_study.py prepare --brats18 DIR --brats2015 DIR -w WORK
    python benchmarks/real_patient_study.py run -w WORK --methods baseline finetune frozen pixel --budgets 10
    python benchmarks/real_patient_study.py collect -w WORK       # re-evaluate, copy small result files to documentation/evidence/
    python benchmarks/real_patient_study.py report                # evidence.md's tables from those files alone

``run`` resumes: the benchmark runner skips finished steps. Real data is never written into the repository.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's nnunet_ddpm, installed or not
from nnunet_ddpm.comparison.methods import PRETRAINER  # noqa: E402
from nnunet_ddpm.splits.label_budget import ALL_LABELS, budget_folder, budget_order  # noqa: E402

EVIDENCE = REPO / "documentation" / "evidence"
SOURCE_ID, FIRST_FOLD_ID = 600, 610
DUPLICATE = "brats_2013_pat0006_1"
TABLES_START = "<!-- tables: python benchmarks/real_patient_study.py report -->"
TABLES_END = "<!-- end of tables -->"  # the 2015 sample's pat0006 is BraTS 2018's Brats18_2013_20_1


def pretraining_name(iterations: int, pretrainer: str = PRETRAINER, run: int = 1, snapshot: int = None,
                     images: str = "") -> str:
    """``pretrain4000``, ``pretrain4000minsnr5`` for the variant nnUNetTrainerDDPMPretrain_minSNR5,
    ``pretrain4000transductive`` for a work folder with other unlabeled images (``images_tag``), ``pretrain4000run2``
    for a second run of the methods, or ``pretrain32000at8000`` for the methods started from the snapshot after 8,000
    iterations of a 32,000-iteration pretraining: the name of a results, benchmark and evidence folder."""
    return f"pretrain{iterations}" + pretrainer[len(PRETRAINER):].replace("_", "").lower() + images + \
        (f"at{snapshot}" if snapshot else "") + (f"run{run}" if run > 1 else "")


STUDY_RECORD = "study.json"  # the work folder's unlabeled images: {"unlabeled_step": K, "transductive": bool}


def images_tag(work: Path) -> str:
    """'' for the study's unlabeled images (every 5th other brain slice of the training patients),
    ``unlabeledstep1`` for every slice, ``transductive`` when the test patients' slices are among them."""
    record = json.loads((work / STUDY_RECORD).read_text()) if (work / STUDY_RECORD).is_file() else {}
    step = int(record.get("unlabeled_step", 5))
    return ("" if step == 5 else f"unlabeledstep{step}") + ("transductive" if record.get("transductive") else "")


# the pretraining variants' folder tags (pretraining_name) and what the report calls them
OBJECTIVES = {"": "", "minsnr5": ", min-SNR loss weights (gamma 5)", "vprediction": ", v-prediction",
              "unlabeledstep1": ", every brain slice unlabeled (5 times the images)",
              "transductive": ", the test patients' slices among the unlabeled images (transductive)",
              "batch16": ", batch 16", "patch32": ", 32 x 32 patches", "patch64": ", 64 x 64 patches",
              **{f"run{n}": f", run {n}" for n in range(2, 10)}}
RUN_RECORD = "run.json"  # a run's seed, draw of labelled slices and pretraining, beside its evaluations
PLANNED_BATCH = 4  # nnU-Net's batch for the study's 48 x 40 patches: a batch-16 step sees 4 times as many images
PLANNED_PATCH = "48 x 40"  # nnU-Net's patch for the study's slices (their brain boxes: median 43 x 35)


def images_per_step_factor(objective: str) -> int:
    """How many times the plain pretraining's images a variant's step sees (1 unless it changes the batch)."""
    batch = re.fullmatch(r"batch(\d+)", objective)
    return int(batch.group(1)) // PLANNED_BATCH if batch else 1


def pretraining_length(name: str) -> int:
    return int(re.match(r"pretrain(\d+)", name).group(1))


SNAPSHOT_NAME = re.compile(r"pretrain(\d+)at(\d+)(?:run(\d+))?")  # pretraining_name of a snapshot's run


def environment(work: Path, pretrain_iterations: int, iterations: int, iterations_per_epoch: int = 50,
                pretrainer: str = PRETRAINER, run: int = 1, label_draw: int = 0, snapshot: int = None) -> dict:
    """The environment of every command of one run: its own nnUNet_results, the training budget, and from run 2 on
    the run's number as the seed of every training (run 1 keeps the trainers' default seed)."""
    results = f"results_{pretraining_name(pretrain_iterations, pretrainer, run, snapshot, images_tag(work))}"
    from nnunet_ddpm.nnunet_trainers import TRAINER_DIR
    from nnunet_ddpm.steps import demo_budget, working_folder_environment
    from nnunet_ddpm.training.seeding import DEFAULT_SEED, LABEL_DRAW_VARIABLE, SEED_VARIABLE
    budget = demo_budget(iterations // iterations_per_epoch, pretrain_iterations // iterations_per_epoch,
                         iterations_per_epoch)
    return working_folder_environment(
        work, folder_names=("raw", "preprocessed", results), this_copy_first=False, nnUNet_extTrainer=TRAINER_DIR,
        nnUNet_def_n_proc="1", nnUNet_n_proc_DA="2", nnUNet_compile="false",
        OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), **budget,
        **{SEED_VARIABLE: str(run if run > 1 else DEFAULT_SEED), LABEL_DRAW_VARIABLE: str(label_draw)})


def sh(command, env, log=None):
    print("+", " ".join(map(str, command)), flush=True)
    with open(log, "a") if log else open(os.devnull, "w") as out:
        subprocess.run([str(c) for c in command], env=env, check=True, stdout=out if log else None,
                       stderr=subprocess.STDOUT if log else None)


def outer_folds(patients, k: int):
    """Patients sorted by name, dealt round-robin after a seeded shuffle: k groups of near-equal size."""
    import numpy as np
    order = np.random.default_rng(0).permutation(sorted(patients))
    return [sorted(order[i::k].tolist()) for i in range(k)]


def prepare(args) -> None:
    work = Path(args.w)
    record = {"unlabeled_step": int(args.unlabeled_step), "transductive": args.transductive}
    if (work / STUDY_RECORD).is_file() and json.loads((work / STUDY_RECORD).read_text()) != record:
        raise SystemExit(f"{work} was prepared with {(work / STUDY_RECORD).read_text()}; this command asks for "
                         f"{record}: prepare another work folder.")
    env = environment(work, 0, 0)
    for folder in ("raw", "preprocessed"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    source = work / "raw" / f"Dataset{SOURCE_ID}_BraTSReal"
    if not source.is_dir():
        sh(["nnUNetv2_ddpm_convert_brats", "-i", args.brats18, args.brats2015, "-d", SOURCE_ID, "-n", "BraTSReal",
            "--channels", "flair", "t1ce", "--exclude", DUPLICATE], env)
    patients = sorted(p.name[:-len("_0000.nii.gz")] for p in (source / "imagesTr").glob("*_0000.nii.gz"))
    folds = outer_folds(patients, args.outer_folds)
    for k, test_patients in enumerate(folds):
        dataset_id = FIRST_FOLD_ID + k
        name = f"Dataset{dataset_id}_BraTSRealOuter{k}"
        if not (work / "raw" / name).is_dir():
            sh(["nnUNetv2_ddpm_slice_dataset", "-s", source, "-d", dataset_id, "-n", f"BraTSRealOuter{k}", "--size",
                *args.size, "--test-patients", *test_patients, "--unlabeled-step", args.unlabeled_step,
                *(["--unlabeled-test-patients"] if args.transductive else [])], env)
        if not (work / "preprocessed" / name / "nnUNetPlans.json").is_file():
            sh(["nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", "2d", "-np", "2"], env)
            sh(["nnUNetv2_ddpm_make_splits", "-d", dataset_id, "--groups",
                work / "raw" / name / "case_groups.json", "--overwrite"], env)
            sh(["nnUNetv2_ddpm_preprocess_unlabeled", "-d", dataset_id, "-c", "2d"], env)
    (work / "outer_folds.json").write_text(json.dumps({"folds": folds}, indent=1))
    (work / STUDY_RECORD).write_text(json.dumps(record, indent=1))


def run(args) -> None:
    """One run of the methods on the outer folds. A later run trains every method again in its own folders, seeded by
    its number and on draw ``--label-draw`` of the labelled slices, from the pretraining of run ``--pretraining-run``
    (by default run 1's if its checkpoint is still there, else its own, trained first)."""
    work = Path(args.w)
    folds = json.loads((work / "outer_folds.json").read_text())["folds"]
    env = environment(work, args.pretrain_iterations, args.iterations, pretrainer=args.pretrainer, run=args.run,
                      label_draw=args.label_draw, snapshot=args.snapshot)
    name = pretraining_name(args.pretrain_iterations, args.pretrainer, args.run, args.snapshot, images_tag(work))
    for k in args.outer:
        assert k < len(folds)
        source = args.pretraining_run or 1
        checkpoint = Path(environment(work, args.pretrain_iterations, args.iterations, pretrainer=args.pretrainer,
                                      run=source)["nnUNet_results"]) / f"Dataset{FIRST_FOLD_ID + k}_BraTSRealOuter{k}" / \
            f"{args.pretrainer}_demo__nnUNetPlans__2d" / "fold_all" / \
            ("checkpoint_final.pth" if args.snapshot in (None, args.pretrain_iterations) else
             f"checkpoint_iteration{args.snapshot}.pth")
        if args.snapshot and not checkpoint.is_file():
            raise SystemExit(f"{checkpoint} does not exist: pretrain for {args.pretrain_iterations} iterations with "
                             f"nnUNet_ddpm_pretrain_snapshots including {args.snapshot} first.")
        if args.snapshot:
            handed = ["-pretrained_weights", checkpoint]
        elif args.run == source or (not checkpoint.is_file() and args.pretraining_run is None):
            handed, source = [], args.run  # this run's own pretraining (trained by the benchmark if missing)
        elif checkpoint.is_file():
            handed = ["-pretrained_weights", checkpoint]
        else:
            raise SystemExit(f"Run {source}'s pretraining checkpoint {checkpoint} does not exist: run it first, or leave "
                             f"out --pretraining-run to pretrain in this run's own folder.")
        benchmark = work / f"benchmark_{name}_outer{k}"
        benchmark.mkdir(parents=True, exist_ok=True)
        record = {"run": args.run, "seed": int(env["nnUNet_ddpm_seed"]), "label_draw": args.label_draw,
                  "pretraining_run": source} | ({"pretraining_iterations": args.snapshot,
                                                 "pretraining_schedule_iterations": args.pretrain_iterations}
                                                if args.snapshot else {})
        previous = json.loads((benchmark / RUN_RECORD).read_text()) if (benchmark / RUN_RECORD).is_file() else record
        if previous != record:
            raise SystemExit(f"{benchmark} holds run {previous}, this command asks for {record}: give the run another "
                             f"--run number.")
        (benchmark / RUN_RECORD).write_text(json.dumps(record, indent=1))
        sh(["nnUNetv2_ddpm_benchmark", "-d", FIRST_FOLD_ID + k, "-c", "2d", "--methods", *args.methods,
            "--budgets", *args.budgets, "-f", "0", "--trainer-suffix", "_demo", "-device", "cpu", "-np", "1",
            "-pretrainer", args.pretrainer, *handed, "-o", benchmark], env)


def pretrain(args) -> None:
    """One pretraining per outer fold of ``--iterations`` (the learning rate decays over all of them), keeping the
    snapshots after ``--snapshots`` iterations for the compute curve (``run --snapshot N``); a stopped one resumes
    from its latest checkpoint."""
    work = Path(args.w)
    env = environment(work, args.iterations, 1000, pretrainer=args.pretrainer)  # the methods' budget, unused here
    env["nnUNet_ddpm_pretrain_snapshots"] = ",".join(map(str, args.snapshots))
    for k in args.outer:
        dataset = f"Dataset{FIRST_FOLD_ID + k}_BraTSRealOuter{k}"
        folder = Path(env["nnUNet_results"]) / dataset / f"{args.pretrainer}_demo__nnUNetPlans__2d" / "fold_all"
        if (folder / "checkpoint_final.pth").is_file():
            continue
        resume = ["--c"] if (folder / "checkpoint_latest.pth").is_file() else []
        sh(["nnUNetv2_train", dataset, "2d", "all", "-tr", f"{args.pretrainer}_demo", "-device", "cpu", *resume], env,
           work / f"pretrain{args.iterations}_outer{k}.log")


# Work folders run while the default fine-tune trained every weight at one learning rate name the methods as they were
# then ("finetune_encoderlr" is no method today, so it marks such a folder).
OLDER_METHOD_NAMES = {"finetune": "finetune_fulllr", "finetune_encoderlr": "finetune"}


def collect(args) -> None:
    """Evaluate every finished prediction folder again with the current evaluation code, then copy the per-case
    evaluations and each model's settings (small JSON files) into documentation/evidence."""
    from nnunet_ddpm.comparison.evaluation import evaluate_prediction_folder
    work = Path(args.w)
    for benchmark in sorted(work.glob("benchmark_pretrain*_outer*")):
        pretrain, outer = benchmark.name[len("benchmark_"):].split("_")
        dataset = f"Dataset{FIRST_FOLD_ID + int(outer[len('outer'):])}_BraTSReal{outer.capitalize()}"
        renamed = OLDER_METHOD_NAMES if (benchmark / "predictions" / "finetune_encoderlr").is_dir() else {}
        for evaluated in sorted(benchmark.glob("predictions/*/*/fold_*/evaluation.json")):
            prediction = evaluated.parent
            evaluate_prediction_folder(str(prediction), str(work / "raw" / dataset / "labelsTs"),
                                       str(work / "preprocessed" / dataset), "nnUNetPlans", 1)
            method = prediction.parts[-3]
            method, budget = renamed.get(method, method), prediction.parts[-2]
            target = EVIDENCE / pretrain / outer / method / budget
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(prediction / "evaluation.json", target / "evaluation.json")
        if (benchmark / RUN_RECORD).is_file():
            (EVIDENCE / pretrain / outer).mkdir(parents=True, exist_ok=True)
            shutil.copy(benchmark / RUN_RECORD, EVIDENCE / pretrain / outer / RUN_RECORD)
        report = benchmark / "results.json"
        if report.is_file():  # merged: a later run of other methods or budgets keeps the earlier methods' settings
            target = EVIDENCE / pretrain / outer / "settings.json"
            settings = json.loads(target.read_text()) if target.is_file() else {}
            settings.update({renamed.get(m, m): v for m, v in json.loads(report.read_text())["settings"].items()})
            target.write_text(json.dumps(settings, indent=1))
    shutil.copy(work / "outer_folds.json", EVIDENCE / "outer_folds.json")
    _write_reference_sizes(work)
    print(f"Collected into {EVIDENCE}")


REFERENCE_SIZES = EVIDENCE / "test_reference_voxels.json"
READINESS = EVIDENCE / "readiness"  # <pretraining results name>_outer<k>.json: nnUNetv2_ddpm_pretraining_readiness


def readiness(args) -> None:
    """Score the snapshots of every pretraining in the work folder with ``nnUNetv2_ddpm_pretraining_readiness`` on the
    labelled slices of the fine-tunes' budget (inner fold 0, draw 0: run 1's), and copy each readiness.json into
    documentation/evidence/readiness/."""
    work = Path(args.w)
    READINESS.mkdir(parents=True, exist_ok=True)
    for folder in sorted(work.glob(f"results_pretrain*/Dataset*_BraTSRealOuter*/{PRETRAINER}_demo__nnUNetPlans__2d/"
                                   "fold_all")):
        results, dataset = folder.parents[2], folder.parents[1].name
        if not list(folder.glob("checkpoint_iteration*.pth")) + list(folder.glob("checkpoint_final.pth")):
            continue
        env = dict(environment(work, 0, 0), nnUNet_results=str(results), OMP_NUM_THREADS="1")
        sh(["nnUNetv2_ddpm_pretraining_readiness", "-d", dataset, "-c", "2d", "-f", "0", "--budget", args.budget,
            "-tr", f"{PRETRAINER}_demo"], env)
        outer = dataset[dataset.index("Outer"):].lower()
        shutil.copy(folder / "readiness.json", READINESS / f"{results.name[len('results_'):]}_{outer}.json")


def _write_reference_sizes(work: Path) -> None:
    """Each test slice's region sizes in its reference segmentation ({case: {region: voxels}}): with a slice's Dice
    they tell a false-positive slice (no region in the reference, some in the prediction: Dice 0) from a true negative
    (Dice undefined), also in evaluation files written before they recorded the sizes. Counts only, no image data."""
    import SimpleITK as sitk
    sizes = {}
    for k in range(len(json.loads((work / "outer_folds.json").read_text())["folds"])):
        raw = work / "raw" / f"Dataset{FIRST_FOLD_ID + k}_BraTSRealOuter{k}"
        labels = json.loads((raw / "dataset.json").read_text())["labels"]
        regions = {name: value for name, value in labels.items() if name != "background"}  # names as evaluated
        for label_file in sorted((raw / "labelsTs").glob("*.nii.gz")):
            segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
            sizes[label_file.name[:-len(".nii.gz")]] = {name: int(np.isin(segmentation, value).sum())
                                                        for name, value in regions.items()}
    REFERENCE_SIZES.write_text(json.dumps(sizes, indent=0, sort_keys=True))


def _runs_of(setting: str) -> dict:
    """{run number: evidence folder} of one setting (``pretrain4000``: run 1 there, run N in ``pretrain4000runN``)."""
    folders = {1: EVIDENCE / setting} if (EVIDENCE / setting).is_dir() else {}
    for folder in EVIDENCE.glob(f"{setting}run*"):
        number = re.fullmatch(rf"{setting}run(\d+)", folder.name)
        if number:
            folders[int(number.group(1))] = folder
    return dict(sorted(folders.items()))


def _slice_dice(folder: Path, method: str, budget) -> dict:
    """{region: {case: Dice}} of one run of a method and budget over every outer fold it has; NaN where neither
    reference nor prediction has the region (kept, so that false-positive slices can be told from true negatives)."""
    dice = {}
    for evaluation in sorted(folder.glob(f"outer*/{method}/{budget_folder(budget)}/evaluation.json")):
        for row in json.loads(evaluation.read_text())["per_case"]:
            value = float("nan") if row["dice"] is None else float(row["dice"])
            dice.setdefault(row["region"], {})[row["case"]] = value
    return dice


def _patient_dice(dice: dict, region: str, cases: list) -> np.ndarray:
    """Each patient's mean Dice over its slices among ``cases`` (BraTS convention: NaN, a slice without the region in
    reference and prediction, scores 1), patients sorted by name."""
    values = {}
    for case in cases:
        value = dice[region][case]
        values.setdefault(case.rsplit("_s", 1)[0], []).append(1.0 if np.isnan(value) else value)
    return np.array([np.mean(values[p]) for p in sorted(values)])


def _replicated_rows(setting: str, budget, methods) -> list:
    """Per method, its runs (those that cover the baseline's test patients), the mean over runs of the patients' mean
    Dice (BraTS convention: a slice without the region in reference and prediction scores 1), its false-positive
    slices, and the paired difference to the supervised nnU-Net with an interval over patients and runs
    (``run_aware_difference``; runs paired where both sides have the same runs, which share seeds and labelled
    slices)."""
    from nnunet_ddpm.comparison.statistics import run_aware_difference
    sizes = json.loads(REFERENCE_SIZES.read_text())
    runs = {m: {n: _slice_dice(f, m, budget) for n, f in _runs_of(setting).items()} for m in methods}
    runs = {m: {n: d for n, d in r.items() if d} for m, r in runs.items()}
    if not runs.get("baseline"):
        return []
    regions = list(next(iter(runs["baseline"].values())))
    cases = sorted(max((d[regions[0]] for d in runs["baseline"].values()), key=len))  # a run on every outer fold
    base = {n: d for n, d in runs["baseline"].items() if set(cases) <= set(d[regions[0]])}
    patients = sorted({c.rsplit("_s", 1)[0] for c in cases})

    def patient_means(dice: dict, region: str) -> np.ndarray:
        return _patient_dice(dice, region, cases)

    rows = []
    for method in methods:
        complete = {n: d for n, d in runs.get(method, {}).items() if set(cases) <= set(d[regions[0]])}
        if not complete:
            continue
        row = {"method": method, "runs": sorted(complete), "dice": [], "false_positives": [], "difference": []}
        for region in regions:
            mine = np.array([patient_means(d, region) for d in complete.values()])
            row["dice"].append(float(mine.mean()))
            absent = [c for c in cases if sizes[c][region] == 0]
            row["false_positives"].append((float(np.mean([sum(not np.isnan(d[region][c]) for c in absent)
                                                          for d in complete.values()])), len(absent)))
            if method != "baseline":
                paired = sorted(complete) == sorted(base)
                theirs = np.array([patient_means(base[n], region) for n in (sorted(complete) if paired else base)])
                row["difference"].append(run_aware_difference(mine, theirs, paired_runs=paired))
        rows.append(row)
    return rows, regions, len(patients), len(cases)


def _replicated() -> list:
    """The tables that the README's claims come from: every method with all its runs of the plain 4,000-iteration
    pretraining, per budget."""
    from nnunet_ddpm.comparison.methods import title
    lines = ["### Replicated comparison (every run counted)", "",
             "Each method with all its runs at 4,000 pretraining iterations (run 1 and later runs; a run trains every "
             "method again with its own seed, and some runs on another draw of the labelled slices: `run.json` in "
             "each evidence folder). Dice: the mean over runs of the mean over patients of each patient's mean over "
             "its slices (a slice without the region in reference and prediction scores 1). False-positive slices: "
             "of the test slices without the region in the reference, on how many the method predicts it (mean over "
             "runs). Paired difference to the supervised nnU-Net on the same patients, with a 95 % bootstrap "
             "interval that resamples patients, then runs (10,000 resamples, seeded), so it holds the training "
             "noise; runs are paired where both sides have the same runs.", ""]
    plotted = []
    for budget in (5, 10, 20, ALL_LABELS):
        found = _replicated_rows("pretrain4000", budget, ("baseline", "finetune", "frozen", "init", "pixel"))
        if not found:
            continue
        rows, regions, patients, slices = found
        plotted.append((budget, rows, regions))
        lines += [f"#### {budget} labelled slices ({patients} test patients, {slices} slices)", "",
                  "| method | runs | " + " | ".join(f"Dice {r}" for r in regions) + " | " +
                  " | ".join(f"false-positive slices {r}" for r in regions) + " | " +
                  " | ".join(f"paired Dice difference {r}" for r in regions) + " |",
                  "|---" * (2 + 3 * len(regions)) + "|"]
        for row in rows:
            lines.append(f"| {title(row['method'])} | {len(row['runs'])} ({', '.join(map(str, row['runs']))}) | " +
                         " | ".join(f"{d:.3f}" for d in row["dice"]) + " | " +
                         " | ".join(f"{n:.1f} of {of}" for n, of in row["false_positives"]) + " | " +
                         (" | ".join(f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                                     for d in row["difference"]) if row["difference"] else
                          " | ".join("" for _ in regions)) + " |")
        lines.append("")
    if plotted:
        _plot_replicated(plotted, EVIDENCE.parent / "figures" / "evidence_replicated.png")
        lines += ["![paired differences with every run counted](figures/evidence_replicated.png)", ""]
    return lines


def _compute_points(budget, only_outer: int = None) -> dict:
    """{schedule: [(iterations, method, runs, outer folds, plain, [difference per region])]}: each DDPM method started
    from a snapshot of one long pretraining (``pretrain<schedule>at<iterations>``), and from the plain
    4,000-iteration pretraining as the reference point (``plain``), minus the supervised nnU-Net runs of the same
    seeds and labelled slices (``pretrain4000``'s runs of the same numbers). Each point on the outer folds it has
    (only ``only_outer`` if given; the reference on those of the snapshot with the most); the interval resamples
    patients, then runs (paired)."""
    from nnunet_ddpm.comparison.statistics import run_aware_difference
    folds = json.loads((EVIDENCE / "outer_folds.json").read_text())["folds"]
    schedules = {}
    for folder in EVIDENCE.glob("pretrain*at*"):
        match = SNAPSHOT_NAME.fullmatch(folder.name)
        if match and not match.group(3):
            schedules.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    baseline = {n: _slice_dice(f, "baseline", budget) for n, f in _runs_of("pretrain4000").items()}
    regions = list(baseline[1]) if baseline.get(1) else []

    def cases_of(by_run: dict) -> list:
        found = [set(d[regions[0]]) & set(baseline[r][regions[0]]) for r, d in by_run.items()]
        cases = set.intersection(*found) if found else set()
        if only_outer is not None:
            cases = {c for c in cases if c.rsplit("_s", 1)[0] in folds[only_outer]}
        return sorted(cases)

    def difference(by_run: dict, runs: list, cases: list) -> list:
        return [run_aware_difference(np.array([_patient_dice(by_run[r], region, cases) for r in runs]),
                                     np.array([_patient_dice(baseline[r], region, cases) for r in runs]),
                                     paired_runs=True) for region in regions]

    curves = {}
    for schedule, snapshots in sorted(schedules.items()):
        for method in DDPM_METHODS:
            points = []
            for n in sorted(snapshots):
                by_run = {r: d for r, f in _runs_of(f"pretrain{schedule}at{n}").items()
                          if (d := _slice_dice(f, method, budget)) and baseline.get(r)}
                cases = cases_of(by_run)
                if cases:
                    points.append((n, by_run, cases, False))
            if not points:
                continue
            widest = max(points, key=lambda p: len(p[2]))
            reference = {r: d for r, f in _runs_of("pretrain4000").items()
                         if r in widest[1] and (d := _slice_dice(f, method, budget))}
            if set(reference) == set(widest[1]) and set(widest[2]) <= set(cases_of(reference)):
                points.append((4000, reference, widest[2], True))
            for n, by_run, cases, plain in sorted(points, key=lambda p: (p[0], not p[3])):
                outer = sorted({k for k, group in enumerate(folds) for c in cases if c.rsplit("_s", 1)[0] in group})
                curves.setdefault(schedule, []).append(
                    (n, method, sorted(by_run), outer, plain, difference(by_run, sorted(by_run), cases)))
    return curves


def _compute_curve() -> list:
    """The gain against pretraining compute: a table and a plot per budget that has snapshot runs."""
    from nnunet_ddpm.comparison.methods import title
    lines = []
    for budget in (5, 10, 20):
        curves = _compute_points(budget)
        if not curves:
            continue
        regions = list(_slice_dice(EVIDENCE / "pretrain4000", "baseline", budget))
        for schedule, points in curves.items():
            lines += [f"### Gain against pretraining compute, {budget} labelled slices", "",
                      f"Each DDPM method started from snapshots of one {schedule:,}-iteration pretraining per outer "
                      f"fold (learning rate decaying over all {schedule:,} iterations, so a snapshot is not the end of "
                      "a shorter pretraining), and from the plain 4,000-iteration pretraining (learning rate decayed "
                      "to zero at its end). Paired Dice difference to the supervised nnU-Net runs of the same seeds "
                      "and labelled slices, on the outer folds listed, with a 95 % bootstrap interval over patients, "
                      "then runs:", "",
                      "| method | pretraining iterations | schedule | runs | outer folds | " +
                      " | ".join(f"Dice {r}" for r in regions) + " |", "|---" * (5 + len(regions)) + "|"]
            for n, method, runs, outer, plain, differences in points:
                lines.append(f"| {title(method)} | {n} | {'4000 (own run)' if plain else schedule} | {len(runs)} | "
                             f"{', '.join(map(str, outer))} | " + " | ".join(
                                 f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" for d in differences) + " |")
            name = f"evidence_compute_{budget}labels.png"
            _plot_compute(points, regions, schedule, EVIDENCE.parent / "figures" / name)
            lines += ["", f"![gain against pretraining compute at {budget} labelled slices](figures/{name})", ""]
    return lines


def _readiness_points(budget: int = 10) -> list:
    """[(outer fold, pretraining iterations, label, best probe Dice, [fine-tune gain per region])]: every pretraining
    whose snapshots were scored, each snapshot beside the default fine-tune's paired gain on that fold's patients,
    started from that snapshot (run 1 for snapshots of a long pretraining; for a plain pretraining of run N, that
    run's fine-tune against that run's supervised nnU-Net)."""
    from nnunet_ddpm.comparison.statistics import run_aware_difference
    folds = json.loads((EVIDENCE / "outer_folds.json").read_text())["folds"]
    points = []
    for scored in sorted(READINESS.glob("*.json")):
        name, outer = scored.stem.rsplit("_outer", 1)
        match = re.fullmatch(r"pretrain(\d+)(?:run(\d+))?", name)
        if not match:
            continue  # the objectives' variants are not on this scale
        length, run, k = int(match.group(1)), int(match.group(2) or 1), int(outer)
        base = _slice_dice(_runs_of("pretrain4000").get(run, EVIDENCE / "missing"), "baseline", budget)
        for snapshot in json.loads(scored.read_text())["snapshots"]:
            n = snapshot["iterations"]
            own = n == length and (EVIDENCE / name).is_dir()
            setting = name if own else f"pretrain{length}at{n}" + (f"run{run}" if run > 1 else "")
            mine = _slice_dice(EVIDENCE / setting, "finetune", budget)
            if not mine or not base:
                continue
            region0 = next(iter(base))
            cases = sorted(c for c in set(mine[region0]) & set(base[region0]) if c.rsplit("_s", 1)[0] in folds[k])
            if not cases:
                continue
            gains = [run_aware_difference(_patient_dice(mine, r, cases)[None], _patient_dice(base, r, cases)[None],
                                          paired_runs=True)["mean"] for r in base]
            label = f"{n} (own run {run})" if own else f"{n} of {length}"
            points.append((k, n, label, snapshot.get("mean_probe_dice", snapshot["best_probe_dice"]), gains))
    return points


def _readiness() -> list:
    """Does the probe's readiness score track the fine-tune's gain? A table per pretraining snapshot and fold, the
    rank correlation over all of them, and a scatter plot."""
    points = _readiness_points()
    if len(points) < 3:
        return []
    from scipy.stats import spearmanr
    regions = list(_slice_dice(EVIDENCE / "pretrain4000", "baseline", 10))
    lines = ["### Does the probe's score track the gain? (10 labelled slices)", "",
             "Every scored pretraining snapshot (`python benchmarks/real_patient_study.py readiness`: the linear "
             "probe Dice (mean over decoder stages and timesteps) of `nnUNetv2_ddpm_pretraining_readiness` on the 10 "
             "labelled slices) beside the default "
             "fine-tune's paired Dice difference to the supervised nnU-Net on that outer fold's test patients, one run "
             "each:", "", "| outer fold | pretraining iterations | mean probe Dice | " +
             " | ".join(f"gain {r}" for r in regions) + " |", "|---" * (3 + len(regions)) + "|"]
    for k, _, label, probe, gains in sorted(points, key=lambda p: (p[0], p[1], p[2])):
        lines.append(f"| {k} | {label} | {probe:.3f} | " + " | ".join(f"{g:+.3f}" for g in gains) + " |")
    correlations = []
    for column, region in enumerate(regions):
        rho, p_value = spearmanr([p[3] for p in points], [p[4][column] for p in points])
        correlations.append(f"{region} {rho:+.2f} (p = {p_value:.2f})")
    lines += ["", f"Spearman rank correlation of the probe's score with the gain over these {len(points)} points: "
              + "; ".join(correlations) + ".", ""]
    _plot_readiness(points, regions, EVIDENCE.parent / "figures" / "evidence_readiness.png")
    return lines + ["![probe score against fine-tune gain](figures/evidence_readiness.png)", ""]


def _plot_readiness(points: list, regions: list, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 3.6), sharey=True)
    for column, (axis, region) in enumerate(zip(axes, regions)):
        for k in sorted({p[0] for p in points}):
            chosen = [p for p in points if p[0] == k]
            axis.scatter([p[4][column] for p in chosen], [p[3] for p in chosen], color=f"C{k}",
                         label=f"outer fold {k}")
            for p in chosen:
                axis.annotate(str(p[1]), (p[4][column], p[3]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        axis.axvline(0, color="grey", linewidth=0.8)
        axis.set_title(region)
        axis.set_xlabel("fine-tune minus supervised (Dice)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("mean linear-probe Dice")
    axes[-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_compute(points: list, regions: list, schedule: int, path: Path) -> None:
    """One panel per region: each method's paired difference against pretraining iterations (log scale), snapshots
    joined by a line, the plain 4,000-iteration pretraining as an open marker; one colour per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nnunet_ddpm.comparison.methods import title
    colour = {m: f"C{i}" for i, m in enumerate(("baseline", "finetune", "frozen", "init", "pixel"))}
    figure, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 3.6), sharey=True, squeeze=False)
    for column, region in enumerate(regions):
        axis = axes[0][column]
        for method in dict.fromkeys(m for _, m, *_ in points):
            for plain in (False, True):
                chosen = [(n, d[column]) for n, m, _, _, p, d in points if m == method and p == plain]
                if not chosen:
                    continue
                axis.errorbar([n for n, _ in chosen], [d["mean"] for _, d in chosen], capsize=3,
                              yerr=[[d["mean"] - d["low"] for _, d in chosen],
                                    [d["high"] - d["mean"] for _, d in chosen]],
                              marker="o", mfc="white" if plain else colour.get(method, "C5"),
                              color=colour.get(method, "C5"), linestyle="none" if plain else "-",
                              label=f"{title(method)}, " + ("own 4,000-iteration pretraining" if plain else
                                                            f"snapshots of {schedule:,}"))
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set_xscale("log", base=2)
        axis.set_title(region)
        axis.set_xlabel("pretraining iterations")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("Dice minus supervised nnU-Net")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_replicated(plotted: list, path: Path) -> None:
    """One row per budget, one panel per region: each DDPM method's paired Dice difference to the supervised nnU-Net
    with its interval over patients and runs, labelled with its number of runs; one colour per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nnunet_ddpm.comparison.methods import title
    regions = plotted[0][2]
    colour = {m: f"C{i}" for i, m in enumerate(("baseline", "finetune", "frozen", "init", "pixel"))}
    figure, axes = plt.subplots(len(plotted), len(regions), figsize=(4.2 * len(regions), 0.5 + 1.1 * 4 * len(plotted)
                                                                     / 2), sharex=True, squeeze=False)
    for row, (budget, found, _) in enumerate(plotted):
        compared = [r for r in found if r["difference"]]
        for column, region in enumerate(regions):
            axis = axes[row][column]
            for y, r in enumerate(compared):
                d = r["difference"][column]
                axis.errorbar(d["mean"], y, xerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]], marker="o",
                              capsize=3, color=colour[r["method"]])
            axis.axvline(0, color="black", linewidth=0.8)
            axis.set_yticks(range(len(compared)), [f"{title(r['method'])} ({len(r['runs'])} run{'s' * (len(r['runs']) > 1)})"
                                                   if column == 0
                                                   else "" for r in compared], fontsize=7)
            axis.set_ylim(-0.6, len(compared) - 0.4)
            axis.set_title(f"{region}, {budget} labelled slices", fontsize=9)
            axis.grid(alpha=0.3)
    for axis in axes[-1]:
        axis.set_xlabel("Dice minus supervised nnU-Net\n(95 % interval over patients and runs)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _load_results(pretrain: str) -> dict:
    """{method: {budget: {region: {patient: {slice: (Dice, HD95)}}}}} from the committed evaluation files of one
    pretraining length, all outer folds pooled (their test patients are disjoint).

    nnU-Net leaves a slice without the region in reference and prediction out of the Dice (NaN); here it scores 1,
    the BraTS challenge's convention, so that every patient counts for every method. HD95 stays NaN where exactly
    one of the two has the region (no distance exists)."""
    results = {}
    for evaluation in sorted((EVIDENCE / pretrain).glob("outer*/*/*/evaluation.json")):
        method, folder = evaluation.parts[-3], evaluation.parts[-2]
        budget = ALL_LABELS if folder == ALL_LABELS else int(folder[:-len("labels")])
        target = results.setdefault(method, {}).setdefault(budget, {})
        for row in json.loads(evaluation.read_text())["per_case"]:
            dice = 1.0 if row["dice"] is None or np.isnan(row["dice"]) else row["dice"]
            hd95 = float("nan") if row["hd95"] is None else row["hd95"]
            patient = row["case"].rsplit("_s", 1)[0]
            target.setdefault(row["region"], {}).setdefault(patient, {})[row["case"]] = (dice, hd95)
    return results


def _patient_means(per_slice: dict, metric: int, slices=None) -> float:
    values = [v[metric] for k, v in per_slice.items() if slices is None or k in slices]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _summary(results, method, budget, region) -> Tuple[float, float, int]:
    """Mean over patients of the per-patient mean Dice and HD95, and the slices without an HD95."""
    patients = results[method][budget][region]
    dice = np.mean([_patient_means(p, 0) for p in patients.values()])
    hd95 = np.nanmean([_patient_means(p, 1) for p in patients.values()])
    undefined = sum(np.isnan(v[1]) for p in patients.values() for v in p.values())
    return float(dice), float(hd95), int(undefined)


def _paired(results, method, budget, region, metric: int, only=None) -> dict:
    """Paired difference to the supervised baseline over patients (those in ``only`` if given)."""
    return _paired_between(results[method][budget][region], results["baseline"][budget][region], metric, only)


def _paired_between(mine: dict, base: dict, metric: int, only=None) -> dict:
    """Paired difference of two models' per-patient means (``{patient: {slice: (dice, hd95)}}``) over the patients
    both have (and in ``only`` if given); for HD95 each patient's means are taken over the slices where both have
    one."""
    from nnunet_ddpm.comparison.statistics import paired_difference
    patients = sorted(set(mine) & set(base) & (set(only) if only is not None else set(mine)))
    a, b = [], []
    for p in patients:
        common = {k for k in mine[p] if k in base[p] and not np.isnan(mine[p][k][metric])
                  and not np.isnan(base[p][k][metric])}
        a.append(_patient_means(mine[p], metric, common))
        b.append(_patient_means(base[p], metric, common))
    return paired_difference(a, b)


def report(args) -> None:
    """Rewrite the tables between the markers of documentation/evidence.md from the committed result files alone."""
    from nnunet_ddpm.comparison.methods import title
    lines = []
    for pretrain_folder in sorted(EVIDENCE.glob("pretrain*"), key=lambda p: (pretraining_length(p.name), p.name)):
        if SNAPSHOT_NAME.fullmatch(pretrain_folder.name):
            continue  # no baseline of their own: in the compute curve
        results = _load_results(pretrain_folder.name)
        methods = [m for m in ("baseline", "finetune", "finetune_fulllr", "finetune_warmup", "finetune_unfreeze",
                               "finetune_t0", "finetune_t200", "frozen", "init", "pixel", "pixel_probed")
                   if m in results]
        iterations = str(pretraining_length(pretrain_folder.name))
        objective = OBJECTIVES[pretrain_folder.name[len(f"pretrain{iterations}"):]]
        for budget in sorted(results.get("baseline", {}), key=budget_order):  # a variant run without one: below
            regions = list(results["baseline"][budget])
            patients = len(results["baseline"][budget][regions[0]])
            slices = sum(len(p) for p in results["baseline"][budget][regions[0]].values())
            outer = sorted(p.parent.parent.name
                           for p in pretrain_folder.glob(f"outer*/baseline/{budget_folder(budget)}"))
            lines += [f"### {budget} labelled slices, pretraining {iterations} iterations{objective}",
                      "", f"{patients} test patients ({slices} slices; outer folds {', '.join(outer)}); a method run on fewer "
                      "outer folds is averaged over its own patients (column 'patients'). Dice and "
                      "HD95 (mm): the mean over patients of each patient's mean over its test slices; a slice "
                      "without the region in reference and prediction scores Dice 1 and HD95 0, a slice where only "
                      "one of them has it has no HD95 (counted in 'no HD95').", "",
                      "| method | patients | " + " | ".join(f"Dice {r}" for r in regions) + " | " +
                      " | ".join(f"HD95 {r}" for r in regions) + " | no HD95 (slices) |",
                      "|---" * (3 + 2 * len(regions)) + "|"]
            for method in methods:
                if budget not in results[method]:
                    continue
                summaries = [_summary(results, method, budget, r) for r in regions]
                lines.append(f"| {title(method)} | {len(results[method][budget][regions[0]])} | " +
                             " | ".join(f"{d:.3f}" for d, _, _ in summaries) +
                             " | " + " | ".join(f"{h:.1f}" for _, h, _ in summaries) + " | " +
                             " / ".join(str(u) for _, _, u in summaries) + " |")
            lines += ["", "Paired difference to the supervised nnU-Net on the same patients (method minus nnU-Net; "
                      "HD95 over the slices where both have one), with its 95 % bootstrap interval over patients "
                      "(10,000 resamples, seeded):", "",
                      "| method | patients | " + " | ".join(f"Dice {r}" for r in regions) + " | " +
                      " | ".join(f"HD95 {r}" for r in regions) + " |", "|---" * (2 + 2 * len(regions)) + "|"]
            for method in methods[1:]:
                if budget not in results[method]:
                    continue
                cells = [str(len(set(results[method][budget][regions[0]]) &
                                 set(results["baseline"][budget][regions[0]])))]
                for metric, digits in ((0, 3), (1, 1)):
                    for region in regions:
                        d = _paired(results, method, budget, region, metric)
                        cells.append(f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]")
                lines.append(f"| {title(method)} | " + " | ".join(cells) + " |")
            lines.append("")
    lines = _replicated() + lines + _gains() + _compute_curve() + _readiness() + _objectives()
    text = "\n".join(lines)
    page = EVIDENCE.parent / "evidence.md"
    before, rest = page.read_text().split(TABLES_START, 1)
    after = rest.split(TABLES_END, 1)[1]
    page.write_text(f"{before}{TABLES_START}\n{text}\n{TABLES_END}{after}")
    print(text)


DDPM_METHODS = ("finetune", "finetune_fulllr", "frozen", "init", "pixel", "pixel_probed")


def _gain_series(method: str, points: list) -> Tuple[list, set, list]:
    """The paired Dice differences of ``method`` at each point ``(x, results, budget)``, all on the patients that
    every point has, so that only x differs: (regions, patients, [(x, [difference per region])])."""
    regions = list(points[0][1]["baseline"][points[0][2]])
    patients = set.intersection(*(set(r[method][b][regions[0]]) & set(r["baseline"][b][regions[0]])
                                  for _, r, b in points))
    return regions, patients, [(x, [_paired(r, method, b, region, 0, patients) for region in regions])
                               for x, r, b in points]


def _gains() -> list:
    """Each DDPM method's paired Dice difference to the supervised nnU-Net against the labelled slices (one
    pretraining length) and against the pretraining length (one budget), on common patients, as tables and plots."""
    from nnunet_ddpm.comparison.methods import title
    by_length = {pretraining_length(p.name): _load_results(p.name) for p in EVIDENCE.glob("pretrain*")
                 if p.name == f"pretrain{pretraining_length(p.name)}"}  # the plain objective
    sections = []
    for length, results in sorted(by_length.items()):  # against labelled slices
        for method in DDPM_METHODS:
            budgets = sorted((b for b in results.get(method, {}) if b in results["baseline"]), key=budget_order)
            if len(budgets) > 1:
                sections.append(("labelled slices", f"{title(method)}, pretraining {length}",
                                 _gain_series(method, [(b, results, b) for b in budgets])))
    budgets = set.intersection(*(set(r["baseline"]) for r in by_length.values())) if by_length else set()
    for budget in sorted(budgets, key=budget_order):  # against pretraining length
        for method in DDPM_METHODS:
            lengths = [n for n in sorted(by_length) if budget in by_length[n].get(method, {})]
            if len(lengths) > 1:
                sections.append(("pretraining iterations", f"{title(method)}, {budget} labelled slices",
                                 _gain_series(method, [(n, by_length[n], budget) for n in lengths])))
    lines = []
    for axis in ("labelled slices", "pretraining iterations"):
        chosen = [(label, series) for a, label, series in sections if a == axis]
        if not chosen:
            continue
        regions = chosen[0][1][0]
        lines += [f"### Gain against {axis}", "", "Paired Dice difference to the supervised nnU-Net trained beside "
                  "each model (same outer folds), on the test patients that every point of a row group has, with "
                  "its 95 % bootstrap interval over patients:", "",
                  f"| method | {axis} | patients | " + " | ".join(f"Dice {r}" for r in regions) + " |",
                  "|---" * (3 + len(regions)) + "|"]
        for label, (_, patients, points) in chosen:
            for x, differences in points:
                lines.append(f"| {label} | {x} | {len(patients)} | " + " | ".join(
                    f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" for d in differences) + " |")
        name = f"evidence_{axis.split()[0]}_{axis.split()[1]}.png"
        _plot_gains(chosen, axis, EVIDENCE.parent / "figures" / name)
        lines += ["", f"![gain against {axis}](figures/{name})", ""]
    return lines


def _objectives() -> list:
    """Each DDPM method pretrained with another objective, batch or patch against the same method from the plain
    pretraining of the same length, and, for a larger batch, of the same number of images seen, paired on the
    patients both have."""
    from nnunet_ddpm.comparison.methods import title
    rows = []
    for folder in sorted(EVIDENCE.glob("pretrain*"), key=lambda p: (pretraining_length(p.name), p.name)):
        length = pretraining_length(folder.name)
        objective = folder.name[len(f"pretrain{length}"):]
        if not objective or SNAPSHOT_NAME.fullmatch(folder.name):
            continue
        mine = _load_results(folder.name)
        for reference_length in sorted({length, length * images_per_step_factor(objective)}):
            plain = EVIDENCE / f"pretrain{reference_length}"
            if not plain.is_dir():
                continue
            reference = _load_results(plain.name)
            for method in DDPM_METHODS:
                for budget in sorted(set(mine.get(method, {})) & set(reference.get(method, {})), key=budget_order):
                    regions = list(mine[method][budget])
                    differences = [_paired_between(mine[method][budget][r], reference[method][budget][r], 0)
                                   for r in regions]
                    patients = len(set(mine[method][budget][regions[0]]) & set(reference[method][budget][regions[0]]))
                    rows.append((f"{title(method)}, {OBJECTIVES[objective][2:]}", length, reference_length, budget,
                                 regions, differences, patients))
    if not rows:
        return []
    regions = rows[0][4]
    lines = ["### Pretraining objectives, batch and patch against the plain loss", "",
             "Paired Dice difference of each method pretrained with another objective, batch or patch minus the same "
             f"method from the plain pretraining (batch {PLANNED_BATCH}, {PLANNED_PATCH} patches) of the iterations "
             "in the third column, on the patients both have, with its 95 % bootstrap interval over patients (no "
             "supervised baseline in between, so its training noise does not enter). A batch-16 pretraining is "
             "compared at the same iterations and at the same images seen (four times the iterations, about the same "
             "compute); a patch variant at the same iterations. The second run trains "
             "the same method again from another pretraining run of the same settings: how far two runs of one "
             "method differ by chance:", "",
             "| method, variant | pretraining iterations | plain pretraining iterations | labelled slices | patients | " +
             " | ".join(f"Dice {r}" for r in regions) + " |", "|---" * (5 + len(regions)) + "|"]
    for label, length, reference_length, budget, _, differences, patients in rows:
        lines.append(f"| {label} | {length} | {reference_length} | {budget} | {patients} | " + " | ".join(
            f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" for d in differences) + " |")
    return lines + [""]


def _plot_gains(chosen: list, axis_name: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    regions = chosen[0][1][0]
    figure, axes = plt.subplots(1, len(regions), figsize=(4.2 * len(regions), 3.6), sharey=True)
    ticks = sorted({x for _, (_, _, points) in chosen for x, _ in points}, key=budget_order)
    position = {x: i for i, x in enumerate(ticks)}  # evenly spaced (budgets and lengths double), 'all' last
    for index, axis in enumerate(axes):
        for label, (_, _, points) in chosen:
            d = [p[index] for _, p in points]
            axis.errorbar([position[x] for x, _ in points], [v["mean"] for v in d], capsize=3, marker="o",
                          label=label, yerr=[[v["mean"] - v["low"] for v in d], [v["high"] - v["mean"] for v in d]])
        axis.axhline(0, color="grey", linewidth=0.8)
        axis.set_xticks(range(len(ticks)), [str(x) for x in ticks])
        axis.set_title(regions[index])
        axis.set_xlabel(axis_name)
    axes[0].set_ylabel("Dice minus supervised nnU-Net")
    axes[-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("-w", required=True, help="working folder (data, models; never inside the repository)")
    p.add_argument("--brats18", required=True, help="folder of BraTS 2018 case folders")
    p.add_argument("--brats2015", required=True, help="the BraTS 2015 DeepMedic sample folder")
    p.add_argument("--outer-folds", type=int, default=3)
    p.add_argument("--size", nargs=2, default=["64", "64"])
    p.add_argument("--unlabeled-step", default="5", help="every K-th other brain slice is an unlabeled image")
    p.add_argument("--transductive", action="store_true",
                   help="the test patients' slices are unlabeled images too (a user who pretrains on every scan)")
    r = sub.add_parser("run")
    r.add_argument("-w", required=True)
    r.add_argument("--methods", nargs="+", default=["baseline", "finetune", "frozen", "pixel"])
    r.add_argument("--budgets", nargs="+", default=["10"])
    r.add_argument("--outer", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--pretrain-iterations", type=int, default=4000)
    r.add_argument("--iterations", type=int, default=1000, help="training iterations of every method")
    r.add_argument("--pretrainer", default=PRETRAINER, help="a variant of the pretraining (another objective)")
    r.add_argument("--run", type=int, default=1, help="N > 1: train the methods again in their own folders, seeded with "
                   "N; the report pools the runs")
    r.add_argument("--label-draw", type=int, default=0, help="which draw of the labelled slices (nnUNet_ddpm_label_draw)")
    r.add_argument("--pretraining-run", type=int, default=None,
                   help="start the DDPM methods from that run's pretraining (default: run 1's if it exists, else this "
                        "run's own)")
    r.add_argument("--snapshot", type=int, default=None,
                   help="start the DDPM methods from the pretraining's snapshot after N iterations "
                        "(checkpoint_iteration<N>.pth, kept by nnUNet_ddpm_pretrain_snapshots) instead of its end: one "
                        "point of the compute curve; compared with the supervised runs of the same seed and slices")
    c = sub.add_parser("collect")
    c.add_argument("-w", required=True)
    t = sub.add_parser("pretrain", help="one long pretraining per outer fold with snapshots (the compute curve)")
    t.add_argument("-w", required=True)
    t.add_argument("--iterations", type=int, default=32000)
    t.add_argument("--snapshots", type=int, nargs="+", default=[4000, 8000, 16000])
    t.add_argument("--outer", nargs="+", type=int, default=[0, 1, 2])
    t.add_argument("--pretrainer", default=PRETRAINER)
    e = sub.add_parser("readiness", help="score every pretraining's snapshots (nnUNetv2_ddpm_pretraining_readiness)")
    e.add_argument("-w", required=True)
    e.add_argument("--budget", default="10", help="the labelled slices probed (default: %(default)s)")
    sub.add_parser("report", help="rewrite the tables in documentation/evidence.md from the committed result files")
    args = parser.parse_args()
    {"prepare": prepare, "pretrain": pretrain, "run": run, "collect": collect, "readiness": readiness,
     "report": report}[args.command](args)


if __name__ == "__main__":
    main()
